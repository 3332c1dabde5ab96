//! The target-keep controller (`--target-keep R`): steers alpha so that the model keep ratio
//! follows a path from 1 down to R, reached by the target step, and then holds R.
//!
//! It runs on the host every `cadence(steps per epoch)` steps of an epoch (`EVERY`, or a quarter
//! of an epoch when that is shorter) and at the epoch's end, from the keep counters the loop reads
//! there: its cadence, and so the run, does not depend on how often the user logs. Its only state is alpha (an f64), saved in every
//! checkpoint, so a resumed run takes the same decisions bit for bit. The path is geometric,
//! `k*(s) = R^(s / S)` for s < S, then R; each update multiplies alpha by
//! `exp(GAIN * ln(k / k*(s)))`, limited to [0.8, 1.25] per update: a run that keeps more than the
//! path gets a larger alpha (thresholds rise faster), one below it a smaller alpha.

/// Steps between two updates in epochs of 400 steps or more (an epoch's end updates too).
pub const EVERY: u64 = 100;

/// Steps between two updates in an epoch of `steps_per_epoch` steps: `EVERY`, or a quarter of the
/// epoch when that is shorter (four updates an epoch on small data sets, and one every step in
/// epochs of 4 steps or fewer).
pub fn cadence(steps_per_epoch: u64) -> u64 {
    EVERY.min(steps_per_epoch.div_ceil(4)).max(1)
}
/// Strength of one update: alpha is multiplied by (k / k*)^GAIN.
const GAIN: f64 = 0.5;
/// Alpha stays within these bounds.
const ALPHA_MIN: f64 = 1e-9;
const ALPHA_MAX: f64 = 10.0;

#[derive(Clone, Debug, PartialEq)]
pub struct AlphaController {
    /// The alpha the steps use now.
    pub alpha: f64,
    target: f64,
    /// The step by which the target is to be reached.
    target_step: u64,
}

impl AlphaController {
    pub fn new(alpha: f64, target: f64, target_step: u64) -> AlphaController {
        AlphaController {
            alpha,
            target,
            target_step: target_step.max(1),
        }
    }

    /// The keep ratio the path asks for at `step`.
    pub fn target_at(&self, step: u64) -> f64 {
        if step >= self.target_step {
            self.target
        } else {
            self.target.powf(step as f64 / self.target_step as f64)
        }
    }

    /// After the window ending at `step`, in which the model kept `keep`: the next alpha.
    pub fn update(&mut self, step: u64, keep: f64) {
        let want = self.target_at(step);
        let error = (keep.max(1e-9) / want).ln();
        let factor = (GAIN * error).exp().clamp(0.8, 1.25);
        self.alpha = (self.alpha * factor).clamp(ALPHA_MIN, ALPHA_MAX);
    }
}
