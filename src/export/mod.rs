//! Sparse export and sparse inference: what DST's zeros buy.
//!
//! `export` turns a training checkpoint into a safetensors file other tools read, with PyTorch's
//! names and layouts: `dense` (masked weights with zeros where the mask is 0, biases; no
//! thresholds, no optimiser state) or `csr` (per masked layer the triplet
//! `<tensor>.crow_indices` / `.col_indices` / `.values` that `torch.sparse_csr_tensor` and
//! `scipy.sparse.csr_matrix` take, indices in the narrowest unsigned type that fits; biases and
//! unmasked layers dense). The mask is derived exactly as the trainer's forward derives it,
//! dead-layer reset included (METHOD.md sections 1 and 3). `load` reads an export back and
//! refuses, before any GPU work, a truncated or tampered file, one whose tensors are not the
//! model's, and a CSR triplet whose indices are out of range or not increasing. `infer` runs an
//! export on the GPU with the sparse kernel (shaders/sparse.wgsl) where the model has one, else
//! through the trainer's evaluation plan (`to_checkpoint`).

pub mod csr;
pub mod infer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::kernels::masked::ResetPolicy;
pub use csr::{Csr, CsrError};

/// The format tag every export of this program carries in its metadata.
pub const FORMAT: &str = "dst-export-1";

