//! What defines a run (`TrainConfig`, saved as `config.json` and in every checkpoint), its
//! per-model defaults and its validation; the errors of training.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;
use crate::data::Mnist;
use crate::gpu::GpuError;
use crate::kernels::masked::ResetPolicy;
use crate::models::{check_name, ModelError};
use crate::plan::Optimizer;

use super::Result;

/// Everything that defines a run; saved as `config.json` and in every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: String,
    /// Dense training (no masks); DST otherwise.
    pub dense: bool,
    pub alpha: f64,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Epochs after which the learning rate is multiplied by `lr_gamma` (PyTorch's MultiStepLR
    /// milestones: with steps [80, 120], epochs 1-80 run at lr, 81-120 at lr * gamma, the rest at
    /// lr * gamma^2).
    #[serde(default)]
    pub lr_steps: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub lr_gamma: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Use only the first N training images.
    pub limit_train: Option<usize>,
    /// Log every N steps (and at every epoch end).
    pub log_every: usize,
    /// The folder of the model's dataset (MNIST: the four IDX files; CIFAR-10: the six binary
    /// batch files); None: the embedded MNIST subset (MNIST models only).
    pub data: Option<PathBuf>,
    /// "sgd" (momentum, the paper's choice for LeNet) or "adam" (betas 0.9/0.999, eps 1e-8).
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Steer alpha so that the model keep ratio reaches this fraction and holds it (None: alpha
    /// stays fixed, as in the paper).
    #[serde(default)]
    pub target_keep: Option<f64>,
    /// The epoch by which `target_keep` is to be reached (default: 60 % of the run).
    #[serde(default)]
    pub target_epoch: Option<usize>,
    /// What a masked matrix keeping <= 1 % does: "paper" (thresholds to 0), "floor" (every row
    /// keeps its strongest weight) or "none".
    #[serde(default = "default_reset")]
    pub reset: String,
    /// Hold out the last N training images as a validation split (never the test set) and
    /// record the epoch that is best on it.
    #[serde(default)]
    pub valid: Option<usize>,
    /// Keep ratio at or below which masked linear layers, convolutions and LSTM layers (their
    /// recurrent steps) use sparse products (None: the adapter's defaults,
    /// `kernels::sparse::default_sparse_keep`, `default_sparse_keep_conv`,
    /// `default_sparse_keep_lstm`).
    #[serde(default)]
    pub sparse_keep: Option<f64>,
    /// Input density (nonzero (8-sample block, input) pairs) at or below which such a layer's
    /// forward uses the input-sparse product; above 0, large linear layers' weight gradients
    /// skip the input's zeros too (None: the adapter's default,
    /// `kernels::sparse::default_sparse_input`).
    #[serde(default)]
    pub sparse_input: Option<f64>,
}

fn default_gamma() -> f64 {
    0.1
}

fn default_reset() -> String {
    "paper".into()
}

fn default_optimizer() -> String {
    "sgd".into()
}

/// The settings in which two serialised configs differ, as (name, theirs, ours), a setting one
/// of them lacks as null; in `ours`' order, then those only `theirs` has. `skip` names the
/// settings not compared.
pub fn setting_differences(
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
    skip: impl Fn(&str) -> bool,
) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let null = serde_json::Value::Null;
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect()
    };
    let mut names = keys(ours);
    names.extend(keys(theirs).into_iter().filter(|k| ours.get(k).is_none()));
    names
        .into_iter()
        .filter(|k| !skip(k))
        .filter_map(|k| {
            let (t, o) = (
                theirs.get(&k).unwrap_or(&null),
                ours.get(&k).unwrap_or(&null),
            );
            (t != o).then(|| (k, t.clone(), o.clone()))
        })
        .collect()
}

impl Default for TrainConfig {
    /// The paper's LeNet-300-100 settings (METHOD.md section 5).
    fn default() -> Self {
        TrainConfig::for_model("lenet300").expect("lenet300 is registered")
    }
}

