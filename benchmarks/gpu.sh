#!/usr/bin/env bash
# The benchmark's model-throughput table on a GPU machine (one short run, under 10 minutes).
#
#   bash benchmarks/gpu.sh            # full: 7 interleaved repeats, 128 train steps / 32 inference batches each
#   bash benchmarks/gpu.sh --quick    # about 3 minutes
#
# Works where TensorFlow is not installed (e.g. a PyTorch/JAX CUDA image): Keras runs on JAX
# (KERAS_BACKEND=jax unless TensorFlow imports), and the rows that need TensorFlow (nodulekit's
# tf.data pipeline and Segmenter) fall back to NumPy input and model.predict, which their note says.
# Keras, namex, optree and MONAI are installed from ./.whl/*.whl (py3 wheels; optree for the
# machine's Python) into a private folder when the machine lacks them, without touching its
# environment. Results go to $OUT (when set, as on the lent machines) or benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

# Packages the image may lack, from local wheels only (these machines have no network).
extra=/tmp/nodulekit-bench-site
if ! "$PYTHON" -c "import keras, monai" 2>/dev/null; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$extra" .whl/*.whl
    else
        echo "keras/monai missing and no wheels in ./.whl (pip download --no-deps keras namex optree monai)" >&2
    fi
fi
export PYTHONPATH="$PWD:$extra${PYTHONPATH:+:$PYTHONPATH}"

if [[ -z "${KERAS_BACKEND:-}" ]]; then
    if "$PYTHON" -c "import tensorflow" 2>/dev/null; then export KERAS_BACKEND=tensorflow; else export KERAS_BACKEND=jax; fi
fi
# Several JAX processes share the GPU (one per row): no 75 % preallocation each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_FORCE_GPU_ALLOW_GROWTH=true
export TF_CPP_MIN_LOG_LEVEL=3

output=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "KERAS_BACKEND=$KERAS_BACKEND python=$("$PYTHON" -V 2>&1)"

if [[ $quick == 1 ]]; then
    args=(--repeats 3 --train-steps 64 --infer-batches 16)
else
    args=(--repeats 7 --train-steps 128 --infer-batches 32)
fi
# e2e.phantom needs only NumPy/SciPy; the other end-to-end rows need TensorFlow.
timeout 570 "$PYTHON" benchmarks/run.py --only models,e2e.phantom "${args[@]}" --output "$output"