/// How masked weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Dense,
    Csr,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Dense => "dense",
            Layout::Csr => "csr",
        }
    }
    pub fn parse(s: &str) -> Result<Layout, String> {
        match s {
            "dense" => Ok(Layout::Dense),
            "csr" => Ok(Layout::Csr),
            _ => Err(format!(
                "unknown export format {s:?}; available: dense, csr"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn invalid(path: &Path, reason: impl Into<String>) -> ExportError {
    ExportError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One tensor of a model as the trainer stores it: a weight, a bias, or a batch norm's
/// parameter or running statistic.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The checkpoint's name (`fc1.weight`, `lstm1.weight_ih`, `bn1.running_mean`).
    pub name: String,
    /// The exported (PyTorch) name (`fc1.weight`, `lstm1.weight_ih_l0`).
    pub export: String,
    pub shape: Vec<usize>,
    /// The checkpoint's threshold tensor, for a masked weight of a DST model.
    pub threshold: Option<String>,
    /// Stacked matrices with their own reset each (4 for LSTM gates, else 1).
    pub groups: usize,
}

fn p(
    name: &str,
    export: &str,
    shape: &[usize],
    threshold: Option<&str>,
    groups: usize,
) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        export: export.to_string(),
        shape: shape.to_vec(),
        threshold: threshold.map(str::to_string),
        groups,
    }
}

/// A masked layer's weight `<layer>.weight` (threshold `<layer>.threshold`), same name exported.
fn masked_weight(layer: &str, shape: &[usize]) -> ParamSpec {
    let w = format!("{layer}.weight");
    p(&w, &w, shape, Some(&format!("{layer}.threshold")), 1)
}

/// An unmasked tensor, same name in the checkpoint and the export.
fn plain(name: &str, shape: &[usize]) -> ParamSpec {
    p(name, name, shape, None, 1)
}

/// A fully connected layer: masked weight `(out, in)`, bias.
fn fc(specs: &mut Vec<ParamSpec>, layer: &str, out: usize, inp: usize) {
    specs.push(masked_weight(layer, &[out, inp]));
    specs.push(plain(&format!("{layer}.bias"), &[out]));
}

/// A batch norm over `c` channels: weight (gamma), bias (beta), running mean and variance.
fn bn(specs: &mut Vec<ParamSpec>, layer: &str, c: usize) {
    for part in ["weight", "bias", "running_mean", "running_var"] {
        specs.push(plain(&format!("{layer}.{part}"), &[c]));
    }
}

/// A conv 3x3 / 1x1 without bias (the CIFAR-10 models'), masked.
fn conv(specs: &mut Vec<ParamSpec>, layer: &str, c_out: usize, c_in: usize, k: usize) {
    specs.push(masked_weight(layer, &[c_out, c_in, k, k]));
}

/// The CIFAR-10 models' tensors in the order `models::cifar` declares them.
fn cifar_params(model: &str) -> Option<Vec<ParamSpec>> {
    let mut s = Vec::new();
    match model {
        "vgg16" => {
            let (mut c_in, mut n) = (3, 0);
            for c_out in crate::models::cifar::VGG16.into_iter().flatten() {
                n += 1;
                conv(&mut s, &format!("conv{n}"), c_out, c_in, 3);
                bn(&mut s, &format!("bn{n}"), c_out);
                c_in = c_out;
            }
            fc(&mut s, "fc1", 512, 512);
            bn(&mut s, "bn14", 512);
            fc(&mut s, "fc2", 10, 512);
        }
        "wrn-16-8" | "wrn-16-1" => {
            let k = if model == "wrn-16-8" { 8 } else { 1 };
            conv(&mut s, "conv1", 16, 3, 3);
            let mut c_in = 16;
            for (g, (width, stride)) in crate::models::cifar::wrn_groups(k).into_iter().enumerate()
            {
                for b in 0..2 {
                    let name = format!("block{}_{}", g + 1, b + 1);
                    let stride = if b == 0 { stride } else { 1 };
                    bn(&mut s, &format!("{name}.bn1"), c_in);
                    conv(&mut s, &format!("{name}.conv1"), width, c_in, 3);
                    bn(&mut s, &format!("{name}.bn2"), width);
                    conv(&mut s, &format!("{name}.conv2"), width, width, 3);
                    if crate::nn::residual::PreActBlock::has_shortcut(c_in, width, stride) {
                        conv(&mut s, &format!("{name}.shortcut"), width, c_in, 1);
                    }
                    c_in = width;
                }
            }
            bn(&mut s, "bn", c_in);
            fc(&mut s, "fc", 10, c_in);
        }
        _ => return None,
    }
    Some(s)
}

/// The tensors of `model` in layer order (weights, biases, batch norms' parameters and running
/// statistics; thresholds named by the weights they mask), or an error naming the models.
pub fn model_params(model: &str) -> Result<Vec<ParamSpec>, String> {
    if let Some(specs) = cifar_params(model) {
        return Ok(specs);
    }
    Ok(match model {
        "lenet300" => {
            let mut s = Vec::new();
            fc(&mut s, "fc1", 300, 784);
            fc(&mut s, "fc2", 100, 300);
            fc(&mut s, "fc3", 10, 100);
            s
        }
        "lenet5" => vec![
            masked_weight("conv1", &[20, 1, 5, 5]),
            plain("conv1.bias", &[20]),
            masked_weight("conv2", &[50, 20, 5, 5]),
            plain("conv2.bias", &[50]),
            masked_weight("fc3", &[500, 800]),
            plain("fc3.bias", &[500]),
            masked_weight("fc4", &[10, 500]),
            plain("fc4.bias", &[10]),
        ],
        "lstm-a" | "lstm-b" => {
            let h = if model == "lstm-a" { 128 } else { 256 };
            let mut s = Vec::new();
            for (l, inp) in [("lstm1", 28), ("lstm2", h)] {
                for part in ["ih", "hh"] {
                    let cols = if part == "ih" { inp } else { h };
                    s.push(p(
                        &format!("{l}.weight_{part}"),
                        &format!("{l}.weight_{part}_l0"),
                        &[4 * h, cols],
                        Some(&format!("{l}.threshold_{part}")),
                        4,
                    ));
                }
                s.push(p(
                    &format!("{l}.bias"),
                    &format!("{l}.bias_ih_l0"),
                    &[4 * h],
                    None,
                    1,
                ));
            }
            s.push(plain("fc.weight", &[10, h]));
            s.push(plain("fc.bias", &[10]));
            s
        }
        _ => {
            return Err(format!(
                "unknown model {model:?}; available: {}",
                crate::models::MODELS
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    })
}

/// The entries an export of `specs` holds, in order: each spec's exported name and dense shape,
/// and the companions PyTorch's modules expect besides: an `nn.LSTM`'s second bias
/// `<layer>.bias_hh_l0` (0: the trainer has one bias per layer, METHOD.md section 5) and a batch
/// norm's `<layer>.num_batches_tracked` (an I64 scalar: the training steps taken).
fn export_entries(specs: &[ParamSpec]) -> Vec<(String, Vec<usize>, Companion)> {
    let mut out = Vec::new();
    for s in specs {
        out.push((s.export.clone(), s.shape.clone(), Companion::None));
        if let Some(layer) = s.export.strip_suffix(".bias_ih_l0") {
            out.push((
                format!("{layer}.bias_hh_l0"),
                s.shape.clone(),
                Companion::ZeroBias,
            ));
        }
        if let Some(layer) = s.export.strip_suffix(".running_var") {
            out.push((
                format!("{layer}.num_batches_tracked"),
                vec![],
                Companion::Steps,
            ));
        }
    }
    out
}

/// What an `export_entries` entry holds that is not a checkpoint tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Companion {
    /// A checkpoint tensor.
    None,
    /// `nn.LSTM`'s `bias_hh_l0`: zeros.
    ZeroBias,
    /// `nn.BatchNorm`'s `num_batches_tracked`: the checkpoint's step.
    Steps,
}

/// The mask of `w` (`rows x cols`, `groups` stacked matrices of `rows / groups` rows) under
/// per-row thresholds `t`, as the trainer's forward computes it: `|W| - t > 0` in f32, and a
/// matrix keeping at most 1% (integer test `kept <= numel / 100`, as shaders/masked.wgsl) is
/// dying: `policy` (the run's `--reset`) acts on it as in training. The paper's reset counts its
/// thresholds as 0 (METHOD.md section 3); the floor brings each threshold at or above its row's
/// largest |w| down to 0.999 of it (in f32, as the shader); `none` leaves it. Returns the mask
/// and the number of matrices the policy acted on.
pub fn derive_mask(
    w: &[f32],
    t: &[f32],
    rows: usize,
    cols: usize,
    groups: usize,
    policy: ResetPolicy,
) -> (Vec<bool>, usize) {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(t.len(), rows);
    assert_eq!(rows % groups, 0);
    let per = rows / groups;
    let mut mask = vec![false; rows * cols];
    let mut acted = 0;
    for g in 0..groups {
        let rr = g * per..(g + 1) * per;
        let keep = |r: usize, c: usize, t: f32| w[r * cols + c].abs() - t > 0.0;
        let kept: usize = rr
            .clone()
            .map(|r| (0..cols).filter(|&c| keep(r, c, t[r])).count())
            .sum();
        let dying = kept <= per * cols / 100 && policy != ResetPolicy::None;
        acted += dying as usize;
        for r in rr {
            let row = &w[r * cols..(r + 1) * cols];
            let tr = match (dying, policy) {
                (false, _) => t[r],
                (true, ResetPolicy::Floor) => {
                    let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    t[r].min(m * 0.999)
                }
                (true, _) => 0.0,
            };
            for c in 0..cols {
                mask[r * cols + c] = keep(r, c, tr);
            }
        }
    }
    (mask, acted)
}

/// The f32 values a dense entry holds (none for the others).
fn value_slice(v: &Value) -> &[f32] {
    match v {
        Value::Dense(v) => v,
        _ => &[],
    }
}

/// A stored tensor of an export.
#[derive(Clone, Debug)]
pub enum Value {
    Dense(Vec<f32>),
    /// Over the row view `(shape[0], product of the rest)`.
    Csr(Csr),
    /// An I64 scalar (a batch norm's `num_batches_tracked`).
    Int(i64),
}

/// One weight or bias of an export, by its exported name, with its dense shape.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Value,
}

impl Entry {
    /// The dense values (CSR expanded; an integer as its f32).
    pub fn dense(&self) -> Vec<f32> {
        match &self.value {
            Value::Dense(v) => v.clone(),
            Value::Csr(c) => c.to_dense(),
            Value::Int(i) => vec![*i as f32],
        }
    }
    /// The row view `(shape[0], rest)` as CSR (a dense tensor: its non-zero entries).
    pub fn csr(&self) -> Csr {
        match &self.value {
            Value::Csr(c) => c.clone(),
            Value::Int(_) => Csr::from_dense(1, 1, &self.dense()),
            Value::Dense(v) => {
                let rows = self.shape[0];
                Csr::from_dense(rows, v.len() / rows.max(1), v)
            }
        }
    }
}

/// An export in memory, entries in layer order.
#[derive(Clone, Debug)]
pub struct Export {
    pub model: String,
    pub layout: Layout,
    pub entries: Vec<Entry>,
    /// The data folder the run trained on (its config's `data`; metadata `data`), where it had
    /// one: `dst infer` scores that folder's test set by default, as `dst eval` does.
    pub data: Option<String>,
}

impl Export {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// "dense export", "csr export", or "csr export of a dense run" for one that stores no
    /// tensor as CSR and no zero in a maskable weight (a dense run has no masks: `export`
    /// stores it all dense).
    pub fn describe(&self) -> String {
        let specs = model_params(&self.model).unwrap_or_default();
        let pruned = self.entries.iter().any(|e| match &e.value {
            Value::Csr(_) => true,
            Value::Dense(w) => {
                specs
                    .iter()
                    .any(|s| s.export == e.name && s.threshold.is_some())
                    && w.contains(&0.0)
            }
            Value::Int(_) => false,
        });
        match self.layout {
            Layout::Csr if !pruned => "csr export of a dense run".into(),
            l => format!("{} export", l.name()),
        }
    }

    /// Bytes of every f32 entry stored dense: what the masked model costs without sparse
    /// storage (the integer counters, 8 bytes each, are left out).
    pub fn dense_f32_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| !matches!(e.value, Value::Int(_)))
            .map(|e| 4 * e.shape.iter().product::<usize>() as u64)
            .sum()
    }
}

/// What `export` wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub model: String,
    pub layout: Layout,
    pub dense_f32_bytes: u64,
    pub file_bytes: u64,
    /// (exported name, kept, total) of each masked weight.
    pub layers: Vec<(String, usize, usize)>,
    /// Matrices whose mask the dead-layer policy acted on.
    pub resets: usize,
    /// The run's dead-layer policy (`--reset`) the masks were derived under.
    pub policy: ResetPolicy,
}

