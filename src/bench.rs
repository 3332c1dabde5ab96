//! `dst bench`: GEMM throughput of both variants on the LeNet-300-100 shapes, convolution
//! throughput of both variants on a LeNet-5 and a VGG-like shape, and the time per training step
//! of dense and DST training of each model asked for (default LeNet-300-100), measured in one
//! process (ratios from one run).

use std::path::Path;
use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::conv::{Conv, ConvShape, ConvVariant, TileForm};
use crate::kernels::gemm::{tiled_form, GemmParams, TiledForm};
use crate::kernels::{run_once, GemmVariant, Kernels, StepInfo};
use crate::nn::Mode;
use crate::rng::Rng;
use crate::train::{Session, TrainConfig};

/// LeNet-5-Caffe's conv2 at batch 64 (20 -> 50 channels, 12x12, 5x5): the kernel tables' conv.
const LENET5_CONV2: ConvShape = ConvShape {
    batch: 64,
    c_in: 20,
    h: 12,
    w: 12,
    c_out: 50,
    kh: 5,
    kw: 5,
    stride: 1,
    pad: 0,
};

/// Seconds per run of the sequence `ds` (`reps` runs in one submission).
fn time_dispatches(gpu: &Gpu, ds: &[crate::kernels::Dispatch], reps: u32) -> anyhow::Result<f64> {
    run_once(gpu, ds, 0)?; // warm-up
    let all: Vec<_> = (0..reps).flat_map(|_| ds.iter().cloned()).collect();
    let t = Instant::now();
    run_once(gpu, &all, 0)?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn time_dispatch(gpu: &Gpu, d: &crate::kernels::Dispatch, reps: u32) -> anyhow::Result<f64> {
    time_dispatches(gpu, std::slice::from_ref(d), reps)
}

/// `dst bench`: the kernel tables (`reps` repetitions; a CPU adapter times the GPU forms only
/// with `gpu_forms`) and the step times of `models` (`steps` steps, `rounds` alternating rounds;
/// `profile`: per dispatch; `checkpoint`: also from a DST checkpoint of the one model).
#[allow(clippy::too_many_arguments)]
pub fn run(
    reps: u32,
    steps: u32,
    data: Option<&Path>,
    models: &[String],
    profile: bool,
    checkpoint: Option<&Path>,
    rounds: u32,
    gpu_forms: bool,
) -> anyhow::Result<()> {
    // Flags of the step times: said to do nothing rather than ignored.
    if steps == 0 {
        for (given, flag) in [
            (profile, "--profile"),
            (checkpoint.is_some(), "--checkpoint"),
            (data.is_some(), "--data"),
        ] {
            if given {
                anyhow::bail!("{flag} is for the step times, which --steps 0 leaves out");
            }
        }
    }
    if rounds == 0 {
        anyhow::bail!("--rounds must be >= 1 (each round times every step variant once)");
    }
    if reps == 0 && steps == 0 {
        anyhow::bail!(
            "nothing to time: --reps 0 leaves out the kernel tables and --steps 0 the step times"
        );
    }
    // No --model: the checkpoint's, else LeNet-300-100.
    let default;
    let given_models = !models.is_empty();
    let models = if models.is_empty() {
        let model = match checkpoint {
            Some(p) => Checkpoint::read_metadata(p)?.get("model").cloned(),
            None => None,
        };
        default = [model.unwrap_or_else(|| "lenet300".into())];
        &default[..]
    } else {
        models
    };
    // The model named for the checkpoint's refusal: the flag only where it was given.
    let asked_model = |m: &str| {
        if given_models {
            format!("--model {m}")
        } else {
            m.to_string()
        }
    };
    for (i, m) in models.iter().enumerate() {
        crate::models::check_name(m)?;
        if models[..i].contains(m) {
            anyhow::bail!("--model {m} is given twice: each model is timed once");
        }
    }
    // A checkpoint is read and checked before any GPU work.
    let ck = match checkpoint {
        Some(path) => {
            let [model] = models else {
                anyhow::bail!(
                    "--checkpoint times one model: give exactly one --model (the checkpoint's)"
                );
            };
            let ck = Checkpoint::load(path)?;
            let (m, masked) = (ck.meta("model").unwrap_or("?"), ck.meta("masked"));
            if m != model || masked != Some("true") {
                anyhow::bail!(
                    "{}: a checkpoint of {} {m}, but --checkpoint needs a DST checkpoint of {}",
                    path.display(),
                    match masked {
                        Some("true") => "DST",
                        Some("false") => "dense",
                        _ => "unknown kind of",
                    },
                    asked_model(model)
                );
            }
            Some((ck, path))
        }
        None => None,
    };
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.describe());
    if gpu.subgroups8 {
        println!("kernel forms: subgroup forms (8-lane subgroups) where a kernel has one");
    }
    // --reps 0: step times only.
    if reps > 0 {
        let k = Kernels::new(&gpu, None)?;
        let mut rng = Rng::new(1);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect() };
        // The GPU forms run one to two orders of magnitude slower on a CPU adapter, where no
        // layer takes them: there they are built but timed only with --gpu-forms, at most twice.
        let tile_reps = match gpu.class {
            crate::gpu::AdapterClass::Cpu => gpu_forms.then(|| reps.min(2)),
            crate::gpu::AdapterClass::Gpu => Some(reps),
        };
        // Seconds per run of a GPU form's dispatches (None: not timed).
        let time_gpu = |ds: &[crate::kernels::Dispatch]| -> anyhow::Result<Option<f64>> {
            tile_reps.map(|r| time_dispatches(&gpu, ds, r)).transpose()
        };
        // (what, m, n, k) of the products of LeNet-300-100 at batch 64, and of LSTM-a's second
        // layer (batch 100, 28 steps, hidden 128: the input projection and its two gradients).
        let shapes: [(&str, usize, usize, usize, u8); 12] = [
            ("fc1 forward      64x784 . 784x300", 64, 300, 784, 0),
            ("fc1 forward, P^T 64x784 . 784x300", 64, 300, 784, 3),
            ("fc1 d_weight    300x64 . 64x784", 64, 300, 784, 2),
            ("fc2 forward      64x300 . 300x100", 64, 100, 300, 0),
            ("fc2 d_input      64x100 . 100x300", 64, 100, 300, 1),
            ("fc2 d_weight    100x64 . 64x300", 64, 100, 300, 2),
            ("fc3 forward, P^T 64x100 . 100x10", 64, 10, 100, 3),
            ("fc3 d_input      64x10 . 10x100", 64, 10, 100, 1),
            ("fc3 d_weight     10x64 . 64x100", 64, 10, 100, 2),
            ("lstm2 xproj   2800x128 . 128x512", 2800, 512, 128, 0),
            ("lstm2 d_input 2800x512 . 512x128", 2800, 512, 128, 1),
            ("lstm2 d_weight 512x2800 . 2800x128", 2800, 512, 128, 2),
        ];
        println!(
            "{:<36} {:>12} {:>12} {:>14} {:>12}",
            "GEMM (GFLOP/s)", "regblock", "tiled", "tiled split k", "tiled 2x2"
        );
        for (what, m, n, kk, kind) in shapes {
            let x = Tensor::from_slice(&gpu, "x", &[m, kk], &rand(m * kk))?;
            let w = Tensor::from_slice(&gpu, "w", &[n, kk], &rand(n * kk))?;
            let g = Tensor::from_slice(&gpu, "g", &[m, n], &rand(m * n))?;
            let b = Tensor::from_slice(&gpu, "b", &[n], &rand(n))?;
            let (p, a_, b_, bias, out) = match kind {
                0 => (
                    GemmParams::linear_forward(m, n, kk, true),
                    &x,
                    &w,
                    &b,
                    Tensor::zeros(&gpu, "y", &[m, n])?,
                ),
                3 => (
                    GemmParams::linear_forward_t(m, n, kk, true),
                    &x,
                    &w,
                    &b,
                    Tensor::zeros(&gpu, "y", &[m, n])?,
                ),
                1 => (
                    GemmParams::linear_backward_input(m, n, kk, false),
                    &g,
                    &w,
                    &k.dummy,
                    Tensor::zeros(&gpu, "dx", &[m, kk])?,
                ),
                _ => (
                    GemmParams::linear_backward_weight(m, n, kk, false),
                    &g,
                    &x,
                    &k.dummy,
                    Tensor::zeros(&gpu, "dw", &[n, kk])?,
                ),
            };
            let flops = 2.0 * (m * n * kk) as f64;
            let mut row = Vec::new();
            let d = k
                .gemm
                .matmul(&gpu, GemmVariant::RegBlock, p, a_, b_, bias, &out)?;
            row.push(rate(flops / time_dispatch(&gpu, &d, reps)? / 1e9));
            for form in TiledForm::ALL {
                let d = k.gemm.tiled_with(&gpu, form, p, a_, b_, bias, &out)?;
                row.push(time_gpu(&[d])?.map_or("-".into(), |t| rate(flops / t / 1e9)));
            }
            // `*`: the form the GPU product takes for this shape.
            let mark = |form: TiledForm| if tiled_form(&p) == form { "*" } else { " " };
            println!(
                "{what:<36} {:>12} {:>11}{} {:>13}{} {:>11}{}",
                row[0],
                row[1],
                mark(TiledForm::Tiled),
                row[2],
                mark(TiledForm::SplitK),
                row[3],
                mark(TiledForm::TwoByTwo)
            );
        }
        println!(
            "(*: the tiled form a GPU's product of the shape takes{})",
            match (gpu.class, tile_reps.is_none()) {
                (crate::gpu::AdapterClass::Gpu, _) => "",
                (_, true) =>
                    "; a CPU adapter's takes regblock; -: a GPU form, not timed on a \
                              CPU adapter: --gpu-forms times it",
                (_, false) => "; a CPU adapter's takes regblock",
            }
        );
        sparse_products(&gpu, &k, reps, &mut rand)?;
        input_sparse_products(&gpu, &k, reps, &mut rand)?;
        input_sparse_weight_gradient(&gpu, &k, reps, &mut rand)?;
        conv_sparse_products(&gpu, &k, reps, &mut rand)?;
        // What a dispatch costs besides its work: 64 back to back in one pass, each one
        // workgroup over 64 values (relu_backward), and the same with no workgroups; then both
        // with their counts read from a buffer, as a layer's switch routes them (a route it turned
        // off: no workgroups).
        let (dy64, y64) = (
            Tensor::from_slice(&gpu, "dy64", &[64], &rand(64))?,
            Tensor::from_slice(&gpu, "y64", &[64], &rand(64))?,
        );
        let dx64 = Tensor::zeros(&gpu, "dx64", &[64])?;
        let one = k.act.relu_backward(&gpu, &dy64, &y64, &dx64)?;
        let mut none = one.clone();
        none.workgroups = [0, 1, 1];
        // 512 workgroups, all but the first with nothing to do (what a workgroup costs by itself).
        let mut many = one.clone();
        many.workgroups = [512, 1, 1];
        // The same two with their counts read from a buffer (a switch's routed dispatches).
        let args = std::sync::Arc::new(gpu.indirect_init("indirect", &[0, 1, 1, 1, 1, 1])?);
        let mut none_indirect = one.clone();
        none_indirect.indirect = Some((args.clone(), 0));
        let mut one_indirect = one.clone();
        one_indirect.indirect = Some((args, 12));
        let per = |d: &crate::kernels::Dispatch| -> anyhow::Result<f64> {
            Ok(1e6 * time_dispatches(&gpu, &vec![d.clone(); 64], reps.max(1))? / 64.0)
        };
        let (t_one, t_many) = (per(&one)?, per(&many)?);
        println!(
            "dispatch overhead (us per dispatch, 64 in one pass): one workgroup {:.1}, none {:.1}; counts read from a buffer: one {:.1}, none {:.1}; per further workgroup of 256 invocations with nothing to do {:.3}",
            t_one,
            per(&none)?,
            per(&one_indirect)?,
            per(&none_indirect)?,
            (t_many - t_one) / 511.0
        );
        println!(
            "{:<36} {:>12} {:>12} {:>12} {:>12}",
            "masked kernels (us)", "mask_fwd", "mask_reset", "mask_bwd", "penalty"
        );
        for (rows, cols) in [(300usize, 784usize), (100, 300), (10, 100)] {
            let w = Tensor::from_slice(&gpu, "w", &[rows, cols], &rand(rows * cols))?;
            let t = Tensor::from_slice(&gpu, "t", &[rows], &vec![0.05f32; rows])?;
            let g = Tensor::from_slice(&gpu, "g", &[rows, cols], &rand(rows * cols))?;
            let p = Tensor::zeros(&gpu, "p", &[rows, cols])?;
            let dw = Tensor::zeros(&gpu, "dw", &[rows, cols])?;
            let dt = Tensor::zeros(&gpu, "dt", &[rows])?;
            let row_keep = Tensor::zeros(&gpu, "row_keep", &[2 * rows])?;
            let layer_keep = Tensor::zeros(&gpu, "layer_keep", &[4])?;
            let stats = Tensor::zeros(&gpu, "stats", &[crate::kernels::loss::STATS_WORDS])?;
            let m = &k.masked;
            let ds = [
                m.mask_forward(&gpu, &w, &t, &p, &row_keep)?,
                m.mask_reset(&gpu, &w, &t, &p, &row_keep, &layer_keep)?,
                m.mask_backward(&gpu, &w, &t, &g, &dw, &dt, 5e-4)?,
                m.penalty(&gpu, &t, &stats, 5e-4)?,
            ];
            let mut row = Vec::new();
            for d in &ds {
                row.push(1e6 * time_dispatch(&gpu, d, reps)?);
            }
            println!(
                "{:<36} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
                format!("{rows}x{cols}"),
                row[0],
                row[1],
                row[2],
                row[3]
            );
        }
        println!(
            "{:<62} {:>10}   {:>10}   {:>10}",
            "conv (GFLOP/s)", "forward", "d_input", "d_weight"
        );
        let conv_shapes = [
            (
                "LeNet-5 conv1 b64 1->20 28x28 k5",
                ConvShape {
                    c_in: 1,
                    h: 28,
                    w: 28,
                    c_out: 20,
                    ..LENET5_CONV2
                },
            ),
            ("LeNet-5 conv2 b64 20->50 12x12 k5", LENET5_CONV2),
            (
                "VGG-like b64 64->64 16x16 k3 p1",
                ConvShape {
                    batch: 64,
                    c_in: 64,
                    h: 16,
                    w: 16,
                    c_out: 64,
                    kh: 3,
                    kw: 3,
                    stride: 1,
                    pad: 1,
                },
            ),
        ];
        for (what, s) in conv_shapes {
            let (oh, ow) = (s.out_h(), s.out_w());
            let x = Tensor::from_slice(
                &gpu,
                "x",
                &[s.batch, s.c_in, s.h, s.w],
                &rand(s.batch * s.c_in * s.h * s.w),
            )?;
            let w = Tensor::from_slice(&gpu, "w", &[s.c_out, s.cols()], &rand(s.c_out * s.cols()))?;
            let b = Tensor::from_slice(&gpu, "b", &[s.c_out], &rand(s.c_out))?;
            let g = Tensor::from_slice(
                &gpu,
                "g",
                &[s.batch, s.c_out, oh, ow],
                &rand(s.batch * s.c_out * oh * ow),
            )?;
            let y = Tensor::zeros(&gpu, "y", &[s.batch, s.c_out, oh, ow])?;
            let dx = Tensor::zeros(&gpu, "dx", &[s.batch, s.c_in, s.h, s.w])?;
            let dw = Tensor::zeros(&gpu, "dw", &[s.c_out, s.cols()])?;
            let flops = 2.0 * s.macs() as f64;
            // RegBlock: the CPU kernels. Then the GPU forms, each in both tile forms: the
            // implicit products (the weight gradient: a workgroup per element, one form), and
            // the input gradient through a patch matrix (product + col2im) with the weight
            // gradient split over runs of positions (product + the partial sums' sum). `*`: the
            // form a GPU layer of this shape takes.
            // `-`: a GPU form not timed (a CPU adapter without --gpu-forms).
            let cell = |sec: Option<f64>, taken: bool| {
                // The marker in a column of its own, so that the figures stay aligned.
                format!(
                    "{:>10}{}",
                    sec.map_or("-".into(), |sec| rate(flops / sec / 1e9)),
                    if taken { " *" } else { "  " }
                )
            };
            let row = |label: String, cells: [String; 3]| {
                println!(
                    "{:<62} {:>12} {:>12} {:>12}",
                    label, cells[0], cells[1], cells[2]
                )
            };
            let v = ConvVariant::RegBlock;
            let regblock = [
                k.conv
                    .forward_with(v, &gpu, &s, &x, &w, Some(&b), &y, &k.dummy)?,
                k.conv.backward_input_with(v, &gpu, &s, &g, &w, &dx)?,
                k.conv.backward_weight_with(v, &gpu, &s, &g, &x, &dw)?,
            ];
            let mut cells = Vec::new();
            for d in &regblock {
                cells.push(cell(Some(time_dispatch(&gpu, d, reps)?), false));
            }
            row(format!("{what} RegBlock"), cells.try_into().unwrap());
            let dcols = Tensor::zeros(&gpu, "dcols", &[s.cols_len()])?;
            let parts_len = Conv::weight_parts_len(&s);
            let parts = (parts_len > 0)
                .then(|| Tensor::zeros(&gpu, "parts", &[parts_len]))
                .transpose()?;
            let via_cols = crate::kernels::conv::input_via_cols(&gpu, &s);
            let w_tiled = crate::kernels::conv::weight_grad_tiled(&s);
            let positions = s.batch * s.out_h() * s.out_w();
            let (_, splits) = crate::kernels::conv::weight_splits(&s);
            let forms = [
                TileForm::for_shape(s.c_out, positions, 1),
                TileForm::for_shape(s.c_in, s.batch * s.h * s.w, 1),
                TileForm::for_shape(s.cols(), positions, 1),
                TileForm::for_shape(s.c_out, s.cols(), splits),
            ];
            for form in TileForm::ALL {
                let fwd =
                    k.conv
                        .forward_tiled_with(form, &gpu, &s, &x, &w, Some(&b), &y, &k.dummy)?;
                let din = k
                    .conv
                    .backward_input_tiled_with(form, &gpu, &s, &g, &w, &dx)?;
                let wred =
                    k.conv
                        .backward_weight_with(ConvVariant::Tiled, &gpu, &s, &g, &x, &dw)?;
                let first = form == TileForm::One;
                row(
                    format!("{what} Tiled {}", form.name()),
                    [
                        cell(time_gpu(&[fwd])?, forms[0] == form),
                        cell(time_gpu(&[din])?, !via_cols && forms[1] == form),
                        if first {
                            cell(time_gpu(&[wred])?, !w_tiled)
                        } else {
                            String::new()
                        },
                    ],
                );
                let dic = k
                    .conv
                    .backward_input_cols_tiled_with(form, &gpu, &s, &g, &w, &dcols, &dx)?;
                let dwt = k.conv.backward_weight_tiled_with(
                    form,
                    &gpu,
                    &s,
                    &g,
                    &x,
                    parts.as_ref(),
                    &dw,
                )?;
                row(
                    format!("{what} Tiled {} (patch | split)", form.name()),
                    [
                        String::new(),
                        cell(time_gpu(&dic)?, via_cols && forms[2] == form),
                        cell(time_gpu(&dwt)?, w_tiled && forms[3] == form),
                    ],
                );
            }
            drop((dcols, parts));
            if k.conv.use_cols(&gpu, &s) {
                // The patch-matrix path: im2col + product (forward), product + col2im (d_input).
                let cols = Tensor::zeros(&gpu, "cols", &[s.cols_len()])?;
                let mut row = Vec::new();
                for ds in [
                    k.conv
                        .forward_cols(&gpu, &s, &x, &w, Some(&b), &y, &cols, &k.dummy)?
                        .to_vec(),
                    vec![k.conv.backward_weight_cols(&gpu, &s, &g, &cols, &dw)?],
                    k.conv
                        .backward_input_cols(&gpu, &s, &g, &w, &cols, &dx)?
                        .to_vec(),
                ] {
                    let mut sec = 0.0;
                    for d in &ds {
                        sec += time_dispatch(&gpu, d, reps)?;
                    }
                    row.push(flops / sec / 1e9);
                }
                println!(
                    "{:<62} {:>10}   {:>10}   {:>10}",
                    format!("{what} Cols"),
                    rate(row[0]),
                    rate(row[2]),
                    rate(row[1])
                );
            }
        }
        println!(
            "(*: the form a GPU's layer of the shape takes; a CPU adapter's layer takes Cols where \
             it is listed, RegBlock otherwise)"
        );
        if tile_reps.is_none() {
            println!(
                "(-: a GPU form, not timed on a CPU adapter, where no layer takes it and it runs \
                 10-100x slower; --gpu-forms times it)"
            );
        }
        drop(k);
    }
    if steps == 0 {
        return Ok(());
    }
    for model in models {
        let ck = ck.as_ref().map(|(c, p)| (c, *p));
        step_times(model, steps, data, profile, ck, rounds)?;
    }
    Ok(())
}

