//! The LSTM layer (`nn::lstm`: shaders/lstm.wgsl with the GEMM and masked kernels) built as a
//! plan exactly as a model builds it, against the f64 twin `reference::lstm`, finite differences
//! of that twin, and PyTorch's float64 golden values (tests/golden/golden_masked_lstm.json).

use dst::gpu::Tensor;
use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, GemmVariant, StepInfo};
use dst::nn::lstm::{Lstm, LstmIds, LstmInput, LstmOutput};
use dst::nn::{Arena, ArenaBuilder, Layer, Mode, PlanCx};
use dst::reference::lstm::{self as rl, Dims};
use dst::reference::{masked as rmasked, optim as roptim};
use dst::rng::Rng;
use serde_json::Value;
use std::sync::atomic::Ordering;

use crate::common::*;
use crate::masked::flat;

/// One layer's problem: sizes, layouts, parameters (f32-representable), input, upstream gradient.
struct Problem {
    d: Dims,
    input: LstmInput,
    output: LstmOutput,
    p: rl::Params,
    /// Batch-major (B, T, I).
    x_bm: Vec<f64>,
    /// Time-major (T, B, H) for a sequence output, (B, H) for the last h.
    dy: Vec<f64>,
    alpha: f64,
}

fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn rounded(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x as f32 as f64).collect()
}

impl Problem {
    fn random(rng: &mut Rng, d: Dims, input: LstmInput, output: LstmOutput, masked: bool) -> Self {
        let (b, t, i, h) = (d.batch, d.steps, d.input, d.hidden);
        let mut u = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
            rounded((0..n).map(|_| rng.range(lo, hi)).collect())
        };
        let w_ih = u(4 * h * i, -0.8, 0.8);
        let w_hh = u(4 * h * h, -0.8, 0.8);
        let bias = u(4 * h, -0.5, 0.5);
        let (t_ih, t_hh) = if masked {
            (Some(u(4 * h, -0.05, 0.3)), Some(u(4 * h, -0.05, 0.3)))
        } else {
            (None, None)
        };
        let x_bm = u(b * t * i, -1.0, 1.0);
        let dy_len = match output {
            LstmOutput::Sequence => t * b * h,
            LstmOutput::Last => b * h,
        };
        let dy = u(dy_len, -1.0, 1.0);
        Problem {
            d,
            input,
            output,
            p: rl::Params {
                w_ih,
                w_hh,
                bias,
                t_ih,
                t_hh,
            },
            x_bm,
            dy,
            alpha: 0.01,
        }
    }

    fn x_tm(&self) -> Vec<f64> {
        rl::swap01(&self.x_bm, self.d.batch, self.d.steps, self.d.input)
    }

    /// dL/dh_t for every step, time-major (zero except the last step for a last-h output).
    fn dh_seq(&self) -> Vec<f64> {
        let (b, t, h) = (self.d.batch, self.d.steps, self.d.hidden);
        match self.output {
            LstmOutput::Sequence => self.dy.clone(),
            LstmOutput::Last => {
                let mut v = vec![0.0; t * b * h];
                v[(t - 1) * b * h..].copy_from_slice(&self.dy);
                v
            }
        }
    }

    fn reference(&self) -> rl::Layer {
        rl::layer(&self.x_tm(), &self.p, &self.dh_seq(), self.d, self.alpha)
    }
}

/// The layer's plan on the GPU with its arena, input and upstream gradient.
struct Built {
    arena: Arena,
    layer: Lstm,
    ids: LstmIds,
    x: Tensor,
    y: Tensor,
    dx: Option<Tensor>,
    stats: Tensor,
    /// Forward (+ penalty) dispatches, then backward ones.
    forward: Vec<dst::kernels::Dispatch>,
    backward: Vec<dst::kernels::Dispatch>,
    /// Buffers the forward saved (poisoned before a run).
    saved: Vec<Tensor>,
    /// The switch of the listed steps (`sparse_keep_lstm` > 0, masked).
    switch: Option<Tensor>,
}

fn build(c: &Ctx, pr: &Problem, mode: Mode) -> Built {
    build_with(c, pr, mode, 0.0)
}

/// `build` with the plan's `sparse_keep_lstm` (the listed recurrent steps where P_hh keeps at
/// most that fraction).
fn build_with(c: &Ctx, pr: &Problem, mode: Mode, sparse_keep_lstm: f64) -> Built {
    let Dims {
        batch: b,
        steps: t,
        input: i,
        hidden: h,
    } = pr.d;
    let masked = pr.p.t_ih.is_some();
    let mut ab = ArenaBuilder::default();
    let ids = Lstm::declare(&mut ab, "lstm", i, h, masked);
    let layout = ab.layout(c.gpu.limits.min_storage_buffer_offset_alignment as u64);
    let mut init = vec![0.0f32; layout.total];
    let mut put = |name: &str, v: &[f64]| {
        let e = layout.find(name).unwrap();
        assert_eq!(e.len(), v.len(), "{name}");
        init[e.offset..e.offset + v.len()].copy_from_slice(&f32v(v));
    };
    put("lstm.weight_ih", &pr.p.w_ih);
    put("lstm.weight_hh", &pr.p.w_hh);
    put("lstm.bias", &pr.p.bias);
    if let (Some(ti), Some(th)) = (&pr.p.t_ih, &pr.p.t_hh) {
        put("lstm.threshold_ih", ti);
        put("lstm.threshold_hh", th);
    }
    let arena = Arena::new(&c.gpu, layout, &init, true).unwrap();
    let layer = Lstm::new(&c.gpu, "lstm", i, h, t, pr.input, pr.output, ids).unwrap();
    let x = match pr.input {
        LstmInput::BatchMajor => c.tensor("x", &[b, t * i], &f32v(&pr.x_bm)),
        LstmInput::TimeMajor => c.tensor("x", &[t, b, i], &f32v(&pr.x_tm())),
    };
    let dy = match pr.output {
        LstmOutput::Sequence => c.tensor("dy", &[t, b, h], &f32v(&pr.dy)),
        LstmOutput::Last => c.tensor("dy", &[b, h], &f32v(&pr.dy)),
    };
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    let mut cx = PlanCx::new(
        &c.gpu,
        &c.k,
        &arena,
        &c.step,
        mode,
        pr.alpha as f32,
        stats.clone(),
    );
    cx.sparse_keep_lstm = sparse_keep_lstm;
    let y = layer.forward(&mut cx, &x).unwrap();
    layer.penalty(&mut cx).unwrap();
    let n_fwd = cx.dispatches.len();
    let saved: Vec<Tensor> = ["x_tm", "h_pad", "c_pad", "gates"]
        .iter()
        .map(|k| cx.saved(&format!("lstm.{k}")))
        .collect();
    let switch = cx
        .has_saved("lstm.switch_hh")
        .then(|| cx.saved("lstm.switch_hh"));
    let dx = if mode == Mode::Train {
        layer.backward(&mut cx, &x, &y, &dy, true).unwrap()
    } else {
        None
    };
    let mut forward = cx.dispatches;
    let backward = forward.split_off(n_fwd);
    Built {
        arena,
        layer,
        ids,
        x,
        y,
        dx,
        stats,
        forward,
        backward,
        saved,
        switch,
    }
}

