//! Models as compositions of layers: the registry of names, their per-sample input, classes and
//! the paper's settings as defaults (METHOD.md section 5), and the builder that lays out their
//! parameter arena. One file per family of models (`lenet`: LeNet-300-100 and LeNet-5-Caffe;
//! `lstm`: LSTM-a and LSTM-b).

pub mod cifar;
pub mod lenet;
pub mod lstm;

use crate::data::DatasetKind;
use crate::gpu::Gpu;
use crate::nn::{Arena, ArenaBuilder, Layer, MaskView};

/// The paper's training settings of a model (METHOD.md section 5): what `dst train --model M`
/// uses for every flag that is not given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    pub optimizer: &'static str,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub batch: usize,
    pub epochs: usize,
    pub alpha: f64,
    /// Epochs after which the learning rate is multiplied by 0.1 (`--lr-steps`).
    pub lr_steps: &'static [usize],
}

/// A model family's builder: declares the parameters (`masked`: DST) and returns the layers.
type BuildFn = fn(&Gpu, &mut ArenaBuilder, bool) -> crate::gpu::Result<Vec<Box<dyn Layer>>>;

/// A model this build can train.
pub struct ModelInfo {
    pub name: &'static str,
    pub about: &'static str,
    /// Per-sample input shape.
    pub input: &'static [usize],
    pub classes: usize,
    /// The dataset it trains on: decides the loader, the input values (normalisation) and the
    /// training augmentation.
    pub dataset: DatasetKind,
    pub defaults: Defaults,
    /// Declares the parameters in the arena and returns the layers, in order.
    build: BuildFn,
}

const LENET_SGD: Defaults = Defaults {
    optimizer: "sgd",
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 0.0,
    batch: 64,
    epochs: 20,
    alpha: 5e-4,
    lr_steps: &[],
};

const LSTM_ADAM: Defaults = Defaults {
    optimizer: "adam",
    lr: 1e-3,
    momentum: 0.9,
    weight_decay: 0.0,
    batch: 100,
    epochs: 20,
    alpha: 1e-4,
    lr_steps: &[],
};

/// The paper's CIFAR-10 settings (METHOD.md section 5): weight decay on every parameter,
/// thresholds included; lr x0.1 after epochs 80 and 120.
const CIFAR_SGD: Defaults = Defaults {
    optimizer: "sgd",
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 1e-4,
    batch: 64,
    epochs: 160,
    alpha: 5e-6,
    lr_steps: &[80, 120],
};

/// Every model, in the order `--help` lists them.
pub const MODELS: &[ModelInfo] = &[
    ModelInfo {
        name: "lenet300",
        about: "LeNet-300-100: FC 784-300-100-10, ReLU (MNIST)",
        input: &[784],
        classes: 10,
        dataset: DatasetKind::Mnist,
        defaults: LENET_SGD,
        build: lenet::lenet300,
    },
    ModelInfo {
        name: "lenet5",
        about: "LeNet-5-Caffe: conv 5x5 20, max-pool 2, conv 5x5 50, max-pool 2, FC 800-500-10, ReLU (MNIST)",
        input: &[1, 28, 28],
        classes: 10,
        dataset: DatasetKind::Mnist,
        defaults: LENET_SGD,
        build: lenet::lenet5,
    },
    ModelInfo {
        name: "lstm-a",
        about: "LSTM-a: 2 LSTM layers of 128 over 28 rows of 28 pixels, dense FC 128-10 (MNIST)",
        input: &[28, 28],
        classes: 10,
        dataset: DatasetKind::Mnist,
        defaults: LSTM_ADAM,
        build: lstm::lstm_a,
    },
    ModelInfo {
        name: "lstm-b",
        about: "LSTM-b: 2 LSTM layers of 256 over 28 rows of 28 pixels, dense FC 256-10 (MNIST)",
        input: &[28, 28],
        classes: 10,
        dataset: DatasetKind::Mnist,
        defaults: LSTM_ADAM,
        build: lstm::lstm_b,
    },
    ModelInfo {
        name: "vgg16",
        about: "VGG-16: 13 conv 3x3 with batch norm, 4 max-pools, FC 512-512-10 (CIFAR-10)",
        input: &[3, 32, 32],
        classes: 10,
        dataset: DatasetKind::Cifar10,
        defaults: CIFAR_SGD,
        build: cifar::vgg16,
    },
    ModelInfo {
        name: "wrn-16-8",
        about: "WRN-16-8: pre-activation wide ResNet, depth 16, widths 128/256/512 (CIFAR-10)",
        input: &[3, 32, 32],
        classes: 10,
        dataset: DatasetKind::Cifar10,
        defaults: CIFAR_SGD,
        build: cifar::wrn16_8,
    },
    ModelInfo {
        name: "wrn-16-1",
        about: "WRN-16-1: WRN-16-8 at width factor 1 (widths 16/32/64), for quick runs (CIFAR-10)",
        input: &[3, 32, 32],
        classes: 10,
        dataset: DatasetKind::Cifar10,
        defaults: CIFAR_SGD,
        build: cifar::wrn16_1,
    },
];