/// Builds the export of a training checkpoint (mask derived as in evaluation).
pub fn from_checkpoint(
    ck: &Checkpoint,
    path: &Path,
    layout: Layout,
) -> Result<(Export, ExportReport), ExportError> {
    let model = ck.meta("model").unwrap_or("").to_string();
    let masked = ck.meta("masked") == Some("true");
    let specs = model_params(&model).map_err(|e| invalid(path, e))?;
    let mut entries = Vec::new();
    let mut layers = Vec::new();
    let mut resets = 0;
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ExportError> {
        match ck.get(name) {
            Some((_, s, v)) if s == shape => Ok(v.clone()),
            Some((_, s, _)) => Err(invalid(
                path,
                format!("tensor {name} has shape {s:?}, {model} expects {shape:?}"),
            )),
            None => Err(invalid(path, format!("tensor {name} is missing"))),
        }
    };
    let steps: i64 = ck.meta("step").and_then(|v| v.parse().ok()).unwrap_or(0);
    let policy = crate::train::reset_policy_of(ck);
    for s in &specs {
        let w = tensor(&s.name, &s.shape)?;
        let rows = s.shape[0];
        let cols = s.shape[1..].iter().product::<usize>();
        let threshold = s.threshold.as_deref().filter(|_| masked);
        let value = match threshold {
            Some(tn) => {
                let t = tensor(tn, &[rows])?;
                let (mask, r) = derive_mask(&w, &t, rows, cols, s.groups, policy);
                resets += r;
                layers.push((
                    s.export.clone(),
                    mask.iter().filter(|&&m| m).count(),
                    mask.len(),
                ));
                match layout {
                    Layout::Dense => Value::Dense(
                        w.iter()
                            .zip(&mask)
                            .map(|(&v, &m)| if m { v } else { 0.0 })
                            .collect(),
                    ),
                    Layout::Csr => Value::Csr(Csr::from_dense_where(rows, cols, &w, |r, c| {
                        mask[r * cols + c]
                    })),
                }
            }
            None => Value::Dense(w),
        };
        entries.push(Entry {
            name: s.export.clone(),
            shape: s.shape.clone(),
            value,
        });
    }
    // The companions PyTorch's modules expect, after the entry they belong to.
    for (at, (name, shape, companion)) in export_entries(&specs).into_iter().enumerate() {
        let value = match companion {
            Companion::None => continue,
            Companion::ZeroBias => Value::Dense(vec![0.0; shape[0]]),
            Companion::Steps => Value::Int(steps),
        };
        entries.insert(at, Entry { name, shape, value });
    }
    let export = Export {
        model: model.clone(),
        layout,
        entries,
        data: ck.trained_on_at(path),
    };
    let report = ExportReport {
        model,
        layout,
        dense_f32_bytes: export.dense_f32_bytes(),
        file_bytes: 0,
        layers,
        resets,
        policy,
    };
    Ok((export, report))
}

