//! Training: the loop (plans built once and replayed, many steps per submission, no readback
//! between log points), evaluation, metrics, checkpoints, resume and the divergence guard.
//! `config` defines a run, `session` is a model on the GPU, `run_dir` is where a run writes; the
//! loop here knows no layer and no model.

mod config;
pub mod control;
pub mod interrupt;
pub mod memory;
mod run_dir;
mod session;

pub use config::{
    default_target_epoch, io_hint, reset_policy_of, same_data, setting_differences, TrainConfig,
    TrainError,
};
pub use run_dir::RunDir;
pub use session::{Session, Stats};

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::data::Mnist;
use crate::gpu::Gpu;
use crate::kernels::masked::ResetPolicy;
use crate::kernels::StepInfo;
use crate::models::check_name;
use crate::nn::Mode;
use crate::plan::{GpuData, Plan};

pub(crate) type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Per-layer sparsity at one point of training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    pub shape: Vec<usize>,
    pub kept: u64,
    pub total: u64,
    pub keep_ratio: f64,
    /// The row thresholds' range and mean; `null` for a dense run's layers, which have none.
    pub threshold_min: Option<f64>,
    pub threshold_mean: Option<f64>,
    pub threshold_max: Option<f64>,
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
    /// The penalty weight the epoch's last steps trained with (it moves under `--target-keep`;
    /// the update at the epoch's end is the next epoch's, and the checkpoint's `alpha`).
    #[serde(default)]
    pub alpha: f64,
    /// Accuracy on the validation split (`--valid N`).
    #[serde(default)]
    pub valid_acc: Option<f64>,
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
    /// With `--valid N`: the epoch best on the validation split, its test accuracy and keep.
    #[serde(default)]
    pub best_valid_epoch: Option<usize>,
    #[serde(default)]
    pub best_valid_acc: Option<f64>,
    #[serde(default)]
    pub best_valid_test_acc: Option<f64>,
    #[serde(default)]
    pub best_valid_keep: Option<f64>,
    /// The images trained on (after `--limit-train` and the `--valid` hold-out): a report tells
    /// from it whether a `--limit-train` left any out.
    #[serde(default)]
    pub train_images: Option<usize>,
}

/// Where progress goes: a bar on a terminal, plain lines otherwise.
pub trait Progress {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: u64);
    fn step(&mut self, done: u64, msg: &str);
    fn line(&mut self, msg: &str);
    fn finish_epoch(&mut self);
}

/// Whether the progress is a bar redrawn in place (else plain lines): on a terminal that draws
/// one. Not on a pipe, nor on a terminal of `TERM=dumb` or without TERM on Unix (an editor's
/// shell, `env -i`, some CI logs), where the bar's library draws nothing at all and the run
/// showed no progress.
pub fn draws_a_bar(stderr_is_terminal: bool, term: Option<&str>) -> bool {
    // Unix terminals name themselves in TERM; the bar's library draws nothing without it.
    let named = if cfg!(unix) {
        term.is_some_and(|t| t != "dumb")
    } else {
        term != Some("dumb")
    };
    stderr_is_terminal && named
}

/// A "step" line of `metrics.jsonl` (the report reads it as `report::runs::StepLine`).
#[derive(Serialize)]
struct StepLog {
    kind: &'static str,
    step: u64,
    epoch: usize,
    loss: f64,
    penalty: f64,
    lr: f64,
    alpha: f64,
    train_acc: f64,
    model_keep: f64,
    /// In the model's layer order.
    keep: crate::report::runs::LayerKeeps,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_keep: Option<f64>,
}

/// No output (tests).
pub struct Quiet;
impl Progress for Quiet {
    fn start_epoch(&mut self, _: usize, _: usize, _: u64) {}
    fn step(&mut self, _: u64, _: &str) {}
    fn line(&mut self, _: &str) {}
    fn finish_epoch(&mut self) {}
}

/// Options of one `train` call beyond the config.
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
    /// A line that announces the run (the CLI's "training ..."), given to the progress once the
    /// run's folder has accepted it: a refused `--resume` prints no header first.
    pub header: Option<String>,
}

/// The lock file in a run's folder. `train` holds an advisory lock on it while it writes the run
/// (the system releases it when the process ends, however it ends), so a second process that
/// would write the same run (a second `--resume`, the same sweep started twice, two runs given
/// one --out) is refused instead of interleaving its files with the first's.
pub const LOCK_FILE: &str = ".dst.lock";

/// Whether another process holds `dir`'s run lock (`LOCK_FILE`; none is made here), held for
/// longer than an instant (`try_lock_waiting`).
pub fn in_use(dir: &Path) -> bool {
    std::fs::File::open(dir.join(LOCK_FILE))
        .is_ok_and(|f| matches!(try_lock_waiting(&f), Err(std::fs::TryLockError::WouldBlock)))
}

/// `f.try_lock()`, tried again `LOCK_TRIES` times 20 ms apart while another process holds the
/// lock: `in_use` (a `dst plot` or `dst eval` asking whether a run trains) holds it for an
/// instant, which must not count as the run being in use.
fn try_lock_waiting(f: &std::fs::File) -> std::result::Result<(), std::fs::TryLockError> {
    let mut r = f.try_lock();
    for _ in 0..LOCK_TRIES {
        if !matches!(r, Err(std::fs::TryLockError::WouldBlock)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        r = f.try_lock();
    }
    r
}

/// The (length, modification time) of a run's checkpoint and metrics.jsonl, where they exist.
type Stamps = [Option<(u64, std::time::SystemTime)>; 2];

fn stamps(run: &RunDir) -> Stamps {
    [run.checkpoint(), run.metrics()].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    })
}

/// Takes the run's lock before a resumed run's first write (once), and refuses the call if
/// another process changed the run since `seen` (it trained the run further, or started it
/// over, and ended): what this call read of it is out of date.
fn claim(run: &RunDir, seen: &Stamps, lock: &mut Option<std::fs::File>) -> Result<()> {
    if lock.is_some() {
        return Ok(());
    }
    *lock = lock_run(&run.dir)?;
    if stamps(run) != *seen {
        return Err(TrainError::Refused(format!(
            "{}: another dst process changed this run while it was being read; nothing was \
             changed: run the same command again",
            run.dir.display()
        )));
    }
    Ok(())
}

/// Whether `e` says the file system has no locks to give (ENOLCK, ENOSYS).
fn no_locks(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::ENOLCK) | Some(libc::ENOSYS))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// How often `lock_run` tries again, 20 ms apart, a lock another process holds.
const LOCK_TRIES: u32 = 5;

