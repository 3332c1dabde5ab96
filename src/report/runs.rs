//! Reading run directories: `config.json`, `metrics.jsonl` (lines of kind "step" and "epoch")
//! and `summary.json`. These structs are the report's own view of the files `dst train` writes,
//! not the trainer's types: every field a run may lack (older runs, runs without `--valid`) has a
//! serde default, and unknown fields are ignored, so the report reads runs of any version. The
//! fields every version of `dst train` wrote are required: a file without one (edited or written
//! by something else) is refused as damaged, never read as 0.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ReportError;

/// The settings of a run (`config.json`), as far as the report needs them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunConfig {
    pub model: String,
    pub dense: bool,
    pub alpha: f64,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub seed: u64,
    /// Written as `null` when not given: the key itself is required.
    #[serde(deserialize_with = "present")]
    pub limit_train: Option<usize>,
    #[serde(deserialize_with = "present")]
    pub data: Option<PathBuf>,
    /// "sgd" where absent (runs from before Adam).
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Images held out of the training set for validation (`--valid N`), when given.
    #[serde(default)]
    pub valid: Option<usize>,
    /// `--target-keep R`, when alpha was steered.
    #[serde(default)]
    pub target_keep: Option<f64>,
    #[serde(default)]
    pub reset: Option<String>,
    #[serde(default)]
    pub weight_decay: f64,
    /// Learning-rate milestones and factor (absent in older runs: none, 0.1).
    #[serde(default)]
    pub lr_steps: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub lr_gamma: f64,
    #[serde(default)]
    pub target_epoch: Option<usize>,
    /// Kernel choices (the same products, computed another way): not part of a configuration.
    #[serde(default)]
    pub sparse_keep: Option<f64>,
    #[serde(default)]
    pub sparse_input: Option<f64>,
    #[serde(default)]
    pub log_every: usize,
}

/// An `Option` field whose key must be there (`null` for None): serde reads a missing `Option`
/// as None otherwise.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

fn default_optimizer() -> String {
    "sgd".into()
}

fn default_gamma() -> f64 {
    0.1
}

impl RunConfig {
    /// "dense", "DST alpha 5e-4", or "DST target keep 2.5 %" (plus a reset policy other than
    /// the paper's).
    pub fn kind(&self) -> String {
        if self.dense {
            return "dense".into();
        }
        let mut k = match self.target_keep {
            Some(r) => format!("DST target keep {} %", super::percent(r)),
            None => format!("DST alpha {}", super::table::fmt_alpha(self.alpha)),
        };
        if let Some(r) = self.reset.as_deref().filter(|r| *r != "paper") {
            k.push_str(&format!(", reset {r}"));
        }
        k
    }

    /// The optimiser's settings in a line for a study's report: "sgd lr 0.01 momentum 0.9,
    /// batch 64", with a weight decay other than 0 and a learning-rate schedule where there is
    /// one.
    pub fn optimiser_line(&self) -> String {
        let mut s = format!("{} lr {}", self.optimizer, super::number(self.lr));
        if self.optimizer != "adam" {
            s.push_str(&format!(" momentum {}", self.momentum));
        }
        if self.weight_decay != 0.0 {
            s.push_str(&format!(", weight decay {}", self.weight_decay));
        }
        s.push_str(&format!(", batch {}", self.batch));
        if !self.lr_steps.is_empty() {
            let steps: Vec<String> = self.lr_steps.iter().map(|e| e.to_string()).collect();
            s.push_str(&format!(
                ", lr x{} after epochs {}",
                super::number(self.lr_gamma),
                steps.join(", ")
            ));
        }
        s
    }

