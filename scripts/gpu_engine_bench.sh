#!/usr/bin/env bash
# The engine benchmark on one bare, offline GPU machine: every figure issue "Engine speed" needs, in one
# command of at most 8 minutes (the phases' limits add up to 440 s, plus installing the wheels).
#
# Made for a lent machine (device tool) whose image has torch and transformers but not the web stack:
# the missing wheels travel in .whl/ (scripts/fetch_gpu_wheels.sh fills it; name .whl in `carry`).
# Each phase has its own time limit and writes its JSON as rows complete, so a phase that runs out of
# time still hands back what it measured. Results land in $OUT: *.json and bench.log.
#
#   1. syncs: host syncs per engine iteration, counted (tests/support/host_syncs.py) and by CUDA itself
#      (torch.cuda.set_sync_debug_mode);
#   2. stub: the engine and sampler alone (zero-cost forward), 1/8/64 active, both vocabularies;
#   3. compiled: the reference demo loop, then the server's forward (every planned shape captured as a
#      CUDA graph first: warm-up seconds and the compiled vs eager split are printed and in the JSON),
#      the engine at 1/8/64/256 concurrent: stories/s, tokens/s, p50/p95 time to first step, forwards/story;
#   4. eager: the same engine with the eager forward (--eager), for the graphs' gain;
#   5. http: the shipped model through a real `storydiff serve` with 1/8/64/256 SSE clients (its /info:
#      warm-up seconds and split).
#
# Environment: OUT (required); LIMIT_SYNCS/STUB/COMPILED/EAGER/HTTP seconds per phase (30/30/180/110/90);
# PHASES (syncs stub compiled eager http); ROUNDS (1); WHEELS (.whl); MODEL_DIR (the shipped model).
# Rehearsal on a CPU, as the test suite runs it (tests/test_gpu_engine_script.py): ALLOW_CPU=1 QUICK=1
# with a tiny MODEL_DIR (C = 1 and 8, one reference story; the "compiled" phase runs eagerly on a CPU).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
WHEELS=${WHEELS:-.whl}
PHASES=${PHASES:-syncs stub compiled eager http}
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c 'import os, torch; assert torch.cuda.is_available() or os.environ.get("ALLOW_CPU"), "no CUDA (ALLOW_CPU=1 to rehearse)"' || exit 1
common=(--rounds "${ROUNDS:-1}")
model=()
[ -n "${MODEL_DIR:-}" ] && model=(--model-dir "$MODEL_DIR")
[ -n "${QUICK:-}" ] && common+=(--models default --concurrency 1,8 --reference-stories 1)
bench() {  # bench NAME LIMIT_S ARGS...: one phase, its log appended to bench.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/bench.log"
  timeout -s TERM "$limit" python3 benchmarks/engine_throughput.py --json "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/bench.log"
  echo "== $name exited ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
}
for phase in $PHASES; do
  case $phase in
    stub) bench stub "${LIMIT_STUB:-30}" --stub "${model[@]}" "${common[@]}" ;;
    compiled) bench compiled "${LIMIT_COMPILED:-180}" "${model[@]}" "${common[@]}" ;;
    eager) bench eager "${LIMIT_EAGER:-110}" --eager "${model[@]}" "${common[@]}" --reference-stories 0 ;;
    http) bench http "${LIMIT_HTTP:-90}" --http --models default "${model[@]}" "${common[@]}" --reference-stories 0 ;;
    syncs)
      device=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
      echo "== syncs (limit ${LIMIT_SYNCS:-30}s) on $device" | tee -a "$OUT/bench.log"
      timeout -s TERM "${LIMIT_SYNCS:-30}" python3 benchmarks/host_syncs.py --device "$device" --quick \
        ${MODEL_DIR:+--model "$MODEL_DIR"} 2>&1 | tee "$OUT/syncs.txt" | tee -a "$OUT/bench.log"
      echo "== syncs exited ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log" ;;
  esac
done
ls -la "$OUT"