/// The export as a checkpoint of the dense model (`masked` false, no thresholds, no optimiser
/// state): the masked weights with their zeros, the biases (an LSTM layer's one bias the sum of
/// `bias_ih_l0` and `bias_hh_l0`), the batch norms' parameters and running statistics. What the
/// trainer's evaluation plan computes from it is what the export's model computes.
pub fn to_checkpoint(export: &Export) -> Result<Checkpoint, String> {
    let specs = model_params(&export.model)?;
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), export.model.clone());
    ck.metadata.insert("masked".into(), "false".into());
    let get = |name: &str| {
        export
            .get(name)
            .map(Entry::dense)
            .ok_or_else(|| format!("the export has no tensor {name}"))
    };
    for s in &specs {
        let mut v = get(&s.export)?;
        if let Some(layer) = s.export.strip_suffix(".bias_ih_l0") {
            for (a, b) in v.iter_mut().zip(get(&format!("{layer}.bias_hh_l0"))?) {
                *a += b;
            }
        }
        ck.tensors.push((s.name.clone(), s.shape.clone(), v));
    }
    Ok(ck)
}

/// `to_checkpoint` as a checkpoint of the masked (DST) model, every threshold 0: the mask the
/// trainer derives, `|W| > 0`, keeps exactly the export's nonzero weights (a kept weight of
/// exactly 0 would add nothing either way), so the trainer's masked evaluation computes the
/// export's model, and where a layer keeps few weights it runs the products over the kept ones
/// (on CPU adapters, `kernels::sparse`'s switches).
pub fn to_masked_checkpoint(export: &Export) -> Result<Checkpoint, String> {
    with_zero_thresholds(to_checkpoint(export)?, &export.model)
}

