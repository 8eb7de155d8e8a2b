"""Shared test helpers (importable as tests.helpers; pytest's pythonpath holds the repo root)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pcpo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pcpo.cli", *args]
