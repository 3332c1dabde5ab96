//! Twin of shaders/data.wgsl: a batch from images as torchvision builds it. The augmentation is
//! written in torchvision's own steps (`Pad` materialises the zero-padded image, `RandomCrop`
//! cuts the crop out of it, `RandomHorizontalFlip` reverses its rows, then `ToTensor` and
//! `Normalize`), independent of the shader's single index computation. Values are computed in
//! f32 exactly as torch does (`x / 255`, then `(v - mean) / std`), so the GPU must match bit for
//! bit.

use crate::data::augment::CropFlip;

/// One byte as torch turns it into an input: `b / 255` in f32, then per-channel normalisation
/// when `mean`/`std` are given.
pub fn value(b: u8, norm: Option<(f32, f32)>) -> f32 {
    let v = b as f32 / 255.0;
    match norm {
        None => v,
        Some((mean, std)) => (v - mean) / std,
    }
}

/// An image's geometry and normalisation.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per-channel (mean, std); empty: no normalisation.
    pub norm: Vec<(f32, f32)>,
}

impl ImageSpec {
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn norm(&self, c: usize) -> Option<(f32, f32)> {
        self.norm.get(c).copied()
    }
}

/// One CHW image (bytes) as input values, no augmentation.
pub fn plain(image: &[u8], s: &ImageSpec) -> Vec<f32> {
    let plane = s.height * s.width;
    image
        .iter()
        .enumerate()
        .map(|(i, &b)| value(b, s.norm(i / plane)))
        .collect()
}

/// One CHW image padded by `pad` zero bytes on every side, cropped back to height x width with
/// its top-left corner at (row `d.dy`, column `d.dx`) of the padded image, flipped left-right if
/// `d.flip`, as input values.
pub fn crop_flip(image: &[u8], s: &ImageSpec, pad: usize, d: CropFlip) -> Vec<f32> {
    let (h, w) = (s.height, s.width);
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let mut out = Vec::with_capacity(s.pixels());
    for c in 0..s.channels {
        // Pad.
        let mut padded = vec![0u8; ph * pw];
        for y in 0..h {
            for x in 0..w {
                padded[(y + pad) * pw + x + pad] = image[c * h * w + y * w + x];
            }
        }
        // Crop.
        let mut crop: Vec<Vec<u8>> = (0..h)
            .map(|y| {
                let row = (y + d.dy as usize) * pw + d.dx as usize;
                padded[row..row + w].to_vec()
            })
            .collect();
        // Flip.
        if d.flip {
            for row in &mut crop {
                row.reverse();
            }
        }
        // ToTensor, Normalize.
        out.extend(crop.iter().flatten().map(|&b| value(b, s.norm(c))));
    }
    out
}

/// The batch `gather` (crops None) or `gather_crop_flip` (crops Some, one draw per position)
/// writes: rows r < valid hold sample perm[start + r], rows after are zero with label 0.
#[allow(clippy::too_many_arguments)]
pub fn gather(
    images: &[u8],
    labels: &[u8],
    perm: &[u32],
    s: &ImageSpec,
    crops: Option<(&[CropFlip], usize)>,
    rows: usize,
    start: usize,
    valid: usize,
) -> (Vec<f32>, Vec<u32>) {
    let px = s.pixels();
    let mut x = vec![0.0f32; rows * px];
    let mut y = vec![0u32; rows];
    for r in 0..valid.min(rows) {
        let sample = perm[start + r] as usize;
        let image = &images[sample * px..(sample + 1) * px];
        let v = match crops {
            None => plain(image, s),
            Some((draws, pad)) => crop_flip(image, s, pad, draws[start + r]),
        };
        x[r * px..(r + 1) * px].copy_from_slice(&v);
        y[r] = labels[sample] as u32;
    }
    (x, y)
}
