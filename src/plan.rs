//! Plans: every dispatch of a training step (gather, forward, penalty, loss, backward, optimiser)
//! or of an evaluation batch, built once and replayed. Per-step values come from the step ring.

use crate::gpu::{Gpu, Result, Tensor};
use crate::kernels::loss::STATS_WORDS;
use crate::kernels::optim::CHECK_PARTIALS;
use crate::kernels::{Dispatch, Kernels, StepInfo, StepRing};
use crate::models::Model;
use crate::nn::{Mode, PlanCx};

/// A dataset resident on the GPU: image bytes packed four per u32 (in two buffers when one
/// binding cannot hold them), labels, the table of input values, the epoch's order and, for a
/// training set that augments, the epoch's crop and flip draws.
pub struct GpuData {
    /// Samples `[0, split)`.
    pub images_lo: Tensor,
    /// Samples `[split, count)` (one zero word when `split == count`).
    pub images_hi: Tensor,
    pub split: usize,
    pub labels: Tensor,
    pub perm: Tensor,
    /// `lut[c * 256 + b]`: the input value of byte b in channel c (`Dataset::lut`).
    pub lut: Tensor,
    /// One packed `CropFlip` per position of the epoch's order (`data::augment`); `Some` for a
    /// set with `augment`, used by training plans only. Identity crops until `start_epoch`.
    pub crops: Option<Tensor>,
    pub count: usize,
    /// Values per sample (channels x rows x cols).
    pub pixels: usize,
    /// (channels, rows, cols) of one image.
    pub shape: [usize; 3],
}

fn pack(bytes: &[u8]) -> Vec<u32> {
    let mut v: Vec<u32> = bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    if v.is_empty() {
        v.push(0);
    }
    v
}

impl GpuData {
    /// Uploads `ds`, its images in one buffer if one binding holds them, else in two.
    pub fn upload(gpu: &Gpu, name: &str, ds: &crate::data::Dataset) -> Result<GpuData> {
        let px = ds.pixels().max(1);
        let per_binding = (gpu.max_binding() as usize / px).max(1);
        Self::upload_split(gpu, name, ds, ds.count.min(per_binding))
    }

    /// Uploads `ds` with samples `[0, split)` in the first image buffer and the rest in the second
    /// (either may be refused as too large for one binding).
    pub fn upload_split(
        gpu: &Gpu,
        name: &str,
        ds: &crate::data::Dataset,
        split: usize,
    ) -> Result<GpuData> {
        let split = split.min(ds.count);
        let at = split * ds.pixels();
        let lo = pack(&ds.images[..at]);
        let hi = pack(&ds.images[at..]);
        let labels = pack(&ds.labels);
        let iota: Vec<u32> = (0..ds.count as u32).collect();
        let lut = ds.lut();
        let crops = if ds.augment {
            let identity = crate::data::augment::CropFlip::IDENTITY.pack();
            Some(Tensor::from_slice(
                gpu,
                &format!("{name}.crops"),
                &[ds.count],
                &vec![identity; ds.count],
            )?)
        } else {
            None
        };
        Ok(GpuData {
            images_lo: Tensor::from_slice(gpu, &format!("{name}.images"), &[lo.len()], &lo)?,
            images_hi: Tensor::from_slice(gpu, &format!("{name}.images_hi"), &[hi.len()], &hi)?,
            split,
            labels: Tensor::from_slice(gpu, &format!("{name}.labels"), &[labels.len()], &labels)?,
            perm: Tensor::from_slice(gpu, &format!("{name}.perm"), &[ds.count], &iota)?,
            lut: Tensor::from_slice(gpu, &format!("{name}.lut"), &[lut.len()], &lut)?,
            crops,
            count: ds.count,
            pixels: ds.pixels(),
            shape: [ds.channels, ds.rows, ds.cols],
        })
    }

