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
