//! Checkpoints as safetensors files: named f32 tensors plus string metadata, written atomically
//! (temporary file in the same folder, fsync, rename), so a crash never leaves a broken file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// The format tag every checkpoint of this program carries.
pub const FORMAT: &str = "dst-checkpoint-1";

/// The name of the checkpoint a training run writes into its run folder (`RunDir::checkpoint`);
/// a folder given where a checkpoint is expected means this file in it.
pub const FILE_NAME: &str = "checkpoint.safetensors";

/// The checkpoint file `path` names: `path` itself, or, when it is a folder (a run folder),
/// its `checkpoint.safetensors`; a folder without one is refused, saying so. Every reader of
/// checkpoints (`Checkpoint::load`, `Checkpoint::read_metadata`) goes through this.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let file = path.join(FILE_NAME);
    if file.is_file() {
        return Ok(file);
    }
    Err(CheckpointError::FolderWithout {
        path: path.to_path_buf(),
        // A run folder (a study's folder holds a lock too, and no checkpoint ever).
        training: path.join("config.json").is_file() && crate::train::in_use(path),
    })
}

/// Where the checkpoint read from `path` sits in a run folder (beside a `config.json`) whose run
/// is of another model, or dense where the checkpoint is masked or the reverse: a checkpoint
/// copied into another run's folder. Says so, for commands that read the checkpoint but would
/// otherwise show nothing of the folder's run (eval, export). None where they agree, or where
/// there is no readable config.json beside it.
pub fn foreign_to_its_folder(ck: &Checkpoint, path: &Path) -> Option<String> {
    let (file, config, v) = config_beside(path)?;
    foreign_to(ck, &file, &config, &v)
}

/// The checkpoint file `path` names (`resolve`), the config.json beside it and that file read
/// as JSON; None where there is none, or it is no JSON.
fn config_beside(path: &Path) -> Option<(PathBuf, PathBuf, serde_json::Value)> {
    let file = resolve(path).ok()?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let config = dir.join("config.json");
    let v = serde_json::from_str(&std::fs::read_to_string(&config).ok()?).ok()?;
    Some((file, config, v))
}

/// `foreign_to_its_folder` of the checkpoint `ck` read from `file`, with the run folder's
/// config.json at `config` read as `v`.
fn foreign_to(
    ck: &Checkpoint,
    file: &Path,
    config: &Path,
    v: &serde_json::Value,
) -> Option<String> {
    let (model, dense) = (v.get("model")?.as_str()?, v.get("dense")?.as_bool()?);
    let kind = |m: &str, dense: bool| format!("{} {m}", if dense { "dense" } else { "DST" });
    let mine = ck.meta("model")?;
    let my_dense = ck.meta("masked") == Some("false");
    (model != mine || dense != my_dense).then(|| {
        format!(
            "{} is a checkpoint of {}, but {} beside it is of a {} run: not that run's \
             checkpoint (the results below are the checkpoint's)",
            file.display(),
            kind(mine, my_dense),
            config.display(),
            kind(model, dense)
        )
    })
}

/// Whether a run folder's config.json (`folder`) is that of the run whose checkpoint holds
/// `ck` as its config: the same settings but for what a run's config.json may come to differ in
/// from a checkpoint of its own: the length (a resume for more epochs writes it first), the
/// data folder (moved, and edited there, as the README says), the logging, and a target epoch
/// the checkpoint left to its default (a resume pins it).
pub fn same_run_settings(ck: &serde_json::Value, folder: &serde_json::Value) -> bool {
    let default_target_epoch = ck.get("target_epoch").is_none_or(|t| t.is_null());
    crate::train::setting_differences(folder, ck, |k| {
        matches!(k, "epochs" | "data" | "log_every")
            || (default_target_epoch && k == "target_epoch")
    })
    .is_empty()
}

/// Bytes of a file's start read to describe a file that is not a safetensors file.
pub(crate) const PREFIX: usize = 64;