    /// The images as the gather kernels read them.
    pub fn images(&self) -> crate::kernels::data::Images<'_> {
        crate::kernels::data::Images {
            lo: &self.images_lo,
            hi: &self.images_hi,
            split: self.split,
            shape: self.shape,
        }
    }

    /// Writes epoch `epoch`'s order (`Rng::derive(seed, "epoch E")`'s permutation) and, for a set
    /// that augments, its crops and flips (`data::augment::epoch_words`): both functions of
    /// (seed, epoch) only, so a resumed run replays them exactly.
    pub fn start_epoch(&self, gpu: &Gpu, seed: u64, epoch: usize) {
        let perm = crate::rng::Rng::derive(seed, &format!("epoch {epoch}")).permutation(self.count);
        gpu.write(&self.perm, &perm);
        if let Some(crops) = &self.crops {
            gpu.write(
                crops,
                &crate::data::augment::epoch_words(seed, epoch, self.count),
            );
        }
    }
}

/// Which optimiser a training plan ends with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd {
        momentum: f32,
        weight_decay: f32,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f32,
    },
}

impl Optimizer {
    pub fn is_adam(&self) -> bool {
        matches!(self, Optimizer::Adam { .. })
    }

    /// The per-step values of optimiser step `step` (1-based) at learning rate `lr`; Adam's bias
    /// corrections are computed in f64 on the host, as torch does.
    pub fn step_info(&self, step: u64, lr: f64, batch_start: usize, valid: usize) -> StepInfo {
        let mut info = StepInfo {
            batch_start: batch_start as u32,
            valid: valid as u32,
            step: step as u32,
            lr: lr as f32,
            ..Default::default()
        };
        if let Optimizer::Adam { beta1, beta2, .. } = *self {
            let (size, bc2) =
                crate::reference::optim::adam_step_values(step as u32, lr, beta1, beta2);
            info.adam_step_size = size as f32;
            info.adam_bc2_sqrt = bc2 as f32;
        }
        info
    }
}

pub struct Plan {
    pub dispatches: Vec<Dispatch>,
    /// The layer that recorded each dispatch ("" for the plan's own), for profiles.
    pub owners: Vec<String>,
    /// Recorded once after the last step of a window (before its stats are read): the divergence
    /// guard over the parameter arenas (training plans only).
    pub window_end: Vec<Dispatch>,
    /// The loss stats this plan accumulates into.
    pub stats: Tensor,
    /// The last batch's logits `(batch, classes)`.
    pub logits: Tensor,
    pub batch: usize,
}

