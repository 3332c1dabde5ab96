//! The MNIST LeNets of the paper (METHOD.md section 5), with the layer names of the paper's code.

use crate::gpu::{Gpu, Result};
use crate::nn::conv::Conv2d;
use crate::nn::linear::Linear;
use crate::nn::pool::{Pool2d, PoolKind};
use crate::nn::{ArenaBuilder, Layer};

/// LeNet-300-100: FC 784-300-100-10 with ReLU (fused into fc1 and fc2).
pub fn lenet300(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    let dims = [(784, 300), (300, 100), (100, 10)];
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    for (i, &(fi, fo)) in dims.iter().enumerate() {
        let n = i + 1;
        let name = format!("fc{n}");
        let ids = Linear::declare(ab, &name, fi, fo, masked);
        let fc = Linear::new(gpu, &name, fi, fo, ids)?;
        layers.push(Box::new(if n < dims.len() { fc.with_relu() } else { fc }));
    }
    Ok(layers)
}

/// LeNet-5-Caffe: conv 5x5 1->20, ReLU, max-pool 2, conv 5x5 20->50, ReLU, max-pool 2,
/// FC 800-500, ReLU (fused into fc3), FC 500-10 (convs unpadded, stride 1, with bias). In DST
/// every conv and FC layer is masked. The order ReLU-then-pool is the paper's code's; each ReLU
/// is fused into its pool (`Pool2d::with_relu`: the same values).
pub fn lenet5(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let mut hw = 28;
    for (i, (cin, cout)) in [(1usize, 20usize), (20, 50)].into_iter().enumerate() {
        let n = i + 1;
        let name = format!("conv{n}");
        let ids = Conv2d::declare(ab, &name, cin, cout, 5, true, masked);
        layers.push(Box::new(Conv2d::new(gpu, &name, cin, cout, 5, 1, 0, ids)?));
        hw -= 4;
        // ReLU, then the pool: one layer.
        layers.push(Box::new(
            Pool2d::new(&format!("pool{n}"), PoolKind::Max, 2, 2, 0).with_relu(),
        ));
        hw /= 2;
    }
    debug_assert_eq!(50 * hw * hw, 800);
    let ids = Linear::declare(ab, "fc3", 800, 500, masked);
    layers.push(Box::new(
        Linear::new(gpu, "fc3", 800, 500, ids)?.with_relu(),
    ));
    let ids = Linear::declare(ab, "fc4", 500, 10, masked);
    layers.push(Box::new(Linear::new(gpu, "fc4", 500, 10, ids)?));
    Ok(layers)
}
