//! Reporting: reads run directories and checkpoints, draws charts and mask pictures, aggregates
//! results into Markdown and CSV tables. Host-only: no GPU, no dependency on `train` (the file
//! formats are read through this module's own structs in `runs`).

pub mod charts;
pub mod masks;
pub mod runs;
pub mod table;

use std::path::{Path, PathBuf};

use crate::data::fetch::sha256_hex;

pub use charts::{draw_run_charts, plot_runs};
pub use masks::mask_images;
pub use runs::Run;
pub use table::{Row, Rule, Stat};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}{}", crate::train::io_hint(source))]
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
    /// A chart command would write where it must not (see `write_charts`); nothing written.
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
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
    // The same run given twice (or as `a` and `./a`) counts once.
    let mut seen = Vec::new();
    out.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
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

/// `load_runs` for charts, which need only a run's config and log: a run whose `summary.json`
/// is damaged is drawn from its log, with a warning (it was left out).
pub fn load_runs_for_charts(paths: &[PathBuf]) -> Result<Vec<Run>, ReportError> {
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    for d in find_runs(paths)? {
        match Run::load(&d) {
            Ok(r) => runs.push(r),
            Err(ReportError::Format { path, reason }) if path.ends_with("summary.json") => {
                eprintln!(
                    "warning: {}: {reason}; the run is drawn from its metrics.jsonl",
                    path.display()
                );
                match Run::load_with(&d, false) {
                    Ok(r) => runs.push(r),
                    Err(e) => skipped.push(e),
                }
            }
            Err(e) => skipped.push(e),
        }
    }
    for e in &skipped {
        eprintln!("warning: run left out: {e}");
    }
    if runs.is_empty() {
        return Err(no_readable_run(&skipped));
    }
    Ok(runs)
}

/// The error of a call where no run could be read: each run's reason.
fn no_readable_run(skipped: &[ReportError]) -> ReportError {
    ReportError::NoRuns(format!(
        "no readable run: {}",
        skipped
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    ))
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
        return Err(no_readable_run(&skipped));
    }
    Ok((runs, skipped))
}