/// Takes `dir`'s run lock; `None` where the file system has no locks (then nothing is refused).
pub fn lock_run(dir: &Path) -> Result<Option<std::fs::File>> {
    let path = dir.join(LOCK_FILE);
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match try_lock_waiting(&f) {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::InUse {
            dir: dir.to_path_buf(),
        }),
        // No locks on this file system (one without flock; NFS without its lock daemon says
        // ENOLCK): the run goes on unguarded, said so.
        Err(std::fs::TryLockError::Error(e))
            if e.kind() == std::io::ErrorKind::Unsupported || no_locks(&e) =>
        {
            // Once per process (a sweep takes a lock per run and one for its folder).
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                eprintln!(
                    "warning: {}: this file system takes no locks ({e}); dst goes on without \
                     one, so nothing stops a second dst process writing into this folder at once",
                    dir.display()
                )
            });
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Trains per `cfg` into `opts.out`; returns the summary. On resume, `cfg` must be the run's
/// config (its `epochs` may change).
pub fn train(
    gpu: Gpu,
    cfg: &TrainConfig,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    if opts.resume {
        cfg.validate_resumed()?;
    } else {
        cfg.validate()?;
    }
    let setup = Instant::now();
    let run = RunDir {
        dir: opts.out.clone(),
    };
    // A folder another process is writing is refused before anything there is read. The lock
    // itself is taken before this call's first write (`claim`): a refused call leaves the folder
    // as it was, no lock file made.
    if in_use(&run.dir) {
        return Err(TrainError::InUse {
            dir: run.dir.clone(),
        });
    }
    let seen = stamps(&run);
    let mut _lock = None;
    // Lines for the progress after the header, once the folder has accepted the run.
    let mut notes: Vec<String> = Vec::new();
    // The data folder as an absolute path: config.json and the checkpoint record it, and a
    // `--resume` from another working folder must read the same data (a relative path would
    // fail there, or read another folder's files).
    // One with `..` in it is resolved as the file system does (`cw/../mn` is `mn`, and stays
    // readable once `cw` is gone).
    let absolute;
    let up = |d: &Path| d.components().any(|c| c == std::path::Component::ParentDir);
    let cfg = match cfg.data.as_deref().filter(|d| d.is_relative() || up(d)) {
        Some(d) => {
            absolute = TrainConfig {
                data: Some(
                    up(d)
                        .then(|| d.canonicalize().ok())
                        .flatten()
                        .map_or_else(|| std::path::absolute(d), Ok)
                        .map_err(|e| TrainError::Config(format!("--data {}: {e}", d.display())))?,
                ),
                ..cfg.clone()
            };
            // Its absolute form must be text too (a UTF-8 path under a folder whose name is not).
            absolute.validate_data_path()?;
            &absolute
        }
        None => cfg,
    };
    // A targeted run resumed for another length keeps the path it steered by: without
    // --target-epoch, the default (60 % of the run) stays that of the length it started with.
    let pinned;
    let cfg = match opts
        .resume
        .then(|| pinned_target_epoch(cfg, &run.dir))
        .flatten()
    {
        Some(e) => {
            pinned = TrainConfig {
                target_epoch: Some(e),
                ..cfg.clone()
            };
            &pinned
        }
        None => cfg,
    };
    let (data, valid) = cfg.load_data_split().map_err(|e| {
        if opts.resume {
            resumed_data_error(e, cfg, &run.dir)
        } else {
            e
        }
    })?;
    // What the run trains and is scored on, as a SHA-256 its checkpoints record: a resume on
    // other files (a data folder edited, or another one put in its place) is told so.
    let data_sha256 = data_fingerprint(&data, valid.as_ref());
    if let (folder, true) = crate::data::not_mnist(&data.source) {
        notes.push(format!(
            "note: {folder}: the files there are not MNIST's (their SHA-256 differ): trained on \
             as they are; the paper's MNIST figures do not apply"
        ));
    }
    let held = data.train.count + valid.as_ref().map_or(0, |v| v.count);
    if let Some(n) = cfg.limit_train.filter(|&n| n > held) {
        notes.push(format!(
            "note: --limit-train {n} is more than the {held} training images there are; all of them are used"
        ));
    }
    if cfg.batch > data.train.count {
        notes.push(format!(
            "note: the batch of {} is more than the {} training images: each epoch is one step \
             over all of them",
            cfg.batch, data.train.count
        ));
    }
    let mut session = Session::new(
        gpu,
        &cfg.model,
        cfg.masked(),
        cfg.seed,
        cfg.optimizer().is_adam(),
    )?;
    session.reset = cfg.reset_policy();
    if let Some(n) = short_last_batch(&session.model, data.train.count, cfg.batch, opts.resume)? {
        notes.push(n);
    }
    if let Some(r) = cfg.target_keep {
        let (low, why) = lowest_reachable_keep(&session.model.mask_views(), session.reset);
        if r < low {
            notes.push(format!(
                "note: --target-keep {}% is below what --reset {} lets {} keep (at least about {}%: {why}); \
                 the run steers towards it but stays above",
                crate::report::percent(r),
                cfg.reset,
                cfg.model,
                crate::report::percent((low * 1e4).round() / 1e4)
            ));
        }
    }
    if let Some(r) = cfg.sparse_keep {
        session.sparse_keep = r;
        session.sparse_keep_conv = r;
        session.sparse_keep_lstm = r;
    }
    if let Some(r) = cfg.sparse_input {
        session.sparse_input = r;
    }
    let (mut epoch0, mut step) = (0usize, 0u64);
    let mut history: Vec<EpochRecord> = Vec::new();
    let steps_per_epoch = data.train.count.div_ceil(cfg.batch) as u64;
    let mut control = cfg.target_keep.map(|r| {
        let e = cfg.target_epoch_or_default();
        control::AlphaController::new(cfg.alpha, r, e as u64 * steps_per_epoch)
    });
    // A run stopped before its first checkpoint has nothing to continue from: it starts over
    // (the same run: training is deterministic), and what the attempt logged goes.
    let resume = opts.resume && run.checkpoint().exists();
    if opts.resume && !resume {
        if !run.dir.join("config.json").is_file() {
            return Err(TrainError::Refused(format!(
                "{} holds no run to resume (no config.json, no checkpoint)",
                run.dir.display()
            )));
        }
        // Starting over is for a run stopped before its first checkpoint: not for one whose
        // checkpoint was written and has gone (its results would be replaced).
        if let Some(what) = lost_checkpoint(&run.dir) {
            return Err(TrainError::Refused(format!(
                "{} records {what} but its {} is missing: there is nothing to continue from. Put \
                 the checkpoint back, or train again into another folder; nothing was changed",
                run.dir.display(),
                run.checkpoint().display()
            )));
        }
        claim(&run, &seen, &mut _lock)?;
        for f in [run.metrics(), run.summary()] {
            if f.exists() {
                std::fs::remove_file(&f).map_err(run.io(&f))?;
            }
        }
        // A first checkpoint cut short (a process killed while writing it) goes too.
        remove_stale_temporaries(&run);
        notes.push(format!(
            "{} has no checkpoint yet (it stopped before its first checkpoint was written): \
             training it from the start",
            run.dir.display()
        ));
    }
    if resume {
        let path = run.checkpoint();
        let ck = Checkpoint::load(&path)?;
        // Another model's checkpoint put in this folder: said first (the optimiser check below
        // would otherwise blame config.json).
        if let Some(m) = ck.meta("model").filter(|m| *m != cfg.model) {
            return Err(other_models_checkpoint(&path, m, &run.dir, &cfg.model));
        }
        // The checkpoint's run's settings, read once. Through TrainConfig, so that fields a newer
        // version added take their defaults and do not count as changes.
        let their_cfg: Option<TrainConfig> = ck
            .meta("config")
            .and_then(|c| serde_json::from_str::<TrainConfig>(c).ok());
        // A dense run's checkpoint under a DST config.json, or the other way (config.json
        // edited): said as such, not as a session's shape mismatch.
        if let Some(theirs) = ck.meta("masked").filter(|m| *m != cfg.masked().to_string()) {
            let kind = |masked: bool| if masked { "DST" } else { "dense" };
            let was_masked = theirs == "true";
            return Err(TrainError::Refused(format!(
                "{} holds a {} run's checkpoint, and its config.json now says \"dense\": {}: a \
                 run cannot turn {}; set \"dense\" back to {}, or train anew in another folder",
                run.dir.display(),
                kind(was_masked),
                cfg.dense,
                if was_masked { "dense" } else { "into DST" },
                !was_masked
            )));
        }
        // Another optimiser than the checkpoint's (config.json edited): its state cannot carry
        // over. Said as such, not as a tensor the checkpoint lacks.
        if let Some(o) = their_cfg
            .as_ref()
            .map(|c| &c.optimizer)
            .filter(|o| **o != cfg.optimizer)
        {
            return Err(TrainError::Refused(format!(
                "{} trained with {o}, and its config.json now says {}: an optimiser's state does \
                 not carry over to another; set \"optimizer\" back to \"{o}\", or train anew \
                 into another folder",
                run.dir.display(),
                cfg.optimizer
            )));
        }
        // The validation split (the last `valid` of the first `limit_train` images) cannot
        // change within a run: images of one side were trained on, or validated on, in its
        // earlier epochs, and the best-on-validation pick would compare accuracies of two splits.
        let their_split = their_cfg.as_ref().map(|c| (c.valid, c.limit_train));
        if let Some((valid, limit)) = their_split {
            let show = |v: Option<usize>| v.map_or("none".to_string(), |n| n.to_string());
            let held_out = valid.is_some() || cfg.valid.is_some();
            // Another limit can leave the split as it was (both at or above the images there
            // are): the SHA-256 of the training and validation images, where the checkpoint
            // has it, tells.
            let same_split = ck.meta("data_sha256") == Some(data_sha256.as_str());
            let what = if valid != cfg.valid {
                Some(("valid", show(valid), show(cfg.valid)))
            } else if held_out && limit != cfg.limit_train && !same_split {
                Some(("limit_train", show(limit), show(cfg.limit_train)))
            } else {
                None
            };
            if let Some((key, then, now)) = what {
                return Err(TrainError::Refused(format!(
                    "{} trained with {key} {then}, and its config.json now says {now}: that moves \
                     images between the training and validation splits, which cannot change \
                     within a run (its earlier epochs trained on one and picked on the other); \
                     set \"{key}\" back to {}, or train anew into another folder",
                    run.dir.display(),
                    if then == "none" { "null" } else { &then }
                )));
            }
        }
        session.restore(&ck, &path, true)?;
        epoch0 = ck.meta("epoch").and_then(|s| s.parse().ok()).unwrap_or(0);
        step = ck.meta("step").and_then(|s| s.parse().ok()).unwrap_or(0);
        if let (Some(c), Some(a)) = (
            control.as_mut(),
            ck.meta("alpha").and_then(|s| s.parse::<f64>().ok()),
        ) {
            c.alpha = a;
            notes.push(format!(
                "alpha is {a:.2e} at this checkpoint: the controller goes on from there (the \
                 epoch lines give the alpha each epoch's last steps trained with; this is the \
                 update made at the epoch's end)"
            ));
        }
        if let Some(h) = ck.meta("history") {
            history = serde_json::from_str(h).unwrap_or_default();
        }
        // A checkpoint of another run put in this folder: refused before anything changes (its
        // resume would drop or skip the epochs this folder's log holds).
        if let Some(why) = foreign_checkpoint(&run, &history, epoch0) {
            return Err(TrainError::Refused(format!(
                "{} is not the checkpoint of the run that {} logs: {why}. Nothing was changed; \
                 put the run's own checkpoint back, or train into another folder",
                path.display(),
                run.metrics().display()
            )));
        }
        // A resume with other settings is allowed (e.g. a lower lr) but is no longer the same run.
        let theirs: serde_json::Value = their_cfg
            .as_ref()
            .map(|c| serde_json::to_value(c).expect("serialisable"))
            .unwrap_or_default();
        let ours = serde_json::to_value(cfg).expect("serialisable");
        // The data folder: said apart, below. `log_every` sets only what is logged (the
        // controller's cadence does not follow it): no change to the result. The default target
        // epoch pinned above is the run's own.
        let default_target_epoch = theirs.get("target_epoch").is_none_or(|t| t.is_null());
        let changed: Vec<String> = config::setting_differences(&theirs, &ours, |k| {
            matches!(k, "epochs" | "data" | "log_every")
                || (default_target_epoch && k == "target_epoch")
        })
        .into_iter()
        .map(|(k, t, v)| {
            let show = |v: serde_json::Value| {
                if v.is_null() {
                    "none".into()
                } else {
                    v.to_string()
                }
            };
            format!("{k} {} -> {}", show(t), show(v))
        })
        .collect();
        if !changed.is_empty() {
            progress.line(&format!(
                "warning: resuming with settings that differ from the checkpoint's ({}); the result will not match an uninterrupted run",
                changed.join(", ")
            ));
        }
        // A data folder moved (config.json edited, as `resumed_data_error` says): the same run if
        // the files are the same, which the checkpoint's SHA-256 of them tells where it has one.
        // (A relative --data an older version recorded is the same folder.)
        let now = ours.get("data").unwrap_or(&serde_json::Value::Null);
        // The files themselves, where the checkpoint records their SHA-256 (older ones do not).
        let same_files = ck.meta("data_sha256").map(|h| h == data_sha256);
        if same_files == Some(false) {
            progress.line(
                "warning: the images and labels read now differ from those the checkpoint's run \
                 trained on (their SHA-256): the result will not match an uninterrupted run",
            );
        }
        if let Some(then) = theirs.get("data").filter(|&t| t != now) {
            if !same_data_values(Some(then), now) {
                let name = |v: &serde_json::Value| match v.as_str() {
                    Some(d) => d.to_string(),
                    None => "the embedded MNIST subset".to_string(),
                };
                progress.line(&format!(
                    "note: reading the data from {} (the checkpoint's run read {}): {}",
                    name(now),
                    name(then),
                    match same_files {
                        Some(true) => "the same files (their SHA-256 matches)",
                        Some(false) => "other files",
                        None => "the result matches an uninterrupted run if the files are the same",
                    }
                ));
            }
        }
        // No summary, or one of a shorter run this one extends.
        let unfinished = unfinished(&run.dir, epoch0, !history.is_empty());
        if epoch0 == cfg.epochs && unfinished {
            // Stopped between its last checkpoint and its summary (or asked to end where it
            // stopped): finish it, its config saying how many epochs it ran.
            let started_for = theirs.get("epochs").and_then(|e| e.as_u64());
            claim(&run, &seen, &mut _lock)?;
            announce(progress, opts, &mut notes);
            progress.line(&match started_for {
                Some(e) if e > epoch0 as u64 => format!(
                    "ending {} at epoch {epoch0} as asked (it was started for {e}): writing the \
                     summary and charts",
                    run.dir.display()
                ),
                _ => format!(
                    "{} holds {} but {}: writing the summary and charts",
                    run.dir.display(),
                    match epoch0 {
                        1 => "its one epoch".to_string(),
                        n => format!("all {n} epochs"),
                    },
                    match (summary_epochs(&run.dir), run.summary().exists()) {
                        (Some(e), _) => format!(
                            "its summary.json is of {}",
                            crate::report::plural(e, "epoch")
                        ),
                        (None, true) => "its summary.json is damaged".into(),
                        (None, false) =>
                            "no summary (it stopped right after its last checkpoint)".into(),
                    }
                ),
            });
            for w in trim_metrics(&run, step, epoch0)? {
                progress.line(&w);
            }
            remove_stale_temporaries(&run);
            run.write_json(&run.config(), cfg)?;
            return finish(cfg, &session, &data, &history, step, &run, progress);
        }
        if epoch0 >= cfg.epochs {
            return Err(length_refusal(&run.dir, epoch0, unfinished));
        }
        claim(&run, &seen, &mut _lock)?;
        let metrics_warning = trim_metrics(&run, step, epoch0)?;
        remove_stale_temporaries(&run);
        notes.push(format!(
            "resuming {} at epoch {} (step {step})",
            run.dir.display(),
            epoch0 + 1
        ));
        notes.extend(metrics_warning);
    } else if !opts.resume && run.holds_run() {
        return Err(TrainError::Refused(format!(
            "{} already holds a run; resume it or pick another folder",
            run.dir.display()
        )));
    }

    announce(progress, opts, &mut notes);
    let train_data = session.upload("train", &data.train)?;
    let test_data = session.upload("test", &data.test)?;
    let alpha = if cfg.masked() { cfg.alpha as f32 } else { 0.0 };
    // A batch above the training set is one step over all of it: the buffers are sized for that.
    let plan_batch = cfg.batch.min(data.train.count);
    let train_plan = session.plan(&train_data, plan_batch, Mode::Train, alpha, cfg.optimizer())?;
    let eval_plan = session.eval_plan(&test_data, alpha)?;
    let valid_data = match &valid {
        Some(v) => {
            let d = session.upload("valid", v)?;
            let p = session.eval_plan(&d, alpha)?;
            Some((d, p))
        }
        None => None,
    };
    // The run's folder and config only once nothing can refuse the run any more (a batch the
    // adapter cannot take is refused by `plan`): a refused run leaves no files behind.
    if !resume {
        std::fs::create_dir_all(&run.dir).map_err(run.io(&run.dir))?;
    }
    if !opts.resume {
        _lock = lock_run(&run.dir)?;
        // Another process may have claimed the folder since it was checked, and finished.
        if run.holds_run() {
            return Err(TrainError::Refused(format!(
                "{} already holds a run (another dst process wrote it meanwhile); resume it or \
                 pick another folder",
                run.dir.display()
            )));
        }
    }
    run.write_json(&run.config(), cfg)?;
    // From here on (the line below says the run is ready) a Ctrl-C asks to stop at a log point.
    // Inside a study (its guard alive): the study's command first, which goes on with every run.
    let d = crate::report::shell_word(&run.dir);
    let _catching = interrupt::Catching::new(&if interrupt::catching() {
        format!(
            "run the study's command again to go on from the runs' last checkpoints (this run \
             alone: `dst train --resume {d}`)"
        )
    } else {
        format!(
            "continue with `dst train --resume {d}`: it goes on from the run's last checkpoint \
             (the end of its last finished epoch), or, stopped before its first checkpoint, \
             trains it again from the start (a sweep or reproduction: run its command again)"
        )
    });
    let n = data.train.count;
    progress.line(&format!(
        "ready in {:.2} s: {} train / {}{} test images on the GPU, pipelines built, plans of {} (step) and {} (eval batch) dispatches",
        setup.elapsed().as_secs_f64(),
        n,
        valid
            .as_ref()
            .map_or(String::new(), |v| format!("{} validation / ", v.count)),
        data.test.count,
        train_plan.dispatches.len(),
        eval_plan.dispatches.len()
    ));

    let mut saved = epoch0; // the epoch of the checkpoint on disk (0: none)
    for epoch in epoch0 + 1..=cfg.epochs {
        let t0 = Instant::now();
        train_data.start_epoch(&session.gpu, cfg.seed, epoch);
        progress.start_epoch(epoch, cfg.epochs, steps_per_epoch);
        let mut epoch_stats = Stats::default();
        let mut done = 0u64;
        // Steps run between host checks: up to the next log point, and with a target-keep
        // controller up to its next update (every `control::cadence` steps of the epoch and at
        // its end, whatever the log interval: the run must not depend on how often the user logs).
        let every = control::cadence(steps_per_epoch);
        // The progress bar moves every `progress_every` steps too, however rarely lines are
        // logged (more submissions, the same steps).
        let bar = progress_every(steps_per_epoch);
        let mut next_log = (cfg.log_every as u64).min(steps_per_epoch);
        let mut log_stats = Stats::default();
        let mut log_steps = 0u64;
        // The alpha the epoch's last steps trained with (the controller's update at the epoch's
        // end sets the next epoch's).
        let mut alpha_used = control.as_ref().map_or(cfg.alpha, |c| c.alpha);
        while done < steps_per_epoch {
            let mut window = (next_log - done).min(bar - done % bar);
            if control.is_some() {
                window = window.min(every - done % every);
            }
            let alpha_now = control.as_ref().map_or(cfg.alpha, |c| c.alpha);
            alpha_used = alpha_now;
            if control.is_some() {
                session.set_alpha_scale((alpha_now / cfg.alpha) as f32);
            }
            let opt = cfg.optimizer();
            let infos: Vec<StepInfo> = (done..done + window)
                .map(|s| {
                    let start = s as usize * cfg.batch;
                    let valid = (n - start).min(cfg.batch);
                    opt.step_info(step + s - done + 1, cfg.lr_at(epoch), start, valid)
                })
                .collect();
            session.run_steps(&train_plan, &infos)?;
            done += window;
            step += window;
            let s = session.take_stats(&train_plan.stats)?;
            if s.non_finite || s.non_finite_params {
                return Err(diverged(
                    &run,
                    cfg,
                    (epoch, step, saved),
                    if s.non_finite {
                        "the loss is not finite"
                    } else {
                        "parameters or optimiser state hold NaN or infinite values"
                    },
                ));
            }
            for acc in [&mut epoch_stats, &mut log_stats] {
                acc.loss_sum += s.loss_sum;
                acc.penalty_sum += s.penalty_sum;
                acc.correct += s.correct;
                acc.seen += s.seen;
            }
            log_steps += window;
            // The mean loss since the last log point: the progress bar's, and the log line's.
            let loss = log_stats.loss_sum / log_steps as f64;
            let at_update =
                control.is_some() && (done.is_multiple_of(every) || done == steps_per_epoch);
            if done < next_log && !at_update {
                // Only the progress bar's point: no keep counts to read.
                progress.step(done, &format!("loss {loss:.4}"));
                continue;
            }
            let keeps = session.keep_counts()?;
            let (kept, total) = keeps
                .iter()
                .fold((0u64, 0u64), |(a, b), (_, k, t)| (a + k, b + t));
            // A dense model masks nothing: it keeps everything.
            let model_keep = if total == 0 {
                1.0
            } else {
                kept as f64 / total as f64
            };
            let target_now = control.as_ref().map(|c| c.target_at(step));
            if let Some(c) = control.as_mut() {
                if at_update {
                    c.update(step, model_keep);
                }
            }
            if done < next_log {
                progress.step(done, &format!("loss {loss:.4}"));
                continue;
            }
            next_log = (done + cfg.log_every as u64).min(steps_per_epoch);
            let line = StepLog {
                kind: "step",
                step,
                epoch,
                loss,
                penalty: log_stats.penalty_sum / log_steps as f64,
                lr: cfg.lr_at(epoch),
                alpha: if cfg.masked() { alpha_now } else { 0.0 },
                train_acc: 100.0 * log_stats.correct as f64 / log_stats.seen.max(1) as f64,
                model_keep,
                keep: keeps
                    .into_iter()
                    .map(|(l, k, t)| (l, k as f64 / t.max(1) as f64))
                    .collect(),
                target_keep: target_now,
            };
            log_stats = Stats::default();
            log_steps = 0;
            run.append_metric(&line)?;
            progress.step(done, &format!("loss {loss:.4}"));
            // At the epoch's last log point the epoch is evaluated and saved first (below): its
            // steps are done, and stopping here would throw them away.
            if interrupt::requested() && done < steps_per_epoch {
                progress.finish_epoch();
                return Err(TrainError::Interrupted {
                    epoch,
                    step,
                    saved,
                    dir: run.dir.clone(),
                });
            }
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let (test_loss, test_acc) = session.evaluate(&eval_plan, &test_data)?;
        let valid_acc = match &valid_data {
            Some((d, p)) => Some(session.evaluate(p, d)?.1),
            None => None,
        };
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
            alpha: if cfg.masked() { alpha_used } else { 0.0 },
            valid_acc,
        };
        progress.finish_epoch();
        progress.line(&format!(
            "epoch {epoch:3}  loss {:.4}  test acc {:.2}%{}{}  keep {:.4}  [{}]  {:.2} ms/step",
            rec.train_loss,
            rec.test_acc,
            rec.valid_acc
                .map_or(String::new(), |v| format!("  valid acc {v:.2}%")),
            control
                .as_ref()
                .map_or(String::new(), |_| format!("  alpha {alpha_used:.3e}")),
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
            return Err(diverged(
                &run,
                cfg,
                (epoch, step, saved),
                if name.starts_with("optim.") {
                    "optimiser state holds NaN or infinite values"
                } else {
                    "parameters hold NaN or infinite values"
                },
            ));
        }
        ck.metadata.insert("epoch".into(), epoch.to_string());
        ck.metadata.insert("step".into(), step.to_string());
        ck.metadata
            .insert("data_sha256".into(), data_sha256.clone());
        if let Some(c) = &control {
            // Display of an f64 round-trips exactly: a resume continues with the same alpha.
            ck.metadata.insert("alpha".into(), c.alpha.to_string());
        }
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
        saved = epoch;
        // Ctrl-C during the epoch's last steps or its evaluation: stop at the checkpoint just
        // written (the next log point is the next epoch's).
        if interrupt::requested() && epoch < cfg.epochs {
            return Err(TrainError::Interrupted {
                epoch,
                step,
                saved,
                dir: run.dir.clone(),
            });
        }
    }
    finish(cfg, &session, &data, &history, step, &run, progress)
}

/// The end of a run: the first layer's input mask picture and the charts, then summary.json,
/// which says the run is complete.
fn finish(
    cfg: &TrainConfig,
    session: &Session,
    data: &Mnist,
    history: &[EpochRecord],
    step: u64,
    run: &RunDir,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    let summary = summarize(cfg, session, data, history, step);
    if let (Some(r), false) = (cfg.target_keep, cfg.dense) {
        // A run that ends before its target epoch was told so at its start.
        if cfg.epochs >= cfg.target_epoch_or_default() {
            let (low, _) = lowest_reachable_keep(&session.model.mask_views(), session.reset);
            let adam = cfg.optimizer == "adam";
            if let Some(w) = target_missed(r, summary.last.keep_ratio, low, step, adam) {
                progress.line(&w);
            }
        }
    }
    let classes = crate::models::info(&cfg.model).map_or(10, |m| m.classes);
    let best = (summary.best_acc, summary.best_acc_epoch);
    if let Some(w) = at_chance(cfg, &summary.last, best, classes) {
        progress.line(&w);
    }
    if let Some(img) = session.input_mask_image(data.train.rows, data.train.cols)? {
        let path = run.dir.join("input_mask.png");
        // Replaced whole (a resumed run's picture is never left cut short).
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| run.io(&path)(std::io::Error::other(e)))?;
        crate::checkpoint::write_atomic(&path, png.get_ref()).map_err(run.io(&path))?;
        progress.line(&format!(
            "first layer's mask per input pixel: {}",
            path.display()
        ));
    }
    if let Err(e) = crate::report::draw_run_charts(&run.dir) {
        progress.line(&format!("warning: charts not drawn: {e}"));
    }
    // The summary last: it says the run is complete, so a run stopped before it (its pictures
    // half drawn) is finished by `--resume`, which draws them again.
    run.write_json(&run.summary(), &summary)?;
    Ok(summary)
}

