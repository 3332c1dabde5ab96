//! `dst fetch mnist --to DIR`: downloads the four gzip MNIST files from public mirrors,
//! checks the SHA-256 of each decompressed payload, and writes them atomically.
//!
//! `dst fetch cifar10 --to DIR`: downloads the CIFAR-10 binary archive, checks its published MD5,
//! unpacks the six batch files into a temporary sibling folder of DIR, checks them and renames
//! the folder to DIR ([`fetch_archive`]).

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::{cifar, idx, tar, DataError};

/// One file to fetch: `NAME.gz` is downloaded, `sha256` is that of the decompressed `NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// File name without `.gz`, e.g. `"train-images-idx3-ubyte"`.
    pub name: &'static str,
    /// Lower-case hex SHA-256 of the DECOMPRESSED payload.
    pub sha256: &'static str,
}

/// The four MNIST files and the SHA-256 of their decompressed contents.
pub const MNIST_FILES: [FileSpec; 4] = [
    FileSpec {
        name: "train-images-idx3-ubyte",
        sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    },
    FileSpec {
        name: "train-labels-idx1-ubyte",
        sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    FileSpec {
        name: "t10k-images-idx3-ubyte",
        sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    },
    FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
];

/// Public MNIST mirrors (base URLs); a file's URL is `base + name + ".gz"`.
pub const MNIST_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// Largest compressed download accepted (MNIST train images are about 10 MB).
const MAX_DOWNLOAD: u64 = 256 << 20;

/// Why one download attempt from one mirror failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Connection, TLS, timeout or protocol error.
    Network(String),
    /// The server answered with a non-success HTTP status.
    Status(u16),
    /// The body is not a valid gzip stream.
    Gzip(String),
    /// The decompressed payload does not have the expected SHA-256.
    ShaMismatch { expected: String, got: String },
    /// The archive does not have the expected MD5.
    Md5Mismatch { expected: String, got: String },
    /// The archive (with the right checksum) could not be unpacked or holds bad files.
    Archive(String),
    /// Ctrl-C asked the fetch to stop (see `crate::train::interrupt`): no other mirror is tried.
    Interrupted,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Network(e) => write!(f, "network error: {e}"),
            AttemptError::Status(code) => write!(f, "HTTP status {code}"),
            AttemptError::Gzip(e) => write!(f, "{e}"),
            AttemptError::ShaMismatch { expected, got } => {
                write!(
                    f,
                    "SHA-256 mismatch of the decompressed file: expected {expected}, got {got}"
                )
            }
            AttemptError::Md5Mismatch { expected, got } => {
                write!(f, "MD5 mismatch: expected {expected}, got {got}")
            }
            AttemptError::Archive(e) => write!(f, "{e}"),
            AttemptError::Interrupted => write!(f, "stopped by Ctrl-C"),
        }
    }
}

/// One failed attempt: the URL tried and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub url: String,
    pub error: AttemptError,
}

fn list_attempts(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("\n  {}: {}", a.url, a.error))
        .collect()
}

/// Errors of [`fetch`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no mirrors given to fetch {file}")]
    NoMirrors { file: String },
    #[error("cannot create directory {dir}: {source}")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: every mirror failed:{}", list_attempts(attempts))]
    AllMirrorsFailed {
        file: String,
        attempts: Vec<Attempt>,
    },
    #[error("{path}: {reason}; dst reads this raw file, and a .gz of it only where it is absent: remove it (or put the real file there) and fetch again")]
    BadRaw { path: String, reason: String },
    #[error("{path}: a complete IDX file, but not this one of MNIST's (the SHA-256 of its contents is {got}, expected {expected}): {holds} It is not replaced: move it away, or fetch into another folder")]
    OtherData {
        path: String,
        got: String,
        expected: String,
        /// What it holds: another of MNIST's files, or (a guess) another dataset.
        holds: String,
    },
    #[error("{dir}: the folder cannot be made: {file} is a file; choose another --to")]
    UnderFile { dir: String, file: String },
    #[error("{dir} holds {found}; {dataset} goes into a folder of its own: choose another --to")]
    HoldsOther {
        dir: String,
        found: &'static str,
        dataset: &'static str,
    },
    #[error("{dir} exists but is not a complete {dataset} folder ({reason}); remove it or choose another --to")]
    Occupied {
        dir: String,
        dataset: &'static str,
        reason: String,
    },
    /// Ctrl-C stopped the fetch; what it was downloading was not kept.
    #[error("{file}: the download was stopped by Ctrl-C and not kept; {kept}")]
    Interrupted { file: String, kept: String },
}