impl Built {
    fn poison(&self, c: &Ctx) {
        let nan = |t: &Tensor| c.gpu.write(t, &vec![f32::NAN; t.len()]);
        nan(&self.y);
        if let Some(dx) = &self.dx {
            nan(dx);
        }
        nan(&self.arena.grads);
        // The states and gates (x_tm only where the layer made its own copy).
        for t in &self.saved[1..] {
            nan(t);
        }
        if !std::sync::Arc::ptr_eq(&self.saved[0].buffer, &self.x.buffer) {
            nan(&self.saved[0]);
        }
    }

    fn run(&self, c: &Ctx) {
        let all: Vec<_> = self.forward.iter().chain(&self.backward).cloned().collect();
        run_once(&c.gpu, &all, 0).unwrap();
    }

    fn grad(&self, c: &Ctx, id: dst::nn::ParamId) -> Vec<f32> {
        c.read(&self.arena.grad(id))
    }
}

/// GPU layer vs the f64 twin: output, dx, every gradient, thresholds after the forward, penalty,
/// keep counters.
fn check_against_reference(c: &Ctx, pr: &Problem, tag: &str) {
    let bt = build(c, pr, Mode::Train);
    bt.poison(c);
    bt.run(c);
    let r = pr.reference();
    let Dims {
        batch: b,
        steps: t,
        input: i,
        hidden: h,
    } = pr.d;
    let y_ref: Vec<f64> = match pr.output {
        LstmOutput::Sequence => r.fwd.h.clone(),
        LstmOutput::Last => r.fwd.h[(t - 1) * b * h..].to_vec(),
    };
    // Sums over a few dozen f32 terms through a few steps: 2e-6 absolute + 2e-5 relative.
    let (atol, rtol) = (2e-6, 2e-5);
    assert_close(&format!("{tag} y"), &c.read(&bt.y), &y_ref, atol, rtol);
    let dx_ref = match pr.input {
        LstmInput::BatchMajor => rl::swap01(&r.bwd.dx, t, b, i),
        LstmInput::TimeMajor => r.bwd.dx.clone(),
    };
    let dx = bt.dx.as_ref().unwrap();
    assert_eq!(dx.shape, bt.x.shape, "{tag}: dx has x's shape");
    assert_close(&format!("{tag} dx"), &c.read(dx), &dx_ref, atol, rtol);
    // Weight gradients sum over T*B rows.
    let (gatol, grtol) = (1e-5, 1e-4);
    assert_close(
        &format!("{tag} d_bias"),
        &bt.grad(c, bt.ids.bias),
        &r.bwd.d_bias,
        gatol,
        grtol,
    );
    assert_close(
        &format!("{tag} d_weight_ih"),
        &bt.grad(c, bt.ids.weight_ih),
        &r.d_w_ih,
        gatol,
        grtol,
    );
    assert_close(
        &format!("{tag} d_weight_hh"),
        &bt.grad(c, bt.ids.weight_hh),
        &r.d_w_hh,
        gatol,
        grtol,
    );
    if let (Some(ti), Some(th)) = (bt.ids.threshold_ih, bt.ids.threshold_hh) {
        assert_close(
            &format!("{tag} d_threshold_ih"),
            &bt.grad(c, ti),
            &r.d_t_ih,
            gatol,
            grtol,
        );
        assert_close(
            &format!("{tag} d_threshold_hh"),
            &bt.grad(c, th),
            &r.d_t_hh,
            gatol,
            grtol,
        );
        assert_close(
            &format!("{tag} thresholds ih after forward"),
            &c.read(&bt.arena.param(ti)),
            r.t_ih.as_ref().unwrap(),
            0.0,
            0.0,
        );
        assert_close(
            &format!("{tag} thresholds hh after forward"),
            &c.read(&bt.arena.param(th)),
            r.t_hh.as_ref().unwrap(),
            0.0,
            0.0,
        );
        let pen = f32::from_bits(c.read_u32(&bt.stats)[1]) as f64;
        assert!(
            (pen - r.penalty).abs() <= 1e-5 * r.penalty,
            "{tag} penalty {pen} vs {}",
            r.penalty
        );
        let views = bt.layer.mask_views();
        assert_eq!(views.len(), 8);
        for (v, (counts, resets)) in views.iter().zip(
            r.counts_ih
                .iter()
                .zip(&r.resets_ih)
                .chain(r.counts_hh.iter().zip(&r.resets_hh)),
        ) {
            let lk = c.read_u32(&v.layer_keep);
            assert_eq!(
                [lk[0], lk[1], lk[2]],
                [counts[0], counts[1], *resets as u32],
                "{tag} {} counters",
                v.name
            );
        }
    } else {
        assert!(bt.layer.mask_views().is_empty());
    }
}

