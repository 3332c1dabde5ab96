use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, StepInfo};
use dst::reference::optim as reference;
use dst::rng::Rng;

use crate::common::*;

/// f32 state over a few steps drifts from f64 by a few ulps per step.
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-5;

#[test]
fn sgd_matches_reference_over_steps() {
    let c = ctx();
    let mut rng = Rng::new(61);
    for &(n, momentum, wd) in &[
        (1usize, 0.9, 0.0),
        (300, 0.9, 1e-4),
        (70_001, 0.0, 0.0),
        (1000, 0.5, 1e-2),
    ] {
        let p0 = rand_vec(&mut rng, n, -1.0, 1.0);
        let (pt, gt) = (c.tensor("p", &[n], &p0), c.tensor("g", &[n], &vec![0.0; n]));
        let (m1, m2) = (
            c.tensor("m1", &[n], &vec![0.0; n]),
            c.tensor("m2", &[n], &vec![0.0; n]),
        );
        let d =
            c.k.optim
                .sgd(
                    &c.gpu,
                    &pt,
                    &gt,
                    &m1,
                    &m2,
                    momentum as f32,
                    wd as f32,
                    &c.step,
                )
                .unwrap();
        let (mut p, mut v) = (to_f64(&p0), vec![0.0; n]);
        for step in 1..=4u32 {
            let g = rand_vec(&mut rng, n, -1.0, 1.0);
            c.gpu.write(&gt, &g);
            let lr = 0.01 * step as f64;
            c.set_step(StepInfo {
                step,
                lr: lr as f32,
                ..Default::default()
            });
            run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
            reference::sgd(
                &mut p,
                &to_f64(&g),
                &mut v,
                lr as f32 as f64,
                momentum as f32 as f64,
                wd as f32 as f64,
            );
        }
        assert_close(&format!("sgd param n{n}"), &c.read(&pt), &p, ATOL, RTOL);
        assert_close(&format!("sgd velocity n{n}"), &c.read(&m1), &v, ATOL, RTOL);
    }
}

#[test]
fn adam_matches_reference_over_steps() {
    let c = ctx();
    let mut rng = Rng::new(71);
    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
    for &(n, wd) in &[(1usize, 0.0), (301, 0.0), (4097, 1e-4)] {
        let p0 = rand_vec(&mut rng, n, -1.0, 1.0);
        let (pt, gt) = (c.tensor("p", &[n], &p0), c.tensor("g", &[n], &vec![0.0; n]));
        let (m1, m2) = (
            c.tensor("m1", &[n], &vec![0.0; n]),
            c.tensor("m2", &[n], &vec![0.0; n]),
        );
        let d =
            c.k.optim
                .adam(&c.gpu, &pt, &gt, &m1, &m2, b1, b2, eps, wd as f32, &c.step)
                .unwrap();
        let (mut p, mut m, mut v) = (to_f64(&p0), vec![0.0; n], vec![0.0; n]);
        let lr = 1e-3;
        for step in 1..=5u32 {
            let g = rand_vec(&mut rng, n, -1.0, 1.0);
            c.gpu.write(&gt, &g);
            let (ss, bc2) = reference::adam_step_values(step, lr, b1, b2);
            c.set_step(StepInfo {
                step,
                lr: lr as f32,
                adam_step_size: ss as f32,
                adam_bc2_sqrt: bc2 as f32,
                ..Default::default()
            });
            run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
            reference::adam(
                &mut p,
                &to_f64(&g),
                &mut m,
                &mut v,
                step,
                lr,
                (b1, b2, eps),
                wd as f32 as f64,
            );
        }
        assert_close(&format!("adam param n{n}"), &c.read(&pt), &p, ATOL, RTOL);
        assert_close(&format!("adam m n{n}"), &c.read(&m1), &m, ATOL, RTOL);
        assert_close(&format!("adam v n{n}"), &c.read(&m2), &v, 1e-8, 1e-4);
    }
}

