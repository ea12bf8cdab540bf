#!/usr/bin/env bash
# Generates wgpose-weights/models/: the f16 copies (wgpose convert-weights --f16) of the
# repository's models/<config>.safetensors for every config in wgpose-weights/bundle.txt. Run it
# after retraining (tests/bundled_weights.rs says when the copies are stale) and before packaging
# or publishing wgpose-weights (its build.rs refuses a package without them).
set -euo pipefail
# A relative WGPOSE_CLI is taken from the caller's folder, before the cd below.
[ -z "${WGPOSE_CLI:-}" ] || WGPOSE_CLI=$(realpath "$WGPOSE_CLI")
cd "$(dirname "$0")/.."
# WGPOSE_CLI names an already built CLI (.ci/run passes the one its test build made: building the
# bin alone resolves other crate features than the workspace's test build and recompiled for
# minutes); else it is built here.
if [ -z "${WGPOSE_CLI:-}" ]; then
  cargo build --release --bin wgpose
fi
WGPOSE_CLI=${WGPOSE_CLI:-./target/release/wgpose}
[ -x "$WGPOSE_CLI" ] || { echo "error: WGPOSE_CLI=$WGPOSE_CLI is not an executable wgpose CLI" >&2; exit 1; }
mkdir -p wgpose-weights/models
while read -r config; do
  case "$config" in ''|'#'*) continue ;; esac
  "$WGPOSE_CLI" convert-weights --f16 "models/$config.safetensors" "wgpose-weights/models/$config.safetensors"
done < wgpose-weights/bundle.txt
