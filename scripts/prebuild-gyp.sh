#!/usr/bin/env bash
# prebuildify only knows node-gyp; it calls this script in its place (PREBUILD_NODE_GYP).
# It asks for `rebuild --target=... --arch=...`; cmake-js builds incrementally into the
# same build/ folder, and prebuildify then copies build/Release/*.node into prebuilds/.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="$(node -p process.arch)"
for arg in "$@"; do
  case "$arg" in --arch=*) arch="${arg#--arch=}" ;; esac
done
exec bash scripts/build-addon.sh --arch "$arch"