/// torch.optim.Adam's own numbers: the golden LSTM layer's parameters after one and two Adam
/// steps (lr 1e-3) with its gradients, matched by the f64 reference and by the GPU kernel.
#[test]
fn adam_matches_pytorch_golden_steps() {
    let g: serde_json::Value =
        serde_json::from_str(include_str!("../golden/golden_masked_lstm.json")).unwrap();
    let flat = crate::masked::flat;
    let (mut p, mut grad, mut names) = (Vec::new(), Vec::new(), Vec::new());
    p.extend(flat(&g["bias"]));
    grad.extend(flat(&g["grad_bias"]));
    names.push(("bias".to_string(), p.len()));
    for m in ["wxi", "wxf", "wxu", "wxo", "whi", "whf", "whu", "who"] {
        for (what, gname) in [("weight", "grad_weight"), ("threshold", "grad_threshold")] {
            p.extend(flat(&g["matrices"][m][what]));
            grad.extend(flat(&g["matrices"][m][gname]));
            names.push((format!("{m}.{what}"), p.len()));
        }
    }
    let adam = &g["adam"];
    let lr = adam["lr"].as_f64().unwrap();
    let (b1, b2) = (
        adam["betas"][0].as_f64().unwrap(),
        adam["betas"][1].as_f64().unwrap(),
    );
    let eps = adam["eps"].as_f64().unwrap();
    let want = |step: &str| -> Vec<f64> {
        names
            .iter()
            .flat_map(|(n, _)| flat(&adam[step][n.as_str()]))
            .collect()
    };
    // f64 reference: exact to rounding.
    let (mut pr, mut m, mut v) = (p.clone(), vec![0.0; p.len()], vec![0.0; p.len()]);
    for (step, key) in [(1, "after_step1"), (2, "after_step2")] {
        reference::adam(&mut pr, &grad, &mut m, &mut v, step, lr, (b1, b2, eps), 0.0);
        for (a, b) in pr.iter().zip(want(key)) {
            assert!((a - b).abs() < 1e-12, "reference adam {key}: {a} vs {b}");
        }
    }
    // GPU kernel in f32.
    let c = ctx();
    let n = p.len();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let (pt, gt) = (c.tensor("p", &[n], &f(&p)), c.tensor("g", &[n], &f(&grad)));
    let (m1, m2) = (
        c.tensor("m1", &[n], &vec![0.0; n]),
        c.tensor("m2", &[n], &vec![0.0; n]),
    );
    let d =
        c.k.optim
            .adam(&c.gpu, &pt, &gt, &m1, &m2, b1, b2, eps, 0.0, &c.step)
            .unwrap();
    for (step, key) in [(1u32, "after_step1"), (2, "after_step2")] {
        let (ss, bc2) = reference::adam_step_values(step, lr, b1, b2);
        c.set_step(StepInfo {
            step,
            lr: lr as f32,
            adam_step_size: ss as f32,
            adam_bc2_sqrt: bc2 as f32,
            ..Default::default()
        });
        run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
        assert_close(
            &format!("adam {key} vs PyTorch"),
            &c.read(&pt),
            &want(key),
            1e-6,
            1e-5,
        );
    }
}

/// The divergence guard flags a NaN or an infinity anywhere in params, moment1 or (Adam) moment2,
/// whatever the arena size (one and many check workgroups), and leaves finite arenas unflagged.
#[test]
fn check_finite_flags_any_non_finite_value() {
    let c = ctx();
    let mut rng = Rng::new(5);
    for &n in &[1usize, 255, 257, 70_001] {
        for adam in [false, true] {
            let p0 = rand_vec(&mut rng, n, -1e30, 1e30);
            let m0 = rand_vec(&mut rng, n, -1.0, 1.0);
            let v0 = rand_vec(&mut rng, n, 0.0, 1.0);
            let m2_len = if adam { n } else { 1 };
            let check = |p: &[f32], m1: &[f32], m2: &[f32]| -> u32 {
                let (pt, m1t, m2t) = (
                    c.tensor("p", &[n], p),
                    c.tensor("m1", &[n], m1),
                    c.tensor("m2", &[m2.len()], m2),
                );
                let partial = c.tensor_u32("partial", &[256], &[7; 256]);
                let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
                let ds =
                    c.k.optim
                        .check_finite(&c.gpu, &pt, &m1t, &m2t, &partial, &stats)
                        .unwrap();
                run_once(&c.gpu, &ds, 0).unwrap();
                let s = c.read_u32(&stats);
                assert_eq!(s[..5], [0; 5], "only stats[5] is written");
                s[5]
            };
            let v = &v0[..m2_len];
            assert_eq!(check(&p0, &m0, v), 0, "n {n} adam {adam}: all finite");
            for (which, bad) in [(0, f32::NAN), (1, f32::INFINITY), (2, f32::NEG_INFINITY)] {
                if which == 2 && !adam {
                    continue;
                }
                let at = rng.below(n as u64) as usize;
                let (mut p, mut m1, mut m2) = (p0.clone(), m0.clone(), v.to_vec());
                [&mut p, &mut m1, &mut m2][which][at] = bad;
                assert_eq!(
                    check(&p, &m1, &m2),
                    1,
                    "n {n} adam {adam}: {bad} in arena {which} at {at}"
                );
            }
        }
    }
}

