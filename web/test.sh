#!/usr/bin/env bash
# The browser test: builds the native CLI and web/dist/, then drives web/dist/selftest.html in
# headless Chromium (SwiftShader WebGPU and the wasm CPU fallback) and compares its keypoints, and
# the people its person detector finds, with native `wgpose predict --json`; also tracking and bad
# input (see web/selftest.py). Installs Chromium and chromedriver from
# Debian when missing. Prints `N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
# A relative WGPOSE_CLI is taken from the caller's folder, before the cd below (web/build.sh runs
# from web/, so the path handed on must be absolute).
[ -z "${WGPOSE_CLI:-}" ] || WGPOSE_CLI=$(realpath "$WGPOSE_CLI")
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/wgpose-xdg}
mkdir -p "$XDG_RUNTIME_DIR"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# WGPOSE_CLI: an already built native CLI to compare with (.ci/run passes its test build's);
# else it is built here.
if [ -z "${WGPOSE_CLI:-}" ]; then
  cargo build --release --bin wgpose
fi
export WGPOSE_CLI=${WGPOSE_CLI:-$PWD/target/release/wgpose}
[ -x "$WGPOSE_CLI" ] || { echo "error: WGPOSE_CLI=$WGPOSE_CLI is not an executable wgpose CLI" >&2; exit 1; }
bash web/build.sh
if ! /usr/bin/python3 -c "import PIL" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pil >/dev/null
fi
/usr/bin/python3 web/selftest.py "$@"
