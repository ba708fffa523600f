#!/usr/bin/env bash
# The engine benchmark on one bare, offline GPU machine: every figure issue "Engine speed" needs, in one run.
#
# Made for a lent machine (device tool) whose image has torch and transformers but not the web stack:
# the missing wheels travel in .whl/ (scripts/fetch_gpu_wheels.sh fills it; name .whl in `carry`).
# Each phase has its own time limit and writes its JSON as rows complete, so a phase that runs out of
# time still hands back what it measured. Results land in $OUT: *.json and bench.log.
#
#   1. stub: the engine and sampler alone (zero-cost forward), 1/8/64 active, both vocabularies;
#   2. eager: the reference demo loop, then the engine at 1/8/64/256, both models, bf16;
#   3. compiled: the same with the static-shape CUDA-graph forward (compiled during warm-up);
#   4. http: the shipped model through a real `storydiff serve` with 1/8/64/256 SSE clients;
#   5. syncs: host syncs per engine iteration, counted (tests/support/host_syncs.py) and by CUDA itself.
#
# Environment: OUT (required); LIMIT_STUB/EAGER/COMPILED/HTTP/SYNCS seconds per phase (60/200/240/150/60);
# PHASES (syncs stub eager compiled http); WHEELS (.whl); ALLOW_CPU=1 and QUICK=1 rehearse it on a CPU.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
WHEELS=${WHEELS:-.whl}
PHASES=${PHASES:-syncs stub eager compiled http}
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c 'import os, torch; assert torch.cuda.is_available() or os.environ.get("ALLOW_CPU"), "no CUDA (ALLOW_CPU=1 to rehearse)"' || exit 1
quick=()
[ -n "${QUICK:-}" ] && quick=(--models default --concurrency 1,8 --rounds 1 --reference-stories 1)
bench() {  # bench NAME LIMIT_S ARGS...: one phase, its log appended to bench.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/bench.log"
  timeout -s TERM "$limit" python3 benchmarks/engine_throughput.py --json "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/bench.log"
  echo "== $name exited ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
}
for phase in $PHASES; do
  case $phase in
    stub) bench stub "${LIMIT_STUB:-60}" --stub "${quick[@]}" ;;
    eager) bench eager "${LIMIT_EAGER:-200}" --eager "${quick[@]}" ;;
    compiled) bench compiled "${LIMIT_COMPILED:-240}" "${quick[@]}" ;;
    http) bench http "${LIMIT_HTTP:-150}" --http --models default "${quick[@]}" ;;
    syncs)
      device=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
      echo "== syncs (limit ${LIMIT_SYNCS:-60}s) on $device" | tee -a "$OUT/bench.log"
      timeout -s TERM "${LIMIT_SYNCS:-60}" python3 benchmarks/host_syncs.py --device "$device" --quick 2>&1 \
        | tee "$OUT/syncs.txt" | tee -a "$OUT/bench.log"
      echo "== syncs exited ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log" ;;
  esac
done
ls -la "$OUT"
