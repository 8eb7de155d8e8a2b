"""`pcpo data fetch` of plain files against the loopback file server: verified, atomic, resumable, and one
line for every failure (wrong checksum, dropped connection, offline)."""
from __future__ import annotations

import json
import os

import pytest

from tests.data.conftest import go_offline, one_line_error, sha256, write_catalogue
from tests.loopback import serve_files

HOST = "raw.githubusercontent.com"
URL_PATH = "org/repo/0123abc/dataset/pickscore/train.txt"
PROMPTS = "".join(f"a photo of thing number {i}\n" for i in range(400)).encode()  # ~11 kB


@pytest.fixture
def served(data_env):
    src = data_env.tmp / "www"
    (src / HOST / URL_PATH).parent.mkdir(parents=True)
    (src / HOST / URL_PATH).write_bytes(PROMPTS)
    data_env.src = src
    return data_env


def catalogue(env, sha=None, size=None):
    entry = {"kind": "url", "description": "test prompts", "url": f"https://{HOST}/{URL_PATH}",
             "sha256": sha or sha256(PROMPTS), "dest": "data/prompts/train.txt"}
    if size is not None:
        entry["size"] = size
    return write_catalogue(env.tmp / "sources.yaml", {"prompts": entry})


def test_fetch_verifies_places_and_stamps_a_file(served, pcpo, monkeypatch):
    cat = catalogue(served)
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, out, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
        assert rc == 0, err
        dest = served.root / "prompts" / "train.txt"
        assert dest.read_bytes() == PROMPTS
        assert not list(dest.parent.glob("*.part")) and not list(dest.parent.glob(".*tmp"))
        stamp = json.loads((served.root / ".fetched" / "prompts.json").read_text())
        assert stamp["sha256"] == sha256(PROMPTS) and stamp["path"] == str(dest)
        assert stamp["source"] == f"https://{HOST}/{URL_PATH}"
        assert [r[1] for r in url.log] == [f"/{HOST}/{URL_PATH}"]  # PCPO_DATA_ENDPOINT rewrote the URL
        assert "prompts\tverified" in out
        # present and verified: no second download
        rc, out, _ = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
        assert rc == 0 and len(url.log) == 1
        rc, out, _ = pcpo("data", "list", "--catalogue", cat, "--verify")
        assert rc == 0 and "verified" in out
        # a damaged file is found by --verify and fetched again by --force
        dest.write_bytes(PROMPTS[:-1] + b"X")
        rc, out, err = pcpo("data", "list", "--catalogue", cat, "--verify")
        assert rc == 2 and "CORRUPT" in out
        rc, _, _ = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress", "--force")
        assert rc == 0 and dest.read_bytes() == PROMPTS


def test_wrong_checksum_fails_in_one_line_and_leaves_nothing(served, pcpo, monkeypatch):
    wrong = "0" * 64
    cat = catalogue(served, sha=wrong)
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    assert rc == 2
    for s in ("checksum mismatch", "train.txt", wrong, sha256(PROMPTS), f"{url}/{HOST}/{URL_PATH}"):
        assert s in line, (s, line)
    folder = served.root / "prompts"
    assert not folder.exists() or not any(folder.iterdir())  # neither the file nor a partial one
    assert not (served.root / ".fetched" / "prompts.json").exists()


def test_wrong_size_fails_too(served, pcpo, monkeypatch):
    cat = write_catalogue(served.tmp / "s.yaml", {"prompts": {
        "kind": "url", "url": f"https://{HOST}/{URL_PATH}", "sha256": None, "sha256_note": "test: unpinned",
        "size": len(PROMPTS) + 1, "dest": "data/prompts/train.txt"}})
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    assert rc == 2 and "size mismatch" in one_line_error(err)
    assert not any((served.root / "prompts").iterdir())


def test_dropped_connection_resumes_with_a_range_request(served, pcpo, monkeypatch):
    monkeypatch.setattr("pcpo.data.download.time.sleep", lambda s: None)
    cat = catalogue(served)
    with serve_files(served.src, drop_after=3000, drops=2) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    assert rc == 0, err
    assert (served.root / "prompts" / "train.txt").read_bytes() == PROMPTS
    assert [r[2] for r in url.log] == [None, "bytes=3000-", "bytes=6000-"]


