//! 2-D convolution, dense or DST-masked (shaders/conv.wgsl, shaders/masked.wgsl). NCHW, any
//! kernel size, stride and zero padding.
//!
//! A masked conv is the conv plus the masked layer's machinery (METHOD.md section 1): the kernel
//! `(c_out, c_in, kh, kw)` is viewed as a `(c_out, c_in*kh*kw)` matrix with one threshold per
//! output filter; `mask_forward` + `mask_reset` make P, the conv runs with P, and `mask_backward`
//! turns the conv's weight gradient dL/dP into dL/dW and dL/dt.
//!
//! Sparse products (beyond the paper, which only simulates sparsity): on the patch-matrix path
//! (CPU adapters), a masked conv that keeps at most `PlanCx::sparse_keep_conv` of its weights computes
//! its forward and the product to its input from lists of P's nonzeros (`Sparse::ell_build`,
//! `Conv::forward_cols_listed`, `Conv::backward_input_cols_listed`) instead of the dense
//! products: the same values, work proportional to the kept weights. Both ways are recorded; the
//! mask pass picks one per step on the GPU from the layer's keep count
//! (`kernels::sparse::Switch`). The weight gradient stays dense (the long-tailed estimator sends
//! gradient to every weight).

use super::mask::Mask;
use super::{ArenaBuilder, Init, Layer, MaskView, ParamId, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::conv::ConvShape;
use crate::kernels::sparse::{EllLists, Path, Switch};

/// The dispatches a switch routes: the forward's (row lists, listed product | dense product),
/// then the product to the input's (column lists, listed product | dense product).
const SWITCH_SLOTS: usize = 6;

pub struct Conv2d {
    name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    weight: ParamId,
    bias: Option<ParamId>,
    mask: Option<Mask>,
    /// P's nonzeros as lists, for the sparse products (allocated by the first plan using them).
    lists: std::sync::OnceLock<EllLists>,
}

/// The ids `Conv2d::declare` returns: weight, bias (if any), threshold (if masked).
pub type ConvIds = (ParamId, Option<ParamId>, Option<ParamId>);

impl Conv2d {
    /// Declares weight `(c_out, c_in, k, k)`, an optional bias `(c_out)` and, when masked, a
    /// threshold per filter `(c_out)`, with PyTorch's default init: U(-1/sqrt(fan_in), ..) for
    /// weight and bias (fan_in = c_in*k*k), thresholds 0.
    pub fn declare(
        arena: &mut ArenaBuilder,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        bias: bool,
        masked: bool,
    ) -> ConvIds {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let w = arena.param(
            &format!("{name}.weight"),
            &[c_out, c_in, k, k],
            Init::Uniform(bound),
        );
        let b = bias.then(|| arena.param(&format!("{name}.bias"), &[c_out], Init::Uniform(bound)));
        let t = masked.then(|| arena.param(&format!("{name}.threshold"), &[c_out], Init::Zeros));
        (w, b, t)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        ids: ConvIds,
    ) -> Result<Conv2d> {
        let mask = ids
            .2
            .map(|t| Mask::new(gpu, name, t, &[c_out, c_in, k, k], c_out, 1, false))
            .transpose()?;
        Ok(Conv2d {
            name: name.to_string(),
            c_in,
            c_out,
            k,
            stride,
            pad,
            weight: ids.0,
            bias: ids.1,
            mask,
            lists: std::sync::OnceLock::new(),
        })
    }

    /// The conv's shape for a batch input `x` of shape (batch, c_in, h, w).
    fn shape(&self, x: &Tensor) -> ConvShape {
        assert_eq!(
            x.shape.len(),
            4,
            "{}: input {:?} is not NCHW",
            self.name,
            x.shape
        );
        assert_eq!(x.shape[1], self.c_in, "{}: input channels", self.name);
        ConvShape {
            batch: x.shape[0],
            c_in: self.c_in,
            h: x.shape[2],
            w: x.shape[3],
            c_out: self.c_out,
            kh: self.k,
            kw: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }

    /// This plan's switch: a masked conv on the patch-matrix path when the plan allows sparse
    /// products.
    fn switch(&self, cx: &PlanCx<'_>, s: &ConvShape) -> Result<Option<Switch>> {
        if self.mask.is_none() || cx.sparse_keep_conv <= 0.0 || !cx.kernels.conv.use_cols(cx.gpu, s)
        {
            return Ok(None);
        }
        let numel = self.c_out * s.cols();
        let sparse_max = (cx.sparse_keep_conv.min(1.0) * numel as f64).floor() as u32;
        let label = cx.label(&format!("{}.switch", self.name));
        Ok(Some(Switch::new(cx.gpu, &label, SWITCH_SLOTS, sparse_max)?))
    }

    /// The switch the forward of this plan recorded, if any.
    fn saved_switch(&self, cx: &PlanCx<'_>) -> Option<Switch> {
        cx.saved_switch(&format!("{}.switch", self.name), SWITCH_SLOTS)
    }

    /// The lists of P's nonzeros, allocated on first use.
    fn lists(&self, gpu: &Gpu, s: &ConvShape) -> Result<&EllLists> {
        EllLists::in_cell(&self.lists, gpu, &self.name, self.c_out, s.cols(), false)
    }

    /// The weight the conv uses: P for masked layers, W for dense ones.
    fn effective_weight(&self, cx: &PlanCx<'_>) -> Tensor {
        match &self.mask {
            Some(m) => m.masked_weight.clone(),
            None => cx.arena.param(self.weight),
        }
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        let s = ConvShape {
            batch: 1,
            c_in: self.c_in,
            h: input[1],
            w: input[2],
            c_out: self.c_out,
            kh: self.k,
            kw: self.k,
            stride: self.stride,
            pad: self.pad,
        };
        vec![self.c_out, s.out_h(), s.out_w()]
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let s = self.shape(x);
        let (k, gpu) = (cx.kernels, cx.gpu);
        let switch = self.switch(cx, &s)?;
        if let Some(m) = &self.mask {
            m.forward_switched(cx, self.weight, switch.as_ref())?;
        }
        let y = cx.activation(
            &format!("{}.y", self.name),
            &[s.batch, s.c_out, s.out_h(), s.out_w()],
        )?;
        let w = self.effective_weight(cx);
        let b = self.bias.map(|b| cx.arena.param(b));
        if k.conv.use_cols(gpu, &s) {
            // The patch matrix, kept for the backward (weight gradient, then input gradient).
            let cols = cx.activation(&format!("{}.cols", self.name), &[s.cols_len()])?;
            let [fill, dense] =
                k.conv
                    .forward_cols(gpu, &s, x, &w, b.as_ref(), &y, &cols, &k.dummy)?;
            cx.push(fill);
            match switch {
                Some(sw) => {
                    let lists = self.lists(gpu, &s)?;
                    let build = k.sparse.ell_build(gpu, &w, lists, true)?;
                    cx.push(sw.route(gpu, 0, Path::Sparse, build));
                    let listed = k.conv.forward_cols_listed(
                        gpu,
                        &s,
                        lists,
                        &cols,
                        b.as_ref(),
                        &y,
                        &k.dummy,
                    )?;
                    cx.push(sw.route(gpu, 1, Path::Sparse, listed));
                    cx.push(sw.route(gpu, 2, Path::Dense, dense));
                    cx.save(&format!("{}.switch", self.name), sw.args);
                }
                None => cx.push(dense),
            }
            cx.save(&format!("{}.cols", self.name), cols);
        } else {
            cx.push(k.conv.forward(gpu, &s, x, &w, b.as_ref(), &y, &k.dummy)?);
        }
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
        let s = self.shape(x);
        let (k, gpu) = (cx.kernels, cx.gpu);
        // The forward's patch matrix (cols path): the weight gradient reads it, then the input
        // gradient overwrites it, so the weight gradient is recorded first.
        let cols = k
            .conv
            .use_cols(gpu, &s)
            .then(|| cx.saved(&format!("{}.cols", self.name)));
        // GPUs: the split tile product's partial sums for layers with many weights (none when
        // one run covers the positions: the product then writes the gradient itself).
        let tiled = cols.is_none() && k.conv.use_weight_tiled(&s);
        let parts_len = crate::kernels::conv::Conv::weight_parts_len(&s);
        let parts = (tiled && parts_len > 0)
            .then(|| cx.activation(&format!("{}.d_weight_parts", self.name), &[parts_len]))
            .transpose()?;
        let d_bias = self.bias.map(|b| cx.arena.grad(b));
        // The dispatches of dW (dP for a masked layer) and whether they also write db (the GPU's
        // split form, `backward_weight_bias`).
        let weight_grad = |dw: &Tensor| -> Result<(Vec<crate::kernels::Dispatch>, bool)> {
            Ok(match (&cols, &d_bias) {
                (Some(c), _) => (
                    vec![k.conv.backward_weight_cols(gpu, &s, dy, c, dw)?],
                    false,
                ),
                (None, _) if tiled => (
                    k.conv
                        .backward_weight_tiled(gpu, &s, dy, x, parts.as_ref(), dw)?,
                    false,
                ),
                (None, Some(db)) => {
                    let (d, wrote) = k.conv.backward_weight_bias(gpu, &s, dy, x, dw, db)?;
                    (vec![d], wrote)
                }
                (None, None) => (vec![k.conv.backward_weight(gpu, &s, dy, x, dw)?], false),
            })
        };
        let d_weight = cx.arena.grad(self.weight);
        let bias_done = match &self.mask {
            Some(m) => {
                let d_masked = cx.activation(
                    &format!("{}.d_masked_weight", self.name),
                    &[self.c_out, self.c_in, self.k, self.k],
                )?;
                let (ds, bias_done) = weight_grad(&d_masked)?;
                for d in ds {
                    cx.push(d);
                }
                m.backward(cx, self.weight, &d_masked)?;
                bias_done
            }
            None => {
                let (ds, bias_done) = weight_grad(&d_weight)?;
                for d in ds {
                    cx.push(d);
                }
                bias_done
            }
        };
        if let (Some(db), false) = (&d_bias, bias_done) {
            cx.push(k.conv.bias_backward(gpu, &s, dy, db)?);
        }
        if !need_dx {
            return Ok(None);
        }
        let dx = cx.activation(&format!("{}.d_input", self.name), &x.shape)?;
        let w = self.effective_weight(cx);
        match &cols {
            Some(c) => {
                let [dense, gather] = k.conv.backward_input_cols(gpu, &s, dy, &w, c, &dx)?;
                match (self.lists.get(), self.saved_switch(cx)) {
                    (Some(lists), Some(sw)) => {
                        let build = k.sparse.ell_build(gpu, &w, lists, false)?;
                        cx.push(sw.route(gpu, 3, Path::Sparse, build));
                        let listed = k.conv.backward_input_cols_listed(gpu, &s, lists, dy, c)?;
                        cx.push(sw.route(gpu, 4, Path::Sparse, listed));
                        cx.push(sw.route(gpu, 5, Path::Dense, dense));
                    }
                    _ => cx.push(dense),
                }
                cx.push(gather);
            }
            None if k.conv.use_input_cols_tiled(gpu, &s) => {
                let dcols = cx.activation(&format!("{}.dcols", self.name), &[s.cols_len()])?;
                for d in k
                    .conv
                    .backward_input_cols_tiled(gpu, &s, dy, &w, &dcols, &dx)?
                {
                    cx.push(d);
                }
            }
            None => cx.push(k.conv.backward_input(gpu, &s, dy, &w, &dx)?),
        }
        Ok(Some(dx))
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
