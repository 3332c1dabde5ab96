//! LSTM layer, dense or DST-masked (shaders/lstm.wgsl, shaders/gemm.wgsl, shaders/masked.wgsl;
//! METHOD.md sections 1, 3, 5 and 9).
//!
//! Parameters in PyTorch nn.LSTM's layout: `weight_ih` (4H, I) and `weight_hh` (4H, H) stacking the
//! gates i, f, g (candidate), o; one unmasked `bias` (4H); when masked, `threshold_ih` and
//! `threshold_hh` (4H each): the eight gate matrices of METHOD.md section 1, each with its own
//! rows' thresholds and its own dead-layer reset (`nn::mask::Mask` with 4 groups).
//!
//! Forward: [masks: `Mask::forward` (mask pass, 4 groups) for P_ih and P_hh] -> [batch-major input:
//! `swap01` to time-major] -> `xproj = X P_ih^T + bias` (one GEMM over all T*B rows) -> one
//! `lstm_step` per step. Every sequence starts from zero h and c (METHOD.md section 9).
//! Backward: one `lstm_step_backward` per step in reverse (pre-activation gate gradients
//! `dgates`; CPU adapters run both steps' register-blocked forms, the same bits), then one GEMM
//! each for dP_hh = dgates^T h_{t-1}, dP_ih = dgates^T X and (when asked) dX = dgates P_ih, the
//! bias gradient as column sums of dgates, and `mask_backward` for both weights. Sequences are
//! time-major between LSTM layers: (T, B, H).
//!
//! Sparse recurrence (beyond the paper, which only simulates sparsity): a masked layer whose P_hh
//! keeps at most `PlanCx::sparse_keep_lstm` of its weights runs its steps' recurrent products
//! from lists of P_hh's nonzeros (`Sparse::ell_build`, `lstm_step_listed`,
//! `lstm_step_backward_listed`): the same values, work proportional to the kept weights; and
//! where P_ih keeps at most that fraction, the input projection and the product to the input
//! run from P_ih's lists (`Sparse::ell_product`, the masked linear layers' listed products: the
//! same values up to float reassociation). Both ways are recorded; after the mask pass
//! `switch_from_groups` picks one per step on the GPU from each weight's keep count
//! (`kernels::sparse::Switch`). The weight gradients stay dense (the long-tailed estimator).

use super::mask::Mask;
use super::{ArenaBuilder, Init, Layer, MaskView, ParamId, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::lstm::StepDims;
use crate::kernels::sparse::{EllLists, ListedProduct, Path, Switch};

/// The dispatches a switch routes: the row lists, w_hh's transpose (dense steps only), the
/// forward steps (listed | dense), the column lists, the backward steps (listed | dense).
const SWITCH_SLOTS: usize = 7;

/// The dispatches P_ih's switch routes: the forward's (row lists, x feature-major, listed product
/// | GEMM), then the product to the input's (column lists, dgates feature-major, listed product |
/// GEMM).
const SWITCH_SLOTS_IH: usize = 8;

/// The layout of the layer's input batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LstmInput {
    /// `(B, T, I)` (any shape with that many elements, batch first): e.g. image rows.
    BatchMajor,
    /// `(T, B, I)`: the sequence output of a previous LSTM layer.
    TimeMajor,
}

/// What the layer outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LstmOutput {
    /// The hidden state of every step, time-major `(T, B, H)` (to feed another LSTM layer).
    Sequence,
    /// The last step's hidden state `(B, H)` (to feed a dense head).
    Last,
}

/// The arena ids of one layer's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmIds {
    pub weight_ih: ParamId,
    pub weight_hh: ParamId,
    pub bias: ParamId,
    /// `Some` for a masked layer.
    pub threshold_ih: Option<ParamId>,
    pub threshold_hh: Option<ParamId>,
}

/// Gate names in the stacked order, as used in `MaskView` names (`{name}.wx_i`, ...).
pub const GATES: [&str; 4] = ["i", "f", "g", "o"];

