//! `shaders/act.wgsl`: element-wise activations and the element-wise sum.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/act.wgsl");

/// Keep in sync with `ActParams` in shaders/act.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActParams {
    pub n: u32,
    pub _pad: [u32; 3],
}

pub struct Act {
    pub relu_forward_k: Kernel,
    pub relu_backward_k: Kernel,
    pub add_k: Kernel,
}

impl Act {
    pub fn new(f: &KernelFactory<'_>) -> Result<Act> {
        Ok(Act {
            relu_forward_k: f.kernel(
                "relu_forward",
                &[(1, Access::Read), (3, Access::ReadWrite)],
                false,
            )?,
            relu_backward_k: f.kernel(
                "relu_backward",
                &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)],
                false,
            )?,
            add_k: f.kernel(
                "add",
                &[(1, Access::Read), (2, Access::Read), (3, Access::ReadWrite)],
                false,
            )?,
        })
    }

    /// `y = max(x, 0)`.
    pub fn relu_forward(&self, gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
        assert_eq!(x.len(), y.len(), "relu_forward: sizes");
        let p = ActParams {
            n: x.len() as u32,
            _pad: [0; 3],
        };
        self.relu_forward_k
            .bind(gpu, &p, &[x, y], None, grid_1d(p.n.div_ceil(256)))
    }

    /// `dx = dy * (y > 0)`.
    pub fn relu_backward(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        y: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            dy.len() == y.len() && y.len() == dx.len(),
            "relu_backward: sizes"
        );
        let p = ActParams {
            n: dy.len() as u32,
            _pad: [0; 3],
        };
        self.relu_backward_k
            .bind(gpu, &p, &[dy, y, dx], None, grid_1d(p.n.div_ceil(256)))
    }

    /// `out = a + b`, element-wise.
    pub fn add(&self, gpu: &Gpu, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<Dispatch> {
        assert!(
            a.len() == b.len() && b.len() == out.len(),
            "add: sizes {:?} {:?} {:?}",
            a.shape,
            b.shape,
            out.shape
        );
        let p = ActParams {
            n: a.len() as u32,
            _pad: [0; 3],
        };
        self.add_k
            .bind(gpu, &p, &[a, b, out], None, grid_1d(p.n.div_ceil(256)))
    }
}
