#!/usr/bin/env bash
# One call on a lent GPU machine (no internet; the image has torch and JAX, not
# TensorFlow nor array-api-compat). From the repository root, with the wheels of
# the missing pure-Python packages in .whl/ (carried along; fetch them here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     array-api-compat vector-quantize-pytorch einx frozendict loguru torch-einops-utils
# ), it installs them beside the image's packages and runs benchmarks/gpu.py,
# whose logs land in $OUT (or ./gpu-results). Extra arguments go to gpu.py.
set -euo pipefail
SITE=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# lfq itself (non-editable: lfq.backends maps to backends/), built with the image's setuptools
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE" .
# Run from outside the checkout, so that its lfq/ (without backends/) cannot shadow the install.
REPO=$PWD
export OUT=${OUT:-$REPO/gpu-results}
cd "$SITE"
python3 -c "import lfq.backends.torch_backend, array_api_compat; print('lfq from', lfq.__file__)"
python3 "$REPO/benchmarks/gpu.py" "$@"
