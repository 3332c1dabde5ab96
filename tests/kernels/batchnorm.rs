use dst::checkpoint::Checkpoint;
use dst::gpu::Tensor;
use dst::kernels::batchnorm::BnShape;
use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, Dispatch, StepInfo};
use dst::nn::batchnorm::BatchNorm;
use dst::nn::{Arena, ArenaBuilder, Init, Layer, Mode, PlanCx};
use dst::reference::batchnorm as reference;
use dst::rng::Rng;
use serde_json::Value;

use crate::common::*;
use crate::masked::flat;

/// f32 sums and products: 1e-5 of the reference's largest magnitude.
const TOL: f64 = 1e-5;

/// (batch, valid rows, channels, per-channel trailing dims): 2d with odd channel counts, batch 1
/// and 3, odd spatial sizes, more values per channel than one workgroup holds, a short batch (the
/// padding rows enter no sum and get dx = 0); 1d (no trailing dims) with batch 3 and a short batch.
const CASES: &[(usize, usize, usize, &[usize])] = &[
    (3, 3, 5, &[7, 5]),
    (1, 1, 3, &[5, 3]),
    (1, 1, 7, &[3, 1]),
    (3, 3, 3, &[13, 11]),
    (4, 3, 5, &[3, 7]),
    (3, 3, 7, &[]),
    (3, 3, 5, &[]),
    (5, 2, 3, &[]),
    (2, 2, 1, &[1, 1]),
];

fn bn_shape(batch: usize, channels: usize, trailing: &[usize]) -> BnShape {
    BnShape {
        batch,
        channels,
        spatial: trailing.iter().product(),
    }
}

/// Inputs of one case: x with a per-channel offset and scale, gamma, beta, running stats, dy.
struct Inputs {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
    dy: Vec<f32>,
}

impl Inputs {
    fn new(rng: &mut Rng, s: &BnShape) -> Inputs {
        let c = s.channels;
        let shift = rand_vec(rng, c, -2.0, 2.0);
        let scale = rand_vec(rng, c, 0.2, 3.0);
        let mut x = rand_vec(rng, s.len(), -1.0, 1.0);
        for (i, v) in x.iter_mut().enumerate() {
            let ch = (i / s.spatial) % c;
            *v = *v * scale[ch] + shift[ch];
        }
        Inputs {
            x,
            gamma: rand_vec(rng, c, 0.3, 1.5),
            beta: rand_vec(rng, c, -0.5, 0.5),
            rm: rand_vec(rng, c, -1.0, 1.0),
            rv: rand_vec(rng, c, 0.5, 2.0),
            dy: rand_vec(rng, s.len(), -1.0, 1.0),
        }
    }
}

