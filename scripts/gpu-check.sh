#!/usr/bin/env bash
# The one prepared run for the lent GPU machine (issues 6, 12), about 8 minutes:
#   unpack the carried Node and node_modules, find the CUDA LibTorch of the machine's
#   Python torch, build the addon against it (every compile error listed; if the NCCL
#   part alone fails, built again without it so the rest still runs), run test/cuda and
#   the GPU bench, export a few TorchScript models with this PyTorch for the CPU build to
#   try, run the CPU test files against LibTorch 2.x in the time left, run the training
#   parity cases against this PyTorch's own references, and print a short table last.
#   Logs go under $OUT (at most 8 files come back: keep it so).
# Prepare with `bash scripts/device-pack.sh`; run with carry [".device", "lib"].
# On a machine without CUDA it stops, saying so, right before the CUDA tests (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
work="$(mktemp -d)"  # what must not come back: the bench's ResNet-50, the export folder
PY="${TORCHLITE_PYTHON:-python3}"
declare -A result
step() { printf '[gpu-check %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/gpu-check.log"; }
table() {
  echo
  printf '%-22s %s\n' check result
  for key in machine node libtorch build cuda-tests bench torchscript-2.x cpu-tests-2.x parity-vs-this-pytorch; do printf '%-22s %s\n' "$key" "${result[$key]:-not run}"; done
}
trap table EXIT

step "machine facts"
{ uname -a; ldd --version | head -1; gcc --version | head -1; cmake --version | head -1; ninja --version; nproc; nvidia-smi; } >> "$OUT/gpu-check.log" 2>&1
result[machine]="$(nvidia-smi -L 2>/dev/null | head -1 || echo 'no GPU listed'); $(grep -m1 -oE 'Driver Version: [0-9.]+' "$OUT/gpu-check.log")"

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
[[ -d .device/gloo-include ]] && export TORCHLITE_GLOO_INCLUDE="$PWD/.device/gloo-include"
# Ninja stops at the first failed file; -k 0 goes on, so one run shows every error.
keep_going() { cmake --build build -- -k 0 >> "$OUT/build.log" 2>&1; }
if ! TORCHLITE_PYTHON="$PY" bash scripts/build-addon.sh > "$OUT/build.log" 2>&1 && ! keep_going; then
  grep -E 'error|Error' "$OUT/build.log" | head -40
  step "build failed; again without NCCL"
  if ! TORCHLITE_PYTHON="$PY" bash scripts/build-addon.sh --CDTORCHLITE_NCCL=OFF >> "$OUT/build.log" 2>&1; then
    result[build]="FAILED (see build.log)"; exit 1
  fi
  result[build]="NCCL part FAILED, built without it; "
fi
grep -E 'torchlite: LibTorch' "$OUT/build.log" | tail -1
result[build]+="ok: $(node -e "const t=require('./lib'), n=require('./lib/native').native; console.log('LibTorch', t.torchVersion, '| CUDA visible:', t.cuda.isAvailable(), '| devices:', t.cuda.deviceCount(), '| gloo:', n.glooBuild, '| nccl:', n.ncclBuild)")"

if [[ "$has_cuda" != "True" ]]; then
  result[cuda-tests]="skipped: no CUDA on this machine (dry run ends here)"
  exit 0
fi

step "cuda tests"
TORCHLITE_PYTHON="$PY" timeout 300 node_modules/.bin/vitest run test/cuda --reporter=default --reporter=json --outputFile.json="$OUT/cuda-tests.json" > "$OUT/cuda-tests.log" 2>&1
result[cuda-tests]="$(node scripts/test-summary.mjs "$OUT/cuda-tests.json" | tail -1)"

step "gpu bench"
TORCHLITE_PYTHON="$PY" timeout 240 node bench/gpu.mjs "$OUT" > "$work/gpu-bench.txt" 2>&1
result[bench]="$(grep -E 'ratio' "$work/gpu-bench.txt" | awk '{print $1, $NF}' | tr '\n' ';')"
cat "$work/gpu-bench.txt" | tee -a "$OUT/gpu-check.log"

step "torchscript from this pytorch, for the CPU build to try"
# The test fixtures themselves, exported by this PyTorch with their reference outputs, in
# one small tar (only 8 files come back from \$OUT).
mkdir -p "$work/ts-2x"
if TORCHLITE_FIXTURES_OUT="$work/ts-2x" "$PY" scripts/fixtures/make_fixtures.py 2>>"$OUT/gpu-check.log" && tar -C "$work" -cf "$OUT/ts-2x.tar" ts-2x; then
  result[torchscript-2.x]="fixtures exported to \$OUT/ts-2x.tar ($(du -sh "$OUT/ts-2x.tar" | cut -f1))"
else
  result[torchscript-2.x]="export failed (see gpu-check.log)"
fi

# The CPU test files that exercise the most native code, against LibTorch 2.x, in what is
# left of the call (files that need Debian's data or its Python 1.13 fixtures may fail for
# that reason alone). The verbose log names each test even when the time limit cuts the run.
step "cpu test files against libtorch 2.x"
TORCHLITE_PYTHON="$PY" timeout "${TORCHLITE_CPU_TESTS_S:-180}" node_modules/.bin/vitest run test/distributed.test.ts test/model.test.ts \
  test/training.test.ts test/features.test.ts test/execution.test.ts test/text.test.ts test/surgery.test.ts test/tensor.test.ts test/errors.test.ts \
  --reporter=verbose --reporter=json --outputFile.json="$OUT/cpu-tests.json" > "$OUT/cpu-tests.log" 2>&1
if [[ -f "$OUT/cpu-tests.json" ]]; then
  result[cpu-tests-2.x]="$(node scripts/test-summary.mjs "$OUT/cpu-tests.json" | tail -1)"
else
  result[cpu-tests-2.x]="cut by the time limit: $(grep -c '✓' "$OUT/cpu-tests.log") passed, $(grep -c '×' "$OUT/cpu-tests.log") failed so far"
fi
grep -E '×' "$OUT/cpu-tests.log" | head -30

# The training parity cases against references this PyTorch writes itself (the tests' global
# setup writes them with TORCHLITE_PYTHON): tells a formula torchlite does differently on 2.x
# (say, Adam's first moment) from float noise between versions.
step "training parity against this pytorch's own references"
TORCHLITE_PYTHON="$PY" timeout 120 node_modules/.bin/vitest run test/training.test.ts -t 'within 1e-5 relative' --reporter=verbose > "$work/parity.log" 2>&1
sed 's/\x1b\[[0-9;]*m//g' "$work/parity.log" | grep -E '✓|×|→' | tee -a "$OUT/gpu-check.log"
result[parity-vs-this-pytorch]="$(grep -cE '✓.* > ' "$work/parity.log") passed, $(grep -cE '×.* > ' "$work/parity.log") failed (details in gpu-check.log)"