/// The products of LeNet-300-100's fc1 and fc2 (batch 64) at several keep ratios: the dense
/// GEMM over P against the sparse path of a masked linear layer (lists of P's nonzeros, the input
/// made feature-major, the list product), forward and product to the input: where the sparse
/// path starts to pay (`--sparse-keep`) and why layers below `SPARSE_MIN_WEIGHTS` keep the GEMMs.
fn sparse_products(
    gpu: &Gpu,
    k: &Kernels,
    reps: u32,
    rand: &mut dyn FnMut(usize) -> Vec<f32>,
) -> anyhow::Result<()> {
    for (name, rows, cols) in [("fc1", 300usize, 784usize), ("fc2", 100, 300)] {
        sparse_products_of(gpu, k, reps, rand, name, rows, cols)?;
    }
    Ok(())
}

/// `sparse_products` for one `rows x cols` layer.
fn sparse_products_of(
    gpu: &Gpu,
    k: &Kernels,
    reps: u32,
    rand: &mut dyn FnMut(usize) -> Vec<f32>,
    name: &str,
    rows: usize,
    cols: usize,
) -> anyhow::Result<()> {
    let batch = 64usize;
    let keeps = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02];
    let x = Tensor::from_slice(gpu, "x", &[batch, cols], &rand(batch * cols))?;
    let dy = Tensor::from_slice(gpu, "dy", &[batch, rows], &rand(batch * rows))?;
    let b = Tensor::from_slice(gpu, "b", &[rows], &rand(rows))?;
    let (y, dx) = (
        Tensor::zeros(gpu, "y", &[batch, rows])?,
        Tensor::zeros(gpu, "dx", &[batch, cols])?,
    );
    let (x_fm, dy_fm) = (
        Tensor::zeros(gpu, "x_fm", &[cols, batch])?,
        Tensor::zeros(gpu, "dy_fm", &[rows, batch])?,
    );
    let lists = crate::kernels::sparse::EllLists::new(gpu, "bench", rows, cols, false)?;
    let mut table = vec![Vec::new(); 5];
    for kp in keeps {
        let p = masked_rand(rand, rows * cols, kp);
        let p = Tensor::from_slice(gpu, "p", &[rows, cols], &p)?;
        let sp = &k.sparse;
        let seqs = [
            vec![k.gemm.forward(gpu, &x, &p, Some(&b), &y, &k.dummy)?],
            vec![sp.ell_build(gpu, &p, &lists, true)?],
            vec![
                sp.ell_build(gpu, &p, &lists, true)?,
                sp.to_feature_major(gpu, batch, cols, &x, &x_fm)?,
                sp.ell_product(
                    gpu,
                    &lists,
                    true,
                    batch,
                    &x_fm,
                    Some(&b),
                    &y,
                    false,
                    &k.dummy,
                )?,
            ],
            vec![k.gemm.backward_input(gpu, &dy, &p, &dx, false, &k.dummy)?],
            vec![
                sp.ell_build(gpu, &p, &lists, false)?,
                sp.to_feature_major(gpu, batch, rows, &dy, &dy_fm)?,
                sp.ell_product(
                    gpu, &lists, false, batch, &dy_fm, None, &dx, false, &k.dummy,
                )?,
            ],
        ];
        for (row, ds) in table.iter_mut().zip(&seqs) {
            row.push(1e6 * time_dispatches(gpu, ds, reps)?);
        }
    }
    print_table(
        (&format!("{name} products (us) at keep"), 36),
        &keeps,
        &[
            "forward, dense GEMM",
            "forward, the row lists alone",
            "forward, sparse (lists+fm+product)",
            "d_input, dense GEMM",
            "d_input, sparse (lists+fm+product)",
        ],
        &table,
    );
    Ok(())
}

