import os

import pytest

from tests.helpers import ROOT

os.environ.setdefault("PCPO_CACHE", str(ROOT / ".cache-test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module, restored afterwards.  The test models are minute: one
    thread is fastest, and on a loaded 2-core box OpenMP's spinning workers make them 5-100x
    slower (measured).  Results do not depend on it.  Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny randomly initialised eps and flow models in diffusers' folder layout."""
    from pcpo.models.tiny import build_random_tiny

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "eps": str(build_random_tiny("eps", root / "eps", seed=0)),
        "flow": str(build_random_tiny("flow", root / "flow", seed=0)),
    }
