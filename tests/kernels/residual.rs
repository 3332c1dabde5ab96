//! The pre-activation residual block (`nn::residual`, a composite layer): against PyTorch's values
//! in tests/golden/golden_conv.json (a block with a masked 1x1 strided shortcut, batch norm in
//! training mode) and, for the identity shortcut, against finite differences of its own forward.

use dst::gpu::Tensor;
use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, Dispatch, StepInfo};
use dst::nn::residual::PreActBlock;
use dst::nn::{Arena, ArenaBuilder, Layer, Mode, PlanCx};
use dst::rng::Rng;
use serde_json::Value;

use crate::common::*;
use crate::masked::flat;

fn f32s(v: &Value) -> Vec<f32> {
    flat(v).iter().map(|&x| x as f32).collect()
}

struct Block {
    arena: Arena,
    block: PreActBlock,
}

fn block(c: &Ctx, c_in: usize, c_out: usize, stride: usize) -> Block {
    let mut ab = ArenaBuilder::default();
    let block = PreActBlock::new(&c.gpu, &mut ab, "blk", c_in, c_out, stride, true).unwrap();
    let layout = ab.layout(c.gpu.limits.min_storage_buffer_offset_alignment as u64);
    let initial = layout.init(1);
    let arena = Arena::new(&c.gpu, layout, &initial, false).unwrap();
    Block { arena, block }
}

