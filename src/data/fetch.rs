//! `dst fetch mnist --to DIR`: downloads the four gzip MNIST files from public mirrors,
//! checks the SHA-256 of each decompressed payload, and writes them atomically.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::idx;

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
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Network(e) => write!(f, "network error: {e}"),
            AttemptError::Status(code) => write!(f, "HTTP status {code}"),
            AttemptError::Gzip(e) => write!(f, "{e}"),
            AttemptError::ShaMismatch { expected, got } => {
                write!(f, "SHA-256 mismatch: expected {expected}, got {got}")
            }
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
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Verifies gzip bytes against a spec: decompresses them and compares the SHA-256.
fn verify(gz: &[u8], spec: &FileSpec, name: &str) -> Result<(), AttemptError> {
    let raw = idx::gunzip(gz, name).map_err(|e| AttemptError::Gzip(e.to_string()))?;
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
    response
        .into_body()
        .into_with_config()
        .limit(MAX_DOWNLOAD)
        .read_to_vec()
        .map_err(|e| AttemptError::Network(e.to_string()))
}

/// Writes `bytes` to `dest` through a temporary file in the same directory and a rename,
/// so `dest` is either absent, untouched, or complete. The temporary file never survives.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dest.with_file_name(format!(".{file_name}.part-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        FetchError::Write {
            path: dest.display().to_string(),
            source,
        }
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
    fs::create_dir_all(to).map_err(|source| FetchError::CreateDir {
        dir: to.display().to_string(),
        source,
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_global(Some(Duration::from_secs(30 * 60)))
        .build()
        .into();
    for spec in files {
        let gz_name = format!("{}.gz", spec.name);
        let dest = to.join(&gz_name);
        let shown = dest.display().to_string();
        if dest.is_file() {
            match fs::read(&dest) {
                Ok(bytes) => match verify(&bytes, spec, &shown) {
                    Ok(()) => {
                        progress(&format!("{shown}: ok, already present"));
                        continue;
                    }
                    Err(e) => progress(&format!("{shown}: present but bad ({e}); downloading")),
                },
                Err(e) => progress(&format!(
                    "{shown}: present but unreadable ({e}); downloading"
                )),
            }
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
                verify(&bytes, spec, &url)?;
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