    /// The settings beyond `kind`, the model, the epochs and the data that change what a run
    /// computes, as (name, value) to show: the optimizer and its parameters, the batch, the
    /// learning-rate schedule, and for a steered run its starting alpha and target epoch. Left
    /// out: the seed, what does not apply (momentum under Adam, the factor of an empty lr
    /// schedule) and what cannot change the results: `log_every` and the kernel choices
    /// `sparse_keep` / `sparse_input` (the same products computed another way; their defaults
    /// differ between adapters anyway).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("optimizer", self.optimizer.clone()),
            ("lr", self.lr.to_string()),
        ];
        if self.optimizer != "adam" {
            v.push(("momentum", self.momentum.to_string()));
        }
        v.push(("weight decay", self.weight_decay.to_string()));
        v.push(("batch", self.batch.to_string()));
        if self.lr_steps.is_empty() {
            v.push(("lr steps", "none".into()));
        } else {
            let steps: Vec<String> = self.lr_steps.iter().map(|s| s.to_string()).collect();
            v.push(("lr steps", steps.join(",")));
            v.push(("lr gamma", self.lr_gamma.to_string()));
        }
        if !self.dense && self.target_keep.is_some() {
            v.push(("start alpha", super::table::fmt_alpha(self.alpha)));
            v.push((
                "target epoch",
                self.target_epoch
                    .unwrap_or_else(|| crate::train::default_target_epoch(self.epochs))
                    .to_string(),
            ));
        }
        v
    }
}

/// One layer at the end of an epoch.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LayerLine {
    pub name: String,
    pub shape: Vec<usize>,
    pub kept: u64,
    pub total: u64,
    pub keep_ratio: f64,
    /// `null` for a dense run (logs written before that read 0.0).
    #[serde(default)]
    pub threshold_min: Option<f64>,
    #[serde(default)]
    pub threshold_mean: Option<f64>,
    #[serde(default)]
    pub threshold_max: Option<f64>,
    #[serde(default)]
    pub resets: u32,
}

/// An "epoch" line of `metrics.jsonl` (and `summary.json`'s `last`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EpochLine {
    pub epoch: usize,
    pub step: u64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Accuracy on the validation split, when the run held one out.
    #[serde(default)]
    pub valid_acc: Option<f64>,
    pub keep_ratio: f64,
    pub layers: Vec<LayerLine>,
    #[serde(default)]
    pub epoch_seconds: f64,
    #[serde(default)]
    pub ms_per_step: f64,
}

/// A "step" line of `metrics.jsonl`: one per log point.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StepLine {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    #[serde(default)]
    pub penalty: f64,
    #[serde(default)]
    pub lr: f64,
    /// The penalty weight in force (absent in runs with a fixed alpha from before it was logged).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Keep ratio per masked layer, in the order the line gives them (the model's layers, in
    /// runs from a `dst train` that writes them so; older runs wrote them sorted by name).
    pub keep: LayerKeeps,
    /// The model keep ratio the `--target-keep` controller steered towards at this step (a
    /// steered run's).
    #[serde(default)]
    pub target_keep: Option<f64>,
}

/// A step line's keep ratios per layer, in the line's order: a chart of a run that has not
/// finished an epoch (whose epoch lines give the layers' order) lists the layers as the model has
/// them, not sorted by name (`conv10` before `conv2`, an LSTM's gates out of place).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerKeeps(pub Vec<(String, f64)>);

impl LayerKeeps {
    pub fn get(&self, name: &str) -> Option<&f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }
}

impl FromIterator<(String, f64)> for LayerKeeps {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        LayerKeeps(iter.into_iter().collect())
    }
}

