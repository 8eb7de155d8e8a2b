"""Collect every run's training log and every evaluation JSON into tidy tables.

Layout read (all under ``results/<experiment>/``):

* ``runs/<model>/<reward>/<algorithm>/seed<S>/metrics.csv`` and ``credit_audit.csv``
* ``metrics/<model>/base.json`` and ``metrics/<model>/<reward>/<algorithm>/seed<S>/epoch<E>.json``

Written to ``tables/``: ``all_metrics.csv`` (one row per evaluated checkpoint,
the base model as epoch -1 of every run's curve), ``training.csv``,
``credit_audit.csv`` and ``networks.csv`` (which network produced each metric, on how many
images of which prompt set, against which reference set).  ``all_metrics.csv`` carries each
metric's image count as ``<metric>_n`` and its reference set as ``<metric>_ref``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from pcpo.utils import atomic_path

_RUN_RE = re.compile(r"^(?P<model>[^/]+)/(?P<reward>[^/]+)/(?P<algorithm>[^/]+)/seed(?P<seed>\d+)$")
_EVAL_RE = re.compile(r"^(?P<model>[^/]+)/(?P<reward>[^/]+)/(?P<algorithm>[^/]+)/seed(?P<seed>\d+)/epoch(?P<epoch>\d+)\.json$")
_BASE_RE = re.compile(r"^(?P<model>[^/]+)/base\.json$")


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def load_training(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves, audits = [], []
    root = results / "runs"
    for f in sorted(root.glob("*/*/*/seed*/metrics.csv")):
        m = _RUN_RE.match(str(f.parent.relative_to(root)))
        if not m:
            continue
        ident = {**m.groupdict(), "seed": int(m["seed"])}
        curves.append(pd.read_csv(f).assign(**ident))
        a = f.parent / "credit_audit.csv"
        if a.is_file():
            audits.append(pd.read_csv(a).assign(**ident))
    tr = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    au = pd.concat(audits, ignore_index=True) if audits else pd.DataFrame()
    return tr, au


def _flatten(metrics: dict) -> tuple[dict, list[dict]]:
    values, nets = {}, []
    for name, m in metrics.items():
        values[name] = m.get("value")
        if "std" in m:
            values[f"{name}_std"] = m["std"]
        if m.get("n") is not None:  # images the number was computed on (FID-n)
            values[f"{name}_n"] = int(m["n"])
        ref = reference_label(m)
        if ref:
            values[f"{name}_ref"] = ref
        nets.append({"metric": name, "network": m.get("network", ""), "weights": weights_label(m.get("weights")),
                     "sha256": m.get("sha256") or "", "n": m.get("n", ""), "prompt_set": m.get("prompt_set", ""),
                     "reference": ref, "note": m.get("note", "")})
    return values, nets


def reference_label(m: dict) -> str:
    """``name (n=N)`` of the reference set a distribution metric compared against, else ''."""
    name = m.get("reference") or m.get("real_name")
    if not name:
        return ""
    n = m.get("reference_n", m.get("n_real"))
    return f"{name} (n={n})" if n is not None else str(name)


def weights_label(weights) -> str:
    """A weights file by its name, never the machine's absolute cache path (the
    checksum in the ``sha256`` column identifies it wherever it lives)."""
    if not weights:
        return ""
    return Path(str(weights)).name


def load_evaluations(results: Path, matrix_rewards: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per evaluated checkpoint; base models replicated per trained reward."""
    rows, nets = [], []
    root = results / "metrics"
    for f in sorted(root.rglob("*.json")):
        rel = str(f.relative_to(root))
        data = json.loads(f.read_text())
        values, n = _flatten(data.get("metrics", {}))
        nets.extend(n)
        if m := _EVAL_RE.match(rel):
            ident = {**m.groupdict(), "seed": int(m["seed"]), "epoch": int(m["epoch"])}
            rows.append({**ident, **values, "eval_reward": values.get(f"reward/{ident['reward']}")})
        elif m := _BASE_RE.match(rel):
            for reward in matrix_rewards.get(m["model"], []):
                rows.append({"model": m["model"], "reward": reward, "algorithm": "base", "seed": -1, "epoch": -1,
                             **values, "eval_reward": values.get(f"reward/{reward}")})
    df = pd.DataFrame(rows)
    nd = pd.DataFrame(nets).drop_duplicates() if nets else pd.DataFrame(columns=["metric", "network", "weights", "sha256", "n", "prompt_set", "reference", "note"])
    return df, nd


def aggregate(results: str | Path, config: dict) -> dict[str, Path]:
    results = Path(results)
    matrix_rewards: dict[str, list[str]] = {}
    for block in config.get("matrix", []):
        matrix_rewards.setdefault(block["model"], [])
        for r in block["rewards"]:
            if r not in matrix_rewards[block["model"]]:
                matrix_rewards[block["model"]].append(r)
    tr, au = load_training(results)
    ev, nets = load_evaluations(results, matrix_rewards)
    out = results / "tables"
    paths = {
        "training": out / "training.csv", "credit_audit": out / "credit_audit.csv",
        "networks": out / "networks.csv", "all_metrics": out / "all_metrics.csv",
    }
    write_csv(tr, paths["training"])
    write_csv(au, paths["credit_audit"])
    write_csv(nets, paths["networks"])
    write_csv(ev, paths["all_metrics"])  # last: the workflow's sentinel output
    return paths
