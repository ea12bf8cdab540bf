#!/usr/bin/env python3
"""Choosing the rule that turns detector candidates into people (README, "Finding people").

  python3 scripts/people_rules.py strips ../shared/data/lspet OUT_DIR
      cuts a "background" strip beside the labelled person of every 5th validation image
      (8001..9000), the widest side strip of at least 80x80 pixels outside the joints' box
      enlarged 1.6x (other, unlabelled people may be in it);
  wgpose predict $(seq -f '../shared/data/lspet/images/im%05g.jpg' 8001 9000) \
      --det-threshold 0.05 --min-pose-score 0 --device cpu --json val.json
  wgpose predict OUT_DIR/*.png --det-threshold 0.05 --min-pose-score 0 --device cpu --json strips.json
  python3 scripts/people_rules.py score ../shared/data/lspet val.json strips.json
      PCK@0.2 (torso) of the top person kept by each rule on 8001..8500 (where the rule is
      chosen) and 8501..9000 (held out), and how many strips get a "person".

Needs numpy and Pillow. Reads LSPET's joints.mat (MATLAB v5, one compressed 14x3x10000 array)
without scipy.
"""
import json
import struct
import sys
import zlib

import numpy as np


def lsp_joints(root):
    d = open(f"{root}/joints.mat", "rb").read()
    _, n = struct.unpack("<II", d[128:136])
    raw = zlib.decompress(d[136:136 + n])

    def elem(p):
        t, n = struct.unpack("<II", raw[p:p + 8])
        if t >> 16:  # small data element: the data sits in the tag
            return raw[p + 4:p + 4 + (t >> 16)], p + 8
        return raw[p + 8:p + 8 + n], p + 8 + ((n + 7) // 8) * 8

    p = 8  # inside the miMATRIX: flags, dims, name, real part
    _, p = elem(p)
    dims, p = elem(p)
    _, p = elem(p)
    data, p = elem(p)
    dims = struct.unpack("<%di" % (len(dims) // 4), dims)
    return np.frombuffer(data, dtype=np.float64).reshape(dims[::-1]).transpose(2, 1, 0)  # 14 x 3 x N


def strips(root, out):
    from PIL import Image
    j = lsp_joints(root)
    n = 0
    for i in range(8001, 9001, 5):
        g = j[:, :, i - 1]
        sel = g[:, 2] > 0
        if sel.sum() < 2:
            continue
        x0, x1, y0, y1 = g[sel, 0].min(), g[sel, 0].max(), g[sel, 1].min(), g[sel, 1].max()
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 1.6, (y1 - y0) * 1.6
        bx0, bx1, by0, by1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
        im = Image.open(f"{root}/images/im{i:05d}.jpg")
        W, H = im.size
        cands = [(0, 0, max(0, bx0), H), (min(W, bx1), 0, W, H), (0, 0, W, max(0, by0)), (0, min(H, by1), W, H)]
        best = max(cands, key=lambda s: (s[2] - s[0]) * (s[3] - s[1]))
        if best[2] - best[0] < 80 or best[3] - best[1] < 80:
            continue
        im.crop(tuple(int(v) for v in best)).save(f"{out}/neg{i:05d}.png")
        n += 1
    print(f"{n} strips in {out}")


def score(root, val_json, strips_json):
    j = lsp_joints(root)
    people = json.load(open(val_json))["people"]
    by_number = {int(k.split("im")[-1][:5]): v for k, v in people.items()}
    negs = json.load(open(strips_json))["people"]

    def keep(p, rule):
        det, pose, sure = rule
        return p["score"] >= sure or (p["score"] >= det and p["pose_score"] >= pose)

    def pck(rule, lo, hi):
        hit = tot = 0
        for i in range(lo, hi + 1):
            g = j[:, :, i - 1]
            vis = g[:, 2] > 0
            torso = np.hypot(*(g[8, :2] - g[3, :2]))  # right shoulder to left hip
            if not (vis[8] and vis[3]) or torso <= 0:
                continue
            top = next((p for p in by_number.get(i, []) if keep(p, rule)), None)
            for k in np.nonzero(vis)[0]:
                tot += 1
                if top is not None:
                    x, y, _ = top["keypoints"][k]
                    hit += x == x and np.hypot(x - g[k, 0], y - g[k, 1]) <= 0.2 * torso
        return 100 * hit / tot

    rules = [(0.25, 0.0, 0.25), (0.1, 0.0, 0.1)] + [
        (d, p, s) for d in (0.05, 0.1, 0.15) for p in (0.2, 0.25, 0.3, 0.35) for s in (0.3, 0.4, 0.5)
    ]
    print("det  pose  sure   PCK 8001..8500  8501..9000  strips with a person")
    for r in rules:
        n = sum(1 for v in negs.values() if any(keep(p, r) for p in v))
        print(f"{r[0]:.2f} {r[1]:.2f} {r[2]:.2f}   {pck(r, 8001, 8500):14.2f} {pck(r, 8501, 9000):11.2f}  {n:4d} of {len(negs)}")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "strips" and len(sys.argv) == 4:
        strips(sys.argv[2], sys.argv[3])
    elif cmd == "score" and len(sys.argv) == 5:
        score(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
