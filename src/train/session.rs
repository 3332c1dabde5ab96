//! A model on the GPU with its kernels: plans, replaying steps, evaluation, metrics readback,
//! snapshots and restores. Knows nothing of run directories or the loop.

use std::path::Path;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::Dataset;
use crate::gpu::{Gpu, GpuError, Tensor};
use crate::kernels::loss::STATS_WORDS;
use crate::kernels::masked::ResetPolicy;
use crate::kernels::{Kernels, StepInfo, StepRing};
use crate::models::Model;
use crate::nn::{MaskView, Mode};
use crate::plan::{GpuData, Optimizer, Plan};

use super::{LayerStats, Result, TrainError};

/// A model with its device, kernels and datasets, ready to train or evaluate.
pub struct Session {
    pub gpu: Gpu,
    pub kernels: std::sync::Arc<Kernels>,
    pub model: Model,
    pub step_ring: StepRing,
    /// One f32: the factor on alpha that the target-keep controller sets between windows.
    pub alpha_scale: Tensor,
    /// The dead-layer policy the plans are built with.
    pub reset: ResetPolicy,
    /// Keep ratio at or below which a masked linear layer computes with its kept weights only
    /// (`kernels::sparse::default_sparse_keep` for this adapter unless set).
    pub sparse_keep: f64,
    /// The same for a masked convolution (`kernels::sparse::default_sparse_keep_conv` unless
    /// set).
    pub sparse_keep_conv: f64,
    /// The same for a masked LSTM layer's recurrent steps
    /// (`kernels::sparse::default_sparse_keep_lstm` unless set).
    pub sparse_keep_lstm: f64,
    /// Input density at or below which such a layer computes its forward from its input's
    /// nonzeros (`kernels::sparse::default_sparse_input` for this adapter unless set).
    pub sparse_input: f64,
    /// Training plans with SGD fuse a weight's SGD step into its weight-gradient product where
    /// the adapter has the kernel (default on; the unfused passes compute the same values).
    pub fuse_sgd: bool,
}

const SLOTS: u32 = 64;

/// Images per evaluation batch (at most; see `Session::eval_plan`).
pub const EVAL_BATCH: usize = 500;

impl Session {
    /// `adam`: allocate Adam's second-moment arena (and checkpoint it).
    pub fn new(gpu: Gpu, model_name: &str, masked: bool, seed: u64, adam: bool) -> Result<Session> {
        let kernels = Kernels::new(&gpu, None)?;
        let gpu_class = gpu.class;
        let model = Model::build(&gpu, model_name, masked, seed, adam)?;
        let step_ring = StepRing::new(&gpu, &kernels, SLOTS);
        let alpha_scale = Tensor::from_slice(&gpu, "alpha_scale", &[1], &[1.0f32])?;
        Ok(Session {
            gpu,
            kernels,
            model,
            step_ring,
            alpha_scale,
            reset: ResetPolicy::Paper,
            sparse_keep: crate::kernels::sparse::default_sparse_keep(gpu_class),
            sparse_keep_conv: crate::kernels::sparse::default_sparse_keep_conv(gpu_class),
            sparse_keep_lstm: crate::kernels::sparse::default_sparse_keep_lstm(gpu_class),
            sparse_input: crate::kernels::sparse::default_sparse_input(gpu_class),
            fuse_sgd: true,
        })
    }

    /// Puts `ds` on the GPU (a training set with `augment` gets its crop-and-flip draws, used by
    /// training plans; call `GpuData::start_epoch` each epoch).
    pub fn upload(&self, name: &str, ds: &Dataset) -> Result<GpuData> {
        // The shape, not only the number of values: 7x112 images are 784 values too.
        let want = crate::models::info(&self.model.name).map(|i| i.dataset.shape());
        let got = [ds.channels, ds.rows, ds.cols];
        if ds.pixels() != self.model.input.iter().product::<usize>()
            || want.as_ref().is_ok_and(|w| *w != got)
        {
            return Err(TrainError::Config(format!(
                "{name} data has {}x{}x{} images (channels x rows x cols), {} expects {}",
                ds.channels,
                ds.rows,
                ds.cols,
                self.model.name,
                match want {
                    Ok([c, r, k]) => format!("{c}x{r}x{k}"),
                    Err(_) => format!("{:?} values per sample", self.model.input),
                }
            )));
        }
        Ok(GpuData::upload(&self.gpu, name, ds)?)
    }