/// Written as a JSON object in its order (`dst train`'s step lines: the model's layers; a
/// `serde_json::Value` would sort the names).
impl serde::Serialize for LayerKeeps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, keep) in &self.0 {
            m.serialize_entry(name, keep)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for LayerKeeps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = LayerKeeps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of layer names to keep ratios")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LayerKeeps, A::Error> {
                let mut out = Vec::new();
                while let Some((name, keep)) = map.next_entry::<String, f64>()? {
                    out.push((name, keep));
                }
                Ok(LayerKeeps(out))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// `summary.json`: written once, when a run has finished all its epochs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SummaryFile {
    pub model: String,
    pub dense: bool,
    #[serde(default)]
    pub adapter: String,
    #[serde(default)]
    pub data: String,
    pub epochs: usize,
    pub steps: u64,
    pub last: EpochLine,
    pub best_acc_epoch: usize,
    pub best_acc: f64,
    pub best_acc_keep: f64,
    pub lowest_keep_epoch: usize,
    pub lowest_keep: f64,
    pub lowest_keep_acc: f64,
    #[serde(default)]
    pub mean_ms_per_step: f64,
    /// The epoch with the best validation accuracy (runs with `--valid N`).
    #[serde(default)]
    pub best_valid_epoch: Option<usize>,
    /// Test accuracy at that epoch.
    #[serde(default)]
    pub best_valid_test_acc: Option<f64>,
    /// Model keep ratio at that epoch.
    #[serde(default)]
    pub best_valid_keep: Option<f64>,
    /// The images trained on, after `--limit-train` and `--valid` (absent in older runs).
    #[serde(default)]
    pub train_images: Option<usize>,
}

/// A run directory as read from disk.
#[derive(Clone, Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub steps: Vec<StepLine>,
    pub epochs: Vec<EpochLine>,
    /// None while the run has not finished.
    pub summary: Option<SummaryFile>,
    /// The line of `metrics.jsonl` left out as cut short or damaged (its last: a crash
    /// mid-write), for the commands to warn about.
    pub torn_line: Option<usize>,
    /// Other lines of `metrics.jsonl` left out as damaged (not log lines), 1-based.
    pub damaged_lines: Vec<usize>,
    /// Where the run diverged, when that is the last thing its log says.
    pub diverged: Option<DivergedLine>,
}

/// A line of kind "diverged": the run stopped there, its parameters or loss not finite.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DivergedLine {
    pub epoch: usize,
    pub step: u64,
    pub what: String,
}

