//! Fully connected layer, dense or DST-masked (shaders/gemm.wgsl, shaders/masked.wgsl).
//!
//! Masked forward: `mask_forward` + `mask_reset` produce P = W * M (and the keep counts), then
//! `Y = X P^T + b`. Backward: `dX = dY P`, `dP = dY^T X`, then `mask_backward` turns dP into dW and
//! dt in one pass; `db = sum_rows dY`. In a training plan with SGD on a CPU adapter, `dP = dY^T X`,
//! the mask's backward and W's SGD step are one product (`gemm_tn_sgd`, which never writes dP or
//! dW) and `threshold_grad` finishes dt; the plan's optimiser pass then skips W.
//!
//! Sparse products (beyond the paper, which only simulates sparsity): a masked layer that keeps
//! at most `PlanCx::sparse_keep` of its weights computes `Y = X P^T + b` and `dX = dY P` from
//! lists of P's nonzeros (shaders/sparse.wgsl, `ell_*`) instead of the dense GEMMs. Both ways are
//! recorded; the mask pass picks one per step on the GPU from the layer's keep count
//! (`kernels::sparse::Switch`). `dP = dY^T X` stays dense: the long-tailed estimator sends
//! gradient to every weight, kept or not. Where its input is mostly zeros (MNIST's pixels), such
//! a layer computes the forward from the lists of the inputs nonzero in each block of 8 samples
//! instead, whichever of the other two the mask pass chose (`PlanCx::sparse_input`;
//! `input_lists` decides per step on the GPU, `ell_input_product` reads P^T; where at most
//! 40 % of P's rows keep a weight, over those rows only: `compact_columns`,
//! `ell_input_product_compacted`), and `dP = dY^T X` from the lists of the samples nonzero in
//! each block of 8 inputs (`gemm_tn_sgd_listed`). On CPU adapters the plan's first layer takes
//! the compacted product at every step and writes no P^T (`Linear::forward_counted`); so does a
//! masked layer too small for the sparse products (LeNet-300-100's fc2), whose product to the
//! input, after a ReLU, reads the same compacted columns (`Linear::small_input_sparse`,
//! `ordered_input_grad`).
//!
//! A dense layer as large as the sparse products ask (LeNet-300-100's fc1 in `--dense` runs)
//! takes the same compacted forward from its input's nonzeros on CPU adapters when it is the
//! plan's first layer, from W^T written each pass (`Linear::dense_input_sparse`).

