#!/usr/bin/env bash
# Run experiments/real_ct.py on the lent GPU machine (no TensorFlow there: Keras runs on JAX).
# Needs, carried beside the repo: .whl/ (keras, namex, optree wheels) and .carry/lidc64.npz.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
mkdir -p /tmp/results
timeout "${BUDGET_S:-480}" python3 experiments/real_ct.py --data .carry/lidc64.npz --out /tmp/results "$@" 2>&1 | grep -v "^I0000\|^WARNING: All\|^E0000"
tar czf "$OUT/results.tar.gz" -C /tmp results
ls -la /tmp/results | tail -50
