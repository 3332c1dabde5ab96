use dst::data::augment::{epoch_draws, CropFlip};
use dst::kernels::data::{byte_lut, Images};
use dst::kernels::{run_once, StepInfo};
use dst::reference::data::{self as reference, ImageSpec};
use dst::rng::Rng;

use crate::common::*;

fn pack(bytes: &[u8]) -> Vec<u32> {
    let mut b = bytes.to_vec();
    b.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    b.chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// CIFAR-10's table, as `Dataset::lut` builds it for a normalised three-channel set.
fn cifar_lut() -> Vec<f32> {
    let m = dst::data::cifar::MEAN;
    let s = dst::data::cifar::STD;
    (0..3)
        .flat_map(|c| (0..=255u8).map(move |b| reference::value(b, Some((m[c], s[c])))))
        .collect()
}

#[test]
fn gather_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(51);
    // (samples, pixels, rows, batch_start, valid, split): odd pixel counts exercise the byte
    // packing; a split < samples puts the later samples in the second image buffer; pixel counts
    // that are multiples of 4 take the four-per-invocation gather (`gather4`), with padding rows
    // and a split among them.
    for &(samples, pixels, rows, start, valid, split) in &[
        (10, 784, 4, 3, 4, 10),
        (20, 784, 8, 5, 6, 11),
        (12, 16, 12, 0, 12, 5),
        (9, 7, 5, 6, 3, 9),
        (100, 65, 64, 36, 64, 100),
        (3, 1, 3, 0, 3, 3),
        (9, 7, 5, 2, 5, 4),
        (12, 65, 12, 0, 12, 5),
    ] {
        let images: Vec<u8> = (0..samples * pixels)
            .map(|_| rng.below(256) as u8)
            .collect();
        let labels: Vec<u8> = (0..samples).map(|_| rng.below(10) as u8).collect();
        let perm = rng.permutation(samples);
        let (lo, hi) = images.split_at(split * pixels);
        let lo_t = c.tensor_u32("images", &[pack(lo).len()], &pack(lo));
        let hi_t = c.tensor_u32("images_hi", &[pack(hi).len()], &pack(hi));
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
        let set = Images {
            lo: &lo_t,
            hi: &hi_t,
            split,
            shape: [1, 1, pixels],
        };
        let d =
            c.k.data
                .gather(&c.gpu, &set, &lt, &pt, &lut, &x, &y, &c.step)
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

/// Both gathers on normalised multi-channel images, against torchvision's steps (the reference):
/// bit for bit, with the images split over two buffers, a short last batch, every corner and
/// flip of the crop, and the epoch's draws.
#[test]
fn gather_crop_flip_matches_reference() {
    let c = ctx();
    let mut rng = Rng::new(52);
    // (channels, height, width, samples, rows, start, valid, split, pad)
    for &(ch, h, w, samples, rows, start, valid, split, pad) in &[
        (
            3usize, 32usize, 32usize, 6usize, 4usize, 1usize, 4usize, 6usize, 4usize,
        ),
        (3, 5, 7, 20, 18, 0, 18, 9, 4),
        (3, 6, 4, 11, 8, 8, 3, 3, 2),
        (1, 5, 5, 4, 4, 0, 4, 4, 1),
    ] {
        let px = ch * h * w;
        let images: Vec<u8> = (0..samples * px).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<u8> = (0..samples).map(|_| rng.below(10) as u8).collect();
        let perm = rng.permutation(samples);
        let m = dst::data::cifar::MEAN;
        let sd = dst::data::cifar::STD;
        let spec = ImageSpec {
            channels: ch,
            height: h,
            width: w,
            norm: if ch == 3 {
                (0..3).map(|i| (m[i], sd[i])).collect()
            } else {
                vec![]
            },
        };
        let lut_v = if ch == 3 { cifar_lut() } else { byte_lut() };
        // Every corner and the centre with and without flip first, then random draws.
        let span = 2 * pad as u32;
        let mut draws: Vec<CropFlip> = [
            (0, 0),
            (span, 0),
            (0, span),
            (span, span),
            (pad as u32, pad as u32),
        ]
        .iter()
        .flat_map(|&(dx, dy)| [false, true].map(|flip| CropFlip { dx, dy, flip }))
        .collect();
        while draws.len() < samples {
            draws.push(CropFlip {
                dx: rng.below(span as u64 + 1) as u32,
                dy: rng.below(span as u64 + 1) as u32,
                flip: rng.below(2) == 1,
            });
        }
        draws.truncate(samples);
        let (lo, hi) = images.split_at(split * px);
        let lo_t = c.tensor_u32("images", &[pack(lo).len()], &pack(lo));
        let hi_t = c.tensor_u32("images_hi", &[pack(hi).len()], &pack(hi));
        let lt = c.tensor_u32("labels", &[pack(&labels).len()], &pack(&labels));
        let pt = c.tensor_u32("perm", &[samples], &perm);
        let words: Vec<u32> = draws.iter().map(|d| d.pack()).collect();
        let ct = c.tensor_u32("crops", &[samples], &words);
        let lut = c.tensor("lut", &[lut_v.len()], &lut_v);
        let set = Images {
            lo: &lo_t,
            hi: &hi_t,
            split,
            shape: [ch, h, w],
        };
        c.set_step(StepInfo {
            batch_start: start as u32,
            valid: valid as u32,
            ..Default::default()
        });
        let tag = format!("{ch}x{h}x{w} split {split} pad {pad}");
        for crop in [true, false] {
            let x = c.poisoned("x", &[rows, px]);
            let y = c.tensor_u32("y", &[rows], &vec![u32::MAX; rows]);
            let d = if crop {
                c.k.data
                    .gather_crop_flip(&c.gpu, &set, &lt, &pt, &lut, &ct, pad, &x, &y, &c.step)
                    .unwrap()
            } else {
                c.k.data
                    .gather(&c.gpu, &set, &lt, &pt, &lut, &x, &y, &c.step)
                    .unwrap()
            };
            run_once(&c.gpu, &[d], 0).unwrap();
            let (want_x, want_y) = reference::gather(
                &images,
                &labels,
                &perm,
                &spec,
                crop.then_some((draws.as_slice(), pad)),
                rows,
                start,
                valid,
            );
            assert_eq!(
                bits(&c.read(&x)),
                bits(&want_x),
                "{} x, {tag}",
                if crop { "gather_crop_flip" } else { "gather" }
            );
            assert_eq!(c.read_u32(&y), want_y, "y, {tag}");
        }
    }
    // The identity draw is the plain gather; draws of an epoch are what the host says.
    assert_eq!(
        CropFlip::unpack(CropFlip::IDENTITY.pack()),
        CropFlip::IDENTITY
    );
    let d = epoch_draws(1, 1, 100);
    assert!(d.iter().all(|c| CropFlip::unpack(c.pack()) == *c));
}