/// Whether Ctrl-C asked a fetch to stop, as an attempt's error.
fn check_interrupt() -> Result<(), AttemptError> {
    if crate::train::interrupt::requested() {
        Err(AttemptError::Interrupted)
    } else {
        Ok(())
    }
}

/// Takes each piece of a download and the bytes so far.
type Sink<'a> = dyn FnMut(&[u8], u64) -> Result<(), AttemptError> + 'a;

/// A body read in 64 KiB pieces into `sink`, stopping when Ctrl-C asks; `sink` sees each
/// piece's bytes and the total so far.
fn read_body(body: &mut dyn Read, sink: &mut Sink) -> Result<(), AttemptError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        check_interrupt()?;
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // How far it got: a connection cut at once and one cut near the end differ.
            Err(e) => {
                return Err(AttemptError::Network(format!(
                    "{e} after {} of the body",
                    crate::report::plural(total as usize, "byte")
                )))
            }
        };
        total += n as u64;
        sink(&buf[..n], total)?;
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Verifies gzip bytes against a spec: decompresses them and compares the SHA-256.
fn verify(gz: &[u8], spec: &FileSpec, name: &str) -> Result<(), AttemptError> {
    // The error without the file's name, which the line it goes into starts with.
    let raw = idx::gunzip(gz, name).map_err(|e| {
        let e = e.to_string();
        AttemptError::Gzip(
            e.strip_prefix(&format!("{name}: "))
                .unwrap_or(&e)
                .to_string(),
        )
    })?;
    let got = sha256_hex(&raw);
    if got.eq_ignore_ascii_case(spec.sha256) {
        Ok(())
    } else {
        Err(AttemptError::ShaMismatch {
            expected: spec.sha256.to_string(),
            got,
        })
    }
}

fn download(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, AttemptError> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => AttemptError::Status(code),
        e => AttemptError::Network(e.to_string()),
    })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(AttemptError::Status(status));
    }
    let mut body = response
        .into_body()
        .into_with_config()
        .limit(MAX_DOWNLOAD)
        .reader();
    let mut bytes = Vec::new();
    read_body(&mut body, &mut |piece, _| {
        bytes.extend_from_slice(piece);
        Ok(())
    })?;
    Ok(bytes)
}

/// `checkpoint::write_atomic` (`dest` is either absent, untouched, or complete; the temporary
/// file never survives), its error as `FetchError::Write`.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    crate::checkpoint::write_atomic(dest, bytes).map_err(|source| FetchError::Write {
        path: dest.display().to_string(),
        source,
    })
}

/// Fetches each file in `files` into `to` as `NAME.gz`, trying `mirrors` (base URLs) in order.
///
/// A file already present whose decompressed SHA-256 matches is kept. A download is
/// decompressed and checked before it is written (atomically); a mirror that fails in any
/// way (network, HTTP status, corrupt gzip, SHA-256 mismatch) is followed by the next one.
/// `progress` receives one human-readable line per step.
pub fn fetch(
    to: &Path,
    mirrors: &[String],
    files: &[FileSpec],
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    if let Some(f) = crate::checkpoint::file_in_the_way(to) {
        return Err(FetchError::UnderFile {
            dir: to.display().to_string(),
            file: f.display().to_string(),
        });
    }
    // MNIST's files beside CIFAR-10's: refused (one folder, one dataset).
    if to.is_dir() && cifar::holds_any(to) {
        return Err(FetchError::HoldsOther {
            dir: to.display().to_string(),
            found: "CIFAR-10",
            dataset: "MNIST",
        });
    }
    check_not_a_run(to, "MNIST")?;
    let made = first_missing(to);
    fs::create_dir_all(to).map_err(|source| FetchError::CreateDir {
        dir: to.display().to_string(),
        source,
    })?;
    let result = fetch_into(to, mirrors, files, progress);
    if result.is_err() {
        remove_made(to, made.as_deref());
    }
    result
}