impl TrainConfig {
    /// The paper's settings for `model` (METHOD.md section 5): DST, seed 1, the embedded data.
    pub fn for_model(model: &str) -> std::result::Result<TrainConfig, ModelError> {
        let d = crate::models::info(model)?.defaults;
        Ok(TrainConfig {
            model: model.into(),
            dense: false,
            alpha: d.alpha,
            epochs: d.epochs,
            batch: d.batch,
            lr: d.lr,
            lr_steps: d.lr_steps.to_vec(),
            lr_gamma: default_gamma(),
            momentum: d.momentum,
            weight_decay: d.weight_decay,
            seed: 1,
            limit_train: None,
            log_every: 100,
            data: None,
            optimizer: d.optimizer.into(),
            target_keep: None,
            target_epoch: None,
            reset: default_reset(),
            valid: None,
            sparse_keep: None,
            sparse_input: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The run folder's state refuses the call (nothing to resume, a run already there, every
    /// epoch already trained): nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// Another process holds the run folder's lock (`.dst.lock`): it is training that run.
    #[error(
        "{} is in use by another dst process (it is training or resuming this run); wait for \
         it to end, or pick another folder; nothing was changed",
        dir.display()
    )]
    InUse { dir: PathBuf },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted at epoch {epoch}, step {step}; {}", interrupted_hint(*saved, dir))]
    Interrupted {
        epoch: usize,
        step: u64,
        /// The epoch of the checkpoint on disk (0: none yet).
        saved: usize,
        dir: PathBuf,
    },
    #[error("training diverged at epoch {epoch}, step {step}: {what}; the learning rate (--lr) is most likely too large for this model{}; try a smaller one. {}", if *dense { "" } else { ", or --alpha is" }, diverged_rest(*saved, dir))]
    Diverged {
        epoch: usize,
        step: u64,
        what: &'static str,
        dir: PathBuf,
        /// A dense run: no --alpha to blame.
        dense: bool,
        /// The epoch of the checkpoint on disk (0: none was written).
        saved: usize,
    },
}

/// What a diverged run leaves in `dir`, and how to train there with other settings.
fn diverged_rest(saved: usize, dir: &std::path::Path) -> String {
    let d = dir.display();
    if saved > 0 {
        format!(
            "Its last good checkpoint (epoch {saved}) is kept unchanged in {d}; `--resume` would \
             continue with the same settings, so to train with others remove {d} or pick another \
             --out"
        )
    } else {
        format!(
            "No checkpoint had been written: {d} holds only the run's settings and log (its \
             metrics.jsonl ends with the divergence); to train with other settings remove {d} or \
             pick another --out"
        )
    }
}

/// The most epochs a run may take (`--epochs`).
pub const MAX_EPOCHS: usize = 100_000;

impl TrainConfig {
    /// The learning rate of (1-based) `epoch`: `lr` times `lr_gamma` for every step passed.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.lr_steps.iter().filter(|&&s| epoch > s).count();
        self.lr * self.lr_gamma.powi(passed as i32)
    }

    /// Checks every value before any GPU work.
    pub fn validate(&self) -> Result<()> {
        self.check(false)
    }

    /// `validate` for a run resumed for another length: its target epoch (`--target-epoch`, or
    /// the default it was started with) may lie past its new end, where the run stops before
    /// its keep ratio reaches the target.
    pub fn validate_resumed(&self) -> Result<()> {
        self.check(true)
    }

    /// config.json records the data folder as text (JSON strings are UTF-8): a path that is not
    /// would stop the run as it writes its config.
    pub(crate) fn validate_data_path(&self) -> Result<()> {
        match self.data.as_ref().filter(|d| d.to_str().is_none()) {
            Some(d) => Err(TrainError::Config(format!(
                "--data {}: the path is not valid UTF-8, and a run records its data folder in \
                 config.json as text: rename the folder, or link to it from a UTF-8 path",
                d.display()
            ))),
            None => Ok(()),
        }
    }