/// The note of a run whose epochs end in a batch too small for a layer of `model` (`count`
/// training images in batches of `batch`): VGG-16's batch norm after its first FC layer cannot
/// normalise one sample (PyTorch refuses it; `batchnorm.wgsl` leaves its running statistics as
/// they are in that step, and the layers before it get no gradient from it).
/// A training set smaller than that layer needs (every batch too small) is refused, naming the
/// set's size rather than `--batch`. `resume`: the note gives no advice (a resume keeps its
/// batch and data).
fn short_last_batch(
    model: &crate::models::Model,
    count: usize,
    batch: usize,
    resume: bool,
) -> Result<Option<String>> {
    let Some((layer, need)) = model.min_train_batch() else {
        return Ok(None);
    };
    if count < need {
        return Err(TrainError::Refused(format!(
            "{} training {} left (after --limit-train and --valid), and {layer} cannot normalise \
             fewer than {need} in training mode (PyTorch refuses it): give it at least {need}",
            count,
            if count == 1 { "image is" } else { "images are" },
        )));
    }
    let last = count % batch;
    Ok((last > 0 && last < need && count > batch).then(|| {
        format!(
            "note: the last batch of each epoch holds {} ({count} training images, after \
             --limit-train and --valid, in batches of {batch}), and {layer} cannot normalise \
             fewer than {need} (PyTorch refuses it): in that step its running statistics stay as \
             they are and the layers before it get no gradient{}",
            crate::report::plural(last, "image"),
            if resume {
                ""
            } else {
                ". A --limit-train, --valid or --batch that leaves no such batch avoids it"
            }
        )
    }))
}