/// The header length in the first 8 bytes of `prefix` (the start of the file at `path`, at
/// least its first 8 bytes when the file has them), checked against the file's size
/// `file_len`: a length the file cannot hold is refused with what the file looks like instead
/// (text: its first characters; otherwise the two sizes).
pub(crate) fn header_len(
    path: &Path,
    prefix: &[u8],
    file_len: u64,
) -> Result<u64, CheckpointError> {
    let Some(first) = prefix.get(..8) else {
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            reason: "shorter than a safetensors header".into(),
        });
    };
    let len = u64::from_le_bytes(first.try_into().expect("8 bytes"));
    if len <= file_len.saturating_sub(8) {
        return Ok(len);
    }
    if let Some(text) = text_start(prefix, prefix.len() as u64 == file_len) {
        let what = format!("it holds text (starts with `{text}`)");
        // A run folder's config.json, metrics.jsonl or summary.json: point at its checkpoint
        // (not when this is that checkpoint).
        let is_the_checkpoint = path.file_name() == Some(std::ffi::OsStr::new(FILE_NAME));
        let sibling = path
            .parent()
            .map(|d| d.join(FILE_NAME))
            .filter(|c| !is_the_checkpoint && c.is_file());
        return Err(CheckpointError::NotSafetensors {
            path: path.to_path_buf(),
            what,
            sibling,
        });
    }
    Err(CheckpointError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "its 8-byte header length says {len} bytes, but the whole file has only {file_len}"
        ),
    })
}

/// What safetensors' error says of a file: its tensors not ending where the file does (bytes cut
/// off or added after them), or other damage.
pub fn damage(e: &safetensors::SafeTensorError) -> String {
    match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => {
            "truncated, or bytes added after it? its tensors do not end where the file does".into()
        }
        e => format!("truncated or damaged? {e}"),
    }
}

/// The first characters of `bytes`, escaped, when they read as text (UTF-8 without control
/// characters other than tab, CR and LF); `whole`: `bytes` is the whole file (no "..." after).
fn text_start(bytes: &[u8], whole: bool) -> Option<String> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // A character cut at the end of the prefix still reads as text.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix")
        }
        Err(_) => return None,
    };
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return None;
    }
    const SHOWN: usize = 16;
    let shown: String = text.chars().take(SHOWN).collect();
    let more = !whole || text.chars().count() > SHOWN;
    Some(format!(
        "{}{}",
        shown.escape_debug(),
        if more { "..." } else { "" }
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}{}", crate::train::io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: {}", not_ours(found.as_deref()))]
    NotOurs {
        path: PathBuf,
        found: Option<String>,
    },
    #[error("{path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error(
        "{path} is a folder without a checkpoint.safetensors{}",
        if *training {
            " yet: its run is training now, and writes its first checkpoint at the end of its \
             first epoch"
        } else {
            "; give a checkpoint file (a run folder's checkpoint.safetensors)"
        }
    )]
    FolderWithout {
        path: PathBuf,
        /// Another process holds the folder's run lock: the run has not reached its first
        /// checkpoint.
        training: bool,
    },
    #[error(
        "{path} is not a safetensors checkpoint: {what}{}",
        sibling.as_ref().map_or(String::new(), |c| format!("; the checkpoint of its folder is {}", c.display()))
    )]
    NotSafetensors {
        path: PathBuf,
        what: String,
        /// The checkpoint of the folder of a run's text file (config.json, metrics.jsonl).
        sibling: Option<PathBuf>,
    },
}

/// Why a safetensors file with metadata `format` = `found` is not a training checkpoint.
fn not_ours(found: Option<&str>) -> String {
    match found {
        Some(crate::export::FORMAT) => {
            "this is a `dst export` file (for `dst infer` and `dst bench-infer`), \
             not a training checkpoint (a run directory's checkpoint.safetensors)"
                .into()
        }
        Some(f) => {
            format!("not a dst training checkpoint (its format is `{f}`, expected `{FORMAT}`)")
        }
        None => format!(
            "not a dst training checkpoint (no `format` in its metadata, expected `{FORMAT}`)"
        ),
    }
}

/// The metadata key of the SHA-256 of a checkpoint's tensors (`tensors_sha256`).
pub const HASH_KEY: &str = "tensors_sha256";

/// SHA-256, as hex, of tensors in name order: each name, its shape and its f32 values (little
/// endian). What `save` stores under `HASH_KEY` and `load` checks: a flipped bit is refused.
pub fn tensors_sha256(tensors: &[NamedTensor]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&NamedTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, shape, values) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        if cfg!(target_endian = "little") {
            h.update(bytemuck::cast_slice::<f32, u8>(values));
        } else {
            for v in values {
                h.update(v.to_le_bytes());
            }
        }
    }
    crate::data::fetch::hex(&h.finalize())
}

/// The metadata key of the SHA-256 of a checkpoint's other metadata (`metadata_sha256`).
pub const META_HASH_KEY: &str = "metadata_sha256";