    pub fn plan(
        &self,
        data: &GpuData,
        batch: usize,
        mode: Mode,
        alpha: f32,
        opt: Optimizer,
    ) -> Result<Plan> {
        Ok(Plan::build(
            &self.gpu,
            &self.kernels,
            &self.model,
            &self.step_ring,
            data,
            batch,
            mode,
            alpha,
            opt,
            &self.alpha_scale,
            self.reset,
            self.sparse_keep,
            self.sparse_keep_conv,
            self.sparse_keep_lstm,
            self.sparse_input,
            self.fuse_sgd,
        )?)
    }

    /// The evaluation plan over `data`: batches of 500 images (fewer when the set is smaller), or
    /// half as many, and so on, where an activation of 500 would not fit one buffer of this
    /// adapter (evaluation batches are the program's choice, not the user's: an evaluation never
    /// fails for their size). Accuracy does not depend on the batch.
    pub fn eval_plan(&self, data: &GpuData, alpha: f32) -> Result<Plan> {
        // An evaluation plan records no optimiser step: any value does.
        let unused = Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let mut batch = EVAL_BATCH.min(data.count).max(1);
        loop {
            match self.plan(data, batch, Mode::Eval, alpha, unused) {
                Err(TrainError::Gpu(GpuError::TooLarge { .. })) if batch > 1 => batch /= 2,
                r => return r,
            }
        }
    }

    /// Sets the factor on alpha for the steps submitted from now on.
    pub fn set_alpha_scale(&self, scale: f32) {
        self.gpu.write(&self.alpha_scale, &[scale]);
    }

