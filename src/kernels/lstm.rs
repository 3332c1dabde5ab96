//! `shaders/lstm.wgsl`: the recurrent steps of an LSTM layer (forward and BPTT) and the
//! batch-major <-> time-major transpose. The input projection and the weight gradients are GEMMs
//! (`kernels::gemm`), the masks `kernels::masked`; see `nn::lstm` for the whole layer.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use std::sync::atomic::{AtomicBool, Ordering};

use super::sparse::EllLists;
use crate::gpu::{AdapterClass, Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/lstm.wgsl");

/// The lines of `SOURCE` that set how many ways the GPU steps split their recurrent sums, forward
/// and backward (a workgroup of 64 x ways invocations): 4, which fits the WebGPU default of 256
/// invocations.
const SPLIT_LINES: [&str; 2] = ["const SPLIT: u32 = 4u;", "const SPLIT_BACK: u32 = 4u;"];

/// At most this many ways, forward and backward. On an H200 (LSTM-a, dense step; BENCHMARKS.md):
/// 4.40 ms unsplit, 3.37 with 4 ways, 2.60-2.70 with 8, 2.38-2.44 with 16 (the backward gained,
/// the forward's steps took the same time with 8 and 16 ways).
const MOST_WAYS: (u32, u32) = (8, 16);

/// How many ways the GPU steps split their recurrent sums, forward and backward, on an adapter
/// whose workgroups hold at most `max_invocations`: `MOST_WAYS`, halved until 64 x ways fit.
pub fn split_ways(max_invocations: u32) -> (u32, u32) {
    let fit = |most: u32| {
        let mut ways = most;
        while ways > 1 && 64 * ways > max_invocations {
            ways /= 2;
        }
        ways
    };
    (fit(MOST_WAYS.0), fit(MOST_WAYS.1))
}

/// `SOURCE` as an adapter whose workgroups hold at most `max_invocations` compiles it: with
/// `split_ways(max_invocations)` ways.
pub fn source(max_invocations: u32) -> String {
    let (forward, backward) = split_ways(max_invocations);
    let mut s = SOURCE.to_string();
    for (line, ways) in SPLIT_LINES.iter().zip([forward, backward]) {
        assert!(s.contains(line), "lstm.wgsl: no `{line}`");
        let name = line.split(':').next().unwrap_or(line);
        s = s.replace(line, &format!("{name}: u32 = {ways}u;"));
    }
    s
}

/// Keep in sync with `LstmParams` in shaders/lstm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LstmParams {
    pub batch: u32,
    pub hidden: u32,
    pub steps: u32,
    pub t: u32,
    pub out_seq: u32,
    pub d0: u32,
    pub d1: u32,
    pub d2: u32,
}

/// The sizes of one layer's recurrence: batch B, steps T, hidden H; `out_seq`: the output (and
/// its gradient) is the whole sequence (T, B, H) rather than the last h (B, H).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepDims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
    pub out_seq: bool,
}

impl StepDims {
    fn params(&self, t: usize) -> LstmParams {
        LstmParams {
            batch: self.batch as u32,
            hidden: self.hidden as u32,
            steps: self.steps as u32,
            t: t as u32,
            out_seq: self.out_seq as u32,
            ..Default::default()
        }
    }

    fn groups(&self) -> [u32; 3] {
        [(self.hidden as u32).div_ceil(64), self.batch as u32, 1]
    }

    /// Workgroups of a blocked kernel: `units` x `rows` outputs per invocation, 8 invocations
    /// along the units per workgroup.
    fn blocked_groups(&self, units: usize, rows: usize) -> [u32; 3] {
        [
            self.hidden.div_ceil(units).div_ceil(8) as u32,
            self.batch.div_ceil(rows) as u32,
            1,
        ]
    }

