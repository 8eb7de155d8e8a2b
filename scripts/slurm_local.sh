#!/usr/bin/env bash
# Local one-node Slurm cluster for the Slurm tests (tests/slurm/cluster.py).
# Needs root on Debian/Ubuntu; installs slurm-wlm + munge with apt-get when
# they are missing.
#
#   scripts/slurm_local.sh install          # apt-get only (prints seconds)
#   scripts/slurm_local.sh start|stop|status
#   scripts/slurm_local.sh run CMD [ARGS]   # start, run CMD, always stop
#
# e.g. scripts/slurm_local.sh run python -m pytest -m slurm
# pytest's `slurm_cluster` fixture uses a cluster started this way (and
# leaves it running); without one it starts and stops its own.
# PYTHON picks the interpreter (default: python3; the helper is stdlib-only).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
helper="$root/tests/slurm/cluster.py"

case "${1:-}" in
  install|start|stop|status)
    exec "$py" "$helper" "$1"
    ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 run CMD [ARGS...]" >&2; exit 2; }
    "$py" "$helper" start
    trap '"$py" "$helper" stop' EXIT
    "$@"
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