#[test]
fn lstm_layer_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(101);
    let sizes = [
        Dims {
            batch: 3,
            steps: 4,
            input: 7,
            hidden: 5,
        },
        Dims {
            batch: 1,
            steps: 1,
            input: 3,
            hidden: 2,
        },
        Dims {
            batch: 1,
            steps: 5,
            input: 4,
            hidden: 3,
        },
        // More than one workgroup of hidden units and more than one dot-product tile.
        Dims {
            batch: 2,
            steps: 3,
            input: 9,
            hidden: 70,
        },
        // Hidden sizes the blocked kernels take (H % 4 == 0): a batch that is not a whole number
        // of their row blocks, and H % 8 == 4 (the backward's second unit quad clamped).
        Dims {
            batch: 3,
            steps: 4,
            input: 7,
            hidden: 8,
        },
        Dims {
            batch: 10,
            steps: 3,
            input: 5,
            hidden: 36,
        },
    ];
    // Every recurrent kernel set: plain (CPU adapters' fallback), the split steps (GPUs), the
    // register-blocked steps (CPU adapters, H % 4 == 0).
    let flags = &c.k.lstm;
    let defaults = (
        flags.split.load(Ordering::Relaxed),
        flags.blocked.load(Ordering::Relaxed),
    );
    for (split, blocked) in [(false, false), (true, false), (false, true)] {
        flags.split.store(split, Ordering::Relaxed);
        flags.blocked.store(blocked, Ordering::Relaxed);
        for d in sizes {
            for input in [LstmInput::BatchMajor, LstmInput::TimeMajor] {
                for output in [LstmOutput::Sequence, LstmOutput::Last] {
                    for masked in [true, false] {
                        let pr = Problem::random(&mut rng, d, input, output, masked);
                        let tag = format!(
                            "{d:?} {input:?} {output:?} masked={masked} split={split} \
                             blocked={blocked}"
                        );
                        check_against_reference(&c, &pr, &tag);
                    }
                }
            }
        }
    }
    flags.split.store(defaults.0, Ordering::Relaxed);
    flags.blocked.store(defaults.1, Ordering::Relaxed);
}

/// The register-blocked steps (CPU adapters) give the same bits as the plain kernels: the same
/// multiply-adds in the same order. Every output of a training pass is compared (y, dx, every
/// gradient, the saved states and gates), and the plans are checked to run the kernels named.
#[test]
fn lstm_blocked_steps_equal_plain_bits() {
    let c = ctx();
    let mut rng = Rng::new(202);
    let flags = &c.k.lstm;
    let defaults = (
        flags.split.load(Ordering::Relaxed),
        flags.blocked.load(Ordering::Relaxed),
    );
    flags.split.store(false, Ordering::Relaxed);
    let sizes = [
        Dims {
            batch: 5,
            steps: 4,
            input: 6,
            hidden: 12,
        },
        Dims {
            batch: 17,
            steps: 3,
            input: 4,
            hidden: 72,
        },
    ];
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for d in sizes {
        for output in [LstmOutput::Sequence, LstmOutput::Last] {
            for masked in [true, false] {
                let pr = Problem::random(&mut rng, d, LstmInput::BatchMajor, output, masked);
                let tag = format!("{d:?} {output:?} masked={masked}");
                let mut results = Vec::new();
                for blocked in [false, true] {
                    flags.blocked.store(blocked, Ordering::Relaxed);
                    let bt = build(&c, &pr, Mode::Train);
                    let labels: Vec<&str> = bt
                        .forward
                        .iter()
                        .chain(&bt.backward)
                        .map(|d| d.label.as_str())
                        .collect();
                    let (fwd, bwd) = if blocked {
                        ("lstm.lstm_step_blocked", "lstm.lstm_step_backward_blocked")
                    } else {
                        ("lstm.lstm_step", "lstm.lstm_step_backward")
                    };
                    let count = |l: &str| labels.iter().filter(|x| **x == l).count();
                    assert_eq!(count(fwd), d.steps, "{tag} blocked={blocked}: {labels:?}");
                    assert_eq!(count(bwd), d.steps, "{tag} blocked={blocked}: {labels:?}");
                    bt.poison(&c);
                    bt.run(&c);
                    let mut out = vec![
                        bits(c.read(&bt.y)),
                        bits(c.read(bt.dx.as_ref().unwrap())),
                        bits(c.read(&bt.arena.grads)),
                    ];
                    out.extend(bt.saved[1..].iter().map(|t| bits(c.read(t))));
                    results.push(out);
                }
                let names = ["y", "dx", "gradients", "h_pad", "c_pad", "gates"];
                for (k, name) in names.iter().enumerate() {
                    assert!(
                        results[0][k] == results[1][k],
                        "{tag}: {name} differs between the plain and the blocked kernels"
                    );
                }
            }
        }
    }
    flags.split.store(defaults.0, Ordering::Relaxed);
    flags.blocked.store(defaults.1, Ordering::Relaxed);
}

