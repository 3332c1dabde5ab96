//! `shaders/optim.wgsl`: SGD with momentum and Adam over a whole parameter arena.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory, StepRing};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/optim.wgsl");

/// Keep in sync with `OptimParams` in shaders/optim.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OptimParams {
    pub n: u32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
}

pub struct Optim {
    pub sgd_k: Kernel,
    pub sgd_ranges_k: Kernel,
    pub adam_k: Kernel,
    pub check_finite_k: Kernel,
    pub check_reduce_k: Kernel,
}

/// The elements of `[0, len)` outside the (disjoint) ranges `skip`, as `sgd_ranges` reads them:
/// `[R, then per range: its first index among the kept elements, its offset]`, and their count.
pub fn ranges_except(len: usize, skip: &[std::ops::Range<usize>]) -> (Vec<u32>, usize) {
    let mut skip = skip.to_vec();
    skip.sort_by_key(|r| r.start);
    let mut table = vec![0u32];
    let (mut at, mut kept) = (0, 0);
    for r in skip.iter().chain(std::iter::once(&(len..len))) {
        assert!(
            r.start >= at && r.start <= r.end && r.end <= len,
            "sgd ranges: {r:?} overlaps or leaves [0, {len})"
        );
        if r.start > at {
            table.push(kept as u32);
            table.push(at as u32);
            kept += r.start - at;
        }
        at = r.end;
    }
    table[0] = ((table.len() - 1) / 2) as u32;
    (table, kept)
}

/// Workgroups (and partial flags) of `check_finite`: at most this many.
pub const CHECK_PARTIALS: usize = 256;

const BINDINGS: &[(u32, Access)] = &[
    (1, Access::ReadWrite),
    (2, Access::Read),
    (3, Access::ReadWrite),
    (4, Access::ReadWrite),
];

impl Optim {
    pub fn new(f: &KernelFactory<'_>) -> Result<Optim> {
        Ok(Optim {
            sgd_k: f.kernel("sgd", BINDINGS, true)?,
            sgd_ranges_k: f.kernel(
                "sgd_ranges",
                &[
                    (1, Access::ReadWrite),
                    (2, Access::Read),
                    (3, Access::ReadWrite),
                    (7, Access::Read),
                ],
                true,
            )?,
            adam_k: f.kernel("adam", BINDINGS, true)?,
            check_finite_k: f.kernel(
                "check_finite",
                &[
                    (1, Access::ReadWrite),
                    (3, Access::ReadWrite),
                    (4, Access::ReadWrite),
                    (5, Access::ReadWrite),
                ],
                false,
            )?,
            check_reduce_k: f.kernel(
                "check_reduce",
                &[(5, Access::ReadWrite), (6, Access::ReadWrite)],
                false,
            )?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    /// One SGD step over `param` with `grad` and velocity `moment1` (moment2 is unused but bound).
    pub fn sgd(
        &self,
        gpu: &Gpu,
        param: &Tensor,
        grad: &Tensor,
        moment1: &Tensor,
        moment2: &Tensor,
        momentum: f32,
        weight_decay: f32,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = OptimParams {
            n: param.len() as u32,
            momentum,
            weight_decay,
            ..Default::default()
        };
        assert!(
            grad.len() == param.len() && moment1.len() == param.len(),
            "sgd: arena sizes"
        );
        self.sgd_k.bind(
            gpu,
            &p,
            &[param, grad, moment1, moment2],
            Some(step),
            grid_1d(p.n.div_ceil(256)),
        )
    }

    /// `sgd` over the parts of the arena outside `skip` (element ranges `[start, end)` of
    /// tensors a fused product updated itself: `gemm_tn_sgd`), in one dispatch. `ranges` gets
    /// the table the kernel reads.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_except(
        &self,
        gpu: &Gpu,
        param: &Tensor,
        grad: &Tensor,
        moment1: &Tensor,
        skip: &[std::ops::Range<usize>],
        momentum: f32,
        weight_decay: f32,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let (table, total) = ranges_except(param.len(), skip);
        let total = total as u32;
        let ranges = Tensor::from_slice(gpu, "sgd.ranges", &[table.len()], &table)?;
        let p = OptimParams {
            n: total,
            momentum,
            weight_decay,
            ..Default::default()
        };
        self.sgd_ranges_k.bind(
            gpu,
            &p,
            &[param, grad, moment1, &ranges],
            Some(step),
            grid_1d(total.div_ceil(256)),
        )
    }

    /// One Adam step over `param` with `grad`, first and second moments (betas and eps as f64,
    /// like torch's Python floats).
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        &self,
        gpu: &Gpu,
        param: &Tensor,
        grad: &Tensor,
        moment1: &Tensor,
        moment2: &Tensor,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f32,
        step: &StepRing,
    ) -> Result<Dispatch> {
        let p = OptimParams {
            n: param.len() as u32,
            weight_decay,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            // As torch: the scalars are Python floats, `1 - beta` is taken in f64.
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            ..Default::default()
        };
        assert!(
            grad.len() == param.len()
                && moment1.len() == param.len()
                && moment2.len() == param.len(),
            "adam: arena sizes"
        );
        self.adam_k.bind(
            gpu,
            &p,
            &[param, grad, moment1, moment2],
            Some(step),
            grid_1d(p.n.div_ceil(256)),
        )
    }

    /// The divergence guard: two dispatches that set `stats[5]` (see `loss::STATS_WORDS`) when any
    /// element of `param`, `moment1` or (Adam) `moment2` is NaN or infinite. `partial` holds
    /// `CHECK_PARTIALS` u32 of scratch.
    pub fn check_finite(
        &self,
        gpu: &Gpu,
        param: &Tensor,
        moment1: &Tensor,
        moment2: &Tensor,
        partial: &Tensor,
        stats: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        assert!(
            partial.len() >= CHECK_PARTIALS,
            "check_finite: partial buffer"
        );
        assert!(
            stats.len() >= super::loss::STATS_WORDS,
            "check_finite: stats"
        );
        let groups = param.len().div_ceil(256).clamp(1, CHECK_PARTIALS) as u32;
        let p = OptimParams {
            n: param.len() as u32,
            ..Default::default()
        };
        let scan = self.check_finite_k.bind(
            gpu,
            &p,
            &[param, moment1, moment2, partial],
            None,
            [groups, 1, 1],
        )?;
        let p = OptimParams {
            n: groups,
            ..Default::default()
        };
        let reduce = self
            .check_reduce_k
            .bind(gpu, &p, &[partial, stats], None, [1, 1, 1])?;
        Ok([scan, reduce])
    }
}

#[cfg(test)]
mod tests {
    use super::ranges_except;

    #[test]
    fn ranges_except_lists_the_complement() {
        assert_eq!(ranges_except(10, &[]), (vec![1, 0, 0], 10));
        assert_eq!(ranges_except(10, &[6..8, 0..2]), (vec![2, 0, 2, 4, 8], 6));
        assert_eq!(ranges_except(10, &[0..5, 5..10]), (vec![0], 0));
        assert_eq!(ranges_except(10, &[2..4, 4..5]), (vec![2, 0, 0, 2, 5], 7));
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn ranges_except_refuses_overlaps() {
        ranges_except(10, &[2..6, 4..8]);
    }
}
