//! `shaders/sparse.wgsl`: a fully connected layer from its CSR weight, for any batch size, with
//! strided (batch-major or feature-major) input and output.

use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/sparse.wgsl");

/// Samples per invocation (`QUAD` in shaders/sparse.wgsl).
pub const QUAD: usize = 4;

/// vec4s per invocation of `csr_linear_fm` (`VQ` in shaders/sparse.wgsl).
pub const VQ: usize = 4;

/// Keep in sync with `SparseParams` in shaders/sparse.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SparseParams {
    pub rows: u32,
    pub cols: u32,
    pub batch: u32,
    pub quads: u32,
    pub x_bs: u32,
    pub x_fs: u32,
    pub y_bs: u32,
    pub y_fs: u32,
    pub relu: u32,
    pub has_bias: u32,
    /// `ell_*`: where the lists start in the list buffers.
    pub list_base: u32,
    /// `ell_*`: where their counts start.
    pub cnt_base: u32,
    /// `ell_build`: P is stored transposed.
    pub p_transposed: u32,
    /// `ell_build`: the row lists (else the column lists).
    pub by_rows: u32,
    /// `input_lists`: at most this much listed work (list lengths times samples per block)
    /// takes the input-sparse product.
    pub input_max: u32,
    /// `input_lists`: the switch's slots, the forward's other paths (slots below this), the
    /// input-sparse product's slot.
    pub n_switch: u32,
    pub fwd_slots: u32,
    pub input_slot: u32,
    /// `input_lists`: the layer's outputs (P's rows), for the compaction.
    pub outputs: u32,
    /// `input_lists`: 1 when the layer has the compacted product (`Compaction`).
    pub compact: u32,
    /// `input_lists`: compact when at most this many rows of P keep a weight.
    pub compact_max: u32,
    /// `input_lists`: the slots of `compact_columns` and of the compacted product.
    pub compact_slot: u32,
    pub compact_product_slot: u32,
    pub _pad: u32,
}

/// How a batch of vectors lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Major {
    /// `(batch, features)`, row-major: sample after sample.
    Batch,
    /// `(features, batch)`: feature after feature (what the chain of sparse layers passes on).
    Feature,
}

impl Major {
    /// (batch stride, feature stride) of a `batch x features` block.
    pub fn strides(self, batch: usize, features: usize) -> (u32, u32) {
        match self {
            Major::Batch => (features as u32, 1),
            Major::Feature => (1, batch as u32),
        }
    }
}

/// One CSR layer on the GPU: `crow` (rows + 1), `col` and `val` (nnz each, at least 1 element
/// so an all-zero layer still binds), the dense shape.
pub struct CsrTensors {
    pub rows: usize,
    pub cols: usize,
    pub crow: Tensor,
    pub col: Tensor,
    pub val: Tensor,
}

pub struct Sparse {
    pub csr_linear_k: Kernel,
    pub to_feature_major_k: Kernel,
    pub to_feature_major4_k: Kernel,
    pub csr_linear_fm_k: Kernel,
    pub ell_build_k: Kernel,
    pub ell_product_k: Kernel,
    pub ell_product4_k: Kernel,
    pub input_lists_k: Kernel,
    /// `input_lists` reading x as vec4s (its width a multiple of 4, 16-byte aligned).
    pub input_lists4_k: Kernel,
    pub input_lists_split_k: Kernel,
    /// `input_lists_split` reading x as vec4s (as `input_lists4_k`).
    pub input_lists_split4_k: Kernel,
    pub input_lists_split_klists_k: Kernel,
    pub ell_input_product_k: Kernel,
    pub ell_input_product_compacted_k: Kernel,
    /// The subgroup forms of the two above and of `ordered_input_grad` (run instead where
    /// present).
    pub ell_input_product_sg_k: Option<Kernel>,
    pub ell_input_product_compacted_sg_k: Option<Kernel>,
    pub compact_columns_k: Kernel,
    pub masked_columns_k: Kernel,
    pub masked_columns4_k: Kernel,
    pub ordered_input_grad_k: Kernel,
    pub ordered_input_grad_sg_k: Option<Kernel>,
}

/// The keep ratio at or below which masked linear layers switch to the sparse products, per
/// adapter class (measured, BENCHMARKS.md: on lavapipe LeNet-300-100's fc1 forward costs as much
/// sparse as dense at about 20 % kept and 2.3x less at 10 %; on an H200 the dense GEMM takes 57 us
/// and the sparse path 138 us even at 2 % kept, its list build being one sequential scan per row:
/// off on GPUs).
pub fn default_sparse_keep(class: crate::gpu::AdapterClass) -> f64 {
    match class {
        crate::gpu::AdapterClass::Cpu => 0.2,
        crate::gpu::AdapterClass::Gpu => 0.0,
    }
}

/// The keep ratio at or below which masked convolutions on the patch-matrix path (CPU adapters
/// only) switch to the products over P's lists. Measured on lavapipe (`dst bench`'s "LeNet-5
/// conv2 products" table, BENCHMARKS.md): the listed products cost as much as the dense ones at
/// about 60-65 % kept, 0.7x at 50 %, 0.16-0.25x at 10 %.
pub fn default_sparse_keep_conv(class: crate::gpu::AdapterClass) -> f64 {
    match class {
        crate::gpu::AdapterClass::Cpu => 0.5,
        crate::gpu::AdapterClass::Gpu => 0.0,
    }
}