    /// The sizes a forward step `t` needs (panics naming the buffer).
    fn check_forward(
        &self,
        t: usize,
        xproj: &Tensor,
        h_pad: &Tensor,
        c_pad: &Tensor,
        gates: &Tensor,
        y: &Tensor,
    ) {
        let (b, tt, h) = (self.batch, self.steps, self.hidden);
        assert!(t < tt, "lstm step {t} of {tt}");
        assert!(xproj.len() >= tt * b * 4 * h, "lstm step: xproj");
        assert!(h_pad.len() >= (tt + 1) * b * h, "lstm step: h_pad");
        assert!(c_pad.len() >= (tt + 1) * b * h, "lstm step: c_pad");
        assert!(gates.len() >= tt * b * 4 * h, "lstm step: gates");
        assert!(y.len() >= self.y_len(), "lstm step: y");
    }

    /// The sizes a backward step `t` needs (panics naming the buffer).
    fn check_backward(
        &self,
        t: usize,
        c_pad: &Tensor,
        gates: &Tensor,
        dy: &Tensor,
        dgates: &Tensor,
        dc: &Tensor,
    ) {
        let (b, tt, h) = (self.batch, self.steps, self.hidden);
        assert!(t < tt, "lstm step {t} of {tt}");
        assert!(c_pad.len() >= (tt + 1) * b * h, "lstm step_backward: c_pad");
        assert!(gates.len() >= tt * b * 4 * h, "lstm step_backward: gates");
        assert!(dy.len() >= self.y_len(), "lstm step_backward: dy");
        assert!(dgates.len() >= tt * b * 4 * h, "lstm step_backward: dgates");
        assert!(dc.len() >= tt * b * h, "lstm step_backward: dc");
    }

    /// Workgroups of the listed steps: one unit per workgroup (its lists are uniform across the
    /// workgroup), 64 batch rows per workgroup.
    fn listed_groups(&self) -> [u32; 3] {
        [self.hidden as u32, (self.batch as u32).div_ceil(64), 1]
    }

    fn y_len(&self) -> usize {
        if self.out_seq {
            self.steps * self.batch * self.hidden
        } else {
            self.batch * self.hidden
        }
    }
}

pub struct Lstm {
    pub step_k: Kernel,
    pub step_backward_k: Kernel,
    pub step_split_k: Kernel,
    pub step_backward_split_k: Kernel,
    pub step_blocked_k: Kernel,
    pub step_backward_blocked_k: Kernel,
    pub step_listed_k: Kernel,
    pub step_backward_listed_k: Kernel,
    pub swap01_k: Kernel,
    /// The steps run `lstm_step_split` and `lstm_step_backward_split` (GPUs: the recurrent sums
    /// split four ways across a workgroup) rather than the plain kernels (CPU adapters). Settable
    /// so that tests check both on any adapter.
    pub split: AtomicBool,
    /// Both steps run their register-blocked kernels (`lstm_step_blocked`,
    /// `lstm_step_backward_blocked`: CPU adapters, the same bits as the plain ones); this takes
    /// precedence over `split`. Settable likewise.
    pub blocked: AtomicBool,
}

/// Outputs per invocation of the blocked kernels (keep in sync with FB and BB in
/// shaders/lstm.wgsl): hidden units x batch rows.
const FORWARD_BLOCK: (usize, usize) = (4, 2);
const BACKWARD_BLOCK: (usize, usize) = (8, 8);

/// The blocked kernels read vec4 views: H a multiple of 4 and the viewed tensors 16-byte aligned.
fn vec4_views(h: usize, views: &[&Tensor]) -> bool {
    h.is_multiple_of(4) && views.iter().all(|t| t.offset.is_multiple_of(16))
}

const RW: Access = Access::ReadWrite;
const R: Access = Access::Read;

