//! `shaders/masked.wgsl`: the DST masked layer (mask, reset, backward, penalty).

use super::sparse::Switch;
use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/masked.wgsl");

/// Keep in sync with `MaskParams` in shaders/masked.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MaskParams {
    pub rows: u32,
    pub cols: u32,
    pub alpha: f32,
    /// `mask_reset`: the rows form this many stacked matrices, each reset on its own.
    pub groups: u32,
    /// `mask_reset`: what happens to a dying matrix (`ResetPolicy as u32`).
    pub policy: u32,
    /// `mask_reset`: how many dispatches the matrix's keep count switches (`sparse::Switch`).
    pub n_switch: u32,
    /// `mask_reset`: a keep count at most this selects the sparse products.
    pub sparse_max: u32,
    /// `mask_forward*`, `mask_reset`: P is stored transposed (cols x rows; one matrix).
    pub p_transposed: u32,
    /// `mask_reset`: also add the penalty's value to stats[1].
    pub penalty: u32,
    /// `mask_reset` under the floor: `layer_keep[4 ..]` holds the recompute dispatch.
    pub recompute: u32,
    /// `narrow_weight_grad`: the samples its sums run over.
    pub batch: u32,
    pub _pad: u32,
}

/// What `mask_reset` does to a matrix whose keep ratio fell to 1 % or less (METHOD.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetPolicy {
    /// The paper's rule: thresholds to 0, the matrix is dense again for this pass.
    Paper = 0,
    /// Every row keeps at least its strongest weight: thresholds at or above the row's largest
    /// |w| come down to 0.999 of it. The matrix cannot die and does not jump back to dense.
    Floor = 1,
    /// No reset: a matrix may die.
    None = 2,
    /// Not a policy: the pass after a floor that only counts what the matrix keeps.
    Count = 3,
}

impl ResetPolicy {
    pub const NAMES: &'static str = "paper, floor, none";

    pub fn parse(s: &str) -> Option<ResetPolicy> {
        match s {
            "paper" => Some(ResetPolicy::Paper),
            "floor" => Some(ResetPolicy::Floor),
            "none" => Some(ResetPolicy::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ResetPolicy::Paper => "paper",
            ResetPolicy::Floor => "floor",
            ResetPolicy::None => "none",
            ResetPolicy::Count => "count",
        }
    }
}

fn rows_cols_default() -> MaskParams {
    MaskParams {
        groups: 1,
        ..Default::default()
    }
}

/// The penalty's value, added by a mask pass (training, one matrix): `stats[1] += alpha *
/// alpha_scale[0] * sum exp(-t)`.
#[derive(Clone, Copy)]
pub struct PenaltyInto<'a> {
    pub stats: &'a Tensor,
    pub alpha: f32,
    pub alpha_scale: &'a Tensor,
}

/// What a mask pass does beyond P, the counters and the reset (all for one-matrix layers).
#[derive(Clone, Copy, Default)]
pub struct PassExtras<'a> {
    /// Set this dense/sparse switch from the final keep count.
    pub switch: Option<&'a Switch>,
    /// Write P transposed (`cols x rows`).
    pub p_transposed: bool,
    /// Add the penalty's value (after this pass's reset).
    pub penalty: Option<PenaltyInto<'a>>,
    /// `layer_keep` is an indirect buffer of `RECOMPUTE_WORDS` words: under the floor, the second
    /// `mask_forward` runs (indirect) only in steps where the floor acted.
    pub recompute: bool,
    /// The pass's first `mask_forward` writes the counters only, not P (`mask_count_rowwise`; CPU
    /// adapters): for a layer that writes the part of P^T it reads itself (sparse.wgsl's
    /// `masked_columns`).
    pub count_only: bool,
}

/// Words of a one-matrix `layer_keep` that holds the floor's recompute dispatch: the 4 counters,
/// 3 live workgroup counts, their 3-word template.
pub const RECOMPUTE_WORDS: usize = 10;

