#!/usr/bin/env bash
# One-GPU check, under 8 minutes on one H100: each step has a timeout (SIGTERM, SIGKILL 10 s later; at
# most 75 + 180 + 50 + 170 s), and the full-scale ones a --time-budget after which they skip the algorithms left:
#   0. nvidia-smi -L, torch/CUDA versions, the Python packages the steps import
#   1. benchmarks/trainer_overhead.py --epochs 2 --config config/tiny.yaml   (tiny world)  timeout  75 s
#   2. benchmarks/fullscale_epoch.py --model sd15 --scale real --old-logprobs rollout recompute
#      (DDPO and PCPO-DDPO, bf16, each with the rollout's and with recomputed old log-probs: the
#      first-step |log rho| of each and the recompute's cost)             budget 140 s, timeout 180 s
#   3. benchmarks/forward_consistency.py --model sd15 --scale real          (which difference between the
#      rollout's and the training forward moves the SD1.5 prediction)                   timeout  50 s
#   4. benchmarks/fullscale_epoch.py --model flux --scale real              budget 130 s, timeout 170 s
# Shorter limits: GPU_CHECK_{TINY,SD,CONSISTENCY,FLUX}_TIMEOUT and GPU_CHECK_{SD,FLUX}_BUDGET (seconds).
# Runs from a plain checkout with the machine's own python3 (PYTHON=... to choose another) and
# PYTHONPATH=$PWD (an existing PYTHONPATH is kept after it); installs nothing.  Everything is
# printed and, when $OUT is set, also written to $OUT/gpu_check.log, with the JSON summaries in
# $OUT/trainer_overhead.json, $OUT/fullscale_sd15.json and $OUT/fullscale_flux.json.
# Usage: bash benchmarks/gpu_check.sh
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RES="${OUT:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pcpo-gpu-check.XXXXXX")"

# step NAME TIMEOUT_S COMMAND...: runs with a timeout (SIGTERM, then SIGKILL 10 s later), reports the exit code
step() {
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== [$name] $(date -u +%H:%M:%S) timeout ${limit}s: $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$WORK/steps.log"
    local rc=${PIPESTATUS[0]}
    local how="exit $rc"
    [ "$rc" -eq 124 ] && how="TIMED OUT after ${limit}s (exit 124)"
    [ "$rc" -eq 137 ] && how="KILLED (exit 137: timeout's SIGKILL or out of memory)"
    [ "$rc" -ne 0 ] && FAILED=1
    echo "=== [$name] done in $((SECONDS - t0))s: $how"
    STATUS+=("$name: $how")
}

main() {
    STATUS=()
    FAILED=0
    echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $PWD (python: $(command -v "$PY" || echo "$PY not found"))"
    nvidia-smi -L || echo "nvidia-smi -L failed"
    echo
    "$PY" - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0], sys.executable)
need = ["torch", "diffusers", "transformers", "tokenizers", "peft", "accelerate", "safetensors", "tqdm", "yaml",
        "pandas", "numpy", "PIL"]
missing = []
for name in need:
    try:
        mod = importlib.import_module(name)
        print(f"  {name:<13} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        missing.append(name)
        print(f"  {name:<13} MISSING ({type(e).__name__}: {e})")
try:
    import torch

    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
          "| cuda available:", torch.cuda.is_available())
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
except Exception as e:  # noqa: BLE001
    print("torch/CUDA query failed:", e)
if missing:
    pip_names = {"yaml": "pyyaml", "PIL": "pillow"}
    print("\nMISSING PYTHON PACKAGES: " + ", ".join(missing) + ". This script installs nothing: provide them to "
          "this python (e.g. pip wheels unpacked into a folder put on PYTHONPATH: "
          + " ".join(pip_names.get(m, m) for m in missing) + "). The steps below that import them will fail.")
    sys.exit(3)
print("all packages present")
EOF
    local rc=$?
    if [ "$rc" -ne 0 ]; then STATUS+=("packages: MISSING (see above)"); FAILED=1; fi

    local jo=() js=() jf=() jc=()
    if [ -n "$RES" ]; then
        jo=(--json "$RES/trainer_overhead.json")
        js=(--json "$RES/fullscale_sd15.json")
        jf=(--json "$RES/fullscale_flux.json")
        jc=(--json "$RES/forward_consistency_sd15.json")
    fi
    step "1 trainer_overhead tiny" "${GPU_CHECK_TINY_TIMEOUT:-75}" "$PY" benchmarks/trainer_overhead.py --epochs 2 --config config/tiny.yaml \
        ${jo[@]+"${jo[@]}"}
    step "2 fullscale sd15 real" "${GPU_CHECK_SD_TIMEOUT:-180}" "$PY" benchmarks/fullscale_epoch.py --model sd15 --scale real \
        --algorithms ddpo pcpo-ddpo --old-logprobs rollout recompute \
        --time-budget "${GPU_CHECK_SD_BUDGET:-140}" --out "$WORK/sd15" ${js[@]+"${js[@]}"}
    step "3 forward consistency sd15 real" "${GPU_CHECK_CONSISTENCY_TIMEOUT:-50}" "$PY" benchmarks/forward_consistency.py \
        --model sd15 --scale real --out "$WORK/consistency" ${jc[@]+"${jc[@]}"}
    step "4 fullscale flux real" "${GPU_CHECK_FLUX_TIMEOUT:-170}" "$PY" benchmarks/fullscale_epoch.py --model flux --scale real \
        --time-budget "${GPU_CHECK_FLUX_BUDGET:-130}" --out "$WORK/flux" ${jf[@]+"${jf[@]}"}

    echo
    echo "=== gpu_check summary ($SECONDS s in all)"
    local s
    for s in "${STATUS[@]}"; do echo "  $s"; done
    grep -h -e "^RESULT " -e "^CONSISTENCY " "$WORK/steps.log" 2>/dev/null || true
    rm -rf "$WORK"
    return "$FAILED"
}

if [ -n "$RES" ]; then
    mkdir -p "$RES"
    main 2>&1 | tee "$RES/gpu_check.log"
    exit "${PIPESTATUS[0]}"
else
    main 2>&1
fi
