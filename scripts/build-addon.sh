#!/usr/bin/env bash
# Builds build/Release/torchlite.node against the LibTorch that CMakeLists.txt finds.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${TORCHLITE_BUILD_JOBS:-$(nproc)}"
exec node node_modules/cmake-js/bin/cmake-js build --out build --parallel "$jobs" --log-level warn "$@"