/// SHA-256, as hex, of metadata in key order (each key and value with its length), the two
/// hash keys left out. What `save` stores under `META_HASH_KEY` and `load` checks: an edited
/// epoch, step, model or configuration is refused like an edited tensor.
pub fn metadata_sha256(meta: &HashMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut keys: Vec<&String> = meta
        .keys()
        .filter(|k| *k != HASH_KEY && *k != META_HASH_KEY)
        .collect();
    keys.sort();
    let mut h = Sha256::new();
    for k in keys {
        for part in [k, &meta[k]] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    crate::data::fetch::hex(&h.finalize())
}

/// One checkpoint tensor: (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// (name, shape, values) in a stable order.
    pub tensors: Vec<NamedTensor>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.0 == name)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The data folder the run trained on, as its config records it (none for the embedded
    /// subset).
    pub fn trained_on(&self) -> Option<String> {
        let config: serde_json::Value = serde_json::from_str(self.meta("config")?).ok()?;
        config["data"].as_str().map(str::to_string)
    }

    /// `trained_on` of the checkpoint read from `path`, where its run folder's config.json
    /// names the data folder since (moved, and edited there as the README says): that one.
    /// The checkpoint's own record where the folder holds another run, or no readable config.
    pub fn trained_on_at(&self, path: &Path) -> Option<String> {
        let edited = || -> Option<String> {
            let (file, config, v) = config_beside(path)?;
            if foreign_to(self, &file, &config, &v).is_some() {
                return None;
            }
            let mine: serde_json::Value = serde_json::from_str(self.meta("config")?).ok()?;
            same_run_settings(&mine, &v).then(|| v.get("data")?.as_str().map(str::to_string))?
        };
        edited().or_else(|| self.trained_on())
    }

    /// Writes to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|(_, _, v)| bytemuck::cast_slice::<f32, u8>(v).to_vec())
            .collect();
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CheckpointError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), FORMAT.into());
        meta.insert(HASH_KEY.into(), tensors_sha256(&self.tensors));
        meta.remove(META_HASH_KEY);
        meta.insert(META_HASH_KEY.into(), metadata_sha256(&meta));
        let data =
            safetensors::serialize(views, Some(meta)).map_err(|e| CheckpointError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        write_atomic(path, &data).map_err(io)
    }

    /// The metadata of the checkpoint at `path` (a file, or a run folder: see [`resolve`]), from
    /// its header alone (no tensor is read).
    pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
        use std::io::Read;
        let path = &resolve(path)?;
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let format = |reason: String| CheckpointError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        // A pipe's size is unknown (0 to stat): a header it cuts short is caught below.
        let meta = f.metadata().map_err(io)?;
        let file_len = if meta.is_file() { meta.len() } else { u64::MAX };
        let mut prefix = Vec::with_capacity(PREFIX);
        f.by_ref()
            .take(PREFIX as u64)
            .read_to_end(&mut prefix)
            .map_err(io)?;
        let len = header_len(path, &prefix, file_len)?;
        if len > 100 << 20 {
            return Err(format(format!("header of {len} bytes")));
        }
        let mut header = prefix.split_off(8);
        header.truncate(len as usize);
        let rest = len - header.len() as u64;
        f.take(rest).read_to_end(&mut header).map_err(io)?;
        if header.len() as u64 != len {
            return Err(format("header truncated".into()));
        }
        let v: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| format(format!("its header is not JSON: {e}")))?;
        Ok(v.get("__metadata__")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Reads and checks the checkpoint at `path` (a file, or a run folder: see [`resolve`]).
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = &resolve(path)?;
        let data = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if data.is_empty() && !path.is_file() {
            return Err(CheckpointError::Format {
                path: path.to_path_buf(),
                reason: "nothing could be read from it: it is not a regular file, and a pipe \
                         gives its bytes only once (most commands read a checkpoint twice); give \
                         the file itself"
                    .into(),
            });
        }
        header_len(path, &data[..data.len().min(PREFIX)], data.len() as u64)?;
        let fmt = |e: safetensors::SafeTensorError| CheckpointError::Format {
            path: path.to_path_buf(),
            reason: damage(&e),
        };
        let (_, header) = SafeTensors::read_metadata(&data).map_err(fmt)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(CheckpointError::NotOurs {
                path: path.to_path_buf(),
                found: metadata.get("format").cloned(),
            });
        }
        let st = SafeTensors::deserialize(&data).map_err(fmt)?;
        let mut tensors = Vec::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let view = st.tensor(&name).map_err(fmt)?;
            if view.dtype() != Dtype::F32 {
                return Err(CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    reason: format!("tensor {name} is {:?}, expected F32", view.dtype()),
                });
            }
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            // Training never saves a non-finite value (a diverged run keeps its last good
            // checkpoint), so one here means a damaged or edited file.
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor {name} holds a non-finite value ({v}) at index {i}: the file is \
                         damaged (training never saves one)"
                    ),
                });
            }
            tensors.push((name, view.shape().to_vec(), values));
        }
        let edited = |what: &str, key: &str| CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "its {what} do not match the SHA-256 in its metadata (`{key}`): the file is \
                 damaged or was edited"
            ),
        };
        // Every checkpoint dst writes carries the hash of its tensors: one without it was
        // damaged or edited, and its tensors cannot be trusted.
        match metadata.get(HASH_KEY) {
            Some(want) if *want == tensors_sha256(&tensors) => {}
            Some(_) => return Err(edited("tensors", HASH_KEY)),
            None => {
                return Err(CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it has no SHA-256 of its tensors (`{HASH_KEY}`) in its metadata: the \
                         file is damaged or was edited, or a dst older than that hash wrote it \
                         (train it again)"
                    ),
                })
            }
        }
        // The metadata's hash, required like the tensors': were a file without it taken as one
        // from an older dst, deleting the hash would let any edit of the metadata through.
        match metadata.get(META_HASH_KEY) {
            Some(want) if *want == metadata_sha256(&metadata) => {}
            Some(_) => {
                return Err(edited(
                    "metadata (epoch, step, model, configuration)",
                    META_HASH_KEY,
                ))
            }
            None => {
                return Err(CheckpointError::Mismatch {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it has no SHA-256 of its metadata (`{META_HASH_KEY}`): the file is \
                         damaged or was edited, or a dst older than that hash wrote it (train \
                         it again)"
                    ),
                })
            }
        }
        let mut metadata = metadata;
        metadata.remove(HASH_KEY);
        metadata.remove(META_HASH_KEY);
        Ok(Checkpoint { tensors, metadata })
    }
}

