//! Batch normalisation (shaders/batchnorm.wgsl) as PyTorch's BatchNorm1d and BatchNorm2d with
//! their defaults: eps 1e-5, momentum 0.1, affine, running statistics tracked. Never masked
//! (METHOD.md section 1).
//!
//! The input is `(batch, channels, ...)`: `(N, C)` for 1d, `(N, C, H, W)` for 2d; statistics are
//! per channel over the batch and the trailing positions. A training plan normalises with the
//! batch's mean and biased variance and updates the running statistics once per step (in its
//! forward); an evaluation plan normalises with the running statistics and leaves them alone.
//! Parameters `<name>.weight` (gamma) and `<name>.bias` (beta) are trained like every parameter;
//! the running statistics `<name>.running_mean`, `<name>.running_var` live in the arena's state
//! arena: checkpointed, never optimised.

use super::{ArenaBuilder, Init, Layer, Mode, ParamId, PlanCx, StateId};
use crate::gpu::{Result, Tensor};
use crate::kernels::batchnorm::BnShape;

pub struct BatchNorm {
    name: String,
    pub channels: usize,
    weight: ParamId,
    bias: ParamId,
    running_mean: StateId,
    running_var: StateId,
}

/// The ids `BatchNorm::declare` returns: weight (gamma), bias (beta), running mean, running var.
pub type BatchNormIds = (ParamId, ParamId, StateId, StateId);

impl BatchNorm {
    /// Declares weight (gamma) `(channels)` = 1, bias (beta) = 0, and the states running_mean = 0,
    /// running_var = 1 (PyTorch's initialisation).
    pub fn declare(arena: &mut ArenaBuilder, name: &str, channels: usize) -> BatchNormIds {
        Self::declare_scaled(arena, name, channels, 1.0)
    }

    /// `declare` with gamma initialised to `scale` (the paper's VGG-16 uses 0.5).
    pub fn declare_scaled(
        arena: &mut ArenaBuilder,
        name: &str,
        channels: usize,
        scale: f64,
    ) -> BatchNormIds {
        let w = arena.param(&format!("{name}.weight"), &[channels], Init::Const(scale));
        let b = arena.param(&format!("{name}.bias"), &[channels], Init::Zeros);
        let rm = arena.state(&format!("{name}.running_mean"), &[channels], Init::Zeros);
        let rv = arena.state(
            &format!("{name}.running_var"),
            &[channels],
            Init::Const(1.0),
        );
        (w, b, rm, rv)
    }

    pub fn new(name: &str, channels: usize, ids: BatchNormIds) -> BatchNorm {
        BatchNorm {
            name: name.to_string(),
            channels,
            weight: ids.0,
            bias: ids.1,
            running_mean: ids.2,
            running_var: ids.3,
        }
    }

    /// The kernels' view of a batch input `(batch, channels, ...)`.
    fn shape(&self, x: &Tensor) -> BnShape {
        assert!(
            x.shape.len() >= 2,
            "{}: input {:?} is not (batch, channels, ...)",
            self.name,
            x.shape
        );
        assert_eq!(x.shape[1], self.channels, "{}: input channels", self.name);
        BnShape {
            batch: x.shape[0],
            channels: self.channels,
            spatial: x.shape[2..].iter().product(),
        }
    }

    fn stats_key(&self) -> String {
        format!("{}.stats", self.name)
    }
}

impl Layer for BatchNorm {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn min_train_batch(&self, input: &[usize]) -> Option<(String, usize)> {
        // One value per channel per sample (BatchNorm1d): one sample has no variance.
        (input.iter().skip(1).product::<usize>() <= 1).then(|| (self.name.clone(), 2))
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let s = self.shape(x);
        let (k, gpu, a) = (&cx.kernels.batchnorm, cx.gpu, cx.arena);
        // (mean, inv_std) per channel, kept for the backward.
        let stats = cx.activation(&format!("{}.stats", self.name), &[2, self.channels])?;
        let (rm, rv) = (a.state(self.running_mean), a.state(self.running_var));
        let d = match cx.mode {
            Mode::Train => {
                if s.batch * s.spatial <= 1 {
                    return Err(crate::gpu::GpuError::Shape(format!(
                        "{}: batch norm in training mode needs more than one value per channel \
                         (batch {} x {} positions), as in PyTorch: use --batch 2 or more",
                        self.name, s.batch, s.spatial
                    )));
                }
                k.batch_stats(gpu, &s, x, &stats, &rm, &rv, cx.step)?
            }
            Mode::Eval => k.running_stats(gpu, &s, &rm, &rv, &stats)?,
        };
        cx.push(d);
        let y = cx.activation(&format!("{}.y", self.name), &x.shape)?;
        let (w, b) = (a.param(self.weight), a.param(self.bias));
        cx.push(k.forward(gpu, &s, x, &stats, &w, &b, &y)?);
        cx.save(&self.stats_key(), stats);
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
        let stats = cx.saved(&self.stats_key());
        let (k, gpu, a) = (&cx.kernels.batchnorm, cx.gpu, cx.arena);
        let (dw, db) = (a.grad(self.weight), a.grad(self.bias));
        cx.push(k.backward_params(gpu, &s, x, dy, &stats, &dw, &db, cx.step)?);
        if !need_dx {
            return Ok(None);
        }
        let dx = cx.activation(&format!("{}.d_input", self.name), &x.shape)?;
        let w = a.param(self.weight);
        let train = cx.mode == Mode::Train;
        cx.push(k.backward_input(gpu, &s, train, x, dy, &stats, &w, &dw, &db, &dx, cx.step)?);
        Ok(Some(dx))
    }
}
