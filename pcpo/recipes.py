"""Recipe cards: every setting of a registered framework against its authors' code.

A card is generated from the registered :class:`~pcpo.algorithms.Framework`
(its fields, ``per_family`` values and ``references``) and from the paper
configs it names (``config_references``), so it cannot drift from what runs:
``pcpo algorithms --show NAME`` prints it, ``pcpo algorithms --write-docs DIR``
writes the Markdown copies under ``docs/recipes/`` that a test compares with a
fresh render.

Each row has one of four statuses:

* ``matches``: our value is the reference's;
* ``deliberate``: differs on purpose (the reason is in the row);
* ``PCPO``: changed by the PCPO transform (``pcpo-X`` cards only);
* ``DIFFERS``: a difference nobody marked; the tests fail on any such row,
  and on any framework field of a cited baseline that has no reference entry.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from pcpo.algorithms import FAMILIES, Framework, Ref, get_algorithm

#: framework fields that are bookkeeping, not settings
META_FIELDS = ("name", "description", "base", "per_family", "references", "config_references", "samplers")

#: config keys computed from the config rather than read from it
DERIVED_KEYS = ("samples_per_epoch", "optimizer_steps_per_epoch", "samples_per_optimizer_step")

ROOT = Path(__file__).resolve().parent.parent


def same(a: Any, b: Any) -> bool:
    """Equality that treats 1e-4 and 0.0001, 5 and 5.0, tuples and lists alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@dataclasses.dataclass
class Row:
    setting: str
    ours: Any
    ref: Ref | None
    status: str

    @property
    def reference(self) -> Any:
        return None if self.ref is None else self.ref.value


def _status(ours: Any, ref: Ref | None, pcpo_changed: bool) -> str:
    if pcpo_changed:
        return "PCPO"
    if ref is None:
        return "not cited"
    if ref.value is None:
        return "no counterpart"
    if same(ours, ref.value):
        return "matches"
    return "deliberate" if ref.deliberate else "DIFFERS"


#: extension points whose default means "no such mechanism" (a plain SDE everywhere, no hook)
MECHANISM_FIELDS = {"objective_options": {}, "noise_schedule": "constant", "noise_schedule_options": {},
                    "rollout_hook": None, "rollout_hook_options": {}}


def framework_rows(fw: Framework, family: str, base: Framework | None = None) -> list[Row]:
    """One row per framework field for one model family (``base``: the framework a
    ``pcpo-`` variant was derived from, to mark what the transform changed)."""
    eff = fw.for_family(family)
    beff = base.for_family(family) if base is not None else None
    refs = fw.references
    rows = []
    for f in dataclasses.fields(Framework):
        if f.name in META_FIELDS:
            continue
        ours = getattr(eff, f.name)
        if f.name in MECHANISM_FIELDS and same(ours, MECHANISM_FIELDS[f.name]) and \
                f"{family}.{f.name}" not in refs and f.name not in refs:
            continue  # an extension point this framework does not use: nothing to cite
        ref = refs.get(f"{family}.{f.name}", refs.get(f.name))
        changed = beff is not None and not same(ours, getattr(beff, f.name))
        rows.append(Row(f.name, ours, ref, _status(ours, ref, changed)))
    fields = {f.name for f in dataclasses.fields(Framework)}
    for key, ref in refs.items():  # reference steps with no framework field
        bare = key.split(".", 1)[1] if key.split(".", 1)[0] in FAMILIES else key
        if bare in fields or bare == "sampler" or (key != bare and not key.startswith(family + ".")):
            continue
        rows.append(Row(bare, "not ported", ref, "deliberate" if ref.deliberate else "DIFFERS"))
    sampler = eff.samplers[family]
    sref = refs.get(f"{family}.sampler", refs.get("sampler"))
    rows.insert(0, Row("sampler", sampler, sref, _status(sampler, sref, False)))
    return rows


def config_value(path: str | Path, key: str) -> Any:
    """A setting of an experiment file as the trainer or workflow sees it: the file's
    value, else the trainer's default; ``DERIVED_KEYS`` come from the batch arithmetic
    on the file's training processes (``resources.train``: nodes x gpus)."""
    from pcpo.config import TrainingConfig, batch_arithmetic, from_dict
    from pcpo.launch import world_size

    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    raw = yaml.safe_load(p.read_text()) or {}
    if key in DERIVED_KEYS:
        cfg = from_dict(TrainingConfig, raw)
        return batch_arithmetic(cfg, world_size(raw.get("resources")), cfg.sampling.steps, 1)[key]
    found = _dotted(raw, key)
    if found is not _MISSING:
        return found
    found = _dotted(dataclasses.asdict(from_dict(TrainingConfig, raw)), key)
    return None if found is _MISSING else found


_MISSING = object()


def _dotted(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def config_rows(fw: Framework) -> dict[str, list[Row]]:
    out = {}
    for path, refs in fw.config_references.items():
        out[path] = [Row(k, config_value(path, k), r, _status(config_value(path, k), r, False)) for k, r in refs.items()]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}" if v else "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "—" if v is None else str(v)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[Row]) -> list[str]:
    lines = ["| setting | ours | reference | status | source / note |", "|---|---|---|---|---|"]
    for r in rows:
        src = "" if r.ref is None else r.ref.source + (f" — {r.ref.note}" if r.ref.note else "")
        lines.append(f"| `{r.setting}` | {_cell(_fmt(r.ours))} | {_cell(_fmt(r.reference))} | {r.status} | {_cell(src)} |")
    return lines


def render_card(name: str) -> str:
    """The Markdown recipe card of an algorithm name (``X``, ``pcpo-X``, ``pcpo-base-X``)."""
    fw = get_algorithm(name)
    base = get_algorithm(fw.base) if fw.base else None
    lines = [f"# Recipe card: `{name}`", "", fw.description, "",
             "Generated from the registered framework by `pcpo algorithms --show " + name + "`; do not edit by hand.",
             "Status: *matches* the reference; *deliberate* difference (reason given); *PCPO* changed by the",
             "PCPO transform (METHOD.md section 3); *no counterpart* in the reference code; *DIFFERS* or",
             "*not cited* would be a fidelity bug (the tests fail on both for the cited baselines).", ""]
    for fam in FAMILIES:
        if fam not in fw.samplers:
            continue
        what = {"ddim": "epsilon models (DDIM-SDE)", "flow": "velocity models (flow SDE)"}[fam]
        lines += [f"## Settings on {what}", ""]
        lines += _table(framework_rows(fw, fam, base))
        lines.append("")
    crow = config_rows(base or fw)
    if crow:
        lines += ["## Full-scale paper configs", "",
                  "Each setting as `pcpo train` runs it from the file (derived counts use `resources.train`: nodes x gpus",
                  "processes), against the reference run it reproduces.", ""]
        for path, rows in crow.items():
            lines += [f"### `{path}`", ""] + _table(rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def cited_baselines() -> list[str]:
    """Registered frameworks that carry references (their cards must be complete)."""
    from pcpo.algorithms import FRAMEWORKS, discover

    discover()
    return [n for n, fw in FRAMEWORKS.items() if fw.references]


def write_docs(folder: str | Path) -> list[Path]:
    """Write ``<folder>/<name>.md`` for every cited baseline and its ``pcpo-`` variant."""
    from pcpo.utils import atomic_write_text

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    from pcpo.algorithms import FRAMEWORKS, untransformable

    for n in cited_baselines():
        for name in (n, f"pcpo-{n}") if untransformable(FRAMEWORKS.get(n)) is None else (n,):
            p = d / f"{name}.md"
            atomic_write_text(p, render_card(name))
            written.append(p)
    return written