/// A dataset never goes into a run's folder (its checkpoint or log there): named as such, not
/// as a folder to remove.
fn check_not_a_run(to: &Path, dataset: &'static str) -> Result<(), FetchError> {
    let run = crate::train::RunDir {
        dir: to.to_path_buf(),
    };
    if to.is_dir() && run.holds_run() {
        return Err(FetchError::HoldsOther {
            dir: to.display().to_string(),
            found: "a dst run (its checkpoint or metrics log)",
            dataset,
        });
    }
    Ok(())
}

/// The top-most of `dir` and the folders above it that do not exist (what `create_dir_all(dir)`
/// makes first), if any.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| !a.exists())
        .last()
        .map(Path::to_path_buf)
}

/// After a failed fetch: `dir` and the folders above it up to `top` (`first_missing`, before the
/// fetch made them), each removed only if empty (`remove_dir`), from the innermost out.
fn remove_made(dir: &Path, top: Option<&Path>) {
    let Some(top) = top else { return };
    for a in dir.ancestors() {
        if fs::remove_dir(a).is_err() || a == top {
            break;
        }
    }
}

/// `fetch` into the existing folder `to`.
fn fetch_into(
    to: &Path,
    mirrors: &[String],
    files: &[FileSpec],
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_global(Some(Duration::from_secs(30 * 60)))
        .build()
        .into();
    // A raw file (`NAME`, not `NAME.gz`) already there is what training reads: it must be the
    // real one too, or the folder is not ready whatever the .gz holds. Checked before any
    // download, and left alone (it is the user's). Verified, it makes its .gz unneeded: a
    // folder of raw files is ready as it is.
    // Something that is not a file where a download is to go (a folder of its name): named
    // before any download, not after it.
    for spec in files {
        let dest = to.join(format!("{}.gz", spec.name));
        if dest.exists() && !dest.is_file() && !to.join(spec.name).is_file() {
            return Err(FetchError::Write {
                path: dest.display().to_string(),
                source: std::io::Error::other(
                    "not a file (a folder?): the download cannot go there; move it away",
                ),
            });
        }
    }
    let mut raw_ok = Vec::new();
    for spec in files {
        let raw = to.join(spec.name);
        if !raw.is_file() {
            continue;
        }
        let shown = raw.display().to_string();
        let got = fs::read(&raw)
            .map(|b| sha256_hex(&b))
            .map_err(|e| FetchError::BadRaw {
                path: shown.clone(),
                reason: format!("cannot read it ({e})"),
            })?;
        if !got.eq_ignore_ascii_case(spec.sha256) {
            return Err(FetchError::BadRaw {
                path: shown,
                reason: format!("its SHA-256 is {got}, expected {}", spec.sha256),
            });
        }
        progress(&format!("{shown}: ok, raw file present, SHA-256 verified"));
        raw_ok.push(spec.name);
    }
    // A .gz there that is a whole IDX file (gzip or not), yet not the real one: another
    // dataset in the same format, or another of MNIST's files (the user's), refused before any
    // download, never replaced. One that does not unpack or parse (a download cut short) is
    // replaced below. (The ones verified here are not read again below.)
    let mut gz_ok = Vec::new();
    // Why each .gz present is downloaded again (read here once, not again below).
    let mut bad: Vec<(&str, String)> = Vec::new();
    let pending: Vec<&FileSpec> = files.iter().filter(|s| !raw_ok.contains(&s.name)).collect();
    for spec in pending {
        let dest = to.join(format!("{}.gz", spec.name));
        if !dest.is_file() {
            continue;
        }
        let shown = dest.display().to_string();
        let bytes = match fs::read(&dest) {
            Ok(b) => b,
            Err(e) => {
                bad.push((spec.name, format!("present but unreadable ({e})")));
                continue;
            }
        };
        let reason = match verify(&bytes, spec, &shown) {
            Ok(()) => {
                gz_ok.push(spec.name);
                continue;
            }
            Err(e) => format!("present but bad ({e})"),
        };
        if idx::parse_idx(&bytes, &shown).is_err() {
            bad.push((spec.name, reason));
            continue;
        }
        let contents = if idx::is_gzip(&bytes) {
            idx::gunzip(&bytes, &shown).unwrap_or_default()
        } else {
            bytes
        };
        let got = sha256_hex(&contents);
        // The right file, saved unpacked under its .gz name (as some browsers do): training
        // reads it as it is, so it is kept (it was refused as "not this one", naming itself).
        if got.eq_ignore_ascii_case(spec.sha256) {
            progress(&format!(
                "{shown}: ok, present unpacked under its .gz name, SHA-256 verified"
            ));
            raw_ok.push(spec.name);
            continue;
        }
        let holds = match MNIST_FILES
            .iter()
            .find(|f| f.sha256.eq_ignore_ascii_case(&got))
        {
            Some(f) => format!("it holds MNIST's {}.", f.name),
            None => "another dataset in MNIST's format (Fashion-MNIST, KMNIST), or a part of \
                     MNIST?"
                .to_string(),
        };
        return Err(FetchError::OtherData {
            path: shown,
            got,
            expected: spec.sha256.to_string(),
            holds,
        });
    }
    for spec in files {
        if raw_ok.contains(&spec.name) {
            continue;
        }
        let gz_name = format!("{}.gz", spec.name);
        let dest = to.join(&gz_name);
        let shown = dest.display().to_string();
        if gz_ok.contains(&spec.name) {
            progress(&format!("{shown}: ok, already present"));
            continue;
        }
        if let Some((_, why)) = bad.iter().find(|(n, _)| *n == spec.name) {
            progress(&format!("{shown}: {why}; downloading"));
        }
        if mirrors.is_empty() {
            return Err(FetchError::NoMirrors { file: gz_name });
        }
        let mut attempts = Vec::new();
        let mut done = false;
        for base in mirrors {
            let sep = if base.ends_with('/') { "" } else { "/" };
            let url = format!("{base}{sep}{gz_name}");
            progress(&format!("{gz_name}: downloading {url}"));
            match download(&agent, &url).and_then(|bytes| {
                // Named by the file: the attempt's line already names the URL.
                verify(&bytes, spec, &gz_name)?;
                Ok(bytes)
            }) {
                Ok(bytes) => {
                    write_atomic(&dest, &bytes)?;
                    progress(&format!(
                        "{shown}: ok, {} bytes, SHA-256 verified",
                        bytes.len()
                    ));
                    done = true;
                    break;
                }
                Err(AttemptError::Interrupted) => {
                    let any = files.iter().any(|f| {
                        to.join(f.name).is_file() || to.join(format!("{}.gz", f.name)).is_file()
                    });
                    let kept = if !any {
                        "no file was written".to_string()
                    } else {
                        format!(
                            "the files verified so far stay in {}, and `dst fetch` again goes on from them",
                            to.display()
                        )
                    };
                    return Err(FetchError::Interrupted {
                        file: gz_name,
                        kept,
                    });
                }
                Err(error) => {
                    progress(&format!("{gz_name}: {url} failed: {error}"));
                    attempts.push(Attempt { url, error });
                }
            }
        }
        if !done {
            return Err(FetchError::AllMirrorsFailed {
                file: gz_name,
                attempts,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- archives (CIFAR-10)

/// A `.tar.gz` archive to download, check and unpack.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveSpec {
    /// The dataset's name, for messages.
    pub dataset: &'static str,
    /// The archive's file name; its URL is `mirror base + name`.
    pub name: &'static str,
    /// Lower-case hex MD5 of the archive as downloaded.
    pub md5: &'static str,
    /// The folder inside the archive that holds the members, with its trailing `/`.
    pub folder: &'static str,
    /// The members to take out (names inside `folder`); they land directly in the target folder.
    pub members: &'static [&'static str],
    /// Checks a folder holding the members (a complete, valid dataset).
    pub validate: fn(&Path) -> Result<(), DataError>,
    /// What `validate` checks, for the message on a folder it keeps.
    pub present: &'static str,
}

/// CIFAR-10, binary version, as its site publishes it (with this MD5).
pub const CIFAR10_ARCHIVE: ArchiveSpec = ArchiveSpec {
    dataset: "CIFAR-10",
    name: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
    folder: "cifar-10-batches-bin/",
    members: &cifar::FILES,
    validate: cifar::check_complete,
    present: "six batch files of 10,000 records each, checked by size: the archive's MD5 checks \
              only a download",
};

/// Where CIFAR-10 is published (base URLs).
pub const CIFAR10_MIRRORS: &[&str] = &["https://www.cs.toronto.edu/~kriz/"];

/// Largest archive accepted (CIFAR-10's is 162 MiB).
const MAX_ARCHIVE: u64 = 1 << 30;

/// Lower-case hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// Lower-case hex of a digest's bytes.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `url` into `dest`, returning the MD5 of what was written.
fn download_to(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<String, AttemptError> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => AttemptError::Status(code),
        e => AttemptError::Network(e.to_string()),
    })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(AttemptError::Status(status));
    }
    let mut body = response
        .into_body()
        .into_with_config()
        .limit(MAX_ARCHIVE)
        .reader();
    let local =
        |e: std::io::Error| AttemptError::Archive(format!("cannot write {}: {e}", dest.display()));
    let mut file = fs::File::create(dest).map_err(local)?;
    let mut md5 = Md5::new();
    let mut shown = 0u64;
    read_body(&mut body, &mut |piece, total| {
        md5.update(piece);
        file.write_all(piece).map_err(local)?;
        if total - shown >= 32 << 20 {
            shown = total;
            progress(&format!("  {} MiB", total >> 20));
        }
        Ok(())
    })?;
    file.sync_all().map_err(local)?;
    Ok(hex(&md5.finalize()))
}

