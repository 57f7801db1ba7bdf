#!/usr/bin/env bash
# Accelerator check (bench/accelerator_check.py): ku on the JAX backend, without TensorFlow.
#
#   bash bench/accelerator_check.sh prepare   # here (with network): wheels of keras and ku
#                                             # -> bench/wheels/ (git-ignored; carry it along)
#   bash bench/accelerator_check.sh [--quick] # on the machine with the accelerator (JAX, and
#                                             # torch + torchvision for the ROI reference,
#                                             # installed; no network needed): installs the
#                                             # wheels into a venv that sees the system's
#                                             # packages, then measures; results -> $OUT or bench/
# Under 8 minutes on a GPU; --quick is a CPU-sized check that everything runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels

if [ "${1:-}" = "prepare" ]; then
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" .
    # keras (pinned as in requirements.txt) and what it needs beyond the accelerator image's own
    # packages (which hold numpy, h5py, ml_dtypes, absl-py, rich, packaging): namex (pure Python)
    # and optree (compiled, for the image's Python 3.12 on x86-64)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" keras==3.15.1 namex==0.1.0
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
        --python-version "${ACCEL_PYTHON:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        optree==0.20.0
    ls "$WHEELS"
    exit 0
fi

VENV=${VENV:-/tmp/ku-accel-venv}
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl
"$VENV/bin/python" -c "import jax; print('jax', jax.__version__, jax.devices())"
OUT_DIR=${OUT:-bench}
KERAS_BACKEND=jax "$VENV/bin/python" bench/accelerator_check.py --json="$OUT_DIR/results_accelerator.json" "$@"
