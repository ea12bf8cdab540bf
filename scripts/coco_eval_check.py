#!/usr/bin/env python3
"""Check wgpose's COCO keypoint evaluator (src/metrics.rs) against pycocotools.

For each ground-truth file (coco-mini val2017 and train2017, coco-fixtures) it builds prediction
sets from the ground truth with known perturbations (fixed seeds), writes them as COCO results
JSON, evaluates them with pycocotools' COCOeval(iouType='keypoints') and with
`target/release/examples/coco_ap` (built here), and compares the ten summary numbers.
Exit status 1 if any differs by more than 1e-6.

Setup (once):
    python3 -m venv /tmp/cocoeval && /tmp/cocoeval/bin/pip install pycocotools numpy
Run from the repository root:
    /tmp/cocoeval/bin/python scripts/coco_eval_check.py [--data ../shared/data] [--keep DIR]
"""

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:
    sys.exit("needs pycocotools and numpy:\n"
             "    python3 -m venv /tmp/cocoeval && /tmp/cocoeval/bin/pip install pycocotools numpy\n"
             "    /tmp/cocoeval/bin/python scripts/coco_eval_check.py")

NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
TOL = 1e-6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def persons(gt):
    """Evaluable people: not crowd, at least one labelled keypoint."""
    return [a for a in gt["annotations"] if not a.get("iscrowd", 0) and a["num_keypoints"] > 0]


def images_by_id(gt):
    return {im["id"]: im for im in gt["images"]}


def perturbed(ann, rng, sigma, unlabelled="center"):
    """Keypoints of `ann` with gaussian noise of `sigma` px on labelled joints. Unlabelled joints
    go to the box centre (or stay at 0, 0 with unlabelled='zero', which inflates the detection's
    area as pycocotools computes it from the keypoints' extent)."""
    k = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    x, y, w, h = ann["bbox"]
    out = []
    for kx, ky, v in k:
        if v > 0:
            px, py = kx + rng.normal(0, sigma), ky + rng.normal(0, sigma)
        elif unlabelled == "zero":
            px, py = 0.0, 0.0
        else:
            px, py = x + w / 2 + rng.normal(0, sigma), y + h / 2 + rng.normal(0, sigma)
        out += [round(float(px), 3), round(float(py), 3), round(float(rng.uniform(0.2, 1.0)), 4)]
    return out


def random_person(im, rng):
    w, h = im.get("width", 640) or 640, im.get("height", 480) or 480
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    s = rng.uniform(20, 200)
    kps = []
    for _ in range(17):
        kps += [round(float(cx + rng.normal(0, s / 3)), 3), round(float(cy + rng.normal(0, s / 2)), 3), 0.5]
    return kps


