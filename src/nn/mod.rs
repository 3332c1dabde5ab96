//! Layers. Each layer declares its parameters in the arena, owns its derived buffers, and records
//! its forward and backward dispatches into a plan. A new layer type is one new module here (and
//! one WGSL family); the plan builder and the trainer do not change.

pub mod arena;
pub mod batchnorm;
pub mod conv;
pub mod linear;
pub mod lstm;
pub mod mask;
pub mod pool;
pub mod relu;
pub mod residual;

pub use arena::{Arena, ArenaBuilder, Init, ParamId, StateId, Which};

use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::{Dispatch, Kernels, StepRing};

/// What a plan is being built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// The context a layer records into: device, kernels, arena, and the growing dispatch list.
pub struct PlanCx<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
    pub arena: &'a Arena,
    pub step: &'a StepRing,
    pub mode: Mode,
    /// The DST penalty weight (0 for dense models); the penalty uses `alpha * alpha_scale[0]`.
    pub alpha: f32,
    /// A one-element buffer scaling alpha (the trainer's target-keep control; 1.0 by default).
    pub alpha_scale: Tensor,
    /// What a masked matrix's dead-layer check does (the paper's reset by default).
    pub reset: crate::kernels::masked::ResetPolicy,
    /// The loss stats buffer of this plan (see `kernels::loss::STATS_WORDS`).
    pub stats: Tensor,
    /// Masked linear layers that keep at most this fraction of their weights compute their
    /// forward and input-gradient products from the kept weights only (0: never).
    pub sparse_keep: f64,
    /// The same for masked convolutions (on the patch-matrix path; 0: never).
    pub sparse_keep_conv: f64,
    /// The same for masked LSTM layers' recurrent steps (0: never).
    pub sparse_keep_lstm: f64,
    /// ... and those whose batch input is at most this fraction nonzero compute their forward
    /// from the input's nonzeros (0: never).
    pub sparse_input: f64,
    pub dispatches: Vec<Dispatch>,
    /// The layer that recorded each dispatch ("" for the plan's own: gather, loss, optimiser).
    pub owners: Vec<String>,
    /// The layer now recording (`Plan::build` sets it around each layer's calls).
    pub layer: String,
    /// SGD's (momentum, weight decay) when a layer may update a weight itself, fused into its
    /// weight-gradient product (training plans with SGD); the plan's optimiser pass then skips
    /// the weights in `self_updated`.
    pub fused_sgd: Option<(f32, f32)>,
    /// Parameters a layer's fused product updated (`claim_update`).
    pub self_updated: Vec<ParamId>,
    /// Whether the layer being recorded reads the plan's input (no gradient to its input: a
    /// training plan's backward asks every other layer for one).
    pub first_layer: bool,
    prefix: String,
    /// Buffers a layer's forward keeps for its backward (gates, states), by key.
    saved: std::collections::HashMap<String, Tensor>,
}

