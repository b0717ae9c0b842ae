#!/usr/bin/env bash
# Build what bench/device_train.sh needs on a lent GPU, in ignored folders (nothing is committed):
#
#   bash bench/prepare_carry.sh [DATA_ROOT] [B_INIT]   # DATA_ROOT defaults to ../shared/data
#
# workdirs/carry/vgg16_conv1to4.npz  VGG16 conv1-conv4, fp16 (15 MB of 59; conv5 is never trained through)
# workdirs/carry/train.npz           950 photos + 1450 paintings/textures as JPEG, <= 40 MB
#                                    (with B_INIT: ~850 + ~1300, <= 36 MB)
# workdirs/carry/gpuB_init.safetensors  only with B_INIT (an export of run B from an earlier GPU
#                                    loan, e.g. workdirs/gpuB/model.safetensors): stored as fp16
#                                    (6 MB); device_train.sh then continues B from it rather
#                                    than from scratch, so short loans add up
# workdirs/carry/gpuA_init.safetensors  only with A_INIT=PATH in the environment (an export of
#                                    the built-in model's architecture, configs/builtin.py, e.g.
#                                    v10 to redo v11): fp16, images as with B_INIT (not both);
#                                    device_train.sh then starts A (and B without B_INIT) from it
# .whl/                              ml-collections and tensorboardX wheels (the GPU image lacks them)
#
# Then call the device tool with carry ["workdirs/carry", ".whl"] (64 MiB in all with the repo)
# and the command `bash bench/device_train.sh BUDGET_S $OUT`. Existing files are kept (delete
# them to rebuild); the total is checked against the transfer limit at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Paths given on the command line are relative to where it was typed; defaults to the repo.
DATA=${1:+$(realpath -m "$1")}
B_INIT=${2:+$(realpath -m "$2")}
A_INIT=${A_INIT:+$(realpath -m "$A_INIT")}
if [ -n "$A_INIT" ] && [ -n "$B_INIT" ]; then
  echo "prepare_carry: give A_INIT or B_INIT, not both (two starts do not fit the 64 MiB)" >&2
  exit 1
fi
cd "$ROOT"
DATA=${DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p workdirs/carry .whl
N_CONTENT=950 N_STYLE=1450 MAX_MB=40  # (the repo grows: 1 MiB kept free below)
# carry_start RUN INIT CONFIG: run RUN's start (an export of CONFIG's network) as fp16 in
# workdirs/carry/gpu${RUN}_init.safetensors (read back as float32), the images giving up the
# room; without INIT no start is carried. Another network (the built-in one for run B, say)
# would be refused by train.py on the device, and that run's half of the loan lost.
carry_start() {
  local run=$1 init=$2 config=$3 dest=workdirs/carry/gpu$1_init.safetensors
  if [ -z "$init" ]; then
    rm -f "$dest"
    return 0
  fi
  N_CONTENT=850 N_STYLE=1300 MAX_MB=36
  if [ -f workdirs/carry/train.npz ] && [ "$(du -m workdirs/carry/train.npz | cut -f1)" -gt "$MAX_MB" ]; then
    echo "prepare_carry: workdirs/carry/train.npz is larger than the ${MAX_MB} MB left next to ${run}_INIT; delete it to rebuild" >&2
    exit 1
  fi
  "$PY" -c "import sys; from arbitrary_nst import errors, export, training
try:
    cfg = training.load_config(sys.argv[3], [])
    export.init_from_export(training.build_model(cfg), sys.argv[1])
    export.convert_export(sys.argv[1], sys.argv[2], dtype='float16', overwrite=True)
except errors.NSTError as err: sys.exit(f'prepare_carry: {sys.argv[4]}_INIT is not a run-{sys.argv[4]} export: {err}')" \
    "$init" "$dest" "$config" "$run" || exit 1
}
carry_start A "$A_INIT" configs/builtin.py
carry_start B "$B_INIT" configs/default.py
if [ ! -f workdirs/carry/vgg16_conv1to4.npz ]; then
  "$PY" -m arbitrary_nst.weights --compact workdirs/carry/vgg16_conv1to4.npz
fi
if [ ! -f workdirs/carry/train.npz ]; then
  [ -d "$DATA/content" ] || { echo "prepare_carry: $DATA: no training data folder (content/, style/, texture/)" >&2; exit 1; }
  "$PY" -m arbitrary_nst.data export --out workdirs/carry/train.npz --size 224 --max-mb "$MAX_MB" \
    --n-content "$N_CONTENT" --n-style "$N_STYLE" \
    --content-dir "$DATA/content/imagenet_samples" --content-dir "$DATA/content/bsds500" \
    --content-dir "$DATA/content/coco2014_sample" \
    --style-dir "$DATA/style/peopleart_wikiart" --style-dir "$DATA/style/chinese_painting" \
    --style-dir "$DATA/style/bob_ross" --style-dir "$DATA/style/nst_examples" \
    --style-dir "$DATA/texture/dtd10"
fi
if ! ls .whl/ml_collections-*.whl .whl/tensorboardx-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl ml-collections tensorboardX
fi
# What travels: the tracked and unignored files plus the two carried folders.
repo_kb=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry_kb=$(du -sk workdirs/carry .whl | awk '{s += $1} END {print s}')
total_kb=$(( repo_kb + carry_kb ))
echo "carry: repo ${repo_kb} KiB + workdirs/carry and .whl ${carry_kb} KiB = ${total_kb} KiB of 65536 (64 MiB)"
# (a MiB kept free: the check once passed at 65432 KiB, 0.1 MiB from a refused transfer)
[ "$total_kb" -le $(( 63 * 1024 )) ] || { echo "prepare_carry: ${total_kb} KiB is over 63 MiB (the transfer takes 64 MiB, the repo grows); delete workdirs/carry/train.npz to rebuild it smaller" >&2; exit 1; }
