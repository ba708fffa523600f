#!/usr/bin/env bash
# Train the shipped default on one bare, offline GPU machine and hand back its best checkpoint.
#
# Made for a lent machine with no network and no copy of this repository's data:
# - Python packages that machine lacks travel as wheels in .whl/ (datasets, dill, multiprocess,
#   fsspec, pydantic and its parts), and pyarrow in .whl-pyarrow/, installed only if the machine's
#   is older than `datasets` needs;
# - the TinyStories files travel in .gpudata/ (cp ../shared/data/tinystories/{train,
#   train_extra_recased,valid}.txt.gz .gpudata/).
# Results go to $OUT in pieces under 16 MB: the weights split with `split`, the rest of the run
# (best/ and final/ without weights, logs, trainer state) in one tarball. Put them back with
#
#   cat OUT/model.safetensors.part-* > RUN/best/model.safetensors && tar xzf OUT/run-meta.tgz
#
# Environment:
#   OUT            the folder that comes back (required)
#   RUN            the run's output folder (runs/default-gpu)
#   TRAIN_LIMIT_S  hard stop for the training process (450); output/best is written whenever
#                  validation improves, so a stopped run still hands back its best step
#   TRAIN_ARGS     extra model_training flags, after the scratch-tinystories-gpu preset
#   DATA           the folder with train.txt.gz, train_extra_recased.txt.gz, valid.txt.gz (.gpudata)
#   PART_SIZE      the size of each weights piece (15M)
#   WHEELS, PYARROW_WHEELS  the wheel folders (.whl, .whl-pyarrow); a missing folder installs nothing
#   ALLOW_CPU=1    go on when torch sees no GPU (to rehearse the script on a CPU)
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
RUN=${RUN:-runs/default-gpu}
TRAIN_LIMIT_S=${TRAIN_LIMIT_S:-450}
TRAIN_ARGS=${TRAIN_ARGS:-}
DATA=${DATA:-.gpudata}
PART_SIZE=${PART_SIZE:-15M}
WHEELS=${WHEELS:-.whl}
PYARROW_WHEELS=${PYARROW_WHEELS:-.whl-pyarrow}

nvidia-smi -L || echo "no nvidia-smi: training on whatever torch finds"
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
if ! python3 -c 'import pyarrow, sys; sys.exit(int(pyarrow.__version__.split(".")[0]) < 24)' 2>/dev/null \
    && [ -d "$PYARROW_WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PYARROW_WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15 TOKENIZERS_PARALLELISM=true
python3 - <<'PY' | tee "$OUT/env.txt"; [ "${PIPESTATUS[0]}" = 0 ] || exit 1
import os, accelerate, datasets, pyarrow, pydantic, torch, transformers
assert torch.cuda.is_available() or os.environ.get("ALLOW_CPU"), "torch sees no CUDA device (ALLOW_CPU=1 to train anyway)"
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} | transformers {transformers.__version__} | "
      f"accelerate {accelerate.__version__} | datasets {datasets.__version__} | pyarrow {pyarrow.__version__}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/env.txt" 2>&1

# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
timeout -s TERM "$TRAIN_LIMIT_S" python3 -m model_training --config scratch-tinystories-gpu --output "$RUN" \
  --dataset "$DATA/train.txt.gz" "$DATA/train_extra_recased.txt.gz" --valid "$DATA/valid.txt.gz" $TRAIN_ARGS \
  2>&1 | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
echo "model_training exited with $status"

if [ ! -f "$RUN/best/model.safetensors" ]; then
  echo "no $RUN/best to hand back"
  exit 1
fi
split -b "$PART_SIZE" -d "$RUN/best/model.safetensors" "$OUT/model.safetensors.part-"
tar czf "$OUT/run-meta.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pkl' "$RUN"
sha256sum "$RUN/best/model.safetensors" | tee "$OUT/best.sha256"
cat "$RUN/best/diffusion_config.json"
ls -la "$OUT"
exit "$status"
