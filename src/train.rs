//! The training loop: plans built once and replayed, many steps per submission, no readback
//! between log points; evaluation, metrics, checkpoints, resume and the divergence guard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::{Dataset, Mnist};
use crate::gpu::{Gpu, GpuError, Tensor};
use crate::kernels::loss::STATS_WORDS;
use crate::kernels::{data::byte_lut, Kernels, StepInfo, StepRing};
use crate::models::{check_name, Model, ModelError};
use crate::nn::{MaskView, Mode};
use crate::plan::{GpuData, Optimizer, Plan};
use crate::rng::Rng;

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
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Use only the first N training images.
    pub limit_train: Option<usize>,
    /// Log every N steps (and at every epoch end).
    pub log_every: usize,
    /// A folder of IDX files; None: the embedded MNIST subset.
    pub data: Option<PathBuf>,
    /// "sgd" (momentum, the paper's choice for LeNet) or "adam" (betas 0.9/0.999, eps 1e-8).
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
}

fn default_optimizer() -> String {
    "sgd".into()
}

impl Default for TrainConfig {
    /// The paper's LeNet-300-100 settings (METHOD.md section 5).
    fn default() -> Self {
        TrainConfig {
            model: "lenet300".into(),
            dense: false,
            alpha: 5e-4,
            epochs: 20,
            batch: 64,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 1,
            limit_train: None,
            log_every: 100,
            data: None,
            optimizer: default_optimizer(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training diverged at epoch {epoch}, step {step}: {what}; the learning rate (--lr) is most likely too large for this model, or --alpha is; try a smaller one (the last good checkpoint, if any, is kept unchanged in {dir})")]
    Diverged {
        epoch: usize,
        step: u64,
        what: &'static str,
        dir: PathBuf,
    },
}

type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainConfig {
    /// Checks every value before any GPU work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        check_name(&self.model)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
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

    /// Loads the data this config names (the embedded subset when `data` is None).
    pub fn load_data(&self) -> Result<Mnist> {
        let mut m = match &self.data {
            Some(dir) => crate::data::load_dir(dir)?,
            None => crate::data::try_load_embedded()?,
        };
        if let Some(n) = self.limit_train {
            m.train = m.train.limit(n);
        }
        Ok(m)
    }
}

/// Per-layer sparsity at one point of training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    pub shape: Vec<usize>,
    pub kept: u64,
    pub total: u64,
    pub keep_ratio: f64,
    pub threshold_min: f64,
    pub threshold_mean: f64,
    pub threshold_max: f64,
    pub resets: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: u64,
    pub train_loss: f64,
    pub train_penalty: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub keep_ratio: f64,
    pub layers: Vec<LayerStats>,
    pub epoch_seconds: f64,
    pub ms_per_step: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub dense: bool,
    pub adapter: String,
    pub data: String,
    pub epochs: usize,
    pub steps: u64,
    pub last: EpochRecord,
    /// The epoch with the best test accuracy.
    pub best_acc_epoch: usize,
    pub best_acc: f64,
    pub best_acc_keep: f64,
    /// The epoch with the lowest model keep ratio (the reference trainer's second pick).
    pub lowest_keep_epoch: usize,
    pub lowest_keep: f64,
    pub lowest_keep_acc: f64,
    pub mean_ms_per_step: f64,
}

/// Where progress goes: a bar on a terminal, plain lines otherwise.
pub trait Progress {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: u64);
    fn step(&mut self, done: u64, msg: &str);
    fn line(&mut self, msg: &str);
    fn finish_epoch(&mut self);
}

/// No output (tests).
pub struct Quiet;
impl Progress for Quiet {
    fn start_epoch(&mut self, _: usize, _: usize, _: u64) {}
    fn step(&mut self, _: u64, _: &str) {}
    fn line(&mut self, _: &str) {}
    fn finish_epoch(&mut self) {}
}

/// A model with its device, kernels and datasets, ready to train or evaluate.
pub struct Session {
    pub gpu: Gpu,
    pub kernels: std::sync::Arc<Kernels>,
    pub model: Model,
    pub step_ring: StepRing,
    lut: Tensor,
}

const SLOTS: u32 = 64;

impl Session {
    /// `adam`: allocate Adam's second-moment arena (and checkpoint it).
    pub fn new(gpu: Gpu, model_name: &str, masked: bool, seed: u64, adam: bool) -> Result<Session> {
        let kernels = Kernels::new(&gpu, None)?;
        let model = Model::build(&gpu, model_name, masked, seed, adam)?;
        let step_ring = StepRing::new(&gpu, &kernels, SLOTS);
        let lut = Tensor::from_slice(&gpu, "byte_lut", &[256], &byte_lut())?;
        Ok(Session {
            gpu,
            kernels,
            model,
            step_ring,
            lut,
        })
    }

