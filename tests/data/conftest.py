"""Fixtures for the data tests: an isolated data root, Hugging Face cache and torch hub dir, a catalogue
writer and an in-process ``pcpo`` runner.  Nothing here reaches beyond 127.0.0.1."""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    root = tmp_path / "data"
    monkeypatch.setenv("PCPO_DATA", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PCPO_DATA_ENDPOINT", "HF_ENDPOINT", "HF_TOKEN",
              "PCPO_DATA_CATALOGUE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    return SimpleNamespace(root=root, tmp=tmp_path, monkeypatch=monkeypatch)


def go_offline(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def write_catalogue(path: Path, entries: dict) -> str:
    path.write_text(yaml.safe_dump(entries, sort_keys=True))
    return str(path)


@pytest.fixture
def pcpo(capsys):
    """Run ``pcpo ARGS...`` in this process; returns (exit code, stdout, stderr)."""
    def run(*args):
        from pcpo.cli import main

        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def one_line_error(err: str) -> str:
    """The stderr of a failed command must be exactly one error line and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("pcpo data: error: "), lines[0]
    return lines[0]
