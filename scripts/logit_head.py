"""Maps a linear (MSE-trained) heatmap layer to logits, for warm-starting the same network with a
sigmoid head and the RCE loss (e.g. sghg-1x64-rce-lsp from sghg-1x64-lsp's weights):

    python3 scripts/logit_head.py models/sghg-1x64-lsp.safetensors rce-start.safetensors stack0.heatmap

An MSE heatmap h regresses the Gaussian target y (0 in the background, 1 at the joint); RCE wants
logit(y). The layer's weights and bias are scaled so that its output becomes A*h + C, the line
through (0.05, logit(0.05)) and (0.95, logit(0.95)): A = 6.54, C = -3.27. Without it a sigmoid on
the unchanged layer starts every background pixel at 0.5. Everything else (the model card
included) is copied as it is. Needs numpy.
"""
import json
import math
import struct
import sys

import numpy as np


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, layer = sys.argv[1:]
    lo, hi = 0.05, 0.95
    logit = lambda p: math.log(p / (1 - p))
    a = (logit(hi) - logit(lo)) / (hi - lo)
    c = logit(lo) - a * lo
    data = bytearray(open(src, "rb").read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    for name, f in [(layer + ".weight", lambda w: a * w), (layer + ".bias", lambda b: a * b + c)]:
        if name not in header:
            sys.exit(f"{src} has no tensor {name}")
        t = header[name]
        if t["dtype"] != "F32":
            sys.exit(f"{name} is {t['dtype']}; convert an f32 file")
        s, e = t["data_offsets"]
        v = np.frombuffer(bytes(data[base + s:base + e]), dtype="<f4")
        data[base + s:base + e] = f(v).astype("<f4").tobytes()
    open(dst, "wb").write(bytes(data))
    print(f"{dst}: {layer} mapped to logits (x{a:.3f}, {c:+.3f})")


if __name__ == "__main__":
    main()
