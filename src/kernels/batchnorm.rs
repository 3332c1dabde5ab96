//! `shaders/batchnorm.wgsl`: batch normalisation (PyTorch's BatchNorm1d and BatchNorm2d): batch
//! statistics with the running-statistics update, evaluation statistics, the normalisation, and
//! its parameter and input gradients.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory, StepRing};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/batchnorm.wgsl");

/// PyTorch's default epsilon, added to the variance.
pub const EPS: f32 = 1e-5;
/// PyTorch's default momentum of the running statistics.
pub const MOMENTUM: f64 = 0.1;

/// A batch norm's input viewed as `(batch, channels, spatial)`: `spatial = h w` for 2d (NCHW), 1
/// for 1d (N, C). Statistics are per channel over the batch rows and the spatial positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl BnShape {
    /// Elements of x (y, dy, dx).
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn params(&self, train: bool) -> BnParams {
        assert!(
            self.batch > 0 && self.channels > 0 && self.spatial > 0,
            "batch norm {self:?}: empty dimension"
        );
        BnParams {
            batch: self.batch as u32,
            channels: self.channels as u32,
            spatial: self.spatial as u32,
            train: train as u32,
            eps: EPS,
            momentum: MOMENTUM as f32,
            keep: (1.0 - MOMENTUM) as f32,
            _pad0: 0,
        }
    }
}

/// Keep in sync with `BnParams` in shaders/batchnorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BnParams {
    pub batch: u32,
    pub channels: u32,
    pub spatial: u32,
    pub train: u32,
    pub eps: f32,
    pub momentum: f32,
    pub keep: f32,
    pub _pad0: u32,
}

pub struct BatchNorm {
    pub batch_stats_k: Kernel,
    pub running_stats_k: Kernel,
    pub forward_k: Kernel,
    pub backward_params_k: Kernel,
    pub backward_input_k: Kernel,
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

fn assert_len(t: &Tensor, n: usize, what: &str, s: &BnShape) {
    assert_eq!(
        t.len(),
        n,
        "batch norm {what} ({}): {} elements for {s:?}",
        t.label,
        t.len()
    );
}

impl BatchNorm {
    pub fn new(f: &KernelFactory<'_>) -> Result<BatchNorm> {
        Ok(BatchNorm {
            batch_stats_k: f.kernel(
                "bn_batch_stats",
                &[(1, R), (5, RW), (7, RW), (8, RW)],
                true,
            )?,
            running_stats_k: f.kernel("bn_running_stats", &[(7, RW), (8, RW), (5, RW)], false)?,
            forward_k: f.kernel(
                "bn_forward",
                &[(1, R), (6, R), (2, R), (3, R), (4, RW)],
                false,
            )?,
            backward_params_k: f.kernel(
                "bn_backward_params",
                &[(1, R), (9, R), (6, R), (10, RW), (11, RW)],
                true,
            )?,
            backward_input_k: f.kernel(
                "bn_backward_input",
                &[(1, R), (9, R), (6, R), (2, R), (13, R), (14, R), (12, RW)],
                true,
            )?,
        })
    }

    /// Training statistics of `x` (batch, channels, spatial), over the rows below the step's
    /// `valid`: writes `stats` (2, channels) = (mean, 1 / sqrt(biased var + eps)) and updates
    /// `running_mean`, `running_var` (channels) in place with momentum 0.1, the variance unbiased
    /// (left as they are when only one value per channel is valid).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_stats(
        &self,
        gpu: &Gpu,
        s: &BnShape,
        x: &Tensor,
        stats: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = s.params(true);
        assert_len(x, s.len(), "x", s);
        assert_len(stats, 2 * s.channels, "stats", s);
        assert_len(running_mean, s.channels, "running_mean", s);
        assert_len(running_var, s.channels, "running_var", s);
        self.batch_stats_k.bind(
            gpu,
            &p,
            &[x, stats, running_mean, running_var],
            Some(step),
            grid_1d(s.channels as u32),
        )
    }

    /// Evaluation statistics: writes `stats` (2, channels) = (running_mean, 1 / sqrt(running_var
    /// + eps)); reads (never writes) the running statistics.
    pub fn running_stats(
        &self,
        gpu: &Gpu,
        s: &BnShape,
        running_mean: &Tensor,
        running_var: &Tensor,
        stats: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_len(running_mean, s.channels, "running_mean", s);
        assert_len(running_var, s.channels, "running_var", s);
        assert_len(stats, 2 * s.channels, "stats", s);
        self.running_stats_k.bind(
            gpu,
            &p,
            &[running_mean, running_var, stats],
            None,
            grid_1d(s.channels.div_ceil(64) as u32),
        )
    }

    /// `y = (x - mean) inv_std gamma + beta` per channel, `stats` from `batch_stats` or
    /// `running_stats`; writes every y.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &BnShape,
        x: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_len(x, s.len(), "x", s);
        assert_len(stats, 2 * s.channels, "stats", s);
        assert_len(gamma, s.channels, "gamma", s);
        assert_len(beta, s.channels, "beta", s);
        assert_len(y, s.len(), "y", s);
        self.forward_k.bind(
            gpu,
            &p,
            &[x, stats, gamma, beta, y],
            None,
            grid_1d(s.len().div_ceil(256) as u32),
        )
    }

    /// `dgamma = sum dy xhat`, `dbeta = sum dy` per channel over the rows below the step's
    /// `valid`, `xhat = (x - mean) inv_std` from the forward's `stats`; writes both.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params(
        &self,
        gpu: &Gpu,
        s: &BnShape,
        x: &Tensor,
        dy: &Tensor,
        stats: &Tensor,
        dgamma: &Tensor,
        dbeta: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_len(x, s.len(), "x", s);
        assert_len(dy, s.len(), "dy", s);
        assert_len(stats, 2 * s.channels, "stats", s);
        assert_len(dgamma, s.channels, "dgamma", s);
        assert_len(dbeta, s.channels, "dbeta", s);
        self.backward_params_k.bind(
            gpu,
            &p,
            &[x, dy, stats, dgamma, dbeta],
            Some(step),
            grid_1d(s.channels as u32),
        )
    }

    /// `dx` from `dy`, the forward's `stats` and the sums `dgamma`, `dbeta` that `backward_params`
    /// wrote (record it first): with `train`, through the batch statistics, `gamma inv_std (dy -
    /// sum dy / m - xhat sum dy xhat / m)`; otherwise `gamma inv_std dy`. Writes every dx (0 on
    /// the rows at or past the step's `valid`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        s: &BnShape,
        train: bool,
        x: &Tensor,
        dy: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        dgamma: &Tensor,
        dbeta: &Tensor,
        dx: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = s.params(train);
        assert_len(x, s.len(), "x", s);
        assert_len(dy, s.len(), "dy", s);
        assert_len(stats, 2 * s.channels, "stats", s);
        assert_len(gamma, s.channels, "gamma", s);
        assert_len(dgamma, s.channels, "dgamma", s);
        assert_len(dbeta, s.channels, "dbeta", s);
        assert_len(dx, s.len(), "dx", s);
        self.backward_input_k.bind(
            gpu,
            &p,
            &[x, dy, stats, gamma, dgamma, dbeta, dx],
            Some(step),
            grid_1d(s.len().div_ceil(256) as u32),
        )
    }
}
