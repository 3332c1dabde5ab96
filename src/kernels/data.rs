//! `shaders/data.wgsl`: batch gather from a GPU-resident dataset.

use super::{Access, Dispatch, Kernel, KernelFactory, StepRing};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/data.wgsl");

/// Keep in sync with `GatherParams` in shaders/data.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub pixels: u32,
    pub _pad: [u32; 2],
}

/// `lut[b] = b / 255` in f32, rounded exactly as `(b as f32) / 255.0` on the host (and in torch).
pub fn byte_lut() -> Vec<f32> {
    (0..256).map(|b| b as f32 / 255.0).collect()
}

pub struct Data {
    pub gather_k: Kernel,
}

impl Data {
    pub fn new(f: &KernelFactory<'_>) -> Result<Data> {
        Ok(Data {
            gather_k: f.kernel(
                "gather",
                &[
                    (1, Access::Read),
                    (2, Access::Read),
                    (3, Access::Read),
                    (4, Access::Read),
                    (5, Access::ReadWrite),
                    (6, Access::ReadWrite),
                ],
                true,
            )?,
        })
    }

    /// x[r] = lut[images[perm[start + r]]], y[r] = labels[perm[start + r]] for r < valid; zero rows
    /// after. `images`/`labels` hold bytes packed four per u32; x is rows x pixels.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &self,
        gpu: &Gpu,
        images: &Tensor,
        labels: &Tensor,
        perm: &Tensor,
        lut: &Tensor,
        x: &Tensor,
        y: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        assert_eq!(x.shape.len(), 2, "gather: x must be rows x pixels");
        assert_eq!(y.len(), x.shape[0], "gather: one label per row");
        let p = GatherParams {
            rows: x.shape[0] as u32,
            pixels: x.shape[1] as u32,
            _pad: [0; 2],
        };
        self.gather_k.bind(
            gpu,
            &p,
            &[images, labels, perm, lut, x, y],
            Some(step),
            [p.pixels.div_ceil(64), p.rows, 1],
        )
    }
}
