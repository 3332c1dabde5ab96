//! Reporting: reads run directories and checkpoints, draws charts and mask pictures, aggregates
//! results into Markdown and CSV tables. Host-only: no GPU, no dependency on `train` (the file
//! formats are read through this module's own structs in `runs`).

pub mod charts;
pub mod masks;
pub mod runs;
pub mod table;

use std::path::{Path, PathBuf};

pub use charts::{draw_run_charts, plot_runs};
pub use masks::mask_images;
pub use runs::Run;
pub use table::{Row, Rule, Stat};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: cannot draw: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("{0}")]
    Checkpoint(String),
    #[error("{0}")]
    NoRuns(String),
}

/// The run directories under `paths`: each path that holds a `config.json` is a run; any other
/// directory is searched (two levels deep) for runs, so a sweep's or a reproduction's folder can
/// be given whole. Sorted, without duplicates.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if dir.join("config.json").is_file() {
            out.push(dir.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        for s in subs {
            walk(&s, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            return Err(ReportError::Io {
                path: p.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let before = out.len();
        walk(p, 2, &mut out);
        if out.len() == before {
            return Err(ReportError::NoRuns(format!(
                "{}: no run directory (a folder with config.json) in it",
                p.display()
            )));
        }
    }
    out.dedup();
    Ok(out)
}

/// Loads every run under `paths` (see `find_runs`). A run that cannot be read (a damaged
/// `config.json`, `metrics.jsonl` or `summary.json`) is left out with a warning on stderr naming
/// the file and the problem; an error only when no run at all can be read.
pub fn load_runs(paths: &[PathBuf]) -> Result<Vec<Run>, ReportError> {
    let (runs, skipped) = load_runs_skipping(paths)?;
    for e in &skipped {
        eprintln!("warning: run left out: {e}");
    }
    Ok(runs)
}

/// `load_runs` without the warnings: the runs read, and the error of each run left out. Fails
/// when none could be read.
pub fn load_runs_skipping(paths: &[PathBuf]) -> Result<(Vec<Run>, Vec<ReportError>), ReportError> {
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    for d in find_runs(paths)? {
        match Run::load(&d) {
            Ok(r) => runs.push(r),
            Err(e) => skipped.push(e),
        }
    }
    if runs.is_empty() {
        return Err(ReportError::NoRuns(format!(
            "no readable run: {}",
            skipped
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok((runs, skipped))
}

/// The Markdown report of hand-made runs (`dst report`): the results table with the paper's
/// figures where a model has them, and the list of runs.
pub fn report_markdown(runs: &[Run]) -> String {
    let rows = table::rows(runs);
    let mut s = String::from("# DST results\n\n");
    s.push_str(&table::markdown(&rows, true));
    s.push_str("\n## Runs\n\n| run | model | variant | seed | epochs | status |\n|---|---|---|---|---|---|\n");
    for r in runs {
        let c = &r.config;
        let status = match &r.summary {
            Some(s) if s.epochs >= c.epochs => format!(
                "done: last epoch {:.2}% at {:.2}% remaining",
                s.last.test_acc,
                100.0 * s.last.keep_ratio
            ),
            _ => format!(
                "unfinished ({} of {} epochs logged)",
                r.epochs.len(),
                c.epochs
            ),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.dir.display(),
            c.model,
            c.kind(),
            c.seed,
            c.epochs,
            status
        ));
    }
    s
}

/// Writes `text` to `path`, creating its folder.
pub fn write_text(path: &Path, text: &str) -> Result<(), ReportError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    crate::checkpoint::write_atomic(path, text.as_bytes()).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}
