"""Hub files and snapshots through huggingface_hub against the loopback hub (HF_ENDPOINT), gated repos,
offline mode, and torch_hub_file entries that land where torch.hub's own loader finds them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.data.conftest import go_offline, one_line_error, sha256, write_catalogue
from tests.loopback import repo_commit, serve_files, serve_hub

REPO = "pcpo-test/tiny-clip-text"


@pytest.fixture
def hub(data_env):
    """A tiny transformers model saved in the test, as a hub repository folder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from pcpo.models.tiny import quiet_hf

    root = data_env.tmp / "hub"
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8)
    with quiet_hf():
        CLIPTextModel(cfg).save_pretrained(root / REPO / "text_encoder")
    (root / REPO / "model_index.json").write_text(json.dumps({"_class_name": "Test"}))
    (root / "datasets" / "pcpo-test" / "meta").mkdir(parents=True)
    (root / "datasets" / "pcpo-test" / "meta" / "meta_data.json").write_text(json.dumps({"a": {"prompt": "x"}}))
    data_env.hub = root
    return data_env


def _cat(env, **extra):
    weights = (env.hub / REPO / "text_encoder" / "model.safetensors").read_bytes()
    entries = {
        "tiny": {"kind": "hf_snapshot", "repo": REPO, "revision": repo_commit(env.hub / REPO)},
        "tiny-weights": {"kind": "hf_file", "repo": REPO, "filename": "text_encoder/model.safetensors",
                         "revision": "main", "sha256": sha256(weights)},
        "meta": {"kind": "hf_file", "repo": "pcpo-test/meta", "repo_type": "dataset", "filename": "meta_data.json",
                 "revision": "main", "sha256": None, "sha256_note": "test", "dest": "data/mjhq/meta_data.json"},
    }
    entries.update(extra)
    return write_catalogue(env.tmp / "sources.yaml", entries)