/// The keep ratio of P_hh at or below which a masked LSTM layer's recurrent steps compute from
/// the lists of its kept weights instead of the dense steps. Measured on lavapipe (BENCHMARKS.md,
/// LSTM-a from trained checkpoints): the listed steps take about 68 ms per training step at 1.65 %
/// kept and (estimated from step totals) 220 ms at 10-14 %, the register-blocked dense ones about
/// 165 ms: even at about 8 %.
/// Off on GPUs, where the dense steps are the fast path and the list build is a sequential scan.
pub fn default_sparse_keep_lstm(class: crate::gpu::AdapterClass) -> f64 {
    match class {
        crate::gpu::AdapterClass::Cpu => 0.05,
        crate::gpu::AdapterClass::Gpu => 0.0,
    }
}

/// The input density (nonzero (block of 8 samples, input) pairs over all) at or below which a
/// switched layer's forward takes the input-sparse product, per adapter class. Measured on
/// lavapipe (BENCHMARKS.md): LeNet-300-100's fc1 forward from MNIST's 46 % costs about 1.1 ms
/// with the lists against 2.6-3.2 ms as a dense GEMM, and steps from trained checkpoints at 7.90 %
/// and 3.02 % kept are faster with it than with the weight-sparse lists; on GPUs the list build
/// is one workgroup's sequential scan: off.
pub fn default_sparse_input(class: crate::gpu::AdapterClass) -> f64 {
    match class {
        crate::gpu::AdapterClass::Cpu => 0.6,
        crate::gpu::AdapterClass::Gpu => 0.0,
    }
}

/// Rows of P^T (inputs) per workgroup of `compact_columns` and `masked_columns` (keep in sync
/// with `COMPACT_ROWS` in shaders/sparse.wgsl). 32 rather than 16 halves the share of each
/// lane's `order` and threshold loads: fc1's `masked_columns4` 0.42-0.44 -> 0.36-0.39 ms in a
/// fresh LeNet-300-100 DST step on lavapipe (BENCHMARKS.md).
pub const COMPACT_ROWS: usize = 32;

/// Which of a layer's two ways of computing a dispatch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The dense GEMMs over P (zeros included).
    Dense = 0,
    /// The list-based products over P's nonzeros.
    Sparse = 1,
    /// The forward from the lists of the input's nonzeros (`Sparse::input_lists` decides).
    Input = 2,
}

/// A layer's switch between dense and sparse products, decided on the GPU every step: `mask_reset`
/// (shaders/masked.wgsl, `set_switch`) writes the workgroup counts of each routed dispatch, its
/// template when the dispatch's path is the one the layer's keep count selects (sparse when it
/// keeps at most `sparse_max` weights), else zero. No readback, and the choice is a function of
/// the mask alone: a resumed run switches where the first one did.
pub struct Switch {
    /// `3 slots` live counts, then `4 slots` templates (x, y, z, path).
    pub args: Tensor,
    pub slots: usize,
    pub sparse_max: u32,
}

impl Switch {
    /// A switch of `slots` dispatches, sparse when the layer keeps at most `sparse_max` weights.
    pub fn new(gpu: &Gpu, label: &str, slots: usize, sparse_max: u32) -> Result<Switch> {
        let words = vec![0u32; 7 * slots];
        let args = Tensor {
            buffer: std::sync::Arc::new(gpu.indirect_init(label, &words)?),
            offset: 0,
            shape: vec![7 * slots],
            label: label.to_string(),
        };
        Ok(Switch {
            args,
            slots,
            sparse_max,
        })
    }

    /// Routes `d` through slot `slot` on `path`: from now on its workgroup counts are the ones
    /// the mask pass writes (until the first mask pass: dense on, sparse off).
    pub fn route(&self, gpu: &Gpu, slot: usize, path: Path, d: Dispatch) -> Dispatch {
        assert!(slot < self.slots, "switch slot {slot} of {}", self.slots);
        let [x, y, z] = d.workgroups;
        let live = if path == Path::Dense {
            [x, y, z]
        } else {
            [0; 3]
        };
        let q = &gpu.queue;
        q.write_buffer(
            &self.args.buffer,
            self.args.offset + 12 * slot as u64,
            bytemuck::cast_slice(&live),
        );
        q.write_buffer(
            &self.args.buffer,
            self.args.offset + 4 * (3 * self.slots + 4 * slot) as u64,
            bytemuck::cast_slice(&[x, y, z, path as u32]),
        );
        d.indirect_from(&self.args, 12 * slot as u64)
    }

    /// Reads the live counts back (tests, diagnostics): which path each slot runs now.
    pub fn live(&self, gpu: &Gpu) -> Result<Vec<[u32; 3]>> {
        let words: Vec<u32> = gpu.read(&self.args)?;
        Ok((0..self.slots)
            .map(|i| [words[3 * i], words[3 * i + 1], words[3 * i + 2]])
            .collect())
    }
}