impl<'a> PlanCx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &'a Gpu,
        kernels: &'a Kernels,
        arena: &'a Arena,
        step: &'a StepRing,
        mode: Mode,
        alpha: f32,
        stats: Tensor,
    ) -> Self {
        PlanCx {
            gpu,
            kernels,
            arena,
            step,
            mode,
            alpha,
            alpha_scale: kernels.masked.one.clone(),
            reset: crate::kernels::masked::ResetPolicy::Paper,
            stats,
            sparse_keep: 0.0,
            sparse_keep_conv: 0.0,
            sparse_keep_lstm: 0.0,
            sparse_input: 0.0,
            dispatches: Vec::new(),
            owners: Vec::new(),
            layer: String::new(),
            fused_sgd: None,
            self_updated: Vec::new(),
            first_layer: false,
            prefix: format!("{mode:?}").to_lowercase(),
            saved: Default::default(),
        }
    }

    /// This plan's name for a per-plan buffer or setting of a layer.
    pub fn label(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub fn push(&mut self, d: Dispatch) {
        self.dispatches.push(d);
        self.owners.push(self.layer.clone());
    }

    /// Records that a dispatch of this plan applies the optimiser step to `id` itself (its
    /// gradient is never written): the plan's optimiser pass leaves it alone.
    pub fn claim_update(&mut self, id: ParamId) {
        assert!(
            self.fused_sgd.is_some() && !self.self_updated.contains(&id),
            "parameter {id:?} updated twice or without a fused optimiser"
        );
        self.self_updated.push(id);
    }

    /// Keeps `t` under `key` (e.g. `"lstm1.gates"`) for this plan's backward.
    pub fn save(&mut self, key: &str, t: Tensor) {
        assert!(
            self.saved.insert(key.to_string(), t).is_none(),
            "{key} saved twice in one plan"
        );
    }

    /// Whether the forward kept a buffer under `key`.
    pub fn has_saved(&self, key: &str) -> bool {
        self.saved.contains_key(key)
    }

    /// A buffer the forward kept under `key`.
    pub fn saved(&self, key: &str) -> Tensor {
        self.saved
            .get(key)
            .unwrap_or_else(|| panic!("{key} was not saved by the forward"))
            .clone()
    }

    /// The switch of `slots` dispatches the forward kept under `key` (its `args`), if any: the
    /// backward routes its own products through it.
    pub fn saved_switch(&self, key: &str, slots: usize) -> Option<crate::kernels::sparse::Switch> {
        self.has_saved(key).then(|| crate::kernels::sparse::Switch {
            args: self.saved(key),
            slots,
            sparse_max: 0,
        })
    }

    /// A new zero-filled activation buffer of this plan. One too large for a single buffer on
    /// this adapter fails here, while the plan is built (before any step), naming the buffer
    /// and the batch that asks for it.
    pub fn activation(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let label = format!("{}.{name}", self.prefix);
        Tensor::zeros(self.gpu, &label, shape).map_err(|e| match e {
            crate::gpu::GpuError::TooLarge { needed, limit, .. } => crate::gpu::GpuError::TooLarge {
                what: format!(
                    "the activation {label} {shape:?} (its size grows with the batch; use a smaller --batch)"
                ),
                needed,
                limit,
            },
            e => e,
        })
    }
}

/// One masked matrix, for metrics: its row view, thresholds and keep counters. A linear or conv
/// layer has one; an LSTM layer has eight (its gate matrices).
pub struct MaskView {
    /// `fc1`, `conv2`, `lstm1.wx_i`, ...
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// The threshold tensor and the range of its rows this matrix uses.
    pub threshold: ParamId,
    pub threshold_rows: std::ops::Range<usize>,
    /// [kept before the reset decision, kept after it, resets so far, spare] (u32): a 16-byte view
    /// (possibly at an unaligned offset: read it, never bind it).
    pub layer_keep: Tensor,
}

pub trait Layer {
    fn name(&self) -> &str;
    /// Per-sample output shape for a per-sample input shape.
    fn output_shape(&self, input: &[usize]) -> Vec<usize>;
    /// Records the forward of a batch `x` (batch first); returns the output.
    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor>;
    /// Records the backward: given the forward's input `x`, output `y` and `dy`, writes parameter
    /// gradients into the gradient arena and returns `dx` when `need_dx`.
    fn backward(
        &self,
        cx: &mut PlanCx<'_>,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>>;
    /// Records the layer's penalty value into the plan's stats (masked layers only).
    fn penalty(&self, _cx: &mut PlanCx<'_>) -> Result<()> {
        Ok(())
    }
    /// The layer's masked matrices (none for dense layers).
    fn mask_views(&self) -> Vec<MaskView> {
        Vec::new()
    }
    /// What the layer does beyond its name, for `dst info`'s list (a ReLU fused into a pool).
    fn note(&self) -> Option<&'static str> {
        None
    }
    /// The fewest samples a training batch must hold for this layer, given a per-sample input
    /// shape, with the layer that needs them (batch norm over one value per channel needs 2, as
    /// in PyTorch); None where any batch will do.
    fn min_train_batch(&self, _input: &[usize]) -> Option<(String, usize)> {
        None
    }
}
