//! `shaders/loss.wgsl`: softmax cross-entropy with its gradient and batch statistics.

use super::{Access, Dispatch, Kernel, KernelFactory, StepRing};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/loss.wgsl");

/// Keep in sync with `LossParams` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LossParams {
    pub rows: u32,
    pub classes: u32,
    pub write_grad: u32,
    pub _pad: u32,
}

/// Words of a loss stats buffer: [loss sum f32, penalty sum f32, correct u32, seen u32,
/// non-finite loss flag u32, non-finite parameter flag u32 (`optim::check_finite`), 2 spare].
pub const STATS_WORDS: usize = 8;

pub struct Loss {
    pub softmax_xent_k: Kernel,
}

impl Loss {
    pub fn new(f: &KernelFactory<'_>) -> Result<Loss> {
        Ok(Loss {
            softmax_xent_k: f.kernel(
                "softmax_xent",
                &[
                    (1, Access::Read),
                    (2, Access::Read),
                    (3, Access::ReadWrite),
                    (4, Access::ReadWrite),
                ],
                true,
            )?,
        })
    }

    /// Mean cross-entropy of `logits` (rows x classes) against `labels` over the step's valid
    /// rows; writes `d_logits` (same shape) when `write_grad`; accumulates into `stats`.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_xent(
        &self,
        gpu: &Gpu,
        logits: &Tensor,
        labels: &Tensor,
        d_logits: &Tensor,
        write_grad: bool,
        stats: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        assert_eq!(
            logits.shape.len(),
            2,
            "softmax_xent: logits must be rows x classes"
        );
        assert_eq!(
            labels.len(),
            logits.shape[0],
            "softmax_xent: one label per row"
        );
        assert_eq!(d_logits.len(), logits.len(), "softmax_xent: d_logits shape");
        assert!(stats.len() >= STATS_WORDS, "softmax_xent: stats buffer");
        let p = LossParams {
            rows: logits.shape[0] as u32,
            classes: logits.shape[1] as u32,
            write_grad: write_grad as u32,
            _pad: 0,
        };
        self.softmax_xent_k.bind(
            gpu,
            &p,
            &[logits, labels, d_logits, stats],
            Some(step),
            [1, 1, 1],
        )
    }
}
