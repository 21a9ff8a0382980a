#!/usr/bin/env bash
# Builds build/Release/torchlite.node against the LibTorch that CMakeLists.txt finds.
# cmake-js is run with node itself, resolved as Node resolves it (hoisted or not), so this
# works without npx (the GPU check's machine has Node alone).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${TORCHLITE_BUILD_JOBS:-$(nproc)}"
# A configure that failed (LibTorch not installed yet) leaves a CMakeCache.txt without a build
# system; cmake-js then skips configuring and the build stops at "loading 'build.ninja'".
if [[ -f build/CMakeCache.txt && ! -f build/build.ninja && ! -f build/Makefile ]]; then
  rm -f build/CMakeCache.txt
fi
exec node "$(node -p "require.resolve('cmake-js/bin/cmake-js')")" build --out build --parallel "$jobs" --log-level warn "$@"