/// The lists of the inputs nonzero in each block of 8 samples (`Sparse::input_lists`), a plan's
/// buffers.
pub struct InputLists {
    pub batch: usize,
    pub width: usize,
    /// `ceil(batch / 8) x width`: for each block of 8 samples, the columns nonzero in at least
    /// one of them, ascending, at `block * width ..`.
    pub idx: Tensor,
    /// `ceil(batch / 8) x width x 8`: for each listed column, the block's 8 values there.
    pub val: Tensor,
    /// `2 ceil(batch / 8)`: the lengths of each block's two list segments (the columns below
    /// half = min(width, 4 ceil(width / 8)), listed from the block's start, and the others, from
    /// half on: `list_half` in shaders/sparse.wgsl).
    pub cnt: Tensor,
    /// `outputs + 1` words: the layer's rows, those that keep a weight first (`Compaction`),
    /// then how many do.
    pub order: Tensor,
    /// The layer's outputs.
    pub outputs: usize,
}

/// Whether the list builders may read `x` (`width` wide) as vec4s (`list_segment4` in
/// shaders/sparse.wgsl): its width a multiple of 4 from a 16-byte aligned offset.
fn wide_input(x: &Tensor, width: usize) -> bool {
    width.is_multiple_of(4) && x.offset.is_multiple_of(16)
}

/// The input-sparse forward's compaction (shaders/sparse.wgsl, `compaction_order`): where at most
/// `max_active` rows of P keep a weight, the product runs over those rows only, from a copy of
/// their columns of P^T.
pub struct Compaction<'a> {
    /// P's per-row keep counts (`outputs` words, the mask pass's).
    pub row_counts: &'a Tensor,
    pub max_active: u32,
    /// The switch slots of `compact_columns` and of the compacted `ell_input_product`.
    pub slot: usize,
    pub product_slot: usize,
}

impl InputLists {
    /// Samples per list (`IB` in shaders/sparse.wgsl).
    pub const BLOCK: usize = 8;

    /// The lists of a `batch x width` input of a layer of `outputs` outputs.
    pub fn new(
        gpu: &Gpu,
        label: &str,
        batch: usize,
        width: usize,
        outputs: usize,
    ) -> Result<InputLists> {
        let blocks = batch.div_ceil(Self::BLOCK);
        Ok(InputLists {
            batch,
            width,
            idx: Tensor::zeros(gpu, &format!("{label}.idx"), &[blocks, width])?,
            val: Tensor::zeros(gpu, &format!("{label}.val"), &[blocks, width, Self::BLOCK])?,
            cnt: Tensor::zeros(gpu, &format!("{label}.cnt"), &[2 * blocks])?,
            order: Tensor::zeros(gpu, &format!("{label}.order"), &[outputs + 1])?,
            outputs,
        })
    }
}

/// The operands of `Sparse::routed_listed_product`.
pub struct ListedProduct<'a> {
    /// P, as the lists were made for (`EllLists::p_transposed`).
    pub p: &'a Tensor,
    pub lists: &'a EllLists,
    /// The row lists and the forward (else the column lists and the product to the input).
    pub by_rows: bool,
    pub batch: usize,
    /// The batch-major input and its feature-major copy.
    pub x: &'a Tensor,
    pub x_fm: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
    pub relu: bool,
}

/// A masked matrix's nonzeros as lists for the sparse products: the row lists (`rows` lists of
/// capacity `cols`) then the column lists (`cols` lists of capacity `rows`), with their counts.
pub struct EllLists {
    pub rows: usize,
    pub cols: usize,
    /// The P the lists are built from is stored transposed (`cols x rows`).
    pub p_transposed: bool,
    /// `2 rows cols` u32 column (row lists) or row (column lists) indices.
    pub idx: Tensor,
    /// `2 rows cols` values of P.
    pub val: Tensor,
    /// `rows + cols` list lengths.
    pub cnt: Tensor,
}

impl EllLists {
    /// The lists kept in `cell` (a layer's, shared by its plans), made on first use.
    pub fn in_cell<'c>(
        cell: &'c std::sync::OnceLock<EllLists>,
        gpu: &Gpu,
        label: &str,
        rows: usize,
        cols: usize,
        p_transposed: bool,
    ) -> Result<&'c EllLists> {
        if cell.get().is_none() {
            let _ = cell.set(EllLists::new(gpu, label, rows, cols, p_transposed)?);
        }
        Ok(cell.get().expect("set above"))
    }

    pub fn new(
        gpu: &Gpu,
        label: &str,
        rows: usize,
        cols: usize,
        p_transposed: bool,
    ) -> Result<EllLists> {
        Ok(EllLists {
            rows,
            cols,
            p_transposed,
            idx: Tensor::zeros(gpu, &format!("{label}.list_idx"), &[2 * rows * cols])?,
            val: Tensor::zeros(gpu, &format!("{label}.list_val"), &[2 * rows * cols])?,
            cnt: Tensor::zeros(gpu, &format!("{label}.list_cnt"), &[rows + cols])?,
        })
    }
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

/// The bindings of both forms of `ell_input_product`.
const INPUT_PRODUCT: &[(u32, Access)] = &[
    (10, RW),
    (15, R),
    (12, RW),
    (14, R),
    (5, R),
    (6, RW),
    (17, RW),
];

/// The bindings of both forms of `ordered_input_grad`: dy, the compacted P^T, the order, the
/// ReLU's output, dx.
const ORDERED_INPUT_GRAD: &[(u32, Access)] = &[(4, R), (14, R), (17, RW), (21, R), (8, RW)];

