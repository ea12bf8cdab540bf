#!/usr/bin/env python3
"""CPU speed of wgpose against ONNX Runtime (inference) and PyTorch (training), in one run.

Inference: every model is exported with `wgpose export` (batch 1, the graph as defined; ONNX
Runtime applies its own fusions), then ONNX Runtime (2 intra-op threads, sequential execution)
and `wgpose bench models --device cpu` (2 rayon threads) are timed in alternating rounds on the
same machine. Each round times each engine `--reps` times; the table gives the median over all
rounds of each engine's per-round median, and the ratio wgpose / ONNX Runtime (below 1 = wgpose
faster).

Training: every model is exported with `--batch 16` and loaded into PyTorch with onnx2torch
(batch norms become trainable `nn.BatchNorm2d` in training mode). A step is forward, loss,
backward and an Adam update (lr 1e-3), as in `wgpose bench train`: weighted heatmap MSE, or,
for models whose graph ends in a sigmoid, the sigmoid is cut off and the loss is binary cross
entropy on the logits against continuous targets (wgpose's RCE). Rounds alternate between
PyTorch (2 threads) and `wgpose bench train`; images per second and the ratio wgpose / PyTorch
(above 1 = wgpose faster) are printed.

`--gap-ms N` makes both engines sleep N ms before each timed inference, as a live video loop
idles between frames (33 at 30 fps): thread pools, caches and, on a virtual machine, the CPUs
themselves are cold when each run starts. Add `--wgpose-env WGPOSE_CPU_PIN=1` to time wgpose
with its workers pinned (`wgpose::pin_cpu_threads`).

`--background-load N` runs N busy loops at `nice -n 19` for the whole comparison: a machine
where other programs want the CPUs too (a thread pool that yields its CPU between operators
loses it for a whole time slice to any such program, however low its priority).

`--hide-avx512` runs every engine with AVX-512 hidden from CPUID (`scripts/hide_avx512.c`, built
with gcc and preloaded into this script and wgpose; needs the `cpuid_fault` CPU flag): ONNX
Runtime, PyTorch (oneDNN, MKL, ATen) and wgpose then take the code paths of an AVX2-only CPU, so
an AVX-512 machine also measures the AVX2 side of the comparison (code paths, not an AVX2 CPU's
microarchitecture).

Needs: pip install onnxruntime onnx numpy torch onnx2torch   (a CPU-only torch is enough)
Usage: scripts/compare_cpu.py [--wgpose target/release/wgpose] [--rounds 5] [--reps 10]
                              [--models a,b] [--train-models a,b] [--skip-inference] [--skip-training]
                              [--gap-ms 30] [--background-load 2] [--hide-avx512]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

INFER_MODELS = ["fasterpose-r18-s16-lsp", "fasterpose-r18-s32-lsp", "sghg-1x64-lsp", "ldcrn-w16-lsp", "sghg-2x128"]
TRAIN_MODELS = ["fasterpose-r18-s32-lsp", "sghg-1x64-lsp", "ldcrn-w16-lsp", "fasterpose-r18-s16-lsp"]
THREADS = 2
SIZE = (128, 128)
TRAIN_BATCH = 16


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    flags = open("/proc/cpuinfo").read()
                    isa = "AVX-512" if " avx512f" in flags else ("AVX2" if " avx2" in flags else "no AVX2")
                    if isa == "AVX-512" and "WGPOSE_HIDE_AVX512" in os.environ:
                        isa = "AVX-512, hidden from CPUID: AVX2 code paths"
                    return f"{name} ({isa}, {os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wgpose_env(extra):
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(THREADS)
    env.update(extra)
    return env


def export(wgpose, model, path, batch):
    subprocess.run(
        [wgpose, "export", "--model", model, "--onnx", path, "--size", f"{SIZE[0]}x{SIZE[1]}", "--batch", str(batch)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def wgpose_json(wgpose, args, env):
    out = subprocess.run([wgpose, "bench", *args, "--json"], check=True, capture_output=True, text=True, env=env)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def wgpose_infer_ms(wgpose, model, reps, env, gap_ms):
    rows = wgpose_json(
        wgpose,
        ["models", "--device", "cpu", "--filter", model, "--size", f"{SIZE[0]}x{SIZE[1]}", "--reps", str(reps),
         "--gap-ms", str(gap_ms)],
        env,
    )
    return next(r["ms"] for r in rows if r["model"] == model and r["device"] == "cpu")


def wgpose_train_ips(wgpose, model, reps, env):
    rows = wgpose_json(
        wgpose,
        ["train", "--filter", model, "--size", f"{SIZE[0]}x{SIZE[1]}", "--batch", str(TRAIN_BATCH), "--reps", str(reps)],
        env,
    )
    r = next(r for r in rows if r["model"] == model)
    return r["images_per_s"], r["loss"]


def compare_inference(wgpose, models, rounds, reps, env, tmp, gap_ms):
    import numpy as np
    import onnxruntime as ort

    gap = f", {gap_ms} ms idle before each run" if gap_ms else ""
    print(f"\n## Inference: batch 1, {THREADS} threads, {SIZE[0]}x{SIZE[1]}{gap}, onnxruntime {ort.__version__}")
    print(f"{'model':<26} {'ONNX Runtime ms':>16} {'wgpose ms':>10} {'ratio':>7}")
    results = []
    for model in models:
        path = os.path.join(tmp, f"{model}.onnx")
        export(wgpose, model, path, 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, SIZE[0], SIZE[1])).astype(np.float32)
        sess.run(None, {inp.name: x})
        ort_ms, wg_ms = [], []
        for _ in range(rounds):
            t = []
            for _ in range(reps):
                if gap_ms:
                    time.sleep(gap_ms / 1e3)
                s = time.perf_counter()
                sess.run(None, {inp.name: x})
                t.append((time.perf_counter() - s) * 1e3)
            ort_ms.append(statistics.median(t))
            wg_ms.append(wgpose_infer_ms(wgpose, model, reps, env, gap_ms))
        o, w = statistics.median(ort_ms), statistics.median(wg_ms)
        # Per-round ratios too: both engines of a round ran back to back under the same load.
        r = statistics.median([b / a for a, b in zip(ort_ms, wg_ms)])
        print(f"{model:<26} {o:>16.2f} {w:>10.2f} {r:>6.2f}x", flush=True)
        results.append((model, o, w, r))
    return results


def torch_trainer(onnx_path, rce):
    import onnx
    import torch
    from onnx2torch import convert

    m = onnx.load(onnx_path)
    if rce:
        # Train on logits like wgpose: the graph output becomes the final sigmoid's input.
        out = m.graph.output[0].name
        node = next(n for n in m.graph.node if out in n.output)
        if node.op_type != "Sigmoid":
            raise SystemExit(f"{onnx_path}: expected a final Sigmoid for an RCE model, found {node.op_type}")
        m.graph.node.remove(node)
        for n in m.graph.node:
            for i, name in enumerate(n.output):
                if name == node.input[0]:
                    n.output[i] = out
    net = convert(m)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    return net, opt


def torch_step(net, opt, x, target, weight, rce):
    import torch

    opt.zero_grad(set_to_none=True)
    y = net(x)
    ys = y if isinstance(y, (list, tuple)) else [y]
    loss = 0.0
    for z in ys:
        if rce:
            per = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")
        else:
            per = (z - target) ** 2
        loss = loss + (per * weight).mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


def compare_training(wgpose, models, rounds, reps, env, tmp):
    import torch

    torch.set_num_threads(THREADS)
    print(f"\n## Training step: batch {TRAIN_BATCH}, {THREADS} threads, {SIZE[0]}x{SIZE[1]}, torch {torch.__version__}")
    print(f"{'model':<26} {'loss':>5} {'PyTorch img/s':>14} {'wgpose img/s':>13} {'ratio':>7}")
    results = []
    for model in models:
        path = os.path.join(tmp, f"{model}-train.onnx")
        export(wgpose, model, path, TRAIN_BATCH)
        _, loss_kind = wgpose_train_ips(wgpose, model, 1, env)
        rce = loss_kind == "rce"
        net, opt = torch_trainer(path, rce)
        g = torch.Generator().manual_seed(0)
        x = torch.rand((TRAIN_BATCH, 3, SIZE[0], SIZE[1]), generator=g) * 2 - 1
        with torch.no_grad():
            y = net(x)
        shape = (y[0] if isinstance(y, (list, tuple)) else y).shape
        target = torch.rand(shape, generator=g)
        weight = (torch.rand((shape[0], shape[1], 1, 1), generator=g) > 0.1).float()
        torch_step(net, opt, x, target, weight, rce)
        pt_ips, wg_ips = [], []
        for _ in range(rounds):
            t = []
            for _ in range(reps):
                s = time.perf_counter()
                torch_step(net, opt, x, target, weight, rce)
                t.append(time.perf_counter() - s)
            pt_ips.append(TRAIN_BATCH / statistics.median(t))
            wg_ips.append(wgpose_train_ips(wgpose, model, reps, env)[0])
        p, w = statistics.median(pt_ips), statistics.median(wg_ips)
        r = statistics.median([b / a for a, b in zip(pt_ips, wg_ips)])
        print(f"{model:<26} {loss_kind:>5} {p:>14.2f} {w:>13.2f} {r:>6.2f}x", flush=True)
        results.append((model, p, w, r))
    return results


def rerun_without_avx512():
    """This script again, with the CPUID shim built and preloaded (into it, and so into every
    wgpose it starts): the libraries read CPUID when they load, so it must be there from the start."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(tempfile.gettempdir(), "wgpose-hide_avx512.so")
    try:
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", out, os.path.join(here, "hide_avx512.c")], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"--hide-avx512: cannot build scripts/hide_avx512.c with gcc ({e})")
    env = dict(os.environ, LD_PRELOAD=out, WGPOSE_HIDE_AVX512="1")
    return subprocess.run([sys.executable, *sys.argv], env=env).returncode