    fn check(&self, resumed: bool) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        check_name(&self.model)?;
        self.validate_data_path()?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        // The GPU computes in f32: a rate that rounds to 0 (or to infinity) there trains nothing.
        if !(self.lr as f32 > 0.0 && (self.lr as f32).is_finite()) {
            return bad(format!(
                "--lr {:e} is {} in f32, the precision training computes in: give a rate \
                 between about 1e-45 and 3e38",
                self.lr, self.lr as f32
            ));
        }
        if !(self.lr_gamma.is_finite() && self.lr_gamma > 0.0) {
            return bad(format!(
                "--lr-gamma must be a positive number, got {}",
                self.lr_gamma
            ));
        }
        if self.lr_steps.contains(&0) || self.lr_steps.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!(
                "--lr-steps must be increasing epochs >= 1 (e.g. 80,120), got {:?}",
                self.lr_steps
            ));
        }
        // A step at epoch s lowers the rate from epoch s + 1: never, at or past the longest run.
        // (Not refused on resume: a run an earlier version started with one goes on.)
        if let Some(&s) = self
            .lr_steps
            .last()
            .filter(|&&s| s >= MAX_EPOCHS && !resumed)
        {
            return bad(format!(
                "--lr-steps {s}: a step applies from the epoch after it, and a run takes at most \
                 {MAX_EPOCHS} epochs, so it would never apply"
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return bad(format!("--alpha must be >= 0, got {}", self.alpha));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if self.batch == 0 || self.batch > 65_535 {
            return bad(format!("--batch must be in 1..=65535, got {}", self.batch));
        }
        if self.epochs == 0 {
            return bad("--epochs must be >= 1".into());
        }
        // A typo guard: the paper's longest runs take 160 epochs.
        if self.epochs > MAX_EPOCHS {
            return bad(format!(
                "--epochs {} is more than {MAX_EPOCHS} (the paper's longest runs take 160)",
                self.epochs
            ));
        }
        if self.log_every == 0 {
            return bad("--log-every must be >= 1".into());
        }
        if !["sgd", "adam"].contains(&self.optimizer.as_str()) {
            return bad(format!(
                "--optimizer must be sgd or adam, got {:?}",
                self.optimizer
            ));
        }
        if self.limit_train == Some(0) {
            return bad("--limit-train must be >= 1".into());
        }
        if ResetPolicy::parse(&self.reset).is_none_or(|p| p == ResetPolicy::Count) {
            return bad(format!(
                "--reset must be one of {}, got {:?}",
                ResetPolicy::NAMES,
                self.reset
            ));
        }
        for (flag, value) in [
            ("--sparse-keep", self.sparse_keep),
            ("--sparse-input", self.sparse_input),
        ] {
            if let Some(r) = value {
                if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
                    return bad(format!("{flag} must be a fraction from 0 to 1, got {r}"));
                }
            }
        }
        if let Some(r) = self.target_keep {
            if !(r.is_finite() && r > 0.0 && r < 1.0) {
                return bad(format!(
                    "--target-keep must be a fraction strictly between 0 and 1, got {r}"
                ));
            }
            if self.dense {
                return bad("--target-keep needs DST: drop --dense".into());
            }
            if self.alpha <= 0.0 {
                return bad("--target-keep starts from --alpha, which must then be > 0".into());
            }
        }
        if let Some(e) = self.target_epoch {
            if self.target_keep.is_none() {
                return bad("--target-epoch needs --target-keep".into());
            }
            if e == 0 || (e > self.epochs && !resumed) {
                return bad(format!(
                    "--target-epoch must be in 1..={} (the run's epochs), got {e}",
                    self.epochs
                ));
            }
        }
        if self.valid == Some(0) {
            return bad("--valid must be >= 1".into());
        }
        // Known before the data is read (a study checks every run's before the first trains).
        if let (Some(v), Some(n)) = (self.valid, self.limit_train) {
            if v >= n {
                return bad(format!(
                    "--valid {v} leaves no training images of the {n} that --limit-train takes"
                ));
            }
        }
        let dataset = crate::models::info(&self.model)?.dataset;
        if self.data.is_none() && dataset != crate::data::DatasetKind::Mnist {
            return bad(format!(
                "{} trains on {}, which is not embedded: download it with `dst fetch cifar10 --to \
                 data/cifar10` and pass --data data/cifar10",
                self.model,
                dataset.name()
            ));
        }
        Ok(())
    }

    pub fn masked(&self) -> bool {
        !self.dense
    }

    pub fn optimizer(&self) -> Optimizer {
        if self.optimizer == "adam" {
            return Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay as f32,
            };
        }
        Optimizer::Sgd {
            momentum: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    /// Loads the data this config names, of the model's dataset (`ModelInfo::dataset`; the
    /// embedded MNIST subset when `data` is None); with
    /// `valid`, the validation split (the last N training images, after `limit_train`) is
    /// returned apart and removed from the training set.
    pub fn load_data(&self) -> Result<Mnist> {
        Ok(self.load_data_split()?.0)
    }

    /// Whether `data` holds the model's dataset files, without reading them (nothing to check
    /// for the embedded subset): a run refused for its data before it opens an adapter.
    pub fn check_data(&self) -> Result<()> {
        let kind = crate::models::info(&self.model)?.dataset;
        if let Some(dir) = &self.data {
            kind.locate_for(&self.model, dir)?;
        }
        // A validation split that leaves nothing to train on, from the images' count alone
        // (`load_data_split` says the same once the data is read).
        if let (Some(v), Some(n)) = (self.valid, kind.train_count(self.data.as_deref())) {
            let n = self.limit_train.map_or(n, |l| l.min(n));
            if v >= n {
                return Err(TrainError::Config(format!(
                    "--valid {v} leaves no training images (the training set holds {n})"
                )));
            }
        }
        Ok(())
    }

    /// `load_data` and the validation split, if any.
    pub fn load_data_split(&self) -> Result<(Mnist, Option<crate::data::Dataset>)> {
        let kind = crate::models::info(&self.model)?.dataset;
        let mut m = match self.data.as_deref() {
            Some(dir) => kind.load_for(&self.model, dir)?,
            None => kind.load(None)?,
        };
        if let Some(n) = self.limit_train {
            m.train = m.train.limit(n);
        }
        let mut valid = None;
        if let Some(v) = self.valid {
            if v >= m.train.count {
                return Err(TrainError::Config(format!(
                    "--valid {v} leaves no training images (the training set holds {})",
                    m.train.count
                )));
            }
            let keep = m.train.count - v;
            let mut v = m.train.tail(keep);
            // Evaluated like the test set: never augmented.
            v.augment = false;
            valid = Some(v);
            m.train = m.train.limit(keep);
        }
        Ok((m, valid))
    }

    /// The epoch by which `--target-keep` is to be reached: `target_epoch`, or 60 % of the run.
    pub fn target_epoch_or_default(&self) -> usize {
        self.target_epoch
            .unwrap_or_else(|| default_target_epoch(self.epochs))
    }

    pub fn reset_policy(&self) -> ResetPolicy {
        ResetPolicy::parse(&self.reset).unwrap_or(ResetPolicy::Paper)
    }
}

/// The epoch by which `--target-keep` is reached without `--target-epoch`: 60 % of the run's
/// `epochs`, rounded up.
pub fn default_target_epoch(epochs: usize) -> usize {
    ((epochs as f64 * 0.6).ceil() as usize).max(1)
}

/// Whether two recorded `--data` settings name the same folder: both the embedded subset, or the
/// same path once made absolute against the working folder (a relative path that an older
/// version recorded, or a study's flag, against the absolute one `train` records now), or the
/// same folder once links are resolved.
pub fn same_data(a: Option<&std::path::Path>, b: Option<&std::path::Path>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b
                || matches!((std::path::absolute(a), std::path::absolute(b)), (Ok(x), Ok(y)) if x == y)
                || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

/// The dead-layer policy of the run that wrote `ck` (its `config` metadata's `--reset`): every
/// reader that derives a mask from the checkpoint (evaluation, export, inference, bench) applies
/// it, so a `--reset floor` run is not judged by the paper's reset. The paper's rule where the
/// checkpoint records no run configuration (an export turned back into a checkpoint).
pub fn reset_policy_of(ck: &crate::checkpoint::Checkpoint) -> ResetPolicy {
    ck.meta("config")
        .and_then(|c| serde_json::from_str::<TrainConfig>(c).ok())
        .map_or(ResetPolicy::Paper, |c| c.reset_policy())
}

/// What to do about a write that failed for want of room or of write access: the run keeps what
/// it saved (its files are replaced whole), so it goes on once that is fixed.
pub fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "; free some space, then run the command again (a run: `dst train --resume` it, from \
             its last checkpoint)"
        }
        std::io::ErrorKind::ReadOnlyFilesystem => {
            "; the folder is on a read-only file system: write into a writable one (a new run's \
             --out; a run to resume: copy its folder there)"
        }
        _ => "",
    }
}