/// Steps between two moves of the progress bar, when lines are logged more rarely: a tenth of
/// the epoch, at most 100 steps (an epoch of 100 steps or fewer moved it only at its end).
pub fn progress_every(steps_per_epoch: u64) -> u64 {
    steps_per_epoch.div_ceil(10).clamp(1, 100)
}

/// The epochs the `summary.json` of the run folder `dir` was written for, if it has a readable
/// one.
/// Whether the run in `dir`, whose checkpoint holds `epoch0` epochs (with their records:
/// `has_history`), has no summary of them yet: stopped between its last checkpoint and its
/// summary, or extended past the length its summary was written for.
fn unfinished(dir: &Path, epoch0: usize, has_history: bool) -> bool {
    let summarised = summary_epochs(dir).is_some_and(|e| e >= epoch0);
    !summarised && has_history
}

/// A resume's refusal of `path`, a checkpoint of `model`, in the folder `dir` of a run of
/// `run_model`: not this run's checkpoint.
fn other_models_checkpoint(path: &Path, model: &str, dir: &Path, run_model: &str) -> TrainError {
    TrainError::Refused(format!(
        "{} is a checkpoint of {model}, and {}'s config.json trains {run_model}: it is not this \
         run's checkpoint. Nothing was changed; put the run's own checkpoint back, or train into \
         another folder",
        path.display(),
        dir.display()
    ))
}

