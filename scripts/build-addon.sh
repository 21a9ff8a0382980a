#!/usr/bin/env bash
# Builds build/Release/torchlite.node against the LibTorch that CMakeLists.txt finds.
# cmake-js is run with node itself, resolved as Node resolves it (hoisted or not), so this
# works without npx (the GPU check's machine has Node alone).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${TORCHLITE_BUILD_JOBS:-$(nproc)}"

# `npm install` captures an install script's output and shows it only on failure, so a
# compile of several minutes looks like a hang. Progress goes to stderr and, under npm
# with a terminal, to the terminal itself.
say() {
  echo "torchlite: $*" >&2
  if [[ -n "${npm_lifecycle_event:-}" && ! -t 2 ]] && { : >/dev/tty; } 2>/dev/null; then echo "torchlite: $*" >/dev/tty; fi
}
if [[ "${npm_lifecycle_event:-}" == install ]]; then
  say "no prebuilt addon fits this machine's LibTorch: compiling one ($(grep -c '\.cc' <(ls binding)) files, $jobs parallel jobs; a few minutes; npm install --foreground-scripts shows the compiler)"
fi

# A configure that failed (LibTorch not installed yet) leaves a CMakeCache.txt without a build
# system; cmake-js then skips configuring and the build stops at "loading 'build.ninja'".
if [[ -f build/CMakeCache.txt && ! -f build/build.ninja && ! -f build/Makefile ]]; then
  rm -f build/CMakeCache.txt
fi
node "$(node -p "require.resolve('cmake-js/bin/cmake-js')")" build --out build --parallel "$jobs" --log-level warn "$@" | while IFS= read -r line; do
  # Ninja's "[3/17] Building CXX object …/model.cc.o" lines are the progress worth showing.
  if [[ "$line" =~ ^\[([0-9]+/[0-9]+)\]\ Building\ CXX\ object\ .*/([a-z_]+\.cc)\.o ]]; then say "[${BASH_REMATCH[1]}] compiling ${BASH_REMATCH[2]}"; else echo "$line"; fi
done
say "built build/Release/torchlite.node"