/// What an interrupted run's folder holds, and how to go on.
fn interrupted_hint(saved: usize, dir: &std::path::Path) -> String {
    let d = dir.display();
    let w = crate::report::shell_word(dir);
    if saved == 0 {
        format!("{d} has no checkpoint yet: `dst train --resume {w}` starts it over (a sweep or reproduction: run its command again)")
    } else {
        format!("{d} keeps the checkpoint of epoch {saved}: continue with `dst train --resume {w}` (a sweep or reproduction: run its command again)")
    }
}

#[cfg(test)]
mod tests {
    use super::setting_differences;
    use serde_json::json;

    #[test]
    fn setting_differences_names_each_changed_setting_both_ways() {
        let theirs = json!({"lr": 0.01, "seed": 1, "epochs": 2, "old": true});
        let ours = json!({"lr": 0.005, "seed": 1, "epochs": 3, "new": "x"});
        let d = setting_differences(&theirs, &ours, |k| k == "epochs");
        assert_eq!(
            d,
            vec![
                ("lr".to_string(), json!(0.01), json!(0.005)),
                ("new".to_string(), json!(null), json!("x")),
                ("old".to_string(), json!(true), json!(null)),
            ]
        );
        assert!(setting_differences(&theirs, &theirs, |_| false).is_empty());
        // Against something that is no config at all: every setting of ours differs.
        assert_eq!(setting_differences(&json!(null), &ours, |_| false).len(), 4);
    }
}