/// Optimiser state below the smallest normal f32 is stored as 0 (METHOD.md section 9, item 9),
/// in the SGD pass, in Adam's two moments and in the weight-gradient product fused with SGD
/// (full and listed, masked and not): a velocity decaying into the subnormal range (a gradient
/// of exactly 0, as a pruned neuron's weights get) and one already subnormal (an older
/// checkpoint's) both become 0; normal values keep their bits, and no weight moves differently
/// from the unflushed update. The f64 reference flushes alike.
#[test]
fn subnormal_optimiser_state_is_stored_as_zero() {
    use dst::kernels::gemm::{Gemm, SgdTarget};
    let c = ctx();
    let tiny = f32::MIN_POSITIVE;
    assert_eq!(reference::flush_subnormal(0.9 * tiny as f64), 0.0);
    assert_eq!(reference::flush_subnormal(-(tiny as f64)), -(tiny as f64));
    let flush = |x: f32| if x.abs() < tiny { 0.0 } else { x };
    let (lr, momentum) = (0.01f32, 0.9f32);
    c.set_step(StepInfo {
        step: 2,
        lr,
        adam_step_size: 1e-3,
        adam_bc2_sqrt: 0.5,
        ..Default::default()
    });
    // (velocity before, what momentum * v gives): decays into the subnormal range, stays normal,
    // starts subnormal, is 0, is large.
    let v0 = [
        1.0e-38f32, -1.1e-38, 2.0e-38, -2.5e-38, 1.0e-40, -3.0e-42, 0.0, 0.5, -0.25, 1.2e-38,
    ];
    let n = v0.len();
    let want_v: Vec<f32> = v0.iter().map(|&v| flush(momentum * v)).collect();
    assert!(want_v.iter().filter(|&&v| v == 0.0).count() >= 6);
    assert!(want_v.iter().any(|&v| v != 0.0 && v.abs() < 1e-37));

    // The SGD pass, gradient 0.
    let p0: Vec<f32> = (0..n).map(|i| 0.1 + 0.05 * i as f32).collect();
    let (pt, gt) = (c.tensor("p", &[n], &p0), c.tensor("g", &[n], &vec![0.0; n]));
    let (m1, m2) = (c.tensor("m1", &[n], &v0), c.tensor("m2", &[n], &[0.0; 10]));
    let d =
        c.k.optim
            .sgd(&c.gpu, &pt, &gt, &m1, &m2, momentum, 0.0, &c.step)
            .unwrap();
    run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&c.read(&m1)), bits(&want_v), "sgd velocities");
    assert_unmoved("sgd params", &c.read(&pt), &p0, &want_v, lr);
    let (mut p, mut v) = (to_f64(&p0), to_f64(&v0));
    reference::sgd(&mut p, &[0.0; 10], &mut v, lr as f64, momentum as f64, 0.0);
    let zeros_ref: Vec<bool> = v.iter().map(|&x| x == 0.0).collect();
    let zeros_got: Vec<bool> = want_v.iter().map(|&x| x == 0.0).collect();
    assert_eq!(
        zeros_ref, zeros_got,
        "the reference flushes the same velocities"
    );

    // Adam: even elements decay from v0 with g 0 (both moments); odd elements have a gradient
    // of 1e-20 and a second moment of 0, whose (1 - b2) g^2 is 1e-43.
    let g: Vec<f32> = (0..n)
        .map(|i| if i % 2 == 0 { 0.0 } else { 1e-20 })
        .collect();
    let v2_0: Vec<f32> = (0..n)
        .map(|i| if i % 2 == 0 { v0[i].abs() } else { 0.0 })
        .collect();
    let (pt, gt) = (c.tensor("p", &[n], &p0), c.tensor("g", &[n], &g));
    let (m1, m2) = (c.tensor("m1", &[n], &v0), c.tensor("m2", &[n], &v2_0));
    let d =
        c.k.optim
            .adam(&c.gpu, &pt, &gt, &m1, &m2, 0.9, 0.999, 1e-8, 0.0, &c.step)
            .unwrap();
    run_once(&c.gpu, std::slice::from_ref(&d), 0).unwrap();
    let (m_got, v_got) = (c.read(&m1), c.read(&m2));
    for i in 0..n {
        for (what, x) in [("m", m_got[i]), ("v", v_got[i])] {
            assert!(
                x == 0.0 || x.abs() >= tiny,
                "adam {what}[{i}] = {x:e} is subnormal"
            );
        }
        if g[i] == 0.0 {
            assert_eq!(v_got[i], flush(0.999 * v0[i].abs()), "adam v[{i}]");
        } else {
            assert_eq!(v_got[i], 0.0, "adam v[{i}] from a gradient of 1e-20");
            assert!(m_got[i].abs() > 1e-22, "adam m[{i}] follows the gradient");
        }
    }
    assert_eq!(m_got[0], 0.0, "adam m from 1e-38 with g 0");

    // The fused weight-gradient product, gradient 0 (G = 0): every velocity decays.
    let (m, rows, k) = (8usize, 8usize, 16usize);
    let x: Vec<f32> = (0..m * k)
        .map(|i| if i % 3 == 0 { 0.5 } else { 0.0 })
        .collect();
    let vel: Vec<f32> = (0..rows * k).map(|i| v0[i % n]).collect();
    let w: Vec<f32> = (0..rows * k).map(|i| 0.3 + 0.004 * i as f32).collect();
    let want_v: Vec<f32> = vel.iter().map(|&v| flush(momentum * v)).collect();
    for masked in [false, true] {
        for listed in [false, true] {
            let tag = format!("fused masked {masked} listed {listed}");
            let (gt, xt) = (
                c.tensor("g", &[m, rows], &vec![0.0; m * rows]),
                c.tensor("x", &[m, k], &x),
            );
            let (wt, vt) = (
                c.tensor("w", &[rows, k], &w),
                c.tensor("v", &[rows, k], &vel),
            );
            let tt = c.tensor("t", &[rows], &vec![0.1; rows]);
            let parts = c.poisoned("parts", &[rows, Gemm::dt_blocks(k)]);
            let db = c.poisoned("db", &[rows]);
            let lists = c.poisoned("k lists", &[Gemm::k_list_words(k, m)]);
            let target = SgdTarget {
                weight: &wt,
                velocity: &vt,
                momentum,
                weight_decay: 0.0,
                mask: masked.then_some((&tt, &parts)),
            };
            let Some(ds) =
                c.k.gemm
                    .backward_weight_sgd(
                        &c.gpu,
                        &gt,
                        &xt,
                        &db,
                        &target,
                        listed.then_some(dst::kernels::gemm::KLists::Build(&lists)),
                        &c.step,
                        &c.k.dummy,
                    )
                    .unwrap()
            else {
                return; // GPUs: no fused kernel (the unfused passes use the SGD pass above)
            };
            run_once(&c.gpu, &ds, 0).unwrap();
            assert_eq!(bits(&c.read(&vt)), bits(&want_v), "{tag}: velocities");
            assert_unmoved(&tag, &c.read(&wt), &w, &want_v, lr);
        }
    }
}

/// `got` (parameters after one step from `p0` with velocities `v`): exactly `p0` where the
/// velocity was flushed (as the unflushed update leaves them: lr times a subnormal moves no
/// parameter of this size), `p0 - lr * v` within rounding elsewhere.
fn assert_unmoved(what: &str, got: &[f32], p0: &[f32], v: &[f32], lr: f32) {
    for i in 0..p0.len() {
        let unflushed = p0[i] - lr * (0.9 * f32::MIN_POSITIVE);
        assert_eq!(
            unflushed, p0[i],
            "{what}: the unflushed update moves nothing either"
        );
        if v[i] == 0.0 {
            assert_eq!(got[i].to_bits(), p0[i].to_bits(), "{what}[{i}]");
        } else {
            let want = p0[i] - lr * v[i];
            assert!(
                (got[i] - want).abs() <= 1e-7,
                "{what}[{i}]: {} vs {want}",
                got[i]
            );
        }
    }
}
