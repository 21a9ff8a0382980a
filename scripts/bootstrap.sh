#!/usr/bin/env bash
# Sets up a Debian/Ubuntu machine for torchlite: LibTorch, the Python reference torch,
# Fashion-MNIST and the fortune files in four languages (the text demo's data), build tools, npm
# packages, then the addon and the TypeScript build.
# Idempotent: on a ready machine it only checks, and rebuilds what changed (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libtorch-dev libgloo-dev python3-torch python3-torchvision dataset-fashion-mnist fortunes fortunes-de fortunes-es fortunes-it
          build-essential cmake ninja-build ccache git xz-utils)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
    command -v sudo >/dev/null || { echo "bootstrap: run as root or install sudo to apt-get install: ${missing[*]}" >&2; exit 1; }
  else
    sudo=
  fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  echo "bootstrap: torchlite needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi

# npm ci wipes node_modules, so run it only when the lockfile changed since the last one.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build:native
npm run --silent build:ts
echo "bootstrap: ready (LibTorch $(node -p "require('./lib').torchVersion"), $(node -p "require('./lib').getNumThreads()") threads)"