def prediction_sets(gt):
    ims = images_by_id(gt)
    people = persons(gt)
    sets = {}
    for sigma in [0, 2, 5, 10, 20]:
        rng = np.random.default_rng(1000 + sigma)
        sets[f"noise{sigma}"] = [
            {"image_id": a["image_id"], "category_id": 1, "keypoints": perturbed(a, rng, sigma),
             "score": round(float(rng.uniform(0.5, 1.0)), 4)}
            for a in people]
    # Noise 5, 20% of people dropped, 0-3 low-scored false positives per image.
    rng = np.random.default_rng(7)
    res = []
    for a in people:
        if rng.uniform() < 0.2:
            continue
        res.append({"image_id": a["image_id"], "category_id": 1, "keypoints": perturbed(a, rng, 5.0),
                    "score": round(float(rng.uniform(0.4, 1.0)), 4)})
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 4))):
            res.append({"image_id": im["id"], "category_id": 1, "keypoints": random_person(im, rng),
                        "score": round(float(rng.uniform(0.01, 0.45)), 4)})
    sets["drop+fp"] = res
    # All scores equal: ranking falls back to the (stable) order of the results file.
    rng = np.random.default_rng(11)
    sets["ties"] = [{"image_id": a["image_id"], "category_id": 1, "keypoints": perturbed(a, rng, 8.0),
                     "score": 1.0} for a in people]
    # Unlabelled joints predicted at (0, 0): detection areas (from the keypoints) change range.
    rng = np.random.default_rng(13)
    sets["zeros"] = [{"image_id": a["image_id"], "category_id": 1,
                      "keypoints": perturbed(a, rng, 3.0, unlabelled="zero"),
                      "score": round(float(rng.uniform(0.3, 1.0)), 4)} for a in people]
    # Detections on ignored people (crowd, no keypoints) and more than 20 detections per image.
    rng = np.random.default_rng(17)
    res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": perturbed(a, rng, 4.0),
            "score": round(float(rng.uniform(0.3, 1.0)), 4)} for a in gt["annotations"]]
    busiest = max(gt["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in people))
    for _ in range(25):
        res.append({"image_id": busiest["id"], "category_id": 1, "keypoints": random_person(busiest, rng),
                    "score": round(float(rng.uniform(0.0, 1.0)), 4)})
    sets["ignored+maxdets"] = res
    # With boxes: pycocotools then takes detection areas from bbox w*h.
    rng = np.random.default_rng(19)
    res = []
    for a in people:
        r = {"image_id": a["image_id"], "category_id": 1, "keypoints": perturbed(a, rng, 6.0),
             "score": round(float(rng.uniform(0.3, 1.0)), 4)}
        x, y, w, h = a["bbox"]
        r["bbox"] = [x, y, w * float(rng.uniform(0.3, 1.5)), h]
        res.append(r)
    sets["bbox"] = res
    return sets


def pycoco_stats(gt_path, res_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(res_path)
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def ours(binary, gt_path, res_path):
    out = subprocess.run([binary, gt_path, res_path], check=True, capture_output=True, text=True).stdout
    d = json.loads(out)
    return [float(d[n]) for n in NAMES]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--keep", help="write the results files here instead of a temporary directory")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--example", "coco_ap"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "coco_ap")

    gts = [
        ("coco-mini val2017", os.path.join(args.data, "coco-mini/annotations/person_keypoints_val2017.json")),
        ("coco-mini train2017", os.path.join(args.data, "coco-mini/annotations/person_keypoints_train2017.json")),
        ("coco-fixtures", os.path.join(args.data, "coco-fixtures/test_coco.json")),
    ]
    gts = [(n, p) for n, p in gts if os.path.exists(p)]
    if not gts:
        gts = [("tests/fixtures/coco", os.path.join(ROOT, "tests/fixtures/coco/test_coco.json"))]

    out_dir = args.keep or tempfile.mkdtemp(prefix="coco_eval_check_")
    os.makedirs(out_dir, exist_ok=True)
    worst = 0.0
    print(f"{'ground truth':<20} {'predictions':<16} " + " ".join(f"{n:>8}" for n in NAMES) + "   max|diff|")
    for gname, gpath in gts:
        with open(gpath) as f:
            gt = json.load(f)
        for sname, res in prediction_sets(copy.deepcopy(gt)).items():
            rpath = os.path.join(out_dir, f"{gname.replace(' ', '_')}_{sname}.json")
            with open(rpath, "w") as f:
                json.dump(res, f)
            p = pycoco_stats(gpath, rpath)
            o = ours(binary, gpath, rpath)
            d = max(abs(a - b) for a, b in zip(p, o))
            worst = max(worst, d)
            print(f"{gname:<20} {sname:<16} " + " ".join(f"{v:8.5f}" for v in p) + f"   {d:.1e}"
                  + ("" if d <= TOL else "   MISMATCH ours: " + " ".join(f"{v:.6f}" for v in o)))
    print(f"\nlargest difference {worst:.3e} (tolerance {TOL:g}); results files in {out_dir}")
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    main()
