#!/usr/bin/env bash
# Generates wgpose-weights/models/: the f16 copies (wgpose convert-weights --f16) of the
# repository's models/<config>.safetensors for every config in wgpose-weights/bundle.txt. Run it
# after retraining (tests/bundled_weights.rs says when the copies are stale) and before packaging
# or publishing wgpose-weights (its build.rs refuses a package without them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin wgpose
mkdir -p wgpose-weights/models
while read -r config; do
  case "$config" in ''|'#'*) continue ;; esac
  ./target/release/wgpose convert-weights --f16 "models/$config.safetensors" "wgpose-weights/models/$config.safetensors"
done < wgpose-weights/bundle.txt