struct Run {
    y: Vec<f32>,
    stats: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

/// Runs the four entry points of one mode (train: batch_stats, else running_stats; forward,
/// backward_params, backward_input) on fresh NaN-poisoned outputs, with StepInfo.valid = `valid`.
fn run_kernels(c: &Ctx, s: &BnShape, valid: usize, train: bool, inp: &Inputs) -> Run {
    let ch = s.channels;
    let x = c.tensor("x", &[s.len()], &inp.x);
    let gamma = c.tensor("gamma", &[ch], &inp.gamma);
    let beta = c.tensor("beta", &[ch], &inp.beta);
    let rm = c.tensor("rm", &[ch], &inp.rm);
    let rv = c.tensor("rv", &[ch], &inp.rv);
    let dy = c.tensor("dy", &[s.len()], &inp.dy);
    let stats = c.poisoned("stats", &[2, ch]);
    let y = c.poisoned("y", &[s.len()]);
    let dgamma = c.poisoned("dgamma", &[ch]);
    let dbeta = c.poisoned("dbeta", &[ch]);
    let dx = c.poisoned("dx", &[s.len()]);
    let k = &c.k.batchnorm;
    let g = &c.gpu;
    let ds = [
        if train {
            k.batch_stats(g, s, &x, &stats, &rm, &rv, &c.step).unwrap()
        } else {
            k.running_stats(g, s, &rm, &rv, &stats).unwrap()
        },
        k.forward(g, s, &x, &stats, &gamma, &beta, &y).unwrap(),
        k.backward_params(g, s, &x, &dy, &stats, &dgamma, &dbeta, &c.step)
            .unwrap(),
        k.backward_input(
            g, s, train, &x, &dy, &stats, &gamma, &dgamma, &dbeta, &dx, &c.step,
        )
        .unwrap(),
    ];
    let names = [
        if train {
            "bn_batch_stats"
        } else {
            "bn_running_stats"
        },
        "bn_forward",
        "bn_backward_params",
        "bn_backward_input",
    ];
    for (d, n) in ds.iter().zip(names) {
        assert_eq!(d.label, format!("batchnorm.{n}"));
    }
    c.set_step(StepInfo {
        valid: valid as u32,
        ..Default::default()
    });
    run_once(g, &ds, 0).unwrap();
    Run {
        y: c.read(&y),
        stats: c.read(&stats),
        dx: c.read(&dx),
        dgamma: c.read(&dgamma),
        dbeta: c.read(&dbeta),
        rm: c.read(&rm),
        rv: c.read(&rv),
    }
}

/// Every entry point against the f64 twin, training and evaluation mode, on every case.
#[test]
fn batchnorm_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(53);
    for &(batch, valid, channels, trailing) in CASES {
        let s = bn_shape(batch, channels, trailing);
        let inp = Inputs::new(&mut rng, &s);
        let (x, gamma, beta) = (to_f64(&inp.x), to_f64(&inp.gamma), to_f64(&inp.beta));
        let (rm, rv, dy) = (to_f64(&inp.rm), to_f64(&inp.rv), to_f64(&inp.dy));
        for train in [true, false] {
            let r = run_kernels(&c, &s, valid, train, &inp);
            let tag = format!("{s:?} valid {valid} train {train}");
            let (st, rm_after, rv_after) = if train {
                reference::batch_stats(&s, valid, &x, &rm, &rv)
            } else {
                (reference::running_stats(&rm, &rv), rm.clone(), rv.clone())
            };
            let stats: Vec<f64> = st.mean.iter().chain(&st.inv_std).copied().collect();
            assert_close(&format!("stats {tag}"), &r.stats, &stats, 1e-6, TOL);
            let y = reference::forward(&s, &x, &st, &gamma, &beta);
            assert_close_norm(&format!("y {tag}"), &r.y, &y, TOL);
            let (dx, dg, db) = reference::backward(&s, valid, train, &x, &dy, &st, &gamma);
            // dx = gamma inv_std (dy - mean dy - xhat mean dy xhat) cancels (to nearly 0 with two
            // values per channel): its error is relative to the terms, gamma inv_std dy.
            let scale = (0..channels)
                .map(|ch| (gamma[ch] * st.inv_std[ch]).abs())
                .fold(0.0, f64::max)
                * dy.iter().map(|v| v.abs()).fold(0.0, f64::max);
            assert_close(&format!("dx {tag}"), &r.dx, &dx, TOL * scale, 0.0);
            assert_close_norm(&format!("dgamma {tag}"), &r.dgamma, &dg, TOL);
            assert_close_norm(&format!("dbeta {tag}"), &r.dbeta, &db, TOL);
            assert!(
                r.dx[valid * channels * s.spatial..]
                    .iter()
                    .all(|&v| v == 0.0),
                "{tag}: padding rows get dx = 0"
            );
            if train && valid * s.spatial > 1 {
                assert_close(&format!("running_mean {tag}"), &r.rm, &rm_after, 1e-7, 1e-6);
                assert_close(&format!("running_var {tag}"), &r.rv, &rv_after, 1e-7, 1e-6);
            } else {
                // Evaluation (and a single valid value per channel) leaves them bit for bit.
                assert_eq!(r.rm, inp.rm, "{tag}: running_mean untouched");
                assert_eq!(r.rv, inp.rv, "{tag}: running_var untouched");
            }
        }
    }
}