/// The dense checkpoint `ck` of `model` (`to_checkpoint`) as the masked model's, every threshold
/// 0 (`to_masked_checkpoint`).
pub fn with_zero_thresholds(mut ck: Checkpoint, model: &str) -> Result<Checkpoint, String> {
    ck.metadata.insert("masked".into(), "true".into());
    for s in model_params(model)? {
        if let Some(t) = s.threshold {
            ck.tensors
                .push((t, vec![s.shape[0]], vec![0.0; s.shape[0]]));
        }
    }
    Ok(ck)
}

/// `dst export`: reads a training checkpoint, writes its export to `out` atomically.
/// Refuses an `out` that holds anything but an earlier export: the checkpoint it reads, a
/// folder, any other file. Nothing is overwritten but what `dst export` itself wrote.
pub fn export(checkpoint: &Path, layout: Layout, out: &Path) -> Result<ExportReport, ExportError> {
    check_out(checkpoint, out)?;
    let ck = Checkpoint::load(checkpoint)?;
    if let Some(w) = crate::checkpoint::foreign_to_its_folder(&ck, checkpoint) {
        eprintln!("warning: {w}");
    }
    let (export, mut report) = from_checkpoint(&ck, checkpoint, layout)?;
    let bytes = serialize(&export).map_err(|e| invalid(out, e))?;
    crate::checkpoint::write_through_link(out, &bytes).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    report.file_bytes = bytes.len() as u64;
    Ok(report)
}

/// What the run's dead-layer policy did to the masks of `resets` matrices that keep 1 % or less,
/// where it did anything (`dst export`, `dst eval`).
pub fn policy_note(resets: usize, policy: ResetPolicy) -> Option<String> {
    let (matrices, were) = if resets == 1 {
        ("1 matrix".to_string(), "was")
    } else {
        (format!("{resets} matrices"), "were")
    };
    let what = match policy {
        ResetPolicy::Floor => {
            "so each row keeps at least its strongest weight (the run's --reset floor)".to_string()
        }
        _ => format!("and {were} reset to dense, as evaluation does (METHOD.md section 3)"),
    };
    (resets > 0).then(|| format!("{matrices} kept <= 1% {what}"))
}

/// How an export's size compares with the model's dense f32 weights.
pub fn size_note(file: u64, dense: u64, layout: Layout) -> String {
    let r = dense as f64 / file.max(1) as f64;
    if r >= 1.005 {
        format!("{r:.2}x smaller")
    } else if r > 0.995 {
        "about the same size".into()
    } else if layout == Layout::Csr {
        format!(
            "{:.2}x larger: at this keep ratio CSR's column indices outweigh the zeros it leaves \
             out; `--format dense` gives the smaller file",
            1.0 / r
        )
    } else {
        format!("{:.2}x larger", 1.0 / r)
    }
}

