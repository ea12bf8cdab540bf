#!/usr/bin/env bash
# Builds wgpose for the browser into web/dist/ (static files: html, js, wasm, models, fixtures).
# Serve that folder with any static server, e.g. `python3 -m http.server -d web/dist 8000`, and
# open http://localhost:8000/ (WebGPU needs a secure context: localhost or https).
#
# Tools: the Rust target wasm32-unknown-unknown and wasm-bindgen-cli at exactly the version of the
# wasm-bindgen crate pinned in web/Cargo.toml (installed here from crates.io when missing).
set -euo pipefail
cd "$(dirname "$0")"
WASM_BINDGEN_VERSION=0.2.130

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $WASM_BINDGEN_VERSION"; then
  # --locked uses the CLI's own lock file; a registry that lacks one of its pinned versions
  # makes that fail, and the unlocked install resolves within the same semver ranges.
  # --debug: it compiles in half the time (76 s instead of 168 s on session 21's CI clone) and
  # writes the same files, in 1 s instead of 0.2 s per module.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --debug --locked ||
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --debug
fi

# The root target/ is shared with the native build (different target triple, no clash).
TARGET_DIR=${CARGO_TARGET_DIR:-../target}
cargo build --release --locked --target wasm32-unknown-unknown --target-dir "$TARGET_DIR"
# A second build with WebAssembly relaxed SIMD (f32x4.relaxed_madd in the CPU fallback's matrix
# tile, src/cpu/gemm.rs), in its own target folder since the flags differ; wgpose.js loads it
# where the browser validates relaxed SIMD (Chrome 114+) and the SIMD128 build elsewhere.
RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  cargo build --release --locked --target wasm32-unknown-unknown --target-dir "$TARGET_DIR/wasm-relaxed"

rm -rf dist
mkdir -p dist/models dist/fixtures
wasm-bindgen --target web --no-typescript --out-dir dist \
  "$TARGET_DIR/wasm32-unknown-unknown/release/wgpose_web.wasm"
RELAXED_OUT=$(mktemp -d)
wasm-bindgen --target web --no-typescript --out-dir "$RELAXED_OUT" \
  "$TARGET_DIR/wasm-relaxed/wasm32-unknown-unknown/release/wgpose_web.wasm"
# One JS glue serves both modules: they export and import the same functions. wasm-bindgen's
# "Cast intrinsic" comments name each closure shim's table index, which shifts by one when the
# two builds lay out their functions differently; the code around them (export names) must match.
glue_code() { grep -v '^[[:space:]]*// Cast intrinsic for ' "$1"; }
if ! cmp -s <(glue_code "$RELAXED_OUT/wgpose_web.js") <(glue_code dist/wgpose_web.js); then
  echo "the two wasm builds need different JS glue" >&2
  exit 1
fi
cp "$RELAXED_OUT/wgpose_web_bg.wasm" dist/wgpose_web_relaxed_bg.wasm
rm -rf "$RELAXED_OUT"
cp www/*.html www/*.js www/*.css dist/ 2>/dev/null || true
# The pose models and the person detector (person-detector-r18w32, fetched by createEstimator by default).
cp ../models/*.safetensors dist/models/
# Fixture images for the self-test, the screenshot and the benchmark.
cp ../assets/sample.jpg dist/fixtures/
cp ../tests/fixtures/lspet-val/images/im0800[1-3].jpg dist/fixtures/

# The ONNX files of the benchmark page, written by the native CLI when it has been built
# (`cargo build --release`): the shipped models at the input size they were trained at (their
# model card's; 192x128 for the hourglass), which bench.html reads from the same card.
CLI=${WGPOSE_CLI:-../target/release/wgpose}
if [ -x "$CLI" ]; then
  mkdir -p dist/onnx
  for m in fasterpose-r18-s16-lsp sghg-1x64-lsp ldcrn-w16-lsp; do
    "$CLI" export --model "$m" --onnx "dist/onnx/$m.onnx" 2>/dev/null
  done
fi

# onnxruntime-web for the benchmark page, when `npm ci` has been run in web/ (pinned in
# package-lock.json).
if [ -d node_modules/onnxruntime-web/dist ]; then
  mkdir -p dist/ort
  cp node_modules/onnxruntime-web/dist/ort.all.min.mjs node_modules/onnxruntime-web/dist/*.wasm \
    node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded*.mjs dist/ort/ 2>/dev/null || true
fi
echo "built $(cd dist && pwd): $(du -sh dist | cut -f1)"