pub struct Masked {
    /// Use `mask_forward_rowwise` (CPU adapters) in `mask_forward` and the 8 x 8 `mask_backward`
    /// in `mask_backward` (else `mask_backward_rows`, a workgroup per row).
    pub rowwise: bool,
    /// A buffer holding 1.0: the alpha scale of dispatches built without the trainer's.
    pub one: Tensor,
    /// Bound as `mask_reset`'s switch where a layer has none.
    dummy_switch: Tensor,
    /// Bound as `mask_reset`'s stats where the pass adds no penalty.
    dummy_stats: Tensor,
    pub mask_forward_k: Kernel,
    pub mask_forward_rowwise_k: Kernel,
    pub mask_forward_rowwise4_k: Kernel,
    pub mask_count_rowwise_k: Kernel,
    pub mask_count_rowwise4_k: Kernel,
    pub mask_reset_k: Kernel,
    /// `mask_forward_rowwise4` (or `mask_count_rowwise4`) and `mask_reset` in one dispatch, for
    /// a one-matrix weight of at most `SMALL_PASS_ROWS` rows (`mask_pass`).
    pub mask_pass_small4_k: Kernel,
    pub mask_count_pass_small4_k: Kernel,
    pub mask_backward_k: Kernel,
    pub mask_backward_rows_k: Kernel,
    pub narrow_weight_grad_k: Kernel,
    pub threshold_grad_k: Kernel,
    pub penalty_k: Kernel,
    pub switch_from_groups_k: Kernel,
}

const RW: Access = Access::ReadWrite;

/// Both forms of the mask's backward: weight, threshold, d_masked, d_weight, d_threshold,
/// alpha_scale.
const BACKWARD_BINDINGS: [(u32, Access); 6] = [
    (1, RW),
    (2, RW),
    (6, RW),
    (7, RW),
    (8, RW),
    (10, Access::Read),
];

/// `mask_reset`: weight, threshold, P, row_keep, layer_keep, the switch's args, stats,
/// alpha_scale.
const RESET_BINDINGS: [(u32, Access); 8] = [
    (1, RW),
    (2, RW),
    (3, RW),
    (4, RW),
    (5, RW),
    (11, RW),
    (9, RW),
    (10, Access::Read),
];

/// The most rows a one-matrix weight may have for its mask pass and reset to be one dispatch on
/// CPU adapters (`mask_pass_small4`: one workgroup of 64 lanes, each at most two rows; the plain
/// rowwise pass runs a row per lane in workgroups of 64).
pub const SMALL_PASS_ROWS: usize = 128;

/// Rows per workgroup of `mask_count_rowwise4`, whose grid this sizes (`COUNT_WG` in
/// shaders/masked.wgsl; tests/shaders.rs checks they agree).
pub const COUNT_WG: u32 = 16;

/// Invocations (four rows each) per workgroup of `threshold_grad` (`THRESHOLD_WG` in
/// shaders/masked.wgsl; tests/shaders.rs checks they agree).
pub const THRESHOLD_WG: u32 = 16;

fn rows_cols(w: &Tensor, t: &Tensor) -> MaskParams {
    assert_eq!(
        w.shape.len(),
        2,
        "{}: masked weight must be viewed as rows x cols",
        w.label
    );
    assert_eq!(t.len(), w.shape[0], "{}: one threshold per row", t.label);
    MaskParams {
        rows: w.shape[0] as u32,
        cols: w.shape[1] as u32,
        alpha: 0.0,
        groups: 1,
        policy: ResetPolicy::Paper as u32,
        n_switch: 0,
        sparse_max: 0,
        p_transposed: 0,
        penalty: 0,
        recompute: 0,
        batch: 0,
        _pad: 0,
    }
}