/// `export`'s guard on its output path (see there).
fn check_out(checkpoint: &Path, out: &Path) -> Result<(), ExportError> {
    // Standard output's usual name elsewhere: not a file named "-" here.
    if out.as_os_str() == "-" {
        return Err(invalid(
            out,
            "an export is written to a file, not to standard output; give a file's path (e.g. \
             model.safetensors)",
        ));
    }
    if let Some(to) = crate::checkpoint::dangling_link(out) {
        return Err(invalid(
            out,
            format!(
                "a symbolic link to {}, which does not exist; give a file's path",
                to.display()
            ),
        ));
    }
    let Ok(meta) = std::fs::metadata(out) else {
        if out.as_os_str().to_string_lossy().ends_with('/') {
            return Err(invalid(
                out,
                "names a folder; give the export file's path (e.g. model.safetensors)",
            ));
        }
        // Nothing there: its folder must exist (as `dst infer --out` asks), checked before any
        // work.
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent.filter(|p| !p.is_dir()) {
            return Err(invalid(
                out,
                match crate::checkpoint::file_in_the_way(dir) {
                    Some(f) => format!(
                        "the folder {} cannot exist: {} is a file; pick another --out",
                        dir.display(),
                        f.display()
                    ),
                    None => format!(
                        "the folder {} does not exist; create it or pick another --out",
                        dir.display()
                    ),
                },
            ));
        }
        return Ok(());
    };
    if meta.is_dir() {
        return Err(invalid(
            out,
            "is a folder; give the export file's path (e.g. model.safetensors)",
        ));
    }
    // A pipe or a device (never read: reading a pipe this process writes would wait forever).
    if !meta.is_file() {
        return Err(invalid(
            out,
            "is not a regular file (a pipe or a device); an export is written to a file, \
             replaced whole: give a file's path",
        ));
    }
    let checkpoint = crate::checkpoint::resolve(checkpoint).unwrap_or(checkpoint.to_path_buf());
    if let (Ok(a), Ok(b)) = (out.canonicalize(), checkpoint.canonicalize()) {
        if a == b {
            return Err(invalid(
                out,
                "is the checkpoint being exported: writing there would destroy it; pick another --out",
            ));
        }
    }
    let is_export = crate::checkpoint::Checkpoint::read_metadata(out)
        .is_ok_and(|m| m.get("format").map(String::as_str) == Some(FORMAT));
    if !is_export {
        return Err(invalid(
            out,
            "already exists and is not a dst export; `dst export` replaces only its own files: \
             remove it or pick another --out",
        ));
    }
    Ok(())
}

/// `dst export`: writes the export and prints what each masked layer keeps and the sizes.
pub fn run(checkpoint: &Path, format: &str, out: &Path) -> anyhow::Result<()> {
    let layout = Layout::parse(format).map_err(anyhow::Error::msg)?;
    let r = export(checkpoint, layout, out)?;
    let width = r
        .layers
        .iter()
        .map(|l| l.0.len())
        .max()
        .unwrap_or(0)
        .max(20);
    for (name, kept, total) in &r.layers {
        println!(
            "{name:<width$} {kept:>8} of {total:>8} kept ({}%)",
            crate::report::share(*kept as u64, *total as u64, 100.0, 2)
        );
    }
    if let Some(note) = policy_note(r.resets, r.policy) {
        println!("{note}");
    }
    println!(
        "{} export of {} -> {}: {} bytes; dense f32 {} bytes ({})",
        r.layout.name(),
        r.model,
        out.display(),
        r.file_bytes,
        r.dense_f32_bytes,
        if r.layout == Layout::Csr && r.layers.is_empty() {
            "a dense run: it has no masks, so every tensor is stored dense".to_string()
        } else {
            size_note(r.file_bytes, r.dense_f32_bytes, r.layout)
        }
    );
    Ok(())
}

/// (name, dtype, shape, bytes) of every stored tensor of `e`.
fn stored(e: &Entry) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    match &e.value {
        Value::Dense(v) => vec![(
            e.name.clone(),
            Dtype::F32,
            e.shape.clone(),
            bytemuck::cast_slice(v).to_vec(),
        )],
        Value::Int(i) => vec![(e.name.clone(), Dtype::I64, vec![], i.to_le_bytes().to_vec())],
        Value::Csr(c) => {
            let crow_t = csr::index_dtype(c.nnz() as u64);
            let col_t = csr::index_dtype(c.cols.saturating_sub(1) as u64);
            vec![
                (
                    format!("{}.crow_indices", e.name),
                    crow_t,
                    vec![c.rows + 1],
                    csr::encode_indices(&c.crow, crow_t),
                ),
                (
                    format!("{}.col_indices", e.name),
                    col_t,
                    vec![c.nnz()],
                    csr::encode_indices(&c.col, col_t),
                ),
                (
                    format!("{}.values", e.name),
                    Dtype::F32,
                    vec![c.nnz()],
                    bytemuck::cast_slice(&c.val).to_vec(),
                ),
            ]
        }
    }
}

/// SHA-256 over every stored tensor in name order: name, dtype, shape, bytes.
fn digest(tensors: &BTreeMap<String, (Dtype, Vec<usize>, &[u8])>) -> String {
    let mut h = Sha256::new();
    for (name, (dtype, shape, bytes)) in tensors {
        h.update(format!("{name}\0{dtype:?}\0{shape:?}\0{}\0", bytes.len()).as_bytes());
        h.update(bytes);
    }
    crate::data::fetch::hex(&h.finalize())
}