impl Block {
    fn put(&self, c: &Ctx, name: &str, v: &[f32]) {
        let e = self
            .arena
            .layout
            .find(name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(e.len(), v.len(), "{name}");
        let mut all = c.read(&self.arena.params);
        all[e.offset..e.offset + e.len()].copy_from_slice(v);
        c.gpu.write(&self.arena.params, &all);
    }

    fn grad(&self, c: &Ctx, name: &str) -> Vec<f32> {
        let e = self.arena.layout.find(name).unwrap();
        c.read(&self.arena.grads)[e.offset..e.offset + e.len()].to_vec()
    }

    /// Forward, penalty and (train) backward with dx; (dispatches, y, dx).
    fn plan(
        &self,
        c: &Ctx,
        x: &Tensor,
        dy: &Tensor,
        alpha: f32,
        backward: bool,
    ) -> (Vec<Dispatch>, Tensor, Option<Tensor>) {
        let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
        let mut cx = PlanCx::new(
            &c.gpu,
            &c.k,
            &self.arena,
            &c.step,
            Mode::Train,
            alpha,
            stats,
        );
        let y = self.block.forward(&mut cx, x).unwrap();
        self.block.penalty(&mut cx).unwrap();
        let dx = if backward {
            self.block.backward(&mut cx, x, &y, dy, true).unwrap()
        } else {
            None
        };
        (cx.dispatches, y, dx)
    }
}

/// PyTorch's pre-activation block: bn1-relu-masked conv3x3/2-bn2-relu-masked conv3x3 plus a
/// masked 1x1/2 shortcut of the pre-activated input; y, dx and every gradient (thresholds with
/// the penalty) within 1e-4 of the float64 values.
#[test]
fn residual_block_matches_golden() {
    let c = ctx();
    let g: Value = serde_json::from_str(include_str!("../golden/golden_conv.json")).unwrap();
    let rb = &g["residual_block"];
    let alpha = rb["alpha"].as_f64().unwrap() as f32;
    let b = block(&c, 3, 4, 2);
    assert_eq!(
        b.block.mask_views().len(),
        3,
        "conv1, conv2 and the shortcut are masked"
    );
    let p = &rb["params"];
    for conv in ["conv1", "conv2", "shortcut"] {
        b.put(&c, &format!("blk.{conv}.weight"), &f32s(&p[conv]["weight"]));
        b.put(
            &c,
            &format!("blk.{conv}.threshold"),
            &f32s(&p[conv]["threshold"]),
        );
    }
    for bn in ["bn1", "bn2"] {
        b.put(&c, &format!("blk.{bn}.weight"), &f32s(&p[bn]["gamma"]));
        b.put(&c, &format!("blk.{bn}.bias"), &f32s(&p[bn]["beta"]));
    }
    let x = c.tensor("x", &[2, 3, 6, 6], &f32s(&rb["x"]));
    let dy = c.tensor("dy", &[2, 4, 3, 3], &f32s(&rb["grad_y"]));
    let (ds, y, dx) = b.plan(&c, &x, &dy, alpha, true);
    let dx = dx.unwrap();
    c.gpu
        .write(&b.arena.grads, &vec![f32::NAN; b.arena.grads.len()]);
    c.set_step(StepInfo {
        valid: 2,
        ..Default::default()
    });
    run_once(&c.gpu, &ds, 0).unwrap();
    let tol = 1e-4;
    assert_close("block y", &c.read(&y), &flat(&rb["y"]), tol, tol);
    assert_close("block dx", &c.read(&dx), &flat(&rb["grad_x"]), tol, tol);
    let gr = &rb["grads"];
    for conv in ["conv1", "conv2", "shortcut"] {
        for (ours, theirs) in [("weight", "grad_weight"), ("threshold", "grad_threshold")] {
            let name = format!("blk.{conv}.{ours}");
            assert_close(
                &name,
                &b.grad(&c, &name),
                &flat(&gr[conv][theirs]),
                tol,
                tol,
            );
        }
    }
    for bn in ["bn1", "bn2"] {
        for (ours, theirs) in [("weight", "grad_gamma"), ("bias", "grad_beta")] {
            let name = format!("blk.{bn}.{ours}");
            assert_close(&name, &b.grad(&c, &name), &flat(&gr[bn][theirs]), tol, tol);
        }
    }
}

/// The identity-shortcut block (same width, stride 1): dx from the backward against central
/// differences of L = sum(y * dy) through the block's own forward on the GPU, for every input
/// element (thresholds far below the weights: no mask flips; the gradient reaches x through both
/// the main branch and the identity).
#[test]
fn identity_block_input_gradient_matches_finite_differences() {
    let c = ctx();
    let mut rng = Rng::new(17);
    let (n, ch, hw) = (2, 3, 4);
    let b = block(&c, ch, ch, 1);
    assert_eq!(b.block.mask_views().len(), 2, "no shortcut conv");
    for conv in ["conv1", "conv2"] {
        b.put(&c, &format!("blk.{conv}.threshold"), &[-5.0; 3]);
    }
    let xs = rand_vec(&mut rng, n * ch * hw * hw, -1.0, 1.0);
    let gys = rand_vec(&mut rng, n * ch * hw * hw, -1.0, 1.0);
    let x = c.tensor("x", &[n, ch, hw, hw], &xs);
    let dy = c.tensor("dy", &[n, ch, hw, hw], &gys);
    c.set_step(StepInfo {
        valid: n as u32,
        ..Default::default()
    });
    let (ds, _, dx) = b.plan(&c, &x, &dy, 0.0, true);
    run_once(&c.gpu, &ds, 0).unwrap();
    let dx = c.read(&dx.unwrap());
    let (fwd, y, _) = b.plan(&c, &x, &dy, 0.0, false);
    let objective = |v: &[f32]| -> f64 {
        c.gpu.write(&x, v);
        run_once(&c.gpu, &fwd, 0).unwrap();
        c.read(&y)
            .iter()
            .zip(&gys)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    };
    let eps = 1e-2f32;
    let fd: Vec<f64> = (0..xs.len())
        .map(|i| {
            let mut v = xs.clone();
            v[i] = xs[i] + eps;
            let up = objective(&v);
            v[i] = xs[i] - eps;
            (up - objective(&v)) / (2.0 * eps as f64)
        })
        .collect();
    assert_close_norm("identity block dx vs finite differences", &dx, &fd, 2e-2);
}
