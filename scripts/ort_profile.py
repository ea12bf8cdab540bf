#!/usr/bin/env python3
"""Per-node times of ONNX Runtime on an ONNX file `wgpose export` wrote: the peer of
`cargo run --release --example cpu_profile -- MODEL` for layer-by-layer comparisons.

ONNX Runtime (CPU provider, sequential execution, default graph optimisations, so its own
NCHWc rewrites and fusions) runs the model `--runs` times on a random input; the median of each
node's kernel time over the runs after the first `--warmup` is printed, slowest first. ONNX
Runtime renames fused nodes after their last member (`backbone.layer1.0.relu1_nchwc` is the
convolution + batch norm + ReLU of `backbone.layer1.0.conv1`).

Needs: pip install onnxruntime numpy
Usage: wgpose export --model M --onnx m.onnx --batch 1
       scripts/ort_profile.py m.onnx [--threads 1] [--runs 30] [--warmup 10] [--top 30]
"""

import argparse
import collections
import json
import os

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = True
    s = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(a.runs):
        s.run(None, {inp.name: x})
    path = s.end_profiling()
    times = collections.defaultdict(list)
    with open(path) as f:
        for e in json.load(f):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                times[(e["name"][: -len("_kernel_time")], e["args"].get("op_name", ""))].append(e["dur"])
    os.remove(path)
    rows = sorted(((np.median(d[a.warmup :]) / 1000, n, op) for (n, op), d in times.items()), reverse=True)
    print(f"ONNX Runtime {ort.__version__}, {a.threads} thread(s), {inp.name} {shape}")
    for ms, n, op in rows[: a.top]:
        print(f"  {ms:8.3f} ms  {op:16s} {n}")
    print(f"  total {sum(r[0] for r in rows):.2f} ms in {len(rows)} nodes")


if __name__ == "__main__":
    main()