/// The listed recurrent steps (a masked layer whose P_hh keeps few weights) and P_ih's listed
/// products give the dense products' bits on CPU adapters (the same multiply-adds in the same
/// order less those with a zero weight; GPUs: within 1e-4, their dense kernels sum in other
/// orders). Every output of
/// a training pass is compared (y, dx, every gradient, the saved states and gates) on masks that
/// keep about 5 %, 30 % and all of P_hh, with the default kernels (blocked on CPU adapters) and
/// with the plain ones; the plans route the steps through the switch, which picks the listed
/// steps only where P_hh keeps at most the plan's fraction (0.1 here against 30 % kept: dense).
#[test]
fn lstm_listed_steps_equal_dense_bits() {
    let c = ctx();
    let mut rng = Rng::new(203);
    let flags = &c.k.lstm;
    let default_blocked = flags.blocked.load(Ordering::Relaxed);
    // A batch of 70: the listed steps' second workgroup of batch rows, partly filled.
    let sizes = [(5, 4, 6, 12), (70, 3, 4, 8)].map(|(batch, steps, input, hidden)| Dims {
        batch,
        steps,
        input,
        hidden,
    });
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for (d, output) in [
        (sizes[0], LstmOutput::Sequence),
        (sizes[0], LstmOutput::Last),
        (sizes[1], LstmOutput::Sequence),
    ] {
        for keep in [0.05, 0.3, 1.0] {
            let mut pr = Problem::random(&mut rng, d, LstmInput::BatchMajor, output, true);
            // Thresholds that keep about `keep` of P_hh (|w| uniform below 0.8), all of P_ih.
            let t_keep = vec![0.8 * (1.0 - keep) - 1e-3; 4 * d.hidden];
            pr.p.t_hh = Some(t_keep.clone());
            pr.p.t_ih = Some(t_keep);
            for blocked in [false, true] {
                flags.blocked.store(blocked, Ordering::Relaxed);
                let tag = format!("{d:?} {output:?} keep {keep} blocked {blocked}");
                let mut results = Vec::new();
                for listed in [0.0, 1.0, 0.1] {
                    let bt = build_with(&c, &pr, Mode::Train, listed);
                    let routed = |l: &str| {
                        bt.forward
                            .iter()
                            .chain(&bt.backward)
                            .filter(|x| x.label == l && x.indirect.is_some())
                            .count()
                    };
                    let want = if listed > 0.0 { d.steps } else { 0 };
                    assert_eq!(routed("lstm.lstm_step_listed"), want, "{tag}");
                    assert_eq!(routed("lstm.lstm_step_backward_listed"), want, "{tag}");
                    // P_ih's listed input projection and product to the input.
                    let want = if listed > 0.0 { 2 } else { 0 };
                    let products = routed("sparse.ell_product") + routed("sparse.ell_product4");
                    assert_eq!(products, want, "{tag}");
                    assert_eq!(bt.switch.is_some(), listed > 0.0, "{tag}");
                    bt.poison(&c);
                    bt.run(&c);
                    // The switch's live counts: slot 2 (the listed forward steps) runs exactly
                    // where P_hh keeps at most the plan's fraction, slot 3 (the dense ones)
                    // elsewhere.
                    if let Some(sw) = &bt.switch {
                        let words = c.read_u32(sw);
                        let on = |slot: usize| words[3 * slot..3 * slot + 3] != [0, 0, 0];
                        let listed_runs = keep <= listed + 0.02;
                        assert_eq!(on(2), listed_runs, "{tag} listed {listed}: {words:?}");
                        assert_eq!(on(3), !listed_runs, "{tag} listed {listed}: {words:?}");
                    }
                    let mut out = vec![
                        bits(c.read(&bt.y)),
                        bits(c.read(bt.dx.as_ref().unwrap())),
                        bits(c.read(&bt.arena.grads)),
                    ];
                    out.extend(bt.saved[1..].iter().map(|t| bits(c.read(t))));
                    results.push(out);
                }
                let names = ["y", "dx", "gradients", "h_pad", "c_pad", "gates"];
                // Bit for bit on CPU adapters; GPUs sum the dense products in other orders (the
                // split backward step, tiled GEMMs).
                let exact = c.gpu.class == dst::gpu::AdapterClass::Cpu;
                let same = |a: &[u32], b: &[u32]| {
                    a.iter().zip(b).all(|(x, y)| {
                        let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
                        if exact {
                            x.to_bits() == y.to_bits()
                        } else {
                            (x - y).abs() <= 1e-4 * x.abs().max(1.0)
                        }
                    })
                };
                for (k, name) in names.iter().enumerate() {
                    assert!(
                        same(&results[0][k], &results[1][k]),
                        "{tag}: {name} differs between the dense and the listed products"
                    );
                    assert!(
                        same(&results[0][k], &results[2][k]),
                        "{tag}: {name} (switch at 0.1)"
                    );
                }
            }
        }
    }
    flags.blocked.store(default_blocked, Ordering::Relaxed);
}

/// Evaluation plans: the same batch twice gives the same bits, also with another batch in
/// between (every sequence starts from zero h and c; nothing is carried across batches).
#[test]
fn lstm_eval_starts_from_zero_states() {
    let c = ctx();
    let mut rng = Rng::new(7);
    let d = Dims {
        batch: 3,
        steps: 4,
        input: 5,
        hidden: 6,
    };
    for output in [LstmOutput::Sequence, LstmOutput::Last] {
        let pr = Problem::random(&mut rng, d, LstmInput::BatchMajor, output, true);
        let bt = build(&c, &pr, Mode::Eval);
        assert!(bt.backward.is_empty());
        bt.poison(&c);
        run_once(&c.gpu, &bt.forward, 0).unwrap();
        let y1 = c.read(&bt.y);
        run_once(&c.gpu, &bt.forward, 0).unwrap();
        let y2 = c.read(&bt.y);
        let other = rand_vec(&mut rng, bt.x.len(), -1.0, 1.0);
        c.gpu.write(&bt.x, &other);
        run_once(&c.gpu, &bt.forward, 0).unwrap();
        let y_other = c.read(&bt.y);
        c.gpu.write(&bt.x, &f32v(&pr.x_bm));
        run_once(&c.gpu, &bt.forward, 0).unwrap();
        let y3 = c.read(&bt.y);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y1), bits(&y2), "{output:?}: same batch twice");
        assert_eq!(bits(&y1), bits(&y3), "{output:?}: after another batch");
        assert_ne!(bits(&y1), bits(&y_other));
        let r = pr.reference();
        let (b, t, h) = (d.batch, d.steps, d.hidden);
        let want = match output {
            LstmOutput::Sequence => r.fwd.h.clone(),
            LstmOutput::Last => r.fwd.h[(t - 1) * b * h..].to_vec(),
        };
        assert_close(&format!("eval {output:?} y"), &y1, &want, 2e-6, 2e-5);
    }
}