def main():
    global THREADS, SIZE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wgpose", default="target/release/wgpose")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    ap.add_argument("--reps", type=int, default=10, help="inference runs per engine and round")
    ap.add_argument("--train-reps", type=int, default=3, help="training steps per engine and round")
    ap.add_argument("--models", default=",".join(INFER_MODELS))
    ap.add_argument("--train-models", default=",".join(TRAIN_MODELS))
    ap.add_argument("--threads", type=int, default=THREADS, help="threads of every engine (default 2)")
    ap.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help="input HxW of every model (default 128x128)")
    ap.add_argument("--gap-ms", type=int, default=0, help="idle ms before each timed inference (33: 30 fps video)")
    ap.add_argument(
        "--background-load",
        type=int,
        default=0,
        help="run this many `nice -n 19` busy loops beside every engine (other programs on the machine)",
    )
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument(
        "--wgpose-env",
        default="",
        help="extra environment for wgpose, e.g. WGPOSE_CPU_KERNEL=avx2 to force its AVX2 kernel",
    )
    ap.add_argument(
        "--hide-avx512",
        action="store_true",
        help="hide AVX-512 from every engine's CPUID (scripts/hide_avx512.c, preloaded)",
    )
    a = ap.parse_args()
    if a.hide_avx512 and "WGPOSE_HIDE_AVX512" not in os.environ:
        return rerun_without_avx512()
    THREADS = a.threads
    try:
        SIZE = tuple(int(v) for v in a.size.split("x"))
        assert len(SIZE) == 2 and min(SIZE) > 0
    except (ValueError, AssertionError):
        sys.exit(f"--size {a.size}: expected HxW, e.g. 160x128")
    extra = dict(kv.split("=", 1) for kv in a.wgpose_env.split(",") if kv)
    env = wgpose_env(extra)
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f}; wgpose env {extra or '{}'}")
    if "WGPOSE_HIDE_AVX512" in os.environ:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
        if cap != "AVX2":
            sys.exit(f"--hide-avx512: PyTorch still reports CPU capability {cap}; the shim did not take")
        print(f"AVX-512 hidden from CPUID (scripts/hide_avx512.c): PyTorch's CPU capability {cap}; "
              "wgpose picks its AVX2 kernel; ONNX Runtime's MLAS its AVX2 kernels")
    load = [
        subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
        for _ in range(a.background_load)
    ]
    if load:
        print(f"background load: {len(load)} busy loop(s) at nice 19 for the whole run")
    try:
        compare(a, env)
    finally:
        for p in load:
            p.kill()
    print("\nratio: inference = wgpose ms / ONNX Runtime ms (<1: wgpose faster); "
          "training = wgpose img/s / PyTorch img/s (>1: wgpose faster); median of per-round ratios")
    return 0


def compare(a, env):
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_inference:
            compare_inference(a.wgpose, [m for m in a.models.split(",") if m], a.rounds, a.reps, env, tmp, a.gap_ms)
        if not a.skip_training:
            compare_training(a.wgpose, [m for m in a.train_models.split(",") if m], a.rounds, a.train_reps, env, tmp)


if __name__ == "__main__":
    sys.exit(main())