impl Sparse {
    pub fn new(f: &KernelFactory<'_>) -> Result<Sparse> {
        // `input_lists_split`: x, the lists (indices, values as vec4s, counts), P's row counts,
        // the order.
        let split = [(4, R), (10, RW), (19, RW), (12, RW), (16, R), (17, RW)];
        let lists = [
            (4, R),
            (10, RW),
            (19, RW),
            (12, RW),
            (13, RW),
            (16, R),
            (17, RW),
        ];
        Ok(Sparse {
            csr_linear_k: f.kernel(
                "csr_linear",
                &[
                    (1, R),
                    (2, R),
                    (3, R),
                    (4, R),
                    (5, R),
                    (6, Access::ReadWrite),
                ],
                false,
            )?,
            csr_linear_fm_k: f.kernel(
                "csr_linear_fm",
                &[
                    (1, R),
                    (2, R),
                    (3, R),
                    (7, R),
                    (5, R),
                    (8, Access::ReadWrite),
                ],
                false,
            )?,
            to_feature_major_k: f.kernel(
                "to_feature_major",
                &[(4, R), (6, Access::ReadWrite)],
                false,
            )?,
            to_feature_major4_k: f.kernel(
                "to_feature_major4",
                &[(7, R), (8, Access::ReadWrite)],
                false,
            )?,
            ell_build_k: f.kernel("ell_build", &[(9, R), (10, RW), (11, RW), (12, RW)], false)?,
            ell_product_k: f.kernel(
                "ell_product",
                &[(10, RW), (11, RW), (12, RW), (4, R), (5, R), (6, RW)],
                false,
            )?,
            ell_product4_k: f.kernel(
                "ell_product4",
                &[(10, RW), (11, RW), (12, RW), (7, R), (5, R), (6, RW)],
                false,
            )?,
            input_lists_k: f.kernel("input_lists", &lists, false)?,
            // The same and x as vec4s.
            input_lists4_k: f.kernel("input_lists4", &[&lists[..], &[(7, R)]].concat(), false)?,
            input_lists_split_k: f.kernel("input_lists_split", &split, false)?,
            input_lists_split4_k: f.kernel(
                "input_lists_split4",
                &[&split[..], &[(7, R)]].concat(),
                false,
            )?,
            // The same and x as vec4s, the weight gradient's lists.
            input_lists_split_klists_k: f.kernel(
                "input_lists_split_klists",
                &[&split[..], &[(7, R), (20, RW)]].concat(),
                false,
            )?,
            // Both read `order` in their shared body (the plain one never runs that code).
            ell_input_product_k: f.kernel("ell_input_product", INPUT_PRODUCT, false)?,
            ell_input_product_compacted_k: f.kernel(
                "ell_input_product_compacted",
                INPUT_PRODUCT,
                false,
            )?,
            ell_input_product_sg_k: f.subgroup_kernel(
                "ell_input_product_sg",
                INPUT_PRODUCT,
                false,
            )?,
            ell_input_product_compacted_sg_k: f.subgroup_kernel(
                "ell_input_product_compacted_sg",
                INPUT_PRODUCT,
                false,
            )?,
            compact_columns_k: f.kernel("compact_columns", &[(9, R), (17, RW), (8, RW)], false)?,
            masked_columns_k: f.kernel(
                "masked_columns",
                &[(9, R), (18, R), (17, RW), (8, RW)],
                false,
            )?,
            masked_columns4_k: f.kernel(
                "masked_columns4",
                &[(14, R), (18, R), (17, RW), (8, RW)],
                false,
            )?,
            ordered_input_grad_k: f.kernel("ordered_input_grad", ORDERED_INPUT_GRAD, false)?,
            ordered_input_grad_sg_k: f.subgroup_kernel(
                "ordered_input_grad_sg",
                ORDERED_INPUT_GRAD,
                false,
            )?,
        })
    }