/// Takes `spec.members` out of the `.tar.gz` at `archive` into `dir`; every member must be there.
fn unpack(archive: &Path, dir: &Path, spec: &ArchiveSpec) -> Result<(), AttemptError> {
    let file = fs::File::open(archive)
        .map_err(|e| AttemptError::Archive(format!("cannot read {}: {e}", archive.display())))?;
    let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    let mut found = vec![false; spec.members.len()];
    let walk = tar::for_each(&mut gz, |entry, data| {
        let name = entry.name.strip_prefix("./").unwrap_or(&entry.name);
        let Some(i) = name
            .strip_prefix(spec.folder)
            .and_then(|m| spec.members.iter().position(|&x| x == m))
        else {
            return Ok(());
        };
        if !entry.is_file() {
            return Ok(());
        }
        let dest = dir.join(spec.members[i]);
        let mut out = fs::File::create(&dest)?;
        let copied = std::io::copy(data, &mut out)?;
        if copied != entry.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name}: {copied} of {} bytes", entry.size),
            ));
        }
        out.sync_all()?;
        found[i] = true;
        Ok(())
    });
    let what =
        |e: &dyn fmt::Display| AttemptError::Archive(format!("cannot unpack {}: {e}", spec.name));
    walk.map_err(|e| what(&e))?;
    // The rest of the stream (the tar's zero blocks, the gzip trailer): its CRC and length.
    std::io::copy(&mut gz, &mut std::io::sink()).map_err(|e| what(&e))?;
    let missing: Vec<String> = spec
        .members
        .iter()
        .zip(&found)
        .filter(|(_, &f)| !f)
        .map(|(m, _)| format!("{}{m}", spec.folder))
        .collect();
    if !missing.is_empty() {
        return Err(AttemptError::Archive(format!(
            "{} lacks {}",
            spec.name,
            missing.join(", ")
        )));
    }
    Ok(())
}

