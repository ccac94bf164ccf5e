#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the demo: the seed examples and an operator tour, checked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
"${DIFFOPS_VENV:-.venv}/bin/python" examples/python/demo.py