/// The patch-matrix products of LeNet-5's conv2 (batch 64, 20 -> 50 channels, 12x12, 5x5) at
/// several keep ratios: the dense products over P against the ones over P's lists (lists built
/// from P, then the product), forward and product to the input (the im2col and col2im around
/// them are the same on both paths and left out): where a masked conv's lists start to pay
/// (`--sparse-keep`).
fn conv_sparse_products(
    gpu: &Gpu,
    k: &Kernels,
    reps: u32,
    rand: &mut dyn FnMut(usize) -> Vec<f32>,
) -> anyhow::Result<()> {
    let s = LENET5_CONV2;
    if !k.conv.use_cols(gpu, &s) {
        return Ok(());
    }
    let (rows, cols) = (s.c_out, s.cols());
    let keeps = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02];
    let x_len = s.batch * s.c_in * s.h * s.w;
    let y_len = s.batch * rows * s.out_h() * s.out_w();
    let x = Tensor::from_slice(gpu, "x", &[x_len], &rand(x_len))?;
    let dy = Tensor::from_slice(gpu, "dy", &[y_len], &rand(y_len))?;
    let b = Tensor::from_slice(gpu, "b", &[rows], &rand(rows))?;
    let (y, dx) = (
        Tensor::zeros(gpu, "y", &[y_len])?,
        Tensor::zeros(gpu, "dx", &[x_len])?,
    );
    let (patches, dcols) = (
        Tensor::zeros(gpu, "cols", &[s.cols_len()])?,
        Tensor::zeros(gpu, "dcols", &[s.cols_len()])?,
    );
    let lists = crate::kernels::sparse::EllLists::new(gpu, "bench", rows, cols, false)?;
    let mut table = vec![Vec::new(); 4];
    for kp in keeps {
        let p = masked_rand(rand, rows * cols, kp);
        let p = Tensor::from_slice(gpu, "p", &[rows, cols], &p)?;
        let (cv, sp) = (&k.conv, &k.sparse);
        let [fill, dense_fwd] =
            cv.forward_cols(gpu, &s, &x, &p, Some(&b), &y, &patches, &k.dummy)?;
        run_once(gpu, &[fill], 0)?;
        let [dense_dx, _] = cv.backward_input_cols(gpu, &s, &dy, &p, &dcols, &dx)?;
        let seqs = [
            vec![dense_fwd],
            vec![
                sp.ell_build(gpu, &p, &lists, true)?,
                cv.forward_cols_listed(gpu, &s, &lists, &patches, Some(&b), &y, &k.dummy)?,
            ],
            vec![dense_dx],
            vec![
                sp.ell_build(gpu, &p, &lists, false)?,
                cv.backward_input_cols_listed(gpu, &s, &lists, &dy, &dcols)?,
            ],
        ];
        for (row, ds) in table.iter_mut().zip(&seqs) {
            row.push(1e6 * time_dispatches(gpu, ds, reps)?);
        }
    }
    print_table(
        ("LeNet-5 conv2 products (us) at keep", 36),
        &keeps,
        &[
            "forward, dense",
            "forward, listed (lists+product)",
            "d_input, dense (dcols)",
            "d_input, listed (lists+dcols)",
        ],
        &table,
    );
    Ok(())
}

