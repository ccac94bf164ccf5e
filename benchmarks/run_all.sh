#!/usr/bin/env bash
# Every table of docs/benchmarks.md, one script after another, into a folder of Markdown files
# (default benchmarks/results/<date>). Run it on a quiet machine: nothing else should compete for
# the cores. jet-for-pytorch rows need `python benchmarks/install_jet.py` first.
#   ./benchmarks/run_all.sh [out-dir] [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/$(date +%Y-%m-%d)}
shift || true
py=${PYTHON:-python}
mkdir -p "$out"
ops() { "$py" benchmarks/bench_operators.py "$@" 2>&1 | grep -v '^USDT'; }
{
  echo "# $(git rev-parse --short HEAD) $(date -u +%FT%TZ) $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  "$py" -c "import torch, diffops; print('# torch', torch.__version__, 'diffops', diffops.__version__)"
} >"$out/machine.md"

ops --op laplacian --d 2 3 8 32 128 --memory --repeats 7 "$@" >"$out/laplacian_f64_w64.md"
ops --op laplacian --d 2 8 32 128 --dtype float32 --memory --repeats 7 --skip batched forward-over "$@" \
  >"$out/laplacian_f32_w64.md"
ops --op laplacian --d 8 32 --width 256 --memory --matmul --repeats 7 --skip batched forward-over "$@" \
  >"$out/laplacian_f64_w256.md"
ops --op laplacian --d 128 --width 256 --memory --repeats 7 --skip batched forward-over "$@" \
  >"$out/laplacian_f64_w256_d128.md"
ops --op laplacian --d 8 32 --points 8192 --memory --repeats 7 --skip batched forward-over "$@" \
  >"$out/laplacian_f64_n8192.md"
ops --op laplacian --d 128 --points 8192 --memory --repeats 7 \
  --skip batched forward-over "graph form" "loop of" "vmap(hessian)" "$@" >"$out/laplacian_f64_n8192_d128.md"
ops --op laplacian --d 2 8 --points 1 --repeats 50 "$@" >"$out/laplacian_n1.md"
ops --op divergence --d 2 8 32 --memory --matmul --repeats 7 "$@" >"$out/divergence_f64_w64.md"
ops --op divergence --d 128 --memory --matmul --repeats 7 --skip batched "$@" >"$out/divergence_f64_w64_d128.md"
ops --op divergence --d 8 32 128 --points 8192 --memory --repeats 7 --skip batched "$@" >"$out/divergence_f64_n8192.md"
ops --op divergence --d 2 8 --points 1 --repeats 50 "$@" >"$out/divergence_n1.md"
ops --op divergence --d 8 32 128 --dtype float32 --memory --matmul --repeats 7 --skip batched "$@" \
  >"$out/divergence_f32_w64.md"
ops --op hessian --d 2 8 --memory --repeats 7 "$@" >"$out/hessian_f64_w64.md"
ops --op hessian --d 32 --memory --repeats 7 --skip batched forward-over "$@" >"$out/hessian_f64_w64_d32.md"
ops --op hessian --d 2 8 --points 1 --repeats 50 "$@" >"$out/hessian_n1.md"
"$py" benchmarks/bench_ns_cache.py "$@" >"$out/ns_cache.md" 2>&1
"$py" benchmarks/bench_elementwise.py "$@" >"$out/elementwise.md" 2>&1
"$py" benchmarks/bench_compile.py "$@" >"$out/compile_f32.md" 2>&1
"$py" benchmarks/bench_compile.py --dtype float64 "$@" >"$out/compile_f64.md" 2>&1
"$py" examples/python/cnf.py --out "$out" >"$out/cnf.md" 2>&1
echo "tables in $out"
