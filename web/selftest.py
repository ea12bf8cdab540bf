#!/usr/bin/env python3
"""Drives web/dist/selftest.html in headless Chromium (chromedriver, plain W3C WebDriver over HTTP:
no Python packages needed) and compares its keypoints with native `wgpose predict --json` on the
same images and weights.

Checks, per model:
  * WebGPU in the browser (SwiftShader in CI) against native `wgpose predict --device gpu`;
  * the CPU fallback in the browser (wasm) against native `wgpose predict --device cpu`, both
    with the wasm module the page picks (Chromium: the relaxed-SIMD build, which must be the one
    that ran) and with the SIMD128 build forced (`wasm=wgpose_web_bg.wasm`);
  each within TOL_PX pixels per coordinate and TOL_SCORE per score, and the page must report the
  backend it was asked for;
  * finding people (selftest.html?detect=1: no box, the shipped person detector attached on the
    same backend) on the four fixtures and a blank grey image, against native `wgpose predict`
    with its detector: the same number of people per image (none on the blank one), each
    person's box within TOL_BOX_PX, detection score within TOL_DET_SCORE, keypoints within
    TOL_PEOPLE_PX; and track(): "found", "followed" on the same frame again, "found" after
    resetTrack(), nobody on the blank image, the found pose equal to the first detected person's;
  * the same people and tracking checks on the CPU with the estimator in a Web Worker
    (`createEstimator({ worker: true })`, selftest.html?worker=1; people on the CPU, pose on
    WebGPU), and the demo page with its
    worker switch on (a fixture image, the badge must say "in a Web Worker", no error);
  * bad input: a weights URL that 404s, a garbage weights file, the weights of another model,
    an image that does not decode, a detector URL that 404s and a pose model's weights given as the
    detector must each end in `error: ...` with the right code.

Usage: python3 web/selftest.py [--models a,b] [--chromium PATH]; prints `N passed, M failed`.
"""

import argparse
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "web", "dist")
# Sub-pixel: the browser runs the same WGSL / the same CPU code on the same pixels; what differs
# is the float order of GPU reductions (SwiftShader vs lavapipe) and wasm vs x86 float code.
TOL_PX = 0.05
TOL_SCORE = 1e-3
# With the detector, a keypoint difference moves the refined box (cut on the keypoints) and so
# the second crop; the detector's peaks and sizes are decoded from its maps. Still far below a
# pixel: what would show a real mismatch (a wrong letterbox, a missing refinement) is pixels.
TOL_BOX_PX = 0.1
TOL_PEOPLE_PX = 0.1
TOL_DET_SCORE = 1e-3
BLANK = "fixtures/blank.png"
# PNG copies of the JPEG fixtures (made by `png_fixtures`): two JPEG decoders (Chromium's and the
# image crate's) differ by a few levels per pixel, which moves keypoints by up to ~1.5 px; the
# comparison is about the network, so both sides read the same lossless pixels.
JPEGS = ["fixtures/sample.jpg", "fixtures/im08001.jpg", "fixtures/im08002.jpg", "fixtures/im08003.jpg"]
IMAGES = [j.replace(".jpg", ".png") for j in JPEGS]
CHROME_ARGS = [
    "--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
    "--use-angle=vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader",
    "--disable-vulkan-surface", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=1280,900",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}

    def log_message(self, *args):
        pass


def serve(directory):
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(QuietHandler, directory=directory))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{port}"


class WebDriver:
    def __init__(self, chromium, chromedriver):
        self.port = free_port()
        self.proc = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self._req("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        self.profile = tempfile.mkdtemp(prefix="wgpose-chromium-")
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium, "args": CHROME_ARGS + [f"--user-data-dir={self.profile}"]}}}}
        self.session = self._req("POST", "/session", caps)["sessionId"]

    def _req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["value"] if method != "GET" or path != "/status" else None

    def cmd(self, method, path, body=None):
        return self._req(method, f"/session/{self.session}{path}", body)

    def get(self, url):
        self.cmd("POST", "/url", {"url": url})

    def title(self):
        return self.cmd("GET", "/title")

    def text_of(self, css):
        el = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        key = next(iter(el))
        return self.cmd("GET", f"/element/{el[key]}/text")

    def screenshot(self, path):
        import base64
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.cmd("GET", "/screenshot")))

    def wait_title(self, timeout, ready=("done",)):
        end = time.time() + timeout
        while time.time() < end:
            t = self.title()
            if t in ready or t.startswith("error"):
                return t
            time.sleep(0.5)
        return f"timeout after {timeout}s (title {self.title()!r})"

    def close(self):
        try:
            self.cmd("DELETE", "")
        except OSError:
            pass
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def png_fixtures():
    from PIL import Image  # Debian's python3-pil (web/test.sh installs it)
    for jpg, png in zip(JPEGS, IMAGES):
        Image.open(os.path.join(DIST, jpg)).convert("RGB").save(os.path.join(DIST, png))
    # Nobody in it: the detector must find no one (natively and in the browser).
    Image.new("RGB", (320, 240), (128, 128, 128)).save(os.path.join(DIST, BLANK))