/// LeNet-300-100's fc1 forward (batch 64, P stored transposed as in training) at several input
/// densities (random inputs, the rest exact zeros): the dense GEMM against the input-sparse
/// product (lists of the inputs nonzero in each block of 8 samples, then the product over them;
/// random zeros leave most of a block's inputs listed): `--sparse-input`,
/// `kernels::sparse::default_sparse_input`. The last row is a masked first layer's forward on
/// CPU adapters, its counting pass over W included (`Linear::forward_counted`); the rows above
/// include only a small mask pass that sets the switch.
fn input_sparse_products(
    gpu: &Gpu,
    k: &Kernels,
    reps: u32,
    rand: &mut dyn FnMut(usize) -> Vec<f32>,
) -> anyhow::Result<()> {
    use crate::kernels::sparse::{Compaction, InputLists, Path, Switch};
    let (batch, rows, cols) = (64usize, 300usize, 784usize);
    let densities = [1.0, 0.5, 0.4, 0.3, 0.2, 0.1];
    let pt = Tensor::from_slice(gpu, "pt", &[cols, rows], &rand(rows * cols))?;
    // The same P^T where only every third row of P keeps weights (fc1 at 8 % kept: 101 of 300),
    // for the compacted product.
    let third: Vec<f32> = rand(rows * cols)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if (i % rows) % 3 == 0 { v } else { 0.0 })
        .collect();
    let pt_third = Tensor::from_slice(gpu, "pt_third", &[cols, rows], &third)?;
    let counts: Vec<u32> = (0..rows).map(|r| u32::from(r % 3 == 0)).collect();
    let counts = Tensor::from_slice(gpu, "row_counts", &[rows], &counts)?;
    let pt_c = Tensor::zeros(gpu, "pt_c", &[cols, rows])?;
    let b = Tensor::from_slice(gpu, "b", &[rows], &rand(rows))?;
    let y = Tensor::zeros(gpu, "y", &[batch, rows])?;
    let lists = InputLists::new(gpu, "bench.input", batch, cols, rows)?;
    let switch = Switch::new(gpu, "bench.switch", 11, 0)?;
    let compaction = Compaction {
        row_counts: &counts,
        max_active: rows as u32 / 2,
        slot: 9,
        product_slot: 10,
    };
    // The dense forward in the switch's slot 3: a mask pass (of a small matrix that keeps more
    // than sparse_max = 0 weights) turns it on every rep, as in a training step, before
    // `input_lists` decides (which turns it off when it takes the input-sparse product). Both
    // rows of the table include that pass.
    let _ = switch.route(
        gpu,
        3,
        crate::kernels::sparse::Path::Dense,
        k.gemm.forward_t(
            gpu,
            &Tensor::zeros(gpu, "probe.x", &[batch, cols])?,
            &pt,
            None,
            &y,
            &k.dummy,
        )?,
    );
    let (mr, mc) = (4usize, 8usize);
    let mw = Tensor::from_slice(gpu, "mw", &[mr, mc], &vec![1.0f32; mr * mc])?;
    let mt = Tensor::zeros(gpu, "mt", &[mr])?;
    let mp = Tensor::zeros(gpu, "mp", &[mr, mc])?;
    let mrk = Tensor::zeros(gpu, "mrk", &[2 * mr])?;
    let mlk = Tensor::zeros(gpu, "mlk", &[4])?;
    let mask_pass = k.masked.mask_pass(
        gpu,
        &mw,
        &mt,
        &mp,
        &mrk,
        &mlk,
        1,
        crate::kernels::masked::ResetPolicy::None,
        crate::kernels::masked::PassExtras {
            switch: Some(&switch),
            ..Default::default()
        },
    )?;
    let sp = &k.sparse;
    let third_plain =
        sp.ell_input_product(gpu, &lists, &pt_third, Some(&b), &y, false, false, &k.dummy)?;
    let compacted = [
        switch.route(
            gpu,
            9,
            Path::Input,
            sp.compact_columns(gpu, &lists, &pt_third, &pt_c)?,
        ),
        switch.route(
            gpu,
            10,
            Path::Input,
            sp.ell_input_product(gpu, &lists, &pt_c, Some(&b), &y, false, true, &k.dummy)?,
        ),
    ];
    // A first layer on a CPU adapter (`Linear::forward_counted`): W whose every third row keeps
    // its weights (t = 0; the others t = 100), its counting pass, the lists ordering every row,
    // the compacted columns written from W and the compacted product.
    let w_third = Tensor::from_slice(gpu, "w_third", &[rows, cols], &rand(rows * cols))?;
    let t: Vec<f32> = (0..rows)
        .map(|r| if r % 3 == 0 { 0.0 } else { 100.0 })
        .collect();
    let t_third = Tensor::from_slice(gpu, "t_third", &[rows], &t)?;
    let row_keep = Tensor::zeros(gpu, "row_keep", &[2 * rows])?;
    let p_unwritten = Tensor::zeros(gpu, "p_unwritten", &[cols, rows])?;
    let every_row = Compaction {
        row_counts: &row_keep,
        max_active: rows as u32,
        slot: 9,
        product_slot: 10,
    };
    let counting = k
        .masked
        .mask_count(gpu, &w_third, &t_third, &p_unwritten, &row_keep)?;
    let columns = sp.masked_columns(gpu, &lists, &w_third, &t_third, &pt_c)?;
    let compacted_product =
        sp.ell_input_product(gpu, &lists, &pt_c, Some(&b), &y, false, true, &k.dummy)?;
    let mut table = vec![Vec::new(); 5];
    for d in densities {
        let mut zero_rng = Rng::new(11);
        let x: Vec<f32> = rand(batch * cols)
            .into_iter()
            .map(|v| if zero_rng.range(0.0, 1.0) < d { v } else { 0.0 })
            .collect();
        let x = Tensor::from_slice(gpu, "x", &[batch, cols], &x)?;
        let mut seqs = [
            vec![k.gemm.forward_t(gpu, &x, &pt, Some(&b), &y, &k.dummy)?],
            vec![
                sp.input_lists(gpu, &x, &lists, &switch, u32::MAX, 4, 8, None)?,
                sp.ell_input_product(gpu, &lists, &pt, Some(&b), &y, false, false, &k.dummy)?,
            ],
            vec![
                sp.input_lists(gpu, &x, &lists, &switch, u32::MAX, 4, 8, None)?,
                third_plain.clone(),
            ],
            vec![
                sp.input_lists(gpu, &x, &lists, &switch, u32::MAX, 4, 8, Some(&compaction))?,
                compacted[0].clone(),
                compacted[1].clone(),
            ],
            vec![
                counting.clone(),
                sp.input_lists(gpu, &x, &lists, &switch, u32::MAX, 4, 8, Some(&every_row))?,
                columns.clone(),
                compacted_product.clone(),
            ],
        ];
        for s in &mut seqs {
            s.splice(0..0, mask_pass.iter().cloned());
        }
        for (row, ds) in table.iter_mut().zip(&seqs) {
            row.push(1e6 * time_dispatches(gpu, ds, reps)?);
        }
    }
    print_table(
        ("fc1 forward (us) at input density", 42),
        &densities,
        &[
            "dense GEMM (P^T) + mask pass",
            "input-sparse (lists+product) + mask pass",
            "the same, 1/3 of P's rows keep weights",
            "the same, compacted (lists+copy+product)",
            "first layer (count+lists+columns+product)",
        ],
        &table,
    );
    Ok(())
}

