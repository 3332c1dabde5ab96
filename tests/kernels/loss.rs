use dst::kernels::loss::STATS_WORDS;
use dst::kernels::{run_once, StepInfo};
use dst::reference::loss as reference;
use dst::rng::Rng;

use crate::common::*;

#[test]
fn softmax_xent_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(41);
    // (rows, classes, valid): short last batches and more rows than the workgroup.
    for &(rows, classes, valid) in &[
        (1, 10, 1),
        (7, 3, 7),
        (64, 10, 64),
        (64, 10, 32),
        (300, 10, 299),
        (65, 1, 65),
    ] {
        let mut z = rand_vec(&mut rng, rows * classes, -8.0, 8.0);
        z[0] = 80.0; // large logits must not overflow
        let labels: Vec<u32> = (0..rows)
            .map(|_| rng.below(classes as u64) as u32)
            .collect();
        let (zt, lt) = (
            c.tensor("z", &[rows, classes], &z),
            c.tensor_u32("labels", &[rows], &labels),
        );
        let dz = c.poisoned("dz", &[rows, classes]);
        let prior = 1.5f32;
        let mut init = [0u32; STATS_WORDS];
        init[0] = prior.to_bits();
        init[2] = 5;
        init[3] = 7;
        let stats = c.tensor_u32("stats", &[STATS_WORDS], &init);
        c.set_step(StepInfo {
            valid: valid as u32,
            ..Default::default()
        });
        let d =
            c.k.loss
                .softmax_xent(&c.gpu, &zt, &lt, &dz, true, &stats, &c.step)
                .unwrap();
        run_once(&c.gpu, &[d], 0).unwrap();
        let (loss, grad, correct) =
            reference::softmax_xent(&to_f64(&z), &labels, rows, classes, valid);
        let s = c.read_u32(&stats);
        let got = f32::from_bits(s[0]) as f64 - prior as f64;
        let tag = format!("rows{rows} classes{classes} valid{valid}");
        assert!(
            (got - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "loss {tag}: {got} vs {loss}"
        );
        assert_eq!(s[2], 5 + correct, "correct {tag}");
        assert_eq!(s[3], 7 + valid as u32, "seen {tag}");
        assert_eq!(s[4], 0, "finite flag {tag}");
        assert_close(&format!("d_logits {tag}"), &c.read(&dz), &grad, 1e-7, 1e-5);
    }
}

#[test]
fn softmax_xent_flags_non_finite_loss() {
    let c = ctx();
    let z = [1.0f32, f32::NAN, 0.0, 2.0];
    let (zt, lt) = (
        c.tensor("z", &[2, 2], &z),
        c.tensor_u32("labels", &[2], &[0, 1]),
    );
    let dz = c.poisoned("dz", &[2, 2]);
    let stats = c.tensor_u32("stats", &[STATS_WORDS], &[0; STATS_WORDS]);
    c.set_step(StepInfo {
        valid: 2,
        ..Default::default()
    });
    let d =
        c.k.loss
            .softmax_xent(&c.gpu, &zt, &lt, &dz, false, &stats, &c.step)
            .unwrap();
    run_once(&c.gpu, &[d], 0).unwrap();
    assert_eq!(c.read_u32(&stats)[4], 1, "NaN loss must set the flag");
    // write_grad = false leaves d_logits untouched.
    assert!(c.read(&dz).iter().all(|v| v.is_nan()));
}