/// A temporary folder removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Fetches an archive's members into the folder `to`, trying `mirrors` (base URLs) in order.
///
/// A `to` that already passes `spec.validate` is left alone (no download). Otherwise `to` must
/// not exist or be empty. The archive is downloaded into a temporary sibling folder
/// `.NAME.part` (a leftover of an interrupted fetch is removed first), its MD5 checked, the
/// members unpacked next to it and validated, the archive deleted, and the folder renamed to
/// `to`: a failed or interrupted fetch never leaves `to` half-written, and a failed one removes
/// its temporary folder. A mirror that fails in any way (network, HTTP status, MD5, unpacking)
/// is followed by the next. `progress` receives one human-readable line per step.
pub fn fetch_archive(
    to: &Path,
    mirrors: &[String],
    spec: &ArchiveSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    // A file where the folder is to be, or above it: named before anything is made.
    match crate::checkpoint::file_in_the_way(to) {
        Some(f) if f == to => {
            return Err(FetchError::Occupied {
                dir: to.display().to_string(),
                dataset: spec.dataset,
                reason: "it is a file, not a folder".to_string(),
            })
        }
        Some(f) => {
            return Err(FetchError::UnderFile {
                dir: to.display().to_string(),
                file: f.display().to_string(),
            })
        }
        None => {}
    }
    check_not_a_run(to, spec.dataset)?;
    // The folders above `to` that a failed fetch made go again (each only if empty).
    let parent = to.parent().filter(|p| !p.as_os_str().is_empty());
    let made = parent.and_then(first_missing);
    let result = fetch_archive_into(to, mirrors, spec, progress);
    if let (Err(_), Some(parent)) = (&result, parent) {
        remove_made(parent, made.as_deref());
    }
    result
}

