#!/usr/bin/env bash
# Run tests whose tolerances compare float32 results computed in different orders (other batch
# shapes, process counts, kernels) under other CPU kernel sets, as a stand-in for other x86
# machines: torch's own kernels (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA), MKL's
# (MKL_ENABLE_INSTRUCTIONS) and OpenBLAS's (OPENBLAS_CORETYPE, numpy/scipy).  Usage:
#   bash benchmarks/isa_variations.sh [pytest node ids...]
# Prints one line per variation with pytest's summary; exits non-zero if any variation failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ "$#" -eq 0 ]; then
    set -- tests/unit/test_learned_rewards.py tests/unit/test_steps.py tests/unit/test_objectives.py \
        "tests/integration/test_multiprocess.py::test_two_processes_match_one[ddpo-eps]"
fi
variations=(
    "native:"
    "aten-default:ATEN_CPU_CAPABILITY=default"
    "aten-avx2:ATEN_CPU_CAPABILITY=avx2"
    "avx2-everywhere:ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell"
    "sse-baseline:ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 OPENBLAS_CORETYPE=Nehalem"
)
rc=0
for v in "${variations[@]}"; do
    name=${v%%:*}
    envs=${v#*:}
    start=$(date +%s)
    out=$(env $envs "$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1)
    code=$?
    summary=$(printf '%s\n' "$out" | tail -n 1)
    cap=$(env $envs "$PY" -c "import torch; print(torch.backends.cpu.get_cpu_capability())" 2>/dev/null)
    printf '%-16s torch kernels %-8s %4ds  %s\n' "$name" "$cap" "$(( $(date +%s) - start ))" "$summary"
    [ "$code" -eq 0 ] || { rc=1; printf '%s\n' "$out" | grep -E "^(FAILED|E )" | head -20; }
done
exit $rc
