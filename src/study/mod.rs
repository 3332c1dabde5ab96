//! Studies made of many runs: the alpha sweep (`dst sweep`) and the reproduction of the paper's
//! Table 1 (`dst reproduce table1`). Each run gets its own run directory, named from its settings;
//! an interrupted study resumes: finished runs are not redone, an unfinished one continues from its
//! last checkpoint (`dst train --resume` semantics), one that never reached a checkpoint starts
//! over. A run directory holding another run (other settings, more epochs) is refused, never
//! reused, and a value given twice (seed, alpha, model) is refused before any work. The tables
//! and charts come from `report`, which only reads the run directories.

use std::path::{Path, PathBuf};

use crate::gpu::Gpu;
use crate::report::{self, table, Own, ReportError, Rule, Run};
use crate::train::{self, Progress, RunOptions, TrainConfig, TrainError};

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// Ctrl-C between two runs (while the next one was starting): the finished runs stay.
    #[error(
        "interrupted before run {next} of {total} started: the runs before it are kept; run the \
         same command again to go on"
    )]
    Interrupted { next: usize, total: usize },
    #[error(
        "{} of {total} runs diverged ({}; {report} lists them as diverged; training is \
         deterministic, so they diverge again if rerun as they are: try a smaller --lr or \
         --alpha in another --out):\n{}",
        runs.len(),
        if runs.len() == *total { "none finished" } else { "the others finished" },
        runs.join("\n")
    )]
    Diverged {
        total: usize,
        /// The report written without them.
        report: String,
        /// Each diverged run's message.
        runs: Vec<String>,
    },
    #[error("{path}: {source}{}", crate::train::io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a run directory stands with respect to the run it should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// `summary.json` of at least the wanted epochs: nothing to do.
    Done,
    /// A checkpoint of at most the wanted epochs exists: continue from it (one of all of them
    /// lacks only its summary, which the trainer writes without training).
    Resume,
    /// Nothing usable: train from the start.
    Fresh,
}

pub fn run_state(dir: &Path, cfg: &TrainConfig) -> RunState {
    if train::summary_epochs(dir).is_some_and(|e| e >= cfg.epochs) {
        RunState::Done
    } else if checkpoint_epoch(dir).is_some_and(|e| e <= cfg.epochs) {
        RunState::Resume
    } else {
        RunState::Fresh
    }
}

/// The epoch a run directory's checkpoint holds. One of all the wanted epochs without a summary (a
/// crash between the two writes) is finished from the checkpoint, not trained again.
fn checkpoint_epoch(dir: &Path) -> Option<usize> {
    let p = dir.join(crate::checkpoint::FILE_NAME);
    if !p.is_file() {
        return None;
    }
    crate::checkpoint::Checkpoint::load(&p)
        .ok()?
        .meta("epoch")?
        .parse()
        .ok()
}

/// The directory name of a run: `dense-seed1`, `alpha5e-4-seed1`.
pub fn run_name(cfg: &TrainConfig) -> String {
    if cfg.dense {
        format!("dense-seed{}", cfg.seed)
    } else {
        format!("alpha{}-seed{}", table::fmt_alpha(cfg.alpha), cfg.seed)
    }
}

/// The settings (from `config.json`) of the run in `dir`, when it holds anything worth keeping (a
/// summary or a checkpoint); None for a folder that is absent, empty or holds only what an
/// attempt left before its first checkpoint. Refused: such a folder without a readable
/// `config.json`.
fn existing_config(dir: &Path) -> Result<Option<TrainConfig>, StudyError> {
    let worth =
        dir.join("summary.json").is_file() || dir.join(crate::checkpoint::FILE_NAME).is_file();
    if !worth {
        return Ok(None);
    }
    let p = dir.join("config.json");
    let unreadable = |e: &dyn std::fmt::Display| {
        StudyError::Config(format!(
            "{} holds a run whose settings cannot be read ({}: {e}): pick another --out or remove it",
            dir.display(),
            p.display()
        ))
    };
    let text = std::fs::read_to_string(&p).map_err(|e| unreadable(&e))?;
    // Through TrainConfig (as `train`'s resume warning does): fields a newer version added take
    // their defaults and do not count as differences.
    serde_json::from_str::<TrainConfig>(&text)
        .map(Some)
        .map_err(|e| unreadable(&e))
}

