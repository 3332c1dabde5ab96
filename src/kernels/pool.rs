//! `shaders/pool.wgsl`: max and average pooling (NCHW) and their input gradients.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/pool.wgsl");

/// A pooling: input (batch, channels, h, w), square window `k`, `stride`, padding `pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolShape {
    /// `(h + 2 pad - k) / stride + 1` (floor mode, as PyTorch).
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// `(w + 2 pad - k) / stride + 1` (floor mode, as PyTorch).
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    fn params(&self) -> PoolParams {
        assert!(
            self.batch > 0 && self.channels > 0 && self.k > 0 && self.stride > 0,
            "pool {self:?}: empty dimension or stride 0"
        );
        // As PyTorch: padding at most half the window, so every window holds an input element.
        assert!(
            2 * self.pad <= self.k,
            "pool {self:?}: padding over half the window"
        );
        assert!(
            self.h + 2 * self.pad >= self.k && self.w + 2 * self.pad >= self.k,
            "pool {self:?}: window larger than the padded input"
        );
        PoolParams {
            batch: self.batch as u32,
            channels: self.channels as u32,
            h: self.h as u32,
            w: self.w as u32,
            k: self.k as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            oh: self.out_h() as u32,
            ow: self.out_w() as u32,
            relu: 0,
            _pad: [0; 2],
        }
    }

    fn max_params(&self, relu: bool) -> PoolParams {
        PoolParams {
            relu: relu as u32,
            ..self.params()
        }
    }

    fn inputs(&self) -> usize {
        self.batch * self.channels * self.h * self.w
    }

    fn outputs(&self) -> usize {
        self.batch * self.channels * self.out_h() * self.out_w()
    }
}

/// Keep in sync with `PoolParams` in shaders/pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PoolParams {
    pub batch: u32,
    pub channels: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    /// Max pooling of relu(x) (shaders/pool.wgsl).
    pub relu: u32,
    pub _pad: [u32; 2],
}

pub struct Pool {
    pub max_forward_k: Kernel,
    pub max_backward_k: Kernel,
    pub max_backward_windows_k: Kernel,
    pub avg_forward_k: Kernel,
    pub avg_backward_k: Kernel,
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

fn assert_len(t: &Tensor, n: usize, what: &str, s: &PoolShape) {
    assert_eq!(
        t.len(),
        n,
        "pool {what} ({}): {} elements for {s:?}",
        t.label,
        t.len()
    );
}

fn groups(n: usize) -> [u32; 3] {
    grid_1d(n.div_ceil(64) as u32)
}

impl Pool {
    pub fn new(f: &KernelFactory<'_>) -> Result<Pool> {
        Ok(Pool {
            max_forward_k: f.kernel("max_forward", &[(1, R), (2, RW)], false)?,
            max_backward_k: f.kernel("max_backward", &[(1, R), (3, R), (4, RW)], false)?,
            max_backward_windows_k: f.kernel(
                "max_backward_windows",
                &[(1, R), (3, R), (4, RW)],
                false,
            )?,
            avg_forward_k: f.kernel("avg_forward", &[(1, R), (2, RW)], false)?,
            avg_backward_k: f.kernel("avg_backward", &[(3, R), (4, RW)], false)?,
        })
    }

    /// `y` = max over each window (padding counts as -inf); writes every y. With `relu`, of
    /// relu(x): `max(window max, 0)`, a ReLU before the pooling fused into it.
    pub fn max_forward(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        relu: bool,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.max_params(relu);
        assert_len(x, s.inputs(), "x", s);
        assert_len(y, s.outputs(), "y", s);
        self.max_forward_k
            .bind(gpu, &p, &[x, y], None, groups(s.outputs()))
    }

    /// `dx` given x and dy: each window's gradient goes to its FIRST maximum in scan order
    /// (row-major within the window), as PyTorch; overlapping windows sum; writes every dx.
    /// Windows that tile the input (stride == k, no padding) take `max_backward_windows`, one
    /// invocation per window; others the per-element gather (`max_backward_gather`). With `relu`
    /// (the forward's), the gradient with respect to the ReLU's input: 0 where x <= 0.
    pub fn max_backward(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        relu: bool,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let tiled = s.stride == s.k && s.pad == 0;
        self.max_backward_with(gpu, s, relu, tiled, x, dy, dx)
    }

    /// `max_backward` by the per-element gather, for any windows: each dx element sums dy over
    /// the windows holding it whose first maximum it is.
    pub fn max_backward_gather(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        relu: bool,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        self.max_backward_with(gpu, s, relu, false, x, dy, dx)
    }

    /// `max_backward` per window (`windows`: only where they tile the input) or per element.
    #[allow(clippy::too_many_arguments)]
    fn max_backward_with(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        relu: bool,
        windows: bool,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.max_params(relu);
        assert_len(x, s.inputs(), "x", s);
        assert_len(dy, s.outputs(), "dy", s);
        assert_len(dx, s.inputs(), "dx", s);
        let (kernel, n) = if windows {
            (&self.max_backward_windows_k, s.outputs())
        } else {
            (&self.max_backward_k, s.inputs())
        };
        kernel.bind(gpu, &p, &[x, dy, dx], None, groups(n))
    }

    /// `y` = window sum / (k k) (count_include_pad); writes every y.
    pub fn avg_forward(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params();
        assert_len(x, s.inputs(), "x", s);
        assert_len(y, s.outputs(), "y", s);
        self.avg_forward_k
            .bind(gpu, &p, &[x, y], None, groups(s.outputs()))
    }

    /// `dx` = sum over the windows holding each element of dy / (k k); writes every dx.
    pub fn avg_backward(
        &self,
        gpu: &Gpu,
        s: &PoolShape,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params();
        assert_len(dy, s.outputs(), "dy", s);
        assert_len(dx, s.inputs(), "dx", s);
        self.avg_backward_k
            .bind(gpu, &p, &[dy, dx], None, groups(s.inputs()))
    }
}
