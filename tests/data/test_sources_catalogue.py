"""Shape and consistency of the data catalogue pcpo/data/sources.yaml.

The catalogue is data, written by hand from the reference repositories; these tests check that every
entry carries what its kind needs (so `pcpo data fetch` can act on it), that pins are well formed and
honest (a null sha256 says why), and that the catalogue agrees with the code and configs that use the
files: the loaders' file names and hub ids, torch.hub's file-name convention, the paper configs' paths,
and the repository's own copy of DDPO's prompt list.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "pcpo" / "data" / "sources.yaml"
PAPER = sorted((ROOT / "config" / "paper").glob("*.yaml"))

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEXPREFIX = re.compile(r"^[0-9a-f]{8,63}$")
# torch.hub.load_state_dict_from_url(check_hash=True) takes the hash prefix from the file name like this
TORCH_HUB_HASH = re.compile(r"-([a-f0-9]*)\.")

COMMON = {"kind", "description", "sha256", "reference", "gated"}
REQUIRED = {
    "url": COMMON | {"url", "dest"},
    "hf_file": COMMON | {"repo", "repo_type", "revision", "filename"},
    "hf_snapshot": COMMON | {"repo", "repo_type", "revision"},
    "torch_hub_file": COMMON | {"url", "hub_filename"},
}
OPTIONAL = {"sha256_note", "sha256_prefix", "size", "dest", "licence", "revision_note", "allow_patterns",
            "extract", "prepare", "prepare_note"}

# The paper configs still name the deleted runwayml repository; its maintained copy is catalogued.
RENAMED = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


@pytest.fixture(scope="module")
def catalogue() -> dict:
    with open(CATALOGUE) as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and data, f"{CATALOGUE}: expected a non-empty mapping of entries"
    return data


def _entries(catalogue):
    return sorted(catalogue.items())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_names_are_cli_friendly(catalogue):
    for name in catalogue:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name), f"{name!r}: use lower case, digits, '-' and '.'"


def test_every_entry_has_the_keys_of_its_kind(catalogue):
    for name, e in _entries(catalogue):
        assert isinstance(e, dict), f"{name}: not a mapping"
        kind = e.get("kind")
        assert kind in REQUIRED, f"{name}: kind {kind!r} is not one of {sorted(REQUIRED)}"
        missing = REQUIRED[kind] - set(e)
        assert not missing, f"{name} ({kind}): missing {sorted(missing)}"
        unknown = set(e) - REQUIRED[kind] - OPTIONAL
        assert not unknown, f"{name}: unknown keys {sorted(unknown)}"
        for key in ("description", "reference"):
            assert isinstance(e[key], str) and e[key].strip(), f"{name}: {key} must be a non-empty string"
        assert isinstance(e["gated"], bool), f"{name}: gated must be true or false"
        if "size" in e:
            assert isinstance(e["size"], int) and e["size"] > 0, f"{name}: size must be a positive byte count"


def test_sha256_is_hex_or_null_with_a_reason(catalogue):
    for name, e in _entries(catalogue):
        sha = e["sha256"]
        if sha is None:
            note = e.get("sha256_note")
            assert isinstance(note, str) and len(note.strip()) > 20, f"{name}: sha256 is null without a sha256_note"
        else:
            assert isinstance(sha, str) and HEX64.match(sha), f"{name}: sha256 {sha!r} is not 64 lower-case hex"
        if "sha256_prefix" in e:
            prefix = e["sha256_prefix"]
            assert isinstance(prefix, str) and HEXPREFIX.match(prefix), f"{name}: bad sha256_prefix {prefix!r}"
            if sha is not None:
                assert sha.startswith(prefix), f"{name}: sha256 does not start with its sha256_prefix"


def test_pinned_hashes_are_distinct(catalogue):
    seen: dict[str, str] = {}
    for name, e in _entries(catalogue):
        if e["sha256"] is not None:
            assert e["sha256"] not in seen, f"{name} and {seen.get(e['sha256'])} carry the same sha256"
            seen[e["sha256"]] = name


def test_dest_paths_are_relative_and_unique(catalogue):
    seen: dict[str, str] = {}
    for name, e in _entries(catalogue):
        if "dest" not in e:
            continue
        dest = e["dest"]
        assert isinstance(dest, str) and dest, f"{name}: empty dest"
        p = PurePosixPath(dest)
        assert not p.is_absolute() and not dest.startswith("~"), f"{name}: dest {dest!r} must be relative"
        assert ".." not in p.parts and "\\" not in dest, f"{name}: dest {dest!r} must stay under the data root"
        assert dest not in seen, f"{name}: dest {dest!r} is also the dest of {seen.get(dest)}"
        seen[dest] = name
    # no dest may be a folder that holds another dest
    for a in seen:
        for b in seen:
            assert a == b or not b.startswith(a.rstrip("/") + "/"), f"dest {a!r} contains dest {b!r}"


def test_urls_are_canonical_and_pinned(catalogue):
    for name, e in _entries(catalogue):
        if "url" not in e:
            continue
        u = urlparse(e["url"])
        assert u.scheme in ("https", "http") and u.netloc and u.path not in ("", "/"), f"{name}: bad url {e['url']!r}"
        if u.netloc == "raw.githubusercontent.com":
            # owner/repo/<commit>/path: a branch name would let the file change under the pin
            parts = u.path.lstrip("/").split("/")
            assert len(parts) >= 4 and HEX40.match(parts[2]), f"{name}: raw GitHub url not pinned to a commit"
            assert f"@{parts[2][:7]}" in e["reference"] or parts[2][:7] in e["sha256_note"], \
                f"{name}: the reference should name the commit the url is pinned to"


def test_hf_entries_have_a_pinned_revision_or_a_note(catalogue):
    for name, e in _entries(catalogue):
        if not e["kind"].startswith("hf_"):
            continue
        assert e["repo_type"] in ("model", "dataset"), f"{name}: repo_type must be model or dataset"
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", e["repo"]), f"{name}: repo {e['repo']!r} is not owner/name"
        rev = e["revision"]
        assert isinstance(rev, str) and rev, f"{name}: empty revision"
        if not HEX40.match(rev):
            assert len(str(e.get("revision_note", "")).strip()) > 20, \
                f"{name}: revision {rev!r} is not a commit id and has no revision_note"
        if e["kind"] == "hf_snapshot" and "allow_patterns" in e:
            pats = e["allow_patterns"]
            assert isinstance(pats, list) and pats and all(isinstance(p, str) and p for p in pats), \
                f"{name}: allow_patterns must be a non-empty list of glob strings"
        if e["kind"] == "hf_file":
            assert e["filename"] and not e["filename"].startswith("/"), f"{name}: bad filename"
        assert e["repo"] not in RENAMED, f"{name}: {e['repo']} was deleted from the hub; use {RENAMED[e['repo']]}"


def test_base_model_snapshots_take_no_single_file_duplicates(catalogue):
    """Base models are fetched as diffusers folders only: the single-file checkpoints at the repository
    root (flux1-dev.safetensors, sd3.5_medium.safetensors, v1-5-pruned*.ckpt) would double the download."""
    import fnmatch

    root_files = ["flux1-dev.safetensors", "ae.safetensors", "sd3.5_medium.safetensors", "v1-5-pruned.ckpt",
                  "v1-5-pruned-emaonly.safetensors", "sd-v1-4.ckpt", "text_encoders/t5xxl_fp16.safetensors",
                  "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin"]
    for name, e in _entries(catalogue):
        if e["kind"] != "hf_snapshot" or not any(k in e["repo"] for k in ("stable-diffusion", "FLUX")):
            continue
        pats = e.get("allow_patterns")
        assert pats, f"{name}: a base model snapshot needs allow_patterns"
        for f in root_files:
            assert not any(fnmatch.fnmatch(f, p) for p in pats), f"{name}: allow_patterns would fetch {f}"
        for needed in ("model_index.json", "vae/config.json"):
            assert any(fnmatch.fnmatch(needed, p) for p in pats), f"{name}: allow_patterns miss {needed}"


def test_gated_entries_say_how_to_get_access(catalogue):
    for name, e in _entries(catalogue):
        if e["gated"]:
            lic = str(e.get("licence", ""))
            assert "accept" in lic.lower() and "token" in lic.lower(), \
                f"{name}: a gated entry's licence line must say to accept the licence and give a token"


def test_torch_hub_files_follow_torch_hub_naming(catalogue):
    for name, e in _entries(catalogue):
        if e["kind"] != "torch_hub_file":
            continue
        fname = e["hub_filename"]
        assert fname == PurePosixPath(urlparse(e["url"]).path).name, \
            f"{name}: torch.hub caches {e['url']} under its basename, not {fname!r}"
        m = TORCH_HUB_HASH.search(fname)
        if m and m.group(1):
            assert e.get("sha256_prefix") == m.group(1), \
                f"{name}: {fname} carries the sha256 prefix {m.group(1)}; record it as sha256_prefix"


def test_extract_and_prepare_blocks(catalogue):
    for name, e in _entries(catalogue):
        if "extract" in e:
            member = e["extract"].get("member") if isinstance(e["extract"], dict) else None
            assert isinstance(member, str) and member and not member.startswith("/") and ".." not in member, \
                f"{name}: extract needs a relative member"
            assert PurePosixPath(member).name == PurePosixPath(e["dest"]).name, \
                f"{name}: the extracted member should land under its own name"
        if "prepare" in e:
            p = e["prepare"]
            assert p.get("kind") == "image_folder", f"{name}: prepare.kind must be image_folder"
            for key in ("n", "resolution", "seed"):
                assert isinstance(p.get(key), int) and p[key] >= (0 if key == "seed" else 1), \
                    f"{name}: prepare.{key} must be an integer"
            src = p.get("captions_from")
            if src is not None:
                assert src in catalogue, f"{name}: prepare.captions_from {src!r} is not a catalogue entry"


def test_repository_copy_of_simple_animals_matches_ddpo(catalogue):
    """config/paper/prompts/simple_animals.txt is DDPO's list behind a comment header: without the '#'
    lines it must be byte for byte the reference file the catalogue pins."""
    e = catalogue["ddpo-simple-animals-prompts"]
    text = (ROOT / "config" / "paper" / "prompts" / "simple_animals.txt").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert _sha256(body.encode()) == e["sha256"]
    assert len(body.encode()) == e["size"]


def test_paper_config_files_have_a_provider(catalogue):
    """Every data file a paper config reads either is in the repository or is the dest of an entry, and
    every base model id is catalogued (the deleted runwayml id through its maintained copy)."""
    dests = {e.get("dest") for e in catalogue.values()}
    repos = {e["repo"] for e in catalogue.values() if "repo" in e}
    assert PAPER, "no config/paper/*.yaml found"
    for cfg_path in PAPER:
        cfg = yaml.safe_load(cfg_path.read_text())
        path = (cfg.get("prompts") or {}).get("options", {}).get("path")
        if path:
            assert (ROOT / path).is_file() or path in dests, f"{cfg_path.name}: no entry provides {path}"
        models = [cfg["model"]["path"]] + [m["path"] for m in (cfg.get("base_models") or {}).values()]
        for m in models:
            assert RENAMED.get(m, m) in repos, f"{cfg_path.name}: base model {m} is not catalogued"


def test_reward_loaders_and_catalogue_agree(catalogue):
    """The hub ids and file names that pcpo/rewards/learned.py loads are the ones catalogued."""
    from pcpo.rewards import learned

    by_repo = {(e["repo"], e.get("filename")) for e in catalogue.values() if "repo" in e}
    assert (learned.HPS_REPO, learned.HPS_FILE) in by_repo
    for repo in (learned.PICKSCORE_MODEL, learned.PICKSCORE_PROCESSOR, learned.AESTHETIC_CLIP,
                 learned.CLIPSCORE_MODEL):
        assert (repo, None) in by_repo, f"{repo} is loaded by learned.py but not catalogued as a snapshot"
    head = catalogue["laion-aesthetic-head"]
    assert PurePosixPath(head["dest"]).name == learned.AESTHETIC_HEAD_FILE
    assert urlparse(head["url"]).path.endswith("/" + learned.AESTHETIC_HEAD_FILE)


def test_evaluation_networks_match_their_libraries(catalogue):
    """The URLs are the ones torch-fidelity and torchvision (under lpips) download themselves, so a
    fetched file sits where their own loaders look."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    from evaluation import inception, metrics

    assert catalogue["inception-fid"]["url"] == fe.URL_INCEPTION_V3
    assert catalogue["inception-fid"]["hub_filename"] == inception.TORCH_FIDELITY_WEIGHTS_NAME
    assert catalogue["lpips-alexnet"]["url"] == AlexNet_Weights.IMAGENET1K_V1.url
    assert catalogue["lpips-alexnet"]["hub_filename"] == metrics.ALEXNET_WEIGHTS_NAME
    assert catalogue["lpips-vgg16"]["url"] == VGG16_Weights.IMAGENET1K_V1.url