impl Run {
    /// Reads `dir`. `config.json` is required; `metrics.jsonl` and `summary.json` may be absent
    /// (a run that has not logged or not finished yet).
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        Run::load_with(dir, true)
    }

    /// `load`, with `summary.json` read only when `summary` (charts need only the log: a run
    /// whose summary is damaged can still be drawn).
    pub fn load_with(dir: &Path, summary: bool) -> Result<Run, ReportError> {
        let config: RunConfig = read_json(&dir.join("config.json"))?;
        let metrics = dir.join("metrics.jsonl");
        let m = if metrics.exists() {
            read_metrics(&metrics)?
        } else {
            Metrics::default()
        };
        let sp = dir.join("summary.json");
        let summary = if summary && sp.exists() {
            Some(read_json(&sp)?)
        } else {
            None
        };
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            steps: m.steps,
            epochs: m.epochs,
            summary,
            torn_line: m.torn,
            damaged_lines: m.damaged,
            diverged: m.diverged,
        })
    }

    /// Why a run without a step or epoch line has nothing to chart: it diverged before its first
    /// log point, or has logged nothing yet.
    pub fn why_nothing_logged(&self) -> String {
        match &self.diverged {
            Some(d) => format!(
                "diverged at step {} ({}), before its first log point",
                d.step, d.what
            ),
            None => "logged no step or epoch yet (metrics.jsonl missing or empty)".into(),
        }
    }

    /// A short name for legends: the directory's name.
    pub fn label(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Masked layer names in the order the run reports them.
    pub fn layer_names(&self) -> Vec<String> {
        if let Some(e) = self.epochs.last() {
            return e.layers.iter().map(|l| l.name.clone()).collect();
        }
        self.steps
            .last()
            .map(|s| s.keep.keys().cloned().collect())
            .unwrap_or_default()
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ReportError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What `metrics.jsonl` holds, as `read_metrics` reads it.
#[derive(Default)]
struct Metrics {
    steps: Vec<StepLine>,
    epochs: Vec<EpochLine>,
    torn: Option<usize>,
    damaged: Vec<usize>,
    diverged: Option<DivergedLine>,
}

/// Reads `metrics.jsonl`. A resumed run may have logged a step or an epoch twice (the lines of an
/// interrupted epoch, then the same epoch again after the resume): a line whose step (epoch) is
/// not after the last one kept replaces everything from that point on, so the result is the
/// history of the run as it finally went. A torn last line (a crash mid-write) is skipped, its
/// number returned; so is any other line that is not a log line (damaged or edited), the run's
/// other lines read. A "diverged" line counts only where nothing was logged after it.
fn read_metrics(path: &Path) -> Result<Metrics, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut m = Metrics::default();
    let n = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            if i + 1 == n {
                m.torn = Some(n);
            } else {
                m.damaged.push(i + 1);
            }
            continue;
        };
        let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        let ok = match kind.as_deref() {
            // From the line's text: a `Value` holds its keys sorted, and the keep ratios' order
            // is the model's.
            Some("step") => serde_json::from_str::<StepLine>(line).map(|s| {
                let keep = m.steps.partition_point(|p| p.step < s.step);
                m.steps.truncate(keep);
                m.steps.push(s);
            }),
            Some("epoch") => serde_json::from_value::<EpochLine>(v).map(|e| {
                let keep = m.epochs.partition_point(|p| p.epoch < e.epoch);
                m.epochs.truncate(keep);
                m.epochs.push(e);
            }),
            Some("diverged") => serde_json::from_value::<DivergedLine>(v).map(|d| {
                m.diverged = Some(d);
            }),
            _ => Ok(()),
        };
        match ok {
            Err(_) => m.damaged.push(i + 1),
            // Logged after a divergence (a resume from the checkpoint before it): the run went on.
            Ok(()) if matches!(kind.as_deref(), Some("step" | "epoch")) => m.diverged = None,
            Ok(()) => {}
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step line's keep ratios keep the line's order (the model's), not the names' order.
    #[test]
    fn step_lines_keep_their_layer_order() {
        let dir = std::env::temp_dir().join(format!("dst-runs-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"kind":"step","step":5,"epoch":1,"loss":1.0,"#,
                r#""keep":{"conv2":0.5,"conv10":0.25,"a.wx_i":1.0}}"#,
                "\n"
            ),
        )
        .unwrap();
        let m = read_metrics(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.steps.len(), 1);
        let keys: Vec<&str> = m.steps[0].keep.keys().map(String::as_str).collect();
        assert_eq!(keys, ["conv2", "conv10", "a.wx_i"]);
        assert_eq!(m.steps[0].keep.get("conv10"), Some(&0.25));
        assert_eq!(m.steps[0].keep.get("conv1"), None);
        // A run without an epoch line names its layers so (charts of a run stopped in its first
        // epoch), and a step line written again reads back the same.
        let run = Run {
            dir: dir.clone(),
            config: RunConfig::default(),
            steps: m.steps.clone(),
            epochs: vec![],
            summary: None,
            torn_line: None,
            damaged_lines: vec![],
            diverged: None,
        };
        assert_eq!(run.layer_names(), ["conv2", "conv10", "a.wx_i"]);
        let again = serde_json::to_string(&m.steps[0].keep).unwrap();
        assert_eq!(again, r#"{"conv2":0.5,"conv10":0.25,"a.wx_i":1.0}"#);
    }

    /// A steered run without `--target-epoch` shows the epoch it steers by (60 % of its length,
    /// as the trainer computes it), so that it groups with a run that gave that epoch.
    #[test]
    fn a_default_target_epoch_is_shown_as_its_number() {
        let setting = |target_epoch| {
            let c = RunConfig {
                epochs: 20,
                target_keep: Some(0.025),
                target_epoch,
                optimizer: "sgd".into(),
                ..RunConfig::default()
            };
            c.settings()
                .into_iter()
                .find(|(k, _)| *k == "target epoch")
                .map(|(_, v)| v)
        };
        assert_eq!(setting(None).as_deref(), Some("12"));
        assert_eq!(setting(Some(12)), setting(None));
        assert_eq!(setting(Some(5)).as_deref(), Some("5"));
    }
}