pub struct Model {
    pub name: String,
    pub masked: bool,
    /// Per-sample input shape.
    pub input: Vec<usize>,
    pub classes: usize,
    pub layers: Vec<Box<dyn Layer>>,
    pub arena: Arena,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; available: {available}")]
    Unknown { name: String, available: String },
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// The registry entry of `name`; an unknown name is an error that lists the models.
pub fn info(name: &str) -> std::result::Result<&'static ModelInfo, ModelError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::Unknown {
            name: name.to_string(),
            available: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        })
}

/// Checks a model name before any GPU work.
pub fn check_name(name: &str) -> std::result::Result<(), ModelError> {
    info(name).map(|_| ())
}

impl Model {
    /// Builds `name` (dense or masked) with parameters initialised from `seed`; `adam` allocates the
    /// second-moment arena.
    pub fn build(
        gpu: &Gpu,
        name: &str,
        masked: bool,
        seed: u64,
        adam: bool,
    ) -> std::result::Result<Model, ModelError> {
        let info = info(name)?;
        let mut ab = ArenaBuilder::default();
        let layers = (info.build)(gpu, &mut ab, masked)?;
        let layout = ab.layout(gpu.limits.min_storage_buffer_offset_alignment as u64);
        let initial = layout.init(seed);
        let arena = Arena::new(gpu, layout, &initial, adam)?;
        Ok(Model {
            name: name.to_string(),
            masked,
            input: info.input.to_vec(),
            classes: info.classes,
            layers,
            arena,
        })
    }

    pub fn mask_views(&self) -> Vec<MaskView> {
        self.layers.iter().flat_map(|l| l.mask_views()).collect()
    }

    /// Names and shapes of every parameter, in arena order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.arena
            .layout
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect()
    }

    /// The fewest samples a training batch must hold, with the first layer that needs them
    /// (`Layer::min_train_batch`); None where any batch will do.
    pub fn min_train_batch(&self) -> Option<(String, usize)> {
        let mut shape = self.input.clone();
        let mut need: Option<(String, usize)> = None;
        for l in &self.layers {
            if let Some((name, n)) = l.min_train_batch(&shape) {
                if need.as_ref().is_none_or(|(_, m)| n > *m) {
                    need = Some((name, n));
                }
            }
            shape = l.output_shape(&shape);
        }
        need
    }

    /// One line per layer: name, per-sample output shape, parameters (masked or dense).
    pub fn describe(&self) -> Vec<String> {
        let mut shape = self.input.clone();
        let mut out = Vec::new();
        let w = name_width(self.layers.iter().map(|l| l.name()));
        for l in &self.layers {
            shape = l.output_shape(&shape);
            let masked: usize = l.mask_views().iter().map(|v| v.rows * v.cols).sum();
            out.push(format!(
                "{:<w$} -> {:?}{}{}",
                l.name(),
                shape,
                if masked > 0 {
                    format!("  ({masked} masked weights)")
                } else {
                    String::new()
                },
                l.note().map(|n| format!("  ({n})")).unwrap_or_default()
            ));
        }
        out
    }
}

/// The width of a table's layer-name column: the longest of `names`, at least 8 (`dst info`'s
/// layer list, `dst eval`'s table).
pub fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max(8)
}