/// `42`, `0.01`, `sgd`, `none`, `[80,120]`: the value of the setting `key` as a flag would take
/// it; no `data` folder reads "the embedded subset".
fn show_value(key: &str, v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null if key == "data" => "the embedded subset".into(),
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The settings in which `theirs` (a run on disk) differs from `ours` (the run wanted), as
/// (name, theirs, ours), compared through `TrainConfig`'s serialisation. Not compared: `epochs`
/// (a run can be extended; `ensure_run` checks the epochs apart), `log_every` (only how often it
/// logged), and for two dense runs `alpha` and `reset` (no masks: unused).
pub fn config_differences(
    theirs: &TrainConfig,
    ours: &TrainConfig,
) -> Vec<(String, String, String)> {
    let t = serde_json::to_value(theirs).expect("serialisable");
    let o = serde_json::to_value(ours).expect("serialisable");
    let both_dense = theirs.dense && ours.dense;
    crate::train::setting_differences(&t, &o, |k| {
        matches!(k, "epochs" | "log_every")
            || (both_dense && matches!(k, "alpha" | "reset"))
            // `train` records --data absolute: the same folder given relative is no difference.
            || (k == "data" && train::same_data_values(t.get("data"), o.get("data").unwrap_or_default()))
    })
    .into_iter()
    .map(|(k, tv, v)| {
        let (tv, v) = (show_value(&k, &tv), show_value(&k, &v));
        (k, tv, v)
    })
    .collect()
}

/// Epochs the run in `dir` holds: those of its summary or its checkpoint, the larger.
fn epochs_held(dir: &Path) -> Option<usize> {
    train::summary_epochs(dir).max(checkpoint_epoch(dir))
}

/// Refuses to reuse (skip or resume) the run in `dir` for `cfg` when it is another run: settings
/// that differ in anything but the epochs (`config_differences`), more epochs than `cfg` asks
/// (a report would show figures of a longer run), or a length change of a steered run whose
/// target epoch follows the length. A folder without a summary or checkpoint is not checked: it
/// is trained over.
pub fn check_reuse(cfg: &TrainConfig, dir: &Path) -> Result<(), StudyError> {
    let Some(theirs) = existing_config(dir)? else {
        return Ok(());
    };
    let diff = config_differences(&theirs, cfg);
    if !diff.is_empty() {
        // Only the data folder: the same data moved, perhaps (said how to keep the runs).
        let moved = if diff.iter().all(|(k, _, _)| k == "data") {
            "; if the data moved, set \"data\" in the runs' config.json files to the new folder \
             (its absolute path) to keep them"
        } else {
            ""
        };
        return Err(StudyError::Config(format!(
            "{} was trained with {}, this study asks for {}: pick another --out or remove it{moved}",
            dir.display(),
            show_settings(&diff, |d| &d.1),
            show_settings(&diff, |d| &d.2),
        )));
    }
    if let Some(held) = epochs_held(dir).filter(|&e| e > cfg.epochs) {
        return Err(StudyError::Config(format!(
            "{} holds {held} epochs of training, this study asks for {}: pass --epochs {held}, pick another --out or remove it",
            dir.display(),
            cfg.epochs
        )));
    }
    if theirs.epochs != cfg.epochs && theirs.target_keep.is_some() && theirs.target_epoch.is_none()
    {
        return Err(StudyError::Config(format!(
            "{} was set up for {}, this study asks for {}; its --target-keep schedule follows the run's length, so it cannot be reused: pick another --out or remove it",
            dir.display(),
            report::plural(theirs.epochs, "epoch"),
            cfg.epochs
        )));
    }
    Ok(())
}

/// Brings the run in `dir` to `cfg.epochs` epochs: skips it when done, resumes it from its
/// checkpoint, or trains it from the start. Returns what it found. A run on disk with other
/// settings, or more epochs, is refused (`check_reuse`), never reused.
pub fn ensure_run(
    cfg: &TrainConfig,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<RunState, StudyError> {
    cfg.validate()?;
    // The same study started twice: the run the other process is training is named as in use
    // (not as finished, resumable or unfinished: what it holds changes while it is read).
    if train::in_use(dir) {
        return Err(TrainError::InUse {
            dir: dir.to_path_buf(),
        }
        .into());
    }
    check_reuse(cfg, dir)?;
    // A checkpoint there that cannot be read (damaged, edited, or not dst's) is named, not
    // taken for no checkpoint: the run would be trained over.
    let ck = dir.join(crate::checkpoint::FILE_NAME);
    if ck.is_file() {
        if let Err(e) = crate::checkpoint::Checkpoint::load(&ck) {
            return Err(StudyError::Config(format!(
                "{}: its checkpoint cannot be used ({e}); nothing was changed: remove the run's \
                 folder to train it again, or pick another --out",
                dir.display()
            )));
        }
    }
    let state = run_state(dir, cfg);
    match state {
        RunState::Done => {
            progress.line(&format!("{}: finished, kept as it is", dir.display()));
        }
        RunState::Resume => {
            progress.line(&format!(
                "{}: continuing from its checkpoint",
                dir.display()
            ));
            // The run's own settings, with the wanted length: a resumed run is the same run.
            let mut own: TrainConfig = crate::report::runs::read_json(&dir.join("config.json"))
                .unwrap_or_else(|_| cfg.clone());
            own.epochs = cfg.epochs;
            train::train(
                Gpu::from_env()?,
                &own,
                &RunOptions {
                    out: dir.to_path_buf(),
                    resume: true,
                    header: None,
                },
                progress,
            )?;
        }
        RunState::Fresh => {
            // Files there that no dst run wrote (a run writes its config.json first): the user's,
            // never trained over (a metrics.jsonl or a chart there was replaced).
            if !dir.join("config.json").exists() {
                let theirs: Vec<String> = std::fs::read_dir(dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            // The lock, a temporary a killed first write left (removed by
                            // the run), a file browser's own.
                            .filter(|n| {
                                n != train::LOCK_FILE
                                    && !crate::checkpoint::is_temporary(n)
                                    && n != ".DS_Store"
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !theirs.is_empty() {
                    return Err(StudyError::Config(format!(
                        "{} holds files no dst run wrote ({}); a study's run goes into a folder \
                         of its own: move them away or pick another --out; nothing was changed",
                        dir.display(),
                        theirs.join(", ")
                    )));
                }
            }
            if let Some(what) = train::lost_checkpoint(dir) {
                return Err(StudyError::Config(format!(
                    "{} records {what} but its checkpoint is missing, so it cannot be extended; \
                     nothing was changed: put the checkpoint back, remove the run's folder to \
                     train it again, or pick another --out",
                    dir.display()
                )));
            }
            // The same study started twice: what another process is training (its lock
            // held) is not removed; the state is read again under the lock, held until `train`
            // takes it for itself.
            let lock = if dir.is_dir() {
                train::lock_run(dir)?
            } else {
                None
            };
            if run_state(dir, cfg) != RunState::Fresh {
                return Err(StudyError::Config(format!(
                    "{}: another dst process changed this run while it was being looked at; \
                     nothing was changed: run the same command again",
                    dir.display()
                )));
            }
            // What an attempt left that cannot be continued.
            for f in ["metrics.jsonl", "summary.json", "checkpoint.safetensors"] {
                let p = dir.join(f);
                if p.exists() {
                    std::fs::remove_file(&p).map_err(|source| StudyError::Io {
                        path: p.clone(),
                        source,
                    })?;
                }
            }
            progress.line(&format!("{}: training", dir.display()));
            drop(lock);
            train::train(
                Gpu::from_env()?,
                cfg,
                &RunOptions {
                    out: dir.to_path_buf(),
                    resume: false,
                    header: None,
                },
                progress,
            )?;
        }
    }
    Ok(state)
}

/// An alpha sweep: DST runs for every (alpha, seed) and a dense baseline per seed.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Every setting but alpha, seed and dense.
    pub base: TrainConfig,
    pub alphas: Vec<f64>,
    pub seeds: Vec<u64>,
    /// Also train the dense baseline (one run per seed).
    pub dense: bool,
}

impl Sweep {
    /// (run directory, config) of every run of the grid, dense baselines first.
    pub fn runs(&self, out: &Path) -> Vec<(PathBuf, TrainConfig)> {
        let mut v = Vec::new();
        let variants: Vec<Option<f64>> = self
            .dense
            .then_some(None)
            .into_iter()
            .chain(self.alphas.iter().map(|a| Some(*a)))
            .collect();
        for alpha in variants {
            for &seed in &self.seeds {
                let cfg = TrainConfig {
                    dense: alpha.is_none(),
                    alpha: alpha.unwrap_or(self.base.alpha),
                    seed,
                    ..self.base.clone()
                };
                v.push((out.join(run_name(&cfg)), cfg));
            }
        }
        v
    }

    /// Checks the grid before any work: at least one alpha (or the dense baseline) and one seed,
    /// positive alphas, no value given twice (it would be trained once and counted twice), every
    /// run's settings valid.
    pub fn check(&self) -> Result<(), StudyError> {
        if self.alphas.is_empty() && !self.dense {
            return Err(StudyError::Config(
                "--alpha: give at least one value".into(),
            ));
        }
        if self.seeds.is_empty() {
            return Err(StudyError::Config("--seeds: give at least one seed".into()));
        }
        if let Some(a) = self.alphas.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
            return Err(StudyError::Config(format!(
                "--alpha values must be finite and positive (a log axis shows them), got {a}"
            )));
        }
        check_seeds(&self.seeds)?;
        if let Some(a) = first_repeated(&self.alphas) {
            return Err(StudyError::Config(format!(
                "--alpha: {} is given twice; give each alpha once",
                table::fmt_alpha(*a)
            )));
        }
        let grid = self.runs(Path::new("."));
        for (_, cfg) in &grid {
            cfg.validate()?;
        }
        check_distinct_dirs(&grid)
    }
}

/// The first value that appears again later in `xs`.
fn first_repeated<T: PartialEq>(xs: &[T]) -> Option<&T> {
    xs.iter()
        .enumerate()
        .find(|(i, x)| xs[i + 1..].contains(x))
        .map(|(_, x)| x)
}

fn check_seeds(seeds: &[u64]) -> Result<(), StudyError> {
    match first_repeated(seeds) {
        Some(s) => Err(StudyError::Config(format!(
            "--seeds: seed {s} is given twice; give each seed once (a seed is one run, counted once)"
        ))),
        None => Ok(()),
    }
}

/// Two runs of a grid in one directory would be trained once and reported twice.
fn check_distinct_dirs(grid: &[(PathBuf, TrainConfig)]) -> Result<(), StudyError> {
    for (i, (d, _)) in grid.iter().enumerate() {
        if grid[i + 1..].iter().any(|(e, _)| e == d) {
            return Err(StudyError::Config(format!(
                "two runs of this study would share the directory {}: give each value once",
                d.display()
            )));
        }
    }
    Ok(())
}

/// Runs (or resumes) the sweep into `out`, then writes `sweep.md`, `sweep.csv` and `sweep.png`
/// there. Returns the run directories as read back.
pub fn sweep(s: &Sweep, out: &Path, progress: &mut dyn Progress) -> Result<Vec<Run>, StudyError> {
    s.check()?;
    check_study_folder(out, Study::Sweep)?;
    check_report(&out.join("sweep.md"), SWEEP_HEADER, "a `dst sweep` report")?;
    report::check_own_text(&out.join("sweep.csv"), Own::Csv, "a `dst sweep` table")?;
    // sweep.png only beside a sweep.md or sweep.csv of dst's (checked above; one of them moved
    // away leaves the other): a picture alone there may be anyone's.
    let png = out.join("sweep.png");
    if png.exists() && !out.join("sweep.md").is_file() && !out.join("sweep.csv").is_file() {
        return Err(ReportError::Refused {
            path: png,
            reason: "already exists and no `dst sweep` report or table lies beside it; dst \
                     replaces only its own files there: remove it or pick another --out"
                .to_string(),
        }
        .into());
    }
    let grid = s.runs(out);
    let lock = start_study(out, Study::Sweep, &grid, |theirs: &TrainConfig| {
        Some(TrainConfig {
            dense: theirs.dense,
            alpha: theirs.alpha,
            seed: theirs.seed,
            ..s.base.clone()
        })
    })?;
    let diverged = lock.trained(&grid, train_grid(&grid, progress, run_name))?;
    let runs: Vec<Run> = grid
        .iter()
        .map(|(d, _)| Run::load(d))
        .collect::<Result<_, _>>()?;
    write_sweep_report(&runs, out)?;
    let others = other_runs(out, 1, &runs);
    if !others.is_empty() {
        progress.line(&format!(
            "note: {}",
            other_runs_line(out, &others, "alphas or seeds").trim_end()
        ));
    }
    diverged_error(diverged, grid.len(), "sweep.md")?;
    Ok(runs)
}

/// What a study of `kind` into `out` does before its first run trains: every run of `grid` on
/// disk checked (a conflict found late would come after hours of training), the folder's other
/// runs checked against what this study's would use (`check_other_runs`, `wanted`), then the
/// folder locked and marked. Returns the lock, held while the study runs.
fn start_study(
    out: &Path,
    kind: Study,
    grid: &[(PathBuf, TrainConfig)],
    wanted: impl Fn(&TrainConfig) -> Option<TrainConfig>,
) -> Result<StudyLock, StudyError> {
    // Every conflict counted, not only the first (removing the run named met the next one).
    let mut refused = grid
        .iter()
        .filter_map(|(dir, cfg)| check_reuse(cfg, dir).err());
    if let Some(first) = refused.next() {
        let more = refused.count();
        return Err(match (first, more) {
            (StudyError::Config(m), 1..) => StudyError::Config(format!(
                "{m} ({} of this study's runs in the folder {} refused too: removing one run \
                 leaves the others; another --out takes them all)",
                more,
                if more == 1 { "is" } else { "are" }
            )),
            (e, _) => e,
        });
    }
    let (depth, parts) = match kind {
        Study::Sweep => (1, "alphas and seeds"),
        Study::Reproduce => (2, "models and seeds"),
    };
    check_other_runs(out, depth, grid, parts, wanted)?;
    let lock = lock_study(out)?;
    let marked = mark_study(out, kind)?;
    Ok(StudyLock {
        _lock: lock,
        out: out.to_path_buf(),
        marked,
    })
}

/// A study's hold on its folder (`start_study`): the lock, and whether it wrote the folder's
/// `STUDY_FILE`.
struct StudyLock {
    _lock: Option<std::fs::File>,
    out: PathBuf,
    marked: bool,
}

impl StudyLock {
    /// `train_grid`'s result; where it failed and this study marked the folder but no run of
    /// `grid` was set up there (a run in use by another process, an adapter that failed), the
    /// mark goes: the folder holds nothing of the study (it said "nothing was changed", and the
    /// mark refused the other kind of study there).
    fn trained<T>(
        &self,
        grid: &[(PathBuf, TrainConfig)],
        r: Result<T, StudyError>,
    ) -> Result<T, StudyError> {
        if r.is_err() && self.marked && !grid.iter().any(|(d, _)| d.join("config.json").exists()) {
            let _ = std::fs::remove_file(self.out.join(STUDY_FILE));
        }
        r
    }
}

/// Takes the study folder `out`'s lock (made if missing) for as long as the study trains and
/// writes its report: a second study into the same folder is refused, not mixed with the first
/// (each run has its own lock too). `None` where the file system has no locks.
fn lock_study(out: &Path) -> Result<Option<std::fs::File>, StudyError> {
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    match train::lock_run(out) {
        Err(TrainError::InUse { .. }) => Err(TrainError::Refused(format!(
            "{} is in use by another dst process (a study training into it); wait for it to \
             end, or pick another --out; nothing was changed",
            out.display()
        ))
        .into()),
        r => Ok(r?),
    }
}

/// Trains (or continues, or keeps) every run of `grid` in order, `name` labelling each in the
/// progress. A run that diverges does not stop the others: returned are the diverged runs'
/// messages. Any other error stops at once.
fn train_grid(
    grid: &[(PathBuf, TrainConfig)],
    progress: &mut dyn Progress,
    name: impl Fn(&TrainConfig) -> String,
) -> Result<Vec<String>, StudyError> {
    let mut diverged = Vec::new();
    // Ctrl-C while a run sets up (or between two runs) asks to stop too: the run stops at its
    // first log point, or the next one does not start, with a message either way.
    let _catching = train::interrupt::Catching::new(
        "run the same command again to go on from the runs' last checkpoints",
    );
    for (i, (dir, cfg)) in grid.iter().enumerate() {
        if train::interrupt::requested() {
            return Err(StudyError::Interrupted {
                next: i + 1,
                total: grid.len(),
            });
        }
        progress.line(&format!("[{}/{}] {}", i + 1, grid.len(), name(cfg)));
        match ensure_run(cfg, dir, progress) {
            Ok(_) => {}
            Err(StudyError::Train(e @ TrainError::Diverged { .. })) => {
                progress.line(&format!("{e}; going on with the other runs"));
                diverged.push(format!("  {}: {e}", dir.display()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(diverged)
}

/// Err naming the diverged runs, once the report (`report`) is written without them.
fn diverged_error(runs: Vec<String>, total: usize, report: &str) -> Result<(), StudyError> {
    if runs.is_empty() {
        return Ok(());
    }
    Err(StudyError::Diverged {
        total,
        report: report.to_string(),
        runs,
    })
}

/// `out`'s folder ("." for a relative name without one).
fn parent_of(out: &Path) -> &Path {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `dir` holds a reproduction's REPORT.md (not any report: `dst report --out` may
/// write one there).
fn holds_reproduction_report(dir: &Path) -> bool {
    std::fs::read(dir.join("REPORT.md")).is_ok_and(|b| b.starts_with(REPRODUCE_HEADER.as_bytes()))
}

/// The subfolders of `dir`.
fn subfolders(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// The run folders in `out` (`depth` 1: a sweep's `out/<run>`; 2: a reproduction's
/// `out/<model>/<run>`) that are not among `runs`: runs of an earlier call with other alphas,
/// seeds or models, which the report leaves out. Sorted.
fn other_runs(out: &Path, depth: usize, runs: &[Run]) -> Vec<PathBuf> {
    let asked: Vec<&Path> = runs.iter().map(|r| r.dir.as_path()).collect();
    runs_not_asked(out, depth, &asked)
}

/// `other_runs`, the runs asked for given by their folders.
fn runs_not_asked(out: &Path, depth: usize, asked: &[&Path]) -> Vec<PathBuf> {
    let mut level = vec![out.to_path_buf()];
    for _ in 0..depth {
        level = level.iter().flat_map(|d| subfolders(d)).collect();
    }
    let mut others: Vec<PathBuf> = level
        .into_iter()
        .filter(|d| report::is_run_folder(d))
        .filter(|d| !asked.iter().any(|a| report::same_dir(a, d)))
        .collect();
    others.sort();
    others
}

/// Refuses a study into `out` (its runs `grid`, `depth` levels down) where runs it does not ask
/// for are of another study: settings that differ from those this study's runs use (`wanted`: a
/// sweep's base with their alpha and seed; a reproduction's for their model and seed), the
/// epochs included. Its report would be written over the other study's, and `dst report` on
/// the folder would mix the two. `parts`: what the runs differ in that makes them parts of
/// this study ("alphas and seeds"), for the hint when only their length differs. Runs `wanted`
/// knows nothing of (a model this build lacks), runs whose settings cannot be read, and
/// folders without a summary or checkpoint are not checked.
fn check_other_runs(
    out: &Path,
    depth: usize,
    grid: &[(PathBuf, TrainConfig)],
    parts: &str,
    wanted: impl Fn(&TrainConfig) -> Option<TrainConfig>,
) -> Result<(), StudyError> {
    let asked: Vec<&Path> = grid.iter().map(|(d, _)| d.as_path()).collect();
    let mut differing = Vec::new();
    for dir in runs_not_asked(out, depth, &asked) {
        // Not this study's to read: `dst report` names a run it cannot read.
        let Some(theirs) = existing_config(&dir).ok().flatten() else {
            continue;
        };
        let Some(ours) = wanted(&theirs) else {
            continue;
        };
        let mut diff = config_differences(&theirs, &ours);
        if theirs.epochs != ours.epochs {
            diff.push((
                "epochs".into(),
                theirs.epochs.to_string(),
                ours.epochs.to_string(),
            ));
        }
        if !diff.is_empty() {
            differing.push((dir, diff, theirs.dense));
        }
    }
    let Some((dir, diff, dense)) = differing.first() else {
        return Ok(());
    };
    let more = match differing.len() {
        1 => String::new(),
        2 => " and another run".to_string(),
        n => format!(" and {} other runs", n - 1),
    };
    let name = dir.strip_prefix(out).unwrap_or(dir).display();
    if let [(key, theirs, ours)] = &diff[..] {
        if key == "epochs" {
            // Only the length: the same study, asked for part of it at another length. Asking
            // for them too extends them (never shortens them); a dense baseline left out by
            // --no-dense is asked for by dropping it.
            let join = match (ours.parse::<usize>(), theirs.parse::<usize>()) {
                (Ok(o), Ok(t)) if o > t && *dense && !grid.iter().any(|(_, c)| c.dense) => {
                    ", drop --no-dense (a study extends its runs to --epochs)".to_string()
                }
                (Ok(o), Ok(t)) if o > t => {
                    format!(", ask for their {parts} too (a study extends its runs to --epochs)")
                }
                _ => String::new(),
            };
            return Err(StudyError::Config(format!(
                "{} holds runs of {} ({name}{more}), and this study's runs are of {ours}: its \
                 report would replace theirs. Pass --epochs {theirs}{join}, or pick another --out",
                out.display(),
                theirs
                    .parse::<usize>()
                    .map_or(format!("{theirs} epochs"), |t| report::plural(t, "epoch")),
            )));
        }
    }
    Err(StudyError::Config(format!(
        "{} holds runs of another study ({name}{more}): {name} was trained with {}, this \
         study's runs use {}. Its report would replace that study's, and `dst report` on the folder would \
         mix the two: pick another --out (or move those runs away)",
        out.display(),
        show_settings(diff, |d| &d.1),
        show_settings(diff, |d| &d.2),
    )))
}

/// "lr 0.01, limit_train 256": the settings of `diff` (`config_differences`' triples), each
/// with the value `pick` takes (theirs or ours).
fn show_settings(
    diff: &[(String, String, String)],
    pick: fn(&(String, String, String)) -> &String,
) -> String {
    diff.iter()
        .map(|d| format!("{} {}", d.0, pick(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's line on `others` (`other_runs`), empty when there are none.
fn other_runs_line(out: &Path, others: &[PathBuf], asked: &str) -> String {
    if others.is_empty() {
        return String::new();
    }
    const SHOWN: usize = 6;
    let names: Vec<String> = others
        .iter()
        .take(SHOWN)
        .map(|d| d.strip_prefix(out).unwrap_or(d).display().to_string())
        .collect();
    let more = match others.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "Not in this report: {} in this folder that {} not asked for this time ({}{more}; \
         other {asked}). `dst report {}` reports every run there.\n\n",
        report::plural(others.len(), "run"),
        if others.len() == 1 { "was" } else { "were" },
        names.join(", "),
        report::shell_word(out)
    )
}

/// The file a study writes into its folder before it trains any run: which kind of study the
/// folder holds, known before the study's report is written (a reproduction interrupted in its
/// first run has no REPORT.md yet, and its model folders look like sweeps).
pub const STUDY_FILE: &str = "study.json";

impl Study {
    fn name(self) -> &'static str {
        match self {
            Study::Sweep => "sweep",
            Study::Reproduce => "reproduce table1",
        }
    }
}

/// The kind of study whose `STUDY_FILE` lies in `dir`.
fn study_kind(dir: &Path) -> Option<Study> {
    let text = std::fs::read_to_string(dir.join(STUDY_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = v.get("study")?.as_str()?;
    [Study::Sweep, Study::Reproduce]
        .into_iter()
        .find(|k| k.name() == name)
}

/// Writes `out`'s `STUDY_FILE` (a study of `kind`), unless it is there already; whether it
/// wrote it.
fn mark_study(out: &Path, kind: Study) -> Result<bool, StudyError> {
    if study_kind(out) == Some(kind) {
        return Ok(false);
    }
    let path = out.join(STUDY_FILE);
    let text = format!("{}\n", serde_json::json!({ "study": kind.name() }));
    crate::checkpoint::write_atomic(&path, text.as_bytes())
        .map_err(|source| StudyError::Io { path, source })?;
    Ok(true)
}

/// `out` as the file system resolves it (a link followed, `.` and `..` gone) where it or its
/// folder exists: the checks that read its name and its parent's files see the folder itself (a
/// link to a reproduction's model folder, or `--out .` inside one, got past them).
fn resolved(out: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(out) {
        return p;
    }
    match out.file_name() {
        Some(n) => std::fs::canonicalize(parent_of(out))
            .map(|p| p.join(n))
            .unwrap_or_else(|_| out.to_path_buf()),
        None => out.to_path_buf(),
    }
}

/// Where `out` is a folder inside a reproduction: any folder of a marked one (its `STUDY_FILE`
/// or REPORT.md beside it), or, in one from before the mark, a folder of one model's runs
/// (`runs/table1/lenet300`: a sweep's layout) or of its charts. That folder's name and the
/// reproduction's folder.
fn reproduction_part(out: &Path) -> Option<(String, PathBuf)> {
    let out = resolved(out);
    let name = out.file_name()?.to_str()?.to_string();
    let parent = parent_of(&out).to_path_buf();
    if holds_reproduction_report(&parent) || study_kind(&parent) == Some(Study::Reproduce) {
        return Some((name, parent));
    }
    let models = || crate::models::MODELS.iter().map(|m| m.name);
    let inside = if name == "charts" {
        models().any(|m| out.join(m).is_dir() && parent.join(m).is_dir())
    } else {
        models().any(|m| m == name) && parent.join("charts").join(&name).is_dir()
    };
    inside.then_some((name, parent))
}

/// What of a reproduction lies in `out`: its REPORT.md, its charts/<model>/ folders, or its
/// runs a level down.
fn reproduction_in(out: &Path) -> Option<String> {
    if holds_reproduction_report(out) {
        return Some("REPORT.md".to_string());
    }
    if study_kind(out) == Some(Study::Reproduce) {
        return Some(STUDY_FILE.to_string());
    }
    let charts = crate::models::MODELS
        .iter()
        .map(|m| out.join("charts").join(m.name))
        .find(|d| d.is_dir());
    charts.map(|d| d.display().to_string()).or_else(|| {
        subfolders(out).into_iter().find_map(|c| {
            let runs_below = !report::is_run_folder(&c)
                && subfolders(&c).iter().any(|r| report::is_run_folder(r));
            runs_below.then(|| format!("runs in {}", c.display()))
        })
    })
}

/// What of a sweep lies in `out`: its report, table or chart, or a run in it.
fn sweep_in(out: &Path) -> Option<String> {
    sweep_files_in(out).or_else(|| {
        subfolders(out)
            .into_iter()
            .find(|c| report::is_run_folder(c))
            .map(|c| format!("the run {}", c.display()))
    })
}

/// A sweep's own file in `out`: its report, table, chart or `STUDY_FILE`.
fn sweep_files_in(out: &Path) -> Option<String> {
    ["sweep.md", "sweep.csv", "sweep.png"]
        .into_iter()
        .find(|f| out.join(f).exists())
        .map(str::to_string)
        .or_else(|| (study_kind(out) == Some(Study::Sweep)).then(|| STUDY_FILE.to_string()))
}

/// A study's Markdown report at `path` (`header` its first line) is dst's own to replace.
fn check_report(path: &Path, header: &str, what: &str) -> Result<(), ReportError> {
    report::check_own_text(path, Own::Markdown { header }, what)
}

/// A study's report checked again just before it is written, after the training: one edited
/// meanwhile is refused, saying that the runs are kept.
fn still_own(path: &Path, header: &str, what: &str) -> Result<(), ReportError> {
    check_report(path, header, what).map_err(|e| match e {
        ReportError::Refused { path, reason } => ReportError::Refused {
            path,
            // Not "pick another --out": the runs are here.
            reason: format!(
                "{}. The runs are trained and kept: move the file away and run the same command \
                 again to write the report",
                reason.strip_suffix(report::MOVE_IT).unwrap_or(&reason)
            ),
        },
        e => e,
    })
}

/// The first line of `sweep.md`.
const SWEEP_HEADER: &str = "# Alpha sweep\n";

/// The first line of `REPORT.md` (`dst reproduce`).
const REPRODUCE_HEADER: &str = "# Reproduction of Table 1";

/// The two kinds of study, each with its own layout: a sweep's runs lie in its folder
/// (`dense-seed1/`), a reproduction's one level down, in a folder per model (`lenet300/...`),
/// with `charts/` beside them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Study {
    Sweep,
    Reproduce,
}

/// Refuses a study's `--out` that is a file or a training run's folder (its runs would nest in
/// that run's folder, beside its checkpoint), or that holds the other kind of study (its report
/// and charts would take in both studies' runs), before anything trains.
fn check_study_folder(out: &Path, kind: Study) -> Result<(), StudyError> {
    let refuse = |reason: &str| {
        StudyError::Report(ReportError::Refused {
            path: out.to_path_buf(),
            reason: reason.to_string(),
        })
    };
    if out.is_file() {
        return Err(refuse(
            "is a file, not a folder: give a folder for the study's runs",
        ));
    }
    if let Some(f) = crate::checkpoint::file_in_the_way(out) {
        return Err(refuse(&format!(
            "the folder cannot be made: {} is a file",
            f.display()
        )));
    }
    if report::is_run_folder(out) {
        return Err(refuse(
            "is the folder of a training run: a study's runs go into a folder of their own; pick another --out",
        ));
    }
    if out.join(STUDY_FILE).exists() && study_kind(out).is_none() {
        return Err(refuse(&format!(
            "holds a {STUDY_FILE} that dst did not write (dst marks a study's folder with one): \
             pick another --out, or move it away"
        )));
    }
    if crate::data::holds_mnist(out) || crate::data::cifar::holds_any(out) {
        return Err(refuse(
            "holds a dataset's files: a study's runs go into a folder of their own; pick another --out",
        ));
    }
    if let Some((name, parent)) = reproduction_part(out) {
        return Err(refuse(&format!(
            "is the {name} folder of the `dst reproduce` study in {}: a {}'s runs go into a \
             folder of their own, or that study's report would take them in; pick another --out",
            parent.display(),
            match kind {
                Study::Sweep => "sweep",
                Study::Reproduce => "reproduction",
            }
        )));
    }
    let other = match kind {
        Study::Sweep => reproduction_in(out).map(|what| ("`dst reproduce`", what)),
        // In the folder, or in a folder of a model's runs: a sweep's runs and report there.
        Study::Reproduce => sweep_in(out).map(|what| ("`dst sweep`", what)).or_else(|| {
            crate::models::MODELS.iter().find_map(|m| {
                let d = out.join(m.name);
                // A reproduction put there (its folder marked) is one too.
                if study_kind(&d) == Some(Study::Reproduce) {
                    return Some(("`dst reproduce`", d.join(STUDY_FILE).display().to_string()));
                }
                sweep_files_in(&d).map(|f| ("`dst sweep`", d.join(f).display().to_string()))
            })
        }),
    };
    if let Some((study, what)) = other {
        // Runs straight in the folder are a sweep's, or runs made by hand: both would mix.
        let holds = match (kind, what.strip_prefix("the run ")) {
            (Study::Reproduce, Some(run)) => {
                format!("holds runs of its own ({run}: a `dst sweep`'s, or made by hand)")
            }
            _ => format!("holds what looks like a {study} study ({what})"),
        };
        return Err(refuse(&format!(
            "{holds}: a study's runs go into a folder of their own, or its report would mix the \
             two; pick another --out"
        )));
    }
    Ok(())
}

/// `sweep.md`, `sweep.csv` and `sweep.png` in `out` from the runs of a sweep.
pub fn write_sweep_report(runs: &[Run], out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let rows = table::rows(runs);
    // Every run diverged: no chart (empty axes would pass for one), and none left from before.
    let finished = rows.iter().any(|r| r.get(Rule::Last).is_some());
    let mut md = format!("{SWEEP_HEADER}\n");
    if let Some(r) = runs.first() {
        let c = &r.config;
        md.push_str(&format!(
            "Model {}, {}, {}, data: {}. {}The figures as CSV: [sweep.csv](sweep.csv).\n\n",
            c.model,
            report::plural(c.epochs, "epoch"),
            c.optimiser_line(),
            rows.first().map(|r| r.data.as_str()).unwrap_or(""),
            if finished {
                "Accuracy and remaining % against alpha: [sweep.png](sweep.png). "
            } else {
                ""
            }
        ));
    }
    md.push_str(&other_runs_line(
        out,
        &other_runs(out, 1, runs),
        "alphas or seeds",
    ));
    md.push_str(&table::markdown(&rows, false));
    if finished {
        md.push_str("\n![accuracy and remaining % against alpha](sweep.png)\n");
    } else {
        md.push_str("\nNo run finished: there is no sweep.png to draw.\n");
    }
    let (p_md, p_csv, p_png) = (
        out.join("sweep.md"),
        out.join("sweep.csv"),
        out.join("sweep.png"),
    );
    // Checked again: the sweep may have trained for hours since, and sweep.md been edited.
    still_own(&p_md, SWEEP_HEADER, "a `dst sweep` report")?;
    report::write_markdown(&p_md, &md)?;
    report::write_text(&p_csv, &table::csv(&rows))?;
    if !finished {
        remove_stale(&p_png)?;
        return Ok(vec![p_md, p_csv]);
    }
    report::charts::sweep_chart(&rows, Rule::Last, &p_png)?;
    Ok(vec![p_md, p_csv, p_png])
}

/// Removes `path` if it is there (a chart an earlier drawing left that no longer has data).
fn remove_stale(path: &Path) -> Result<(), ReportError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReportError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `dst reproduce table1`: rows of the paper's Table 1 (by default its MNIST rows).
#[derive(Clone, Debug)]
pub struct Reproduce {
    pub models: Vec<String>,
    pub seeds: Vec<u64>,
    /// None: each model's own (the paper's 20).
    pub epochs: Option<usize>,
    pub data: Option<PathBuf>,
    pub limit_train: Option<usize>,
    /// The small version: unless given otherwise, 3 epochs on the first 6000 training images.
    pub quick: bool,
    /// A validation split in every run (`--valid N`).
    pub valid: Option<usize>,
}

impl Reproduce {
    pub const QUICK_EPOCHS: usize = 3;
    pub const QUICK_LIMIT: usize = 6000;

    pub fn runs(&self, out: &Path) -> Result<Vec<(PathBuf, TrainConfig)>, StudyError> {
        let mut v = Vec::new();
        for m in &self.models {
            let d = TrainConfig::for_model(m).map_err(TrainError::from)?;
            let base = TrainConfig {
                epochs: self.epochs.unwrap_or(if self.quick {
                    Self::QUICK_EPOCHS
                } else {
                    d.epochs
                }),
                limit_train: self.limit_train.or(self.quick.then_some(Self::QUICK_LIMIT)),
                data: self.data.clone(),
                valid: self.valid,
                ..d
            };
            let grid = Sweep {
                alphas: vec![base.alpha],
                base,
                seeds: self.seeds.clone(),
                dense: true,
            };
            v.extend(grid.runs(&out.join(m)));
        }
        Ok(v)
    }

    /// Checks the request before any work: at least one model and one seed, none given twice
    /// (it would be trained once and counted twice), every run's settings valid.
    pub fn check(&self) -> Result<(), StudyError> {
        if self.models.is_empty() || self.seeds.is_empty() {
            return Err(StudyError::Config(
                "give at least one model and one seed".into(),
            ));
        }
        check_seeds(&self.seeds)?;
        if let Some(m) = first_repeated(&self.models) {
            return Err(StudyError::Config(format!(
                "--model {m} is given twice; give each model once"
            )));
        }
        let grid = self.runs(Path::new("."))?;
        for (_, cfg) in &grid {
            cfg.validate()?;
        }
        // One --data for every model: a model of the other dataset is refused before any run
        // trains (the files are located, not read).
        for m in &self.models {
            if let Some((_, cfg)) = grid.iter().find(|(_, c)| &c.model == m) {
                cfg.check_data()?;
            }
        }
        check_distinct_dirs(&grid)
    }
}

/// Trains (or resumes) every run of `r` into `out/<model>/`, draws each model's charts into
/// `out/charts/<model>/` and writes `out/REPORT.md`. Returns the report's path.
pub fn reproduce(
    r: &Reproduce,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<PathBuf, StudyError> {
    r.check()?;
    check_study_folder(out, Study::Reproduce)?;
    check_report(
        &out.join("REPORT.md"),
        REPRODUCE_HEADER,
        "a `dst reproduce` report",
    )?;
    let grid = r.runs(out)?;
    let lock = start_study(out, Study::Reproduce, &grid, |theirs: &TrainConfig| {
        let one = Reproduce {
            models: vec![theirs.model.clone()],
            seeds: vec![theirs.seed],
            ..r.clone()
        };
        one.runs(out)
            .ok()?
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c.dense == theirs.dense)
    })?;
    let diverged = lock.trained(
        &grid,
        train_grid(&grid, progress, |cfg| {
            format!("{} {}", cfg.model, run_name(cfg))
        }),
    )?;
    let runs: Vec<Run> = grid
        .iter()
        .map(|(d, _)| Run::load(d))
        .collect::<Result<_, _>>()?;
    let path = out.join("REPORT.md");
    // Checked again: the runs may have trained for hours since, and REPORT.md been edited.
    still_own(&path, REPRODUCE_HEADER, "a `dst reproduce` report")?;
    report::write_markdown(&path, &reproduce_markdown(r, &runs, out)?)?;
    let others = other_runs(out, 2, &runs);
    if !others.is_empty() {
        progress.line(&format!(
            "note: {}",
            other_runs_line(out, &others, "seeds or models").trim_end()
        ));
    }
    diverged_error(diverged, grid.len(), "REPORT.md")?;
    Ok(path)
}

/// What `runs` used of one setting, shown: the value where all runs agree, otherwise the values
/// of each model ("lenet300: 20; lstm-a: 30"); "–" for no runs.
fn used_by<T: PartialEq>(
    runs: &[Run],
    get: impl Fn(&Run) -> T,
    show: impl Fn(&T) -> String,
) -> String {
    let mut all: Vec<T> = Vec::new();
    let mut models: Vec<(&str, Vec<T>)> = Vec::new();
    for x in runs {
        let v = get(x);
        let i = match models.iter().position(|(m, _)| *m == x.config.model) {
            Some(i) => i,
            None => {
                models.push((&x.config.model, Vec::new()));
                models.len() - 1
            }
        };
        if !all.contains(&v) {
            all.push(get(x));
        }
        if !models[i].1.contains(&v) {
            models[i].1.push(v);
        }
    }
    match all.as_slice() {
        [] => "–".into(),
        [one] => show(one),
        _ => models
            .iter()
            .map(|(m, vs)| {
                format!(
                    "{m}: {}",
                    vs.iter().map(&show).collect::<Vec<_>>().join(" and ")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// REPORT.md of a reproduction (also draws the per-model charts it links to).
pub fn reproduce_markdown(r: &Reproduce, runs: &[Run], out: &Path) -> Result<String, ReportError> {
    let rows = table::rows(runs);
    let adapters: Vec<String> = {
        let mut a: Vec<String> = runs
            .iter()
            .filter_map(|r| r.summary.as_ref().map(|s| s.adapter.clone()))
            .collect();
        a.sort();
        a.dedup();
        a
    };
    // The header tells what the runs used (their config.json), not what was asked: the command
    // line is the request, which `reproduce` has checked the runs against.
    let mut seeds: Vec<u64> = Vec::new();
    for x in runs {
        if !seeds.contains(&x.config.seed) {
            seeds.push(x.config.seed);
        }
    }
    let mnist = table::mnist_rows();
    let cifar: Vec<&str> = table::PAPER_TABLE1
        .iter()
        .map(|p| p.model)
        .filter(|m| !mnist.contains(m))
        .collect();
    let only = |rows: &[&str]| r.models.iter().all(|m| rows.contains(&m.as_str()));
    let mut s = String::from(if only(&mnist) {
        "# Reproduction of Table 1 (MNIST rows)\n\n"
    } else if only(&cifar) {
        "# Reproduction of Table 1 (CIFAR-10 rows)\n\n"
    } else {
        "# Reproduction of Table 1\n\n"
    });
    let outside: Vec<&str> = r
        .models
        .iter()
        .map(String::as_str)
        .filter(|m| !mnist.contains(m) && !cifar.contains(m))
        .collect();
    s.push_str(&format!(
        "Liu et al., *Dynamic Sparse Training*, ICLR 2020, Table 1: {} {}, dense and DST, each with the paper's settings (`dst info` lists them; METHOD.md section 5) and {} {}.{}\n\n",
        if r.models.len() == 1 { "the model" } else { "the models" },
        r.models.join(", "),
        if seeds.len() == 1 { "seed" } else { "seeds" },
        seeds.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "),
        match outside.as_slice() {
            [] => String::new(),
            [m] => format!(" {m} is not in the paper's table: it has no paper figures."),
            ms => format!(" {} are not in the paper's table: they have no paper figures.", ms.join(", ")),
        }
    ));
    let data = used_by(
        runs,
        |x| {
            // A limit above the images there are left none out (as in the table's data column).
            let limit = table::limit_that_left_out(x);
            (x.config.data.clone(), limit, x.config.valid)
        },
        |(d, limit, valid)| {
            let mut t = match d {
                // As the command gave it, where that is the folder the runs read (they record
                // its absolute path: this machine's, which means little in a shared report).
                Some(d) => match &r.data {
                    Some(given) if report::same_dir(given, d) => given.display().to_string(),
                    _ => d.display().to_string(),
                },
                None => "the embedded MNIST subset (10,000 train / 2,000 test images), not the paper's full MNIST".into(),
            };
            if let Some(n) = limit {
                t.push_str(&format!(", first {}", report::plural(*n, "training image")));
            }
            if let Some(v) = valid {
                t.push_str(&format!(", the last {v} of them held out for validation"));
            }
            t
        },
    );
    let epochs = used_by(runs, |x| x.config.epochs, |e| e.to_string());
    s.push_str(&format!(
        "- adapter: {}\n- data: {}\n- epochs: {}\n- command: `dst reproduce table1 --seeds {}{}{}{}{}{}{} --out {}`\n",
        if adapters.is_empty() { "–".into() } else { adapters.join("; ") },
        data,
        epochs,
        r.seeds.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","),
        r.epochs.map(|e| format!(" --epochs {e}")).unwrap_or_default(),
        r.data.as_ref().map(|d| format!(" --data {}", report::shell_word(d))).unwrap_or_default(),
        r.limit_train
            .map(|n| format!(" --limit-train {n}"))
            .unwrap_or_default(),
        r.valid.map(|n| format!(" --valid {n}")).unwrap_or_default(),
        if r.quick { " --quick" } else { "" },
        r.models.iter().map(|m| format!(" --model {m}")).collect::<String>(),
        report::shell_word(out),
    ));
    // An MNIST reproduction leaves out the CIFAR-10 rows: how to run them.
    if only(&mnist) {
        s.push_str("- Table 1's CIFAR-10 rows: `dst reproduce table1 --model vgg16 --model wrn-16-8 --data DIR --out runs/table1-cifar` with CIFAR-10 in DIR (`dst fetch cifar10 --to DIR`); 160 epochs per run, a job for a real GPU\n");
    }
    if r.quick {
        s.push_str("- **quick run**: a few epochs on a subset, to try the pipeline; its figures are not comparable with the paper's.\n");
    }
    s.push_str("\n## Results\n\n");
    s.push_str(&other_runs_line(
        out,
        &other_runs(out, 2, runs),
        "seeds or models",
    ));
    s.push_str(&table::markdown(&rows, true));
    s.push_str("\nThe paper's DST figures are those its code reports, the lowest-keep epoch chosen on the test set; compare them with that column. The last-epoch column involves no selection.\n");

    for m in &r.models {
        let of_model: Vec<Run> = runs
            .iter()
            .filter(|x| &x.config.model == m)
            .cloned()
            .collect();
        let Some(first) = of_model.first() else {
            continue;
        };
        let c = &first.config;
        s.push_str(&format!(
            "\n## {}\n\n{}, alpha {} (DST), {}.\n\n",
            table::paper_row(m).map(|p| p.title).unwrap_or(m),
            c.optimiser_line(),
            table::fmt_alpha(
                of_model
                    .iter()
                    .find(|x| !x.config.dense)
                    .map(|x| x.config.alpha)
                    .unwrap_or(c.alpha)
            ),
            report::plural(c.epochs, "epoch")
        ));
        // Charts: the first DST seed alone (per-layer lines), then every run's accuracy; of the
        // runs that logged (a finished run may have lost its metrics.jsonl: it is in the table,
        // from its summary, but has no lines to draw).
        let logged = |x: &&Run| !(x.steps.is_empty() && x.epochs.is_empty());
        let dst_runs: Vec<Run> = of_model
            .iter()
            .filter(|x| !x.config.dense)
            .filter(logged)
            .cloned()
            .collect();
        let drawn: Vec<Run> = of_model.iter().filter(logged).cloned().collect();
        let dir = out.join("charts").join(m);
        let mut files = Vec::new();
        if let Some(one) = dst_runs.first() {
            files.extend(report::plot_runs(
                std::slice::from_ref(one),
                &dir.join("dst-first-seed"),
            )?);
        }
        if drawn.len() > 1 {
            files.extend(report::plot_runs(&drawn, &dir.join("all-runs"))?);
        }
        for f in files {
            let rel = f.strip_prefix(out).unwrap_or(&f);
            s.push_str(&format!("- [{}]({})\n", rel.display(), rel.display()));
        }
        s.push_str("\nRuns: ");
        s.push_str(
            &of_model
                .iter()
                .map(|x| {
                    let rel = x.dir.strip_prefix(out).unwrap_or(&x.dir);
                    format!("[{}]({})", rel.display(), rel.display())
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push('\n');
        if m.starts_with("lstm") {
            s.push_str("\nLSTM remaining % here counts the mask bits of all eight gate matrices; the paper's code undercounted the output gates, so its figures read lower (METHOD.md sections 6 and 9). Our sequences start from zero states (section 9), and the paper's LSTM alpha does not reach its remaining % in 20 epochs (section 8).\n");
        }
    }
    Ok(s)
}