def native_predict(model, device, detect=False):
    """Native keypoints of the top person per image; with `detect`, the `people` lists instead."""
    out = tempfile.mktemp(suffix=".json")
    exe = os.environ.get("WGPOSE_CLI") or os.path.join(ROOT, "target", "release", "wgpose")
    images = IMAGES + [BLANK] if detect else IMAGES
    imgs = [os.path.join(DIST, i) for i in images]
    # --no-detect: the self-test runs on the whole image as the box, like the page; with
    # `detect` predict attaches its shipped detector, as the page does.
    flags = [] if detect else ["--no-detect"]
    subprocess.run([exe, "predict", "--model", model, "--device", device] + flags + ["--json", out] + imgs,
                   check=True,
                   stderr=subprocess.DEVNULL)
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    # predict keys its JSON by the path as given.
    if detect:
        return {i: res["people"][os.path.join(DIST, i)] for i in images}
    return {i: res[os.path.join(DIST, i)] for i in images}


def compare(browser, native):
    """Largest coordinate and score differences over all images and joints."""
    dx, ds = 0.0, 0.0
    for img, kps in native.items():
        got = browser[img]
        if len(got) != len(kps):
            return float("inf"), float("inf")
        for (x, y, s), (bx, by, bs) in zip(kps, got):
            dx = max(dx, abs(x - bx), abs(y - by))
            ds = max(ds, abs(s - bs))
    return dx, ds


def compare_people(browser, native):
    """Problems (a list of strings) and the largest box, score and keypoint differences."""
    problems = []
    db, ds, dk = 0.0, 0.0, 0.0
    for img, want in native.items():
        got = browser.get(img, [])
        if len(got) != len(want):
            problems.append(f"{img}: {len(got)} people in the browser, {len(want)} natively")
            continue
        for g, n in zip(got, want):
            db = max([db] + [abs(a - b) for a, b in zip(g["box"], n["box"])])
            ds = max(ds, abs(g["score"] - n["score"]))
            for (x, y, _), (bx, by, _) in zip(n["keypoints"], g["keypoints"]):
                dk = max(dk, abs(x - bx), abs(y - by))
            if len(g["keypoints"]) != len(n["keypoints"]):
                problems.append(f"{img}: {len(g['keypoints'])} keypoints, {len(n['keypoints'])} natively")
    return problems, db, ds, dk


def check_pose(wd, base, args, model, backend, device, check, worker=False, wasm=None):
    """The self-test page (whole image as the box) against native `predict --no-detect`; with
    `worker`, the estimator in a Web Worker; with `wasm`, that wasm module instead of the one the
    page picks (Chromium validates relaxed SIMD, so the relaxed-SIMD build, which must be the one
    that ran)."""
    native = native_predict(model, device)
    name = (f"{model} {backend}{' in a worker' if worker else ''}{f' with {wasm}' if wasm else ''}"
            f" vs native --device {device}")
    t0 = time.time()
    extra = f"&wasm={wasm}" if wasm else ""
    wd.get(f"{base}/selftest.html?model={model}&backend={backend}&worker={int(worker)}{extra}"
           f"&images={','.join(IMAGES)}")
    title = wd.wait_title(args.timeout)
    wall = time.time() - t0
    if title != "done":
        check(name, False, title)
        return
    res = json.loads(wd.text_of("#result"))
    dx, ds = compare(res["results"], native)
    ran = res.get("wasm", "")
    wasm_ok = ran.endswith(wasm) if wasm else ran == "relaxed-simd"
    ok = res["backend"] == backend and res.get("worker") == worker and wasm_ok and dx <= TOL_PX and ds <= TOL_SCORE
    ms = ", ".join(f"{m:.0f}" for m in res["ms"])
    check(name, ok,
          f"backend={res['backend']} wasm={ran} adapter={res['adapter']!r} max |dxy|={dx:.4f}px "
          f"(tol {TOL_PX}) max |dscore|={ds:.5f} (tol {TOL_SCORE}); per image ms [{ms}]; page {wall:.1f}s")


