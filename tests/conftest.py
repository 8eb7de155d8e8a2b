import os

import pytest

from tests.helpers import ROOT

os.environ.setdefault("PCPO_CACHE", str(ROOT / ".cache-test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny randomly initialised eps and flow models in diffusers' folder layout."""
    from pcpo.models.tiny import build_random_tiny

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "eps": str(build_random_tiny("eps", root / "eps", seed=0)),
        "flow": str(build_random_tiny("flow", root / "flow", seed=0)),
    }