impl Masked {
    /// `one`: a buffer holding the single value 1.0.
    pub fn new(
        f: &KernelFactory<'_>,
        rowwise: bool,
        one: Tensor,
        dummy_switch: Tensor,
        dummy_stats: Tensor,
    ) -> Result<Masked> {
        // The one-dispatch mask passes: `mask_reset`'s bindings and the weight as vec4s.
        let small_pass = [&RESET_BINDINGS[..], &[(12, RW)]].concat();
        Ok(Masked {
            rowwise,
            one,
            dummy_switch,
            dummy_stats,
            mask_forward_rowwise_k: f.kernel(
                "mask_forward_rowwise",
                &[(1, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_forward_rowwise4_k: f.kernel(
                "mask_forward_rowwise4",
                &[(12, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_count_rowwise_k: f.kernel(
                "mask_count_rowwise",
                &[(1, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_count_rowwise4_k: f.kernel(
                "mask_count_rowwise4",
                &[(12, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_forward_k: f.kernel(
                "mask_forward",
                &[(1, RW), (2, RW), (3, RW), (4, RW)],
                false,
            )?,
            mask_reset_k: f.kernel("mask_reset", &RESET_BINDINGS, false)?,
            mask_pass_small4_k: f.kernel("mask_pass_small4", &small_pass, false)?,
            mask_count_pass_small4_k: f.kernel("mask_count_pass_small4", &small_pass, false)?,
            mask_backward_k: f.kernel("mask_backward", &BACKWARD_BINDINGS, false)?,
            mask_backward_rows_k: f.kernel("mask_backward_rows", &BACKWARD_BINDINGS, false)?,
            narrow_weight_grad_k: f.kernel(
                "narrow_weight_grad",
                &[
                    (13, Access::Read),
                    (14, Access::Read),
                    (1, RW),
                    (2, RW),
                    (7, RW),
                    (8, RW),
                    (15, RW),
                    (10, Access::Read),
                ],
                false,
            )?,
            threshold_grad_k: f.kernel(
                "threshold_grad",
                &[(16, RW), (17, RW), (18, RW), (10, Access::Read)],
                false,
            )?,
            penalty_k: f.kernel("penalty", &[(2, RW), (9, RW), (10, Access::Read)], false)?,
            switch_from_groups_k: f.kernel("switch_from_groups", &[(5, RW), (11, RW)], false)?,
        })
    }

    /// `masked_weight = W * S(|W| - t)`, `row_keep[i]` = kept count of row i, `row_keep[rows + i]`
    /// = row i's largest |w| as f32 bits (`row_keep` holds `2 rows` words).
    pub fn mask_forward(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_forward_with(
            self.rowwise,
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
        )
    }

    /// `mask_forward` on an explicit variant (`rowwise`: one invocation per row).
    pub fn mask_forward_with(
        &self,
        rowwise: bool,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_forward_layout(
            rowwise,
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
            false,
            false,
        )
    }

    /// `mask_forward`'s counters without writing P (`row_keep` as `mask_forward` writes it; P is
    /// bound, untouched): a rowwise pass, for CPU adapters.
    pub fn mask_count(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_forward_layout(
            true,
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
            false,
            true,
        )
    }

    /// `mask_forward_with`, P stored transposed when `p_transposed`; with `count_only` (rowwise
    /// only) P is not written.
    #[allow(clippy::too_many_arguments)]
    fn mask_forward_layout(
        &self,
        rowwise: bool,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        p_transposed: bool,
        count_only: bool,
    ) -> Result<Dispatch> {
        assert!(
            rowwise || !count_only,
            "the count-only mask pass is rowwise"
        );
        let mut p = rows_cols(weight, threshold);
        p.p_transposed = p_transposed as u32;
        assert!(
            row_keep.len() >= 2 * p.rows as usize,
            "{}: row_keep holds counts and maxima, 2 x rows",
            row_keep.label
        );
        let buffers = [weight, threshold, masked_weight, row_keep];
        if rowwise {
            // Four weights per load where the rows are whole vec4s.
            let four = p.cols.is_multiple_of(4) && weight.offset.is_multiple_of(16);
            let grid = grid_1d(p.rows.div_ceil(64));
            if count_only {
                if four {
                    let grid = grid_1d(p.rows.div_ceil(COUNT_WG));
                    return self
                        .mask_count_rowwise4_k
                        .bind(gpu, &p, &buffers, None, grid);
                }
                return self
                    .mask_count_rowwise_k
                    .bind(gpu, &p, &buffers, None, grid);
            }
            let k = if four {
                &self.mask_forward_rowwise4_k
            } else {
                &self.mask_forward_rowwise_k
            };
            k.bind(gpu, &p, &buffers, None, grid)
        } else {
            self.mask_forward_k
                .bind(gpu, &p, &buffers, None, grid_1d(p.rows))
        }
    }

    /// Dead-layer reset after `mask_forward`; `layer_keep` = [count before, count after, resets,
    /// spare].
    pub fn mask_reset(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        layer_keep: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_reset_policy(
            gpu,
            weight,
            threshold,
            masked_weight,
            row_keep,
            layer_keep,
            1,
            ResetPolicy::Paper,
            PassExtras::default(),
        )
    }

    /// A masked layer's whole mask pass for `groups` stacked matrices: `mask_forward`, then
    /// `mask_reset` with `policy`; the floor adds `mask_forward` and a count pass after it (P and
    /// the counters then reflect the lowered thresholds). `extras` (one matrix only): the pass
    /// that writes the final keep count also sets the layer's dense/sparse switch and adds the
    /// penalty's value; P may be written transposed, `cols x rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn mask_pass(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        layer_keep: &Tensor,
        groups: usize,
        policy: ResetPolicy,
        extras: PassExtras<'_>,
    ) -> Result<Vec<Dispatch>> {
        let p_transposed = extras.p_transposed;
        assert!(
            groups == 1 || (extras.switch.is_none() && !p_transposed && extras.penalty.is_none()),
            "switch, transposed P and fused penalty need one matrix"
        );
        let fwd = |count_only| {
            self.mask_forward_layout(
                self.rowwise,
                gpu,
                weight,
                threshold,
                masked_weight,
                row_keep,
                p_transposed,
                count_only,
            )
        };
        // The last reset of the pass writes the final count: it sets the switch and adds the
        // penalty (the floor's first one only moves thresholds). Its parameters and buffers:
        let reset_args = |p, last: bool| {
            self.reset_args(
                weight,
                threshold,
                masked_weight,
                row_keep,
                layer_keep,
                groups,
                p,
                PassExtras {
                    penalty: extras.penalty.filter(|_| last),
                    ..extras
                },
            )
        };
        let reset = |p, last: bool| {
            let (params, bufs) = reset_args(p, last);
            self.mask_reset_k
                .bind(gpu, &params, &bufs, None, [groups as u32, 1, 1])
        };
        let floor = policy == ResetPolicy::Floor;
        // A small matrix on a CPU adapter: the first pass and its reset in one dispatch, the
        // reset's parameters and buffers, the weight also bound as vec4s.
        let small = self.rowwise
            && groups == 1
            && weight.shape[0] <= SMALL_PASS_ROWS
            && weight.shape[1].is_multiple_of(4)
            && weight.offset.is_multiple_of(16);
        let first = if small {
            let k = if extras.count_only {
                &self.mask_count_pass_small4_k
            } else {
                &self.mask_pass_small4_k
            };
            let (p, bufs) = reset_args(policy, !floor);
            let mut bufs = bufs.to_vec();
            bufs.push(weight);
            vec![k.bind(gpu, &p, &bufs, None, [1, 1, 1])?]
        } else {
            vec![fwd(extras.count_only)?, reset(policy, !floor)?]
        };
        // (The floor's recompute writes P too: it runs only in steps where the floor acted.)
        let mut ds = first;
        if floor {
            let again = fwd(false)?;
            if extras.recompute {
                assert!(
                    groups == 1 && layer_keep.len() >= RECOMPUTE_WORDS,
                    "{}: the recompute dispatch needs one matrix and {RECOMPUTE_WORDS} words",
                    layer_keep.label
                );
                // The template (words 7-9); the floor's reset writes the live counts (words 4-6)
                // each step.
                gpu.queue.write_buffer(
                    &layer_keep.buffer,
                    layer_keep.offset + 4 * 7,
                    bytemuck::cast_slice(&again.workgroups),
                );
                ds.push(again.indirect_from(layer_keep, 4 * 4));
            } else {
                ds.push(again);
            }
            ds.push(reset(ResetPolicy::Count, true)?);
        }
        Ok(ds)
    }

    /// `mask_reset` for a weight whose rows stack `groups` matrices of equal height (an LSTM's
    /// four gates), each with its own decision, 4 counters each in `layer_keep`, and `policy` for a
    /// dying matrix (for the floor, see `mask_pass`: the thresholds move, P and the counters follow
    /// in the next two dispatches). `extras` as for `mask_pass`, for this one dispatch.
    #[allow(clippy::too_many_arguments)]
    pub fn mask_reset_policy(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        masked_weight: &Tensor,
        row_keep: &Tensor,
        layer_keep: &Tensor,
        groups: usize,
        policy: ResetPolicy,
        extras: PassExtras<'_>,
    ) -> Result<Dispatch> {
        let (p, bufs) = self.reset_args(
            weight,
            threshold,
            masked_weight,
            row_keep,
            layer_keep,
            groups,
            policy,
            extras,
        );
        self.mask_reset_k
            .bind(gpu, &p, &bufs, None, [groups as u32, 1, 1])
    }

    /// `mask_reset_policy`'s parameters and buffers (`RESET_BINDINGS`).
    #[allow(clippy::too_many_arguments)]
    fn reset_args<'a>(
        &'a self,
        weight: &'a Tensor,
        threshold: &'a Tensor,
        masked_weight: &'a Tensor,
        row_keep: &'a Tensor,
        layer_keep: &'a Tensor,
        groups: usize,
        policy: ResetPolicy,
        extras: PassExtras<'a>,
    ) -> (MaskParams, [&'a Tensor; 8]) {
        let mut p = rows_cols(weight, threshold);
        p.policy = policy as u32;
        p.p_transposed = extras.p_transposed as u32;
        p.recompute = extras.recompute as u32;
        if let Some(s) = extras.switch {
            p.n_switch = s.slots as u32;
            p.sparse_max = s.sparse_max;
        }
        if let Some(pen) = extras.penalty {
            p.penalty = 1;
            p.alpha = pen.alpha;
        }
        assert!(
            groups >= 1 && weight.shape[0].is_multiple_of(groups),
            "{}: {} rows do not split into {groups} matrices",
            weight.label,
            weight.shape[0]
        );
        assert!(layer_keep.len() >= 4 * groups, "mask_reset: layer_keep");
        p.groups = groups as u32;
        let bufs = [
            weight,
            threshold,
            masked_weight,
            row_keep,
            layer_keep,
            extras.switch.map_or(&self.dummy_switch, |s| &s.args),
            extras.penalty.map_or(&self.dummy_stats, |p| p.stats),
            extras.penalty.map_or(&self.one, |p| p.alpha_scale),
        ];
        (p, bufs)
    }

    /// Sets `switch` from the keep count of a weight of `groups` stacked matrices (`layer_keep`
    /// as the mask pass left it: the counts after each matrix's decision), for the layers whose
    /// mask pass cannot (more than one matrix).
    pub fn switch_from_groups(
        &self,
        gpu: &Gpu,
        layer_keep: &Tensor,
        groups: usize,
        switch: &crate::kernels::sparse::Switch,
    ) -> Result<Dispatch> {
        assert!(
            layer_keep.len() >= 4 * groups,
            "switch_from_groups: layer_keep"
        );
        assert!(
            switch.slots <= 64,
            "switch_from_groups: {} slots",
            switch.slots
        );
        let p = MaskParams {
            groups: groups as u32,
            n_switch: switch.slots as u32,
            sparse_max: switch.sparse_max,
            ..Default::default()
        };
        self.switch_from_groups_k
            .bind(gpu, &p, &[layer_keep, &switch.args], None, [1, 1, 1])
    }

    /// `d_weight`, `d_threshold` from `d_masked` = dL/dP (penalty gradient included).
    #[allow(clippy::too_many_arguments)]
    pub fn mask_backward(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        d_masked: &Tensor,
        d_weight: &Tensor,
        d_threshold: &Tensor,
        alpha: f32,
    ) -> Result<Dispatch> {
        self.mask_backward_scaled(
            gpu,
            weight,
            threshold,
            d_masked,
            d_weight,
            d_threshold,
            alpha,
            &self.one,
        )
    }

    /// Whether `narrow_weight_grad` can take a weight of `cols` columns with input `x`: whole
    /// vec4 rows of x.
    pub fn narrow_weight_grad_fits(&self, cols: usize, x: &Tensor) -> bool {
        cols.is_multiple_of(4) && x.offset.is_multiple_of(16)
    }

    /// Whether a one-matrix masked linear layer's backward takes `narrow_weight_grad` on this
    /// adapter (where it fits): on CPU adapters, for a weight stored as W is (a narrow layer;
    /// the others take the fused SGD product), where it replaces three dispatches. Not on GPUs:
    /// there it replaced two (the tiled product with its bias gradient, `mask_backward_rows`)
    /// for LeNet-300-100's fc2 and fc3 and made the step slower (0.132-0.134 against
    /// 0.123-0.125 ms on an H200, BENCHMARKS.md): each workgroup sums a whole row's columns
    /// over the batch, a long chain of loads.
    pub fn narrow_weight_grad_takes(&self, transposed: bool) -> bool {
        self.rowwise && !transposed
    }

    /// A masked linear layer's weight gradient and the mask's backward in one dispatch (a
    /// workgroup per row of W; `narrow_weight_grad_fits`): from dy (batch x rows) and x (batch
    /// x cols), `d_weight` (rows x cols) = the mask's backward of dy^T x, `d_threshold` with the
    /// penalty `alpha * alpha_scale[0]`, and `d_bias` = the column sums of dy: what
    /// `gemm_regblock`, `bias_backward` and `mask_backward` write (dL/dt up to float
    /// reassociation).
    #[allow(clippy::too_many_arguments)]
    pub fn narrow_weight_grad(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        threshold: &Tensor,
        d_weight: &Tensor,
        d_threshold: &Tensor,
        d_bias: &Tensor,
        alpha: f32,
        alpha_scale: &Tensor,
    ) -> Result<Dispatch> {
        let mut p = rows_cols(weight, threshold);
        let (rows, cols) = (p.rows as usize, p.cols as usize);
        let batch = dy.shape[0];
        assert!(
            self.narrow_weight_grad_fits(cols, x)
                && dy.shape == [batch, rows]
                && x.len() == batch * cols
                && d_weight.len() == rows * cols
                && d_threshold.len() == rows
                && d_bias.len() == rows,
            "narrow_weight_grad: {} {:?}, {} ({}), {} and {} are not for a batch x {rows} dy and {rows} x {cols} W (cols % 4 == 0, x 16-byte aligned)",
            dy.label,
            dy.shape,
            x.label,
            x.len(),
            d_weight.label,
            d_bias.label
        );
        p.batch = batch as u32;
        p.alpha = alpha;
        self.narrow_weight_grad_k.bind(
            gpu,
            &p,
            &[
                dy,
                x,
                weight,
                threshold,
                d_weight,
                d_threshold,
                d_bias,
                alpha_scale,
            ],
            None,
            grid_1d(p.rows),
        )
    }

    /// `mask_backward` with the penalty weight `alpha * alpha_scale[0]` (`alpha_scale`: a
    /// one-element buffer the trainer rewrites between submissions to steer alpha).
    #[allow(clippy::too_many_arguments)]
    pub fn mask_backward_scaled(
        &self,
        gpu: &Gpu,
        weight: &Tensor,
        threshold: &Tensor,
        d_masked: &Tensor,
        d_weight: &Tensor,
        d_threshold: &Tensor,
        alpha: f32,
        alpha_scale: &Tensor,
    ) -> Result<Dispatch> {
        self.mask_backward_with(
            self.rowwise,
            gpu,
            [weight, threshold, d_masked, d_weight, d_threshold],
            alpha,
            alpha_scale,
        )
    }

    /// `mask_backward_scaled` on an explicit form (`rowwise`: the 8 x 8 one of CPU adapters,
    /// else a workgroup per row); `t` = weight, threshold, d_masked, d_weight, d_threshold.
    pub fn mask_backward_with(
        &self,
        rowwise: bool,
        gpu: &Gpu,
        t: [&Tensor; 5],
        alpha: f32,
        alpha_scale: &Tensor,
    ) -> Result<Dispatch> {
        let mut p = rows_cols(t[0], t[1]);
        p.alpha = alpha;
        let buffers = [t[0], t[1], t[2], t[3], t[4], alpha_scale];
        if rowwise {
            self.mask_backward_k
                .bind(gpu, &p, &buffers, None, grid_1d(p.rows.div_ceil(8)))
        } else {
            self.mask_backward_rows_k
                .bind(gpu, &p, &buffers, None, grid_1d(p.rows))
        }
    }

    /// dL/dt (penalty included) from the partial row sums `parts` (blocks x rows, block-major)
    /// of a weight-gradient product that applied the mask's backward itself (`gemm_tn_sgd`):
    /// `d_threshold[i] = -sum_b parts[b][i] - alpha * alpha_scale[0] * exp(-t[i])`. Rows in
    /// fours, every buffer 16-byte aligned (as the product wants them; read as vec4s).
    pub fn threshold_grad(
        &self,
        gpu: &Gpu,
        threshold: &Tensor,
        parts: &Tensor,
        d_threshold: &Tensor,
        alpha: f32,
        alpha_scale: &Tensor,
    ) -> Result<Dispatch> {
        let rows = threshold.len();
        assert_eq!(d_threshold.len(), rows, "threshold_grad: d_threshold");
        assert!(
            rows > 0 && parts.len().is_multiple_of(rows),
            "threshold_grad: parts"
        );
        assert!(
            rows.is_multiple_of(4)
                && [threshold, parts, d_threshold]
                    .iter()
                    .all(|t| t.offset.is_multiple_of(16)),
            "threshold_grad: {rows} rows of {}, {} and {} (rows in fours, 16-byte aligned)",
            threshold.label,
            parts.label,
            d_threshold.label
        );
        let p = MaskParams {
            alpha,
            ..rows_cols(
                &Tensor {
                    shape: vec![rows, parts.len() / rows],
                    ..parts.clone()
                },
                threshold,
            )
        };
        self.threshold_grad_k.bind(
            gpu,
            &p,
            &[threshold, parts, d_threshold, alpha_scale],
            None,
            grid_1d((rows as u32 / 4).div_ceil(THRESHOLD_WG)),
        )
    }

    /// `stats[1] += alpha * sum exp(-t)`.
    pub fn penalty(
        &self,
        gpu: &Gpu,
        threshold: &Tensor,
        stats: &Tensor,
        alpha: f32,
    ) -> Result<Dispatch> {
        self.penalty_scaled(gpu, threshold, stats, alpha, &self.one)
    }

    /// `stats[1] += alpha * alpha_scale[0] * sum exp(-t)`.
    pub fn penalty_scaled(
        &self,
        gpu: &Gpu,
        threshold: &Tensor,
        stats: &Tensor,
        alpha: f32,
        alpha_scale: &Tensor,
    ) -> Result<Dispatch> {
        let p = MaskParams {
            rows: threshold.len() as u32,
            cols: 1,
            alpha,
            ..rows_cols_default()
        };
        self.penalty_k
            .bind(gpu, &p, &[threshold, stats, alpha_scale], None, [1, 1, 1])
    }
}
