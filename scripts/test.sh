#!/usr/bin/env bash
# Set up the environment and run the test suite (everything but the Slurm
# integration test, which installs system packages; run it with `-m slurm`, and the tests marked
# long, over ten minutes each; run them with `-m long`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${PCPO_VENV:-.venv}
if [ "$#" -eq 0 ]; then set -- -m "not slurm and not long"; fi
exec "$VENV/bin/python" -m pytest "$@"
