import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh PCPO_CACHE per module (converted Inception weights, reference statistics), with no
    PCPO_INCEPTION_WEIGHTS override."""
    d = tmp_path_factory.mktemp("pcpo_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PCPO_CACHE", str(d))
        mp.delenv("PCPO_INCEPTION_WEIGHTS", raising=False)
        yield d
