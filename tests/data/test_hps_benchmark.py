"""The HPS v2 benchmark prompts: the four catalogue entries (zhwang/HPDv2 benchmark/<style>.json), fetched
from the loopback hub as the plain (non-LFS) git files they are, read by the ``hps-benchmark`` evaluation
prompt source, and resolved by ``needs_for_config`` for the HPSv2.1 paper configs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.data.conftest import one_line_error, sha256, write_catalogue
from tests.loopback import _git_blob_sha1, _is_lfs, repo_commit, serve_hub

REPO = "zhwang/HPDv2"
STYLES = ["anime", "concept-art", "paintings", "photo"]
N_PER_STYLE = 7
HPS_CONFIGS = ["dancegrpo_sd14_hpsv21", "dancegrpo_flux_hpsv21", "pcpo_sd15_hpsv21"]
PAPER = Path(__file__).resolve().parents[2] / "config" / "paper"


def _prompts(style: str) -> list[str]:
    # a duplicate across styles, as the real benchmark has (28 duplicate rows in 3,200)
    return [f"{style} prompt {i}" for i in range(N_PER_STYLE - 1)] + ["a shared prompt"]


@pytest.fixture
def hps_hub(data_env):
    """A loopback copy of zhwang/HPDv2 with four tiny benchmark files, and a catalogue that is the real
    one's four hps-benchmark entries with the tiny files' revision and sha256."""
    from pcpo.data import load_catalogue

    hub = data_env.tmp / "hub"
    folder = hub / "datasets" / REPO
    (folder / "benchmark").mkdir(parents=True)
    raw = {}
    for s in STYLES:
        raw[s] = json.dumps(_prompts(s), indent=1).encode()
        (folder / "benchmark" / f"{s}.json").write_bytes(raw[s])
        assert not _is_lfs(folder / "benchmark" / f"{s}.json", len(raw[s]))  # served as a plain git file
    real = load_catalogue()
    entries = {}
    for s in STYLES:
        e = real[f"hps-benchmark-{s}"]
        entries[e.name] = {"kind": e.kind, "repo": e.repo, "repo_type": e.repo_type, "filename": e.filename,
                           "dest": e.dest, "revision": repo_commit(folder), "sha256": sha256(raw[s]),
                           "size": len(raw[s])}
    data_env.hub, data_env.raw = hub, raw
    data_env.catalogue = write_catalogue(data_env.tmp / "sources.yaml", entries)
    data_env.names = list(entries)
    return data_env


def test_catalogue_entries_are_the_hps_v2_benchmark_files():
    from pcpo.data import load_catalogue
    from pcpo.prompts import HPS_BENCHMARK_PATH, HPS_STYLES, hps_benchmark_entry

    cat = load_catalogue()
    assert list(HPS_STYLES) == STYLES  # tgxs002/HPSv2 hpsv2/utils.py hps_prompt_files order
    for s in STYLES:
        e = cat[hps_benchmark_entry(s)]
        assert (e.kind, e.repo, e.repo_type, e.filename) == ("hf_file", REPO, "dataset", f"benchmark/{s}.json")
        assert e.dest == f"{HPS_BENCHMARK_PATH}/{s}.json"
        assert len(e.revision) == 40 and e.sha256 and e.size and e.sha256_note and e.reference


def test_fetch_places_the_four_files_verified_and_the_prompt_set_reads_them(hps_hub, pcpo, monkeypatch):
    from pcpo.prompts import prompt_set

    with serve_hub(hps_hub.hub) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, out, err = pcpo("data", "fetch", *hps_hub.names, "--catalogue", hps_hub.catalogue, "--no-progress")
    assert rc == 0, err
    folder = hps_hub.root / "prompts" / "hps_benchmark"
    for s in STYLES:
        stamp = json.loads((hps_hub.root / ".fetched" / f"hps-benchmark-{s}.json").read_text())
        assert Path(stamp["path"]) == folder / f"{s}.json"
        assert (folder / f"{s}.json").read_bytes() == hps_hub.raw[s]
        assert stamp["sha256"] == sha256(hps_hub.raw[s])
        # the hub cache holds it as a plain git blob (named by its git sha1, not a sha256): the pinned
        # sha256 is what verified it
        assert Path(stamp["cache_path"]).resolve().name == _git_blob_sha1(hps_hub.raw[s])

    full = prompt_set({"source": "hps-benchmark", "path": str(folder)})
    assert [p for p, _ in full] == [p for s in STYLES for p in _prompts(s)]
    assert [m["style"] for _, m in full] == [s for s in STYLES for _ in range(N_PER_STYLE)]
    assert [m["style_index"] for _, m in full[:N_PER_STYLE]] == list(range(N_PER_STYLE))

    # the styles list picks and orders the files
    two = prompt_set({"source": "hps-benchmark", "path": str(folder), "styles": ["photo", "anime"]})
    assert [p for p, _ in two] == _prompts("photo") + _prompts("anime")

    # count + seed: the numpy draw over the concatenation, kept in order, the same on every call
    spec = {"source": "hps-benchmark", "path": str(folder), "count": 10, "seed": 3}
    got = prompt_set(spec)
    keep = np.sort(np.random.default_rng(3).choice(len(full), size=10, replace=False))
    assert got == [full[int(i)] for i in keep]
    assert got == prompt_set(dict(spec))
    assert prompt_set({**spec, "seed": 4}) != got
    assert prompt_set({**spec, "seed": None}) == full[:10]


def test_a_wrong_pin_deletes_the_file_and_fails_in_one_line(hps_hub, pcpo, monkeypatch):
    cat = yaml.safe_load(Path(hps_hub.catalogue).read_text())
    cat["hps-benchmark-photo"]["sha256"] = "0" * 64
    write_catalogue(Path(hps_hub.catalogue), cat)
    with serve_hub(hps_hub.hub) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, out, err = pcpo("data", "fetch", "hps-benchmark-photo", "--catalogue", hps_hub.catalogue,
                            "--no-progress")
    assert rc != 0
    line = one_line_error(err)
    assert "checksum mismatch" in line and "benchmark/photo.json" in line and "pcpo data fetch hps-benchmark-photo" in line
    assert not (hps_hub.root / "prompts" / "hps_benchmark" / "photo.json").exists()
    assert not (hps_hub.root / ".fetched" / "hps-benchmark-photo.json").exists()


def test_a_missing_style_fails_in_one_line_naming_its_fetch(tmp_path):
    from pcpo.config import ConfigError
    from pcpo.prompts import prompt_set

    (tmp_path / "anime.json").write_text(json.dumps(_prompts("anime")))
    with pytest.raises(ConfigError) as e:
        prompt_set({"source": "hps-benchmark", "path": str(tmp_path)}, "evaluation.prompts.reward")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("evaluation.prompts.reward:")
    assert "concept-art.json" in msg and "`pcpo data fetch hps-benchmark-concept-art`" in msg
    # only the asked styles are read
    assert len(prompt_set({"source": "hps-benchmark", "path": str(tmp_path), "styles": ["anime"]})) == N_PER_STYLE
    with pytest.raises(ConfigError, match=r"evaluation.prompts.styles: .*sketch"):
        prompt_set({"source": "hps-benchmark", "path": str(tmp_path), "styles": ["sketch"]})
    (tmp_path / "photo.json").write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match=r"photo.json: expected a non-empty JSON list.*hps-benchmark-photo --force"):
        prompt_set({"source": "hps-benchmark", "path": str(tmp_path), "styles": ["photo"]})


@pytest.mark.parametrize("name", HPS_CONFIGS)
def test_hpsv21_paper_configs_evaluate_the_reward_on_the_benchmark(name, tmp_path, monkeypatch):
    from pcpo.data import load_catalogue, needs_for_config
    from pcpo.prompts import evaluation_prompt_sets

    monkeypatch.chdir(tmp_path)  # nothing local: every need comes from the catalogue
    config = yaml.safe_load((PAPER / f"{name}.yaml").read_text())
    sets = evaluation_prompt_sets(config["evaluation"], "file")
    reward = sets["reward"]
    assert reward["source"] == "hps-benchmark" and reward["n_per_prompt"] == 4
    assert reward.get("path", "data/prompts/hps_benchmark") == "data/prompts/hps_benchmark"
    assert reward.get("styles", STYLES) == STYLES and "reward" in reward["metrics"]
    n = needs_for_config(config, load_catalogue(), tmp_path / "data")
    assert [x for x in n.roles["sample"] if x.startswith("hps-benchmark-")] == [f"hps-benchmark-{s}" for s in STYLES]
    assert not any("hps" in u or "hpdv2_test" in u for u in n.unresolved), n.unresolved


def test_dry_run_for_the_flux_config_lists_the_four_files(data_env, pcpo, monkeypatch):
    monkeypatch.chdir(data_env.tmp)  # nothing local: every need comes from the catalogue
    rc, out, err = pcpo("data", "fetch", "--for", PAPER / "dancegrpo_flux_hpsv21.yaml", "--dry-run")
    assert rc == 0, err  # nothing unresolved
    listed = out.split()
    assert [n for n in listed if n.startswith("hps-benchmark-")] == [f"hps-benchmark-{s}" for s in STYLES]
    assert {"flux1-dev", "hpsv21-checkpoint", "hpdv2-train-prompts"} <= set(listed), listed
    assert not (data_env.root / ".fetched").exists()  # a dry run fetches nothing
