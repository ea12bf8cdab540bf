// The One Euro filter (Casiez, Roussel, Vogel, CHI 2012) per keypoint coordinate: a low-pass
// filter whose cutoff rises with speed, so still joints stop jittering and fast ones do not lag.
// `minCutoff` (Hz) sets the smoothing at rest, `beta` how fast the cutoff follows speed.

const alpha = (cutoff, dt) => 1 / (1 + 1 / (2 * Math.PI * cutoff * dt));

class OneEuro {
  constructor() { this.x = null; this.dx = 0; this.t = null; }
  filter(x, t, minCutoff, beta, dCutoff = 1.0) {
    if (this.x === null || t <= this.t) {
      this.x = x; this.t = t;
      return x;
    }
    const dt = t - this.t;
    const dx = (x - this.x) / dt;
    this.dx += alpha(dCutoff, dt) * (dx - this.dx);
    const cutoff = minCutoff + beta * Math.abs(this.dx);
    this.x += alpha(cutoff, dt) * (x - this.x);
    this.t = t;
    return this.x;
  }
}

/** Smooths every keypoint of one tracked person; scores pass through. */
export class OneEuroPose {
  constructor() { this.filters = []; }
  filter(pose, t, minCutoff, beta) {
    const keypoints = pose.keypoints.map((k, i) => {
      if (!this.filters[i]) this.filters[i] = [new OneEuro(), new OneEuro()];
      const [fx, fy] = this.filters[i];
      return { ...k, x: fx.filter(k.x, t, minCutoff, beta), y: fy.filter(k.y, t, minCutoff, beta) };
    });
    return { ...pose, keypoints };
  }
}