impl Lstm {
    pub fn new(f: &KernelFactory<'_>, class: AdapterClass) -> Result<Lstm> {
        const BACKWARD: &[(u32, Access)] = &[(2, R), (4, RW), (5, RW), (7, R), (8, RW), (9, RW)];
        const FORWARD: &[(u32, Access)] = &[(1, R), (10, R), (3, RW), (4, RW), (5, RW), (6, RW)];
        Ok(Lstm {
            step_k: f.kernel("lstm_step", FORWARD, false)?,
            step_split_k: f.kernel("lstm_step_split", FORWARD, false)?,
            step_backward_k: f.kernel("lstm_step_backward", BACKWARD, false)?,
            step_backward_split_k: f.kernel("lstm_step_backward_split", BACKWARD, false)?,
            step_blocked_k: f.kernel(
                "lstm_step_blocked",
                &[
                    (1, R),
                    (12, R),
                    (3, RW),
                    (13, RW),
                    (4, RW),
                    (5, RW),
                    (6, RW),
                ],
                false,
            )?,
            step_backward_blocked_k: f.kernel(
                "lstm_step_backward_blocked",
                &[
                    (14, R),
                    (4, RW),
                    (5, RW),
                    (7, R),
                    (8, RW),
                    (15, RW),
                    (9, RW),
                ],
                false,
            )?,
            swap01_k: f.kernel("swap01", &[(10, R), (11, RW)], false)?,
            step_listed_k: f.kernel(
                "lstm_step_listed",
                &[
                    (1, R),
                    (16, R),
                    (17, R),
                    (18, R),
                    (3, RW),
                    (4, RW),
                    (5, RW),
                    (6, RW),
                ],
                false,
            )?,
            step_backward_listed_k: f.kernel(
                "lstm_step_backward_listed",
                &[
                    (16, R),
                    (17, R),
                    (18, R),
                    (4, RW),
                    (5, RW),
                    (7, R),
                    (8, RW),
                    (9, RW),
                ],
                false,
            )?,
            split: AtomicBool::new(class == AdapterClass::Gpu),
            blocked: AtomicBool::new(class == AdapterClass::Cpu),
        })
    }

