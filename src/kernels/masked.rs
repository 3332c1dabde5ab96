//! `shaders/masked.wgsl`: the DST masked layer (mask, reset, backward, penalty).

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/masked.wgsl");

/// Keep in sync with `MaskParams` in shaders/masked.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MaskParams {
    pub rows: u32,
    pub cols: u32,
    pub alpha: f32,
    /// `mask_reset`: the rows form this many stacked matrices, each reset on its own.
    pub groups: u32,
}

pub struct Masked {
    /// Use `mask_forward_rowwise` (CPU adapters) in `mask_forward`.
    pub rowwise: bool,
    pub mask_forward_k: Kernel,
    pub mask_forward_rowwise_k: Kernel,
    pub mask_reset_k: Kernel,
    pub mask_backward_k: Kernel,
    pub penalty_k: Kernel,
}

const RW: Access = Access::ReadWrite;

fn rows_cols(w: &Tensor, t: &Tensor) -> MaskParams {
    assert_eq!(
        w.shape.len(),
        2,
        "{}: masked weight must be viewed as rows x cols",
        w.label
    );
    assert_eq!(t.len(), w.shape[0], "{}: one threshold per row", t.label);
    MaskParams {
        rows: w.shape[0] as u32,
        cols: w.shape[1] as u32,
        alpha: 0.0,
        groups: 1,
    }
}

impl Masked {
    pub fn new(f: &KernelFactory<'_>, rowwise: bool) -> Result<Masked> {
        Ok(Masked {
            rowwise,
            mask_forward_rowwise_k: f.kernel(
                "mask_forward_rowwise",
                &[(1, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_forward_k: f.kernel(
                "mask_forward",
                &[(1, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_reset_k: f.kernel(
                "mask_reset",
                &[(1, RW), (2, RW), (3, RW), (4, RW), (5, RW)],
                false,
            )?,
            mask_backward_k: f.kernel(
                "mask_backward",
                &[(1, RW), (2, RW), (6, RW), (7, RW), (8, RW)],
                false,
            )?,
            penalty_k: f.kernel("penalty", &[(2, RW), (9, RW)], false)?,
        })
    }

    /// `masked_weight = W * S(|W| - t)`, `row_keep[i]` = kept count of row i.
    pub fn mask_forward(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_forward_with(
            self.rowwise,
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
        )
    }

    /// `mask_forward` on an explicit variant (`rowwise`: one invocation per row).
    pub fn mask_forward_with(
        &self,
        rowwise: bool,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
    ) -> Result<Dispatch> {
        let p = rows_cols(weight, threshold);
        let buffers = [weight, threshold, masked_weight, row_keep];
        if rowwise {
            self.mask_forward_rowwise_k
                .bind(gpu, &p, &buffers, None, grid_1d(p.rows.div_ceil(64)))
        } else {
            self.mask_forward_k
                .bind(gpu, &p, &buffers, None, grid_1d(p.rows))
        }
    }

    /// Dead-layer reset after `mask_forward`; `layer_keep` = [count before, count after, resets,
    /// spare].
    pub fn mask_reset(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        layer_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_reset_groups(
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
            layer_keep,
            1,
        )
    }

    /// `mask_reset` for a weight whose rows stack `groups` matrices of equal height (an LSTM's
    /// four gates), each reset on its own; `layer_keep` holds 4 counters per matrix.
    #[allow(clippy::too_many_arguments)]
    pub fn mask_reset_groups(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        layer_keep: &Tensor,
        groups: usize,
    ) -> Result<Dispatch> {
        let mut p = rows_cols(weight, threshold);
        assert!(
            groups >= 1 && weight.shape[0] % groups == 0,
            "{}: {} rows do not split into {groups} matrices",
            weight.label,
            weight.shape[0]
        );
        assert!(layer_keep.len() >= 4 * groups, "mask_reset: layer_keep");
        p.groups = groups as u32;
        self.mask_reset_k.bind(
            gpu,
            &p,
            &[weight, threshold, masked_weight, row_keep, layer_keep],
            None,
            [groups as u32, 1, 1],
        )
    }

    /// `d_weight`, `d_threshold` from `d_masked` = dL/dP (penalty gradient included).
    #[allow(clippy::too_many_arguments)]
    pub fn mask_backward(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        d_masked: &Tensor,
        d_weight: &Tensor,
        d_threshold: &Tensor,
        alpha: f32,
    ) -> Result<Dispatch> {
        let mut p = rows_cols(weight, threshold);
        p.alpha = alpha;
        self.mask_backward_k.bind(
            gpu,
            &p,
            &[weight, threshold, d_masked, d_weight, d_threshold],
            None,
            grid_1d(p.rows.div_ceil(8)),
        )
    }

    /// `stats[1] += alpha * sum exp(-t)`.
    pub fn penalty(
        &self,
        gpu: &Gpu,
        threshold: &Tensor,
        stats: &Tensor,
        alpha: f32,
    ) -> Result<Dispatch> {
        let p = MaskParams {
            rows: threshold.len() as u32,
            cols: 1,
            alpha,
            groups: 1,
        };
        self.penalty_k
            .bind(gpu, &p, &[threshold, stats], None, [1, 1, 1])
    }
}
