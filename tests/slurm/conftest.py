"""Fixtures for tests that need a real (local, one-node) Slurm cluster.

Tests marked ``@pytest.mark.slurm`` use the session fixture ``slurm_cluster``;
deselect them with ``-m "not slurm"``. The fixture skips (with the reason)
where the cluster cannot run: not root, no apt-get with packages missing,
``PCPO_SLURM_INSTALL=0`` with packages missing, or an existing
/etc/slurm/slurm.conf that this helper did not write. A failure to start
the daemons is an error, reported with the tails of their logs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import cluster as slurm_cluster_helpers  # noqa: E402  (tests/slurm/cluster.py)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slurm: needs a local one-node Slurm cluster (root; installs slurm-wlm "
        "and munge with apt-get if missing)",
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm cluster; stopped again at session end.

    Offers ``.run_snakemake(workdir, snakefile, configfile=None,
    extra_args=())`` (= ``cluster.run_snakemake_on_slurm``) and ``.logs()``.
    """
    cluster = slurm_cluster_helpers.SlurmCluster()
    try:
        cluster.start()
    except slurm_cluster_helpers.ClusterUnavailable as e:
        pytest.skip(f"no local Slurm test cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