def test_a_download_that_keeps_breaking_fails_in_one_line_and_resumes_later(served, pcpo, monkeypatch):
    monkeypatch.setattr("pcpo.data.download.time.sleep", lambda s: None)
    cat = catalogue(served)
    dest = served.root / "prompts" / "train.txt"
    with serve_files(served.src, drop_after=1000, drops=100) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    assert rc == 2 and "kept breaking off" in line and "pcpo data fetch prompts" in line
    assert not dest.exists()  # nothing under the final name
    part = dest.with_name("train.txt.part")
    assert part.stat().st_size == 4000  # the first try and three resumes, 1000 bytes each
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    assert rc == 0, err
    assert [r[2] for r in url.log] == ["bytes=4000-"]
    assert dest.read_bytes() == PROMPTS and not part.exists()


def test_a_corrupt_partial_file_is_caught_by_the_checksum(served, pcpo, monkeypatch):
    cat = catalogue(served)
    part = served.root / "prompts" / "train.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 10)
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    assert rc == 2 and "checksum mismatch" in one_line_error(err)
    assert not part.exists()
    with serve_files(served.src) as url:  # the next try starts clean
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        assert pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")[0] == 0


def test_offline_fails_in_one_line_naming_file_source_and_command(served, pcpo, monkeypatch):
    cat = catalogue(served)
    with serve_files(served.src) as url:
        pass  # stopped: the port refuses connections
    monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
    rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    line = one_line_error(err)
    assert rc == 2
    for s in ("train.txt", f"{url}/{HOST}/{URL_PATH}", "connection refused", "`pcpo data fetch prompts`"):
        assert s in line, (s, line)
    assert not (served.root / "prompts" / "train.txt").exists()
    # huggingface_hub's offline mode stops plain downloads as well
    go_offline(monkeypatch)
    rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
    assert rc == 2 and "HF_HUB_OFFLINE" in one_line_error(err)


def test_bad_names_and_catalogues_are_one_line(data_env, pcpo):
    cat = write_catalogue(data_env.tmp / "s.yaml", {"x": {"kind": "url", "url": "https://h/x", "sha256": "12",
                                                          "dest": "data/x"}})
    rc, _, err = pcpo("data", "fetch", "x", "--catalogue", cat)
    assert rc == 2 and "sha256 must be 64 hex digits" in one_line_error(err)
    cat = write_catalogue(data_env.tmp / "s.yaml", {"x": {"kind": "url", "url": "https://h/x", "sha256": None,
                                                          "dest": "data/x"}})
    assert "sha256_note" in one_line_error(pcpo("data", "fetch", "x", "--catalogue", cat)[2])
    cat = write_catalogue(data_env.tmp / "s.yaml", {"x": {"kind": "url", "url": "https://h/x", "sha256": "a" * 64,
                                                          "dest": "data/x"}})
    rc, _, err = pcpo("data", "fetch", "nosuch", "--catalogue", cat)
    assert rc == 2 and "unknown data name 'nosuch'" in one_line_error(err)
    rc, _, err = pcpo("data", "fetch", "x", "--catalogue", data_env.tmp / "missing.yaml")
    assert rc == 2 and "does not exist" in one_line_error(err)


def test_url_rewrite_and_root_relative_dest(monkeypatch, tmp_path):
    from pcpo.data.catalogue import under_root
    from pcpo.data.download import rewrite_url

    monkeypatch.delenv("PCPO_DATA_ENDPOINT", raising=False)
    assert rewrite_url("https://a.b/c/d.txt?x=1") == "https://a.b/c/d.txt?x=1"
    monkeypatch.setenv("PCPO_DATA_ENDPOINT", "http://127.0.0.1:9/")
    assert rewrite_url("https://a.b/c/d.txt?x=1") == "http://127.0.0.1:9/a.b/c/d.txt?x=1"
    assert under_root("data/prompts/x.txt", tmp_path) == tmp_path / "prompts" / "x.txt"
    assert under_root("weights/y.pth", tmp_path) == tmp_path / "weights" / "y.pth"
    assert under_root(os.path.abspath("/abs/z"), tmp_path) == type(tmp_path)("/abs/z")


def test_a_changed_catalogue_entry_is_fetched_again(served, pcpo, monkeypatch):
    cat = catalogue(served)
    with serve_files(served.src) as url:
        monkeypatch.setenv("PCPO_DATA_ENDPOINT", url)
        assert pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")[0] == 0
        (served.src / HOST / URL_PATH).write_bytes(PROMPTS + b"one more\n")
        cat = catalogue(served, sha=sha256(PROMPTS + b"one more\n"))
        rc, _, err = pcpo("data", "fetch", "prompts", "--catalogue", cat, "--no-progress")
        assert rc == 0, err
    assert (served.root / "prompts" / "train.txt").read_bytes() == PROMPTS + b"one more\n"
    assert len(url.log) == 2