impl Plan {
    /// Replays the plan into a compute pass, reading StepInfo slot `slot`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepRing, slot: u32) {
        for d in &self.dispatches {
            d.record(pass, slot * step.stride);
        }
    }

    /// Builds the plan of one training step (`Mode::Train`) or one evaluation batch (`Mode::Eval`).
    /// The penalty weight is `alpha * alpha_scale[0]`; `reset` is the dead-layer policy;
    /// `sparse_keep` the keep ratio at or below which masked linear layers use sparse products
    /// (`sparse_keep_conv`: masked convolutions, `sparse_keep_lstm`: masked LSTM layers'
    /// recurrent steps),
    /// `sparse_input` the input density at or below which they compute their forward from the
    /// input's nonzeros;
    /// `fuse_sgd`: with SGD, layers that can may fuse their weights' SGD step into their
    /// weight-gradient products (`PlanCx::fused_sgd`).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        gpu: &Gpu,
        kernels: &Kernels,
        model: &Model,
        step: &StepRing,
        data: &GpuData,
        batch: usize,
        mode: Mode,
        alpha: f32,
        optimizer: Optimizer,
        alpha_scale: &Tensor,
        reset: crate::kernels::masked::ResetPolicy,
        sparse_keep: f64,
        sparse_keep_conv: f64,
        sparse_keep_lstm: f64,
        sparse_input: f64,
        fuse_sgd: bool,
    ) -> Result<Plan> {
        let stats = Tensor::zeros(gpu, &format!("{mode:?}.stats"), &[STATS_WORDS])?;
        let mut cx = PlanCx::new(gpu, kernels, &model.arena, step, mode, alpha, stats.clone());
        cx.alpha_scale = alpha_scale.clone();
        cx.reset = reset;
        cx.sparse_keep = sparse_keep;
        cx.sparse_keep_conv = sparse_keep_conv;
        cx.sparse_keep_lstm = sparse_keep_lstm;
        cx.sparse_input = sparse_input;
        if let (
            Mode::Train,
            true,
            Optimizer::Sgd {
                momentum,
                weight_decay,
            },
        ) = (mode, fuse_sgd, optimizer)
        {
            cx.fused_sgd = Some((momentum, weight_decay));
        }
        let mut shape = vec![batch];
        shape.extend(&model.input);
        let rows = cx.activation("input", &[batch, data.pixels])?;
        let labels = cx.activation("labels", &[batch])?;
        // Training batches of a set that augments are cropped and flipped; evaluation never is.
        cx.push(match (&data.crops, mode) {
            (Some(crops), Mode::Train) => kernels.data.gather_crop_flip(
                gpu,
                &data.images(),
                &data.labels,
                &data.perm,
                &data.lut,
                crops,
                crate::data::augment::PAD,
                &rows,
                &labels,
                step,
            )?,
            _ => kernels.data.gather(
                gpu,
                &data.images(),
                &data.labels,
                &data.perm,
                &data.lut,
                &rows,
                &labels,
                step,
            )?,
        });
        // The same buffer in the model's per-sample shape (e.g. 1 x 28 x 28 for a conv net).
        let x = Tensor { shape, ..rows };
        let mut acts = vec![x];
        for (i, layer) in model.layers.iter().enumerate() {
            cx.layer = layer.name().to_string();
            cx.first_layer = i == 0;
            let y = layer.forward(&mut cx, acts.last().unwrap())?;
            acts.push(y);
        }
        cx.layer.clear();
        cx.first_layer = false;
        let logits = acts.last().unwrap().clone();
        let train = mode == Mode::Train;
        if train {
            // After the forward: a reset in this forward is already visible (METHOD.md section 3).
            for layer in &model.layers {
                cx.layer = layer.name().to_string();
                layer.penalty(&mut cx)?;
            }
            cx.layer.clear();
        }
        let d_logits = cx.activation("d_logits", &logits.shape)?;
        let logits_out = logits.clone();
        cx.push(
            kernels
                .loss
                .softmax_xent(gpu, &logits, &labels, &d_logits, train, &stats, step)?,
        );
        if train {
            let mut dy = d_logits;
            for (i, layer) in model.layers.iter().enumerate().rev() {
                let need_dx = i > 0;
                cx.layer = layer.name().to_string();
                match layer.backward(&mut cx, &acts[i], &acts[i + 1], &dy, need_dx)? {
                    Some(dx) => dy = dx,
                    None => break,
                }
            }
            cx.layer.clear();
            let a = &model.arena;
            cx.push(match optimizer {
                Optimizer::Sgd {
                    momentum,
                    weight_decay,
                } if !cx.self_updated.is_empty() => {
                    let skip: Vec<_> = cx
                        .self_updated
                        .iter()
                        .map(|&id| {
                            let e = &a.layout.entries[id.0];
                            e.offset..e.offset + e.len()
                        })
                        .collect();
                    kernels.optim.sgd_except(
                        gpu,
                        &a.params,
                        &a.grads,
                        &a.moment1,
                        &skip,
                        momentum,
                        weight_decay,
                        step,
                    )?
                }
                Optimizer::Sgd {
                    momentum,
                    weight_decay,
                } => kernels.optim.sgd(
                    gpu,
                    &a.params,
                    &a.grads,
                    &a.moment1,
                    &a.moment2,
                    momentum,
                    weight_decay,
                    step,
                )?,
                Optimizer::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => kernels.optim.adam(
                    gpu,
                    &a.params,
                    &a.grads,
                    &a.moment1,
                    &a.moment2,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    step,
                )?,
            });
        }
        let mut window_end = Vec::new();
        if train {
            let a = &model.arena;
            let partial = Tensor::zeros(gpu, "check.partial", &[CHECK_PARTIALS])?;
            window_end.extend(
                kernels
                    .optim
                    .check_finite(gpu, &a.params, &a.moment1, &a.moment2, &partial, &stats)?,
            );
        }
        Ok(Plan {
            dispatches: cx.dispatches,
            owners: cx.owners,
            window_end,
            stats,
            logits: logits_out,
            batch,
        })
    }
}