/// fc1's weight gradient fused with its SGD step (masked), the full product against the listed
/// one (`tn_k_lists` + `gemm_tn_sgd_listed`) as the input's nonzero (sample, 8-feature block)
/// pairs thin out (MNIST's batches: about 0.4). CPU adapters only (the fused form's).
fn input_sparse_weight_gradient(
    gpu: &Gpu,
    k: &Kernels,
    reps: u32,
    rand: &mut dyn FnMut(usize) -> Vec<f32>,
) -> anyhow::Result<()> {
    use crate::kernels::gemm::{Gemm, SgdTarget};
    let (batch, rows, cols) = (64usize, 300usize, 784usize);
    let densities = [1.0, 0.6, 0.4, 0.2, 0.0];
    let step = crate::kernels::StepRing::new(gpu, k, 1);
    let g = Tensor::from_slice(gpu, "g", &[batch, rows], &rand(batch * rows))?;
    let w = Tensor::from_slice(gpu, "w", &[rows, cols], &rand(rows * cols))?;
    let v = Tensor::zeros(gpu, "v", &[rows, cols])?;
    let t = Tensor::zeros(gpu, "t", &[rows])?;
    let parts = Tensor::zeros(gpu, "parts", &[rows, Gemm::dt_blocks(cols)])?;
    let db = Tensor::zeros(gpu, "db", &[rows])?;
    let lists = Tensor::zeros(gpu, "k_lists", &[Gemm::k_list_words(cols, batch)])?;
    let target = SgdTarget {
        weight: &w,
        velocity: &v,
        momentum: 0.9,
        weight_decay: 0.0,
        mask: Some((&t, &parts)),
    };
    let mut table = vec![Vec::new(); 2];
    for d in densities {
        let mut zero_rng = Rng::new(12);
        let mut x = rand(batch * cols);
        for block in x.chunks_mut(8) {
            if zero_rng.range(0.0, 1.0) >= d {
                block.fill(0.0);
            }
        }
        let x = Tensor::from_slice(gpu, "x", &[batch, cols], &x)?;
        for (row, listed) in table.iter_mut().zip([None, Some(&lists)]) {
            let Some(ds) = k.gemm.backward_weight_sgd(
                gpu,
                &g,
                &x,
                &db,
                &target,
                listed.map(crate::kernels::gemm::KLists::Build),
                &step,
                &k.dummy,
            )?
            else {
                return Ok(());
            };
            row.push(1e6 * time_dispatches(gpu, &ds, reps)?);
        }
    }
    print_table(
        ("fc1 dW + SGD (us), nonzero blocks", 42),
        &densities,
        &[
            "full (gemm_tn_sgd)",
            "listed (tn_k_lists + gemm_tn_sgd_listed)",
        ],
        &table,
    );
    Ok(())
}

/// A table of microseconds: the title (and the width of the label column), a header per column,
/// a label and a row of values per row.
/// `n` values of `rand`, each kept with probability `keep` (the same draws for every keep), the
/// others zero: a random mask's P.
fn masked_rand(rand: &mut dyn FnMut(usize) -> Vec<f32>, n: usize, keep: f64) -> Vec<f32> {
    let mut mask_rng = Rng::new(7);
    rand(n)
        .into_iter()
        .map(|v| {
            if mask_rng.range(0.0, 1.0) < keep {
                v
            } else {
                0.0
            }
        })
        .collect()
}

fn print_table(title: (&str, usize), heads: &[f64], labels: &[&str], rows: &[Vec<f64>]) {
    let (title, width) = title;
    print!("{title:<width$}");
    for h in heads {
        print!(" {h:>8}");
    }
    println!();
    for (what, row) in labels.iter().zip(rows) {
        print!("{what:<width$}");
        for us in row {
            print!(" {us:>8.0}");
        }
        println!();
    }
}

/// Adds `sec` to the entry of `label` (seconds, dispatch count), first seen first.
fn add_to(per: &mut Vec<(String, f64, usize)>, label: &str, sec: f64) {
    match per.iter_mut().find(|(l, _, _)| l == label) {
        Some(e) => {
            e.1 += sec;
            e.2 += 1;
        }
        None => per.push((label.to_string(), sec, 1)),
    }
}

/// A profile's row: the layer that recorded a dispatch ("step" for the plan's own) and its kernel.
fn profile_key(owner: &str, kernel: &str) -> String {
    format!(
        "{:<8} {kernel}",
        if owner.is_empty() { "step" } else { owner }
    )
}

/// Per-kernel seconds of one step of `plan`, each dispatch timed alone from the host.
fn wall_profile(gpu: &Gpu, plan: &crate::plan::Plan) -> anyhow::Result<Vec<(String, f64, usize)>> {
    let mut per = Vec::new();
    for (d, owner) in plan.dispatches.iter().zip(&plan.owners) {
        add_to(
            &mut per,
            &profile_key(owner, &d.label),
            time_dispatch(gpu, d, 5)?,
        );
    }
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(per)
}

/// Steps `gpu_profile` times each dispatch over.
const PROFILE_STEPS: u32 = 15;

/// The median of `v` (the mean of the middle two for an even length; 0 for none).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let h = v.len() / 2;
    if v.len() % 2 == 1 {
        v[h]
    } else {
        0.5 * (v[h - 1] + v[h])
    }
}