/// `path` as one word of a shell command a message gives to paste: quoted where it holds a
/// space, a quote or another character a shell reads (`'sp ace run'`), and with `./` before a
/// relative path that starts with `-` (else read as an option).
pub fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    let s = if s.starts_with('-') {
        format!("./{s}")
    } else {
        s
    };
    // No `~` (expanded after `=` or `:` too) and no leading `=` (zsh expands `=word`).
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+=:@,%".contains(c))
        && !s.starts_with('=');
    if plain {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A fraction as a percentage for labels, without the float noise of `100 * r`: 0.07 gives "7",
/// 0.029 "2.9", 1e-5 "0.001", 1e-9 "1e-7" (12 significant digits at most; exponent form below
/// 1e-4 %).
pub fn percent(r: f64) -> String {
    let v: f64 = format!("{:.11e}", 100.0 * r).parse().unwrap_or(100.0 * r);
    // A tiny one (`--target-keep 1e-300`) in exponent form, not 300 zeros.
    number(v)
}

/// `part` of `whole` times `scale` (1: a fraction, 100: a percentage) with `decimals` decimals,
/// never rounded to the whole or to nothing unless it is: 36863 of 36864 is "99.99" %, not
/// "100.00", and 1 of 10^6 is "0.01", not "0.00".
pub fn share(part: u64, whole: u64, scale: f64, decimals: usize) -> String {
    let x = scale * part as f64 / whole.max(1) as f64;
    let step = 10f64.powi(-(decimals as i32));
    let x = if part < whole { x.min(scale - step) } else { x };
    let x = if part > 0 { x.max(step) } else { x };
    format!("{x:.decimals$}")
}

/// Seconds left, short: `42s`, `3m05s`, `2h10m`.
pub fn eta_text(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A setting's number as text: as Rust writes it (0.1, 0.005), but in scientific notation far
/// from 1 (1e-40 was written with 40 decimals).
pub fn number(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// `n` and `word`, plural unless `n` is 1: "1 epoch", "3 epochs".
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The Markdown report of hand-made runs (`dst report`): the results table with the paper's
/// figures where a model has them, and the list of runs.
pub fn report_markdown(runs: &[Run]) -> String {
    let rows = table::rows(runs);
    let mut s = format!("{REPORT_HEADER}\n");
    s.push_str(&table::markdown(&rows, true));
    s.push_str("\n## Runs\n\n| run | model | variant | data | seed | epochs | status |\n|---|---|---|---|---|---|---|\n");
    for r in runs {
        let c = &r.config;
        // As its row of the table above names it: the settings that tell rows apart (an lr, a
        // validation split) are in the variant and data, not only in the table.
        let row = rows.iter().find(|row| row.dirs.contains(&r.dir));
        let variant = row.map_or_else(|| c.kind(), |row| row.variant());
        let data = row.map_or("", |row| row.data.as_str());
        let status = match &r.summary {
            Some(s) if s.epochs >= c.epochs => format!(
                "done: last epoch {:.2}% at {:.2}% remaining",
                s.last.test_acc,
                100.0 * s.last.keep_ratio
            ),
            _ => match &r.diverged {
                Some(d) => format!(
                    "diverged at epoch {}, step {} ({}; {} of {} logged)",
                    d.epoch,
                    d.step,
                    d.what,
                    r.epochs.len(),
                    plural(c.epochs, "epoch")
                ),
                None => format!(
                    "unfinished ({} of {} logged)",
                    r.epochs.len(),
                    plural(c.epochs, "epoch")
                ),
            },
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            md_cell(&r.dir.display().to_string()),
            c.model,
            md_cell(&variant),
            md_cell(data),
            c.seed,
            c.epochs,
            status
        ));
    }
    s
}

/// `text` for a cell of a Markdown table: a `|` in it (a folder's name) escaped, which ended
/// the cell and shifted the row's columns.
pub fn md_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The first line of every report `dst report` writes: a file that begins so is one of its
/// own, which `--out` may replace.
pub const REPORT_HEADER: &str = "# DST results\n";

/// The start of the last line of every Markdown file dst writes (`dst report`, `sweep.md`,
/// `REPORT.md`): an HTML comment (not shown where Markdown is rendered) that holds the SHA-256
/// of the text above it. A file whose text no longer matches it was edited, and is not replaced.
const SEAL: &str = "<!-- dst: SHA-256 of the text above: ";

/// The end of `check_own_text`'s refusal of an edited report: what to do about it.
pub(crate) const MOVE_IT: &str = "; move it away or pick another --out";

/// `text` with its seal as the last line.
pub fn sealed(text: &str) -> String {
    format!("{text}{SEAL}{} -->\n", sha256_hex(text.as_bytes()))
}

/// Whether `bytes` (line ends LF) end with a seal that matches the text above it (the file is as
/// dst wrote it).
fn unedited(bytes: &[u8]) -> bool {
    // Blank lines or spaces an editor left after the seal are no edit either.
    let Some(body) = bytes.trim_ascii_end().strip_suffix(b" -->") else {
        return false;
    };
    let Some(at) = body.windows(SEAL.len()).rposition(|w| w == SEAL.as_bytes()) else {
        return false;
    };
    body[at + SEAL.len()..] == *sha256_hex(&body[..at]).as_bytes()
}

/// `bytes` without a leading UTF-8 byte order mark.
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// `bytes` with CRLF line ends as LF.
fn as_lf(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.contains(&b'\r') {
        std::borrow::Cow::Owned(
            String::from_utf8_lossy(bytes)
                .replace("\r\n", "\n")
                .into_bytes(),
        )
    } else {
        std::borrow::Cow::Borrowed(bytes)
    }
}

/// A file `check_own_text` may replace: one of dst's files of the kind, known by how it begins
/// (a report's `header`; a table's header line, now or in an earlier version of dst:
/// `table::CSV_HEADERS`), and for Markdown also unedited since (its seal).
pub enum Own<'a> {
    Markdown { header: &'a str },
    Csv,
}

/// Refuses, before anything is written, to replace `path` unless it is absent or a file of the
/// kind `own` describes (`what` names it in the message). A folder, a checkpoint, a run's
/// `config.json`, a user's notes, or a report of dst's with notes added to it are left alone.
pub fn check_own_text(path: &Path, own: Own, what: &str) -> Result<(), ReportError> {
    let refuse = |reason: String| ReportError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(to) = crate::checkpoint::dangling_link(path) {
        return Err(refuse(format!(
            "is a symbolic link to {}, which does not exist: remove the link, or give another \
             path",
            to.display()
        )));
    }
    let Ok(meta) = std::fs::metadata(path) else {
        // Nothing there: its folder must be one, or one that can be made.
        return match path.parent().and_then(crate::checkpoint::file_in_the_way) {
            Some(f) => Err(refuse(format!(
                "cannot be written: {} is a file, not a folder",
                f.display()
            ))),
            None => Ok(()),
        };
    };
    if meta.is_dir() {
        return Err(refuse("is a folder; give the file's path".to_string()));
    }
    // A pipe or a device: never read (reading a pipe this process writes would wait forever).
    if !meta.is_file() {
        return Err(refuse(
            "is not a regular file (a pipe or a device): dst writes its reports to files, \
             replaced whole; give a file's path"
                .to_string(),
        ));
    }
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_ours = || {
        refuse(format!(
            "already exists and is not {what}; dst replaces only its own files there: remove it \
             or pick another --out"
        ))
    };
    match own {
        Own::Csv => {
            // Tables are small: a file far larger than any is no table of dst's.
            if meta.len() > 64 << 20 {
                return Err(not_ours());
            }
            // A UTF-8 byte order mark left out; CRLF line ends (a spreadsheet's, git's
            // autocrlf) read as LF.
            let bytes = std::fs::read(path).map_err(io)?;
            let bytes = as_lf(without_bom(&bytes));
            if !table::CSV_HEADERS
                .iter()
                .any(|h| bytes.starts_with(h.as_bytes()))
            {
                return Err(not_ours());
            }
            // Every line must still read as one of dst's: a column, a line or words added
            // (notes) are kept. (A number changed in place cannot be told: CSV has no room for
            // a seal.)
            match std::str::from_utf8(&bytes) {
                Ok(text) if table::csv_as_written(text) => Ok(()),
                _ => Err(refuse(format!(
                    "is {what} that was changed after dst wrote it (a line, column or word that \
                     dst does not write): replacing it could lose what was added{MOVE_IT}"
                ))),
            }
        }
        Own::Markdown { header } => {
            // Reports are small: a file far larger than any is no report of dst's.
            if meta.len() > 64 << 20 {
                return Err(refuse(format!(
                    "already exists, and at {} MiB is too large to be {what}; dst replaces only \
                     its own files there: remove it or pick another --out",
                    meta.len() >> 20
                )));
            }
            // Line ends converted to CRLF (git's autocrlf) or a byte order mark an editor put in
            // front are no edit.
            let bytes = std::fs::read(path).map_err(io)?;
            let bytes = as_lf(without_bom(&bytes));
            if !bytes.starts_with(header.as_bytes()) {
                Err(not_ours())
            } else if unedited(&bytes) {
                Ok(())
            } else {
                Err(refuse(format!(
                    "is {what} that was changed after dst wrote it (the SHA-256 on its last line \
                     no longer matches its text), or one saved from dst's printed output or \
                     written by a dst older than that line: replacing it could lose what was \
                     added{MOVE_IT}"
                )))
            }
        }
    }
}

/// Writes Markdown `text` to `path` with its seal as the last line (`sealed`), creating its folder.
pub fn write_markdown(path: &Path, text: &str) -> Result<(), ReportError> {
    write_text(path, &sealed(text))
}

/// Writes `text` to `path`, creating its folder: a study's own file (a link there is replaced,
/// as a run's files are: a study folder made of links must not rewrite what they point to).
pub fn write_text(path: &Path, text: &str) -> Result<(), ReportError> {
    write_text_with(path, text, crate::checkpoint::write_atomic)
}

/// `write_text` of a file the user named (`dst report --out`): a symbolic link there stays one,
/// and the file it points to is replaced (the link became a plain file, its target left stale),
/// as for exports.
pub fn write_user_text(path: &Path, text: &str) -> Result<(), ReportError> {
    write_text_with(path, text, crate::checkpoint::write_through_link)
}

/// `write_markdown` of a file the user named (`write_user_text`).
pub fn write_user_markdown(path: &Path, text: &str) -> Result<(), ReportError> {
    write_user_text(path, &sealed(text))
}

fn write_text_with(
    path: &Path,
    text: &str,
    write: fn(&Path, &[u8]) -> std::io::Result<()>,
) -> Result<(), ReportError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write(path, text.as_bytes()).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The file in a chart folder that lists the pictures `dst plot` and `dst masks` wrote there, one
/// `SHA-256  name` line each (the format of `sha256sum`: `sha256sum -c .dst-charts` checks them).
pub const CHARTS_MANIFEST: &str = ".dst-charts";

/// Whose pictures a chart command draws; decides which files already in its folder it may replace.
pub(crate) enum Drawn<'a> {
    /// `dst plot`, and `dst train`'s charts of its run: these runs.
    Runs(&'a [Run]),
    /// `dst masks`: this checkpoint.
    Checkpoint(&'a crate::checkpoint::Checkpoint),
}

/// A folder of a run (`dst train` writes these two there).
pub fn is_run_folder(dir: &Path) -> bool {
    dir.join("config.json").exists() || dir.join("metrics.jsonl").exists()
}

pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Whether the checkpoint is the run's in `dir`: its settings are that run's `config.json`, and
/// where the run still holds its checkpoint, that checkpoint has the same tensors (two runs of
/// the same command have the same settings). `Err` says why not.
fn checkpoint_of_run(ck: &crate::checkpoint::Checkpoint, dir: &Path) -> Result<(), String> {
    let mine = ck
        .meta("config")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
    let theirs = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).map_err(|e| e.to_string()))
        .map_err(|e| format!("its config.json cannot be read ({e})"))?;
    if !mine
        .as_ref()
        .is_some_and(|m| crate::checkpoint::same_run_settings(m, &theirs))
    {
        return Err("its config.json differs from the settings the checkpoint holds".into());
    }
    let own = dir.join(crate::checkpoint::FILE_NAME);
    if own.is_file() {
        let hash = crate::checkpoint::Checkpoint::read_metadata(&own)
            .ok()
            .and_then(|m| m.get(crate::checkpoint::HASH_KEY).cloned());
        if hash != Some(crate::checkpoint::tensors_sha256(&ck.tensors)) {
            return Err(
                "its own checkpoint.safetensors holds other weights (a run with the same \
                 settings)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The (hash, name) lines of `dir`'s manifest; none when it is absent or unreadable.
fn read_manifest(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(CHARTS_MANIFEST))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (h, n) = l.split_once("  ")?;
            Some((h.to_string(), n.to_string()))
        })
        .collect()
}

/// The file `name` in `dir` is listed in `manifest` with its current SHA-256: dst wrote it there
/// and nobody changed it since.
fn listed(manifest: &[(String, String)], dir: &Path, name: &str) -> bool {
    let hash = std::fs::read(dir.join(name)).ok().map(|b| sha256_hex(&b));
    manifest
        .iter()
        .any(|(h, n)| n == name && Some(h) == hash.as_ref())
}

fn write_manifest(dir: &Path, lines: &[(String, String)]) -> Result<(), ReportError> {
    let text: String = lines.iter().map(|(h, n)| format!("{h}  {n}\n")).collect();
    let path = dir.join(CHARTS_MANIFEST);
    crate::checkpoint::write_atomic(&path, text.as_bytes())
        .map_err(|source| ReportError::Io { path, source })
}

/// Writes the pictures `files` (name, PNG bytes) into `out` and returns their paths, replacing
/// only files that are the command's own; otherwise refuses before writing anything:
///
/// - `out` (or a folder above it) that is a file is refused;
/// - a run's folder (it holds `config.json` or `metrics.jsonl`) takes that run's charts, drawn
///   alone, and they may replace what is there (`dst train` draws them at the end of each run
///   and `--resume`); charts of other runs, or of several runs, are refused there. Mask pictures
///   of a checkpoint go into a run's folder only where its `config.json` matches the settings
///   the checkpoint holds (the run's own), and may replace what is there; any other folder
///   takes them under the next rule;
/// - in any other folder an existing file may be replaced only if the folder's `.dst-charts`
///   lists it with its current SHA-256: dst wrote it there and nobody changed it since.
///
/// The names written are added to `.dst-charts` (merged: the other lines stay) before the files
/// are written (so an interrupted write leaves them replaceable), then listed with their new hash
/// only. A run's own charts in its own folder leave no `.dst-charts` there.
pub(crate) fn write_charts(
    out: &Path,
    files: &[(&str, Vec<u8>)],
    drawn: Drawn,
) -> Result<Vec<PathBuf>, ReportError> {
    write_charts_replacing(out, files, &[], drawn)
}

/// `write_charts`, where `family` names every picture the command may draw: one of them not in
/// `files` this time (a chart without data) that an earlier drawing left in `out` is removed, so
/// that the folder shows no chart the runs drawn now do not back, when it is the command's own
/// to replace: listed in `.dst-charts` with its current SHA-256 (its line goes too), or a run's
/// own chart in its own folder. Any other file of such a name is left alone.
pub(crate) fn write_charts_replacing(
    out: &Path,
    files: &[(&str, Vec<u8>)],
    family: &[&str],
    drawn: Drawn,
) -> Result<Vec<PathBuf>, ReportError> {
    let dir = if out.as_os_str().is_empty() {
        Path::new(".")
    } else {
        out
    };
    let refuse = |path: &Path, reason: String| ReportError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    // The folder, or the nearest one above it that exists, must be a folder.
    let mut up = Some(dir);
    while let Some(p) = up {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(refuse(
                    p,
                    "is a file, not a folder; give a folder for the pictures (--out)".into(),
                ))
            }
            Err(_) => up = p.parent().filter(|q| !q.as_os_str().is_empty()),
        }
    }
    let (own, manifest) = if dir.is_dir() {
        let run_folder = is_run_folder(dir);
        let own = match &drawn {
            Drawn::Runs(runs) => runs.len() == 1 && same_dir(&runs[0].dir, dir),
            Drawn::Checkpoint(ck) => run_folder && checkpoint_of_run(ck, dir).is_ok(),
        };
        if let (Drawn::Runs(runs), true, false) = (&drawn, run_folder, own) {
            let list = runs
                .iter()
                .map(|r| r.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let what = if runs.iter().any(|r| same_dir(&r.dir, dir)) {
                format!(
                    "is a run folder, and {} runs are drawn, it among them ({list})",
                    runs.len()
                )
            } else {
                format!(
                    "is the folder of another run than {} drawn ({list})",
                    if runs.len() > 1 { "those" } else { "the one" }
                )
            };
            return Err(refuse(
                dir,
                format!(
                    "{what}; a run folder takes only its own run's charts, drawn alone: pick \
                     another --out"
                ),
            ));
        }
        if let (Drawn::Checkpoint(ck), true, false) = (&drawn, run_folder, own) {
            let why = checkpoint_of_run(ck, dir).err().unwrap_or_default();
            return Err(refuse(
                dir,
                format!(
                    "is the folder of another run than the checkpoint's ({why}); a run folder \
                     takes only its own run's mask pictures: pick another --out"
                ),
            ));
        }
        let manifest = read_manifest(dir);
        if !own {
            let theirs: Vec<&str> = files
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| {
                    // Something there that is not ours.
                    std::fs::symlink_metadata(dir.join(name)).is_ok()
                        && !listed(&manifest, dir, name)
                })
                .collect();
            if !theirs.is_empty() {
                return Err(refuse(
                    dir,
                    format!(
                        "would replace {}, which dst did not write there (or which changed since); \
                         dst replaces only the pictures it drew (listed in {}): remove {} or pick \
                         another --out",
                        theirs.join(", "),
                        CHARTS_MANIFEST,
                        if theirs.len() > 1 { "them" } else { "it" }
                    ),
                ));
            }
        }
        (own, manifest)
    } else {
        (false, Vec::new())
    };
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let record = !(own && matches!(drawn, Drawn::Runs(_)));
    let new: Vec<(String, String)> = files
        .iter()
        .map(|(name, bytes)| (sha256_hex(bytes), name.to_string()))
        .collect();
    if record {
        let mut both = manifest.clone();
        for e in &new {
            if !both.contains(e) {
                both.push(e.clone());
            }
        }
        write_manifest(dir, &both)?;
    }
    let mut written = Vec::new();
    for (name, bytes) in files {
        let path = out.join(name);
        crate::checkpoint::write_atomic(&path, bytes).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    // Charts of the family not drawn this time: an earlier drawing's, removed where they are
    // this command's own.
    let mut removed: Vec<&str> = Vec::new();
    for name in family
        .iter()
        .copied()
        .filter(|n| !files.iter().any(|(f, _)| f == n))
    {
        let path = dir.join(name);
        let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if !is_file {
            // Nothing there (or not a file of ours): a manifest line of it is stale.
            removed.push(name);
            continue;
        }
        // A run's own chart in its own folder (nothing recorded there), or one listed.
        if !record || listed(&manifest, dir, name) {
            std::fs::remove_file(&path)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|source| ReportError::Io {
                    path: path.clone(),
                    source,
                })?;
            eprintln!(
                "removed {}: drawn there before, but the runs drawn now have no data for it",
                path.display()
            );
            removed.push(name);
        }
    }
    if record {
        let mut after: Vec<(String, String)> = manifest
            .into_iter()
            .filter(|(_, n)| !new.iter().any(|(_, m)| m == n))
            .filter(|(_, n)| !removed.contains(&n.as_str()))
            .collect();
        after.extend(new);
        write_manifest(dir, &after)?;
    }
    Ok(written)
}
