use dst::gpu::{select_adapter, GpuError};

use crate::common::*;

/// An adapter name that matches nothing gives a clear error naming what is available.
#[test]
fn unknown_adapter_name_is_a_clear_error() {
    let Err(err) = select_adapter(Some("no-such-adapter-xyz")) else {
        panic!("an adapter name that matches nothing must fail");
    };
    match &err {
        GpuError::AdapterNotFound { wanted, .. } => assert_eq!(wanted, "no-such-adapter-xyz"),
        GpuError::NoAdapter { .. } => {}
        e => panic!("unexpected error {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-adapter-xyz") || msg.contains("mesa-vulkan-drivers"),
        "{msg}"
    );
}

/// Same inputs, same bits: a masked backward and a GEMM run twice give identical results.
#[test]
fn kernels_are_deterministic() {
    let c = ctx();
    let mut rng = dst::rng::Rng::new(81);
    let (rows, cols, m) = (100, 300, 64);
    let w = rand_vec(&mut rng, rows * cols, -1.0, 1.0);
    let t = rand_vec(&mut rng, rows, 0.0, 0.2);
    let g = rand_vec(&mut rng, m * rows, -1.0, 1.0);
    let x = rand_vec(&mut rng, m * cols, -1.0, 1.0);
    let run = || {
        let (wt, tt, gt, xt) = (
            c.tensor("w", &[rows, cols], &w),
            c.tensor("t", &[rows], &t),
            c.tensor("g", &[m, rows], &g),
            c.tensor("x", &[m, cols], &x),
        );
        let dp = c.poisoned("dp", &[rows, cols]);
        let (dw, dt) = (c.poisoned("dw", &[rows, cols]), c.poisoned("dt", &[rows]));
        let ds = [
            c.k.gemm
                .backward_weight(&c.gpu, &gt, &xt, &dp, false, &c.k.dummy)
                .unwrap(),
            c.k.masked
                .mask_backward(&c.gpu, &wt, &tt, &dp, &dw, &dt, 5e-4)
                .unwrap(),
        ];
        dst::kernels::run_once(&c.gpu, &ds, 0).unwrap();
        (c.read(&dw), c.read(&dt))
    };
    let (a, b) = (run(), run());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.0), bits(&b.0), "d_weight bits differ");
    assert_eq!(bits(&a.1), bits(&b.1), "d_threshold bits differ");
}
