#!/usr/bin/env bash
# One call on a lent GPU machine (no internet; the image has torch and JAX, not
# TensorFlow nor array-api-compat). From the repository root, with the wheels of
# the missing pure-Python packages in .whl/ (carried along; fetch them here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     array-api-compat vector-quantize-pytorch einx frozendict loguru torch-einops-utils
# ), it installs them beside the image's packages, stages lfq's packages as
# pyproject.toml maps them (lfq.backends <- backends/, lfq.conformance <-
# conformance/; no build step, so nothing depends on the image's setuptools) and
# runs benchmarks/gpu.py from outside the checkout, whose logs land in $OUT (or
# ./gpu-results). Extra arguments go to gpu.py.
set -euo pipefail
REPO=$PWD
SITE=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
fi
python3 - "$REPO" "$SITE" <<'PY'
import pathlib, shutil, sys, tomllib
repo, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in sorted(mapping.items()):  # parents before children
    shutil.copytree(repo / folder, site / package.replace(".", "/"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
PY
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-$REPO/gpu-results}
cd "$SITE"  # so that the checkout's lfq/ (without backends/) cannot shadow the staged one
python3 -c "import lfq.backends.torch_backend as b, lfq.conformance as c, array_api_compat; print('lfq from', b.__file__, c.__file__)"
python3 "$REPO/benchmarks/gpu.py" "$@"
