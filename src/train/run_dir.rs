//! A run directory: config.json, metrics.jsonl, checkpoint.safetensors, summary.json.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Result, TrainError};

/// Where a run writes: config.json, metrics.jsonl, checkpoint.safetensors, summary.json.
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join(crate::checkpoint::FILE_NAME)
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

    /// It holds a run's checkpoint or log: no folder for a new run.
    pub fn holds_run(&self) -> bool {
        self.checkpoint().exists() || self.metrics().exists()
    }

    pub(crate) fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
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

    pub fn append_metric<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        let path = self.metrics();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))?;
        let line = serde_json::to_string(value).expect("a log line serialises");
        writeln!(f, "{line}").map_err(self.io(&path))
    }
}