    /// Forward step `t`: from `xproj` (T, B, 4H) and `w_hh_t`, the recurrent weight transposed to
    /// (H, 4H) (`swap01` of the (4H, H) weight: coalesced reads on GPUs), writes `h_pad`, `c_pad`
    /// (T+1, B, H; slot t+1, and slot 0 at t = 0), `gates` (T, B, 4H) and `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        gpu: &Gpu,
        d: StepDims,
        t: usize,
        xproj: &Tensor,
        w_hh_t: &Tensor,
        h_pad: &Tensor,
        c_pad: &Tensor,
        gates: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        d.check_forward(t, xproj, h_pad, c_pad, gates, y);
        let h = d.hidden;
        assert_eq!(w_hh_t.len(), 4 * h * h, "lstm step: w_hh_t");
        if self.blocked.load(Ordering::Relaxed) && vec4_views(h, &[w_hh_t, h_pad]) {
            let (units, rows) = FORWARD_BLOCK;
            return self.step_blocked_k.bind(
                gpu,
                &d.params(t),
                &[xproj, w_hh_t, h_pad, h_pad, c_pad, gates, y],
                None,
                d.blocked_groups(units, rows),
            );
        }
        let kernel = if self.split.load(Ordering::Relaxed) {
            &self.step_split_k
        } else {
            &self.step_k
        };
        kernel.bind(
            gpu,
            &d.params(t),
            &[xproj, w_hh_t, h_pad, c_pad, gates, y],
            None,
            d.groups(),
        )
    }

    /// Backward step `t` (record for t = T-1 down to 0): from `dy`, `w_hh` and the forward's
    /// `gates` and `c_pad`, writes `dc` (T, B, H) and `dgates` (T, B, 4H) at step t.
    #[allow(clippy::too_many_arguments)]
    pub fn step_backward(
        &self,
        gpu: &Gpu,
        d: StepDims,
        t: usize,
        w_hh: &Tensor,
        c_pad: &Tensor,
        gates: &Tensor,
        dy: &Tensor,
        dgates: &Tensor,
        dc: &Tensor,
    ) -> Result<Dispatch> {
        d.check_backward(t, c_pad, gates, dy, dgates, dc);
        let h = d.hidden;
        assert_eq!(w_hh.len(), 4 * h * h, "lstm step_backward: w_hh");
        if self.blocked.load(Ordering::Relaxed) && vec4_views(h, &[w_hh, dgates]) {
            let (units, rows) = BACKWARD_BLOCK;
            return self.step_backward_blocked_k.bind(
                gpu,
                &d.params(t),
                &[w_hh, c_pad, gates, dy, dgates, dgates, dc],
                None,
                d.blocked_groups(units, rows),
            );
        }
        let kernel = if self.split.load(Ordering::Relaxed) {
            &self.step_backward_split_k
        } else {
            &self.step_backward_k
        };
        kernel.bind(
            gpu,
            &d.params(t),
            &[w_hh, c_pad, gates, dy, dgates, dc],
            None,
            d.groups(),
        )
    }

    /// `dst (d1, d0, d2) = src (d0, d1, d2)` with the first two axes swapped.
    pub fn swap01(
        &self,
        gpu: &Gpu,
        src: &Tensor,
        dst: &Tensor,
        (d0, d1, d2): (usize, usize, usize),
    ) -> Result<Dispatch> {
        let n = d0 * d1 * d2;
        assert!(src.len() >= n && dst.len() >= n, "swap01: sizes");
        let p = LstmParams {
            d0: d0 as u32,
            d1: d1 as u32,
            d2: d2 as u32,
            ..Default::default()
        };
        self.swap01_k.bind(
            gpu,
            &p,
            &[src, dst],
            None,
            grid_1d((n as u32).div_ceil(256)),
        )
    }

    /// `step` with the recurrent product over the row lists of P_hh (`lists`: 4H x H, built by
    /// `Sparse::ell_build` from the P_hh the layer uses): the same values, work proportional to
    /// the kept weights.
    #[allow(clippy::too_many_arguments)]
    pub fn step_listed(
        &self,
        gpu: &Gpu,
        d: StepDims,
        t: usize,
        xproj: &Tensor,
        lists: &EllLists,
        h_pad: &Tensor,
        c_pad: &Tensor,
        gates: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        d.check_forward(t, xproj, h_pad, c_pad, gates, y);
        assert_listed(lists, d.hidden);
        self.step_listed_k.bind(
            gpu,
            &d.params(t),
            &[
                xproj, &lists.idx, &lists.val, &lists.cnt, h_pad, c_pad, gates, y,
            ],
            None,
            d.listed_groups(),
        )
    }

    /// `step_backward` with the recurrent product over the column lists of P_hh (`lists` as for
    /// `step_listed`): the same values.
    #[allow(clippy::too_many_arguments)]
    pub fn step_backward_listed(
        &self,
        gpu: &Gpu,
        d: StepDims,
        t: usize,
        lists: &EllLists,
        c_pad: &Tensor,
        gates: &Tensor,
        dy: &Tensor,
        dgates: &Tensor,
        dc: &Tensor,
    ) -> Result<Dispatch> {
        d.check_backward(t, c_pad, gates, dy, dgates, dc);
        assert_listed(lists, d.hidden);
        self.step_backward_listed_k.bind(
            gpu,
            &d.params(t),
            &[
                &lists.idx, &lists.val, &lists.cnt, c_pad, gates, dy, dgates, dc,
            ],
            None,
            d.listed_groups(),
        )
    }
}

/// Lists of a P_hh of `hidden` units: 4H x H, row-major.
fn assert_listed(lists: &EllLists, hidden: usize) {
    assert!(
        lists.rows == 4 * hidden && lists.cols == hidden && !lists.p_transposed,
        "lstm lists {}x{} (transposed {}) for {hidden} units",
        lists.rows,
        lists.cols,
        lists.p_transposed
    );
}
