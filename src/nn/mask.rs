//! The DST mask of one weight (METHOD.md sections 1-3), shared by every masked layer: a linear
//! or conv layer has one (1 matrix), an LSTM layer two (4 gate matrices each). It owns the
//! buffers that depend on parameters only (P, per-row and per-matrix keep counters) and records
//! the mask pass, the dL/dP -> (dL/dW, dL/dt) pass and the penalty into a plan.

use super::{MaskView, Mode, ParamId, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::masked::{PassExtras, PenaltyInto, RECOMPUTE_WORDS};

pub struct Mask {
    pub threshold: ParamId,
    /// P = W * M in the weight's own shape (the products read it).
    pub masked_weight: Tensor,
    row_keep: Tensor,
    /// [before, after, resets, spare] per stacked matrix.
    layer_keep: Tensor,
    rows: usize,
    cols: usize,
    groups: usize,
    /// P is stored transposed (`cols x rows`; one matrix).
    pub transposed: bool,
}

impl Mask {
    /// A mask of a weight with `shape` viewed as `rows x cols`, whose rows stack `groups`
    /// matrices of equal height (each reset on its own). With `transposed` (one matrix only), P
    /// is stored `cols x rows`.
    pub fn new(
        gpu: &Gpu,
        name: &str,
        threshold: ParamId,
        shape: &[usize],
        rows: usize,
        groups: usize,
        transposed: bool,
    ) -> Result<Mask> {
        let numel: usize = shape.iter().product();
        assert!(
            rows > 0 && numel.is_multiple_of(rows) && rows.is_multiple_of(groups),
            "{name}: mask shape"
        );
        assert!(
            !transposed || groups == 1,
            "{name}: a transposed P needs one matrix"
        );
        let p_shape = if transposed {
            vec![numel / rows, rows]
        } else {
            shape.to_vec()
        };
        Ok(Mask {
            threshold,
            masked_weight: Tensor::zeros(gpu, &format!("{name}.masked_weight"), &p_shape)?,
            row_keep: Tensor::zeros(gpu, &format!("{name}.row_keep"), &[2 * rows])?,
            layer_keep: if groups == 1 {
                // With the floor's recompute dispatch (`PassExtras::recompute`).
                let label = format!("{name}.layer_keep");
                let words = [0u32; RECOMPUTE_WORDS];
                Tensor {
                    buffer: std::sync::Arc::new(gpu.indirect_init(&label, &words)?),
                    offset: 0,
                    shape: vec![RECOMPUTE_WORDS],
                    label,
                }
            } else {
                Tensor::zeros(gpu, &format!("{name}.layer_keep"), &[4 * groups])?
            },
            rows,
            cols: numel / rows,
            groups,
            transposed,
        })
    }

    /// P's per-row keep counts (`rows` words), as the last mask pass of a step left them.
    pub fn row_counts(&self) -> Tensor {
        Tensor {
            shape: vec![self.rows],
            ..self.row_keep.clone()
        }
    }

    /// P viewed as the matrix the masked kernels write: `rows x cols`, or `cols x rows` transposed.
    fn masked_weight_matrix(&self) -> Tensor {
        if self.transposed {
            self.masked_weight.clone()
        } else {
            self.matrix(&self.masked_weight)
        }
    }

    /// `t` viewed as the `rows x cols` matrix the masked kernels take.
    fn matrix(&self, t: &Tensor) -> Tensor {
        Tensor {
            shape: vec![self.rows, self.cols],
            ..t.clone()
        }
    }

    /// Records P = W * M, the keep counts and the dead-layer policy for `weight`.
    pub fn forward(&self, cx: &mut PlanCx<'_>, weight: ParamId) -> Result<()> {
        self.forward_switched(cx, weight, None)
    }

    /// `forward`, whose last pass also sets `switch` (a layer's dense/sparse products) from the
    /// keep count it writes.
    pub fn forward_switched(
        &self,
        cx: &mut PlanCx<'_>,
        weight: ParamId,
        switch: Option<&crate::kernels::sparse::Switch>,
    ) -> Result<()> {
        self.forward_pass(cx, weight, switch, false)
    }

    /// `forward_switched` (or `forward`, without a switch) whose first pass only counts
    /// (`PassExtras::count_only`: CPU adapters):
    /// P is not written (`Linear::forward_counted` writes the columns of P^T it reads).
    pub fn forward_counting(
        &self,
        cx: &mut PlanCx<'_>,
        weight: ParamId,
        switch: Option<&crate::kernels::sparse::Switch>,
    ) -> Result<()> {
        self.forward_pass(cx, weight, switch, true)
    }

    fn forward_pass(
        &self,
        cx: &mut PlanCx<'_>,
        weight: ParamId,
        switch: Option<&crate::kernels::sparse::Switch>,
        count_only: bool,
    ) -> Result<()> {
        let w = self.matrix(&cx.arena.param(weight));
        let t = cx.arena.param(self.threshold);
        for d in cx.kernels.masked.mask_pass(
            cx.gpu,
            &w,
            &t,
            &self.masked_weight_matrix(),
            &self.row_keep,
            &self.layer_keep,
            self.groups,
            cx.reset,
            PassExtras {
                switch,
                recompute: self.groups == 1,
                count_only,
                p_transposed: self.transposed,
                penalty: self.fused_penalty(cx).then_some(PenaltyInto {
                    stats: &cx.stats,
                    alpha: cx.alpha,
                    alpha_scale: &cx.alpha_scale,
                }),
            },
        )? {
            cx.push(d);
        }
        Ok(())
    }

    /// Records the dispatch that sets `switch` from this weight's keep count, for a weight of
    /// several stacked matrices (whose mask pass cannot; after `forward`).
    pub fn switch_from_groups(
        &self,
        cx: &mut PlanCx<'_>,
        switch: &crate::kernels::sparse::Switch,
    ) -> Result<()> {
        let d =
            cx.kernels
                .masked
                .switch_from_groups(cx.gpu, &self.layer_keep, self.groups, switch)?;
        cx.push(d);
        Ok(())
    }

    /// Records dL/dW (into the gradient arena) and dL/dt, penalty included, from `d_masked` =
    /// dL/dP.
    pub fn backward(&self, cx: &mut PlanCx<'_>, weight: ParamId, d_masked: &Tensor) -> Result<()> {
        let w = self.matrix(&cx.arena.param(weight));
        let t = cx.arena.param(self.threshold);
        let d_w = self.matrix(&cx.arena.grad(weight));
        let d_t = cx.arena.grad(self.threshold);
        let d = cx.kernels.masked.mask_backward_scaled(
            cx.gpu,
            &w,
            &t,
            &self.matrix(d_masked),
            &d_w,
            &d_t,
            cx.alpha,
            &cx.alpha_scale,
        )?;
        cx.push(d);
        Ok(())
    }

    /// Records, for a layer whose P is stored as W is (a narrow layer: a classifier's 10
    /// outputs) on a CPU adapter (`Masked::narrow_weight_grad_takes`), its weight gradient dy^T
    /// x through the mask's backward into the gradient arena, dL/dt (penalty included) and
    /// `d_bias` in one dispatch (`Masked::narrow_weight_grad`) from `dy` (batch x rows) and the
    /// layer's input `x` (batch x cols). `false`: it does not apply (nothing recorded).
    pub fn narrow_backward(
        &self,
        cx: &mut PlanCx<'_>,
        weight: ParamId,
        dy: &Tensor,
        x: &Tensor,
        d_bias: &Tensor,
    ) -> Result<bool> {
        let m = &cx.kernels.masked;
        if self.groups != 1
            || !m.narrow_weight_grad_takes(self.transposed)
            || !m.narrow_weight_grad_fits(self.cols, x)
        {
            return Ok(false);
        }
        let d = m.narrow_weight_grad(
            cx.gpu,
            dy,
            x,
            &self.matrix(&cx.arena.param(weight)),
            &cx.arena.param(self.threshold),
            &self.matrix(&cx.arena.grad(weight)),
            &cx.arena.grad(self.threshold),
            d_bias,
            cx.alpha,
            &cx.alpha_scale,
        )?;
        cx.push(d);
        Ok(true)
    }

    /// Records dL/dt, penalty included, from the partial row sums a fused weight-gradient
    /// product wrote (`gemm_tn_sgd`; one matrix).
    pub fn threshold_grad(&self, cx: &mut PlanCx<'_>, parts: &Tensor) -> Result<()> {
        let t = cx.arena.param(self.threshold);
        let d_t = cx.arena.grad(self.threshold);
        let d =
            cx.kernels
                .masked
                .threshold_grad(cx.gpu, &t, parts, &d_t, cx.alpha, &cx.alpha_scale)?;
        cx.push(d);
        Ok(())
    }

    /// Whether this plan's mask pass adds the penalty's value (training, one matrix): then
    /// `penalty` records nothing.
    fn fused_penalty(&self, cx: &PlanCx<'_>) -> bool {
        cx.mode == Mode::Train && self.groups == 1
    }

    /// Records `alpha * sum exp(-t)` into the plan's stats (a one-matrix mask's training pass
    /// has already added it: nothing to record).
    pub fn penalty(&self, cx: &mut PlanCx<'_>) -> Result<()> {
        if self.fused_penalty(cx) {
            return Ok(());
        }
        let t = cx.arena.param(self.threshold);
        let d =
            cx.kernels
                .masked
                .penalty_scaled(cx.gpu, &t, &cx.stats, cx.alpha, &cx.alpha_scale)?;
        cx.push(d);
        Ok(())
    }

    /// One view per stacked matrix, named by `names` (one per group).
    pub fn views(&self, names: &[String]) -> Vec<MaskView> {
        assert_eq!(names.len(), self.groups);
        let gr = self.rows / self.groups;
        names
            .iter()
            .enumerate()
            .map(|(g, name)| MaskView {
                name: name.clone(),
                rows: gr,
                cols: self.cols,
                threshold: self.threshold,
                threshold_rows: g * gr..(g + 1) * gr,
                layer_keep: Tensor {
                    offset: self.layer_keep.offset + 16 * g as u64,
                    shape: vec![4],
                    label: format!("{}[{g}]", self.layer_keep.label),
                    ..self.layer_keep.clone()
                },
            })
            .collect()
    }
}