/// A short last batch of one sample in a 1d batch norm (m = 1, which PyTorch refuses): finite
/// output y = beta, dx = 0, running statistics untouched.
#[test]
fn batchnorm_single_value_per_channel_stays_finite() {
    let c = ctx();
    let mut rng = Rng::new(59);
    let s = bn_shape(4, 5, &[]);
    let inp = Inputs::new(&mut rng, &s);
    let r = run_kernels(&c, &s, 1, true, &inp);
    assert!(r.y.iter().chain(&r.dx).all(|v| v.is_finite()));
    assert_eq!(&r.y[..5], &inp.beta[..]);
    assert!(r.dx.iter().all(|&v| v == 0.0));
    assert_eq!((r.rm, r.rv), (inp.rm, inp.rv));
}

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/golden_conv.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    flat(v).iter().map(|&x| x as f32).collect()
}

/// PyTorch's F.batch_norm (2d and 1d): training output, gradients and running statistics after
/// the update; evaluation output with the running statistics before it.
#[test]
fn batchnorm_matches_golden() {
    let g = golden();
    let c = ctx();
    for case in ["2d", "1d"] {
        let v = &g["batch_norm"][case];
        let mut dims = Vec::new();
        let mut a = &v["x"];
        while let Value::Array(items) = a {
            dims.push(items.len());
            a = &items[0];
        }
        let s = bn_shape(dims[0], dims[1], &dims[2..]);
        let inp = Inputs {
            x: f32s(&v["x"]),
            gamma: f32s(&v["gamma"]),
            beta: f32s(&v["beta"]),
            rm: f32s(&v["running_mean_before"]),
            rv: f32s(&v["running_var_before"]),
            dy: f32s(&v["grad_y"]),
        };
        let r = run_kernels(&c, &s, s.batch, true, &inp);
        let tag = format!("golden batch_norm {case}");
        for (what, got, key) in [
            ("y", &r.y, "y_train"),
            ("grad_x", &r.dx, "grad_x"),
            ("grad_gamma", &r.dgamma, "grad_gamma"),
            ("grad_beta", &r.dbeta, "grad_beta"),
        ] {
            assert_close_norm(&format!("{tag} {what}"), got, &flat(&v[key]), TOL);
        }
        for (what, got, key) in [
            ("running_mean", &r.rm, "running_mean_after"),
            ("running_var", &r.rv, "running_var_after"),
        ] {
            assert_close(&format!("{tag} {what}"), got, &flat(&v[key]), 0.0, TOL);
        }
        let r = run_kernels(&c, &s, s.batch, false, &inp);
        assert_close_norm(
            &format!("{tag} eval y"),
            &r.y,
            &flat(&v["y_eval_with_running_before"]),
            TOL,
        );
    }
}

/// Same inputs, same bits: every output of a training pass, twice (several workgroups' worth of
/// values per channel).
#[test]
fn batchnorm_is_deterministic() {
    let c = ctx();
    let mut rng = Rng::new(61);
    let s = bn_shape(8, 6, &[17, 15]);
    let inp = Inputs::new(&mut rng, &s);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let r = run_kernels(&c, &s, s.batch, true, &inp);
            [r.y, r.stats, r.dx, r.dgamma, r.dbeta, r.rm, r.rv].map(|v| bits(&v))
        })
        .collect();
    assert!(
        runs[0] == runs[1],
        "batch norm results differ between two identical runs"
    );
}

// ---- the layer: plans, running statistics, optimiser, checkpoints ----

/// One batch norm layer in its own arena, declared as a model declares it.
fn layer_arena(c: &Ctx, name: &str, channels: usize) -> (Arena, BatchNorm) {
    let mut ab = ArenaBuilder::default();
    let ids = BatchNorm::declare(&mut ab, name, channels);
    let layout = ab.layout(c.gpu.limits.min_storage_buffer_offset_alignment as u64);
    let initial = layout.init(1);
    let arena = Arena::new(&c.gpu, layout, &initial, false).unwrap();
    (arena, BatchNorm::new(name, channels, ids))
}