/// `fetch_archive` once `to` is known not to be under a file.
fn fetch_archive_into(
    to: &Path,
    mirrors: &[String],
    spec: &ArchiveSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    let shown = to.display().to_string();
    if to.exists() {
        match (spec.validate)(to) {
            Ok(()) => {
                progress(&format!(
                    "{shown}: {} already present ({}; kept as it is)",
                    spec.dataset, spec.present
                ));
                return Ok(());
            }
            Err(e) => {
                let empty = fs::read_dir(to)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty {
                    // The other dataset's folder: said as such (its own message is written for
                    // a model given the wrong --data, and "remove it" would cost good data).
                    if let DataError::OtherDataset { found, .. } = e {
                        return Err(FetchError::HoldsOther {
                            dir: shown,
                            found: found.name(),
                            dataset: spec.dataset,
                        });
                    }
                    return Err(FetchError::Occupied {
                        dir: shown,
                        dataset: spec.dataset,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    if mirrors.is_empty() {
        return Err(FetchError::NoMirrors {
            file: spec.name.to_string(),
        });
    }
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let create = |dir: &Path| {
        fs::create_dir_all(dir).map_err(|source| FetchError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })
    };
    create(&parent)?;
    let mut tmp = TempDir {
        path: parent.join(format!(".{file_name}.part")),
        keep: false,
    };
    let fresh = |path: &Path| -> Result<(), FetchError> {
        if path.exists() {
            fs::remove_dir_all(path).map_err(|source| FetchError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        create(path)
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_global(Some(Duration::from_secs(2 * 60 * 60)))
        .build()
        .into();
    let archive = tmp.path.join(spec.name);
    let mut attempts = Vec::new();
    let mut done = false;
    for base in mirrors {
        fresh(&tmp.path)?;
        let sep = if base.ends_with('/') { "" } else { "/" };
        let url = format!("{base}{sep}{}", spec.name);
        progress(&format!("{}: downloading {url}", spec.name));
        let attempt = download_to(&agent, &url, &archive, progress).and_then(|got| {
            if !got.eq_ignore_ascii_case(spec.md5) {
                return Err(AttemptError::Md5Mismatch {
                    expected: spec.md5.to_string(),
                    got,
                });
            }
            progress(&format!("{}: MD5 verified; unpacking", spec.name));
            unpack(&archive, &tmp.path, spec)?;
            fs::remove_file(&archive).map_err(|e| {
                AttemptError::Archive(format!("cannot remove {}: {e}", archive.display()))
            })?;
            (spec.validate)(&tmp.path).map_err(|e| {
                AttemptError::Archive(format!("the archive's files are not valid: {e}"))
            })
        });
        match attempt {
            Ok(()) => {
                done = true;
                break;
            }
            Err(AttemptError::Interrupted) => {
                return Err(FetchError::Interrupted {
                    file: spec.name.to_string(),
                    kept: format!("nothing was written to {shown}"),
                });
            }
            Err(error) => {
                progress(&format!("{}: {url} failed: {error}", spec.name));
                attempts.push(Attempt { url, error });
            }
        }
    }
    if !done {
        return Err(FetchError::AllMirrorsFailed {
            file: spec.name.to_string(),
            attempts,
        });
    }
    let write_err = |source| FetchError::Write {
        path: shown.clone(),
        source,
    };
    if to.exists() {
        // Checked above: an empty folder.
        fs::remove_dir(to).map_err(write_err)?;
    }
    fs::rename(&tmp.path, to).map_err(write_err)?;
    tmp.keep = true;
    progress(&format!(
        "{shown}: {} files of {} unpacked and checked",
        spec.members.len(),
        spec.dataset
    ));
    Ok(())
}