/// Tukey's hinges of `v`: the medians of its lower and upper halves (the middle value in both
/// for an odd length) around its median; None for fewer than 2 values.
fn quartiles(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let m = median(v); // sorts v
    let h = v.len().div_ceil(2);
    let lo = median(&mut v[..h].to_vec());
    let hi = median(&mut v[v.len() - h..].to_vec());
    Some((lo, m, hi))
}

/// The order in which round `r` runs `n` variants: as given in even rounds, reversed in odd ones.
fn round_order(n: usize, r: u32) -> Vec<usize> {
    if r.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// Per-kernel seconds of one step of `plan` measured on the GPU itself: each dispatch in its own
/// compute pass with timestamps written at its beginning and end; per dispatch the median over
/// `steps` steps (a shared machine's stalls land in a few steps: the median leaves them out,
/// where a mean spreads them over every kernel). None where the adapter has no timestamp
/// queries.
fn gpu_profile(
    s: &Session,
    plan: &crate::plan::Plan,
    steps: u32,
) -> anyhow::Result<Option<Vec<(String, f64, usize)>>> {
    let gpu = &s.gpu;
    if !gpu
        .device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        return Ok(None);
    }
    let n = plan.dispatches.len() as u32;
    let query_set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count: 2 * n,
    });
    let bytes = 16 * n as u64;
    let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile.resolved"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let period_s = gpu.queue.get_timestamp_period() as f64 * 1e-9;
    let mut times = vec![Vec::with_capacity(steps as usize); n as usize];
    for _ in 0..steps {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        for (i, d) in plan.dispatches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &query_set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            d.record(&mut pass, 0);
        }
        enc.resolve_query_set(&query_set, 0..2 * n, &resolved, 0);
        gpu.queue.submit([enc.finish()]);
        let raw = gpu.read_ranges(&[(&resolved, 0, bytes)])?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw[0]);
        for (i, t) in times.iter_mut().enumerate() {
            t.push(ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_s);
        }
    }
    let mut per = Vec::new();
    for ((d, owner), t) in plan.dispatches.iter().zip(&plan.owners).zip(&mut times) {
        add_to(&mut per, &profile_key(owner, &d.label), median(t));
    }
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Some(per))
}

/// One way of running a model's training step, for `step_times`.
struct Variant {
    label: String,
    session: Session,
    plan: crate::plan::Plan,
    /// Of a variant restored from a checkpoint: the share of its masked weights kept at the
    /// checkpoint (its label names it, and what the timed steps moved it to).
    kept_at_checkpoint: Option<f64>,
}

/// The share of `session`'s masked weights its masks keep now.
fn kept_share(session: &Session) -> Result<f64, crate::train::TrainError> {
    let (kept, total) = session
        .keep_counts()?
        .iter()
        .fold((0, 0), |(k, t), (_, kk, tt)| (k + kk, t + tt));
    Ok(kept as f64 / total.max(1) as f64)
}