/// `--resume` of the run in `dir`, whose checkpoint holds `epoch0` epochs, for no more than
/// that: refused (`unfinished`: it has no summary yet, and may end there).
fn length_refusal(dir: &Path, epoch0: usize, unfinished: bool) -> TrainError {
    TrainError::Refused(format!(
        "{} already holds {}; pass --epochs larger than that to continue{}",
        dir.display(),
        crate::report::plural(epoch0, "epoch"),
        if unfinished {
            format!(" (or --epochs {epoch0} to end it there)")
        } else {
            String::new()
        }
    ))
}

/// The refusal `run` gives a `--resume` of the run in `dir` for `epochs` epochs that its
/// checkpoint already holds, from the checkpoint's metadata alone: before an adapter opens.
/// Ok where it goes on, or where the checkpoint cannot be read (the run says why).
pub fn check_resume_length(dir: &Path, epochs: usize) -> Result<()> {
    let run = RunDir {
        dir: dir.to_path_buf(),
    };
    let Ok(meta) = Checkpoint::read_metadata(&run.checkpoint()) else {
        return Ok(());
    };
    // Another model's checkpoint in the folder: said so here (its epochs are not this run's).
    let model = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string))
    };
    let run_model = std::fs::read_to_string(run.dir.join("config.json"))
        .ok()
        .and_then(|t| model(&t));
    if let (Some(m), Some(r)) = (meta.get("model"), run_model) {
        if *m != r {
            return Err(other_models_checkpoint(&run.checkpoint(), m, dir, &r));
        }
    }
    let epoch0: usize = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
    let has_history = meta
        .get("history")
        .and_then(|h| serde_json::from_str::<Vec<serde_json::Value>>(h).ok())
        .is_some_and(|h| !h.is_empty());
    let unfinished = unfinished(dir, epoch0, has_history);
    if epoch0 > epochs || (epoch0 == epochs && !unfinished && epoch0 > 0) {
        return Err(length_refusal(dir, epoch0, unfinished));
    }
    Ok(())
}

pub fn summary_epochs(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("epochs")?.as_u64().map(|e| e as usize)
}

/// The target epoch a resumed run (in `dir`) must keep: where it steers to a target keep
/// without `--target-epoch` and is resumed for another length than its checkpoint's config, the
/// default of that config's length (the controller's path would otherwise move under it).
/// `dst train --resume` pins it before it prints the run's header.
pub fn pinned_target_epoch(cfg: &TrainConfig, dir: &Path) -> Option<usize> {
    if cfg.target_keep.is_none() || cfg.target_epoch.is_some() {
        return None;
    }
    let run = RunDir {
        dir: dir.to_path_buf(),
    };
    let meta = Checkpoint::read_metadata(&run.checkpoint()).ok()?;
    let theirs: TrainConfig = serde_json::from_str(meta.get("config")?).ok()?;
    (theirs.epochs != cfg.epochs && theirs.target_epoch.is_none())
        .then(|| theirs.target_epoch_or_default())
}

/// The error of a run that diverged at (`epoch`, `step`) with its last checkpoint at epoch
/// `saved` (0: none), after a line of kind "diverged" is added to its metrics.jsonl: a report
/// then shows the run as diverged, not as unfinished. A resume drops the line with the others
/// logged after its checkpoint.
fn diverged(
    run: &RunDir,
    cfg: &TrainConfig,
    (epoch, step, saved): (usize, u64, usize),
    what: &'static str,
) -> TrainError {
    // Best effort: the error says what happened whether or not the line could be written.
    let _ = run.append_metric(&serde_json::json!({
        "kind": "diverged", "epoch": epoch, "step": step, "what": what,
    }));
    TrainError::Diverged {
        epoch,
        step,
        what,
        dir: run.dir.clone(),
        dense: cfg.dense,
        saved,
    }
}

