#!/usr/bin/env python3
"""Which LSP labels disagree with a model's predictions by a left/right swap of a whole limb group.

LSPET's crowd-sourced labels swap the person's left and right for some people. This script
compares `wgpose eval --format lsp --json P.json` predictions with `joints.mat` and flags each
limb group (legs: ankles, knees, hips; arms: wrists, elbows, shoulders) whose predictions match
the swapped labels far better than the labels as given:

    d_swap < 0.5 * d_orig  and  d_orig / joints > 0.25 * torso

(d: summed distances of the group's labelled pairs; torso: right shoulder to left hip). A flag
means the label or the prediction is mirrored; `--grid` draws a random sample of flagged groups
(labels as rings, predictions as squares; red = right, blue = left, green = head) to judge which.

Needs: pip install numpy scipy pillow
Usage: scripts/lsp_label_swaps.py P.json ../shared/data/lspet [--grid out.png --count 9 --seed 1]
"""

import argparse
import json
import random

import numpy as np
import scipy.io

GROUPS = {"legs": [(0, 5), (1, 4), (2, 3)], "arms": [(6, 11), (7, 10), (8, 9)]}
RIGHT, LEFT = [0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]


def flagged(pred, joints):
    out, counts = [], {g: [0, 0] for g in GROUPS}
    for name, p in pred.items():
        i = int(name[2:7]) - 1
        xy, vis = joints[:, :2, i], joints[:, 2, i] > 0
        p = np.asarray(p)[:, :2]
        torso = np.linalg.norm(xy[8] - xy[3])
        if torso <= 0:
            continue
        for g, pairs in GROUPS.items():
            d_orig = d_swap = 0.0
            n = 0
            for a, b in pairs:
                if vis[a] and vis[b]:
                    n += 2
                    d_orig += np.linalg.norm(p[a] - xy[a]) + np.linalg.norm(p[b] - xy[b])
                    d_swap += np.linalg.norm(p[a] - xy[b]) + np.linalg.norm(p[b] - xy[a])
            if n == 0:
                continue
            counts[g][1] += 1
            if d_swap < 0.5 * d_orig and d_orig / n > 0.25 * torso:
                counts[g][0] += 1
                out.append((name, g, p, xy, vis))
    return out, counts


def grid(cases, root, path, count, seed):
    from PIL import Image, ImageDraw

    random.Random(seed).shuffle(cases)
    tiles = []
    for name, g, p, xy, vis in cases[:count]:
        im = Image.open(f"{root}/images/{name}").convert("RGB")
        x0, y0 = xy[vis].min(0) - 20
        x1, y1 = xy[vis].max(0) + 20
        im = im.crop((int(x0), int(y0), int(x1), int(y1)))
        s = 350 / max(im.size)
        im = im.resize((max(1, int(im.size[0] * s)), max(1, int(im.size[1] * s))))
        d = ImageDraw.Draw(im)
        for j in range(14):
            c = (255, 0, 0) if j in RIGHT else (0, 100, 255) if j in LEFT else (0, 255, 0)
            x, y = (xy[j] - [x0, y0]) * s
            d.ellipse([x - 6, y - 6, x + 6, y + 6], outline=c, width=3)
            x, y = (p[j] - [x0, y0]) * s
            d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=c)
        d.text((3, 3), f"{name} {g}", fill=(255, 255, 0))
        tiles.append(im)
    cols = 3
    out = Image.new("RGB", (350 * cols, 350 * ((len(tiles) + cols - 1) // cols)))
    for k, t in enumerate(tiles):
        out.paste(t, ((k % cols) * 350, (k // cols) * 350))
    out.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions")
    ap.add_argument("root", help="LSP folder with joints.mat and images/")
    ap.add_argument("--grid")
    ap.add_argument("--count", type=int, default=9)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    joints = scipy.io.loadmat(f"{a.root}/joints.mat")["joints"]
    if joints.shape[0] != 14:
        joints = joints.transpose(1, 0, 2)
    pred = json.load(open(a.predictions))
    cases, counts = flagged(pred, joints)
    for g, (f, n) in counts.items():
        print(f"{g}: {f} of {n} groups flagged ({100 * f / max(n, 1):.1f}%)")
    print(f"people with a flag: {len({c[0] for c in cases})} of {len(pred)}")
    if a.grid:
        grid(cases, a.root, a.grid, a.count, a.seed)
        print(f"wrote {a.grid}")


if __name__ == "__main__":
    main()
