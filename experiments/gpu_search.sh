#!/usr/bin/env bash
# The issue-12 recipe search on a lent GPU machine (no TensorFlow there: Keras runs on JAX).
#
# Prepare here (once): the LIDC crops and the Keras wheels, in folders git ignores, carried to the machine:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#   .venv/bin/python -c "from nodulekit.readers import read_lidc_release as r; r('../shared/data/lidc/LIDC-IDRI-slices', crop_size=64).save('.gpu/lidc64.npz')"
#   pip download --no-deps -d .whl keras==3.15.1 namex optree   (see benchmarks/gpu.sh)
# Run there (carry .gpu and .whl):   bash experiments/gpu_search.sh  ->  $OUT/search.tar.gz
#
# Lesson of the first try (2026-11-27, H200): 12 worker processes started at once finished no unit in
# 5 minutes, twice, and the output had been filtered away, so the cause (XLA compilation and
# convolution autotuning per process and per batch shape, or contention) was never seen. Hence: a
# one-unit smoke run first, unfiltered and timed; then few workers; autotuning kept cheap.
set -u
cd "$(dirname "$0")/.."
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/keras-*.whl .whl/namex-*.whl .whl/optree-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_autotune_level=1}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
out=/tmp/search
# 1. Smoke: one fold of the shipped recipe for 2 epochs, every line of output kept.
timeout -k 5 ${SMOKE_S:-150} python3 experiments/real_ct.py --data .gpu/lidc64.npz --out /tmp/smoke --recipes bn_aug --folds 0 --epochs 2 --jobs 1
echo "smoke: $(( $(date +%s) - t0 )) s"
# 2. The search, a few workers; every finished fold is a JSON file in $out, kept when the time runs out.
timeout -k 10 ${SEARCH_S:-300} python3 experiments/real_ct.py --data .gpu/lidc64.npz --out $out --recipes "${RECIPES:-bn_aug,bn_aug_balanced,bn_aug_ep60,bn_aug_balanced_ep60}" --jobs ${JOBS:-4}
echo "search: $(( $(date +%s) - t0 )) s"
tar -C /tmp -czf "${OUT:-/tmp}/search.tar.gz" search smoke