/// The dispatches of the layer's forward and, in training, its backward (with dx); y and dx.
fn layer_plan(
    c: &Ctx,
    arena: &Arena,
    layer: &BatchNorm,
    x: &Tensor,
    dy: &Tensor,
    mode: Mode,
) -> (Vec<Dispatch>, Tensor, Option<Tensor>) {
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    let mut cx = PlanCx::new(&c.gpu, &c.k, arena, &c.step, mode, 0.0, stats);
    let y = layer.forward(&mut cx, x).unwrap();
    let dx = if mode == Mode::Train {
        layer.backward(&mut cx, x, &y, dy, true).unwrap()
    } else {
        None
    };
    (cx.dispatches, y, dx)
}

fn arena_vec(c: &Ctx, arena: &Arena, name: &str) -> Vec<f32> {
    let l = &arena.layout;
    match (l.find(name), l.find_state(name)) {
        (Some(e), _) => c.read(&arena.params)[e.offset..e.offset + e.len()].to_vec(),
        (_, Some(e)) => c.read(&arena.state)[e.offset..e.offset + e.len()].to_vec(),
        _ => panic!("no tensor {name}"),
    }
}

fn arena_put(c: &Ctx, arena: &Arena, name: &str, v: &[f32]) {
    let l = &arena.layout;
    let (buf, e) = match (l.find(name), l.find_state(name)) {
        (Some(e), _) => (&arena.params, e),
        (_, Some(e)) => (&arena.state, e),
        _ => panic!("no tensor {name}"),
    };
    let mut all = c.read(buf);
    all[e.offset..e.offset + e.len()].copy_from_slice(v);
    c.gpu.write(buf, &all);
}

