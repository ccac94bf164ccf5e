#!/usr/bin/env bash
# Creates the virtual environment (.venv, or $DIFFOPS_VENV) with torch and the build tools, then
# builds the C++ core and installs diffops into it. Safe to re-run: it reuses what is there.
#   DIFFOPS_TORCH  pip requirement for torch (default torch==2.13.0, the CPU wheel on this kind of machine)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DIFFOPS_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "${DIFFOPS_TORCH:-torch==2.13.0}" "scikit-build-core>=0.10" ninja "cmake>=3.18" pytest numpy \
  tqdm matplotlib  # the training examples: progress bars and plots
# diffops compiles against the torch it will run with: no build isolation.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation .
"$venv/bin/python" -c "import diffops, torch; print(f'diffops {diffops.__version__} built against torch {torch.__version__}')"