pub struct Lstm {
    name: String,
    pub input_size: usize,
    pub hidden: usize,
    pub steps: usize,
    pub input: LstmInput,
    pub output: LstmOutput,
    ids: LstmIds,
    mask_ih: Option<Mask>,
    mask_hh: Option<Mask>,
    /// P_hh's nonzeros as lists, for the listed steps (allocated by the first plan using them).
    lists_hh: std::sync::OnceLock<EllLists>,
    /// P_ih's, for the listed input products.
    lists_ih: std::sync::OnceLock<EllLists>,
}

impl Lstm {
    /// Declares `{name}.weight_ih` (4H, I), `{name}.weight_hh` (4H, H) with U(-1/sqrt(H),
    /// 1/sqrt(H)), `{name}.bias` (4H) zero, and when masked `{name}.threshold_ih`,
    /// `{name}.threshold_hh` (4H) zero (METHOD.md section 5).
    pub fn declare(
        arena: &mut ArenaBuilder,
        name: &str,
        input_size: usize,
        hidden: usize,
        masked: bool,
    ) -> LstmIds {
        let bound = 1.0 / (hidden as f64).sqrt();
        let g4 = 4 * hidden;
        let weight_ih = arena.param(
            &format!("{name}.weight_ih"),
            &[g4, input_size],
            Init::Uniform(bound),
        );
        let weight_hh = arena.param(
            &format!("{name}.weight_hh"),
            &[g4, hidden],
            Init::Uniform(bound),
        );
        let bias = arena.param(&format!("{name}.bias"), &[g4], Init::Zeros);
        let (threshold_ih, threshold_hh) = if masked {
            (
                Some(arena.param(&format!("{name}.threshold_ih"), &[g4], Init::Zeros)),
                Some(arena.param(&format!("{name}.threshold_hh"), &[g4], Init::Zeros)),
            )
        } else {
            (None, None)
        };
        LstmIds {
            weight_ih,
            weight_hh,
            bias,
            threshold_ih,
            threshold_hh,
        }
    }

    /// A layer of `hidden` units over `steps` time steps of `input_size` features.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        name: &str,
        input_size: usize,
        hidden: usize,
        steps: usize,
        input: LstmInput,
        output: LstmOutput,
        ids: LstmIds,
    ) -> Result<Lstm> {
        assert!(
            input_size > 0 && hidden > 0 && steps > 0,
            "{name}: empty LSTM"
        );
        assert_eq!(
            ids.threshold_ih.is_some(),
            ids.threshold_hh.is_some(),
            "{name}: both weights masked or neither"
        );
        let g4 = 4 * hidden;
        let state = |which: &str, threshold: Option<ParamId>, cols: usize| -> Result<_> {
            threshold
                .map(|t| {
                    Mask::new(
                        gpu,
                        &format!("{name}.{which}"),
                        t,
                        &[g4, cols],
                        g4,
                        4,
                        false,
                    )
                })
                .transpose()
        };
        Ok(Lstm {
            name: name.to_string(),
            input_size,
            hidden,
            steps,
            input,
            output,
            mask_ih: state("ih", ids.threshold_ih, input_size)?,
            mask_hh: state("hh", ids.threshold_hh, hidden)?,
            ids,
            lists_hh: std::sync::OnceLock::new(),
            lists_ih: std::sync::OnceLock::new(),
        })
    }

    pub fn ids(&self) -> LstmIds {
        self.ids
    }

    fn batch_of(&self, x: &Tensor) -> usize {
        let per = self.steps * self.input_size;
        assert!(
            x.len().is_multiple_of(per) && !x.is_empty(),
            "{}: input {:?} is not a batch of {} x {} sequences",
            self.name,
            x.shape,
            self.steps,
            self.input_size
        );
        x.len() / per
    }

    fn dims(&self, batch: usize) -> StepDims {
        StepDims {
            batch,
            steps: self.steps,
            hidden: self.hidden,
            out_seq: self.output == LstmOutput::Sequence,
        }
    }

    /// The weights the products use: P when masked, W when dense.
    fn effective(&self, cx: &PlanCx<'_>) -> (Tensor, Tensor) {
        let ih = match &self.mask_ih {
            Some(m) => m.masked_weight.clone(),
            None => cx.arena.param(self.ids.weight_ih),
        };
        let hh = match &self.mask_hh {
            Some(m) => m.masked_weight.clone(),
            None => cx.arena.param(self.ids.weight_hh),
        };
        (ih, hh)
    }

    fn key(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// This plan's switch of weight `which` ("hh", "ih", of `cols` columns and `slots`
    /// dispatches): a masked layer when the plan allows the listed products.
    fn switch(
        &self,
        cx: &PlanCx<'_>,
        which: &str,
        cols: usize,
        slots: usize,
    ) -> Result<Option<Switch>> {
        let mask = if which == "hh" {
            &self.mask_hh
        } else {
            &self.mask_ih
        };
        if mask.is_none() || cx.sparse_keep_lstm <= 0.0 {
            return Ok(None);
        }
        let numel = 4 * self.hidden * cols;
        let sparse_max = (cx.sparse_keep_lstm.min(1.0) * numel as f64).floor() as u32;
        let label = cx.label(&self.key(&format!("switch_{which}")));
        Ok(Some(Switch::new(cx.gpu, &label, slots, sparse_max)?))
    }

    /// The switch of `which` the forward of this plan recorded, if any.
    fn saved_switch(&self, cx: &PlanCx<'_>, which: &str, slots: usize) -> Option<Switch> {
        cx.saved_switch(&self.key(&format!("switch_{which}")), slots)
    }

    /// The lists of P_hh's (`which` "hh") or P_ih's nonzeros, allocated on first use.
    fn lists(&self, gpu: &Gpu, which: &str) -> Result<&EllLists> {
        let (cell, cols) = match which {
            "hh" => (&self.lists_hh, self.hidden),
            _ => (&self.lists_ih, self.input_size),
        };
        EllLists::in_cell(cell, gpu, &self.key(which), 4 * self.hidden, cols, false)
    }
}

