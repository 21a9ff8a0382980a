#!/usr/bin/env bash
# Builds build/Release/torchlite.node against the LibTorch that CMakeLists.txt finds.
# cmake-js is run with node itself, resolved as Node resolves it (hoisted or not), so this
# works without npx (the GPU check's machine has Node alone).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${TORCHLITE_BUILD_JOBS:-$(nproc)}"
exec node "$(node -p "require.resolve('cmake-js/bin/cmake-js')")" build --out build --parallel "$jobs" --log-level warn "$@"