/// The layer in a training plan (with an SGD step over the arena, weight decay on) and in an
/// evaluation plan: PyTorch's initial values; output, dx and gradients as the reference; the
/// running statistics updated once per training step and never by the optimiser or an evaluation
/// plan; gamma and beta updated by SGD like every parameter.
#[test]
fn batchnorm_layer_trains_and_evaluates() {
    let c = ctx();
    let mut rng = Rng::new(67);
    let (batch, channels, trailing) = (3, 5, [5usize, 7usize]);
    let s = bn_shape(batch, channels, &trailing);
    let inp = Inputs::new(&mut rng, &s);
    let (arena, layer) = layer_arena(&c, "bn1", channels);
    assert_eq!(layer.name(), "bn1");
    assert_eq!(layer.output_shape(&[5, 4, 3]), vec![5, 4, 3]);
    for (name, want) in [
        ("bn1.weight", 1.0),
        ("bn1.bias", 0.0),
        ("bn1.running_mean", 0.0),
        ("bn1.running_var", 1.0),
    ] {
        assert_eq!(arena_vec(&c, &arena, name), vec![want; channels], "{name}");
    }
    assert_eq!(
        arena.layout.entries.len(),
        2,
        "gamma and beta are the only parameters"
    );
    for (name, v) in [
        ("bn1.weight", &inp.gamma),
        ("bn1.bias", &inp.beta),
        ("bn1.running_mean", &inp.rm),
        ("bn1.running_var", &inp.rv),
    ] {
        arena_put(&c, &arena, name, v);
    }
    let mut shape = vec![batch, channels];
    shape.extend(trailing);
    let x = c.tensor("x", &shape, &inp.x);
    let dy = c.tensor("dy", &shape, &inp.dy);
    let (mut ds, y, dx) = layer_plan(&c, &arena, &layer, &x, &dy, Mode::Train);
    let (lr, wd) = (0.1f32, 0.01f32);
    let a = &arena;
    ds.push(
        c.k.optim
            .sgd(
                &c.gpu, &a.params, &a.grads, &a.moment1, &a.moment2, 0.9, wd, &c.step,
            )
            .unwrap(),
    );
    let dx = dx.unwrap();
    c.gpu.write(&y, &vec![f32::NAN; y.len()]);
    c.gpu.write(&dx, &vec![f32::NAN; dx.len()]);
    c.gpu.write(&a.grads, &vec![f32::NAN; a.grads.len()]);
    c.set_step(StepInfo {
        valid: batch as u32,
        step: 1,
        lr,
        ..Default::default()
    });
    run_once(&c.gpu, &ds, 0).unwrap();
    let (xd, gd, bd) = (to_f64(&inp.x), to_f64(&inp.gamma), to_f64(&inp.beta));
    let (st, rm1, rv1) = reference::batch_stats(&s, batch, &xd, &to_f64(&inp.rm), &to_f64(&inp.rv));
    let tag = "layer train";
    assert_close_norm(
        &format!("{tag} y"),
        &c.read(&y),
        &reference::forward(&s, &xd, &st, &gd, &bd),
        TOL,
    );
    let (dx_ref, dg, db) = reference::backward(&s, batch, true, &xd, &to_f64(&inp.dy), &st, &gd);
    assert_close_norm(&format!("{tag} dx"), &c.read(&dx), &dx_ref, TOL);
    let grads = c.read(&a.grads);
    let e = |n: &str| a.layout.find(n).unwrap().clone();
    let (ew, eb) = (e("bn1.weight"), e("bn1.bias"));
    assert_close_norm(
        &format!("{tag} dgamma"),
        &grads[ew.offset..][..channels],
        &dg,
        TOL,
    );
    assert_close_norm(
        &format!("{tag} dbeta"),
        &grads[eb.offset..][..channels],
        &db,
        TOL,
    );
    // SGD's first step: p - lr (g + wd p).
    let sgd = |p: &[f64], g: &[f64]| -> Vec<f64> {
        p.iter()
            .zip(g)
            .map(|(p, g)| p - lr as f64 * (g + wd as f64 * p))
            .collect()
    };
    assert_close(
        &format!("{tag} gamma after sgd"),
        &arena_vec(&c, a, "bn1.weight"),
        &sgd(&gd, &dg),
        1e-6,
        1e-5,
    );
    assert_close(
        &format!("{tag} beta after sgd"),
        &arena_vec(&c, a, "bn1.bias"),
        &sgd(&bd, &db),
        1e-6,
        1e-5,
    );
    // The running statistics: the momentum update alone, no weight decay or step applied.
    let rm = arena_vec(&c, a, "bn1.running_mean");
    let rv = arena_vec(&c, a, "bn1.running_var");
    assert_close(&format!("{tag} running_mean"), &rm, &rm1, 1e-7, 1e-6);
    assert_close(&format!("{tag} running_var"), &rv, &rv1, 1e-7, 1e-6);
    // A second step updates them once more.
    run_once(&c.gpu, &ds, 0).unwrap();
    let (_, rm2, rv2) = reference::batch_stats(&s, batch, &xd, &rm1, &rv1);
    let rm = arena_vec(&c, a, "bn1.running_mean");
    let rv = arena_vec(&c, a, "bn1.running_var");
    assert_close(
        &format!("{tag} running_mean, 2 steps"),
        &rm,
        &rm2,
        1e-7,
        1e-6,
    );
    assert_close(
        &format!("{tag} running_var, 2 steps"),
        &rv,
        &rv2,
        1e-7,
        1e-6,
    );
    // Evaluation: normalises with the running statistics and leaves them as they are.
    let (ds, y, _) = layer_plan(&c, a, &layer, &x, &dy, Mode::Eval);
    c.gpu.write(&y, &vec![f32::NAN; y.len()]);
    run_once(&c.gpu, &ds, 0).unwrap();
    let (gamma, beta) = (arena_vec(&c, a, "bn1.weight"), arena_vec(&c, a, "bn1.bias"));
    let st = reference::running_stats(&to_f64(&rm), &to_f64(&rv));
    let want = reference::forward(&s, &xd, &st, &to_f64(&gamma), &to_f64(&beta));
    assert_close_norm("layer eval y", &c.read(&y), &want, TOL);
    assert_eq!(arena_vec(&c, a, "bn1.running_mean"), rm);
    assert_eq!(arena_vec(&c, a, "bn1.running_var"), rv);
}