def check_people(wd, base, args, model, backend, device, check, worker=False):
    """The detect=1 page (people and tracking) against native predict with its detector; with
    `worker`, the estimator in a Web Worker."""
    native = native_predict(model, device, detect=True)
    images = IMAGES + [BLANK]
    t0 = time.time()
    wd.get(f"{base}/selftest.html?model={model}&backend={backend}&detect=1&worker={int(worker)}"
           f"&images={','.join(images)}")
    title = wd.wait_title(args.timeout)
    wall = time.time() - t0
    name = f"{model} {backend}{' in a worker' if worker else ''} people"
    if title != "done":
        check(f"{name} vs native --device {device}", False, title)
        check(f"{name}: track", False, title)
        return
    res = json.loads(wd.text_of("#result"))
    problems, db, ds, dk = compare_people(res["results"], native)
    counts = {i.split("/")[-1]: len(native[i]) for i in images}
    ok = (not problems and res["backend"] == backend and db <= TOL_BOX_PX and ds <= TOL_DET_SCORE
          and dk <= TOL_PEOPLE_PX and res.get("worker") == worker)
    ms = ", ".join(f"{m:.0f}" for m in res["ms"])
    check(f"{name} vs native --device {device}", ok,
          f"{'; '.join(problems) + '; ' if problems else ''}backend={res['backend']} detector={res['detector']} "
          f"people per image (native) {counts}; max |dbox|={db:.4f}px (tol {TOL_BOX_PX}) "
          f"max |ddetection score|={ds:.5f} (tol {TOL_DET_SCORE}) max |dxy|={dk:.4f}px (tol {TOL_PEOPLE_PX}); "
          f"per image ms [{ms}]; page {wall:.1f}s")
    want = ["found", "followed", "found", None]
    first = res["results"][images[0]]
    same = bool(first) and res["trackFirst"] is not None and all(
        abs(a - b) <= 1e-4 for ka, kb in zip(first[0]["keypoints"], res["trackFirst"]) for a, b in zip(ka, kb))
    # The found step carries the detection of the person it found.
    same = same and res.get("trackFirstDetection") is not None and abs(
        res["trackFirstDetection"] - first[0]["score"]) <= 1e-6
    tms = ", ".join(f"{m:.0f}" for m in res["trackMs"])
    check(f"{name}: track", res["steps"] == want and same,
          f"steps {res['steps']} (want {want}: image, same image, after resetTrack, blank image); "
          f"found pose and detection {'=' if same else '!='} first detected person's; ms [{tms}]")


