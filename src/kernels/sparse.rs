//! `shaders/sparse.wgsl`: a fully connected layer from its CSR weight, for any batch size, with
//! strided (batch-major or feature-major) input and output.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/sparse.wgsl");

/// Samples per invocation (`QUAD` in shaders/sparse.wgsl).
pub const QUAD: usize = 4;

/// vec4s per invocation of `csr_linear_fm` (`VQ` in shaders/sparse.wgsl).
pub const VQ: usize = 4;

/// Keep in sync with `SparseParams` in shaders/sparse.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SparseParams {
    pub rows: u32,
    pub cols: u32,
    pub batch: u32,
    pub quads: u32,
    pub x_bs: u32,
    pub x_fs: u32,
    pub y_bs: u32,
    pub y_fs: u32,
    pub relu: u32,
    pub has_bias: u32,
    pub _pad: [u32; 2],
}

/// How a batch of vectors lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Major {
    /// `(batch, features)`, row-major: sample after sample.
    Batch,
    /// `(features, batch)`: feature after feature (what the chain of sparse layers passes on).
    Feature,
}

impl Major {
    /// (batch stride, feature stride) of a `batch x features` block.
    pub fn strides(self, batch: usize, features: usize) -> (u32, u32) {
        match self {
            Major::Batch => (features as u32, 1),
            Major::Feature => (1, batch as u32),
        }
    }
}

/// One CSR layer on the GPU: `crow` (rows + 1), `col` and `val` (nnz each, at least 1 element
/// so an all-zero layer still binds), the dense shape.
pub struct CsrTensors {
    pub rows: usize,
    pub cols: usize,
    pub crow: Tensor,
    pub col: Tensor,
    pub val: Tensor,
}

pub struct Sparse {
    pub csr_linear_k: Kernel,
    pub to_feature_major_k: Kernel,
    pub csr_linear_fm_k: Kernel,
}

const R: Access = Access::Read;

impl Sparse {
    pub fn new(f: &KernelFactory<'_>) -> Result<Sparse> {
        Ok(Sparse {
            csr_linear_k: f.kernel(
                "csr_linear",
                &[
                    (1, R),
                    (2, R),
                    (3, R),
                    (4, R),
                    (5, R),
                    (6, Access::ReadWrite),
                ],
                false,
            )?,
            csr_linear_fm_k: f.kernel(
                "csr_linear_fm",
                &[
                    (1, R),
                    (2, R),
                    (3, R),
                    (7, R),
                    (5, R),
                    (8, Access::ReadWrite),
                ],
                false,
            )?,
            to_feature_major_k: f.kernel(
                "to_feature_major",
                &[(4, R), (6, Access::ReadWrite)],
                false,
            )?,
        })
    }

    /// `csr_linear` from and to feature-major blocks for a batch that is a multiple of 4 (the vec4
    /// fast path); `x` and `y` must start 16-byte aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn csr_linear_fm(
        &self,
        gpu: &Gpu,
        w: &CsrTensors,
        batch: usize,
        x: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            batch > 0 && batch.is_multiple_of(4) && w.rows > 0,
            "csr_linear_fm: batch {batch}"
        );
        assert_eq!(w.crow.len(), w.rows + 1, "csr_linear_fm: crow length");
        assert!(
            x.len() >= batch * w.cols && y.len() >= batch * w.rows,
            "csr_linear_fm: sizes"
        );
        assert!(
            x.offset.is_multiple_of(16) && y.offset.is_multiple_of(16),
            "csr_linear_fm: alignment"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), w.rows, "csr_linear_fm: bias length");
        }
        let quads = batch.div_ceil(4 * VQ);
        let p = SparseParams {
            rows: w.rows as u32,
            cols: w.cols as u32,
            batch: batch as u32,
            quads: quads as u32,
            relu: relu as u32,
            has_bias: bias.is_some() as u32,
            ..Default::default()
        };
        let groups = grid_1d((w.rows * quads).div_ceil(64) as u32);
        self.csr_linear_fm_k.bind(
            gpu,
            &p,
            &[&w.crow, &w.col, &w.val, x, bias.unwrap_or(dummy), y],
            None,
            groups,
        )
    }

    /// `y (cols x batch) = x (batch x cols)` transposed: a batch-major block made feature-major.
    pub fn to_feature_major(
        &self,
        gpu: &Gpu,
        batch: usize,
        cols: usize,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            x.len() >= batch * cols && y.len() >= batch * cols,
            "to_feature_major: sizes"
        );
        let p = SparseParams {
            cols: cols as u32,
            batch: batch as u32,
            ..Default::default()
        };
        self.to_feature_major_k.bind(
            gpu,
            &p,
            &[x, y],
            None,
            grid_1d((batch * cols).div_ceil(64) as u32),
        )
    }

    /// `y = act(x W^T + b)` for `batch` samples, W given as CSR (the caller has validated it:
    /// the shader trusts crow and col). `x` holds `batch x w.cols` values laid out per `x_major`,
    /// `y` gets `batch x w.rows` per `y_major`; writes every y.
    #[allow(clippy::too_many_arguments)]
    pub fn csr_linear(
        &self,
        gpu: &Gpu,
        w: &CsrTensors,
        batch: usize,
        x: &Tensor,
        x_major: Major,
        bias: Option<&Tensor>,
        y: &Tensor,
        y_major: Major,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            batch > 0 && w.rows > 0,
            "csr_linear: empty batch or no rows"
        );
        assert_eq!(w.crow.len(), w.rows + 1, "csr_linear: crow length");
        assert!(x.len() >= batch * w.cols, "csr_linear: x too small");
        assert!(y.len() >= batch * w.rows, "csr_linear: y too small");
        if let Some(b) = bias {
            assert_eq!(b.len(), w.rows, "csr_linear: bias length");
        }
        let quads = batch.div_ceil(QUAD);
        let (x_bs, x_fs) = x_major.strides(batch, w.cols);
        let (y_bs, y_fs) = y_major.strides(batch, w.rows);
        let p = SparseParams {
            rows: w.rows as u32,
            cols: w.cols as u32,
            batch: batch as u32,
            quads: quads as u32,
            x_bs,
            x_fs,
            y_bs,
            y_fs,
            relu: relu as u32,
            has_bias: bias.is_some() as u32,
            _pad: [0; 2],
        };
        let groups = grid_1d((w.rows * quads).div_ceil(64) as u32);
        self.csr_linear_k.bind(
            gpu,
            &p,
            &[&w.crow, &w.col, &w.val, x, bias.unwrap_or(dummy), y],
            None,
            groups,
        )
    }
}