/// One gate matrix (wh_f) whose thresholds exceed all its weights resets alone: its thresholds go
/// to 0 and it computes densely in this forward; the other seven keep theirs.
#[test]
fn lstm_gate_matrix_resets_alone() {
    let c = ctx();
    let mut rng = Rng::new(9);
    let d = Dims {
        batch: 2,
        steps: 3,
        input: 4,
        hidden: 5,
    };
    let mut pr = Problem::random(&mut rng, d, LstmInput::BatchMajor, LstmOutput::Last, true);
    let h = d.hidden;
    let th = pr.p.t_hh.as_mut().unwrap();
    for v in &mut th[h..2 * h] {
        *v = 2.0;
    }
    let r = pr.reference();
    assert_eq!(r.resets_ih, vec![false; 4]);
    assert_eq!(r.resets_hh, vec![false, true, false, false]);
    check_against_reference(&c, &pr, "reset wh_f");
    // Directly: the counters of the eight views and the thresholds.
    let bt = build(&c, &pr, Mode::Train);
    run_once(&c.gpu, &bt.forward, 0).unwrap();
    let views = bt.layer.mask_views();
    let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lstm.wx_i",
            "lstm.wx_f",
            "lstm.wx_g",
            "lstm.wx_o",
            "lstm.wh_i",
            "lstm.wh_f",
            "lstm.wh_g",
            "lstm.wh_o"
        ]
    );
    for (n, v) in views.iter().enumerate() {
        let lk = c.read_u32(&v.layer_keep);
        assert_eq!(lk[2], (n == 5) as u32, "{}: resets", v.name);
        assert_eq!(v.rows, h);
        assert_eq!(v.threshold_rows, (n % 4) * h..(n % 4 + 1) * h);
        if n == 5 {
            assert_eq!(lk[0], 0, "wh_f kept nothing before the reset");
            assert_eq!(lk[1] as usize, h * h, "wh_f dense after the reset");
        }
    }
    let t_hh = c.read(&bt.arena.param(bt.ids.threshold_hh.unwrap()));
    for (k, v) in t_hh.iter().enumerate() {
        let want = if (h..2 * h).contains(&k) {
            0.0
        } else {
            pr.p.t_hh.as_ref().unwrap()[k] as f32
        };
        assert_eq!(*v, want, "threshold_hh[{k}]");
    }
}

// ---- PyTorch golden values ----

const GOLDEN_NAMES: [&str; 8] = ["wxi", "wxf", "wxu", "wxo", "whi", "whf", "whu", "who"];

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/golden_masked_lstm.json")).unwrap()
}

/// The golden layer: B 2, T 4, I 5, H 3, batch-major input, sequence output.
fn golden_problem(g: &Value) -> Problem {
    let (b, t, i, h) = (2, 4, 5, 3);
    let m = &g["matrices"];
    let stack = |names: &[&str], what: &str| -> Vec<f64> {
        names.iter().flat_map(|n| flat(&m[*n][what])).collect()
    };
    let gy = flat(&g["grad_y"]); // (B, T, H)
    Problem {
        d: Dims {
            batch: b,
            steps: t,
            input: i,
            hidden: h,
        },
        input: LstmInput::BatchMajor,
        output: LstmOutput::Sequence,
        p: rl::Params {
            w_ih: stack(&GOLDEN_NAMES[..4], "weight"),
            w_hh: stack(&GOLDEN_NAMES[4..], "weight"),
            bias: flat(&g["bias"]),
            t_ih: Some(stack(&GOLDEN_NAMES[..4], "threshold")),
            t_hh: Some(stack(&GOLDEN_NAMES[4..], "threshold")),
        },
        x_bm: flat(&g["x"]),
        dy: rl::swap01(&gy, b, t, h),
        alpha: g["alpha"].as_f64().unwrap(),
    }
}

/// The per-matrix (rows of the stacked weight or threshold) slices, in golden order.
fn per_matrix(ih: &[f64], hh: &[f64], rows: usize) -> Vec<Vec<f64>> {
    let (ci, ch) = (ih.len() / (4 * rows), hh.len() / (4 * rows));
    let mut out = Vec::new();
    for g in 0..4 {
        out.push(ih[g * rows * ci..(g + 1) * rows * ci].to_vec());
    }
    for g in 0..4 {
        out.push(hh[g * rows * ch..(g + 1) * rows * ch].to_vec());
    }
    out
}

/// The f64 twin reproduces PyTorch's float64 numbers (no GPU).
#[test]
fn lstm_reference_matches_golden() {
    let g = golden();
    let pr = golden_problem(&g);
    let r = pr.reference();
    let close_to = |what: &str, got: &[f64], want: &[f64], tol: f64| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{k}]: {a} vs {b}"
            );
        }
    };
    let close = |what: &str, got: &[f64], want: &[f64]| close_to(what, got, want, 1e-12);
    // The estimator's H(q) takes q = |W| - t in f32, as the shader does (PyTorch: f64), so the
    // weight and threshold gradients agree to ~1e-9 rather than to rounding.
    let close_h = |what: &str, got: &[f64], want: &[f64]| close_to(what, got, want, 1e-8);
    let (b, t, h) = (2, 4, 3);
    close("y", &rl::swap01(&r.fwd.h, t, b, h), &flat(&g["y"]));
    close(
        "grad_x",
        &rl::swap01(&r.bwd.dx, t, b, 5),
        &flat(&g["grad_x"]),
    );
    close("grad_bias", &r.bwd.d_bias, &flat(&g["grad_bias"]));
    let dw = per_matrix(&r.d_w_ih, &r.d_w_hh, h);
    let dt = per_matrix(&r.d_t_ih, &r.d_t_hh, 1);
    for (n, name) in GOLDEN_NAMES.iter().enumerate() {
        let m = &g["matrices"][*name];
        close_h(
            &format!("{name} grad_weight"),
            &dw[n],
            &flat(&m["grad_weight"]),
        );
        close_h(
            &format!("{name} grad_threshold"),
            &dt[n],
            &flat(&m["grad_threshold"]),
        );
    }
    assert!(r.resets_ih.iter().chain(&r.resets_hh).all(|r| !r));
    let obj: f64 = r
        .fwd
        .h
        .iter()
        .zip(&pr.dh_seq())
        .map(|(a, b)| a * b)
        .sum::<f64>()
        + r.penalty;
    assert!((obj - g["objective"].as_f64().unwrap()).abs() < 1e-12);
    assert!((r.penalty - g["penalty"].as_f64().unwrap()).abs() < 1e-12);
}

