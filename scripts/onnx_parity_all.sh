#!/usr/bin/env bash
# For every named config: export ONNX, run the same random input through `wgpose run` on the GPU
# and on the CPU, and compare both with onnxruntime (scripts/onnx_parity.py, relative error
# <= 1e-4). Usage: scripts/onnx_parity_all.sh [OUTDIR] [name-filter]
# Needs python3; installs onnxruntime and numpy into a venv under OUTDIR on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/wgpose-parity}
filter=${2:-}
mkdir -p "$out"
if [ ! -x "$out/venv/bin/python" ]; then
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install -q onnxruntime numpy
fi
py="$out/venv/bin/python"
cargo build --release -q
bin=target/release/wgpose
fail=0
for row in $($bin models --json | "$py" -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l); print("%s:%d:%d:%d" % (m["name"], m["input"][1], m["input"][2], m["input"][3]))'); do
  IFS=: read -r name c h w <<<"$row"
  [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
  "$py" -c "import numpy as np; np.save('$out/$name.in.npy', np.random.default_rng(7).uniform(-1, 1, (1, $c, $h, $w)).astype(np.float32))"
  $bin export --model "$name" --size "${h}x${w}" --onnx "$out/$name.onnx" 2>/dev/null
  last=$($py -c "import onnx" 2>/dev/null; "$py" - "$out/$name.onnx" <<'PY'
import sys, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(s.get_outputs()[-1].name)
PY
)
  # How much onnxruntime's own output moves when the input moves by about one ulp: the floor
  # below which no f32 implementation can agree with another on this (untrained) network.
  sens=$("$py" - "$out/$name.onnx" "$out/$name.in.npy" <<'PY'
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2]); o = s.run(None, {s.get_inputs()[0].name: x})[-1]
xp = (x * (1 + np.random.default_rng(1).uniform(-6e-8, 6e-8, x.shape))).astype(np.float32)
op = s.run(None, {s.get_inputs()[0].name: xp})[-1]
print("%.1e" % (np.abs(op - o).max() / (1 + np.abs(o).max())))
PY
)
  for dev in gpu cpu; do
    $bin run --model "$name" --input "$out/$name.in.npy" --output "$out/$name.$dev.npy" --device $dev 2>/dev/null
    if res=$("$py" scripts/onnx_parity.py "$out/$name.onnx" "$out/$name.in.npy" "$out/$name.$dev.npy" --output "$last" 2>&1); then
      verdict=ok
    else
      verdict=FAIL; fail=1
    fi
    printf '%-24s %-3s %-4s %s (onnxruntime vs itself at 1 ulp of input: %s)\n' "$name" "$dev" "$verdict" "$(echo "$res" | tail -1)" "$sens"
  done
done
exit $fail