/// 1d input with batch 1 in a training plan has one value per channel (PyTorch raises): the layer
/// refuses it with an error (no panic) when the plan is built. An evaluation plan accepts it, and so does 2d with batch 1.
#[test]
fn batchnorm_layer_refuses_one_value_per_channel_in_training() {
    let c = ctx();
    let (arena, layer) = layer_arena(&c, "bn", 4);
    let x1 = c.tensor("x", &[1, 4], &[0.5; 4]);
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    let mut cx = PlanCx::new(&c.gpu, &c.k, &arena, &c.step, Mode::Train, 0.0, stats);
    let msg = match layer.forward(&mut cx, &x1) {
        Ok(_) => panic!("a training plan with one value per channel must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("more than one value per channel") && msg.contains("--batch 2"),
        "{msg}"
    );
    layer_plan(&c, &arena, &layer, &x1, &x1, Mode::Eval);
    let x2 = c.tensor("x", &[1, 4, 3, 3], &[0.5; 36]);
    layer_plan(&c, &arena, &layer, &x2, &x2, Mode::Train);
}

/// A checkpoint keeps the running statistics: saved under `<layer>.running_mean` and
/// `<layer>.running_var` (no optimiser state for them), restored bit for bit into a fresh arena; a
/// checkpoint without them is refused for a model that has them; a model without state tensors
/// still loads a checkpoint without any.
#[test]
fn batchnorm_running_stats_survive_a_checkpoint() {
    let c = ctx();
    let mut rng = Rng::new(71);
    let s = bn_shape(3, 5, &[4, 3]);
    let inp = Inputs::new(&mut rng, &s);
    let (arena, layer) = layer_arena(&c, "bn1", 5);
    arena_put(&c, &arena, "bn1.weight", &inp.gamma);
    let x = c.tensor("x", &[3, 5, 4, 3], &inp.x);
    let (ds, _, _) = layer_plan(&c, &arena, &layer, &x, &x, Mode::Train);
    c.set_step(StepInfo {
        valid: 3,
        ..Default::default()
    });
    run_once(&c.gpu, &ds, 0).unwrap();
    let state = c.read(&arena.state);
    let params = c.read(&arena.params);
    assert_ne!(arena_vec(&c, &arena, "bn1.running_var"), vec![1.0; 5]);
    let mut ck = Checkpoint {
        tensors: arena.snapshot(&c.gpu).unwrap(),
        ..Default::default()
    };
    ck.metadata.insert("model".into(), "test".into());
    let names: Vec<&str> = ck.tensors.iter().map(|t| t.0.as_str()).collect();
    for n in [
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.weight",
        "optim.momentum.bn1.bias",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names
        .iter()
        .any(|n| n.starts_with("optim.") && n.contains("running")));
    let path =
        std::env::temp_dir().join(format!("dst-kernels-{}-bn.safetensors", std::process::id()));
    ck.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (fresh, _) = layer_arena(&c, "bn1", 5);
    assert_ne!(c.read(&fresh.state), state);
    fresh.restore(&c.gpu, &loaded, true).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(c.read(&fresh.state)),
        bits(state.clone()),
        "running statistics"
    );
    assert_eq!(bits(c.read(&fresh.params)), bits(params), "parameters");
    // Without the running variance: refused, naming it.
    let mut partial = loaded.clone();
    partial.tensors.retain(|t| t.0 != "bn1.running_var");
    let err = fresh.restore(&c.gpu, &partial, false).unwrap_err();
    assert!(err.contains("bn1.running_var is missing"), "{err}");
    // A model without state tensors and its checkpoint (as every checkpoint before them).
    let mut ab = ArenaBuilder::default();
    ab.param("fc.weight", &[3, 2], Init::Uniform(0.5));
    let layout = ab.layout(c.gpu.limits.min_storage_buffer_offset_alignment as u64);
    assert!(layout.states.is_empty());
    let initial = layout.init(5);
    let plain = Arena::new(&c.gpu, layout.clone(), &initial, false).unwrap();
    let old = Checkpoint {
        tensors: plain.snapshot(&c.gpu).unwrap(),
        ..Default::default()
    };
    assert_eq!(old.tensors.len(), 2, "weight and momentum only");
    let other = Arena::new(&c.gpu, layout, &vec![0.0; initial.len()], false).unwrap();
    other.restore(&c.gpu, &old, true).unwrap();
    assert_eq!(c.read(&other.params), initial);
}