    pub fn upload(&self, name: &str, ds: &Dataset) -> Result<GpuData> {
        if ds.pixels() != self.model.input.iter().product::<usize>() {
            return Err(TrainError::Config(format!(
                "{name} data has {}x{} images, {} expects {:?} values per sample",
                ds.rows, ds.cols, self.model.name, self.model.input
            )));
        }
        Ok(GpuData::upload(&self.gpu, name, ds)?)
    }

    pub fn plan(
        &self,
        data: &GpuData,
        batch: usize,
        mode: Mode,
        alpha: f32,
        opt: Optimizer,
    ) -> Result<Plan> {
        Ok(Plan::build(
            &self.gpu,
            &self.kernels,
            &self.model,
            &self.step_ring,
            data,
            &self.lut,
            batch,
            mode,
            alpha,
            opt,
        )?)
    }

    /// Replays `plan` once per StepInfo, `SLOTS` steps per submission, keeping at most two
    /// submissions in flight. No readback.
    pub fn run_steps(&self, plan: &Plan, infos: &[StepInfo]) -> Result<()> {
        let mut in_flight: Option<wgpu::SubmissionIndex> = None;
        let last = infos.len().div_ceil(SLOTS as usize).checked_sub(1);
        for (ci, chunk) in infos.chunks(SLOTS as usize).enumerate() {
            self.step_ring.write(&self.gpu, chunk);
            let mut enc = self
                .gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("steps"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("steps"),
                    timestamp_writes: None,
                });
                for slot in 0..chunk.len() as u32 {
                    plan.record(&mut pass, &self.step_ring, slot);
                }
                if last == Some(ci) {
                    for d in &plan.window_end {
                        d.record(&mut pass, 0);
                    }
                }
            }
            let idx = self.gpu.queue.submit([enc.finish()]);
            if let Some(prev) = in_flight.replace(idx) {
                self.gpu
                    .device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(prev),
                        timeout: None,
                    })
                    .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
            }
            // The ring is rewritten by the next chunk's write, ordered after this submission.
        }
        self.gpu.check("training steps")?;
        Ok(())
    }

    /// Reads a stats buffer and zeroes it.
    pub fn take_stats(&self, stats: &Tensor) -> Result<Stats> {
        let w = self.gpu.read::<u32>(stats)?;
        self.gpu.write(stats, &[0u32; STATS_WORDS]);
        Ok(Stats {
            loss_sum: f32::from_bits(w[0]) as f64,
            penalty_sum: f32::from_bits(w[1]) as f64,
            correct: w[2] as u64,
            seen: w[3] as u64,
            non_finite: w[4] != 0,
            non_finite_params: w[5] != 0,
        })
    }

    /// Test loss and accuracy over `data` (forward passes with the reset rule, as in training).
    pub fn evaluate(&self, plan: &Plan, data: &GpuData) -> Result<(f64, f64)> {
        let b = plan.batch;
        let infos: Vec<StepInfo> = (0..data.count.div_ceil(b))
            .map(|i| StepInfo {
                batch_start: (i * b) as u32,
                valid: (data.count - i * b).min(b) as u32,
                ..Default::default()
            })
            .collect();
        self.run_steps(plan, &infos)?;
        let s = self.take_stats(&plan.stats)?;
        Ok((
            s.loss_sum / infos.len() as f64,
            100.0 * s.correct as f64 / s.seen.max(1) as f64,
        ))
    }

    /// The keep counters [before reset, after, resets, spare] of each masked layer, in one readback.
    fn layer_keeps(&self, views: &[MaskView]) -> Result<Vec<[u32; 4]>> {
        let ranges: Vec<_> = views
            .iter()
            .map(|v| (&*v.layer_keep.buffer, v.layer_keep.offset, 16u64))
            .collect();
        Ok(self
            .gpu
            .read_ranges(&ranges)?
            .iter()
            .map(|k| {
                let w: Vec<u32> = bytemuck::pod_collect_to_vec(k);
                [w[0], w[1], w[2], w[3]]
            })
            .collect())
    }

    /// (layer, keep ratio) of every masked layer, from the keep counters alone (a few bytes).
    pub fn keep_ratios(&self) -> Result<Vec<(String, f64)>> {
        let views = self.model.mask_views();
        let keeps = self.layer_keeps(&views)?;
        Ok(views
            .iter()
            .zip(keeps)
            .map(|(v, k)| (v.name.clone(), k[1] as f64 / (v.rows * v.cols) as f64))
            .collect())
    }

    /// Per-layer keep ratios and threshold statistics (reads the keep counters and the arena).
    pub fn layer_stats(&self) -> Result<Vec<LayerStats>> {
        let views = self.model.mask_views();
        let params = self.gpu.read::<f32>(&self.model.arena.params)?;
        let mut out = Vec::new();
        if views.is_empty() {
            for e in &self.model.arena.layout.entries {
                if e.name.ends_with(".weight") {
                    let n = e.len() as u64;
                    out.push(LayerStats {
                        name: e.name.trim_end_matches(".weight").to_string(),
                        shape: e.shape.clone(),
                        kept: n,
                        total: n,
                        keep_ratio: 1.0,
                        threshold_min: 0.0,
                        threshold_mean: 0.0,
                        threshold_max: 0.0,
                        resets: 0,
                    });
                }
            }
            return Ok(out);
        }
        for (v, k) in views.iter().zip(self.layer_keeps(&views)?) {
            let e = &self.model.arena.layout.entries[v.threshold.0];
            let t = &params[e.offset + v.threshold_rows.start..e.offset + v.threshold_rows.end];
            let total = (v.rows * v.cols) as u64;
            out.push(LayerStats {
                name: v.name.clone(),
                shape: vec![v.rows, v.cols],
                kept: k[1] as u64,
                total,
                keep_ratio: k[1] as f64 / total as f64,
                threshold_min: t.iter().copied().fold(f32::INFINITY, f32::min) as f64,
                threshold_mean: t.iter().map(|&x| x as f64).sum::<f64>() / t.len() as f64,
                threshold_max: t.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
                resets: k[2],
            });
        }
        Ok(out)
    }

    /// For a masked first layer that reads the image directly: a picture (8x upscaled, grey) of
    /// how many of its rows keep each input pixel, white = the most-kept pixel, black = pruned by
    /// every row. DST prunes MNIST's empty border.
    pub fn input_mask_image(&self, rows: usize, cols: usize) -> Result<Option<image::GrayImage>> {
        let Some(v) = self.model.mask_views().into_iter().next() else {
            return Ok(None);
        };
        if v.cols != rows * cols {
            return Ok(None);
        }
        let a = &self.model.arena;
        let params = self.gpu.read::<f32>(&a.params)?;
        let Some(w_entry) = a.layout.find(&format!("{}.weight", v.name)) else {
            return Ok(None);
        };
        let t_entry = &a.layout.entries[v.threshold.0];
        let w = &params[w_entry.offset..w_entry.offset + w_entry.len()];
        let t = &params[t_entry.offset..t_entry.offset + t_entry.len()];
        let mut kept = vec![0u32; v.cols];
        for r in 0..v.rows {
            for (c, k) in kept.iter_mut().enumerate() {
                *k += (w[r * v.cols + c].abs() - t[r] > 0.0) as u32;
            }
        }
        const SCALE: usize = 8;
        let most = kept.iter().copied().max().unwrap_or(0).max(1) as f64;
        let img =
            image::GrayImage::from_fn((cols * SCALE) as u32, (rows * SCALE) as u32, |x, y| {
                let (px, py) = (x as usize / SCALE, y as usize / SCALE);
                let f = kept[py * cols + px] as f64 / most;
                image::Luma([(255.0 * f).round() as u8])
            });
        Ok(Some(img))
    }

    /// Parameters and optimiser state as a checkpoint (metadata added by the caller).
    pub fn snapshot(&self) -> Result<Checkpoint> {
        let a = &self.model.arena;
        let params = self.gpu.read::<f32>(&a.params)?;
        let m1 = self.gpu.read::<f32>(&a.moment1)?;
        let m2 = self.gpu.read::<f32>(&a.moment2)?;
        let adam = m2.len() == params.len();
        let mut ck = Checkpoint::default();
        for e in &a.layout.entries {
            let r = e.offset..e.offset + e.len();
            let mut push = |name: String, v: &[f32]| {
                ck.tensors
                    .push((name, e.shape.clone(), v[r.clone()].to_vec()))
            };
            push(e.name.clone(), &params);
            push(format!("optim.momentum.{}", e.name), &m1);
            if adam {
                push(format!("optim.second_moment.{}", e.name), &m2);
            }
        }
        ck.metadata.insert("model".into(), self.model.name.clone());
        ck.metadata
            .insert("masked".into(), self.model.masked.to_string());
        Ok(ck)
    }

    /// Restores parameters (and optimiser state when present and `with_optim`) from a checkpoint,
    /// refusing one of another model or shape.
    pub fn restore(&self, ck: &Checkpoint, path: &Path, with_optim: bool) -> Result<()> {
        let mismatch = |reason: String| CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason,
        };
        let model = ck.meta("model").unwrap_or("?");
        let masked = ck.meta("masked").unwrap_or("?");
        if model != self.model.name || masked != self.model.masked.to_string() {
            return Err(mismatch(format!(
                "checkpoint of model {model} (masked {masked}), expected {} (masked {})",
                self.model.name, self.model.masked
            ))
            .into());
        }
        let a = &self.model.arena;
        let mut params = vec![0.0f32; a.layout.total];
        let mut m1 = vec![0.0f32; a.layout.total];
        let adam = a.moment2.len() == a.layout.total;
        let mut m2 = vec![0.0f32; if adam { a.layout.total } else { 1 }];
        for e in &a.layout.entries {
            let fill = |dst: &mut [f32], name: &str, required: bool| -> Result<()> {
                match ck.get(name) {
                    Some((_, shape, v)) if *shape == e.shape => {
                        dst[e.offset..e.offset + e.len()].copy_from_slice(v);
                        Ok(())
                    }
                    Some((_, shape, _)) => Err(mismatch(format!(
                        "tensor {name} has shape {shape:?}, the model expects {:?}",
                        e.shape
                    ))
                    .into()),
                    None if required => Err(mismatch(format!("tensor {name} is missing")).into()),
                    None => Ok(()),
                }
            };
            fill(&mut params, &e.name, true)?;
            if with_optim {
                fill(&mut m1, &format!("optim.momentum.{}", e.name), true)?;
                if adam {
                    fill(&mut m2, &format!("optim.second_moment.{}", e.name), true)?;
                }
            }
        }
        self.gpu.write(&a.params, &params);
        self.gpu.write(&a.moment1, &m1);
        self.gpu.write(&a.moment2, &m2);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub loss_sum: f64,
    pub penalty_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub non_finite: bool,
    /// A parameter or optimiser value was NaN or infinite at the end of the window.
    pub non_finite_params: bool,
}

