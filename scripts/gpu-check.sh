#!/usr/bin/env bash
# The one prepared run for the lent GPU machine (issue 6), well under 8 minutes:
#   unpack the carried Node and node_modules, find the CUDA LibTorch of the machine's
#   Python torch, build the addon against it, run test/cuda and the GPU bench, export
#   a few TorchScript models with this PyTorch for the CPU build to try, and print a
#   short table last. Logs go under $OUT.
# Prepare with `bash scripts/device-pack.sh`; run with carry [".device", "lib"].
# On a machine without CUDA it stops, saying so, right before the CUDA tests (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${TORCHLITE_PYTHON:-python3}"
declare -A result
step() { printf '[gpu-check %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/gpu-check.log"; }
table() {
  echo
  printf '%-22s %s\n' check result
  for key in machine node libtorch build cuda-tests bench torchscript-2.x; do printf '%-22s %s\n' "$key" "${result[$key]:-not run}"; done
}
trap table EXIT

step "machine facts"
{ uname -a; ldd --version | head -1; gcc --version | head -1; cmake --version | head -1; ninja --version; nvidia-smi -L; } > "$OUT/machine.txt" 2>&1
result[machine]="$(grep -m1 -E 'GPU|NVIDIA' "$OUT/machine.txt" || echo 'no GPU listed')"

step "node"
if ! command -v node >/dev/null; then
  [[ -f .device/node.xz ]] || { result[node]="missing: run scripts/device-pack.sh and carry .device"; exit 1; }
  xz -dc .device/node.xz > .device/node && chmod +x .device/node
  export PATH="$PWD/.device:$PATH"
fi
if [[ ! -d node_modules && -f .device/node_modules.tar.xz ]]; then xz -dc .device/node_modules.tar.xz | tar -xf -; fi
result[node]="$(node --version)"

step "libtorch"
prefix="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>>"$OUT/gpu-check.log")" || { result[libtorch]="no torch in $PY"; exit 1; }
has_cuda="$("$PY" -c 'import torch; print(torch.cuda.is_available())')"
result[libtorch]="$("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') at $prefix"

step "build"
if ! TORCHLITE_PYTHON="$PY" bash scripts/build-addon.sh > "$OUT/build.log" 2>&1; then
  result[build]="FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
fi
result[build]="ok: $(node -e "const t=require('./lib'); console.log('LibTorch', t.torchVersion, '| CUDA visible:', t.cuda.isAvailable(), '| devices:', t.cuda.deviceCount())")"

if [[ "$has_cuda" != "True" ]]; then
  result[cuda-tests]="skipped: no CUDA on this machine (dry run ends here)"
  exit 0
fi

step "cuda tests"
TORCHLITE_PYTHON="$PY" timeout 300 node_modules/.bin/vitest run test/cuda --reporter=default --reporter=json --outputFile.json="$OUT/cuda-tests.json" > "$OUT/cuda-tests.log" 2>&1
result[cuda-tests]="$(node scripts/test-summary.mjs "$OUT/cuda-tests.json" | tail -1)"

step "gpu bench"
TORCHLITE_PYTHON="$PY" timeout 240 node bench/gpu.mjs "$OUT" > "$OUT/gpu-bench.txt" 2>&1
result[bench]="$(grep -E 'ratio|img/s' "$OUT/gpu-bench.txt" | tr '\n' ';' | head -c 300)"
cat "$OUT/gpu-bench.txt"

step "torchscript from this pytorch, for the CPU build to try"
mkdir -p "$OUT/ts-2x"
if "$PY" scripts/fixtures/export_torchvision.py "$OUT/ts-2x" resnet18 mobilenet_v3_small > "$OUT/ts-2x/shapes.json" 2>>"$OUT/gpu-check.log"; then
  result[torchscript-2.x]="exported to \$OUT/ts-2x ($(du -sh "$OUT/ts-2x" | cut -f1))"
else
  result[torchscript-2.x]="export failed (see gpu-check.log)"
fi