    /// The lists of the inputs nonzero in each block of 8 samples (`x`: batch x width) into
    /// `lists`, with the block's values there, and the switch's input-sparse decision: slot
    /// `input_slot` on when the listed work (list lengths times samples per block) is at most
    /// `input_max`, and then slots `[0, fwd_slots)` (the forward's dense and weight-sparse paths)
    /// off; else slot `input_slot` off and the others as the mask pass set them. With
    /// `compaction`, also the lists' `order`, and when the input-sparse product runs and at most
    /// `max_active` rows keep a weight, the compaction's two slots on instead of `input_slot`.
    /// One workgroup.
    #[allow(clippy::too_many_arguments)]
    pub fn input_lists(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        lists: &InputLists,
        switch: &Switch,
        input_max: u32,
        fwd_slots: usize,
        input_slot: usize,
        compaction: Option<&Compaction<'_>>,
    ) -> Result<Dispatch> {
        let (batch, width) = (lists.batch, lists.width);
        assert_eq!(
            x.len(),
            batch * width,
            "input_lists: {} is not {batch}x{width}",
            x.label
        );
        assert!(0 < fwd_slots && fwd_slots <= input_slot);
        assert!(input_slot < switch.slots && switch.slots <= 64);
        let mut params = SparseParams {
            rows: batch as u32,
            cols: width as u32,
            input_max,
            n_switch: switch.slots as u32,
            fwd_slots: fwd_slots as u32,
            input_slot: input_slot as u32,
            outputs: lists.outputs as u32,
            ..Default::default()
        };
        // Without a compaction the kernel reads no counts: x stands in for them.
        let mut row_counts = x;
        if let Some(c) = compaction {
            assert!(
                c.slot.max(c.product_slot) < switch.slots
                    && c.slot.min(c.product_slot) >= fwd_slots
                    && c.slot != c.product_slot
                    && input_slot != c.slot
                    && input_slot != c.product_slot,
                "input_lists: compaction slots"
            );
            assert!(
                c.row_counts.len() >= lists.outputs && lists.outputs.is_multiple_of(4),
                "input_lists: {} row counts for {} outputs",
                c.row_counts.len(),
                lists.outputs
            );
            params.compact = 1;
            params.compact_max = c.max_active;
            params.compact_slot = c.slot as u32;
            params.compact_product_slot = c.product_slot as u32;
            row_counts = c.row_counts;
        }
        let mut bufs = vec![
            x,
            &lists.idx,
            &lists.val,
            &lists.cnt,
            &switch.args,
            row_counts,
            &lists.order,
        ];
        let k = if wide_input(x, width) {
            bufs.push(x);
            &self.input_lists4_k
        } else {
            &self.input_lists_k
        };
        k.bind(gpu, &params, &bufs, None, [1, 1, 1])
    }

    /// `input_lists` for a layer whose input-sparse forward runs at every step, compacted
    /// (`Linear::forward_counted`): the same lists and, from P's per-row keep counts
    /// (`row_counts`), the same `order`, in two workgroups (one per list segment), with no path
    /// to pick and no switch. With `k_lists` (`Gemm::k_list_words` long; the input's width a
    /// multiple of 4, x 16-byte aligned), further workgroups also write the lists of the samples
    /// nonzero in each block of 8 inputs that the layer's weight gradient reads
    /// (`Gemm::backward_weight_sgd` with `KLists::Built`), as `tn_k_lists` would.
    pub fn input_lists_counted(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        lists: &InputLists,
        row_counts: &Tensor,
        k_lists: Option<&Tensor>,
    ) -> Result<Dispatch> {
        let (batch, width) = (lists.batch, lists.width);
        assert_eq!(
            x.len(),
            batch * width,
            "input_lists_counted: {} is not {batch}x{width}",
            x.label
        );
        assert!(
            row_counts.len() >= lists.outputs && lists.outputs.is_multiple_of(4),
            "input_lists_counted: {} row counts for {} outputs",
            row_counts.len(),
            lists.outputs
        );
        let params = SparseParams {
            rows: batch as u32,
            cols: width as u32,
            outputs: lists.outputs as u32,
            ..Default::default()
        };
        let mut bufs = vec![
            x,
            &lists.idx,
            &lists.val,
            &lists.cnt,
            row_counts,
            &lists.order,
        ];
        let Some(k_lists) = k_lists else {
            let k = if wide_input(x, width) {
                bufs.push(x);
                &self.input_lists_split4_k
            } else {
                &self.input_lists_split_k
            };
            return k.bind(gpu, &params, &bufs, None, [2, 1, 1]);
        };
        let words = crate::kernels::gemm::Gemm::k_list_words(width, batch);
        assert!(
            wide_input(x, width) && k_lists.len() >= words,
            "input_lists_counted: {} ({width} wide at byte {}) or {} ({} words, {words} needed) does not fit the weight gradient's lists",
            x.label,
            x.offset,
            k_lists.label,
            k_lists.len()
        );
        bufs.extend([x, k_lists]);
        let blocks = width.div_ceil(8) as u32;
        self.input_lists_split_klists_k.bind(
            gpu,
            &params,
            &bufs,
            None,
            [2 + blocks.div_ceil(64), 1, 1],
        )
    }

    /// P^T's columns (`pt`: width x n) in the lists' `order` (`input_lists` with a compaction)
    /// into `pt_c`, those of every workgroup of 64 ordered rows that holds a row that keeps a
    /// weight. Routed through the compaction's slot (`input_lists` turns it on).
    pub fn compact_columns(
        &self,
        gpu: &Gpu,
        lists: &InputLists,
        pt: &Tensor,
        pt_c: &Tensor,
    ) -> Result<Dispatch> {
        let n = lists.outputs;
        assert!(
            pt.len() == lists.width * n && pt_c.len() == pt.len(),
            "compact_columns: {} and {} are not {}x{n}",
            pt.label,
            pt_c.label,
            lists.width
        );
        let params = Self::compacted_columns_params("compact_columns", lists, pt_c);
        self.compact_columns_k.bind(
            gpu,
            &params,
            &[pt, &lists.order, pt_c],
            None,
            grid_1d(lists.width.div_ceil(COMPACT_ROWS) as u32),
        )
    }

    /// The parameters of `compact_columns` and `masked_columns`, which write `pt_c` (width x n,
    /// n = the lists' outputs) for the compacted product (`what`: the caller, for the message).
    fn compacted_columns_params(what: &str, lists: &InputLists, pt_c: &Tensor) -> SparseParams {
        let n = lists.outputs;
        assert!(
            Self::input_product_fits(n, pt_c),
            "{what}: {n} outputs at byte {}",
            pt_c.offset
        );
        SparseParams {
            rows: n as u32,
            cols: lists.width as u32,
            outputs: n as u32,
            ..Default::default()
        }
    }

