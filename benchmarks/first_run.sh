#!/usr/bin/env bash
# The first run as a new user meets it: a fresh clone, empty caches, `bash scripts/run.sh` to the report.
# Prints the wall time (setup and Snakemake apart), the summed time of each rule's jobs (from
# Snakemake's own log), the largest resident set of any one process (GNU time's "Maximum resident set
# size", which covers every process of the tree but reports the largest single one), and the list
# of report files, and writes the same to benchmarks/results/first_run_<host>_<date>.txt.
#
#     bash benchmarks/first_run.sh [REPO] [WORKDIR]
#
# REPO: what to clone (default: this checkout's HEAD, as a file:// clone, so uncommitted changes are
# not measured). WORKDIR: where (default: a new temporary folder, removed afterwards unless KEEP=1).
# Caches emptied: the Hugging Face, torch hub, pcpo and matplotlib caches (HF_HOME, TORCH_HOME,
# PCPO_CACHE, MPLCONFIGDIR point into WORKDIR). pip's wheel cache is kept: torch comes from this
# machine's disk, as on every fresh machine here.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REPO=${1:-file://$HERE}
WORK=${2:-$(mktemp -d /var/tmp/pcpo-first-run.XXXXXX)}
OUT_DIR="$HERE/benchmarks/results"
STAMP="$(hostname -s)_$(date -u +%Y-%m-%d)"
mkdir -p "$WORK" "$OUT_DIR"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
command -v /usr/bin/time >/dev/null || { echo "first_run: needs GNU time (apt-get install time)" >&2; exit 2; }

echo "first_run: cloning $REPO into $WORK/pcpo" >&2
git clone -q "$REPO" "$WORK/pcpo"
cd "$WORK/pcpo"
export HF_HOME="$WORK/cache/hf" TORCH_HOME="$WORK/cache/torch" PCPO_CACHE="$WORK/cache/pcpo"
export MPLCONFIGDIR="$WORK/cache/mpl"

t0=$(date +%s.%N)
/usr/bin/time -v -o "$WORK/setup.time" bash scripts/setup.sh > "$WORK/setup.log" 2>&1
t1=$(date +%s.%N)
/usr/bin/time -v -o "$WORK/run.time" bash scripts/run.sh > "$WORK/run.log" 2>&1
t2=$(date +%s.%N)

{
    echo "# first run of $(git rev-parse --short HEAD) on $(hostname -s), $(date -u +%FT%TZ)"
    echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores," \
         "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load at the start: $LOAD0, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "$t0" "$t1" "$t2" "$WORK" <<'EOF'
import re, sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

t0, t1, t2 = map(float, sys.argv[1:4])
work = Path(sys.argv[4])
def rss(f):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", (work / f).read_text())
    return int(m.group(1)) / 1024 ** 2
print(f"wall: {t2 - t0:.0f} s (setup {t1 - t0:.0f} s, snakemake {t2 - t1:.0f} s)")
print(f"peak RSS of one process: setup {rss('setup.time'):.2f} GiB, run {rss('run.time'):.2f} GiB")
# Snakemake's log: "[timestamp]" then "rule X:" ... "jobid: N" at a start; "[timestamp]" then
# "Finished jobid: N (Rule: X)" at the end
logs = sorted((work / "pcpo" / ".snakemake" / "log").glob("*.snakemake.log"))
start, rule_of, total, count = {}, {}, defaultdict(float), defaultdict(int)
stamp = cur = None
for line in logs[-1].read_text().splitlines() if logs else []:
    m = re.match(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", line)
    if m:
        stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        continue
    m = re.match(r"\s*(?:local)?rule (\w+):", line)
    if m:
        cur = m.group(1)
        continue
    m = re.match(r"\s*jobid: (\d+)", line)
    if m and cur:
        start[m.group(1)], rule_of[m.group(1)] = stamp, cur
        cur = None
        continue
    m = re.match(r"Finished jobid: (\d+)", line) or re.match(r"Finished job (\d+)\.", line)
    if m and m.group(1) in start:
        j = m.group(1)
        total[rule_of[j]] += stamp - start[j]
        count[rule_of[j]] += 1
print(f"{'rule':<24}{'jobs':>6}{'summed s':>10}")
for r in sorted(total, key=total.get, reverse=True):
    print(f"{r:<24}{count[r]:>6}{total[r]:>10.0f}")
print(f"{'all':<24}{sum(count.values()):>6}{sum(total.values()):>10.0f}  (1 s resolution: Snakemake's log stamps)")
EOF
    echo "report files:"
    (cd results && find . -path ./reference -prune -o -path '*/report/*' -type f -print | sort | sed 's/^/  /')
} | tee "$OUT_DIR/first_run_$STAMP.txt"
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