/// The safetensors bytes of an export, with metadata: `format`, `model`, `layout`, `order` (a JSON
/// list of every entry in layer order with its dense shape and storage), one `<name>.shape` per
/// CSR entry, `dense_f32_bytes`, `sha256` (of the tensors) and `metadata_sha256` (of the rest).
pub fn serialize(export: &Export) -> Result<Vec<u8>, String> {
    let all: Vec<_> = export.entries.iter().flat_map(stored).collect();
    let map: BTreeMap<String, (Dtype, Vec<usize>, &[u8])> = all
        .iter()
        .map(|(n, d, s, b)| (n.clone(), (*d, s.clone(), b.as_slice())))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("model".into(), export.model.clone());
    meta.insert("layout".into(), export.layout.name().to_string());
    let order: Vec<serde_json::Value> = export
        .entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "shape": e.shape,
                "storage": match e.value {
                    Value::Dense(_) => "dense",
                    Value::Csr(_) => "csr",
                    Value::Int(_) => "i64",
                },
            })
        })
        .collect();
    meta.insert("order".into(), serde_json::Value::Array(order).to_string());
    for e in &export.entries {
        if let Value::Csr(_) = e.value {
            meta.insert(
                format!("{}.shape", e.name),
                serde_json::to_string(&e.shape).unwrap(),
            );
        }
    }
    if let Some(d) = &export.data {
        meta.insert("data".into(), d.clone());
    }
    meta.insert(
        "dense_f32_bytes".into(),
        export.dense_f32_bytes().to_string(),
    );
    meta.insert("sha256".into(), digest(&map));
    // And one of the rest of the metadata (the tensors' hash included), as a checkpoint has: an
    // edited layout, order or shape is refused like an edited tensor.
    let meta_hash = crate::checkpoint::metadata_sha256(&meta);
    meta.insert(crate::checkpoint::META_HASH_KEY.into(), meta_hash);
    let views = all
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

/// Reads and checks an export file; every refusal happens here, before any GPU work.
pub fn load(path: &Path) -> Result<Export, ExportError> {
    if path.is_dir() {
        return Err(invalid(
            path,
            "is a folder; give an export file (`dst export` writes one, e.g. model.safetensors)",
        ));
    }
    let data = std::fs::read(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&data, path)
}

