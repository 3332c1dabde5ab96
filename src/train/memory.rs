//! `dst info --model M --batch B`: the GPU memory a model needs for training at a batch size,
//! measured by building it on the adapter (the parameter arenas, the layers' own buffers, the
//! training and evaluation plans' activations), with no data read and no step run.

use crate::data::Dataset;
use crate::gpu::Gpu;
use crate::nn::Mode;

use super::{Session, TrainConfig, TrainError};

/// Bytes of each part of a model on the GPU.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    pub model: String,
    pub masked: bool,
    pub batch: usize,
    /// Parameters (weights, biases, thresholds), as a count (the arena adds alignment padding).
    pub params: usize,
    /// Parameters, gradients, optimiser state (momentum, or Adam's two moments) and layer state
    /// (batch norm's running statistics).
    pub arena_bytes: u64,
    /// Everything else the model and the kernels own (masks, masked weights, counters).
    pub other_bytes: u64,
    /// Resident data, per image (pixels, label, permutation entry).
    pub data_bytes_per_image: u64,
    /// The activations (and scratch) of one training step and of one evaluation batch; the
    /// training step's includes what its plan allocates for the layers (a masked conv's or LSTM's
    /// lists of kept weights).
    pub train_bytes: u64,
    pub eval_bytes: u64,
    /// Images per evaluation batch (500, or fewer where that would not fit one buffer).
    pub eval_batch: usize,
    /// The largest single buffer (bytes, label), and the adapter's limit for one.
    pub largest: (u64, String),
    pub limit: u64,
}

impl MemoryReport {
    /// Total for training on `images` resident images (train and test sets together).
    pub fn total(&self, images: u64) -> u64 {
        self.arena_bytes
            + self.other_bytes
            + self.train_bytes
            + self.eval_bytes
            + self.data_bytes_per_image * images
    }

    /// The report as lines of text, the data line for `images` resident images, named by `what`
    /// (e.g. "full MNIST's 70000 images").
    pub fn lines(&self, images: u64, what: &str) -> Vec<String> {
        let mib = |b: u64| format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64);
        vec![
            format!(
                "GPU memory of {} ({}) at batch {}:",
                self.model,
                if self.masked { "DST" } else { "dense" },
                self.batch
            ),
            format!(
                "  parameters      {}{}; with gradients and optimiser state: {}",
                self.params,
                if self.masked {
                    " (thresholds included)"
                } else {
                    ""
                },
                mib(self.arena_bytes)
            ),
            format!(
                "  layer buffers   {} (masks, masked weights, counters, lists of kept weights, kernel scratch)",
                mib(self.other_bytes)
            ),
            format!(
                "  activations     {} per training step, {} per evaluation batch of {}",
                mib(self.train_bytes),
                mib(self.eval_bytes),
                self.eval_batch
            ),
            "                  (scratch included; CPU adapters: patch matrices, lists of kept weights)"
                .to_string(),
            format!(
                "  data            {} bytes per resident image: {} for {what}",
                self.data_bytes_per_image,
                mib(self.data_bytes_per_image * images)
            ),
            format!(
                "  total           {}; largest single buffer {} ({}; this adapter allows {})",
                mib(self.total(images)),
                mib(self.largest.0),
                self.largest.1,
                mib(self.limit)
            ),
        ]
    }
}

/// Builds `model` (DST unless `dense`) with its default optimiser on `gpu` and the plans of a
/// training step and an evaluation batch at `batch`, and measures what each part allocates. A
/// batch whose activations cannot fit one buffer of this adapter fails with a message naming the
/// buffer and `--batch`.
pub fn measure(
    gpu: Gpu,
    model: &str,
    batch: usize,
    dense: bool,
) -> Result<MemoryReport, TrainError> {
    let cfg = TrainConfig {
        batch,
        dense,
        // Any folder: no data is read, but a CIFAR-10 model refuses to run on none.
        data: Some(".".into()),
        ..TrainConfig::for_model(model)?
    };
    cfg.validate()?;
    let adam = cfg.optimizer().is_adam();
    let a0 = gpu.allocated();
    let session = Session::new(gpu, model, !dense, cfg.seed, adam)?;
    let g = &session.gpu;
    let arena = &session.model.arena;
    let arena_bytes = 4 * [
        &arena.params,
        &arena.grads,
        &arena.moment1,
        &arena.moment2,
        &arena.state,
    ]
    .iter()
    .map(|t| t.len() as u64)
    .sum::<u64>();
    let a1 = g.allocated();
    let images = batch.max(super::session::EVAL_BATCH);
    let kind = crate::models::info(model)?.dataset;
    // Images of the model's dataset's shape (lenet300 reads its 28x28 images flat).
    let [channels, rows, cols] = kind.shape();
    let ds = Dataset {
        images: vec![0; images * channels * rows * cols],
        labels: vec![0; images],
        count: images,
        rows,
        cols,
        classes: session.model.classes,
        channels,
        normalize: None,
        // Training batches of CIFAR-10 go through the crop-and-flip gather.
        augment: kind == crate::data::DatasetKind::Cifar10,
    };
    let data = session.upload("memory", &ds)?;
    let a2 = g.allocated();
    let alpha = if dense { 0.0 } else { cfg.alpha as f32 };
    let train = session.plan(&data, batch, Mode::Train, alpha, cfg.optimizer())?;
    let train_bytes = g.allocated() - a2;
    // The evaluation batch the trainer would use (500, or fewer where that cannot fit); measured
    // on a second build at that batch, since failed larger attempts allocated too.
    let eval_batch = session.eval_plan(&data, alpha)?.batch;
    let a3 = g.allocated();
    let eval = session.plan(&data, eval_batch, Mode::Eval, alpha, cfg.optimizer())?;
    let a4 = g.allocated();
    drop((train, eval));
    Ok(MemoryReport {
        model: model.to_string(),
        masked: !dense,
        batch,
        params: arena.layout.entries.iter().map(|e| e.len()).sum(),
        arena_bytes,
        other_bytes: (a1 - a0).saturating_sub(arena_bytes),
        data_bytes_per_image: (a2 - a1) / images as u64,
        train_bytes,
        eval_bytes: a4 - a3,
        eval_batch,
        largest: g.largest(),
        limit: g.max_binding(),
    })
}