/// On resume: metrics.jsonl without the lines logged after the checkpoint (`step` beyond it; an
/// epoch line is written before its checkpoint) and without a line cut short by a crash, so
/// that the steps the resumed run replays are not logged twice. Returns a warning when the file
/// is missing, held damaged lines before its last (a crash cuts only the last short), or lacks
/// the line of one of the `epochs` the checkpoint has done (edited, or another run's
/// checkpoint put there): the run goes on, its log and charts without what was lost.
fn trim_metrics(run: &RunDir, step: u64, epochs: usize) -> Result<Vec<String>> {
    let path = run.metrics();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((step > 0)
                .then(|| {
                    format!(
                        "warning: {} is missing: its log and charts hold only what is logged \
                         from step {step} on",
                        path.display()
                    )
                })
                .into_iter()
                .collect());
        }
        Err(e) => return Err(run.io(&path)(e)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let cut_short = !text.ends_with('\n');
    let step_of = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
    };
    let mut damaged = 0usize;
    let mut kept: Vec<&str> = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match step_of(l) {
            Some(s) if s <= step => kept.push(l),
            Some(_) => {}
            None if cut_short && i + 1 == lines.len() => {}
            None => damaged += 1,
        }
    }
    let mut warning: Vec<String> = (damaged > 0)
        .then(|| {
            format!(
                "warning: {}: dropped {} (not a JSON log line with a step: damaged or edited); \
                 its log and charts lack what they held",
                path.display(),
                crate::report::plural(damaged, "damaged line"),
            )
        })
        .into_iter()
        .collect();
    // Every epoch the checkpoint has done has its line (written before the checkpoint).
    let logged: std::collections::BTreeSet<u64> = kept
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .filter_map(|v| v["epoch"].as_u64())
        .collect();
    let lacking: Vec<u64> = (1..=epochs as u64)
        .filter(|e| !logged.contains(e))
        .collect();
    if !lacking.is_empty() {
        warning.push(format!(
            "warning: {} lacks the {} of {}, which the checkpoint has done (lost with the \
             file, damaged or edited, or the checkpoint is another run's): its log and charts \
             go without them",
            path.display(),
            if lacking.len() == 1 { "line" } else { "lines" },
            epoch_list(&lacking)
        ));
    }
    if kept.len() == lines.len() && !cut_short {
        return Ok(warning);
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::checkpoint::write_atomic(&path, out.as_bytes()).map_err(run.io(&path))?;
    Ok(warning)
}

/// "epoch 2", "epochs 2-4", "epochs 1, 3-4 and 7": ascending epoch numbers in runs.
fn epoch_list(epochs: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &e in epochs {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == e => *hi = e,
            _ => runs.push((e, e)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|&(lo, hi)| match hi - lo {
            0 => lo.to_string(),
            _ => format!("{lo}-{hi}"),
        })
        .collect();
    let word = if epochs.len() == 1 { "epoch" } else { "epochs" };
    match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{word} {} and {last}", rest.join(", ")),
        _ => format!("{word} {}", parts.join("")),
    }
}

/// A data error of the run in `dir` that `--resume` continues: where its data folder is gone (or
/// lacks its files), says that the run reads it from there (`--resume` takes no `--data`) and
/// how to go on.
pub fn resumed_data_error(e: TrainError, cfg: &TrainConfig, dir: &Path) -> TrainError {
    use crate::data::DataError;
    match (&e, &cfg.data) {
        (TrainError::Data(DataError::NotAFolder { .. } | DataError::Missing { .. }), Some(d)) => {
            TrainError::Refused(format!(
                "{e}; {} reads its data from {} (its config.json records that folder): put the \
                 files back there, or, if they moved, set \"data\" in its config.json to their \
                 new folder (its absolute path); nothing was changed",
                dir.display(),
                d.display()
            ))
        }
        _ => e,
    }
}

/// About the lowest model keep ratio the dead-layer policy lets the masked matrices `views`
/// reach, and why. The paper's reset turns a matrix keeping 1 % or less dense again, so each
/// keeps more than 1 %; the floor keeps each row's strongest weight in a matrix at 1 % or less,
/// so each keeps at least min(its rows, 1 % of its weights): a lower bound, as a matrix with more
/// rows than 1 % of its weights (an LSTM's 28-column input matrices) may sit anywhere between the
/// two, though runs tend to end nearer its rows; without a reset, nothing.
fn lowest_reachable_keep(
    views: &[crate::nn::MaskView],
    policy: ResetPolicy,
) -> (f64, &'static str) {
    let shapes: Vec<(usize, usize)> = views.iter().map(|v| (v.rows, v.cols)).collect();
    lowest_keep_of(&shapes, policy)
}

/// `lowest_reachable_keep` of matrices of these (rows, columns).
fn lowest_keep_of(shapes: &[(usize, usize)], policy: ResetPolicy) -> (f64, &'static str) {
    let total: usize = shapes.iter().map(|(r, c)| r * c).sum();
    let kept = |per: &dyn Fn(usize, usize) -> f64| {
        shapes.iter().map(|&(r, c)| per(r, c)).sum::<f64>() / total.max(1) as f64
    };
    match policy {
        ResetPolicy::Paper => (
            kept(&|r, c| 0.01 * (r * c) as f64),
            "a layer keeping 1% or less turns dense again; --reset floor goes lower",
        ),
        ResetPolicy::Floor => (
            kept(&|r, c| (r as f64).min(0.01 * (r * c) as f64)),
            "a layer at 1% or less keeps each row's strongest weight",
        ),
        ResetPolicy::None | ResetPolicy::Count => (0.0, ""),
    }
}

/// How far from its target keep ratio `target` a steered run may end (a factor either way)
/// before it is told so.
pub const TARGET_SLACK: f64 = 1.3;

/// The warning for a steered run that ends keeping `keep` of its weights after `steps` steps,
/// more than `TARGET_SLACK` away from its `target`, or, for a target below `low` (the lowest
/// keep its reset policy allows: said at the start), away from `low`; none when it is closer.
/// `adam`: the run trained with Adam, under which the thresholds rise by about the learning rate
/// per step whatever alpha is (a larger alpha does not make them faster).
pub fn target_missed(target: f64, keep: f64, low: f64, steps: u64, adam: bool) -> Option<String> {
    let pct = |x: f64| crate::report::percent((x * 1e4).round() / 1e4);
    let reachable = target.max(low);
    if keep > reachable * TARGET_SLACK {
        let aim = if target >= low {
            format!("its target {}%", crate::report::percent(target))
        } else {
            format!(
                "its target {}% (at least about {}% under its reset policy)",
                crate::report::percent(target),
                pct(low)
            )
        };
        let fix = if adam {
            "under Adam the thresholds rise by about --lr per step whatever alpha is, so a \
             larger --alpha does not help: train longer (more --epochs, also with --resume, or \
             more data), or raise --lr"
        } else {
            "alpha moves by at most 25% per update: train longer (more --epochs, also with \
             --resume, or more data) or start from a larger --alpha"
        };
        Some(format!(
            "warning: the run ends keeping {}% of its weights, well above {aim}: {} were too few \
             to raise the thresholds that far; {fix}",
            pct(keep),
            crate::report::plural(steps as usize, "step")
        ))
    } else if keep < target / TARGET_SLACK {
        Some(format!(
            "warning: the run ends keeping {}% of its weights, well below its target {}%: the \
             thresholds went on rising after alpha was lowered; a new run with a later \
             --target-epoch or more epochs gives a gentler path{} (a resumed run keeps the target \
             epoch it started with)",
            pct(keep),
            crate::report::percent(target),
            if adam {
                ""
            } else {
                ", as does a smaller starting --alpha"
            }
        ))
    } else {
        None
    }
}