/// The whole layer on the GPU against PyTorch's float64 values to 1e-5, then two Adam steps
/// (lr 1e-3) over the arena with these gradients.
#[test]
fn lstm_layer_matches_golden() {
    let c = ctx();
    let g = golden();
    let pr = golden_problem(&g);
    let bt = build(&c, &pr, Mode::Train);
    bt.poison(&c);
    bt.run(&c);
    let (b, t, i, h) = (2, 4, 5, 3);
    let tol = 1e-5;
    let y = to_f64(&c.read(&bt.y));
    assert_close(
        "golden y",
        &f32v(&rl::swap01(&y, t, b, h)),
        &flat(&g["y"]),
        tol,
        tol,
    );
    let dx = c.read(bt.dx.as_ref().unwrap());
    assert_eq!(dx.len(), b * t * i);
    assert_close("golden grad_x", &dx, &flat(&g["grad_x"]), tol, tol);
    assert_close(
        "golden grad_bias",
        &bt.grad(&c, bt.ids.bias),
        &flat(&g["grad_bias"]),
        tol,
        tol,
    );
    let rd = |id| to_f64(&bt.grad(&c, id));
    let dw = per_matrix(&rd(bt.ids.weight_ih), &rd(bt.ids.weight_hh), h);
    let dt = per_matrix(
        &rd(bt.ids.threshold_ih.unwrap()),
        &rd(bt.ids.threshold_hh.unwrap()),
        1,
    );
    let views = bt.layer.mask_views();
    for (n, name) in GOLDEN_NAMES.iter().enumerate() {
        let m = &g["matrices"][*name];
        assert_close(
            &format!("golden {name} grad_weight"),
            &f32v(&dw[n]),
            &flat(&m["grad_weight"]),
            tol,
            tol,
        );
        assert_close(
            &format!("golden {name} grad_threshold"),
            &f32v(&dt[n]),
            &flat(&m["grad_threshold"]),
            tol,
            tol,
        );
        let lk = c.read_u32(&views[n].layer_keep);
        let numel = (views[n].rows * views[n].cols) as f64;
        assert_eq!(
            lk[1] as f64 / numel,
            m["keep_ratio"].as_f64().unwrap(),
            "{name} keep"
        );
        assert_eq!(lk[2], 0, "{name}: no reset");
    }
    let pen = f32::from_bits(c.read_u32(&bt.stats)[1]) as f64;
    let pen_ref = g["penalty"].as_f64().unwrap();
    assert!(
        (pen - pen_ref).abs() <= 1e-6 * pen_ref,
        "golden penalty {pen} vs {pen_ref}"
    );

    // Two Adam steps with these gradients, through the arena's optimiser kernel.
    let adam = &g["adam"];
    let lr = adam["lr"].as_f64().unwrap();
    let (b1, b2) = (
        adam["betas"][0].as_f64().unwrap(),
        adam["betas"][1].as_f64().unwrap(),
    );
    let eps = adam["eps"].as_f64().unwrap();
    let a = &bt.arena;
    let d =
        c.k.optim
            .adam(
                &c.gpu, &a.params, &a.grads, &a.moment1, &a.moment2, b1, b2, eps, 0.0, &c.step,
            )
            .unwrap();
    for (step, key) in [(1u32, "after_step1"), (2, "after_step2")] {
        let (ss, bc2) = roptim::adam_step_values(step, lr, b1, b2);
        c.set_step(StepInfo {
            step,
            lr: lr as f32,
            adam_step_size: ss as f32,
            adam_bc2_sqrt: bc2 as f32,
            ..Default::default()
        });
        run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
        let want = &adam[key];
        let rp = |id| to_f64(&c.read(&a.param(id)));
        assert_close(
            &format!("adam {key} bias"),
            &f32v(&rp(bt.ids.bias)),
            &flat(&want["bias"]),
            1e-6,
            tol,
        );
        let w = per_matrix(&rp(bt.ids.weight_ih), &rp(bt.ids.weight_hh), h);
        let th = per_matrix(
            &rp(bt.ids.threshold_ih.unwrap()),
            &rp(bt.ids.threshold_hh.unwrap()),
            1,
        );
        for (n, name) in GOLDEN_NAMES.iter().enumerate() {
            assert_close(
                &format!("adam {key} {name}.weight"),
                &f32v(&w[n]),
                &flat(&want[format!("{name}.weight").as_str()]),
                1e-6,
                tol,
            );
            assert_close(
                &format!("adam {key} {name}.threshold"),
                &f32v(&th[n]),
                &flat(&want[format!("{name}.threshold").as_str()]),
                1e-6,
                tol,
            );
        }
    }
}

// ---- finite differences of the f64 twin (no GPU) ----

/// Antiderivative of the long-tailed estimator: d S~/dq = H (as in masked.rs).
fn smooth_step(q: f64) -> f64 {
    let a = q.abs();
    let v = if a <= 0.4 {
        2.0 * a - 2.0 * a * a
    } else if a <= 1.0 {
        0.48 + 0.4 * (a - 0.4)
    } else {
        0.72
    };
    v * q.signum()
}

/// A weight whose q = |w| - t keeps 1e-3 away from the step's jump and the estimator's kinks.
fn safe_weight(rng: &mut Rng, t: f64) -> f64 {
    loop {
        let v = rng.range(-1.2, 1.2) as f32 as f64;
        let q = v.abs() - t;
        if [0.0, 0.4, 1.0].iter().all(|e| (q.abs() - e).abs() > 1e-3) && v.abs() > 1e-3 {
            return v;
        }
    }
}

