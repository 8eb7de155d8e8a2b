#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the project into it.
# A reused environment is only trusted when it was built from the same pyproject.toml
# (a stamp holds its hash); otherwise it is rebuilt from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PCPO_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.pcpo-install-stamp"
want=$( (cat pyproject.toml; $PY --version) | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "setup: reusing $VENV (built from this pyproject.toml)"
else
    echo "setup: building $VENV (torch is large: about 2 minutes from the local wheel cache)"
    rm -rf "$VENV"
    $PY -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[wandb]" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import pcpo, torch, diffusers, snakemake, tensorboard, wandb; print('setup: torch', torch.__version__)"
    echo "$want" > "$stamp"
fi