use super::mask::Mask;
use super::{ArenaBuilder, Init, Layer, MaskView, ParamId, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::gemm::KLists;
use crate::kernels::sparse::{Compaction, EllLists, InputLists, ListedProduct, Path, Switch};

/// Dispatches a switch routes: forward (lists, x feature-major, product | GEMM), the product
/// to the input (lists, dy feature-major, product | GEMM), the forward from the input's
/// nonzeros (slot `INPUT_SLOT`) and the same over the rows of P that keep a weight (the copy of
/// their columns, the product: `COMPACT_SLOT`, `COMPACT_PRODUCT_SLOT`).
const SWITCH_SLOTS: usize = 11;

/// The switch slot of the input-sparse forward; slots below `FORWARD_SLOTS` are the forward's
/// other paths (the last: the dense GEMM), which it turns off when it runs.
const INPUT_SLOT: usize = 8;
const FORWARD_SLOTS: usize = 4;
const COMPACT_SLOT: usize = 9;
const COMPACT_PRODUCT_SLOT: usize = 10;

/// The input-sparse forward runs over the rows of P that keep a weight, from a copy of their
/// columns of P^T, where at most this fraction of the rows do (DST prunes whole rows: 199 of
/// fc1's 300 at 8 % kept). On lavapipe the copy costs about what the plain product spends on a
/// third of the rows (fc1: 0.28 against 0.8 ms, `dst bench --profile`), and both the copy and
/// the compacted product go by workgroups of 64 rows. (On CPU adapters a first layer's mask
/// pass only counts and `masked_columns` writes the compacted columns from W, for what P^T would
/// cost: there the compacted product always runs instead of the plain one, the same values for
/// any number of such rows.)
const COMPACT_MAX_ROWS: f64 = 0.4;

/// Layers with fewer weights keep the dense products only (LeNet-300-100's fc2 and fc3, LeNet-5's
/// fc4): on lavapipe fc2's listed products pay only below about 20 % kept (`dst bench`'s fc2
/// table), where DST's paper settings leave it at 21-23 %, and a switch would add routed
/// dispatches (about 30 us each there, run or not) and lose the ReLU backward fused into the
/// product to the input to every step.
pub const SPARSE_MIN_WEIGHTS: usize = 65_536;

/// Masked layers with fewer outputs (and fewer than `SPARSE_MIN_WEIGHTS` weights) store P as W
/// is stored, not transposed: the CPU adapters' vec4 products go by blocks of 64 outputs.
const NARROW_OUTPUTS: usize = 64;

pub struct Linear {
    name: String,
    pub in_features: usize,
    pub out_features: usize,
    weight: ParamId,
    bias: ParamId,
    mask: Option<Mask>,
    /// P's nonzeros as lists, for the sparse products (a layer on a GPU, where they are off by
    /// default, holds them only if a plan asks for them).
    lists: std::sync::OnceLock<EllLists>,
    /// A ReLU after the layer, fused into its products (`with_relu`).
    relu: bool,
    /// For a dense layer large enough for the input-sparse forward (`dense_input_sparse`): one
    /// value per row, -1.0, which serves as the rows' counts for `input_lists` (nonzero: every
    /// row computes) and as thresholds for `masked_columns` (|w| - (-1) > 0 for every finite w:
    /// P^T = W^T, bit for bit).
    all_rows: Option<Tensor>,
}

impl Linear {
    /// Declares weight (out x in), bias (out) and, when masked, threshold (out) in the arena, with
    /// PyTorch's default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, thresholds 0.
    pub fn declare(
        arena: &mut ArenaBuilder,
        name: &str,
        in_features: usize,
        out_features: usize,
        masked: bool,
    ) -> (ParamId, ParamId, Option<ParamId>) {
        let bound = 1.0 / (in_features as f64).sqrt();
        let w = arena.param(
            &format!("{name}.weight"),
            &[out_features, in_features],
            Init::Uniform(bound),
        );
        let b = arena.param(
            &format!("{name}.bias"),
            &[out_features],
            Init::Uniform(bound),
        );
        let t =
            masked.then(|| arena.param(&format!("{name}.threshold"), &[out_features], Init::Zeros));
        (w, b, t)
    }

    pub fn new(
        gpu: &Gpu,
        name: &str,
        in_features: usize,
        out_features: usize,
        ids: (ParamId, ParamId, Option<ParamId>),
    ) -> Result<Linear> {
        let numel = out_features * in_features;
        // P transposed (`in x out`) for the fast forward over wide outputs; a narrow layer that
        // the sparse products never take (a classifier's 10 outputs) keeps W's layout, whose
        // forward is the dense layer's vec4 product (`gemm_nt_vec4`: 0.15 against 0.25 ms for
        // the narrow transposed form, `gemm_small`, LeNet-300-100's fc3 on lavapipe).
        let transposed = out_features >= NARROW_OUTPUTS || numel >= SPARSE_MIN_WEIGHTS;
        let mask = ids
            .2
            .map(|t| {
                Mask::new(
                    gpu,
                    name,
                    t,
                    &[out_features, in_features],
                    out_features,
                    1,
                    transposed,
                )
            })
            .transpose()?;
        // Allocated with the layer where this adapter's default uses them (so that `dst info`
        // counts them with the layer's buffers), else by the first plan that asks for them.
        let lists = std::sync::OnceLock::new();
        if mask.is_some()
            && numel >= SPARSE_MIN_WEIGHTS
            && crate::kernels::sparse::default_sparse_keep(gpu.class) > 0.0
        {
            let _ = lists.set(EllLists::new(gpu, name, out_features, in_features, true)?);
        }
        let all_rows =
            (ids.2.is_none() && numel >= SPARSE_MIN_WEIGHTS && out_features.is_multiple_of(4))
                .then(|| {
                    Tensor::from_slice(
                        gpu,
                        &format!("{name}.all_rows"),
                        &[out_features],
                        &vec![-1.0f32; out_features],
                    )
                })
                .transpose()?;
        Ok(Linear {
            name: name.to_string(),
            in_features,
            out_features,
            weight: ids.0,
            bias: ids.1,
            mask,
            lists,
            relu: false,
            all_rows,
        })
    }

    /// This layer followed by a ReLU, fused: the forward's products store `max(y, 0)` (one
    /// dispatch less than a separate ReLU layer) and the backward applies ReLU's derivative to
    /// `dy` first.
    pub fn with_relu(mut self) -> Linear {
        self.relu = true;
        self
    }

    /// This plan's switch, for a masked layer when the plan allows sparse products at all.
    fn switch(&self, cx: &PlanCx<'_>) -> Result<Option<Switch>> {
        let numel = self.out_features * self.in_features;
        let wanted = cx.sparse_keep > 0.0 || cx.sparse_input > 0.0;
        if self.mask.is_none() || !wanted || numel < SPARSE_MIN_WEIGHTS {
            return Ok(None);
        }
        let sparse_max = (cx.sparse_keep.min(1.0) * numel as f64).floor() as u32;
        let label = cx.label(&format!("{}.switch", self.name));
        Ok(Some(Switch::new(cx.gpu, &label, SWITCH_SLOTS, sparse_max)?))
    }

    /// Whether this layer's weight gradient skips the input's zeros (`PlanCx::sparse_input`): a
    /// layer, dense or masked, large enough for the sparse products. (Its forward does where the
    /// layer is also switched: the listed forward reads the transposed P a mask pass writes.)
    fn input_sparse_gradient(&self, cx: &PlanCx<'_>) -> bool {
        let numel = self.out_features * self.in_features;
        cx.sparse_input > 0.0 && numel >= SPARSE_MIN_WEIGHTS
    }

    /// The lists of P's nonzeros, allocated on first use.
    fn lists(&self, gpu: &Gpu) -> Result<&EllLists> {
        EllLists::in_cell(
            &self.lists,
            gpu,
            &self.name,
            self.out_features,
            self.in_features,
            true,
        )
    }

    /// Records the weight-gradient product fused with the weight's SGD step (and the mask's
    /// backward: dL/dt from the product's partial sums) where the plan allows it and the adapter
    /// has the kernel; `false`: nothing recorded, the caller records the unfused passes.
    fn fused_update(
        &self,
        cx: &mut PlanCx<'_>,
        dy: &Tensor,
        x2: &Tensor,
        d_bias: &Tensor,
    ) -> Result<bool> {
        let Some((momentum, weight_decay)) = cx.fused_sgd else {
            return Ok(false);
        };
        // `threshold_grad` writes dL/dt as vec4s.
        if let Some(m) = &self.mask {
            if !cx.arena.grad(m.threshold).offset.is_multiple_of(16) {
                return Ok(false);
            }
        }
        let (k, gpu) = (cx.kernels, cx.gpu);
        let parts = match &self.mask {
            Some(_) => Some(cx.activation(
                &format!("{}.d_threshold_parts", self.name),
                &[
                    crate::kernels::gemm::Gemm::dt_blocks(self.in_features),
                    self.out_features,
                ],
            )?),
            None => None,
        };
        let weight = cx.arena.param(self.weight);
        let velocity = cx.arena.view(super::Which::Moment1, self.weight);
        let threshold = self.mask.as_ref().map(|m| cx.arena.param(m.threshold));
        let target = crate::kernels::gemm::SgdTarget {
            weight: &weight,
            velocity: &velocity,
            momentum,
            weight_decay,
            mask: threshold.as_ref().zip(parts.as_ref()),
        };
        // The input's zeros skipped in dW = dY^T X: the lists the forward built
        // (`forward_counted`), or built here.
        let k_lists = if cx.has_saved(&self.k_lists_key()) {
            Some((cx.saved(&self.k_lists_key()), true))
        } else if self.input_sparse_gradient(cx) {
            Some((self.k_lists_buffer(cx, x2.shape[0])?, false))
        } else {
            None
        };
        let k_lists = k_lists.as_ref().map(|(l, built)| {
            if *built {
                KLists::Built(l)
            } else {
                KLists::Build(l)
            }
        });
        let Some(ds) = k
            .gemm
            .backward_weight_sgd(gpu, dy, x2, d_bias, &target, k_lists, cx.step, &k.dummy)?
        else {
            return Ok(false);
        };
        for d in ds {
            cx.push(d);
        }
        cx.claim_update(self.weight);
        if let (Some(m), Some(parts)) = (&self.mask, &parts) {
            m.threshold_grad(cx, parts)?;
        }
        Ok(true)
    }

    /// dW (dP for a masked layer, turned into dW and dt by the mask's backward) and db, from the
    /// gradient of the pre-activation `dy` and the input `x2` (batch x in).
    fn backward_weight(&self, cx: &mut PlanCx<'_>, dy: &Tensor, x2: &Tensor) -> Result<()> {
        let (k, gpu) = (cx.kernels, cx.gpu);
        let d_bias = cx.arena.grad(self.bias);
        if self.fused_update(cx, dy, x2, &d_bias)? {
            return Ok(());
        }
        // A narrow masked layer (P stored as W is) on a CPU adapter: one dispatch for the
        // product, the mask's backward and db.
        if let Some(m) = &self.mask {
            if m.narrow_backward(cx, self.weight, dy, x2, &d_bias)? {
                return Ok(());
            }
        }
        let d_weight = match &self.mask {
            Some(_) => cx.activation(
                &format!("{}.d_masked_weight", self.name),
                &[self.out_features, self.in_features],
            )?,
            None => cx.arena.grad(self.weight),
        };
        for d in k
            .gemm
            .backward_weight_bias(gpu, dy, x2, &d_weight, &d_bias, &k.dummy)?
        {
            cx.push(d);
        }
        if let Some(m) = &self.mask {
            m.backward(cx, self.weight, &d_weight)?;
        }
        Ok(())
    }

    /// Records `input_lists` for this layer's input-sparse forward (`x2`: batch x in; the
    /// input-sparse product when the listed work is at most `input_max`, compacted when at most
    /// `max_active` rows keep a weight: `Sparse::input_lists`; without a switch, the compacted
    /// product at every step: `Sparse::input_lists_counted`), and returns the lists and the
    /// buffer of P^T's compacted columns (in x out).
    fn input_lists(
        &self,
        cx: &mut PlanCx<'_>,
        counts: &Tensor,
        sw: Option<&Switch>,
        x2: &Tensor,
        input_max: u32,
        max_active: u32,
    ) -> Result<(InputLists, Tensor)> {
        let (batch, n) = (x2.shape[0], self.out_features);
        let il = InputLists::new(
            cx.gpu,
            &cx.label(&format!("{}.input_lists", self.name)),
            batch,
            self.in_features,
            n,
        )?;
        let compaction = Compaction {
            row_counts: counts,
            max_active,
            slot: COMPACT_SLOT,
            product_slot: COMPACT_PRODUCT_SLOT,
        };
        let sp = &cx.kernels.sparse;
        let d = match sw {
            Some(sw) => sp.input_lists(
                cx.gpu,
                x2,
                &il,
                sw,
                input_max,
                FORWARD_SLOTS,
                INPUT_SLOT,
                Some(&compaction),
            )?,
            None => {
                // A training plan's fused, listed weight gradient reads the lists of the
                // samples nonzero per block of 8 inputs: built here, in the same dispatch.
                let k_lists = (cx.mode == super::Mode::Train
                    && cx.fused_sgd.is_some()
                    && self.input_sparse_gradient(cx)
                    && self.in_features.is_multiple_of(4)
                    && x2.offset.is_multiple_of(16))
                .then(|| self.k_lists_buffer(cx, x2.shape[0]))
                .transpose()?;
                let d = sp.input_lists_counted(cx.gpu, x2, &il, counts, k_lists.as_ref())?;
                if let Some(l) = k_lists {
                    cx.save(&self.k_lists_key(), l);
                }
                d
            }
        };
        cx.push(d);
        let pt_c = cx.activation(
            &format!("{}.pt_compacted", self.name),
            &[self.in_features, n],
        )?;
        Ok((il, pt_c))
    }

    /// The forward of a masked layer whose product to the input never reads P^T (the plan's
    /// first layer, or a plan without backward) on a CPU adapter, with the input-sparse forward
    /// on: the mask pass only counts (`mask_count_rowwise4`), `input_lists` orders the rows (those
    /// that keep a weight first), `masked_columns` writes those rows' columns of P^T from W and
    /// t, and the compacted product computes y from them: five direct dispatches with the mask
    /// pass's reset, none routed. The listed product runs at every input density: on lavapipe it beat
    /// the dense GEMM even on a dense input (`dst bench`'s fc1 table: 3.1 against 4.6 ms at
    /// density 1), and the compacted one gives the same values for any number of rows that keep
    /// a weight. P^T itself is not written: nothing in such a plan reads it.
    ///
    /// With `count_only` false (`small_input_sparse`: a layer whose product to the input reads
    /// P^T, one whose input is no ReLU's output), the mask pass writes P^T as well.
    fn forward_counted(
        &self,
        cx: &mut PlanCx<'_>,
        m: &Mask,
        sw: Option<&Switch>,
        x2: &Tensor,
        y: &Tensor,
        count_only: bool,
    ) -> Result<Tensor> {
        let (k, gpu) = (cx.kernels, cx.gpu);
        let sp = &k.sparse;
        let n = self.out_features;
        if count_only {
            m.forward_counting(cx, self.weight, sw)?;
        } else {
            m.forward(cx, self.weight)?;
        }
        let (il, pt_c) = self.input_lists(cx, &m.row_counts(), None, x2, u32::MAX, n as u32)?;
        // For the product to the input of a small layer (`ordered_input_grad`).
        cx.save(&self.compaction_key("order"), il.order.clone());
        cx.save(&self.compaction_key("columns"), pt_c.clone());
        let weight = cx.arena.param(self.weight);
        let t = cx.arena.param(m.threshold);
        cx.push(sp.masked_columns(gpu, &il, &weight, &t, &pt_c)?);
        let b = cx.arena.param(self.bias);
        cx.push(sp.ell_input_product(gpu, &il, &pt_c, Some(&b), y, self.relu, true, &k.dummy)?);
        Ok(y.clone())
    }

    /// The rows' constant (`all_rows`) where this dense layer computes its forward from the
    /// input's nonzeros: on a CPU adapter with the input-sparse products on, as the plan's first
    /// layer (or in a plan without backward), as a masked first layer does (`forward_counted`).
    /// Its weight is not stored transposed, so each pass writes W^T first (`masked_columns` with
    /// thresholds below every |w|). On lavapipe LeNet-300-100's fc1 then costs the lists, that
    /// copy and the listed product where the dense GEMM spent 40 % of the dense step
    /// (BENCHMARKS.md, thirty-second round), and the weight gradient reads the lists of nonzero
    /// samples those lists' dispatch builds (no `tn_k_lists`). The product to the input (none for
    /// a first layer) stays the GEMM over W.
    fn dense_input_sparse(&self, cx: &PlanCx<'_>) -> Option<Tensor> {
        self.all_rows.clone().filter(|_| {
            self.mask.is_none()
                && cx.sparse_input > 0.0
                && cx.kernels.masked.rowwise
                && (cx.first_layer || cx.mode != super::Mode::Train)
        })
    }

    /// The forward of a dense layer from its input's nonzeros (`dense_input_sparse`): the lists
    /// (every row in order), W^T, the compacted product over all rows.
    fn forward_dense_listed(
        &self,
        cx: &mut PlanCx<'_>,
        rows: &Tensor,
        x2: &Tensor,
        y: &Tensor,
    ) -> Result<()> {
        let n = self.out_features;
        let (il, pt_c) = self.input_lists(cx, rows, None, x2, u32::MAX, n as u32)?;
        let (k, gpu) = (cx.kernels, cx.gpu);
        let weight = cx.arena.param(self.weight);
        cx.push(k.sparse.masked_columns(gpu, &il, &weight, rows, &pt_c)?);
        let b = cx.arena.param(self.bias);
        cx.push(k.sparse.ell_input_product(
            gpu,
            &il,
            &pt_c,
            Some(&b),
            y,
            self.relu,
            true,
            &k.dummy,
        )?);
        Ok(())
    }

    /// Whether this masked layer, too small for the sparse products (`SPARSE_MIN_WEIGHTS`), takes
    /// its forward from the input's nonzeros on this CPU adapter (`PlanCx::sparse_input` > 0):
    /// as `forward_counted` does, over the rows of P that keep a weight. Its product to the
    /// input then reads the same compacted columns (`ordered_input_grad`, with the ReLU's
    /// backward before the layer fused) where its input is a ReLU's output (the mask pass only
    /// counts), else P^T (the dense GEMM; the mask pass writes P^T). LeNet-300-100's fc2 from a
    /// trained checkpoint (61 of 100 rows keep a weight; 89 of its 300 inputs are pruned neurons
    /// of fc1, zero for every sample) on lavapipe: forward 0.40 ms with its lists and columns
    /// against 0.80 for `gemm_nn_vec4`, which adds the same products in the same order (the same
    /// bits); product to the input 0.51 against 0.79 for `gemm_nt_vec4` (the same values up to
    /// float reassociation: its sums skip the rows that keep nothing). Both widths are multiples
    /// of 4 (the kernels read and write vec4s).
    fn small_input_sparse(&self, cx: &PlanCx<'_>) -> bool {
        let numel = self.out_features * self.in_features;
        self.mask.is_some()
            && numel < SPARSE_MIN_WEIGHTS
            && self.p_transposed()
            && cx.sparse_input > 0.0
            && cx.kernels.masked.rowwise
            && self.out_features.is_multiple_of(4)
            && self.in_features.is_multiple_of(4)
    }

    /// The key under which `forward_counted` keeps the compaction's `order` or P^T's compacted
    /// `columns` for this layer's product to the input.
    fn compaction_key(&self, what: &str) -> String {
        format!("{}#compacted_{what}", self.name)
    }

    /// The key under which `forward_counted` keeps the lists of the input's nonzero samples it
    /// built for this layer's weight gradient.
    fn k_lists_key(&self) -> String {
        format!("{}#x_nonzero_samples", self.name)
    }

    /// A buffer for the lists of the samples nonzero in each block of 8 inputs that this
    /// layer's listed weight gradient reads (`Gemm::k_list_words`), for `batch` samples.
    fn k_lists_buffer(&self, cx: &PlanCx<'_>, batch: usize) -> Result<Tensor> {
        let words = crate::kernels::gemm::Gemm::k_list_words(self.in_features, batch);
        cx.activation(&format!("{}.x_nonzero_samples", self.name), &[words])
    }

    /// The switch the forward of this plan recorded, if any.
    fn saved_switch(&self, cx: &PlanCx<'_>) -> Option<Switch> {
        cx.saved_switch(&format!("{}.switch", self.name), SWITCH_SLOTS)
    }

    /// Whether the weight the matmuls use is stored transposed (`in x out`).
    fn p_transposed(&self) -> bool {
        self.mask.as_ref().is_some_and(|m| m.transposed)
    }

    /// The weight the matmuls use: P for masked layers (stored transposed, `in x out`, except in
    /// narrow layers: the forward then reads it along its contiguous output index, the fast GEMM
    /// form on CPU adapters), W for dense ones (`out x in`, the parameter itself).
    fn effective_weight(&self, cx: &PlanCx<'_>) -> Tensor {
        match &self.mask {
            Some(m) => m.masked_weight.clone(),
            None => cx.arena.param(self.weight),
        }
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, _input: &[usize]) -> Vec<usize> {
        vec![self.out_features]
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let batch = x.shape[0];
        let x2 = Tensor {
            shape: vec![batch, self.in_features],
            ..x.clone()
        };
        let (k, gpu) = (cx.kernels, cx.gpu);
        let y = cx.activation(&format!("{}.y", self.name), &[batch, self.out_features])?;
        if self.relu {
            // A linear layer that reads y may apply this ReLU's backward in its product to the
            // input (`relu_gate_key`).
            cx.save(&relu_output_key(&y), y.clone());
        }
        let w = self.effective_weight(cx);
        let b = cx.arena.param(self.bias);
        // The dense product, built where a plan records it (not in `forward_counted`'s).
        let dense = || {
            k.gemm.linear(
                gpu,
                &x2,
                &w,
                self.p_transposed(),
                Some(&b),
                &y,
                self.relu,
                &k.dummy,
            )
        };
        match (&self.mask, self.switch(cx)?) {
            (Some(m), Some(sw)) => {
                let input_sparse = cx.sparse_input > 0.0
                    && crate::kernels::sparse::Sparse::input_product_fits(self.out_features, &w);
                // The plan's first layer on a CPU adapter (or any layer of a plan without
                // backward, whose product to the input never reads P^T): `forward_counted`.
                if input_sparse
                    && k.masked.rowwise
                    && (cx.first_layer || cx.mode != super::Mode::Train)
                {
                    return self.forward_counted(cx, m, Some(&sw), &x2, &y, true);
                }
                let lists = self.lists(gpu)?;
                m.forward_switched(cx, self.weight, Some(&sw))?;
                // The input-sparse forward decides first: when it runs, it turns the others off.
                let sp = &k.sparse;
                let input_product = if input_sparse {
                    let max = (cx.sparse_input.min(1.0) * (batch * self.in_features) as f64) as u32;
                    let max_active = (COMPACT_MAX_ROWS * self.out_features as f64) as u32;
                    let (il, pt_c) =
                        self.input_lists(cx, &m.row_counts(), Some(&sw), &x2, max, max_active)?;
                    let product = |pt: &Tensor, compacted: bool| {
                        sp.ell_input_product(
                            gpu,
                            &il,
                            pt,
                            Some(&b),
                            &y,
                            self.relu,
                            compacted,
                            &k.dummy,
                        )
                    };
                    let copy = sp.compact_columns(gpu, &il, &w, &pt_c)?;
                    Some([
                        sw.route(gpu, INPUT_SLOT, Path::Input, product(&w, false)?),
                        sw.route(gpu, COMPACT_SLOT, Path::Input, copy),
                        sw.route(
                            gpu,
                            COMPACT_PRODUCT_SLOT,
                            Path::Input,
                            product(&pt_c, true)?,
                        ),
                    ])
                } else {
                    None
                };
                let x_fm = cx.activation(
                    &format!("{}.x_feature_major", self.name),
                    &[self.in_features, batch],
                )?;
                let listed = ListedProduct {
                    p: &w,
                    lists,
                    by_rows: true,
                    batch,
                    x: &x2,
                    x_fm: &x_fm,
                    bias: Some(&b),
                    y: &y,
                    relu: self.relu,
                };
                for d in sp.routed_listed_product(gpu, &sw, 0, &listed, dense()?, &k.dummy)? {
                    cx.push(d);
                }
                for d in input_product.into_iter().flatten() {
                    cx.push(d);
                }
                cx.save(&format!("{}.switch", self.name), sw.args);
            }
            (Some(m), None) if self.small_input_sparse(cx) => {
                // P^T is read only by the dense product to the input of a training plan, which
                // a layer after a ReLU does not take (`ordered_input_grad`).
                let count_only = cx.mode != super::Mode::Train || cx.has_saved(&relu_output_key(x));
                return self.forward_counted(cx, m, None, &x2, &y, count_only);
            }
            (None, _) => match self.dense_input_sparse(cx) {
                Some(rows) => self.forward_dense_listed(cx, &rows, &x2, &y)?,
                None => cx.push(dense()?),
            },
            (Some(m), _) => {
                m.forward(cx, self.weight)?;
                cx.push(dense()?);
            }
        }
        Ok(y)
    }

    fn backward(
        &self,
        cx: &mut PlanCx<'_>,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let batch = x.shape[0];
        let x2 = Tensor {
            shape: vec![batch, self.in_features],
            ..x.clone()
        };
        let (k, gpu) = (cx.kernels, cx.gpu);
        // The fused ReLU's derivative first: dL/d(x w^T + b) = dy where y > 0, else 0 (already
        // so when the next linear layer applied it in its product to the input).
        let dy_pre;
        let dy = if self.relu && !cx.has_saved(&relu_gate_key(y)) {
            dy_pre = cx.activation(
                &format!("{}.d_preactivation", self.name),
                &[batch, self.out_features],
            )?;
            cx.push(k.act.relu_backward(gpu, dy, y, &dy_pre)?);
            &dy_pre
        } else {
            dy
        };
        let dx = if need_dx {
            let dx = cx.activation(
                &format!("{}.d_input", self.name),
                &[batch, self.in_features],
            )?;
            let w = self.effective_weight(cx);
            let transposed = self.p_transposed();
            let switch = self.saved_switch(cx);
            // Where the input is a linear layer's ReLU output and only the dense product writes
            // dx, that ReLU's backward goes into the product's store.
            let relu_out = (switch.is_none() && cx.has_saved(&relu_output_key(x)))
                .then(|| cx.saved(&relu_output_key(x)));
            // A small layer that took the compacted forward (`small_input_sparse`) after a ReLU:
            // dx from the same columns, over the rows that keep a weight.
            let ordered =
                self.small_input_sparse(cx) && cx.has_saved(&self.compaction_key("order"));
            let product = match (&relu_out, transposed) {
                (Some(r), _) if ordered => {
                    let order = cx.saved(&self.compaction_key("order"));
                    let pt_c = cx.saved(&self.compaction_key("columns"));
                    k.sparse
                        .ordered_input_grad(gpu, &order, dy, &pt_c, r, &dx)?
                }
                (Some(r), _) => k
                    .gemm
                    .backward_input_gated(gpu, dy, &w, transposed, r, &dx)?,
                (None, true) => k.gemm.backward_input_t(gpu, dy, &w, &dx, false, &k.dummy)?,
                (None, false) => k.gemm.backward_input(gpu, dy, &w, &dx, false, &k.dummy)?,
            };
            if relu_out.is_some() {
                cx.save(&relu_gate_key(x), dx.clone());
            }
            match (self.lists.get(), switch) {
                (Some(lists), Some(sw)) => {
                    let dy_fm = cx.activation(
                        &format!("{}.d_output_feature_major", self.name),
                        &[self.out_features, batch],
                    )?;
                    let listed = ListedProduct {
                        p: &w,
                        lists,
                        by_rows: false,
                        batch,
                        x: dy,
                        x_fm: &dy_fm,
                        bias: None,
                        y: &dx,
                        relu: false,
                    };
                    for d in k
                        .sparse
                        .routed_listed_product(gpu, &sw, 4, &listed, product, &k.dummy)?
                    {
                        cx.push(d);
                    }
                }
                _ => cx.push(product),
            }
            Some(Tensor {
                shape: x.shape.clone(),
                ..dx
            })
        } else {
            None
        };
        self.backward_weight(cx, dy, &x2)?;
        Ok(dx)
    }

    fn penalty(&self, cx: &mut PlanCx<'_>) -> Result<()> {
        match &self.mask {
            Some(m) => m.penalty(cx),
            None => Ok(()),
        }
    }

    fn mask_views(&self) -> Vec<MaskView> {
        self.mask
            .iter()
            .flat_map(|m| m.views(std::slice::from_ref(&self.name)))
            .collect()
    }
}

/// The key under which a linear layer's forward keeps its ReLU output y.
fn relu_output_key(y: &Tensor) -> String {
    format!("{}#relu_output", y.label)
}

/// The key under which the next linear layer records that the gradient it wrote for y already
/// went through y's ReLU backward.
fn relu_gate_key(y: &Tensor) -> String {
    format!("{}#relu_gated", y.label)
}