/// Whole-sequence gradients of the twin by central differences (T 3, H 5, B 2, I 4):
/// - x and bias: the true objective sum(gy * h) + alpha * sum exp(-t) (smooth there);
/// - weights: with the mask locally constant, the true objective's derivative is the
///   performance term G * M of BPTT's dL/dP;
/// - the full estimator (weights and thresholds, penalty included): the objective with
///   P~(W, t) = W * M0 + W0 * (S~(|W| - t) - S~(|W0| - t0)), whose exact gradient at the point is
///   the estimator (S~' = H), so BPTT + `mask_backward` must match its differences.
#[test]
fn lstm_reference_matches_finite_differences() {
    let mut rng = Rng::new(31);
    let d = Dims {
        batch: 2,
        steps: 3,
        input: 4,
        hidden: 5,
    };
    let (b, t, i, h) = (d.batch, d.steps, d.input, d.hidden);
    let g4 = 4 * h;
    let alpha = 0.2;
    let t_ih: Vec<f64> = (0..g4).map(|_| rng.range(-0.1, 0.4)).collect();
    let t_hh: Vec<f64> = (0..g4).map(|_| rng.range(-0.1, 0.4)).collect();
    let w_ih: Vec<f64> = (0..g4 * i)
        .map(|k| safe_weight(&mut rng, t_ih[k / i]))
        .collect();
    let w_hh: Vec<f64> = (0..g4 * h)
        .map(|k| safe_weight(&mut rng, t_hh[k / h]))
        .collect();
    let bias: Vec<f64> = (0..g4).map(|_| rng.range(-0.5, 0.5)).collect();
    let x: Vec<f64> = (0..t * b * i).map(|_| rng.range(-1.0, 1.0)).collect();
    let gy: Vec<f64> = (0..t * b * h).map(|_| rng.normal()).collect();
    let p = rl::Params {
        w_ih: w_ih.clone(),
        w_hh: w_hh.clone(),
        bias: bias.clone(),
        t_ih: Some(t_ih.clone()),
        t_hh: Some(t_hh.clone()),
    };
    let r = rl::layer(&x, &p, &gy, d, alpha);
    assert!(r.resets_ih.iter().chain(&r.resets_hh).all(|r| !r));
    let run = |x: &[f64], p_ih: &[f64], p_hh: &[f64], bias: &[f64]| -> f64 {
        let f = rl::forward(x, p_ih, p_hh, bias, d);
        f.h.iter().zip(&gy).map(|(a, b)| a * b).sum()
    };
    let true_obj = |x: &[f64], w_ih: &[f64], w_hh: &[f64], bias: &[f64]| -> f64 {
        let (p_ih, ..) = rl::effective(w_ih, Some(&t_ih), h, i);
        let (p_hh, ..) = rl::effective(w_hh, Some(&t_hh), h, h);
        run(x, &p_ih, &p_hh, bias) + rmasked::penalty(&t_ih, alpha) + rmasked::penalty(&t_hh, alpha)
    };
    let eps = 1e-6;
    let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
    let check = |what: &str, k: usize, got: f64, want: f64| {
        assert!(
            (got - want).abs() < 1e-6 * (1.0 + want.abs()),
            "{what}[{k}]: finite difference {got} vs {want}"
        );
    };
    for k in 0..x.len() {
        let v = fd(&|e| {
            let mut x2 = x.clone();
            x2[k] += e;
            true_obj(&x2, &w_ih, &w_hh, &bias)
        });
        check("dx", k, v, r.bwd.dx[k]);
    }
    for k in 0..g4 {
        let v = fd(&|e| {
            let mut b2 = bias.clone();
            b2[k] += e;
            true_obj(&x, &w_ih, &w_hh, &b2)
        });
        check("d_bias", k, v, r.bwd.d_bias[k]);
    }
    let m_ih: Vec<f64> = r.p_ih.iter().map(|&v| (v != 0.0) as u8 as f64).collect();
    let m_hh: Vec<f64> = r.p_hh.iter().map(|&v| (v != 0.0) as u8 as f64).collect();
    for k in 0..w_ih.len() {
        let v = fd(&|e| {
            let mut w2 = w_ih.clone();
            w2[k] += e;
            true_obj(&x, &w2, &w_hh, &bias)
        });
        check("performance dW_ih", k, v, r.bwd.d_p_ih[k] * m_ih[k]);
    }
    for k in 0..w_hh.len() {
        let v = fd(&|e| {
            let mut w2 = w_hh.clone();
            w2[k] += e;
            true_obj(&x, &w_ih, &w2, &bias)
        });
        check("performance dW_hh", k, v, r.bwd.d_p_hh[k] * m_hh[k]);
    }
    // The surrogate objective of the estimator.
    let surrogate = |w0: &[f64], t0: &[f64], m0: &[f64], w: &[f64], tt: &[f64], cols: usize| {
        (0..w.len())
            .map(|k| {
                let row = k / cols;
                w[k] * m0[k]
                    + w0[k]
                        * (smooth_step(w[k].abs() - tt[row]) - smooth_step(w0[k].abs() - t0[row]))
            })
            .collect::<Vec<f64>>()
    };
    let sur_obj = |wi: &[f64], ti: &[f64], wh: &[f64], th: &[f64]| -> f64 {
        let p_ih = surrogate(&w_ih, &t_ih, &m_ih, wi, ti, i);
        let p_hh = surrogate(&w_hh, &t_hh, &m_hh, wh, th, h);
        run(&x, &p_ih, &p_hh, &bias) + rmasked::penalty(ti, alpha) + rmasked::penalty(th, alpha)
    };
    for k in 0..w_ih.len() {
        let v = fd(&|e| {
            let mut w2 = w_ih.clone();
            w2[k] += e;
            sur_obj(&w2, &t_ih, &w_hh, &t_hh)
        });
        check("estimator dW_ih", k, v, r.d_w_ih[k]);
    }
    for k in 0..w_hh.len() {
        let v = fd(&|e| {
            let mut w2 = w_hh.clone();
            w2[k] += e;
            sur_obj(&w_ih, &t_ih, &w2, &t_hh)
        });
        check("estimator dW_hh", k, v, r.d_w_hh[k]);
    }
    for k in 0..g4 {
        let v = fd(&|e| {
            let mut t2 = t_ih.clone();
            t2[k] += e;
            sur_obj(&w_ih, &t2, &w_hh, &t_hh)
        });
        check("estimator dt_ih", k, v, r.d_t_ih[k]);
        let v = fd(&|e| {
            let mut t2 = t_hh.clone();
            t2[k] += e;
            sur_obj(&w_ih, &t_ih, &w_hh, &t2)
        });
        check("estimator dt_hh", k, v, r.d_t_hh[k]);
    }
}

