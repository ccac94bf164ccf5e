#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test: pytest (with doctests of the docstrings), the
# GoogleTest suite in tests/cpp and the C++ examples, both built against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DIFFOPS_VENV:-.venv}
scripts/setup.sh
export PATH="$PWD/$venv/bin:$PATH"  # the venv's cmake and ninja

if [ ! -f /usr/include/gtest/gtest.h ] && [ ! -f /usr/local/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing GoogleTest (libgtest-dev) for the C++ tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "GoogleTest is missing: install libgtest-dev (Debian/Ubuntu) and re-run" >&2
    exit 1
  fi
fi

python -m pytest

prefix=$(python -c "import diffops; print(diffops.cmake_prefix_path)")
for project in tests/cpp examples; do
  build="build/$(echo "$project" | tr / -)"
  mkdir -p build
  # configure output (torch's CMake warns about optional parts it lacks) only shows on failure
  cmake -S "$project" -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >"$build.log" 2>&1 ||
    { cat "$build.log"; exit 1; }
  cmake --build "$build"
  ctest --test-dir "$build" --output-on-failure
done