    /// Replays `plan` once per StepInfo, `SLOTS` steps per submission, keeping at most two
    /// submissions in flight. No readback.
    pub fn run_steps(&self, plan: &Plan, infos: &[StepInfo]) -> Result<()> {
        let mut in_flight: Option<wgpu::SubmissionIndex> = None;
        let last = infos.len().div_ceil(SLOTS as usize).checked_sub(1);
        for (ci, chunk) in infos.chunks(SLOTS as usize).enumerate() {
            self.step_ring.write(&self.gpu, chunk);
            let mut enc = self
                .gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("steps"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("steps"),
                    timestamp_writes: None,
                });
                for slot in 0..chunk.len() as u32 {
                    plan.record(&mut pass, &self.step_ring, slot);
                }
                if last == Some(ci) {
                    for d in &plan.window_end {
                        d.record(&mut pass, 0);
                    }
                }
            }
            let idx = self.gpu.queue.submit([enc.finish()]);
            if let Some(prev) = in_flight.replace(idx) {
                self.gpu
                    .device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(prev),
                        timeout: None,
                    })
                    .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
            }
            // The ring is rewritten by the next chunk's write, ordered after this submission.
        }
        self.gpu.check("training steps")?;
        Ok(())
    }

    /// Reads a stats buffer and zeroes it.
    pub fn take_stats(&self, stats: &Tensor) -> Result<Stats> {
        let w = self.gpu.read::<u32>(stats)?;
        self.gpu.write(stats, &[0u32; STATS_WORDS]);
        Ok(Stats {
            loss_sum: f32::from_bits(w[0]) as f64,
            penalty_sum: f32::from_bits(w[1]) as f64,
            correct: w[2] as u64,
            seen: w[3] as u64,
            non_finite: w[4] != 0,
            non_finite_params: w[5] != 0,
        })
    }

    /// Test loss and accuracy over `data` (forward passes with the reset rule, as in training).
    pub fn evaluate(&self, plan: &Plan, data: &GpuData) -> Result<(f64, f64)> {
        self.evaluate_in_chunks(plan, data, usize::MAX, &mut |_| {})
    }

    /// `evaluate` submitted at most `chunk` batches at a time, `progress(images done)` after each
    /// submission has run: the same sums in the same order (the statistics add up on the GPU
    /// until read). The submissions start at one batch and double while one takes under half a
    /// second, so a slow model (a CIFAR-10 model on a CPU adapter: most of a minute a batch)
    /// reports every batch and a fast one does not wait on the GPU after each.
    pub fn evaluate_in_chunks(
        &self,
        plan: &Plan,
        data: &GpuData,
        chunk: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(f64, f64)> {
        let b = plan.batch;
        let infos: Vec<StepInfo> = (0..data.count.div_ceil(b))
            .map(|i| StepInfo {
                batch_start: (i * b) as u32,
                valid: (data.count - i * b).min(b) as u32,
                ..Default::default()
            })
            .collect();
        let (mut done, mut next) = (0, 0);
        // One submission where no progress is asked for.
        let mut size = if chunk == usize::MAX { chunk } else { 1 };
        while next < infos.len() {
            let part = &infos[next..next + size.min(infos.len() - next)];
            let t = std::time::Instant::now();
            self.run_steps(plan, part)?;
            next += part.len();
            done += part.iter().map(|i| i.valid as usize).sum::<usize>();
            if chunk != usize::MAX {
                self.gpu.wait()?;
                size = next_submission(size, t.elapsed(), chunk);
            }
            progress(done);
        }
        let s = self.take_stats(&plan.stats)?;
        Ok((
            s.loss_sum / infos.len() as f64,
            100.0 * s.correct as f64 / s.seen.max(1) as f64,
        ))
    }

    /// The keep counters [before reset, after, resets, spare] of each masked layer, in one readback.
    fn layer_keeps(&self, views: &[MaskView]) -> Result<Vec<[u32; 4]>> {
        let ranges: Vec<_> = views
            .iter()
            .map(|v| (&*v.layer_keep.buffer, v.layer_keep.offset, 16u64))
            .collect();
        Ok(self
            .gpu
            .read_ranges(&ranges)?
            .iter()
            .map(|k| {
                let w: Vec<u32> = bytemuck::pod_collect_to_vec(k);
                [w[0], w[1], w[2], w[3]]
            })
            .collect())
    }

    /// (matrix, kept, total) of every masked matrix, from the keep counters alone (a few bytes).
    pub fn keep_counts(&self) -> Result<Vec<(String, u64, u64)>> {
        let views = self.model.mask_views();
        let keeps = self.layer_keeps(&views)?;
        Ok(views
            .iter()
            .zip(keeps)
            .map(|(v, k)| (v.name.clone(), k[1] as u64, (v.rows * v.cols) as u64))
            .collect())
    }

    /// (layer, keep ratio) of every masked layer, from the keep counters alone (a few bytes).
    pub fn keep_ratios(&self) -> Result<Vec<(String, f64)>> {
        let views = self.model.mask_views();
        let keeps = self.layer_keeps(&views)?;
        Ok(views
            .iter()
            .zip(keeps)
            .map(|(v, k)| (v.name.clone(), k[1] as f64 / (v.rows * v.cols) as f64))
            .collect())
    }

    /// Per-layer keep ratios and threshold statistics (reads the keep counters and the arena).
    pub fn layer_stats(&self) -> Result<Vec<LayerStats>> {
        let views = self.model.mask_views();
        let params = self.gpu.read::<f32>(&self.model.arena.params)?;
        let mut out = Vec::new();
        if views.is_empty() {
            for e in &self.model.arena.layout.entries {
                // Matrices and kernels only (`.weight`, and an LSTM's `.weight_ih` and
                // `.weight_hh`): batch norm's 1-D weight (gamma) is no layer here.
                let last = e.name.rsplit('.').next().unwrap_or("");
                if last.starts_with("weight") && e.shape.len() >= 2 {
                    let n = e.len() as u64;
                    out.push(LayerStats {
                        name: e.name.trim_end_matches(".weight").to_string(),
                        // The row view of METHOD.md section 1, as for masked layers.
                        shape: vec![e.shape[0], e.shape[1..].iter().product()],
                        kept: n,
                        total: n,
                        keep_ratio: 1.0,
                        threshold_min: None,
                        threshold_mean: None,
                        threshold_max: None,
                        resets: 0,
                    });
                }
            }
            return Ok(out);
        }
        for (v, k) in views.iter().zip(self.layer_keeps(&views)?) {
            let e = &self.model.arena.layout.entries[v.threshold.0];
            let t = &params[e.offset + v.threshold_rows.start..e.offset + v.threshold_rows.end];
            let total = (v.rows * v.cols) as u64;
            out.push(LayerStats {
                name: v.name.clone(),
                shape: vec![v.rows, v.cols],
                kept: k[1] as u64,
                total,
                keep_ratio: k[1] as f64 / total as f64,
                threshold_min: Some(t.iter().copied().fold(f32::INFINITY, f32::min) as f64),
                threshold_mean: Some(t.iter().map(|&x| x as f64).sum::<f64>() / t.len() as f64),
                threshold_max: Some(t.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64),
                resets: k[2],
            });
        }
        Ok(out)
    }

    /// For a masked first layer that reads the image directly: a picture (8x upscaled, grey) of
    /// how many of its rows keep each input pixel, white = the most-kept pixel, black = pruned by
    /// every row. DST prunes MNIST's empty border.
    pub fn input_mask_image(&self, rows: usize, cols: usize) -> Result<Option<image::GrayImage>> {
        let Some(v) = self.model.mask_views().into_iter().next() else {
            return Ok(None);
        };
        if v.cols != rows * cols {
            return Ok(None);
        }
        let a = &self.model.arena;
        let params = self.gpu.read::<f32>(&a.params)?;
        let Some(w_entry) = a.layout.find(&format!("{}.weight", v.name)) else {
            return Ok(None);
        };
        let t_entry = &a.layout.entries[v.threshold.0];
        let w = &params[w_entry.offset..w_entry.offset + w_entry.len()];
        let t = &params[t_entry.offset..t_entry.offset + t_entry.len()];
        let mut kept = vec![0u32; v.cols];
        for r in 0..v.rows {
            for (c, k) in kept.iter_mut().enumerate() {
                *k += (w[r * v.cols + c].abs() - t[r] > 0.0) as u32;
            }
        }
        const SCALE: usize = 8;
        let most = kept.iter().copied().max().unwrap_or(0).max(1) as f64;
        let img =
            image::GrayImage::from_fn((cols * SCALE) as u32, (rows * SCALE) as u32, |x, y| {
                let (px, py) = (x as usize / SCALE, y as usize / SCALE);
                let f = kept[py * cols + px] as f64 / most;
                image::Luma([(255.0 * f).round() as u8])
            });
        Ok(Some(img))
    }

    /// Parameters, optimiser state and state tensors (batch norm's running statistics) as a
    /// checkpoint (metadata added by the caller).
    pub fn snapshot(&self) -> Result<Checkpoint> {
        let mut ck = Checkpoint {
            tensors: self.model.arena.snapshot(&self.gpu)?,
            ..Default::default()
        };
        ck.metadata.insert("model".into(), self.model.name.clone());
        ck.metadata
            .insert("masked".into(), self.model.masked.to_string());
        Ok(ck)
    }

    /// Restores parameters, state tensors and (when `with_optim`) optimiser state from a
    /// checkpoint, refusing one of another model or shape.
    pub fn restore(&self, ck: &Checkpoint, path: &Path, with_optim: bool) -> Result<()> {
        let mismatch = |reason: String| CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason,
        };
        let model = ck.meta("model").unwrap_or("?");
        let masked = ck.meta("masked").unwrap_or("?");
        if model != self.model.name || masked != self.model.masked.to_string() {
            return Err(mismatch(format!(
                "checkpoint of model {model} (masked {masked}), expected {} (masked {})",
                self.model.name, self.model.masked
            ))
            .into());
        }
        self.model
            .arena
            .restore(&self.gpu, ck, with_optim)
            .map_err(mismatch)?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub loss_sum: f64,
    pub penalty_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub non_finite: bool,
    /// A parameter or optimiser value was NaN or infinite at the end of the window.
    pub non_finite_params: bool,
}

/// The batches of an evaluation's next submission after one of `size` batches that took
/// `took` (`Session::evaluate_in_chunks`): twice as many while one takes under half a second, at
/// most `cap` (at least 1).
pub fn next_submission(size: usize, took: std::time::Duration, cap: usize) -> usize {
    let size = if took < std::time::Duration::from_millis(500) {
        size.saturating_mul(2)
    } else {
        size
    };
    size.clamp(1, cap.max(1))
}

#[cfg(test)]
mod tests {
    /// Submissions double while fast, stay while slow, and never pass the cap (nor fall below 1).
    #[test]
    fn evaluation_submissions_grow_to_their_cap() {
        use std::time::Duration;
        let fast = Duration::from_millis(10);
        let slow = Duration::from_secs(2);
        let mut size = 1;
        let mut seen = Vec::new();
        for _ in 0..6 {
            size = super::next_submission(size, fast, 10);
            seen.push(size);
        }
        assert_eq!(seen, [2, 4, 8, 10, 10, 10]);
        assert_eq!(super::next_submission(4, slow, 10), 4);
        assert_eq!(super::next_submission(1, fast, 1), 1);
        assert_eq!(super::next_submission(1, fast, 0), 1);
    }
}
