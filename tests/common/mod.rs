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
