#!/usr/bin/env bash
# Set up the environment and run the default experiment (config/tiny.yaml) end to end:
# pretrain the tiny base models, train every algorithm x seed, evaluate, write the report.
# Extra arguments go to snakemake (for example: --configfile config/smoke.yaml, -n).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${PCPO_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
exec snakemake --cores all "$@"
