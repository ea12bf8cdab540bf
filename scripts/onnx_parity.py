#!/usr/bin/env python3
"""Checks an exported ONNX model against expected outputs with onnxruntime (CPU).

Usage:
    python3 scripts/onnx_parity.py MODEL.onnx INPUT.npy EXPECTED.npy [EXPECTED2.npy ...]
        [--tol 1e-4] [--output NAME ...] [--check]

Runs MODEL on INPUT (fed to the model's first input, float32 NCHW) with the CPU execution
provider and compares output k with EXPECTED k (the model's outputs in order, or the outputs named
with --output). For each it prints the max absolute error and the relative error
max|a - b| / (1 + max|b|) (b = expected), and exits with status 1 if any relative error exceeds
the tolerance (default 1e-4), 2 on a usage or shape problem. --check also validates the model
with onnx.checker (full check, including strict shape inference; needs `pip install onnx`).

Needs: pip install onnxruntime numpy
"""

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the .onnx file")
    ap.add_argument("input", help=".npy input (float32, NCHW)")
    ap.add_argument("expected", nargs="+", help=".npy expected output(s), in output order")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative error limit (default 1e-4)")
    ap.add_argument("--output", action="append", default=None,
                    help="name of the model output to compare (repeat, one per expected file)")
    ap.add_argument("--check", action="store_true",
                    help="also run onnx.checker.check_model(full_check=True) (needs onnx)")
    args = ap.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(f"error: {e}; install with: pip install onnxruntime numpy", file=sys.stderr)
        return 2

    if args.check:
        try:
            import onnx
        except ImportError as e:
            print(f"error: {e}; --check needs: pip install onnx", file=sys.stderr)
            return 2
        try:
            onnx.checker.check_model(onnx.load(args.model), full_check=True)
        except Exception as e:  # onnx raises ValidationError / InferenceError
            print(f"onnx.checker: {e}")
            return 1
        print("onnx.checker: ok")

    x = np.load(args.input)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    expected = [np.load(p) for p in args.expected]

    opts = ort.SessionOptions()
    # Keep the graph as exported (the optimisations are sound, but a parity check should test
    # the model itself).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        print(f"error: the model has {len(inputs)} inputs ({names}); this script feeds one",
              file=sys.stderr)
        return 2
    out_names = args.output or [o.name for o in sess.get_outputs()][: len(expected)]
    if len(out_names) != len(expected):
        print(f"error: {len(expected)} expected file(s) but {len(out_names)} output(s) "
              f"to compare: {out_names}", file=sys.stderr)
        return 2

    got = sess.run(out_names, {inputs[0].name: x})
    worst = 0.0
    for name, path, a, b in zip(out_names, args.expected, got, expected):
        if a.shape != b.shape:
            print(f"{name}: shape {list(a.shape)} but {path} has {list(b.shape)}", file=sys.stderr)
            return 2
        a64 = a.astype(np.float64)
        b64 = b.astype(np.float64)
        if not np.all(np.isfinite(a64)):
            print(f"{name}: onnxruntime produced non-finite values")
            worst = float("inf")
            continue
        abs_err = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        scale = 1.0 + (float(np.max(np.abs(b64))) if b.size else 0.0)
        rel = abs_err / scale
        worst = max(worst, rel)
        status = "ok" if rel <= args.tol else "FAIL"
        print(f"{name}: shape {list(a.shape)}  max abs error {abs_err:.3e}  "
              f"relative error {rel:.3e} (max|a-b| / (1 + max|b|))  {status}")
    verdict = "PASS" if worst <= args.tol else "FAIL"
    print(f"worst relative error {worst:.3e}, tolerance {args.tol:.1e}: {verdict}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