/// A warning where a run ends with test accuracy about chance (below 1.5 times 1 / `classes`):
/// the model has not learned, or lost what it learned (`best`: the run's best test accuracy and
/// its epoch), and the likely why. A masked model keeping 1 % or less was pruned too hard (under
/// `--reset floor` it can sit there, each row keeping one weight); otherwise the run was too
/// short or its learning rate unsuited.
pub fn at_chance(
    cfg: &TrainConfig,
    last: &EpochRecord,
    best: (f64, usize),
    classes: usize,
) -> Option<String> {
    let chance = 100.0 / classes.max(1) as f64;
    if last.test_acc >= 1.5 * chance {
        return None;
    }
    let learned = best.0 >= 1.5 * chance;
    let why = if cfg.masked() && last.keep_ratio <= 0.01 {
        let keep =
            crate::report::share((last.keep_ratio * 1e6).round() as u64, 1_000_000, 100.0, 2);
        match cfg.target_keep {
            // Far below the target: the thresholds overshot it (a large starting alpha, or one
            // raised while the thresholds could not follow), not a target too low.
            Some(r) if last.keep_ratio < r / TARGET_SLACK => format!(
                "it keeps {keep}% of its weights, well below its --target-keep {r}: the \
                 thresholds rose past the path; start from a smaller --alpha or give a later \
                 --target-epoch"
            ),
            Some(r) => format!(
                "it keeps {keep}% of its weights: --target-keep {r} asks for more pruning than \
                 this model learns with in this run; ask for a larger share"
            ),
            None => format!(
                "it keeps {keep}% of its weights: --alpha {} prunes too hard for this run; lower \
                 it, or ask for a share of the weights with --target-keep",
                cfg.alpha
            ),
        }
    } else if learned {
        "a smaller --lr may keep what it learned".to_string()
    } else {
        "train longer (more --epochs or more data), or try another --lr".to_string()
    };
    let what = if learned {
        format!(
            "the model lost what it learned ({:.2}% at epoch {})",
            best.0, best.1
        )
    } else {
        "the model has not learned".to_string()
    };
    Some(format!(
        "warning: test accuracy {:.2}% is about chance ({classes} classes: {chance:.0}%): {what}; \
         {why}",
        last.test_acc
    ))
}

/// The run's header (`RunOptions::header`) and the notes held back for it, once.
fn announce(progress: &mut dyn Progress, opts: &RunOptions, notes: &mut Vec<String>) {
    if let Some(h) = &opts.header {
        progress.line(h);
    }
    for n in notes.drain(..) {
        progress.line(&n);
    }
}

/// The temporary files of atomic writes a crash left in the run folder
/// (`.checkpoint.safetensors.tmp-PID` and the like).
fn remove_stale_temporaries(run: &RunDir) {
    let Ok(entries) = std::fs::read_dir(&run.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::checkpoint::is_temporary(&name) && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What says that the run in `dir` wrote a checkpoint that is no longer there: a summary, or a
/// second epoch logged (an epoch's line precedes its checkpoint, so one line alone may be that
/// of an epoch whose checkpoint was never written). `None` where its checkpoint is there, or
/// none was written for sure.
pub fn lost_checkpoint(dir: &Path) -> Option<String> {
    let run = RunDir {
        dir: dir.to_path_buf(),
    };
    if run.checkpoint().exists() {
        return None;
    }
    if run.summary().exists() {
        return Some("a finished run (summary.json)".into());
    }
    let epochs_logged = std::fs::read_to_string(run.metrics())
        .map(|t| {
            t.lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some("epoch"))
                })
                .count()
        })
        .unwrap_or(0);
    (epochs_logged >= 2).then(|| format!("{epochs_logged} epochs in metrics.jsonl"))
}

/// Why the checkpoint whose epoch records are `history` (its epoch `epoch0`) is not that of the
/// run logged in `run`'s metrics.jsonl: an epoch the log holds, up to `epoch0`, that the
/// checkpoint does not record the same (step, losses, accuracy). None when they agree, or when
/// there is nothing to compare (no log, a checkpoint without its history).
fn foreign_checkpoint(run: &RunDir, history: &[EpochRecord], epoch0: usize) -> Option<String> {
    if history.is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(run.metrics()).ok()?;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("kind").and_then(|k| k.as_str()) != Some("epoch") {
            continue;
        }
        let Ok(logged) = serde_json::from_value::<EpochRecord>(v) else {
            continue;
        };
        if logged.epoch > epoch0 {
            continue;
        }
        let same = |r: &&EpochRecord| {
            r.epoch == logged.epoch
                && r.step == logged.step
                && r.train_loss.to_bits() == logged.train_loss.to_bits()
                && r.test_acc.to_bits() == logged.test_acc.to_bits()
        };
        match history.iter().find(|r| r.epoch == logged.epoch) {
            Some(r) if same(&r) => {}
            Some(r) => {
                return Some(format!(
                    "its epoch {} ended at step {} with test accuracy {:.2}%, the log's at step {} \
                     with {:.2}%",
                    r.epoch, r.step, r.test_acc, logged.step, logged.test_acc
                ))
            }
            None => {
                return Some(format!(
                    "it records no epoch {}, which the log holds",
                    logged.epoch
                ))
            }
        }
    }
    None
}

/// SHA-256 (hex) of the images and labels of the training set, the validation split (if any)
/// and the test set, each after its count.
fn data_fingerprint(data: &Mnist, valid: Option<&crate::data::Dataset>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for d in [Some(&data.train), valid, Some(&data.test)]
        .into_iter()
        .flatten()
    {
        h.update((d.count as u64).to_le_bytes());
        h.update(&d.images);
        h.update(&d.labels);
    }
    crate::data::fetch::hex(&h.finalize())
}

/// `same_data` of two `data` values of serialised configs (null: the embedded subset).
pub fn same_data_values(a: Option<&serde_json::Value>, b: &serde_json::Value) -> bool {
    let path = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(PathBuf::from);
    same_data(path(a).as_deref(), path(Some(b)).as_deref())
}

/// The epochs a summary names: best test accuracy, lowest keep ratio, best validation accuracy
/// (never the test set). Ties go to the earliest epoch, as the reference trainer's strict `>`
/// picks. `h` holds at least one epoch.
fn picks(h: &[EpochRecord]) -> (&EpochRecord, &EpochRecord, Option<&EpochRecord>) {
    let first_best = |better: fn(&EpochRecord, &EpochRecord) -> bool| {
        h.iter().reduce(|b, r| if better(r, b) { r } else { b })
    };
    let best = first_best(|r, b| r.test_acc > b.test_acc).expect("at least one epoch");
    let low = first_best(|r, b| r.keep_ratio < b.keep_ratio).expect("at least one epoch");
    let best_valid = h.iter().filter(|r| r.valid_acc.is_some()).reduce(|b, r| {
        if r.valid_acc > b.valid_acc {
            r
        } else {
            b
        }
    });
    (best, low, best_valid)
}

fn summarize(
    cfg: &TrainConfig,
    s: &Session,
    data: &Mnist,
    h: &[EpochRecord],
    steps: u64,
) -> Summary {
    let last = h.last().expect("at least one epoch").clone();
    let (best, low, best_valid) = picks(h);
    Summary {
        model: cfg.model.clone(),
        dense: cfg.dense,
        adapter: s.gpu.describe(),
        // The source describes the whole set; a run that used part of it says so.
        data: if cfg.limit_train.is_some() || cfg.valid.is_some() {
            format!(
                "{}; trained on {} of its images{}",
                data.source,
                data.train.count,
                cfg.valid
                    .map_or(String::new(), |v| format!(", {v} held out for validation"))
            )
        } else {
            data.source.clone()
        },
        epochs: cfg.epochs,
        steps,
        best_acc_epoch: best.epoch,
        best_acc: best.test_acc,
        best_acc_keep: best.keep_ratio,
        lowest_keep_epoch: low.epoch,
        lowest_keep: low.keep_ratio,
        lowest_keep_acc: low.test_acc,
        mean_ms_per_step: h.iter().map(|r| r.ms_per_step).sum::<f64>() / h.len() as f64,
        best_valid_epoch: best_valid.map(|r| r.epoch),
        best_valid_acc: best_valid.and_then(|r| r.valid_acc),
        best_valid_test_acc: best_valid.map(|r| r.test_acc),
        best_valid_keep: best_valid.map(|r| r.keep_ratio),
        train_images: Some(data.train.count),
        last,
    }
}

/// The checkpoint `ck` (read from `path`, which names it in errors) restored into a new session
/// (its model, dense or masked), `data` uploaded, and the evaluation plan over it.
fn restored_eval_of(
    gpu: Gpu,
    ck: &Checkpoint,
    path: &Path,
    data: &crate::data::Dataset,
) -> Result<(Session, GpuData, Plan)> {
    let model = ck.meta("model").unwrap_or("").to_string();
    let masked = ck.meta("masked") == Some("true");
    check_name(&model)?;
    let mut session = Session::new(gpu, &model, masked, 0, false)?;
    session.restore(ck, path, false)?;
    // The run's dead-layer policy, as training applied it (the paper's reset would turn a
    // layer a `--reset floor` run kept at <= 1 % dense again).
    session.reset = config::reset_policy_of(ck);
    let test = session.upload("test", data)?;
    let plan = session.eval_plan(&test, 0.0)?;
    Ok((session, test, plan))
}