/// Time per training step of `model` with the model's paper settings (batch, alpha, optimiser;
/// with `checkpoint`, those of its run):
/// dense, DST from initialisation (with the adapter's default products, and with dense products
/// only) and, with `checkpoint` (a DST checkpoint of `model`), DST from it with dense products,
/// with the weight-sparse products forced, with the input-sparse ones forced (where the layer has
/// them) and with the defaults; every variant built first, then timed in `rounds`
/// alternating rounds in one process (the ratios compare times of the same round).
fn step_times(
    model: &str,
    steps: u32,
    data: Option<&Path>,
    profile: bool,
    ck: Option<(&Checkpoint, &Path)>,
    rounds: u32,
) -> anyhow::Result<()> {
    let mut cfg = TrainConfig {
        data: data.map(Path::to_path_buf),
        ..TrainConfig::for_model(model)?
    };
    // With a checkpoint, every variant steps with its run's optimiser settings, batch and alpha
    // (a checkpoint of an SGD-trained LSTM has no Adam moments to restore; an Adam-trained
    // LeNet would otherwise be stepped with SGD).
    let run = ck
        .and_then(|(c, _)| c.meta("config"))
        .and_then(|c| serde_json::from_str::<TrainConfig>(c).ok())
        .filter(|r| r.model == model);
    if let (Some(r), Some((c, path))) = (run, ck) {
        // A --target-keep run's alpha moves: the one it had reached at its checkpoint.
        let alpha = c
            .meta("alpha")
            .and_then(|a| a.parse::<f64>().ok())
            .unwrap_or(r.alpha);
        cfg = TrainConfig {
            optimizer: r.optimizer,
            lr: r.lr,
            momentum: r.momentum,
            weight_decay: r.weight_decay,
            batch: r.batch,
            alpha,
            ..cfg
        };
        println!(
            "{model}: every variant with the settings of {}'s run: optimizer {}, lr {}, batch {}, alpha {}, reset {}",
            path.display(),
            cfg.optimizer,
            cfg.lr,
            cfg.batch,
            // A steered alpha to 4 digits (1.921e-5, not 0.000019211184705376156).
            Some(format!("{:e}", cfg.alpha))
                .filter(|a| a.len() <= 8)
                .unwrap_or_else(|| format!("{:.3e}", cfg.alpha)),
            crate::train::reset_policy_of(c).name()
        );
    }
    let kind = crate::models::info(model)?.dataset;
    // Without --data a CIFAR-10 model times its steps on random images of CIFAR-10's shape
    // (step time does not depend on the values); MNIST models use the embedded subset.
    let train_set = match (kind, data) {
        (crate::data::DatasetKind::Cifar10, None) => {
            println!("{model}: no --data, steps on random images of CIFAR-10's shape");
            synthetic_cifar(8 * cfg.batch)
        }
        _ => cfg.load_data()?.train,
    };
    let batch = cfg.batch;
    let opt = cfg.optimizer();
    let open = |masked: bool| -> anyhow::Result<Session> {
        Ok(Session::new(
            Gpu::open(crate::gpu::select_adapter(
                std::env::var("WGPU_ADAPTER_NAME").ok().as_deref(),
            )?)?,
            model,
            masked,
            1,
            opt.is_adam(),
        )?)
    };
    // (label, masked, from the checkpoint, (--sparse-keep, --sparse-input): None the adapter's
    // defaults)
    let mut specs = vec![
        ("dense", false, false, None),
        ("DST", true, false, None),
        ("DST, dense products", true, false, Some((0.0, 0.0))),
    ];
    if ck.is_some() {
        specs.push((
            "DST from checkpoint, dense products",
            true,
            true,
            Some((0.0, 0.0)),
        ));
        specs.push((
            "DST from checkpoint, weight-sparse products",
            true,
            true,
            Some((1.0, 0.0)),
        ));
        specs.push((
            "DST from checkpoint, input-sparse products",
            true,
            true,
            Some((0.0, 1.0)),
        ));
        specs.push(("DST from checkpoint", true, true, None));
    }
    let infos: Vec<StepInfo> = (0..steps as usize)
        .map(|i| {
            opt.step_info(
                i as u64 + 1,
                cfg.lr,
                (i * batch) % (train_set.count - batch + 1),
                batch,
            )
        })
        .collect();
    let run_reset = ck.map(|(c, _)| crate::train::reset_policy_of(c));
    let mut variants: Vec<Variant> = Vec::new();
    // Set-up and warm-up time of the first variant: the whole run's length, told where long
    // (a CIFAR-10 model on a CPU adapter takes hours at the defaults, silently).
    let mut told = false;
    let set_up = Instant::now();
    let n_specs = specs.len();
    for (label, masked, from_ck, sparse_keep) in specs {
        let mut session = open(masked)?;
        // The run's dead-layer policy for every DST variant, as for its settings above (a floor
        // run's fresh DST steps were timed with the paper's reset, and its checkpoint's with its
        // own: the ratio counted the floor's passes against the checkpoint's sparsity).
        if let (Some(r), true) = (run_reset, masked) {
            session.reset = r;
        }
        if let Some((keep, input)) = sparse_keep {
            session.sparse_keep = keep;
            session.sparse_keep_conv = keep;
            session.sparse_keep_lstm = keep;
            session.sparse_input = input;
        }
        let mut kept_at_checkpoint = None;
        if let Some((ck, path)) = ck.filter(|_| from_ck) {
            // Under the run's dead-layer policy (set above): under the paper's reset a layer
            // that a floor run kept at <= 1 % would turn dense again in the first step.
            session.restore(ck, path, true)?;
            // As `dst eval` gives it: the session counts its masks only once a step ran.
            let (_, report) = crate::export::from_checkpoint(ck, path, crate::export::Layout::Csr)
                .map_err(|e| crate::train::TrainError::Refused(e.to_string()))?;
            let (kept, total) = report
                .layers
                .iter()
                .fold((0u64, 0u64), |(k, t), (_, kk, tt)| {
                    (k + *kk as u64, t + *tt as u64)
                });
            kept_at_checkpoint = Some(kept as f64 / total.max(1) as f64);
        }
        let train = session.upload("train", &train_set)?;
        train.start_epoch(&session.gpu, 1, 1);
        let alpha = if masked { cfg.alpha as f32 } else { 0.0 };
        let plan = session.plan(&train, batch, Mode::Train, alpha, opt)?;
        // A variant whose products no layer takes computes what another does, with the same
        // dispatches (the input-sparse products of a model without a linear layer large enough):
        // left out, said so, rather than warmed up and timed as if it were another step.
        let same = |a: &crate::plan::Plan, b: &crate::plan::Plan| {
            a.dispatches.len() == b.dispatches.len()
                && a.dispatches
                    .iter()
                    .zip(&b.dispatches)
                    .all(|(x, y)| x.label == y.label && x.workgroups == y.workgroups)
        };
        if let Some(twin) = variants
            .iter()
            .find(|v| v.kept_at_checkpoint.is_some() == from_ck && same(&v.plan, &plan))
            .filter(|_| label.ends_with("input-sparse products"))
        {
            println!(
                "{model} {label}: the same dispatches as \"{}\" (no layer of this model takes \
                 them): not timed",
                twin.label
            );
            continue;
        }
        // Warm-up: five steps, the first timed alone for the estimate below.
        let warm = infos.len().min(5);
        let t = Instant::now();
        session.run_steps(&plan, &infos[..1])?;
        session.gpu.wait()?;
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        session.run_steps(&plan, &infos[1..warm])?;
        session.gpu.wait()?;
        if !told {
            told = true;
            // The later warm-up steps where there are some (the first pays one-time costs).
            let per_step = if warm > 1 {
                t.elapsed().as_secs_f64() / (warm - 1) as f64
            } else {
                first
            };
            let timed = per_step * steps as f64 * n_specs as f64 * rounds.max(1) as f64;
            // The profile's steps where the adapter has timestamps (a host profile times each
            // dispatch alone instead: about as long).
            let profiled = if profile {
                per_step * 2.0 * PROFILE_STEPS as f64
            } else {
                0.0
            };
            let total = timed + profiled + set_up.elapsed().as_secs_f64() * n_specs as f64;
            if total > 60.0 {
                eprintln!(
                    "{model}: about {:.2} s a step here: {} variants x {} x {}{} take about {} \
                     (fewer --steps or --rounds shorten it{})",
                    per_step,
                    n_specs,
                    crate::report::plural(rounds.max(1) as usize, "round"),
                    crate::report::plural(steps as usize, "step"),
                    if profile {
                        ", and --profile's own steps".to_string()
                    } else {
                        String::new()
                    },
                    crate::report::eta_text(total as u64),
                    if profile {
                        "; --profile's steps stay"
                    } else {
                        ""
                    }
                );
            }
        }
        variants.push(Variant {
            label: label.to_string(),
            session,
            plan,
            kept_at_checkpoint,
        });
    }
    // times[round][variant]; odd rounds run the variants in reverse order, so a machine that
    // slows down or speeds up steadily during a round favours no variant over two rounds.
    let mut times = Vec::new();
    let started = Instant::now();
    for r in 0..rounds.max(1) {
        // Where a round takes a while (a CIFAR-10 model on a CPU adapter), how far it is.
        if r > 0 && started.elapsed().as_secs_f64() > 2.0 {
            let per = started.elapsed().as_secs_f64() / r as f64;
            eprintln!(
                "{model}: round {r} of {} timed; about {} left",
                rounds.max(1),
                crate::report::eta_text((per * (rounds.max(1) - r) as f64) as u64)
            );
        }
        let mut row = vec![0.0; variants.len()];
        for i in round_order(variants.len(), r) {
            let v = &variants[i];
            let t = Instant::now();
            v.session.run_steps(&v.plan, &infos)?;
            v.session.gpu.wait()?;
            row[i] = 1e3 * t.elapsed().as_secs_f64() / steps as f64;
        }
        times.push(row);
    }
    // A variant from the checkpoint is labelled with the checkpoint's keep ratio, and with the
    // one the warm-up and timed steps (the bench's alpha and learning rate, not the run's)
    // left, where they moved it.
    for v in &mut variants {
        if let Some(at) = v.kept_at_checkpoint {
            let now = kept_share(&v.session)?;
            v.label = if (100.0 * (now - at)).abs() >= 0.005 {
                format!(
                    "{} ({:.2} % kept; {:.2} % after the timed steps)",
                    v.label,
                    100.0 * at,
                    100.0 * now
                )
            } else {
                format!("{} ({:.2} % kept)", v.label, 100.0 * at)
            };
        }
    }
    let mean = |i: usize| times.iter().map(|r| r[i]).sum::<f64>() / times.len() as f64;
    // The variants by what they are (one may have been left out above).
    let at = |name: &str| variants.iter().position(|v| v.label.starts_with(name));
    // Each round's ratio, then their median: a burst of load on a shared machine moves a few
    // rounds, which a mean would spread over the figure.
    let ratios = |i: usize, j: usize| -> Vec<f64> { times.iter().map(|r| r[i] / r[j]).collect() };
    let ratio = |i: usize, j: usize| median(&mut ratios(i, j));
    // From 4 rounds on, the main ratios also say how far the rounds spread; with fewer, that
    // they cannot (one round's ratio moves by tens of percent on a shared machine).
    let spread = |i: usize, j: usize| match quartiles(&mut ratios(i, j)) {
        Some((q1, _, q3)) if times.len() >= 4 => {
            format!(
                " [median of {} rounds; quartiles {q1:.3}-{q3:.3}]",
                times.len()
            )
        }
        _ => format!(
            " [{}: no spread to judge it by; --rounds 4 or more gives quartiles]",
            match times.len() {
                1 => "one round".to_string(),
                n => format!("median of {n} rounds"),
            }
        ),
    };
    for (i, v) in variants.iter().enumerate() {
        let per_round: Vec<String> = times.iter().map(|r| format!("{:.3}", r[i])).collect();
        println!(
            "{model} {:<48} (batch {batch}, {} dispatches): {:.3} ms  [rounds: {}]",
            v.label,
            v.plan.dispatches.len(),
            mean(i),
            per_round.join(", ")
        );
    }
    println!(
        "{model} DST / dense step time: {:.3} ({:.3} with dense products){}",
        ratio(1, 0),
        ratio(2, 0),
        spread(1, 0)
    );
    let from_ck = at("DST from checkpoint (");
    if let Some(ck_i) = from_ck {
        let mut others = Vec::new();
        for (name, what) in [
            ("DST from checkpoint, dense products", "dense products"),
            (
                "DST from checkpoint, weight-sparse products",
                "weight-sparse products",
            ),
            (
                "DST from checkpoint, input-sparse products",
                "input-sparse products",
            ),
        ] {
            if let Some(i) = at(name) {
                others.push(format!("{:.3} with {what}", ratio(i, 0)));
            }
        }
        println!(
            "{model} DST from checkpoint / dense step time: {:.3} ({}){}",
            ratio(ck_i, 0),
            others.join(", "),
            spread(ck_i, 0)
        );
    }
    if profile {
        // The dense step beside DST with the adapter's defaults (from the checkpoint when given,
        // else from scratch), per layer and kernel: the rows they share bound what DST's
        // sparsity can save.
        let dst = from_ck.unwrap_or(1);
        let mut how = String::new();
        let mut per = Vec::new();
        for v in [&variants[0], &variants[dst]] {
            let p = match gpu_profile(&v.session, &v.plan, PROFILE_STEPS)? {
                Some(p) => {
                    how = format!(
                        "GPU timestamps around each dispatch, median of {PROFILE_STEPS} steps"
                    );
                    p
                }
                None => {
                    how = "each dispatch timed alone on the host, 5 reps: submission overhead included"
                        .to_string();
                    wall_profile(&v.session.gpu, &v.plan)?
                }
            };
            per.push(p);
        }
        print_profiles(
            &how,
            [variants[0].label.as_str(), variants[dst].label.as_str()],
            &per,
        );
    }
    Ok(())
}