/// A view of `t` with another shape over the same elements from offset 0 (bindable as is).
fn reshaped(t: &Tensor, shape: &[usize]) -> Tensor {
    assert!(
        shape.iter().product::<usize>() <= t.len(),
        "{}: view {shape:?} larger than {:?}",
        t.label,
        t.shape
    );
    Tensor {
        shape: shape.to_vec(),
        ..t.clone()
    }
}

impl Layer for Lstm {
    fn name(&self) -> &str {
        &self.name
    }

    /// `[T, H]` for a sequence output (laid out time-major across the batch), `[H]` for the last h.
    fn output_shape(&self, _input: &[usize]) -> Vec<usize> {
        match self.output {
            LstmOutput::Sequence => vec![self.steps, self.hidden],
            LstmOutput::Last => vec![self.hidden],
        }
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let (k, gpu) = (cx.kernels, cx.gpu);
        let (bn, tn, inp, hn) = (self.batch_of(x), self.steps, self.input_size, self.hidden);
        let d = self.dims(bn);
        for (m, w) in [
            (&self.mask_ih, self.ids.weight_ih),
            (&self.mask_hh, self.ids.weight_hh),
        ] {
            if let Some(m) = m {
                m.forward(cx, w)?;
            }
        }
        let switch = self.switch(cx, "hh", hn, SWITCH_SLOTS)?;
        if let (Some(m), Some(sw)) = (&self.mask_hh, &switch) {
            m.switch_from_groups(cx, sw)?;
        }
        let switch_ih = self.switch(cx, "ih", inp, SWITCH_SLOTS_IH)?;
        if let (Some(m), Some(sw)) = (&self.mask_ih, &switch_ih) {
            m.switch_from_groups(cx, sw)?;
        }
        let x_tm = match self.input {
            LstmInput::TimeMajor => reshaped(x, &[tn * bn, inp]),
            LstmInput::BatchMajor => {
                let x_tm = cx.activation(&self.key("x_tm"), &[tn * bn, inp])?;
                cx.push(k.lstm.swap01(gpu, x, &x_tm, (bn, tn, inp))?);
                x_tm
            }
        };
        let (p_ih, p_hh) = self.effective(cx);
        let xproj = cx.activation(&self.key("xproj"), &[tn * bn, 4 * hn])?;
        let bias = cx.arena.param(self.ids.bias);
        let dense = k
            .gemm
            .forward(gpu, &x_tm, &p_ih, Some(&bias), &xproj, &k.dummy)?;
        match &switch_ih {
            Some(sw) => {
                let x_fm = cx.activation(&self.key("x_feature_major"), &[inp, tn * bn])?;
                let listed = ListedProduct {
                    p: &p_ih,
                    lists: self.lists(gpu, "ih")?,
                    by_rows: true,
                    batch: tn * bn,
                    x: &x_tm,
                    x_fm: &x_fm,
                    bias: Some(&bias),
                    y: &xproj,
                    relu: false,
                };
                for d in k
                    .sparse
                    .routed_listed_product(gpu, sw, 0, &listed, dense, &k.dummy)?
                {
                    cx.push(d);
                }
                cx.save(&self.key("switch_ih"), sw.args.clone());
            }
            None => cx.push(dense),
        }
        let h_pad = cx.activation(&self.key("h_pad"), &[tn + 1, bn, hn])?;
        let c_pad = cx.activation(&self.key("c_pad"), &[tn + 1, bn, hn])?;
        let gates = cx.activation(&self.key("gates"), &[tn, bn, 4 * hn])?;
        let y = match self.output {
            LstmOutput::Sequence => cx.activation(&self.key("y"), &[tn, bn, hn])?,
            LstmOutput::Last => cx.activation(&self.key("y"), &[bn, hn])?,
        };
        let w_hh_t = cx.activation(&self.key("w_hh_t"), &[hn, 4 * hn])?;
        let transpose = k.lstm.swap01(gpu, &p_hh, &w_hh_t, (4 * hn, hn, 1))?;
        match &switch {
            Some(sw) => {
                let lists = self.lists(gpu, "hh")?;
                let build = k.sparse.ell_build(gpu, &p_hh, lists, true)?;
                cx.push(sw.route(gpu, 0, Path::Sparse, build));
                cx.push(sw.route(gpu, 1, Path::Dense, transpose));
                for t in 0..tn {
                    let listed = k
                        .lstm
                        .step_listed(gpu, d, t, &xproj, lists, &h_pad, &c_pad, &gates, &y)?;
                    cx.push(sw.route(gpu, 2, Path::Sparse, listed));
                    let dense = k
                        .lstm
                        .step(gpu, d, t, &xproj, &w_hh_t, &h_pad, &c_pad, &gates, &y)?;
                    cx.push(sw.route(gpu, 3, Path::Dense, dense));
                }
                cx.save(&self.key("switch_hh"), sw.args.clone());
            }
            None => {
                cx.push(transpose);
                for t in 0..tn {
                    cx.push(
                        k.lstm
                            .step(gpu, d, t, &xproj, &w_hh_t, &h_pad, &c_pad, &gates, &y)?,
                    );
                }
            }
        }
        cx.save(&self.key("x_tm"), x_tm);
        cx.save(&self.key("h_pad"), h_pad);
        cx.save(&self.key("c_pad"), c_pad);
        cx.save(&self.key("gates"), gates);
        Ok(y)
    }

