//! Training augmentation of CIFAR-10 (METHOD.md section 5), the usual order of torchvision's
//! `Pad(4)`/`RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize`:
//! the raw image is padded with zero bytes, cropped back to its size at a random offset, flipped
//! left-right with probability 1/2, and only then scaled and normalised (so a padded pixel is the
//! normalised value of a raw 0, `(0 - mean) / std`).
//!
//! The draws are made on the host, one per position in the epoch's order (`perm[i]` gets
//! draw `i`), from the stream `Rng::derive(seed, "augment epoch E")`: a function of (seed, epoch,
//! index within the epoch) only, so a resumed run sees exactly the crops of an uninterrupted one.
//! They travel to the GPU as one packed u32 per position (`pack`), read by
//! `data.wgsl`'s `gather_crop_flip`.

use crate::rng::Rng;

/// Zero padding on every side before the crop (CIFAR-10's usual 4).
pub const PAD: usize = 4;

/// One sample's crop and flip: the crop's top-left corner in the padded image (`dx` columns,
/// `dy` rows, each in `0..=2 * PAD`; `PAD, PAD` is the image itself) and a horizontal flip
/// applied after the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CropFlip {
    pub dx: u32,
    pub dy: u32,
    pub flip: bool,
}

impl CropFlip {
    /// The image unchanged.
    pub const IDENTITY: CropFlip = CropFlip {
        dx: PAD as u32,
        dy: PAD as u32,
        flip: false,
    };

    /// `dx | dy << 8 | flip << 16`, as `gather_crop_flip` unpacks it.
    pub fn pack(self) -> u32 {
        self.dx | (self.dy << 8) | ((self.flip as u32) << 16)
    }

    pub fn unpack(w: u32) -> CropFlip {
        CropFlip {
            dx: w & 0xff,
            dy: (w >> 8) & 0xff,
            flip: (w >> 16) & 1 == 1,
        }
    }
}

/// The crops and flips of epoch `epoch` (1-based, as the training loop counts) for the `n`
/// positions of its order: for each position the vertical offset, the horizontal offset (each
/// uniform on `0..=2 * PAD`) and the flip (probability 1/2), drawn in that order.
pub fn epoch_draws(seed: u64, epoch: usize, n: usize) -> Vec<CropFlip> {
    let mut rng = Rng::derive(seed, &format!("augment epoch {epoch}"));
    let span = 2 * PAD as u64 + 1;
    (0..n)
        .map(|_| {
            let dy = rng.below(span) as u32;
            let dx = rng.below(span) as u32;
            let flip = rng.below(2) == 1;
            CropFlip { dx, dy, flip }
        })
        .collect()
}

/// `epoch_draws` packed for the GPU.
pub fn epoch_words(seed: u64, epoch: usize, n: usize) -> Vec<u32> {
    epoch_draws(seed, epoch, n)
        .into_iter()
        .map(CropFlip::pack)
        .collect()
}
