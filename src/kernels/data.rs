//! `shaders/data.wgsl`: batch gather from a GPU-resident dataset, plain or with the training
//! augmentation (crop and flip).

use super::{Access, Dispatch, Kernel, KernelFactory, StepRing};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/data.wgsl");

/// Keep in sync with `GatherParams` in shaders/data.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub pixels: u32,
    pub plane: u32,
    pub width: u32,
    pub height: u32,
    pub pad: u32,
    pub split: u32,
    pub _pad: u32,
}

/// `lut[b] = b / 255` in f32, rounded exactly as `(b as f32) / 255.0` on the host (and in torch):
/// MNIST's table (`Dataset::lut` of a one-channel set without normalisation).
pub fn byte_lut() -> Vec<f32> {
    (0..256).map(|b| b as f32 / 255.0).collect()
}

/// A dataset's images on the GPU, as the gathers read them: bytes packed four per u32, samples
/// `[0, split)` in `lo` and the others in `hi` (each packed from its own first byte; `hi` is any
/// small buffer when everything fits in `lo`), each image `shape` = (channels, height, width),
/// channel-major.
#[derive(Clone, Copy)]
pub struct Images<'a> {
    pub lo: &'a Tensor,
    pub hi: &'a Tensor,
    pub split: usize,
    pub shape: [usize; 3],
}

pub struct Data {
    pub gather_k: Kernel,
    pub gather4_k: Kernel,
    pub gather_crop_flip_k: Kernel,
}

impl Data {
    pub fn new(f: &KernelFactory<'_>) -> Result<Data> {
        let plain = [
            (1, Access::Read),
            (2, Access::Read),
            (3, Access::Read),
            (4, Access::Read),
            (5, Access::Read),
            (7, Access::ReadWrite),
            (8, Access::ReadWrite),
        ];
        // The same plus the crop-and-flip draws (binding 6).
        let mut crop = plain.to_vec();
        crop.insert(5, (6, Access::Read));
        // x as vec4s (binding 9).
        let mut plain4 = plain;
        plain4[5] = (9, Access::ReadWrite);
        Ok(Data {
            gather_k: f.kernel("gather", &plain, true)?,
            gather4_k: f.kernel("gather4", &plain4, true)?,
            gather_crop_flip_k: f.kernel("gather_crop_flip", &crop, true)?,
        })
    }

    fn params(
        images: &Images<'_>,
        lut: &Tensor,
        x: &Tensor,
        y: &Tensor,
        pad: usize,
    ) -> GatherParams {
        let [c, h, w] = images.shape;
        assert_eq!(x.shape.len(), 2, "gather: x must be rows x pixels");
        assert_eq!(y.len(), x.shape[0], "gather: one label per row");
        assert_eq!(
            x.shape[1],
            c * h * w,
            "gather: x's rows are images of {:?}",
            images.shape
        );
        assert_eq!(lut.len(), c * 256, "gather: 256 table entries per channel");
        GatherParams {
            rows: x.shape[0] as u32,
            pixels: (c * h * w) as u32,
            plane: (h * w) as u32,
            width: w as u32,
            height: h as u32,
            pad: pad as u32,
            split: images.split as u32,
            _pad: 0,
        }
    }

    /// x[r] = lut[c * 256 + image[perm[start + r]]] (c the channel of each value), y[r] =
    /// labels[perm[start + r]] for r < valid; zero rows after. `labels` holds bytes packed four
    /// per u32; x is rows x pixels. Four values per invocation (`gather4`) where the image's
    /// planes are whole u32s and x is 16-byte aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &self,
        gpu: &Gpu,
        images: &Images<'_>,
        labels: &Tensor,
        perm: &Tensor,
        lut: &Tensor,
        x: &Tensor,
        y: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = Self::params(images, lut, x, y, 0);
        let bufs = [images.lo, images.hi, labels, perm, lut, x, y];
        if p.pixels.is_multiple_of(4) && p.plane.is_multiple_of(4) && x.offset.is_multiple_of(16) {
            let groups = [1, p.rows, 1];
            return self.gather4_k.bind(gpu, &p, &bufs, Some(step), groups);
        }
        self.gather_k.bind(
            gpu,
            &p,
            &bufs,
            Some(step),
            [p.pixels.div_ceil(64), p.rows, 1],
        )
    }

    /// `gather` of the augmented images: row r is sample perm[start + r] padded with zero bytes
    /// by `pad`, cropped at crops[start + r]'s (dx, dy) and flipped if its flip bit is set
    /// (`data::augment::CropFlip::pack`), then looked up in `lut`.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_crop_flip(
        &self,
        gpu: &Gpu,
        images: &Images<'_>,
        labels: &Tensor,
        perm: &Tensor,
        lut: &Tensor,
        crops: &Tensor,
        pad: usize,
        x: &Tensor,
        y: &Tensor,
        step: &StepRing,
    ) -> Result<Dispatch> {
        assert_eq!(
            crops.len(),
            perm.len(),
            "gather_crop_flip: one draw per position"
        );
        let p = Self::params(images, lut, x, y, pad);
        self.gather_crop_flip_k.bind(
            gpu,
            &p,
            &[images.lo, images.hi, labels, perm, lut, crops, x, y],
            Some(step),
            [p.pixels.div_ceil(64), p.rows, 1],
        )
    }
}
