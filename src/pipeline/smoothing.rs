//! Temporal smoothing of keypoints with the One Euro filter (Casiez, Roussel, Vogel, CHI 2012):
//! a first-order low-pass whose cutoff rises with the (low-passed) speed, so slow motion is
//! smoothed hard (little jitter) and fast motion follows with little lag.
//!
//! Cutoffs are in Hz and timestamps in seconds. `beta` multiplies a speed in the units of the
//! filtered values per second, so it depends on the coordinate units: image pixels here.

use super::decode::Keypoint;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
/// Parameters of a One Euro filter (see the module docs for units).
pub struct OneEuroConfig {
    /// Cutoff at zero speed (Hz): lower means less jitter and more lag when slow.
    pub min_cutoff: f32,
    /// Cutoff increase per unit of speed: higher means less lag when fast.
    pub beta: f32,
    /// Cutoff of the speed estimate (Hz).
    pub d_cutoff: f32,
}

impl Default for OneEuroConfig {
    fn default() -> Self {
        OneEuroConfig { min_cutoff: 1.0, beta: 0.0, d_cutoff: 1.0 }
    }
}

impl OneEuroConfig {
    /// `min_cutoff` Hz and `beta`, speed cutoff 1 Hz.
    pub fn new(min_cutoff: f32, beta: f32) -> Self {
        OneEuroConfig { min_cutoff, beta, d_cutoff: 1.0 }
    }

    fn check(&self) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v > 0.0;
        if !(ok(self.min_cutoff) && ok(self.d_cutoff) && self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::Input(format!("One Euro cutoffs must be positive and beta non-negative, got {self:?}")));
        }
        Ok(())
    }
}

/// Smoothing factor of a first-order low-pass at `cutoff` Hz for a step of `dt` seconds.
fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (std::f64::consts::TAU * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// One scalar signal.
#[derive(Clone, Debug)]
pub struct OneEuroFilter {
    cfg: OneEuroConfig,
    /// (last time, filtered value, filtered speed); None before the first sample / after reset.
    state: Option<(f64, f64, f64)>,
}

impl OneEuroFilter {
    /// A filter with no history; errors when a cutoff is not positive or `beta` is negative.
    pub fn new(cfg: OneEuroConfig) -> Result<Self> {
        cfg.check()?;
        Ok(OneEuroFilter { cfg, state: None })
    }

    /// Forgets the history: the next sample passes through unchanged.
    pub fn reset(&mut self) {
        self.state = None;
    }

    /// Time of the last sample taken into account.
    pub fn last_time(&self) -> Option<f64> {
        self.state.map(|s| s.0)
    }

    /// The last filtered value.
    pub fn value(&self) -> Option<f32> {
        self.state.map(|s| s.1 as f32)
    }

    /// Filters sample `x` taken at time `t` (seconds). The first sample after creation or reset
    /// passes through. A sample at the time of the previous one returns the previous output
    /// unchanged; one earlier than it (a seek, a clock reset) resets the filter. A non-finite
    /// `x` is returned as is and leaves the state untouched.
    pub fn filter(&mut self, t: f64, x: f32) -> f32 {
        if !x.is_finite() || !t.is_finite() {
            return x;
        }
        let x = x as f64;
        let Some((t0, x0, dx0)) = self.state else {
            self.state = Some((t, x, 0.0));
            return x as f32;
        };
        let dt = t - t0;
        if dt == 0.0 {
            return x0 as f32;
        }
        if dt < 0.0 {
            self.state = Some((t, x, 0.0));
            return x as f32;
        }
        let dx = (x - x0) / dt;
        let dx_hat = dx0 + alpha(self.cfg.d_cutoff as f64, dt) * (dx - dx0);
        let cutoff = self.cfg.min_cutoff as f64 + self.cfg.beta as f64 * dx_hat.abs();
        let x_hat = x0 + alpha(cutoff, dt) * (x - x0);
        self.state = Some((t, x_hat, dx_hat));
        x_hat as f32
    }
}

/// One Euro filters for the x and y of every joint of one tracked person.
///
/// Joints scored under `min_score` count as missing: they are returned as given (their low score
/// tells the consumer) and do not update the filters. A joint missing for longer than `max_gap`
/// seconds restarts from its next observation instead of being pulled towards a stale position.
#[derive(Clone, Debug)]
pub struct PoseSmoother {
    filters: Vec<[OneEuroFilter; 2]>,
    /// Joints scored below this are missing (0.2 by default).
    pub min_score: f32,
    /// Seconds a joint may be missing before its filter restarts (0.5 by default).
    pub max_gap: f64,
}

impl PoseSmoother {
    /// `joints` filters with `cfg`, treating scores under 0.2 as missing and restarting after
    /// half a second without an observation.
    pub fn new(joints: usize, cfg: OneEuroConfig) -> Result<Self> {
        let f = OneEuroFilter::new(cfg)?;
        Ok(PoseSmoother { filters: vec![[f.clone(), f]; joints], min_score: 0.2, max_gap: 0.5 })
    }

    /// Number of joints.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when there are no joints.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Forgets every joint's history (a new person, a cut in the video).
    pub fn reset(&mut self) {
        self.filters.iter_mut().flatten().for_each(OneEuroFilter::reset);
    }

    /// Smooths one frame's keypoints (image coordinates) observed at time `t` in seconds.
    pub fn smooth(&mut self, t: f64, keypoints: &[Keypoint]) -> Result<Vec<Keypoint>> {
        if keypoints.len() != self.filters.len() {
            return Err(Error::Input(format!(
                "{} keypoints for a {}-joint smoother",
                keypoints.len(),
                self.filters.len()
            )));
        }
        Ok(keypoints
            .iter()
            .zip(&mut self.filters)
            .map(|(kp, [fx, fy])| {
                let seen = kp.score >= self.min_score && kp.x.is_finite() && kp.y.is_finite();
                if !seen {
                    return *kp;
                }
                if fx.last_time().is_some_and(|t0| t - t0 > self.max_gap) {
                    fx.reset();
                    fy.reset();
                }
                Keypoint { x: fx.filter(t, kp.x), y: fy.filter(t, kp.y), score: kp.score }
            })
            .collect())
    }
}