// ---- finite differences of the f64 reference (no GPU) ----

fn rand_f64(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// `sum(gy * y)` with y the training output (batch statistics of x, so every x moves every y of
/// its channel) or the evaluation output: its gradients are exactly the reference backward, the
/// padding rows of a short batch included (they move nothing in training: dx = 0).
#[test]
fn batchnorm_reference_matches_finite_differences() {
    let mut rng = Rng::new(73);
    for (batch, valid, channels, trailing) in [
        (3usize, 3usize, 3usize, &[4usize, 3usize][..]),
        (2, 2, 2, &[1, 5][..]),
        (4, 4, 3, &[][..]),
        (4, 3, 2, &[][..]),
    ] {
        let s = bn_shape(batch, channels, trailing);
        let x = rand_f64(&mut rng, s.len());
        let gamma = rand_f64(&mut rng, channels);
        let beta = rand_f64(&mut rng, channels);
        let rm = rand_f64(&mut rng, channels);
        let rv: Vec<f64> = (0..channels).map(|_| rng.range(0.5, 2.0)).collect();
        let gy = rand_f64(&mut rng, s.len());
        for train in [true, false] {
            let stats = |x: &[f64]| {
                if train {
                    reference::batch_stats(&s, valid, x, &rm, &rv).0
                } else {
                    reference::running_stats(&rm, &rv)
                }
            };
            // The loss sees the batch rows only (the padding rows' dy is 0, as the loss makes it).
            let m = valid * channels * s.spatial;
            let obj = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                reference::forward(&s, x, &stats(x), g, b)[..m]
                    .iter()
                    .zip(&gy)
                    .map(|(a, g)| a * g)
                    .sum()
            };
            let mut gy_valid = gy.clone();
            gy_valid[m..].fill(0.0);
            let (dx, dg, db) =
                reference::backward(&s, valid, train, &x, &gy_valid, &stats(&x), &gamma);
            let h = 1e-6;
            let fd = |v: &[f64], k: usize, f: &dyn Fn(&[f64]) -> f64| {
                let (mut p, mut q) = (v.to_vec(), v.to_vec());
                p[k] += h;
                q[k] -= h;
                (f(&p) - f(&q)) / (2.0 * h)
            };
            let tag = format!("{s:?} valid {valid} train {train}");
            for (k, &want) in dx.iter().enumerate() {
                let d = fd(&x, k, &|x| obj(x, &gamma, &beta));
                assert!((d - want).abs() < 1e-6, "{tag} dx[{k}] fd {d} vs {want}");
            }
            for (k, &want) in dg.iter().enumerate() {
                let d = fd(&gamma, k, &|g| obj(&x, g, &beta));
                assert!(
                    (d - want).abs() < 1e-6,
                    "{tag} dgamma[{k}] fd {d} vs {want}"
                );
            }
            for (k, &want) in db.iter().enumerate() {
                let d = fd(&beta, k, &|b| obj(&x, &gamma, b));
                assert!((d - want).abs() < 1e-6, "{tag} dbeta[{k}] fd {d} vs {want}");
            }
        }
    }
}