/// `load` on bytes already read (`path` names them in errors).
pub fn parse(data: &[u8], path: &Path) -> Result<Export, ExportError> {
    let bad = |r: String| invalid(path, r);
    // A text file or a header length the file cannot hold: said as such (what the file holds).
    let prefix = &data[..data.len().min(crate::checkpoint::PREFIX)];
    crate::checkpoint::header_len(path, prefix, data.len() as u64).map_err(|e| match e {
        // A run's text file: its folder's checkpoint is exported first (infer reads exports).
        CheckpointError::NotSafetensors { what, sibling, .. } => bad(format!(
            "not a safetensors file: {what}{}",
            sibling.map_or(String::new(), |c| format!(
                "; export its folder's checkpoint first: `dst export {} --out FILE`",
                crate::report::shell_word(&c)
            ))
        )),
        CheckpointError::Format { reason, .. } => bad(format!(
            "not a valid safetensors file (truncated or damaged? {reason})"
        )),
        e => e.into(),
    })?;
    let (_, header) = SafeTensors::read_metadata(data).map_err(|e| {
        bad(format!(
            "not a valid safetensors file ({})",
            crate::checkpoint::damage(&e)
        ))
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(crate::checkpoint::FORMAT) => {
            return Err(bad(
                "this is a dst training checkpoint, not an export; run `dst export` on it first"
                    .into(),
            ))
        }
        other => {
            return Err(bad(format!(
                "not a dst export ({}, where a dst export has \"{FORMAT}\")",
                match other {
                    Some(f) => format!("its metadata `format` is \"{f}\""),
                    None => "it has no metadata `format`".to_string(),
                }
            )))
        }
    }
    let st = SafeTensors::deserialize(data).map_err(|e| {
        bad(format!(
            "not a valid safetensors file ({})",
            crate::checkpoint::damage(&e)
        ))
    })?;
    let mut map = BTreeMap::new();
    for (name, view) in st.tensors() {
        map.insert(name, (view.dtype(), view.shape().to_vec(), view.data()));
    }
    let want = meta
        .get("sha256")
        .ok_or_else(|| bad("metadata `sha256` is missing".into()))?;
    if digest(&map) != *want {
        return Err(bad(
            "the tensors do not match the file's SHA-256 (the file was modified or damaged)".into(),
        ));
    }
    // The metadata's hash, required like the tensors' (a file without it taken as an older
    // export would let any edit of the metadata through once the hash was deleted).
    let key = crate::checkpoint::META_HASH_KEY;
    match meta.get(key) {
        Some(want) if *want == crate::checkpoint::metadata_sha256(&meta) => {}
        Some(_) => {
            return Err(bad(format!(
                "its metadata (model, layout, order, shapes) does not match the SHA-256 in \
                 `{key}`: the file was modified or damaged"
            )))
        }
        None => {
            return Err(bad(format!(
                "metadata `{key}` is missing: the file was modified or damaged, or a dst older \
                 than that hash wrote it (export the checkpoint again)"
            )))
        }
    }
    let model = meta.get("model").cloned().unwrap_or_default();
    let specs = model_params(&model).map_err(|e| bad(format!("metadata `model`: {e}")))?;
    let layout = Layout::parse(meta.get("layout").map(String::as_str).unwrap_or(""))
        .map_err(|e| bad(format!("metadata `layout`: {e}")))?;
    // The entries a model's export holds, in order, with their shapes.
    let expected = export_entries(&specs);
    let mut used = 0usize;
    let mut entries = Vec::new();
    let f32s = |name: &str, shape: Option<&[usize]>| -> Result<Vec<f32>, ExportError> {
        let (dtype, s, bytes) = map
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        if *dtype != Dtype::F32 {
            return Err(bad(format!("tensor {name} is {dtype:?}, expected F32")));
        }
        if let Some(shape) = shape {
            if s != shape {
                return Err(bad(format!(
                    "tensor {name} has shape {s:?}, {model} expects {shape:?}"
                )));
            }
        }
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("tensor {name}[{i}] is not finite")));
        }
        Ok(v)
    };
    for (name, shape, companion) in expected {
        if companion == Companion::Steps {
            let (dtype, s, bytes) = map
                .get(&name)
                .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
            if *dtype != Dtype::I64 || !s.is_empty() {
                return Err(bad(format!(
                    "tensor {name} is {dtype:?} of shape {s:?}, expected an I64 scalar"
                )));
            }
            let v = i64::from_le_bytes((*bytes).try_into().map_err(|_| {
                bad(format!(
                    "tensor {name} holds {} bytes, expected 8",
                    bytes.len()
                ))
            })?);
            if v < 0 {
                return Err(bad(format!(
                    "tensor {name} is {v}: a count of steps, never negative"
                )));
            }
            used += 1;
            entries.push(Entry {
                name,
                shape,
                value: Value::Int(v),
            });
            continue;
        }
        let rows = shape[0];
        let cols = shape[1..].iter().product::<usize>();
        let value = if map.contains_key(&name) {
            used += 1;
            Value::Dense(f32s(&name, Some(&shape))?)
        } else if map.contains_key(&format!("{name}.values")) && shape.len() >= 2 {
            used += 3;
            let idx = |part: &str| -> Result<Vec<u64>, ExportError> {
                let n = format!("{name}.{part}");
                let (dtype, s, bytes) = map
                    .get(&n)
                    .ok_or_else(|| bad(format!("tensor {n} is missing")))?;
                if s.len() != 1 {
                    return Err(bad(format!(
                        "tensor {n} has shape {s:?}, expected one dimension"
                    )));
                }
                csr::decode_indices(bytes, *dtype)
                    .ok_or_else(|| bad(format!("tensor {n} is {dtype:?}, expected U8, U16 or U32")))
            };
            let (crow, col) = (idx("crow_indices")?, idx("col_indices")?);
            let val = f32s(&format!("{name}.values"), None)?;
            let declared = meta.get(&format!("{name}.shape"));
            if declared.map(|d| serde_json::from_str::<Vec<usize>>(d).ok())
                != Some(Some(shape.clone()))
            {
                let declared = declared.map_or("missing".into(), |d| d.to_string());
                return Err(bad(format!(
                    "metadata `{name}.shape` is {declared}, {model} expects {shape:?}"
                )));
            }
            let c = Csr::from_parts(rows, cols, &crow, &col, val)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            Value::Csr(c)
        } else {
            return Err(bad(format!(
                "tensor {name} is missing (neither dense nor CSR): not an export of {model}?"
            )));
        };
        if name.ends_with(".running_var") {
            if let Some(i) = value_slice(&value).iter().position(|&v| v < 0.0) {
                return Err(bad(format!(
                    "tensor {name}[{i}] is negative: a batch norm's running variance never is"
                )));
            }
        }
        entries.push(Entry { name, shape, value });
    }
    if used != map.len() {
        let known: Vec<&String> = map.keys().collect();
        return Err(bad(format!(
            "{} tensor(s) that {model} does not have: {known:?}",
            map.len() - used
        )));
    }
    Ok(Export {
        model,
        layout,
        entries,
        data: meta.get("data").cloned(),
    })
}