    /// The columns of P^T = (W * S(|W| - t))^T that the compacted product reads, in the lists'
    /// `order` (`input_lists` with a compaction), into `pt_c`: what `compact_columns` copies from
    /// P^T, written from `weight` (`n x width`, row-major) and `threshold` (n) for a layer whose
    /// mask pass only counted (`PassExtras::count_only`) and wrote no P^T. `masked_columns4`
    /// where W's rows can be read as vec4s (width % 4 == 0, offset 16-byte aligned).
    pub fn masked_columns(
        &self,
        gpu: &Gpu,
        lists: &InputLists,
        weight: &Tensor,
        threshold: &Tensor,
        pt_c: &Tensor,
    ) -> Result<Dispatch> {
        let (n, width) = (lists.outputs, lists.width);
        assert!(
            weight.len() == n * width && threshold.len() == n && pt_c.len() == n * width,
            "masked_columns: {} ({}), {} thresholds and {} are not {n}x{width}",
            weight.label,
            weight.len(),
            threshold.len(),
            pt_c.label
        );
        let params = Self::compacted_columns_params("masked_columns", lists, pt_c);
        // W's rows as vec4s where they can be read so.
        let k = if width.is_multiple_of(4) && weight.offset.is_multiple_of(16) {
            &self.masked_columns4_k
        } else {
            &self.masked_columns_k
        };
        k.bind(
            gpu,
            &params,
            &[weight, threshold, &lists.order, pt_c],
            None,
            grid_1d(width.div_ceil(COMPACT_ROWS) as u32),
        )
    }