def test_hub_snapshot_and_file_are_fetched_verified_and_loadable_offline(hub, pcpo, monkeypatch):
    from huggingface_hub import snapshot_download
    from transformers import CLIPTextModel

    cat = _cat(hub)
    with serve_hub(hub.hub) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, out, err = pcpo("data", "fetch", "tiny", "tiny-weights", "meta", "--catalogue", cat, "--no-progress")
        assert rc == 0, err
        n_requests = len(endpoint.log)
    stamp = json.loads((hub.root / ".fetched" / "tiny.json").read_text())
    assert stamp["commit"] == repo_commit(hub.hub / REPO)
    assert stamp["files"]["text_encoder/model.safetensors"] == sha256(
        (hub.hub / REPO / "text_encoder" / "model.safetensors").read_bytes())
    assert set(stamp["files"]) == {"model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors"}
    fstamp = json.loads((hub.root / ".fetched" / "tiny-weights.json").read_text())
    assert Path(fstamp["path"]).read_bytes() == (hub.hub / REPO / "text_encoder" / "model.safetensors").read_bytes()
    # a dataset file with a dest is copied there
    assert json.loads((hub.root / "mjhq" / "meta_data.json").read_text()) == {"a": {"prompt": "x"}}
    assert n_requests > 0
    # the server is gone and the hub is offline: the model loads from what was fetched
    go_offline(monkeypatch)
    folder = snapshot_download(REPO, revision=stamp["commit"], local_files_only=True)
    assert folder == stamp["path"]
    model = CLIPTextModel.from_pretrained(Path(folder) / "text_encoder")
    ref = CLIPTextModel.from_pretrained(hub.hub / REPO / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    rc, out, _ = pcpo("data", "list", "--catalogue", cat, "--verify")
    assert rc == 0 and out.count("verified") == 3


def test_hub_file_with_wrong_pinned_checksum_is_deleted(hub, pcpo, monkeypatch):
    cat = _cat(hub, bad={"kind": "hf_file", "repo": REPO, "filename": "text_encoder/model.safetensors",
                         "revision": "main", "sha256": "f" * 64})
    with serve_hub(hub.hub) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, _, err = pcpo("data", "fetch", "bad", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    assert rc == 2 and "checksum mismatch" in line and "f" * 64 in line and "model.safetensors" in line
    blobs = list((hub.tmp / "hf" / "hub").rglob("blobs/*"))
    assert not [b for b in blobs if b.is_file() and not b.name.endswith(".lock")]
    assert not (hub.root / ".fetched" / "bad.json").exists()


def test_unknown_revision_is_named(hub, pcpo, monkeypatch):
    cat = _cat(hub, old={"kind": "hf_snapshot", "repo": REPO, "revision": "a" * 40})
    with serve_hub(hub.hub) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, _, err = pcpo("data", "fetch", "old", "--catalogue", cat, "--no-progress")
    assert rc == 2
    line = one_line_error(err)
    assert REPO in line and ("a" * 40 in line or "not found" in line), line


def test_gated_repository_says_licence_and_login(hub, pcpo, monkeypatch):
    cat = _cat(hub, gated={"kind": "hf_snapshot", "repo": REPO, "revision": "main", "gated": True})
    with serve_hub(hub.hub, gated={REPO}, tokens={"hf_good"}) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        rc, _, err = pcpo("data", "fetch", "gated", "--catalogue", cat, "--no-progress")
        line = one_line_error(err)
        assert rc == 2
        for s in ("gated", "licence", "hf auth login", "HF_TOKEN", f"{endpoint}/{REPO}", "pcpo data fetch gated"):
            assert s in line, (s, line)
        monkeypatch.setenv("HF_TOKEN", "hf_good")  # with an accepted licence and a token it comes through
        rc, _, err = pcpo("data", "fetch", "gated", "--catalogue", cat, "--no-progress")
        assert rc == 0, err


def test_offline_hub_fails_in_one_line(hub, pcpo, monkeypatch):
    cat = _cat(hub)
    with serve_hub(hub.hub) as endpoint:
        pass
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    rc, _, err = pcpo("data", "fetch", "tiny", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    for s in (REPO, f"{endpoint}/{REPO}", "connection refused", "`pcpo data fetch tiny`", f"`hf download {REPO}"):
        assert s in line, (s, line)
    go_offline(monkeypatch)
    rc, _, err = pcpo("data", "fetch", "tiny-weights", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    for s in ("text_encoder/model.safetensors", "HF_HUB_OFFLINE", "`pcpo data fetch tiny-weights`",
              f"`hf download {REPO} text_encoder/model.safetensors`"):
        assert s in line, (s, line)


def test_torch_hub_file_lands_where_torch_hub_finds_it(data_env, pcpo, monkeypatch):
    hub_filename = "tinynet-0123abcd.pth"
    www = data_env.tmp / "www" / "download.example.org" / "models"
    www.mkdir(parents=True)
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    torch.save(sd, www / hub_filename)
    url = f"https://download.example.org/models/{hub_filename}"
    cat = write_catalogue(data_env.tmp / "sources.yaml", {"tinynet": {
        "kind": "torch_hub_file", "url": url, "hub_filename": hub_filename,
        "sha256": sha256((www / hub_filename).read_bytes())}})
    with serve_files(data_env.tmp / "www") as base:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", base)
        rc, _, err = pcpo("data", "fetch", "tinynet", "--catalogue", cat, "--no-progress")
        assert rc == 0, err
    placed = data_env.tmp / "torch" / "hub" / "checkpoints" / hub_filename
    assert placed.is_file()
    # torch.hub's own loader, with the canonical URL, takes the cached file (the host does not exist)
    got = torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


from tests.loopback import loopback_files, loopback_hub  # noqa: E402,F401 - the fixtures


def test_loopback_fixtures_serve_what_is_written_after_the_start(loopback_hub, loopback_files):
    import requests
    from huggingface_hub import HfApi

    (loopback_files.root / "h.example.org").mkdir()
    (loopback_files.root / "h.example.org" / "f.bin").write_bytes(b"0123456789")
    r = requests.get(f"{loopback_files.url}/h.example.org/f.bin", headers={"Range": "bytes=3-5"}, timeout=10)
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"345", "bytes 3-5/10")
    assert requests.get(f"{loopback_files.url}/nope", timeout=10).status_code == 404
    (loopback_hub.root / "o" / "r").mkdir(parents=True)
    (loopback_hub.root / "o" / "r" / "a.json").write_text("{}")
    info = HfApi(endpoint=loopback_hub.url).model_info("o/r")
    assert info.sha == repo_commit(loopback_hub.root / "o" / "r") and [s.rfilename for s in info.siblings] == ["a.json"]
