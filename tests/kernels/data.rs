use dst::kernels::data::byte_lut;
use dst::kernels::{run_once, StepInfo};
use dst::rng::Rng;

use crate::common::*;

fn pack(bytes: &[u8]) -> Vec<u32> {
    let mut b = bytes.to_vec();
    b.resize(bytes.len().div_ceil(4) * 4, 0);
    b.chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn gather_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(51);
    // (samples, pixels, rows, batch_start, valid): odd pixel counts exercise the byte packing.
    for &(samples, pixels, rows, start, valid) in &[
        (10, 784, 4, 3, 4),
        (9, 7, 5, 6, 3),
        (100, 65, 64, 36, 64),
        (3, 1, 3, 0, 3),
    ] {
        let images: Vec<u8> = (0..samples * pixels)
            .map(|_| rng.below(256) as u8)
            .collect();
        let labels: Vec<u8> = (0..samples).map(|_| rng.below(10) as u8).collect();
        let perm = rng.permutation(samples);
        let it = c.tensor_u32("images", &[pack(&images).len()], &pack(&images));
        let lt = c.tensor_u32("labels", &[pack(&labels).len()], &pack(&labels));
        let pt = c.tensor_u32("perm", &[samples], &perm);
        let lut = c.tensor("lut", &[256], &byte_lut());
        let x = c.poisoned("x", &[rows, pixels]);
        let y = c.tensor_u32("y", &[rows], &vec![u32::MAX; rows]);
        c.set_step(StepInfo {
            batch_start: start as u32,
            valid: valid as u32,
            ..Default::default()
        });
        let d =
            c.k.data
                .gather(&c.gpu, &it, &lt, &pt, &lut, &x, &y, &c.step)
                .unwrap();
        run_once(&c.gpu, &[d], 0).unwrap();
        let mut want_x = vec![0.0f64; rows * pixels];
        let mut want_y = vec![0u32; rows];
        for r in 0..valid {
            let s = perm[start + r] as usize;
            for p in 0..pixels {
                want_x[r * pixels + p] = (images[s * pixels + p] as f32 / 255.0) as f64;
            }
            want_y[r] = labels[s] as u32;
        }
        assert_close(
            &format!("gather x {samples}x{pixels}"),
            &c.read(&x),
            &want_x,
            0.0,
            0.0,
        );
        assert_eq!(c.read_u32(&y), want_y, "gather y {samples}x{pixels}");
    }
}