/// Test accuracy and per-layer keep ratios of a checkpoint on `data`'s test set.
pub fn evaluate_checkpoint(
    gpu: Gpu,
    path: &Path,
    data: &Mnist,
) -> Result<(f64, Vec<LayerStats>, String)> {
    evaluate_checkpoint_with(gpu, &Checkpoint::load(path)?, path, data, &mut |_| {})
}

/// The most evaluation batches per submission where a command reports its progress.
pub const EVAL_CHUNK: usize = 10;

/// `evaluate_checkpoint` of a checkpoint already in memory (`path` names it in errors; `dst
/// eval` loads it before it opens the adapter), calling `progress(images done)` every
/// `EVAL_CHUNK` batches at most, every batch on a slow model (`dst eval` on a slow adapter); the
/// same accuracy.
pub fn evaluate_checkpoint_with(
    gpu: Gpu,
    ck: &Checkpoint,
    path: &Path,
    data: &Mnist,
    progress: &mut dyn FnMut(usize),
) -> Result<(f64, Vec<LayerStats>, String)> {
    let (session, test, plan) = restored_eval_of(gpu, ck, path, &data.test)?;
    let (_, acc) = session.evaluate_in_chunks(&plan, &test, EVAL_CHUNK, progress)?;
    Ok((acc, session.layer_stats()?, session.gpu.describe()))
}

/// The masked model's logits `(count, classes)` of every test image of `data`, computed by the
/// evaluation plan (batches of up to 500, the reset rule applied as in `evaluate_checkpoint`).
pub fn checkpoint_logits(gpu: Gpu, path: &Path, data: &crate::data::Dataset) -> Result<Vec<f32>> {
    Ok(restored_logits(gpu, &Checkpoint::load(path)?, path, data, &mut |_| {})?.0)
}

/// `checkpoint_logits` of a checkpoint in memory (`path` names it in errors), with the seconds
/// its batches took (the session's setup left out): `dst infer` of a model without sparse
/// inference runs its export through here (`export::to_checkpoint`, `to_masked_checkpoint`).
pub fn restored_logits(
    gpu: Gpu,
    ck: &Checkpoint,
    path: &Path,
    data: &crate::data::Dataset,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<f32>, f64)> {
    let restored = Restored::new(gpu, ck, path, data)?;
    restored.logits(data.count, progress)
}

/// A checkpoint restored into its own session with the evaluation plan over a test set on the
/// GPU: its logits can be computed again and again (`dst bench-infer` times them).
pub struct Restored {
    pub session: Session,
    _data: GpuData,
    plan: Plan,
    /// Images in the test set.
    count: usize,
}

impl Restored {
    pub fn new(
        gpu: Gpu,
        ck: &Checkpoint,
        path: &Path,
        data: &crate::data::Dataset,
    ) -> Result<Restored> {
        let count = data.count;
        let (session, data, plan) = restored_eval_of(gpu, ck, path, data)?;
        Ok(Restored {
            session,
            _data: data,
            plan,
            count,
        })
    }

    /// The logits `(count, classes)` of the first `count` images of the test set it was made
    /// with (all of them at most), with the seconds their batches took; `progress(images done)`
    /// after each batch.
    pub fn logits(&self, count: usize, progress: &mut dyn FnMut(usize)) -> Result<(Vec<f32>, f64)> {
        let count = count.min(self.count);
        let (session, plan) = (&self.session, &self.plan);
        let t = std::time::Instant::now();
        let b = plan.batch;
        let classes = session.model.classes;
        let mut out = Vec::with_capacity(count * classes);
        for i in 0..count.div_ceil(b) {
            let valid = (count - i * b).min(b);
            session.run_steps(
                plan,
                &[StepInfo {
                    batch_start: (i * b) as u32,
                    valid: valid as u32,
                    ..Default::default()
                }],
            )?;
            let l = session.gpu.read::<f32>(&plan.logits)?;
            out.extend_from_slice(&l[..valid * classes]);
            progress(out.len() / classes);
        }
        Ok((out, t.elapsed().as_secs_f64()))
    }

    /// Images per evaluation batch.
    pub fn batch(&self) -> usize {
        self.plan.batch
    }
}

#[cfg(test)]
mod tests {

    /// A file system without locks (ENOLCK from NFS without its lock daemon, ENOSYS) is told as
    /// such, and the run goes on; another error is not taken for it.
    #[cfg(unix)]
    #[test]
    fn no_locks_are_told_from_other_errors() {
        use super::no_locks;
        let e = std::io::Error::from_raw_os_error;
        assert!(no_locks(&e(libc::ENOLCK)) && no_locks(&e(libc::ENOSYS)));
        assert!(!no_locks(&e(libc::EACCES)) && !no_locks(&e(libc::EROFS)));
    }
    /// The floor's lowest keep: one weight per row where that is at most 1 % of a matrix, else
    /// 1 % (LeNet-300-100: 410 of 266,200; LSTM-a: 12 matrices of 128 rows, and 1 % of each
    /// 28-column input matrix, 0.80 % of 210,944 weights).
    #[test]
    fn the_floors_lowest_keep_is_a_lower_bound() {
        use super::lowest_keep_of;
        use crate::kernels::masked::ResetPolicy::{Floor, Paper};
        let lenet300 = [(300, 784), (100, 300), (10, 100)];
        let (low, _) = lowest_keep_of(&lenet300, Floor);
        assert!((low - 410.0 / 266_200.0).abs() < 1e-12, "{low}");
        let (low, _) = lowest_keep_of(&lenet300, Paper);
        assert!((low - 0.01).abs() < 1e-12, "{low}");
        let mut lstm_a = vec![(128, 28); 4];
        lstm_a.extend([(128, 128); 12]);
        let (low, _) = lowest_keep_of(&lstm_a, Floor);
        let want = (12.0 * 128.0 + 4.0 * 35.84) / 210_944.0;
        assert!((low - want).abs() < 1e-12, "{low}");
        assert_eq!(crate::report::percent((low * 1e4).round() / 1e4), "0.8");
    }

    #[test]
    fn epoch_lists_read_as_ranges() {
        use super::epoch_list;
        assert_eq!(epoch_list(&[2]), "epoch 2");
        assert_eq!(epoch_list(&[2, 3, 4]), "epochs 2-4");
        assert_eq!(epoch_list(&[1, 3, 4, 7]), "epochs 1, 3-4 and 7");
        assert_eq!(epoch_list(&[1, 5]), "epochs 1 and 5");
    }
    use super::{picks, EpochRecord};

    fn epoch(epoch: usize, test_acc: f64, keep_ratio: f64, valid: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            step: 10 * epoch as u64,
            train_loss: 0.0,
            train_penalty: 0.0,
            train_acc: 0.0,
            test_loss: 0.0,
            test_acc,
            keep_ratio,
            layers: Vec::new(),
            epoch_seconds: 0.0,
            ms_per_step: 0.0,
            alpha: 0.0,
            valid_acc: valid,
        }
    }

    /// Ties go to the earliest epoch for every pick (the best accuracy once took the last).
    #[test]
    fn picks_take_the_first_of_equals() {
        let h = [
            epoch(1, 90.0, 0.5, None),
            epoch(2, 97.0, 0.1, Some(95.0)),
            epoch(3, 97.0, 0.1, Some(95.0)),
            epoch(4, 96.0, 0.2, Some(94.0)),
        ];
        let (best, low, valid) = picks(&h);
        assert_eq!(
            (best.epoch, low.epoch, valid.map(|r| r.epoch)),
            (2, 2, Some(2))
        );
        let (best, low, valid) = picks(&h[..1]);
        assert_eq!(
            (best.epoch, low.epoch, valid.map(|r| r.epoch)),
            (1, 1, None)
        );
        let h = [epoch(1, 90.0, 1.0, None), epoch(2, 91.0, 1.0, None)];
        assert_eq!((picks(&h).0.epoch, picks(&h).1.epoch), (2, 1));
    }
}
