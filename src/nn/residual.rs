//! The pre-activation basic block of wide ResNets (METHOD.md section 5, WRN-16-8), a composite
//! layer built from the batch norm, ReLU and (masked) convolution layers and the element-wise
//! sum of shaders/act.wgsl:
//!
//! ```text
//! a = relu(bn1(x))
//! h = conv2(relu(bn2(conv1(a))))            conv1 3x3 stride s pad 1, conv2 3x3 stride 1 pad 1
//! y = h + x                                 where the width and the size stay (identity)
//! y = h + shortcut(a)                       otherwise: a 1x1 conv with stride s (masked in DST)
//! ```
//!
//! Backward: the gradient of y goes into both branches; where they meet (at `a` for a
//! convolution shortcut, at `x` for the identity) the two parts are summed. The trainer sees
//! one layer; the sub-layers keep their own names (`<block>.conv1`, `<block>.bn2`, ...), so
//! their parameters, masks and checkpoint entries are named like any other layer's.

use super::batchnorm::BatchNorm;
use super::conv::Conv2d;
use super::relu::Relu;
use super::{ArenaBuilder, Layer, MaskView, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};

pub struct PreActBlock {
    name: String,
    bn1: BatchNorm,
    relu1: Relu,
    conv1: Conv2d,
    bn2: BatchNorm,
    relu2: Relu,
    conv2: Conv2d,
    /// The 1x1 strided convolution of the pre-activated input, where the width or size changes.
    shortcut: Option<Conv2d>,
}

impl PreActBlock {
    /// Whether a block `c_in -> c_out` with the first conv's `stride` has a shortcut
    /// convolution (else its shortcut is the identity).
    pub fn has_shortcut(c_in: usize, c_out: usize, stride: usize) -> bool {
        c_in != c_out || stride != 1
    }

    /// Declares and builds a block `c_in -> c_out` with the first conv's `stride`; the shortcut is
    /// a convolution exactly when `c_in != c_out` or `stride != 1`. Convs have no bias; `masked`:
    /// every conv (the shortcut included) is a DST masked conv.
    pub fn new(
        gpu: &Gpu,
        ab: &mut ArenaBuilder,
        name: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
        masked: bool,
    ) -> Result<PreActBlock> {
        let sub = |s: &str| format!("{name}.{s}");
        let bn1 = BatchNorm::new(&sub("bn1"), c_in, BatchNorm::declare(ab, &sub("bn1"), c_in));
        let ids = Conv2d::declare(ab, &sub("conv1"), c_in, c_out, 3, false, masked);
        let conv1 = Conv2d::new(gpu, &sub("conv1"), c_in, c_out, 3, stride, 1, ids)?;
        let bn2 = BatchNorm::new(
            &sub("bn2"),
            c_out,
            BatchNorm::declare(ab, &sub("bn2"), c_out),
        );
        let ids = Conv2d::declare(ab, &sub("conv2"), c_out, c_out, 3, false, masked);
        let conv2 = Conv2d::new(gpu, &sub("conv2"), c_out, c_out, 3, 1, 1, ids)?;
        let shortcut = if Self::has_shortcut(c_in, c_out, stride) {
            let ids = Conv2d::declare(ab, &sub("shortcut"), c_in, c_out, 1, false, masked);
            Some(Conv2d::new(
                gpu,
                &sub("shortcut"),
                c_in,
                c_out,
                1,
                stride,
                0,
                ids,
            )?)
        } else {
            None
        };
        Ok(PreActBlock {
            name: name.to_string(),
            bn1,
            relu1: Relu::new(&sub("relu1")),
            conv1,
            bn2,
            relu2: Relu::new(&sub("relu2")),
            conv2,
            shortcut,
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    fn convs(&self) -> impl Iterator<Item = &Conv2d> {
        [&self.conv1, &self.conv2].into_iter().chain(&self.shortcut)
    }
}

impl Layer for PreActBlock {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        self.conv1.output_shape(input)
    }

    fn min_train_batch(&self, input: &[usize]) -> Option<(String, usize)> {
        let inner = self.conv1.output_shape(input);
        [
            self.bn1.min_train_batch(input),
            self.bn2.min_train_batch(&inner),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(_, n)| *n)
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let b1 = self.bn1.forward(cx, x)?;
        let a = self.relu1.forward(cx, &b1)?;
        let h1 = self.conv1.forward(cx, &a)?;
        let b2 = self.bn2.forward(cx, &h1)?;
        let r2 = self.relu2.forward(cx, &b2)?;
        let h2 = self.conv2.forward(cx, &r2)?;
        let s = match &self.shortcut {
            Some(c) => c.forward(cx, &a)?,
            None => x.clone(),
        };
        assert_eq!(s.shape, h2.shape, "{}: branch shapes", self.name);
        let y = cx.activation(&self.key("y"), &h2.shape)?;
        cx.push(cx.kernels.act.add(cx.gpu, &h2, &s, &y)?);
        for (k, t) in [("b1", b1), ("a", a), ("h1", h1), ("b2", b2), ("r2", r2)] {
            cx.save(&self.key(k), t);
        }
        cx.save(&self.key("h2"), h2);
        cx.save(&self.key("s"), s);
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
        let saved = |cx: &PlanCx<'_>, k: &str| cx.saved(&self.key(k));
        let (b1, a, h1) = (saved(cx, "b1"), saved(cx, "a"), saved(cx, "h1"));
        let (b2, r2, h2) = (saved(cx, "b2"), saved(cx, "r2"), saved(cx, "h2"));
        let grad = |d: Option<Tensor>| d.expect("need_dx gives a gradient");
        // The main branch, from y back to a.
        let dr2 = grad(self.conv2.backward(cx, &r2, &h2, dy, true)?);
        let db2 = grad(self.relu2.backward(cx, &b2, &r2, &dr2, true)?);
        let dh1 = grad(self.bn2.backward(cx, &h1, &b2, &db2, true)?);
        let mut da = grad(self.conv1.backward(cx, &a, &h1, &dh1, true)?);
        // A convolution shortcut meets the main branch at a.
        if let Some(sc) = &self.shortcut {
            let s = saved(cx, "s");
            let da_sc = grad(sc.backward(cx, &a, &s, dy, true)?);
            let sum = cx.activation(&self.key("d_a"), &a.shape)?;
            cx.push(cx.kernels.act.add(cx.gpu, &da, &da_sc, &sum)?);
            da = sum;
        }
        let db1 = grad(self.relu1.backward(cx, &b1, &a, &da, true)?);
        let dx = self.bn1.backward(cx, x, &b1, &db1, need_dx)?;
        match (dx, &self.shortcut) {
            (None, _) => Ok(None),
            (Some(dx), Some(_)) => Ok(Some(dx)),
            // The identity shortcut meets it at x.
            (Some(dx), None) => {
                let sum = cx.activation(&self.key("d_input"), &x.shape)?;
                cx.push(cx.kernels.act.add(cx.gpu, &dx, dy, &sum)?);
                Ok(Some(sum))
            }
        }
    }

    fn penalty(&self, cx: &mut PlanCx<'_>) -> Result<()> {
        for c in self.convs() {
            c.penalty(cx)?;
        }
        Ok(())
    }

    fn mask_views(&self) -> Vec<MaskView> {
        self.convs().flat_map(|c| c.mask_views()).collect()
    }
}