def extras(wd, base, args):
    """The README's screenshot and benchmark (not tests)."""
    if args.screenshot:
        # WebGPU asked for explicitly: "auto" would pick the CPU on SwiftShader, without the GPU chart.
        wd.get(f"{base}/index.html?source=fixtures/sample.jpg&mirror=0&profile=1&backend=webgpu")
        title = wd.wait_title(args.timeout, ready=("wgpose: ready",))
        wd.screenshot(args.screenshot)
        print(f"screenshot ({title}) -> {args.screenshot}")
    if args.bench or args.bench_people:
        out = {}
        query = f"people=1&runs={args.runs}" if args.bench_people else f"runs={args.runs}"
        if args.engines:
            query += f"&engines={args.engines}"
        for model in args.models.split(","):
            wd.get(f"{base}/bench.html?model={model}&{query}")
            title = wd.wait_title(args.timeout)
            out[model] = json.loads(wd.text_of("#result")) if title == "done" else {"error": title}
            print(model, json.dumps(out[model]), flush=True)
        with open(args.bench or args.bench_people, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fasterpose-r18-s16-lsp,sghg-1x64-lsp")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "chromedriver")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--screenshot", help="only save a screenshot of the demo page (fixture image source) here")
    ap.add_argument("--bench", help="only run bench.html for --models and save its JSON results here")
    ap.add_argument("--runs", type=int, default=5, help="timed calls per engine in --bench / --bench-people")
    ap.add_argument("--engines", help="comma-separated engines for --bench / --bench-people (default: all), "
                    "e.g. wgpose-cpu,ort-wasm")
    ap.add_argument("--bench-people", help="only run bench.html?people=1 (pose alone vs detector + pose vs a "
                    "followed track step, both backends) for --models and save its JSON results here")
    args = ap.parse_args()
    png_fixtures()
    httpd, base = serve(DIST)
    wd = WebDriver(args.chromium, args.chromedriver)
    if args.screenshot or args.bench or args.bench_people:
        try:
            return extras(wd, base, args)
        finally:
            wd.close()
            httpd.shutdown()
    passed, failed = 0, 0

    def check(name, ok, detail):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if ok:
            passed += 1
        else:
            failed += 1

    try:
        for model in args.models.split(","):
            for backend, device in (("webgpu", "gpu"), ("cpu", "cpu")):
                check_pose(wd, base, args, model, backend, device, check)
            # The SIMD128 build, which browsers without relaxed SIMD load.
            check_pose(wd, base, args, model, "cpu", "cpu", check, wasm="wgpose_web_bg.wasm")
        model = args.models.split(",")[0]
        for backend, device in (("webgpu", "gpu"), ("cpu", "cpu")):
            check_people(wd, base, args, model, backend, device, check)
        # The same estimator in a Web Worker (people, tracking with a reset between calls).
        check_people(wd, base, args, model, "cpu", "cpu", check, worker=True)
        # WebGPU inside a Web Worker (pose on the whole image, as the first checks).
        check_pose(wd, base, args, model, "webgpu", "gpu", check, worker=True)
        # The demo page with its worker switch on, on a fixture image.
        wd.get(f"{base}/index.html?source=fixtures/sample.jpg&mirror=0&worker=1&backend=cpu")
        title = wd.wait_title(args.timeout, ready=("wgpose: ready",))
        badge, err = wd.text_of("#backend"), wd.text_of("#error")
        check("demo page in a Web Worker", title == "wgpose: ready" and "Web Worker" in badge and not err,
              f"title={title!r} badge={badge!r} error={err!r}")
        # "auto" on SwiftShader (a software adapter) must choose the CPU, say why, and still work.
        wd.get(f"{base}/selftest.html?model={model}&backend=auto&images={IMAGES[0]}")
        title = wd.wait_title(args.timeout)
        res = json.loads(wd.text_of("#result")) if title == "done" else {}
        reason = res.get("fallbackReason", "")
        check("backend auto on a software adapter", res.get("backend") == "cpu" and "software" in reason,
              f"title={title!r} backend={res.get('backend')!r} fallbackReason={reason!r}")
        other = [m for m in ("sghg-1x64-lsp", "fasterpose-r18-s16-lsp") if m != model][0]
        bad = [
            ("weights URL 404", f"model={model}&weights=models/missing.safetensors&images={IMAGES[0]}",
             "error: weights:"),
            ("garbage weights", f"model={model}&weights=fixtures/sample.jpg&cache=0&images={IMAGES[0]}",
             "error: weights:"),
            ("weights of another model", f"model={model}&weights=models/{other}.safetensors&images={IMAGES[0]}",
             "error: weights:"),
            ("image that does not decode", f"model={model}&backend=cpu&images=selftest.html", "error:"),
            ("detector URL 404", f"model={model}&backend=cpu&detect=1&detector=models/missing.safetensors"
             f"&images={IMAGES[0]}", "error: weights:"),
            ("weights URL 404, estimator in a worker",
             f"model={model}&worker=1&weights=models/missing.safetensors&images={IMAGES[0]}", "error: weights:"),
            ("pose weights as the detector", f"model={model}&detect=1&detector=models/{model}.safetensors"
             f"&images={IMAGES[0]}", "error: weights:"),
        ]
        for name, query, want in bad:
            wd.get(f"{base}/selftest.html?{query}")
            title = wd.wait_title(args.timeout)
            check(f"bad input: {name}", title.startswith(want), title)
    finally:
        wd.close()
        httpd.shutdown()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
