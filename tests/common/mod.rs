//! Helpers shared by the end-to-end test binaries (train, lenet5, lstm, control): the device,
//! temporary run directories, a quiet training call, and checkpoint comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dst::checkpoint::Checkpoint;
use dst::gpu::Gpu;
use dst::train::{self, Quiet, RunOptions, TrainConfig, TrainError};

/// The adapter the environment selects; a test that cannot get one fails loudly.
pub fn gpu() -> Gpu {
    Gpu::from_env().unwrap_or_else(|e| panic!("training tests need an adapter: {e}"))
}

/// A fresh (removed) directory under the temp dir, unique to this process.
pub fn tmp(binary: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dst-{binary}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Trains per `cfg` into `out` without output.
pub fn run(cfg: &TrainConfig, out: &Path, resume: bool) -> Result<train::Summary, TrainError> {
    train::train(
        gpu(),
        cfg,
        &RunOptions {
            out: out.to_path_buf(),
            resume,
            header: None,
        },
        &mut Quiet,
    )
}

/// The lines of a run's metrics.jsonl of one kind ("step" or "epoch").
pub fn metrics(out: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// The mean loss of every log window.
pub fn step_losses(out: &Path) -> Vec<f64> {
    metrics(out, "step")
        .iter()
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// The checkpoints of two run directories hold the same tensors, bit for bit, at the same step.
pub fn assert_same_checkpoints(a: &Path, b: &Path) -> Checkpoint {
    let (ca, cb) = (
        Checkpoint::load(&a.join("checkpoint.safetensors")).unwrap(),
        Checkpoint::load(&b.join("checkpoint.safetensors")).unwrap(),
    );
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    for ((na, sa, va), (nb, sb, vb)) in ca.tensors.iter().zip(&cb.tensors) {
        assert_eq!((na, sa), (nb, sb));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(va) == bits(vb), "tensor {na} differs after resume");
    }
    assert_eq!(ca.meta("step"), cb.meta("step"));
    ca
}

/// `steps` DST steps of `cfg`'s model (batch `batch`, the first images of its data) with a
/// plan built for adapter class `class` on this adapter, sparse products off: the snapshot
/// (parameters, momenta) and the plan's dispatch labels.
pub fn steps_as_class(
    cfg: &TrainConfig,
    class: dst::gpu::AdapterClass,
    batch: usize,
    steps: u32,
) -> (Checkpoint, Vec<String>) {
    let data = cfg.load_data().unwrap();
    let opt = cfg.optimizer();
    let mut g = gpu();
    g.class = class;
    let mut session = train::Session::new(g, &cfg.model, true, 1, opt.is_adam()).unwrap();
    session.sparse_keep = 0.0;
    session.sparse_keep_conv = 0.0;
    session.sparse_keep_lstm = 0.0;
    session.sparse_input = 0.0;
    let train = session.upload("train", &data.train).unwrap();
    train.start_epoch(&session.gpu, 1, 1);
    let plan = session
        .plan(&train, batch, dst::nn::Mode::Train, cfg.alpha as f32, opt)
        .unwrap();
    let labels = plan.dispatches.iter().map(|d| d.label.clone()).collect();
    let infos: Vec<_> = (0..steps)
        .map(|s| opt.step_info(u64::from(s) + 1, cfg.lr, s as usize * batch, batch))
        .collect();
    session.run_steps(&plan, &infos).unwrap();
    (session.snapshot().unwrap(), labels)
}

/// The GPU-class and the CPU-class plans of `cfg`'s model, `steps` steps each from the same
/// state on this adapter: every tensor of the two snapshots agrees within `tol` in the norm
/// of its difference over its own norm (float reassociation: the classes' kernels sum in
/// different orders; a norm, as Adam's first steps can turn a rounding difference in a
/// near-zero gradient into a whole step). Returns the two plans' labels (GPU, CPU).
pub fn assert_classes_train_alike(
    cfg: &TrainConfig,
    batch: usize,
    steps: u32,
    tol: f64,
) -> (Vec<String>, Vec<String>) {
    use dst::gpu::AdapterClass;
    let (gpu_run, gpu_labels) = steps_as_class(cfg, AdapterClass::Gpu, batch, steps);
    let (cpu_run, cpu_labels) = steps_as_class(cfg, AdapterClass::Cpu, batch, steps);
    assert_eq!(gpu_run.tensors.len(), cpu_run.tensors.len());
    let mut worst = (0.0f64, String::new());
    for ((t, _, a), (u, _, b)) in gpu_run.tensors.iter().zip(&cpu_run.tensors) {
        assert_eq!(t, u);
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let diff = norm(&mut a.iter().zip(b).map(|(x, y)| (x - y) as f64));
        let d = diff / norm(&mut b.iter().map(|&y| y as f64)).max(1e-12);
        if d > worst.0 {
            worst = (d, t.clone());
        }
    }
    eprintln!(
        "{}: largest relative difference {:.3e}, in {}",
        cfg.model, worst.0, worst.1
    );
    assert!(worst.0 < tol, "{} differs by {:.3e}", worst.1, worst.0);
    (gpu_labels, cpu_labels)
}
