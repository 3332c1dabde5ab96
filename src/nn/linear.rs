//! Fully connected layer, dense or DST-masked (shaders/gemm.wgsl, shaders/masked.wgsl).
//!
//! Masked forward: `mask_forward` + `mask_reset` produce P = W * M (and the keep counts), then
//! `Y = X P^T + b`. Backward: `dX = dY P`, `dP = dY^T X`, then `mask_backward` turns dP into dW and
//! dt in one pass; `db = sum_rows dY`.

use super::mask::Mask;
use super::{ArenaBuilder, Init, Layer, MaskView, ParamId, PlanCx};
use crate::gpu::{Gpu, Result, Tensor};

pub struct Linear {
    name: String,
    pub in_features: usize,
    pub out_features: usize,
    weight: ParamId,
    bias: ParamId,
    mask: Option<Mask>,
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
        let mask = ids
            .2
            .map(|t| Mask::new(gpu, name, t, &[out_features, in_features], out_features, 1))
            .transpose()?;
        Ok(Linear {
            name: name.to_string(),
            in_features,
            out_features,
            weight: ids.0,
            bias: ids.1,
            mask,
        })
    }

    /// The weight the matmuls use: P for masked layers, W for dense ones.
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
        if let Some(m) = &self.mask {
            m.forward(cx, self.weight)?;
        }
        let y = cx.activation(&format!("{}.y", self.name), &[batch, self.out_features])?;
        let w = self.effective_weight(cx);
        let b = cx.arena.param(self.bias);
        cx.push(k.gemm.forward(gpu, &x2, &w, Some(&b), &y, &k.dummy)?);
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
        let batch = x.shape[0];
        let x2 = Tensor {
            shape: vec![batch, self.in_features],
            ..x.clone()
        };
        let (k, gpu) = (cx.kernels, cx.gpu);
        let dx = if need_dx {
            let dx = cx.activation(
                &format!("{}.d_input", self.name),
                &[batch, self.in_features],
            )?;
            let w = self.effective_weight(cx);
            cx.push(k.gemm.backward_input(gpu, dy, &w, &dx, false, &k.dummy)?);
            Some(Tensor {
                shape: x.shape.clone(),
                ..dx
            })
        } else {
            None
        };
        let d_weight = cx.arena.grad(self.weight);
        match &self.mask {
            Some(m) => {
                let d_masked = cx.activation(
                    &format!("{}.d_masked_weight", self.name),
                    &[self.out_features, self.in_features],
                )?;
                cx.push(
                    k.gemm
                        .backward_weight(gpu, dy, &x2, &d_masked, false, &k.dummy)?,
                );
                m.backward(cx, self.weight, &d_masked)?;
            }
            None => cx.push(
                k.gemm
                    .backward_weight(gpu, dy, &x2, &d_weight, false, &k.dummy)?,
            ),
        }
        let d_bias = cx.arena.grad(self.bias);
        cx.push(k.gemm.bias_backward(gpu, dy, &d_bias)?);
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