    /// `y = act(x P^T + bias)` from the lists of x's nonzero columns per block of 8 samples, with
    /// their values (`input_lists`), and `pt` = P^T (`width x n`, n % 4 == 0, 16-byte aligned);
    /// y is batch-major; act is ReLU or none. With `compacted`, `pt` holds P^T's columns in the
    /// lists' `order` (`compact_columns`): the same y, computed for the rows that keep a weight.
    #[allow(clippy::too_many_arguments)]
    pub fn ell_input_product(
        &self,
        gpu: &Gpu,
        lists: &InputLists,
        pt: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        relu: bool,
        compacted: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (batch, width) = (lists.batch, lists.width);
        assert_eq!(pt.shape.len(), 2, "ell_input_product: P^T is a matrix");
        let n = pt.shape[1];
        assert_eq!(
            pt.shape[0], width,
            "ell_input_product: P^T {:?} vs width {width}",
            pt.shape
        );
        assert!(
            Self::input_product_fits(n, pt),
            "ell_input_product: {} outputs at byte {}",
            n,
            pt.offset
        );
        assert!(y.len() >= batch * n, "ell_input_product: y too small");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "ell_input_product: bias length");
        }
        let params = SparseParams {
            rows: n as u32,
            cols: width as u32,
            batch: batch as u32,
            has_bias: bias.is_some() as u32,
            relu: relu as u32,
            ..Default::default()
        };
        assert!(
            !compacted || lists.outputs == n,
            "ell_input_product: the lists order {} outputs, P^T has {n}",
            lists.outputs
        );
        let k = if compacted {
            self.ell_input_product_compacted_sg_k
                .as_ref()
                .unwrap_or(&self.ell_input_product_compacted_k)
        } else {
            self.ell_input_product_sg_k
                .as_ref()
                .unwrap_or(&self.ell_input_product_k)
        };
        k.bind(
            gpu,
            &params,
            &[
                &lists.idx,
                &lists.val,
                &lists.cnt,
                pt,
                bias.unwrap_or(dummy),
                y,
                &lists.order,
            ],
            None,
            [
                (n as u32).div_ceil(64),
                batch.div_ceil(InputLists::BLOCK) as u32,
                1,
            ],
        )
    }

    /// A masked linear layer's product to the input, gated by the ReLU before it, from the
    /// compacted columns of P^T its compacted forward read (`pt_c`: width x n, written by
    /// `masked_columns` or `compact_columns` in the order of the forward's lists, `order`), dy
    /// (batch x n) and dx (batch x width):
    /// `dx[b][i] = sum over the ordered rows r of every workgroup of 64 that holds one that keeps
    /// a weight of dy[b][r] P[r][i]` where `relu_out[b][i] > 0`, else 0. The dense gated product's
    /// values (`Gemm::backward_input_gated`) up to float reassociation: the rows that keep
    /// nothing, whose products are zeros, are skipped.
    pub fn ordered_input_grad(
        &self,
        gpu: &Gpu,
        order: &Tensor,
        dy: &Tensor,
        pt_c: &Tensor,
        relu_out: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            dy.shape.len() == 2 && dx.shape.len() == 2,
            "ordered_input_grad: dy {:?} and dx {:?} are not batch x features",
            dy.shape,
            dx.shape
        );
        let (batch, n, width) = (dy.shape[0], dy.shape[1], dx.shape[1]);
        assert!(
            dx.shape[0] == batch
                && order.len() > n
                && pt_c.len() == width * n
                && relu_out.len() == batch * width
                && dx.len() == batch * width
                && Self::input_product_fits(n, pt_c)
                && Self::ordered_input_grad_fits(width, relu_out, dx),
            "ordered_input_grad: {} {:?}, {} ({}), {} and {} are not for {batch} samples, {n} outputs, {width} inputs (a multiple of 4, 16-byte aligned)",
            dy.label,
            dy.shape,
            pt_c.label,
            pt_c.len(),
            relu_out.label,
            dx.label
        );
        let params = SparseParams {
            rows: n as u32,
            cols: width as u32,
            batch: batch as u32,
            outputs: n as u32,
            ..Default::default()
        };
        let k = self.ordered_input_grad_sg_k.as_ref();
        k.unwrap_or(&self.ordered_input_grad_k).bind(
            gpu,
            &params,
            &[dy, pt_c, order, relu_out, dx],
            None,
            [(width as u32).div_ceil(64), (batch as u32).div_ceil(32), 1],
        )
    }

    /// Whether `ordered_input_grad` takes `width` inputs with this ReLU output and dx (read and
    /// written as vec4s).
    fn ordered_input_grad_fits(width: usize, relu_out: &Tensor, dx: &Tensor) -> bool {
        width.is_multiple_of(4)
            && relu_out.offset.is_multiple_of(16)
            && dx.offset.is_multiple_of(16)
    }

    /// Whether `ell_input_product` takes a P^T of `n` outputs stored as `pt` (vec4 rows).
    pub fn input_product_fits(n: usize, pt: &Tensor) -> bool {
        n.is_multiple_of(4) && pt.offset.is_multiple_of(16)
    }

    /// The row lists (`by_rows`) or the column lists of P (`rows x cols`, stored as `p`: transposed
    /// when `lists.p_transposed`) into `lists`.
    pub fn ell_build(
        &self,
        gpu: &Gpu,
        p: &Tensor,
        lists: &EllLists,
        by_rows: bool,
    ) -> Result<Dispatch> {
        let (rows, cols) = (lists.rows, lists.cols);
        assert_eq!(
            p.len(),
            rows * cols,
            "ell_build: {} is not {rows}x{cols}",
            p.label
        );
        let params = SparseParams {
            rows: rows as u32,
            cols: cols as u32,
            list_base: if by_rows { 0 } else { (rows * cols) as u32 },
            cnt_base: if by_rows { 0 } else { rows as u32 },
            p_transposed: lists.p_transposed as u32,
            by_rows: by_rows as u32,
            ..Default::default()
        };
        let n = if by_rows { rows } else { cols };
        self.ell_build_k.bind(
            gpu,
            &params,
            &[p, &lists.idx, &lists.val, &lists.cnt],
            None,
            grid_1d(n.div_ceil(64) as u32),
        )
    }

    /// A listed product and the dense dispatch it stands in for, routed through `sw`'s slots
    /// `base .. base + 4`: the lists of `l.p` (`ell_build`), `l.x` made feature-major into
    /// `l.x_fm`, the list product into `l.y` (`ell_product`: `by_rows`, the forward; else the
    /// product to the input), then `dense` (the mask pass picks one path each step).
    pub fn routed_listed_product(
        &self,
        gpu: &Gpu,
        sw: &Switch,
        base: usize,
        l: &ListedProduct<'_>,
        dense: Dispatch,
        dummy: &Tensor,
    ) -> Result<[Dispatch; 4]> {
        let width = if l.by_rows {
            l.lists.cols
        } else {
            l.lists.rows
        };
        let build = self.ell_build(gpu, l.p, l.lists, l.by_rows)?;
        let copy = self.to_feature_major(gpu, l.batch, width, l.x, l.x_fm)?;
        let product = self.ell_product(
            gpu, l.lists, l.by_rows, l.batch, l.x_fm, l.bias, l.y, l.relu, dummy,
        )?;
        Ok([
            sw.route(gpu, base, Path::Sparse, build),
            sw.route(gpu, base + 1, Path::Sparse, copy),
            sw.route(gpu, base + 2, Path::Sparse, product),
            sw.route(gpu, base + 3, Path::Dense, dense),
        ])
    }

    /// With the row lists (`by_rows`): `y = act(x P^T + bias)` (`x`: `batch x cols`); with the
    /// column lists: `y = act(x P)` (`x`: `batch x rows`, no bias); act is ReLU (`relu`, a linear
    /// layer's fused ReLU) or none. `x_fm` is `x` feature-major (`to_feature_major`), `y`
    /// batch-major; every y is written.
    #[allow(clippy::too_many_arguments)]
    pub fn ell_product(
        &self,
        gpu: &Gpu,
        lists: &EllLists,
        by_rows: bool,
        batch: usize,
        x_fm: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (n_out, n_in) = if by_rows {
            (lists.rows, lists.cols)
        } else {
            (lists.cols, lists.rows)
        };
        assert!(batch > 0, "ell_product: empty batch");
        assert!(x_fm.len() >= batch * n_in, "ell_product: x too small");
        assert!(y.len() >= batch * n_out, "ell_product: y too small");
        if let Some(b) = bias {
            assert_eq!(b.len(), n_out, "ell_product: bias length");
        }
        let vec4 = batch.is_multiple_of(4) && x_fm.offset.is_multiple_of(16);
        let quads = if vec4 {
            batch.div_ceil(4 * VQ)
        } else {
            batch.div_ceil(QUAD)
        };
        let params = SparseParams {
            rows: n_out as u32,
            cols: n_in as u32,
            batch: batch as u32,
            quads: quads as u32,
            has_bias: bias.is_some() as u32,
            relu: relu as u32,
            list_base: if by_rows {
                0
            } else {
                (lists.rows * lists.cols) as u32
            },
            cnt_base: if by_rows { 0 } else { lists.rows as u32 },
            ..Default::default()
        };
        let k = if vec4 {
            &self.ell_product4_k
        } else {
            &self.ell_product_k
        };
        k.bind(
            gpu,
            &params,
            &[
                &lists.idx,
                &lists.val,
                &lists.cnt,
                x_fm,
                bias.unwrap_or(dummy),
                y,
            ],
            None,
            grid_1d((n_out * quads).div_ceil(64) as u32),
        )
    }

    /// `csr_linear` from and to feature-major blocks for a batch that is a multiple of 4 (the vec4
    /// fast path); `x` and `y` must start 16-byte aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn csr_linear_fm(
        &self,
        gpu: &Gpu,
        w: &CsrTensors,
        batch: usize,
        x: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            batch > 0 && batch.is_multiple_of(4) && w.rows > 0,
            "csr_linear_fm: batch {batch}"
        );
        assert_eq!(w.crow.len(), w.rows + 1, "csr_linear_fm: crow length");
        assert!(
            x.len() >= batch * w.cols && y.len() >= batch * w.rows,
            "csr_linear_fm: sizes"
        );
        assert!(
            x.offset.is_multiple_of(16) && y.offset.is_multiple_of(16),
            "csr_linear_fm: alignment"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), w.rows, "csr_linear_fm: bias length");
        }
        let quads = batch.div_ceil(4 * VQ);
        let p = SparseParams {
            rows: w.rows as u32,
            cols: w.cols as u32,
            batch: batch as u32,
            quads: quads as u32,
            relu: relu as u32,
            has_bias: bias.is_some() as u32,
            ..Default::default()
        };
        let groups = grid_1d((w.rows * quads).div_ceil(64) as u32);
        self.csr_linear_fm_k.bind(
            gpu,
            &p,
            &[&w.crow, &w.col, &w.val, x, bias.unwrap_or(dummy), y],
            None,
            groups,
        )
    }

    /// `y (cols x batch) = x (batch x cols)` transposed: a batch-major block made feature-major.
    pub fn to_feature_major(
        &self,
        gpu: &Gpu,
        batch: usize,
        cols: usize,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            x.len() >= batch * cols && y.len() >= batch * cols,
            "to_feature_major: sizes"
        );
        let p = SparseParams {
            cols: cols as u32,
            batch: batch as u32,
            ..Default::default()
        };
        // 4 x 4 blocks as vec4s where both sides are whole quads and the views 16-byte aligned.
        if batch.is_multiple_of(4)
            && cols.is_multiple_of(4)
            && x.offset.is_multiple_of(16)
            && y.offset.is_multiple_of(16)
        {
            return self.to_feature_major4_k.bind(
                gpu,
                &p,
                &[x, y],
                None,
                grid_1d((batch * cols / 16).div_ceil(64) as u32),
            );
        }
        self.to_feature_major_k.bind(
            gpu,
            &p,
            &[x, y],
            None,
            grid_1d((batch * cols).div_ceil(64) as u32),
        )
    }

    /// `y = act(x W^T + b)` for `batch` samples, W given as CSR (the caller has validated it:
    /// the shader trusts crow and col). `x` holds `batch x w.cols` values laid out per `x_major`,
    /// `y` gets `batch x w.rows` per `y_major`; writes every y.
    #[allow(clippy::too_many_arguments)]
    pub fn csr_linear(
        &self,
        gpu: &Gpu,
        w: &CsrTensors,
        batch: usize,
        x: &Tensor,
        x_major: Major,
        bias: Option<&Tensor>,
        y: &Tensor,
        y_major: Major,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        assert!(
            batch > 0 && w.rows > 0,
            "csr_linear: empty batch or no rows"
        );
        assert_eq!(w.crow.len(), w.rows + 1, "csr_linear: crow length");
        assert!(x.len() >= batch * w.cols, "csr_linear: x too small");
        assert!(y.len() >= batch * w.rows, "csr_linear: y too small");
        if let Some(b) = bias {
            assert_eq!(b.len(), w.rows, "csr_linear: bias length");
        }
        let quads = batch.div_ceil(QUAD);
        let (x_bs, x_fs) = x_major.strides(batch, w.cols);
        let (y_bs, y_fs) = y_major.strides(batch, w.rows);
        let p = SparseParams {
            rows: w.rows as u32,
            cols: w.cols as u32,
            batch: batch as u32,
            quads: quads as u32,
            x_bs,
            x_fs,
            y_bs,
            y_fs,
            relu: relu as u32,
            has_bias: bias.is_some() as u32,
            ..Default::default()
        };
        let groups = grid_1d((w.rows * quads).div_ceil(64) as u32);
        self.csr_linear_k.bind(
            gpu,
            &p,
            &[&w.crow, &w.col, &w.val, x, bias.unwrap_or(dummy), y],
            None,
            groups,
        )
    }
}
