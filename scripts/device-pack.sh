#!/usr/bin/env bash
# Packs what the lent GPU machine lacks into .device/ (git-ignored), to be named in the
# device tool's `carry` together with lib/: a compressed Node binary, and node_modules
# without the parts the GPU check never loads (TypeScript, type packages, image codecs),
# and Gloo's headers.
# About 35 MB in all, under the 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device
[[ -d lib ]] || npm run --silent build:ts
xz -T0 -6 -c "$(command -v node)" > .device/node.xz
tar -cf - --exclude=node_modules/typescript --exclude=node_modules/@types --exclude=node_modules/@img \
  --exclude=node_modules/sharp node_modules | xz -T0 -6 > .device/node_modules.tar.xz
# pip's torch ships no Gloo headers; Debian's (libgloo-dev) let distributed.cc compile there.
rm -rf .device/gloo-include && mkdir -p .device/gloo-include && cp -r /usr/include/gloo .device/gloo-include/
du -ch .device/* lib | tail -1
