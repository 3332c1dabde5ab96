//! The CIFAR-10 models of the paper (METHOD.md section 5): VGG-16 with batch norm, and the
//! pre-activation wide ResNet WRN-16-k. Convolutions have no bias; in DST every convolution
//! (shortcuts included) and every FC layer is masked. Batch norm is never masked.

use crate::gpu::{Gpu, Result};
use crate::nn::batchnorm::BatchNorm;
use crate::nn::conv::Conv2d;
use crate::nn::linear::Linear;
use crate::nn::pool::{Pool2d, PoolKind};
use crate::nn::relu::Relu;
use crate::nn::residual::PreActBlock;
use crate::nn::{ArenaBuilder, Layer};

/// VGG-16's convolution widths; `None` is a 2x2 max-pool (after convs 2, 4, 7 and 10).
pub(crate) const VGG16: [Option<usize>; 17] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
];

/// The paper's VGG-16 gamma initialisation (METHOD.md section 5).
const VGG_BN_SCALE: f64 = 0.5;

/// VGG-16 for 3x32x32 inputs: 13 x (conv 3x3 pad 1, batch norm, ReLU) with max-pools after convs
/// 2, 4, 7 and 10 (each with the ReLU before it fused), average pool 2x2, FC 512-512, batch
/// norm 1d, ReLU, FC 512-10. Names: conv1..13, bn1..13, fc1, bn14, fc2.
pub fn vgg16(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let (mut c_in, mut n, mut pools) = (3, 0, 0);
    for (at, item) in VGG16.into_iter().enumerate() {
        // A ReLU right before a max pool is fused into it (`Pool2d::with_relu`: the same values).
        let pool_next = matches!(VGG16.get(at + 1), Some(None));
        match item {
            Some(c_out) => {
                n += 1;
                let name = format!("conv{n}");
                let ids = Conv2d::declare(ab, &name, c_in, c_out, 3, false, masked);
                layers.push(Box::new(Conv2d::new(
                    gpu, &name, c_in, c_out, 3, 1, 1, ids,
                )?));
                let bn = format!("bn{n}");
                let ids = BatchNorm::declare_scaled(ab, &bn, c_out, VGG_BN_SCALE);
                layers.push(Box::new(BatchNorm::new(&bn, c_out, ids)));
                if !pool_next {
                    layers.push(Box::new(Relu::new(&format!("relu{n}"))));
                }
                c_in = c_out;
            }
            None => {
                pools += 1;
                let name = format!("pool{pools}");
                let pool = Pool2d::new(&name, PoolKind::Max, 2, 2, 0);
                let after_conv = at > 0 && VGG16[at - 1].is_some();
                layers.push(Box::new(if after_conv { pool.with_relu() } else { pool }));
            }
        }
    }
    // 32 / 2^4 = 2: the average pool leaves 512 x 1 x 1.
    layers.push(Box::new(Pool2d::new("avgpool", PoolKind::Avg, 2, 2, 0)));
    let ids = Linear::declare(ab, "fc1", 512, 512, masked);
    layers.push(Box::new(Linear::new(gpu, "fc1", 512, 512, ids)?));
    let ids = BatchNorm::declare_scaled(ab, "bn14", 512, VGG_BN_SCALE);
    layers.push(Box::new(BatchNorm::new("bn14", 512, ids)));
    layers.push(Box::new(Relu::new("relu14")));
    let ids = Linear::declare(ab, "fc2", 512, 10, masked);
    layers.push(Box::new(Linear::new(gpu, "fc2", 512, 10, ids)?));
    Ok(layers)
}

/// WRN-16-`k` for 3x32x32 inputs: conv 3x3 3-16, three groups of two pre-activation blocks of
/// width 16k, 32k, 64k with strides 1, 2, 2 (the first block of a group has a 1x1 shortcut
/// convolution where the width or the size changes), batch norm, ReLU, average pool 8x8, FC
/// 64k-10. Names: conv1, block{g}_{b} (g, b from 1), bn, fc.
fn wrn16(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool, k: usize) -> Result<Vec<Box<dyn Layer>>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let ids = Conv2d::declare(ab, "conv1", 3, 16, 3, false, masked);
    layers.push(Box::new(Conv2d::new(gpu, "conv1", 3, 16, 3, 1, 1, ids)?));
    let mut c_in = 16;
    for (g, (width, stride)) in wrn_groups(k).into_iter().enumerate() {
        for b in 0..2 {
            let name = format!("block{}_{}", g + 1, b + 1);
            let s = if b == 0 { stride } else { 1 };
            layers.push(Box::new(PreActBlock::new(
                gpu, ab, &name, c_in, width, s, masked,
            )?));
            c_in = width;
        }
    }
    let ids = BatchNorm::declare(ab, "bn", c_in);
    layers.push(Box::new(BatchNorm::new("bn", c_in, ids)));
    layers.push(Box::new(Relu::new("relu")));
    layers.push(Box::new(Pool2d::new("avgpool", PoolKind::Avg, 8, 8, 0)));
    let ids = Linear::declare(ab, "fc", c_in, 10, masked);
    layers.push(Box::new(Linear::new(gpu, "fc", c_in, 10, ids)?));
    Ok(layers)
}

/// WRN-16-`k`'s three groups: (width, stride of the group's first block).
pub(crate) fn wrn_groups(k: usize) -> [(usize, usize); 3] {
    [(16 * k, 1), (32 * k, 2), (64 * k, 2)]
}

/// WRN-16-8, the paper's (widths 128, 256, 512; 11M parameters).
pub fn wrn16_8(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    wrn16(gpu, ab, masked, 8)
}

/// WRN-16-1 (widths 16, 32, 64; 0.18M parameters): the same network narrow enough for quick
/// runs on small adapters and CPU ones.
pub fn wrn16_1(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    wrn16(gpu, ab, masked, 1)
}