/// Prints two per-layer, per-kernel profiles side by side (rows in the order of the first's
/// time, then the second's), with their totals and the time the two spend in the same rows.
fn print_profiles(how: &str, labels: [&str; 2], per: &[Vec<(String, f64, usize)>]) {
    let mut keys: Vec<&str> = per[0].iter().map(|e| e.0.as_str()).collect();
    for e in &per[1] {
        if !keys.contains(&e.0.as_str()) {
            keys.push(&e.0);
        }
    }
    let total = |p: &[(String, f64, usize)]| p.iter().map(|e| e.1).sum::<f64>();
    let (t0, t1) = (total(&per[0]), total(&per[1]));
    println!(
        "  per-kernel profiles ({how}; a dispatch a layer's switch turned off counts, empty), ms and % of the step; A: \"{}\", B: \"{}\":",
        labels[0], labels[1]
    );
    println!("  {:<48} {:>22} {:>22}", "layer    kernel", "A", "B");
    let cell = |p: &[(String, f64, usize)], k: &str, t: f64| match p.iter().find(|e| e.0 == k) {
        Some((_, sec, n)) => format!("{n:>3} x {:>7.3} {:>5.1} %", 1e3 * sec, 100.0 * sec / t),
        None => "-".to_string(),
    };
    for k in keys {
        println!(
            "  {k:<48} {:>22} {:>22}",
            cell(&per[0], k, t0),
            cell(&per[1], k, t1)
        );
    }
    println!(
        "  {:<48} {:>16.3} ms {:>16.3} ms",
        "total",
        1e3 * t0,
        1e3 * t1
    );
    // A row both steps run costs B at least what it costs A unless B's switch routed it off
    // (then B's time is an empty dispatch's): per row the smaller of the two.
    let shared: f64 = per[0]
        .iter()
        .filter_map(|e| per[1].iter().find(|f| f.0 == e.0).map(|f| e.1.min(f.1)))
        .sum();
    println!(
        "  in rows both have (per row the smaller time): {:.3} ms, {:.1} % of A",
        1e3 * shared,
        100.0 * shared / t0
    );
    // What each step runs that the other does not, by kernel family (e.g. DST's mask passes
    // and its sparse products): with the adapter's cost per dispatch (`dst bench`'s overhead
    // line) this says what a step's own work must shrink to for a given ratio.
    for (name, mine, other) in [("A", &per[0], &per[1]), ("B", &per[1], &per[0])] {
        let groups = family_sums(mine, other);
        if groups.is_empty() {
            continue;
        }
        let parts: Vec<String> = groups
            .iter()
            .map(|(f, sec, n)| {
                let what = if *n == 1 { "dispatch" } else { "dispatches" };
                format!("{f} {:.3} ms ({n} {what})", 1e3 * sec)
            })
            .collect();
        println!(
            "  in rows only {name} has, by kernel family: {}",
            parts.join(", ")
        );
    }
}

/// The rows of `rows` (profile rows: "layer  family.kernel", seconds, dispatches) whose key
/// `other` lacks, summed per kernel family (the kernel label's part before its '.'), in order
/// of first appearance.
fn family_sums(
    rows: &[(String, f64, usize)],
    other: &[(String, f64, usize)],
) -> Vec<(String, f64, usize)> {
    let mut out: Vec<(String, f64, usize)> = Vec::new();
    for (key, sec, n) in rows {
        if other.iter().any(|o| &o.0 == key) {
            continue;
        }
        let kernel = key.split_whitespace().last().unwrap_or(key);
        let family = kernel.split('.').next().unwrap_or(kernel);
        match out.iter_mut().find(|g| g.0 == family) {
            Some(g) => {
                g.1 += sec;
                g.2 += n;
            }
            None => out.push((family.to_string(), *sec, *n)),
        }
    }
    out
}

/// `count` random images of CIFAR-10's shape and normalisation, augmented like its training set.
fn synthetic_cifar(count: usize) -> crate::data::Dataset {
    let mut rng = Rng::new(7);
    crate::data::Dataset {
        images: (0..count * 3 * 32 * 32)
            .map(|_| rng.below(256) as u8)
            .collect(),
        labels: (0..count).map(|_| rng.below(10) as u8).collect(),
        count,
        rows: 32,
        cols: 32,
        classes: 10,
        channels: 3,
        normalize: Some(crate::data::cifar::normalize()),
        augment: true,
    }
}

/// A rate (GFLOP/s) with two decimals, or with three significant digits below 0.01: a tiny product
/// timed on a busy machine shows what it measured, never a 0.00 that reads as "not timed".
fn rate(v: f64) -> String {
    if v == 0.0 || v.abs() >= 0.01 || !v.is_finite() {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::{family_sums, median, quartiles, rate, round_order};

    #[test]
    fn family_sums_groups_only_the_rows_the_other_step_lacks() {
        let row = |k: &str, s: f64, n: usize| (k.to_string(), s, n);
        let dst = [
            row("step     data.gather4", 0.2, 1),
            row("fc1      masked.mask_reset", 0.05, 1),
            row("fc1      sparse.masked_columns4", 0.17, 1),
            row("fc2      masked.threshold_grad", 0.03, 2),
            row("fc2      sparse.ell_input_product_compacted_sg", 0.12, 1),
        ];
        let dense = [
            row("step     data.gather4", 0.21, 1),
            row("fc1      gemm.gemm_nt_vec4_sg", 2.2, 1),
        ];
        let g = family_sums(&dst, &dense);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].0.as_str(), g[0].2), ("masked", 3));
        assert!((g[0].1 - 0.08).abs() < 1e-12);
        assert_eq!((g[1].0.as_str(), g[1].2), ("sparse", 2));
        assert!((g[1].1 - 0.29).abs() < 1e-12);
        let g = family_sums(&dense, &dst);
        assert_eq!(g, vec![row("gemm", 2.2, 1)]);
        assert!(family_sums(&dense, &dense).is_empty());
    }

    #[test]
    fn rates_below_a_hundredth_keep_their_digits() {
        assert_eq!(rate(12.345), "12.35");
        assert_eq!(rate(0.01), "0.01");
        assert_eq!(rate(0.0), "0.00");
        assert_eq!(rate(0.004321), "4.32e-3");
        assert!(rate(0.004321).parse::<f64>().unwrap() > 0.0);
    }

    #[test]
    fn median_of_odd_even_and_empty_lengths() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        // One stalled step does not move it (their mean is 21).
        assert_eq!(median(&mut [1.0, 100.0, 2.0, 0.5, 1.5]), 1.5);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn quartiles_are_the_halves_medians() {
        assert_eq!(quartiles(&mut []), None);
        assert_eq!(quartiles(&mut [2.0]), None);
        assert_eq!(quartiles(&mut [2.0, 1.0]), Some((1.0, 1.5, 2.0)));
        // Odd: the middle value belongs to both halves.
        assert_eq!(
            quartiles(&mut [5.0, 1.0, 4.0, 2.0, 3.0]),
            Some((2.0, 3.0, 4.0))
        );
        // Even: 1 2 | 3 4 5 | 6 7 8 -> halves 1-4 and 5-8.
        assert_eq!(
            quartiles(&mut [8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]),
            Some((2.5, 4.5, 6.5))
        );
        // An outlier moves neither hinge.
        assert_eq!(
            quartiles(&mut [0.7, 0.72, 0.69, 9.0, 0.71]),
            Some((0.7, 0.71, 0.72))
        );
    }

    #[test]
    fn odd_rounds_run_the_variants_in_reverse() {
        assert_eq!(round_order(3, 0), vec![0, 1, 2]);
        assert_eq!(round_order(3, 1), vec![2, 1, 0]);
        assert_eq!(round_order(3, 2), vec![0, 1, 2]);
        let mut seen = round_order(7, 5);
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
}
