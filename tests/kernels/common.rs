use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dst::gpu::{Gpu, Tensor};
use dst::kernels::{Kernels, StepInfo, StepRing};
use dst::rng::Rng;

pub struct Ctx {
    pub gpu: Gpu,
    pub k: Arc<Kernels>,
    pub step: StepRing,
    /// The kernels without their subgroup forms (`plain_kernels`), built on first use.
    plain: OnceLock<Arc<Kernels>>,
}

/// The shared device; a test that cannot get one fails loudly (never passes silently).
pub fn ctx() -> MutexGuard<'static, Ctx> {
    static CTX: OnceLock<Mutex<Ctx>> = OnceLock::new();
    CTX.get_or_init(|| {
        let gpu = Gpu::from_env().unwrap_or_else(|e| panic!("kernel tests need an adapter: {e}"));
        eprintln!("kernel tests on {}", gpu.describe());
        let k = Kernels::new(&gpu, None).expect("kernels");
        let step = StepRing::new(&gpu, &k, 4);
        Mutex::new(Ctx {
            gpu,
            k,
            step,
            plain: OnceLock::new(),
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    /// The kernels with the plain forms only (what every adapter without 8-lane subgroups runs):
    /// None where `k` has no subgroup forms either (`Gpu::subgroups8` false).
    pub fn plain_kernels(&self) -> Option<Arc<Kernels>> {
        self.gpu.subgroups8.then(|| {
            self.plain
                .get_or_init(|| Kernels::with_subgroups(&self.gpu, None, false).expect("kernels"))
                .clone()
        })
    }

    /// Where the device runs subgroup forms: `build` on the plain kernels writes into `out` the
    /// bits `want` (what the default kernels wrote there). `out` is poisoned (NaN) first.
    pub fn plain_forms_agree(
        &self,
        tag: &str,
        build: impl Fn(&Kernels) -> Vec<dst::kernels::Dispatch>,
        out: &Tensor,
        want: &[f32],
    ) {
        let Some(plain) = self.plain_kernels() else {
            return;
        };
        self.gpu.write(out, &vec![f32::NAN; out.len()]);
        dst::kernels::run_once(&self.gpu, &build(&plain), 0).unwrap();
        let got = self.read(out);
        let differ = got
            .iter()
            .zip(want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            got.len() == want.len() && differ.is_none(),
            "{tag}: the subgroup form and the plain one differ (element {differ:?})"
        );
    }

    pub fn tensor(&self, label: &str, shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::from_slice(&self.gpu, label, shape, data).unwrap()
    }
    pub fn tensor_u32(&self, label: &str, shape: &[usize], data: &[u32]) -> Tensor {
        Tensor::from_slice(&self.gpu, label, shape, data).unwrap()
    }
    /// An output tensor filled with NaN.
    pub fn poisoned(&self, label: &str, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        self.tensor(label, shape, &vec![f32::NAN; n])
    }
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        self.gpu.read::<f32>(t).unwrap()
    }
    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        self.gpu.read::<u32>(t).unwrap()
    }
    pub fn set_step(&self, info: StepInfo) {
        self.step.write(&self.gpu, &[info]);
    }
}

pub fn rand_vec(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.range(lo, hi) as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `|gpu - ref| <= atol + rtol * |ref|` for every element; on failure prints the worst element and
/// a few pairs.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, -1.0f64);
    let mut bad = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let ok = err <= atol + rtol * w.abs();
        if !ok || g.is_nan() {
            bad += 1;
        }
        let score = if g.is_nan() {
            f64::INFINITY
        } else {
            err / (atol + rtol * w.abs())
        };
        if score > worst.1 {
            worst = (i, score);
        }
    }
    if bad > 0 {
        let i = worst.0;
        let pairs: Vec<String> = (0..got.len().min(6))
            .map(|j| format!("[{j}] {} vs {}", got[j], want[j]))
            .collect();
        panic!(
            "{what}: {bad}/{} elements off (atol {atol}, rtol {rtol}); worst [{i}]: got {} want {}; first: {}",
            got.len(),
            got[i],
            want[i],
            pairs.join(", ")
        );
    }
}

/// Relative error bound scaled by the reference's norm (for GEMM-like outputs).
pub fn assert_close_norm(what: &str, got: &[f32], want: &[f64], rel: f64) {
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-30);
    assert_close(what, got, want, rel * scale, 0.0);
}