    fn backward(
        &self,
        cx: &mut PlanCx<'_>,
        x: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let (k, gpu) = (cx.kernels, cx.gpu);
        let (bn, tn, inp, hn) = (self.batch_of(x), self.steps, self.input_size, self.hidden);
        let d = self.dims(bn);
        let g4 = 4 * hn;
        let x_tm = cx.saved(&self.key("x_tm"));
        let h_pad = cx.saved(&self.key("h_pad"));
        let c_pad = cx.saved(&self.key("c_pad"));
        let gates = cx.saved(&self.key("gates"));
        let (p_ih, p_hh) = self.effective(cx);
        let dgates = cx.activation(&self.key("d_gates"), &[tn * bn, g4])?;
        let dc = cx.activation(&self.key("d_cell"), &[tn, bn, hn])?;
        match (
            self.lists_hh.get(),
            self.saved_switch(cx, "hh", SWITCH_SLOTS),
        ) {
            (Some(lists), Some(sw)) => {
                let build = k.sparse.ell_build(gpu, &p_hh, lists, false)?;
                cx.push(sw.route(gpu, 4, Path::Sparse, build));
                for t in (0..tn).rev() {
                    let listed = k
                        .lstm
                        .step_backward_listed(gpu, d, t, lists, &c_pad, &gates, dy, &dgates, &dc)?;
                    cx.push(sw.route(gpu, 5, Path::Sparse, listed));
                    let dense = k
                        .lstm
                        .step_backward(gpu, d, t, &p_hh, &c_pad, &gates, dy, &dgates, &dc)?;
                    cx.push(sw.route(gpu, 6, Path::Dense, dense));
                }
            }
            _ => {
                for t in (0..tn).rev() {
                    cx.push(
                        k.lstm
                            .step_backward(gpu, d, t, &p_hh, &c_pad, &gates, dy, &dgates, &dc)?,
                    );
                }
            }
        }
        let dx = if need_dx {
            let dx_tm = cx.activation(&self.key("d_input_tm"), &[tn * bn, inp])?;
            let dense = k
                .gemm
                .backward_input(gpu, &dgates, &p_ih, &dx_tm, false, &k.dummy)?;
            match (
                self.lists_ih.get(),
                self.saved_switch(cx, "ih", SWITCH_SLOTS_IH),
            ) {
                (Some(lists), Some(sw)) => {
                    let dg_fm =
                        cx.activation(&self.key("d_gates_feature_major"), &[g4, tn * bn])?;
                    let listed = ListedProduct {
                        p: &p_ih,
                        lists,
                        by_rows: false,
                        batch: tn * bn,
                        x: &dgates,
                        x_fm: &dg_fm,
                        bias: None,
                        y: &dx_tm,
                        relu: false,
                    };
                    for d in k
                        .sparse
                        .routed_listed_product(gpu, &sw, 4, &listed, dense, &k.dummy)?
                    {
                        cx.push(d);
                    }
                }
                _ => cx.push(dense),
            }
            Some(match self.input {
                LstmInput::TimeMajor => Tensor {
                    shape: x.shape.clone(),
                    ..dx_tm
                },
                LstmInput::BatchMajor => {
                    let dx = cx.activation(&self.key("d_input"), &x.shape)?;
                    cx.push(k.lstm.swap01(gpu, &dx_tm, &dx, (tn, bn, inp))?);
                    dx
                }
            })
        } else {
            None
        };
        // h_{t-1} for every row (t, b): slots 0..T of h_pad, a view from offset 0.
        let h_prev = reshaped(&h_pad, &[tn * bn, hn]);
        let d_bias = cx.arena.grad(self.ids.bias);
        for (which, m, w, input, cols) in [
            ("ih", &self.mask_ih, self.ids.weight_ih, &x_tm, inp),
            ("hh", &self.mask_hh, self.ids.weight_hh, &h_prev, hn),
        ] {
            let target = match m {
                Some(_) => cx.activation(&self.key(&format!("d_masked_{which}")), &[g4, cols])?,
                None => cx.arena.grad(w),
            };
            // The bias gradient (the column sums of dgates) rides on the input weight's product
            // where that product can write it (`backward_weight_bias`: one dispatch on GPUs and
            // in the vec4 form, else the product and `bias_backward`).
            let ds = if which == "ih" {
                k.gemm
                    .backward_weight_bias(gpu, &dgates, input, &target, &d_bias, &k.dummy)?
            } else {
                vec![k
                    .gemm
                    .backward_weight(gpu, &dgates, input, &target, false, &k.dummy)?]
            };
            for d in ds {
                cx.push(d);
            }
            if let Some(m) = m {
                m.backward(cx, w, &target)?;
            }
        }
        Ok(dx)
    }

    fn penalty(&self, cx: &mut PlanCx<'_>) -> Result<()> {
        for m in [&self.mask_ih, &self.mask_hh].into_iter().flatten() {
            m.penalty(cx)?;
        }
        Ok(())
    }

    fn mask_views(&self) -> Vec<MaskView> {
        let mut views = Vec::new();
        for (prefix, m) in [("wx", &self.mask_ih), ("wh", &self.mask_hh)] {
            if let Some(m) = m {
                let names: Vec<String> = GATES
                    .iter()
                    .map(|gate| format!("{}.{prefix}_{gate}", self.name))
                    .collect();
                views.extend(m.views(&names));
            }
        }
        views
    }
}