/// Where a run writes: config.json, metrics.jsonl, checkpoint.safetensors, summary.json.
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
        let p = path.to_path_buf();
        move |source| TrainError::Io {
            path: p.clone(),
            source,
        }
    }

    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("serialisable");
        crate::checkpoint::write_atomic(path, text.as_bytes()).map_err(self.io(path))
    }

    pub fn append_metric(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.metrics();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))?;
        writeln!(f, "{value}").map_err(self.io(&path))
    }
}

/// Options of one `train` call beyond the config.
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
}

/// Trains per `cfg` into `opts.out`; returns the summary. On resume, `cfg` must be the run's
/// config (its `epochs` may be raised).
pub fn train(
    gpu: Gpu,
    cfg: &TrainConfig,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    cfg.validate()?;
    let setup = Instant::now();
    let run = RunDir {
        dir: opts.out.clone(),
    };
    let data = cfg.load_data()?;
    let session = Session::new(
        gpu,
        &cfg.model,
        cfg.masked(),
        cfg.seed,
        cfg.optimizer().is_adam(),
    )?;
    let (mut epoch0, mut step) = (0usize, 0u64);
    let mut history: Vec<EpochRecord> = Vec::new();
    if opts.resume {
        let path = run.checkpoint();
        let ck = Checkpoint::load(&path)?;
        session.restore(&ck, &path, true)?;
        epoch0 = ck.meta("epoch").and_then(|s| s.parse().ok()).unwrap_or(0);
        step = ck.meta("step").and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some(h) = ck.meta("history") {
            history = serde_json::from_str(h).unwrap_or_default();
        }
        // A resume with other settings is allowed (e.g. a lower lr) but is no longer the same run.
        let theirs: serde_json::Value = ck
            .meta("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        let ours = serde_json::to_value(cfg).expect("serialisable");
        let changed: Vec<String> = ours
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.as_str() != "epochs" && theirs.get(k.as_str()) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k} {} -> {v}",
                    theirs.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        if !changed.is_empty() {
            progress.line(&format!(
                "warning: resuming with settings that differ from the checkpoint's ({}); the result will not match an uninterrupted run",
                changed.join(", ")
            ));
        }
        if epoch0 >= cfg.epochs {
            return Err(TrainError::Config(format!(
                "{} already holds {epoch0} epochs; pass --epochs larger than that to continue",
                run.dir.display()
            )));
        }
        progress.line(&format!(
            "resuming {} at epoch {} (step {step})",
            run.dir.display(),
            epoch0 + 1
        ));
    } else {
        std::fs::create_dir_all(&run.dir).map_err(run.io(&run.dir))?;
    }
    run.write_json(&run.config(), cfg)?;

    let train_data = session.upload("train", &data.train)?;
    let test_data = session.upload("test", &data.test)?;
    let alpha = if cfg.masked() { cfg.alpha as f32 } else { 0.0 };
    let train_plan = session.plan(&train_data, cfg.batch, Mode::Train, alpha, cfg.optimizer())?;
    let eval_plan = session.plan(
        &test_data,
        500.min(data.test.count),
        Mode::Eval,
        alpha,
        cfg.optimizer(),
    )?;
    let n = data.train.count;
    let steps_per_epoch = n.div_ceil(cfg.batch) as u64;
    progress.line(&format!(
        "ready in {:.2} s: {} train / {} test images on the GPU, pipelines built, plans of {} (step) and {} (eval batch) dispatches",
        setup.elapsed().as_secs_f64(),
        n,
        data.test.count,
        train_plan.dispatches.len(),
        eval_plan.dispatches.len()
    ));

    for epoch in epoch0 + 1..=cfg.epochs {
        let t0 = Instant::now();
        let perm = Rng::derive(cfg.seed, &format!("epoch {epoch}")).permutation(n);
        session.gpu.write(&train_data.perm, &perm);
        progress.start_epoch(epoch, cfg.epochs, steps_per_epoch);
        let mut epoch_stats = Stats::default();
        let mut done = 0u64;
        while done < steps_per_epoch {
            let window = (cfg.log_every as u64).min(steps_per_epoch - done);
            let opt = cfg.optimizer();
            let infos: Vec<StepInfo> = (done..done + window)
                .map(|s| {
                    let start = s as usize * cfg.batch;
                    let valid = (n - start).min(cfg.batch);
                    opt.step_info(step + s - done + 1, cfg.lr, start, valid)
                })
                .collect();
            session.run_steps(&train_plan, &infos)?;
            done += window;
            step += window;
            let s = session.take_stats(&train_plan.stats)?;
            if s.non_finite || s.non_finite_params {
                return Err(TrainError::Diverged {
                    epoch,
                    step,
                    what: if s.non_finite {
                        "the loss is not finite"
                    } else {
                        "parameters or optimiser state hold NaN or infinite values"
                    },
                    dir: run.dir.clone(),
                });
            }
            epoch_stats.loss_sum += s.loss_sum;
            epoch_stats.penalty_sum += s.penalty_sum;
            epoch_stats.correct += s.correct;
            epoch_stats.seen += s.seen;
            let keeps = session.keep_ratios()?;
            let loss = s.loss_sum / window as f64;
            run.append_metric(&serde_json::json!({
                "kind": "step", "step": step, "epoch": epoch, "loss": loss,
                "penalty": s.penalty_sum / window as f64, "lr": cfg.lr,
                "train_acc": 100.0 * s.correct as f64 / s.seen.max(1) as f64,
                "keep": keeps.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            }))?;
            progress.step(done, &format!("loss {loss:.4}"));
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let (test_loss, test_acc) = session.evaluate(&eval_plan, &test_data)?;
        let layers = session.layer_stats()?;
        let kept: u64 = layers.iter().map(|l| l.kept).sum();
        let total: u64 = layers.iter().map(|l| l.total).sum();
        let rec = EpochRecord {
            epoch,
            step,
            train_loss: epoch_stats.loss_sum / steps_per_epoch as f64,
            train_penalty: epoch_stats.penalty_sum / steps_per_epoch as f64,
            train_acc: 100.0 * epoch_stats.correct as f64 / epoch_stats.seen.max(1) as f64,
            test_loss,
            test_acc,
            keep_ratio: kept as f64 / total.max(1) as f64,
            layers,
            epoch_seconds: t0.elapsed().as_secs_f64(),
            ms_per_step: 1e3 * train_seconds / steps_per_epoch as f64,
        };
        progress.finish_epoch();
        progress.line(&format!(
            "epoch {epoch:3}  loss {:.4}  test acc {:.2}%  keep {:.4}  [{}]  {:.2} ms/step",
            rec.train_loss,
            rec.test_acc,
            rec.keep_ratio,
            rec.layers
                .iter()
                .map(|l| format!("{} {:.4}", l.name, l.keep_ratio))
                .collect::<Vec<_>>()
                .join(", "),
            rec.ms_per_step
        ));
        let mut v = serde_json::to_value(&rec).expect("serialisable");
        v["kind"] = "epoch".into();
        run.append_metric(&v)?;
        history.push(rec);
        let mut ck = session.snapshot()?;
        // The GPU guard above runs at every log point; this host-side check of the values about
        // to be written makes sure no checkpoint ever holds a NaN or an infinity.
        if let Some((name, _, _)) = ck
            .tensors
            .iter()
            .find(|(_, _, v)| v.iter().any(|x| !x.is_finite()))
        {
            return Err(TrainError::Diverged {
                epoch,
                step,
                what: if name.starts_with("optim.") {
                    "optimiser state holds NaN or infinite values"
                } else {
                    "parameters hold NaN or infinite values"
                },
                dir: run.dir.clone(),
            });
        }
        ck.metadata.insert("epoch".into(), epoch.to_string());
        ck.metadata.insert("step".into(), step.to_string());
        ck.metadata.insert("seed".into(), cfg.seed.to_string());
        ck.metadata.insert(
            "config".into(),
            serde_json::to_string(cfg).expect("serialisable"),
        );
        ck.metadata.insert(
            "history".into(),
            serde_json::to_string(&history).expect("serialisable"),
        );
        ck.save(&run.checkpoint())?;
    }
    let summary = summarize(cfg, &session, &data, &history, step);
    run.write_json(&run.summary(), &summary)?;
    if let Some(img) = session.input_mask_image(data.train.rows, data.train.cols)? {
        let path = run.dir.join("input_mask.png");
        img.save(&path).map_err(|e| TrainError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        progress.line(&format!(
            "first layer's mask per input pixel: {}",
            path.display()
        ));
    }
    Ok(summary)
}

fn summarize(
    cfg: &TrainConfig,
    s: &Session,
    data: &Mnist,
    h: &[EpochRecord],
    steps: u64,
) -> Summary {
    let last = h.last().expect("at least one epoch").clone();
    let best = h
        .iter()
        .max_by(|a, b| a.test_acc.total_cmp(&b.test_acc))
        .unwrap();
    let low = h
        .iter()
        .min_by(|a, b| a.keep_ratio.total_cmp(&b.keep_ratio))
        .unwrap();
    Summary {
        model: cfg.model.clone(),
        dense: cfg.dense,
        adapter: s.gpu.describe(),
        data: data.source.clone(),
        epochs: cfg.epochs,
        steps,
        best_acc_epoch: best.epoch,
        best_acc: best.test_acc,
        best_acc_keep: best.keep_ratio,
        lowest_keep_epoch: low.epoch,
        lowest_keep: low.keep_ratio,
        lowest_keep_acc: low.test_acc,
        mean_ms_per_step: h.iter().map(|r| r.ms_per_step).sum::<f64>() / h.len() as f64,
        last,
    }
}

/// Test accuracy and per-layer keep ratios of a checkpoint on `data`'s test set.
pub fn evaluate_checkpoint(
    gpu: Gpu,
    path: &Path,
    data: &Mnist,
) -> Result<(f64, Vec<LayerStats>, String)> {
    let ck = Checkpoint::load(path)?;
    let model = ck.meta("model").unwrap_or("").to_string();
    let masked = ck.meta("masked") == Some("true");
    check_name(&model)?;
    let session = Session::new(gpu, &model, masked, 0, false)?;
    session.restore(&ck, path, false)?;
    let test = session.upload("test", &data.test)?;
    let plan = session.plan(
        &test,
        500.min(data.test.count),
        Mode::Eval,
        0.0,
        Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        },
    )?;
    let (_, acc) = session.evaluate(&plan, &test)?;
    Ok((acc, session.layer_stats()?, session.gpu.describe()))
}