/// Two stacked layers as LSTM-a wires them (lstm1: batch-major input -> time-major sequence;
/// lstm2: time-major input -> last h), in one plan and one arena, against the twin composed the
/// same way: lstm2's dx is lstm1's dy, and lstm1 computes no dx.
#[test]
fn lstm_two_layer_stack_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(55);
    let (b, t, i, h1, h2) = (3, 4, 7, 6, 5);
    let d1 = Dims {
        batch: b,
        steps: t,
        input: i,
        hidden: h1,
    };
    let d2 = Dims {
        batch: b,
        steps: t,
        input: h1,
        hidden: h2,
    };
    let p1 = Problem::random(
        &mut rng,
        d1,
        LstmInput::BatchMajor,
        LstmOutput::Sequence,
        true,
    );
    let p2 = Problem::random(&mut rng, d2, LstmInput::TimeMajor, LstmOutput::Last, true);
    let alpha = p1.alpha;
    // Reference: lstm2 on lstm1's sequence, then lstm1 with lstm2's dx as its upstream gradient.
    let x_tm = p1.x_tm();
    let fwd1 = {
        let (pi, ..) = rl::effective(&p1.p.w_ih, p1.p.t_ih.as_ref(), h1, i);
        let (ph, ..) = rl::effective(&p1.p.w_hh, p1.p.t_hh.as_ref(), h1, h1);
        rl::forward(&x_tm, &pi, &ph, &p1.p.bias, d1)
    };
    let r2 = rl::layer(&fwd1.h, &p2.p, &p2.dh_seq(), d2, alpha);
    let r1 = rl::layer(&x_tm, &p1.p, &r2.bwd.dx, d1, alpha);

    let mut ab = ArenaBuilder::default();
    let ids1 = Lstm::declare(&mut ab, "lstm1", i, h1, true);
    let ids2 = Lstm::declare(&mut ab, "lstm2", h1, h2, true);
    let layout = ab.layout(c.gpu.limits.min_storage_buffer_offset_alignment as u64);
    let mut init = vec![0.0f32; layout.total];
    for (name, pr) in [("lstm1", &p1), ("lstm2", &p2)] {
        for (what, v) in [
            ("weight_ih", &pr.p.w_ih),
            ("weight_hh", &pr.p.w_hh),
            ("bias", &pr.p.bias),
            ("threshold_ih", pr.p.t_ih.as_ref().unwrap()),
            ("threshold_hh", pr.p.t_hh.as_ref().unwrap()),
        ] {
            let e = layout.find(&format!("{name}.{what}")).unwrap();
            init[e.offset..e.offset + v.len()].copy_from_slice(&f32v(v));
        }
    }
    let arena = Arena::new(&c.gpu, layout, &init, true).unwrap();
    let l1 = Lstm::new(
        &c.gpu,
        "lstm1",
        i,
        h1,
        t,
        LstmInput::BatchMajor,
        LstmOutput::Sequence,
        ids1,
    )
    .unwrap();
    let l2 = Lstm::new(
        &c.gpu,
        "lstm2",
        h1,
        h2,
        t,
        LstmInput::TimeMajor,
        LstmOutput::Last,
        ids2,
    )
    .unwrap();
    assert_eq!(l1.output_shape(&[t, i]), vec![t, h1]);
    assert_eq!(l2.output_shape(&[t, h1]), vec![h2]);
    let x = c.tensor("x", &[b, t * i], &f32v(&p1.x_bm));
    let dy = c.tensor("dy", &[b, h2], &f32v(&p2.dy));
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    let mut cx = PlanCx::new(
        &c.gpu,
        &c.k,
        &arena,
        &c.step,
        Mode::Train,
        alpha as f32,
        stats.clone(),
    );
    let y1 = l1.forward(&mut cx, &x).unwrap();
    assert_eq!(y1.shape, vec![t, b, h1]);
    let y2 = l2.forward(&mut cx, &y1).unwrap();
    assert_eq!(y2.shape, vec![b, h2]);
    l1.penalty(&mut cx).unwrap();
    l2.penalty(&mut cx).unwrap();
    let dx2 = l2.backward(&mut cx, &y1, &y2, &dy, true).unwrap().unwrap();
    assert_eq!(dx2.shape, y1.shape);
    assert!(l1
        .backward(&mut cx, &x, &y1, &dx2, false)
        .unwrap()
        .is_none());
    // Masks 4 + input transpose 1 + projection 1 + recurrent-weight transpose 1 + T steps
    // (layer 1); 4 + 1 + 1 + T (layer 2); penalties 2 + 2; backward: T steps + dX + dP_ih + mask +
    // dP_hh + mask + bias (layer 2), the same without dX (layer 1). The bias gradient rides on
    // dP_ih's product on GPUs (`backward_weight_bias`); on CPU adapters these widths (7 and 6
    // inputs, not whole vec4s) keep its own pass.
    let bias = usize::from(c.k.gemm.variant != GemmVariant::Tiled);
    assert_eq!(
        cx.dispatches.len(),
        (7 + t) + (6 + t) + 4 + (5 + bias + t) + (4 + bias + t)
    );
    c.gpu.write(&y2, &vec![f32::NAN; y2.len()]);
    c.gpu
        .write(&arena.grads, &vec![f32::NAN; arena.grads.len()]);
    run_once(&c.gpu, &cx.dispatches, 0).unwrap();
    let (atol, rtol) = (2e-6, 2e-5);
    assert_close(
        "stack y",
        &c.read(&y2),
        &r2.fwd.h[(t - 1) * b * h2..],
        atol,
        rtol,
    );
    assert_close("stack y1", &c.read(&y1), &fwd1.h, atol, rtol);
    assert_close("stack dx2", &c.read(&dx2), &r2.bwd.dx, atol, rtol);
    for (tag, ids, r) in [("lstm1", ids1, &r1), ("lstm2", ids2, &r2)] {
        let g = |id| c.read(&arena.grad(id));
        let (ga, gr) = (1e-5, 1e-4);
        assert_close(
            &format!("{tag} d_bias"),
            &g(ids.bias),
            &r.bwd.d_bias,
            ga,
            gr,
        );
        assert_close(
            &format!("{tag} d_w_ih"),
            &g(ids.weight_ih),
            &r.d_w_ih,
            ga,
            gr,
        );
        assert_close(
            &format!("{tag} d_w_hh"),
            &g(ids.weight_hh),
            &r.d_w_hh,
            ga,
            gr,
        );
        assert_close(
            &format!("{tag} d_t_ih"),
            &g(ids.threshold_ih.unwrap()),
            &r.d_t_ih,
            ga,
            gr,
        );
        assert_close(
            &format!("{tag} d_t_hh"),
            &g(ids.threshold_hh.unwrap()),
            &r.d_t_hh,
            ga,
            gr,
        );
    }
    let pen = f32::from_bits(c.read_u32(&stats)[1]) as f64;
    let pen_ref = r1.penalty + r2.penalty;
    assert!(
        (pen - pen_ref).abs() <= 1e-5 * pen_ref,
        "stack penalty {pen} vs {pen_ref}"
    );
}
