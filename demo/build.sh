#!/bin/sh
# Rebuild crates/server/assets/demo/app.js from demo/src (needs Node + npm).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
./node_modules/.bin/esbuild src/main.js \
  --bundle --minify --format=iife --platform=browser --target=es2020 \
  --legal-comments=eof \
  --banner:js='// Built by demo/build.sh from demo/src; see demo/README.md. Do not edit.' \
  --outfile=../crates/server/assets/demo/app.js