/// The file that keeps `path` from being a folder, or from being made one: `path` itself, or
/// the first of its parents that exists, where that is not a folder (`out/sub` where `out` is a
/// file). `None` where nothing in the way is a file (`path` may still be missing).
pub fn file_in_the_way(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| std::fs::symlink_metadata(a).is_ok())
        .filter(|a| !a.is_dir())
        .map(Path::to_path_buf)
}

/// Whether `write_atomic(path, ..)` can create its temporary file beside `path`: creates and
/// removes it, so that a command finds a read-only folder before its work, not after.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let tmp = temporary_beside(path);
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// The temporary file `write_atomic` writes before renaming it to `path`.
fn temporary_beside(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    // Within a file name's 255 bytes: a long name is cut (at a character) to leave room for
    // the dot and the suffix (a valid name of 245 bytes failed as "File name too long").
    let suffix = format!(".tmp-{}", std::process::id());
    let room = 255 - 1 - suffix.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tmp = format!(".{}{suffix}", &name[..cut]);
    match dir {
        Some(d) => d.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Where a symbolic link at `path` points (relative to the link's folder where the link is
/// relative), whether or not that exists; `None` where `path` is not a link.
pub fn link_target(path: &Path) -> Option<PathBuf> {
    let to = std::fs::read_link(path).ok()?;
    Some(match path.parent() {
        Some(dir) if to.is_relative() => dir.join(to),
        _ => to,
    })
}

/// The target of a symbolic link at `path` that points to nothing: such an output is refused
/// (writing there would make a file the link did not name, or replace the link).
pub fn dangling_link(path: &Path) -> Option<PathBuf> {
    link_target(path).filter(|_| std::fs::metadata(path).is_err())
}

/// `write_atomic` of a file a user names (an export, a predictions file): a symbolic link at
/// `path` stays one, and the file it points to is replaced (its callers refuse a link to
/// nothing before any work). A run's own files take `write_atomic`, which replaces a link.
pub fn write_through_link(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // The end of a chain of links (a link to a link): the file itself, every link kept.
    let target = match link_target(path) {
        Some(to) => to.canonicalize().unwrap_or(to),
        None => path.to_path_buf(),
    };
    write_atomic(&target, data)
}

/// Whether the file name `name` is one `temporary_beside` makes (`.NAME.tmp-PID`).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename. A file
/// replaced keeps its permissions (a read-only one stays read-only).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = temporary_beside(path);
    // A stop at once (a second Ctrl-C, SIGTERM) while it is written removes it.
    let _writing = crate::train::interrupt::Writing::new(&tmp);
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        if let Some(p) = permissions {
            std::fs::set_permissions(&tmp, p)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
