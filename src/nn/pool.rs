//! 2-D max and average pooling (shaders/pool.wgsl), NCHW, floor mode as PyTorch. Max-pool's
//! backward sends a tie's gradient to the first maximum in scan order; average pooling counts
//! padding in its divisor (PyTorch's `count_include_pad=True`). A max pool may take the ReLU
//! before it (`with_relu`): the same values as a ReLU layer then the pool, one pass each way
//! instead of two, and no ReLU output to store.

use super::{Layer, PlanCx};
use crate::gpu::{Result, Tensor};
use crate::kernels::pool::PoolShape;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

pub struct Pool2d {
    name: String,
    pub kind: PoolKind,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Pools relu(x) (max pooling only).
    pub relu: bool,
}

impl Pool2d {
    pub fn new(name: &str, kind: PoolKind, k: usize, stride: usize, pad: usize) -> Pool2d {
        Pool2d {
            name: name.to_string(),
            kind,
            k,
            stride,
            pad,
            relu: false,
        }
    }

    /// This max pool applied to relu(x): a ReLU layer before it, fused.
    pub fn with_relu(mut self) -> Pool2d {
        assert_eq!(
            self.kind,
            PoolKind::Max,
            "{}: ReLU fused into max pooling only",
            self.name
        );
        self.relu = true;
        self
    }

    fn shape(&self, batch: usize, per_sample: &[usize]) -> PoolShape {
        assert_eq!(
            per_sample.len(),
            3,
            "{}: input {per_sample:?} is not CHW",
            self.name
        );
        PoolShape {
            batch,
            channels: per_sample[0],
            h: per_sample[1],
            w: per_sample[2],
            k: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

impl Layer for Pool2d {
    fn note(&self) -> Option<&'static str> {
        self.relu.then_some("ReLU fused in: max-pool of relu(x)")
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        let s = self.shape(1, input);
        vec![s.channels, s.out_h(), s.out_w()]
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let s = self.shape(x.shape[0], &x.shape[1..]);
        let y = cx.activation(
            &format!("{}.y", self.name),
            &[s.batch, s.channels, s.out_h(), s.out_w()],
        )?;
        let d = match self.kind {
            PoolKind::Max => cx.kernels.pool.max_forward(cx.gpu, &s, self.relu, x, &y)?,
            PoolKind::Avg => cx.kernels.pool.avg_forward(cx.gpu, &s, x, &y)?,
        };
        cx.push(d);
        Ok(y)
    }

    fn backward(
        &self,
        cx: &mut PlanCx<'_>,
        x: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        if !need_dx {
            return Ok(None);
        }
        let s = self.shape(x.shape[0], &x.shape[1..]);
        let dx = cx.activation(&format!("{}.d_input", self.name), &x.shape)?;
        let d = match self.kind {
            PoolKind::Max => cx
                .kernels
                .pool
                .max_backward(cx.gpu, &s, self.relu, x, dy, &dx)?,
            PoolKind::Avg => cx.kernels.pool.avg_backward(cx.gpu, &s, dy, &dx)?,
        };
        cx.push(d);
        Ok(Some(dx))
    }
}
