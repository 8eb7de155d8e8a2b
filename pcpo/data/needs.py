"""``needs_for_config(config)``: the catalogue names an experiment file needs, by the job role that needs them.

Read from the config, matched against the catalogue by what the entries are (not by their names):

* prompt files (``prompts`` and every set of ``evaluation.prompts`` with ``source: file``, and the per-style
  JSON files of a ``source: hps-benchmark`` set): the entry whose ``dest`` is that path (paths under
  ``data/`` are relative to the data root);
* base models (``model.path``, ``base_models.*.path``) that are hub ids: the ``hf_snapshot`` of that repo;
* learned rewards (``reward``, the matrix's and ``evaluation.rewards``): the hub repos / files their loaders
  read by default (pcpo/rewards/learned.py), unless the config points the option at a local path;
* the evaluation reference folder: the entry that prepares that folder (or whose name the reference names),
  with its captions source;
* evaluation networks for the metrics named: torch-fidelity's Inception (fid, kid, is, prdc), torchvision's
  AlexNet for LPIPS (diversity, lpips), DINOv2 (fd_dino): the ``torch_hub_file`` entries with those file names
  (not for the tiny world's ``tiny-*`` references, which need no data).

Things a config needs that no entry provides are listed in ``unresolved`` (``pcpo data fetch --for``
refuses to start while there are any).  A path that exists locally is never a need.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pcpo.data.catalogue import Entry

# The default weights of pcpo/rewards/learned.py (tests/data check that the two agree):
# reward -> [(option, hub repo or None, file name or None)]
REWARD_WEIGHTS: dict[str, list[tuple[str, str | None, str | None]]] = {
    "pickscore": [("model", "yuvalkirstain/PickScore_v1", None),
                  ("processor", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", None)],
    "aesthetic": [("clip", "openai/clip-vit-large-patch14", None), ("head", None, "sac+logos+ava1-l14-linearMSE.pth")],
    "hpsv21": [("checkpoint", "xswu/HPSv2", "HPS_v2.1_compressed.pt")],
    "imagereward": [("checkpoint", "THUDM/ImageReward", "ImageReward.pt"),
                    ("med_config", "THUDM/ImageReward", "med_config.json"), ("tokenizer", "bert-base-uncased", None)],
    "clipscore": [("model", "openai/clip-vit-large-patch14", None)],
    # pcpo/rewards/bertscore.py: the captioner (its processor defaults to the same repository) and BERTScore's model
    "llava_bertscore": [("llava", "llava-hf/llava-1.5-13b-hf", None),
                        ("bertscore_model", "microsoft/deberta-xlarge-mnli", None)],
}

# metric -> the torch.hub checkpoint file names (glob) its library's loader reads
METRIC_NETWORKS: dict[str, list[str]] = {
    "fid": ["weights-inception-2015-12-05-6726825d.pth"],
    "kid": ["weights-inception-2015-12-05-6726825d.pth"],
    "is": ["weights-inception-2015-12-05-6726825d.pth"],
    "prdc": ["weights-inception-2015-12-05-6726825d.pth"],
    "diversity": ["alexnet-owt-7be5be79.pth"],
    "lpips": ["alexnet-owt-7be5be79.pth"],
}
#: metrics whose network is a Hugging Face repository (evaluation/dino.py loads facebook/dinov2-large with
#: transformers from the hub cache, not torch.hub's dinov2_vitl14_pretrain.pth)
METRIC_REPOS: dict[str, str] = {"fd_dino": "facebook/dinov2-large"}

ROLES = ("train", "sample", "evaluate")


@dataclass
class Needs:
    roles: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in ROLES})
    unresolved: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted({n for v in self.roles.values() for n in v})

    def add(self, roles, names) -> None:
        for r in roles:
            for n in names:
                if n not in self.roles[r]:
                    self.roles[r].append(n)

    def miss(self, what: str) -> None:
        if what not in self.unresolved:
            self.unresolved.append(what)


def _root_rel(path: str) -> str | None:
    """A path written for the default layout (``data/...``) as a path relative to the data root."""
    p = PurePosixPath(str(path).replace(os.sep, "/"))
    if p.is_absolute() or not p.parts or p.parts[0] != "data":
        return None
    return str(PurePosixPath(*p.parts[1:]))


def _is_local(path: str) -> bool:
    return Path(path).exists()


def _looks_like_repo(s: str) -> bool:
    parts = s.split("/")
    return 1 <= len(parts) <= 2 and not s.startswith((".", "/")) and not s.endswith((".yaml", ".json", ".pt"))


def _basename(e: Entry) -> set[str]:
    out = set()
    for s in (e.dest, e.filename, e.hub_filename, e.url):
        if s:
            out.add(PurePosixPath(str(s).split("?")[0]).name)
    return out


def _hf_entries(cat: dict[str, Entry], repo: str, filename: str | None) -> list[str]:
    def same(a, b):  # bert-base-uncased and google-bert/bert-base-uncased are one repo on the hub
        return a == b or a.split("/")[-1] == b and "/" not in b or b.split("/")[-1] == a and "/" not in a

    hits = []
    for e in cat.values():
        if e.repo is None or not same(e.repo, repo):
            continue
        if filename is None and e.kind == "hf_snapshot":
            hits.append(e.name)
        elif filename is not None and e.kind == "hf_file" and e.filename == filename:
            hits.append(e.name)
        elif filename is not None and e.kind == "hf_snapshot" and (
                not e.allow_patterns or any(fnmatch.fnmatch(filename, p) for p in e.allow_patterns)):
            hits.append(e.name)
    # a file entry beats a snapshot of the whole repository
    hits.sort(key=lambda n: (cat[n].kind != "hf_file", n))
    return hits[:1]


def _file_entries(cat: dict[str, Entry], basename: str) -> list[str]:
    hits = sorted(e.name for e in cat.values() if any(fnmatch.fnmatch(b, basename) for b in _basename(e)))
    return hits[:1]


def _dest_entries(cat: dict[str, Entry], path: str) -> list[str]:
    rel = _root_rel(path)
    return sorted(e.name for e in cat.values() if e.dest and rel is not None and _root_rel(e.dest) == rel)[:1]


def _eval_sets(config: dict) -> list[dict]:
    """The evaluation prompt sets of ``evaluation.prompts``: one set ``{source: ...}`` or named sets."""
    ev = (config.get("evaluation") or {}).get("prompts") or {}
    if not isinstance(ev, dict):
        return []
    if "source" in ev:
        return [ev]
    return [s for s in ev.values() if isinstance(s, dict) and "source" in s]


def _prompt_files(config: dict) -> list[tuple[str, str]]:
    out = []
    p = config.get("prompts") or {}
    if p.get("source") == "file":
        path = (p.get("options") or {}).get("path") or p.get("path")
        if path:
            out.append(("train", str(path)))
    sets = _eval_sets(config)
    for ev in sets:
        if ev.get("source") == "file":
            path = (ev.get("options") or {}).get("path") or ev.get("path")
            if path:
                out.append(("sample", str(path)))
        elif ev.get("source") == "hps-benchmark":  # one JSON file per style (pcpo/prompts.py)
            from pcpo.prompts import HPS_BENCHMARK_PATH, hps_benchmark_styles

            folder = str(ev.get("path") or HPS_BENCHMARK_PATH).rstrip("/")
            try:
                styles = hps_benchmark_styles(ev)
            except ValueError:  # a bad styles list is the config check's to report
                styles = []
            out += [("sample", f"{folder}/{style}.json") for style in styles]
    if not sets and p.get("source") == "file" and out:  # the samplers draw their evaluation prompts from the same source
        out.append(("sample", out[0][1]))
    return out


def _rewards(config: dict) -> list[tuple[str, str, dict]]:
    """(role, reward name, options) of every learned reward the config uses."""
    out = []
    ropts = config.get("reward_options") or {}

    def add(role, name, opts):
        out.append((role, name, dict(opts or {})))
        if name == "combined":
            comp = (opts or {}).get("components") or {}
            sub = (opts or {}).get("options") or {}
            for c in comp:
                add(role, c, sub.get(c) or ropts.get(c) or {})

    r = config.get("reward") or {}
    if r.get("name"):
        add("train", r["name"], r.get("options"))
    for block in config.get("matrix") or []:
        for name in block.get("rewards") or []:
            add("train", name, ropts.get(name))
    ev = config.get("evaluation") or {}
    if "reward" in (ev.get("metrics") or []) or ev.get("rewards"):
        for name in ev.get("rewards") or []:
            add("evaluate", name, ropts.get(name))
    return out


def needs_for_config(config: dict, cat: dict[str, Entry], root: str | os.PathLike | None = None) -> Needs:
    """The catalogue names ``config`` (a loaded experiment file) needs, per role; see the module docstring."""
    from pcpo.data.fetch import data_root

    root = data_root(root)
    n = Needs()

    # prompt files
    for role, path in _prompt_files(config):
        hits = _dest_entries(cat, path)
        if hits:
            n.add([role], hits)
        elif not _is_local(path):
            n.miss(f"prompt file {path}")

    # base models
    models = []
    if (config.get("model") or {}).get("path"):
        models.append(str(config["model"]["path"]))
    for bm in (config.get("base_models") or {}).values():
        if bm.get("path"):
            models.append(str(bm["path"]))
    for m in dict.fromkeys(models):
        if _is_local(m) or not _looks_like_repo(m):
            continue
        hits = _hf_entries(cat, m, None)
        n.add(["train", "sample"], hits) if hits else n.miss(f"base model {m}")

    # learned rewards
    for role, name, opts in _rewards(config):
        for option, repo, fname in REWARD_WEIGHTS.get(name, []):
            val = opts.get(option)
            if val is not None:
                if _is_local(str(val)) or not _looks_like_repo(str(val)):
                    continue
                repo, fname = str(val), None
            hits = _hf_entries(cat, repo, fname) if repo else _file_entries(cat, fname)
            n.add([role], hits) if hits else n.miss(f"reward {name} {option} ({repo or ''}{'/' if repo and fname else ''}"
                                                     f"{fname or ''})")

    ev = config.get("evaluation") or {}
    metrics = [str(m) for m in ev.get("metrics") or []]
    # the reference image set
    ref = ev.get("reference") or {}
    if ref and any(m in metrics for m in ("fid", "kid", "prdc", "fd_dino", "fd-dino", "fd_dinov2")):
        hits = []
        named = ref.get("fetch") or ref.get("data")
        if named:
            hits = [named] if named in cat else []
        else:
            path, rname = ref.get("path"), ref.get("name")
            for e in cat.values():
                if not e.prepare:
                    continue
                folder = e.prepared_path(root)
                res = int(e.prepare["resolution"])
                cands = {e.name, f"{e.name}-{res}", folder.name}
                if (path and _root_rel(path) is not None and Path(root) / _root_rel(path) == folder) or \
                        (path and Path(path) == folder) or (rname in cands) or \
                        (path and PurePosixPath(str(path)).name in cands):
                    hits.append(e.name)
            hits = sorted(hits)[:1]
        if hits:
            n.add(["evaluate"], hits)
            cap = (cat[hits[0]].prepare or {}).get("captions_from")
            if cap:
                n.add(["evaluate"], [cap])
        elif ref.get("source") in (None, "folder") and not (ref.get("path") and _is_local(str(ref["path"]))):
            n.miss(f"evaluation reference {ref.get('name') or ref.get('path')}")

    # evaluation networks (the tiny world evaluates with its own built-in networks and needs none)
    tiny = str(ref.get("source", "")).startswith("tiny")
    for m in ([] if tiny else metrics):
        if m in METRIC_REPOS:
            hits = _hf_entries(cat, METRIC_REPOS[m], None)[:1]
            n.add(["evaluate"], hits) if hits else n.miss(f"metric {m} network {METRIC_REPOS[m]}")
        for pattern in METRIC_NETWORKS.get(m, []):
            hits = sorted(e.name for e in cat.values()
                          if e.kind == "torch_hub_file" and fnmatch.fnmatch(e.hub_filename, pattern))[:1]
            n.add(["evaluate"], hits) if hits else n.miss(f"metric {m} network {pattern}")
    return n


def needs_for_file(config_path: str | os.PathLike, cat: dict[str, Entry], root=None) -> Needs:
    import yaml

    from pcpo.data.catalogue import DataError

    try:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"--for {config_path}: cannot read the experiment file ({e})") from e
    return needs_for_config(config, cat, root)
