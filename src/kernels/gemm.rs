//! `shaders/gemm.wgsl`: strided f32 matrix products (two variants) and the bias gradient.

use super::{Access, Dispatch, GemmVariant, Kernel, KernelFactory};
use crate::gpu::{Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/gemm.wgsl");

/// Keep in sync with `GemmParams` in shaders/gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub accumulate: u32,
    pub has_bias: u32,
    /// `gemm_tn_vec4`: also write the bias gradient `db` (sum over k of A).
    pub bias_grad: u32,
    /// Store `max(C, 0)` (a linear layer's ReLU, fused into its forward).
    pub relu: u32,
    /// `gemm_tn_sgd`: C is dL/dP of a DST-masked weight.
    pub masked: u32,
    /// `gemm_tn_sgd`: SGD's momentum and weight decay.
    pub momentum: f32,
    pub weight_decay: f32,
    /// Store C only where `bias[row * N + col] > 0` (else 0): a ReLU's backward fused into the
    /// product to the input (`Gemm::backward_input_gated`; the bias binding holds the ReLU's
    /// output, the shape of C).
    pub gate: u32,
    pub _pad: [u32; 3],
}

impl GemmParams {
    /// `Y = X W^T (+ b)`: X (m x k), W (n x k).
    pub fn linear_forward(m: usize, n: usize, k: usize, has_bias: bool) -> GemmParams {
        GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            a_rs: k as u32,
            a_cs: 1,
            b_rs: 1,
            b_cs: k as u32,
            accumulate: 0,
            has_bias: has_bias as u32,
            bias_grad: 0,
            ..Default::default()
        }
    }

    /// `dX [+]= G W`: G (m x n), W (n x k).
    pub fn linear_backward_input(m: usize, n: usize, k: usize, accumulate: bool) -> GemmParams {
        GemmParams {
            m: m as u32,
            n: k as u32,
            k: n as u32,
            a_rs: n as u32,
            a_cs: 1,
            b_rs: k as u32,
            b_cs: 1,
            accumulate: accumulate as u32,
            has_bias: 0,
            bias_grad: 0,
            ..Default::default()
        }
    }

    /// `Y = X W^T (+ b)` with W given transposed: X (m x k), Wt (k x n).
    pub fn linear_forward_t(m: usize, n: usize, k: usize, has_bias: bool) -> GemmParams {
        GemmParams {
            b_rs: n as u32,
            b_cs: 1,
            ..GemmParams::linear_forward(m, n, k, has_bias)
        }
    }

    /// `dX [+]= G W` with W given transposed: G (m x n), Wt (k x n).
    pub fn linear_backward_input_t(m: usize, n: usize, k: usize, accumulate: bool) -> GemmParams {
        GemmParams {
            b_rs: 1,
            b_cs: n as u32,
            ..GemmParams::linear_backward_input(m, n, k, accumulate)
        }
    }

    /// `dW [+]= G^T X`: G (m x n), X (m x k).
    pub fn linear_backward_weight(m: usize, n: usize, k: usize, accumulate: bool) -> GemmParams {
        GemmParams {
            m: n as u32,
            n: k as u32,
            k: m as u32,
            a_rs: 1,
            a_cs: n as u32,
            b_rs: k as u32,
            b_cs: 1,
            accumulate: accumulate as u32,
            has_bias: 0,
            bias_grad: 0,
            ..Default::default()
        }
    }
}

pub struct Gemm {
    pub nt_vec4: Kernel,
    /// `gemm_nt_vec4`'s subgroup form (run instead where present).
    pub nt_vec4_sg: Option<Kernel>,
    /// `gemm_nt_vec4` for at most `NARROW` columns, a subgroup form (run instead where present).
    pub nt_narrow_sg: Option<Kernel>,
    pub tn_vec4: Kernel,
    /// `gemm_tn_vec4`'s subgroup form, 8 x 8 outputs per invocation (run instead where present).
    pub tn_vec4_sg: Option<Kernel>,
    pub tn_sgd: Kernel,
    /// `gemm_tn_sgd`'s subgroup form (run instead where present).
    pub tn_sgd_sg: Option<Kernel>,
    pub tn_sgd_listed: Kernel,
    /// `gemm_tn_sgd_listed`'s subgroup form (run instead where present).
    pub tn_sgd_listed_sg: Option<Kernel>,
    pub tn_k_lists: Kernel,
    pub nn_vec4: Kernel,
    /// `gemm_nn_vec4`'s subgroup form (run instead where present).
    pub nn_vec4_sg: Option<Kernel>,
    pub regblock: Kernel,
    pub small: Kernel,
    pub tiled: Kernel,
    pub tiled_split: Kernel,
    pub tiled_2x2: Kernel,
    pub bias_backward_k: Kernel,
    pub bias_backward_split_k: Kernel,
    /// The variant `forward`/`backward_*` use on this device.
    pub variant: GemmVariant,
    /// Bound as the db of `gemm_tn_vec4` and the tiled forms when they write none.
    no_db: Tensor,
}

const MATMUL: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::Read),
    (3, Access::Read),
    (4, Access::ReadWrite),
];

const VEC4: &[(u32, Access)] = &[
    (5, Access::Read),
    (6, Access::Read),
    (3, Access::Read),
    (4, Access::ReadWrite),
];

/// The tiled GPU forms: MATMUL and the bias gradient (`bias_grad`; else `no_db` is bound).
const MATMUL_DB: &[(u32, Access)] = &[
    (1, Access::Read),
    (2, Access::Read),
    (3, Access::Read),
    (4, Access::ReadWrite),
    (7, Access::ReadWrite),
];

/// `gemm_tn_vec4`: VEC4 and the bias gradient.
const VEC4_TN: &[(u32, Access)] = &[
    (5, Access::Read),
    (6, Access::Read),
    (3, Access::Read),
    (4, Access::ReadWrite),
    (7, Access::ReadWrite),
];

/// `gemm_tn_sgd`: A, B, db, then the weight, its velocity, the thresholds, the partial sums.
const TN_SGD: &[(u32, Access)] = &[
    (5, Access::Read),
    (6, Access::Read),
    (7, Access::ReadWrite),
    (8, Access::ReadWrite),
    (9, Access::ReadWrite),
    (10, Access::ReadWrite),
    (11, Access::ReadWrite),
];

/// The weight a fused weight-gradient product updates by SGD (`Gemm::backward_weight_sgd`).
pub struct SgdTarget<'a> {
    /// The weight (N x K) and its velocity, views of the parameter and first-moment arenas.
    pub weight: &'a Tensor,
    pub velocity: &'a Tensor,
    pub momentum: f32,
    pub weight_decay: f32,
    /// A DST-masked weight: its thresholds (N) and the partial sums of dL/dt the product writes
    /// (`Gemm::dt_blocks(K)` x N, block-major), finished by `masked.threshold_grad`. Both read
    /// and written as vec4s: N % 4 == 0, 16-byte aligned (else no fused product), as is the
    /// thresholds' gradient `threshold_grad` writes.
    pub mask: Option<(&'a Tensor, &'a Tensor)>,
}

/// The lists of the samples nonzero in each block of 8 input features that the listed weight
/// gradient reads (`Gemm::backward_weight_sgd`): to be built by its own dispatch (`tn_k_lists`),
/// or already built this step (sparse.wgsl's `input_lists_split_klists`, in the layer's forward).
#[derive(Clone, Copy)]
pub enum KLists<'a> {
    Build(&'a Tensor),
    Built(&'a Tensor),
}

/// The vec4 fast path (CPU adapters) that computes `p`, if its strides and sizes allow one.
fn vec4_form(p: &GemmParams, a: &Tensor, b: &Tensor) -> Option<Vec4Form> {
    let aligned = a.offset.is_multiple_of(16) && b.offset.is_multiple_of(16);
    let (m, n, k) = (p.m, p.n, p.k);
    if !aligned || m == 0 || n == 0 || k == 0 {
        return None;
    }
    if p.a_rs == k && p.a_cs == 1 && p.b_rs == 1 && p.b_cs == k && k % 4 == 0 {
        return Some(Vec4Form::Nt);
    }
    if p.a_rs == 1 && p.a_cs == m && p.b_rs == n && p.b_cs == 1 && m % 4 == 0 && n % 4 == 0 {
        return Some(Vec4Form::Tn);
    }
    if p.a_rs == k && p.a_cs == 1 && p.b_rs == n && p.b_cs == 1 && k % 4 == 0 && n % 4 == 0 {
        return Some(Vec4Form::Nn);
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vec4Form {
    Nt,
    Tn,
    Nn,
}

/// The GPU product's forms (shaders/gemm.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TiledForm {
    /// `gemm_tiled`: 16 x 16 outputs per workgroup, one per invocation.
    Tiled,
    /// `gemm_tiled_split`: 8 x 8 outputs per workgroup, k split four ways inside it.
    SplitK,
    /// `gemm_tiled_2x2`: 32 x 32 outputs per workgroup, 2 x 2 per invocation (`gemm_tiled`'s bits).
    TwoByTwo,
}

impl TiledForm {
    pub const ALL: [TiledForm; 3] = [TiledForm::Tiled, TiledForm::SplitK, TiledForm::TwoByTwo];
}

/// Products with at least this many output tiles of 32 x 32 take the 2 x 2 form (as the
/// convolutions' tile products do, `conv::TILES_2X2`).
pub const TILES_2X2: u32 = 256;

/// The GPU product's form for a shape: k split four ways (`SplitK`) with fewer than 256 output
/// tiles of 16 x 16 (too few workgroups to fill a GPU, each a long chain of staged slices) and k
/// at least 64; 2 x 2 outputs per invocation from `TILES_2X2` tiles of 32 x 32; else one. A
/// function of the shape alone: the same product always sums in the same order.
pub fn tiled_form(p: &GemmParams) -> TiledForm {
    if p.m.div_ceil(16) * p.n.div_ceil(16) < 256 && p.k >= 64 {
        TiledForm::SplitK
    } else if p.m.div_ceil(32) * p.n.div_ceil(32) >= TILES_2X2 {
        TiledForm::TwoByTwo
    } else {
        TiledForm::Tiled
    }
}

/// C (M x N) must fit its tensor.
fn assert_output_fits(p: &GemmParams, c: &Tensor) {
    assert!(
        c.len() >= (p.m * p.n) as usize,
        "{}: output too small",
        c.label
    );
}

fn dims2(t: &Tensor) -> (usize, usize) {
    assert_eq!(
        t.shape.len(),
        2,
        "{}: expected a matrix, got {:?}",
        t.label,
        t.shape
    );
    (t.shape[0], t.shape[1])
}

impl Gemm {
    pub fn new(f: &KernelFactory<'_>, variant: GemmVariant) -> Result<Gemm> {
        // The listed forms: TN_SGD and the lists of B's nonzero rows per column block.
        let listed = [TN_SGD, &[(12, Access::ReadWrite)]].concat();
        Ok(Gemm {
            nt_vec4: f.kernel("gemm_nt_vec4", VEC4, false)?,
            nt_vec4_sg: f.subgroup_kernel("gemm_nt_vec4_sg", VEC4, false)?,
            nt_narrow_sg: f.subgroup_kernel("gemm_nt_narrow_sg", VEC4, false)?,
            tn_vec4: f.kernel("gemm_tn_vec4", VEC4_TN, false)?,
            tn_vec4_sg: f.subgroup_kernel("gemm_tn_vec4_sg", VEC4_TN, false)?,
            tn_sgd: f.kernel("gemm_tn_sgd", TN_SGD, true)?,
            tn_sgd_sg: f.subgroup_kernel("gemm_tn_sgd_sg", TN_SGD, true)?,
            tn_sgd_listed: f.kernel("gemm_tn_sgd_listed", &listed, true)?,
            tn_sgd_listed_sg: f.subgroup_kernel("gemm_tn_sgd_listed_sg", &listed, true)?,
            tn_k_lists: f.kernel(
                "tn_k_lists",
                &[(6, Access::Read), (12, Access::ReadWrite)],
                false,
            )?,
            nn_vec4: f.kernel("gemm_nn_vec4", VEC4, false)?,
            nn_vec4_sg: f.subgroup_kernel("gemm_nn_vec4_sg", VEC4, false)?,
            regblock: f.kernel("gemm_regblock", MATMUL, false)?,
            small: f.kernel("gemm_small", MATMUL, false)?,
            tiled: f.kernel("gemm_tiled", MATMUL_DB, false)?,
            tiled_split: f.kernel("gemm_tiled_split", MATMUL_DB, false)?,
            tiled_2x2: f.kernel("gemm_tiled_2x2", MATMUL_DB, false)?,
            bias_backward_k: f.kernel(
                "bias_backward",
                &[(1, Access::Read), (4, Access::ReadWrite)],
                false,
            )?,
            bias_backward_split_k: f.kernel(
                "bias_backward_split",
                &[(1, Access::Read), (4, Access::ReadWrite)],
                false,
            )?,
            variant,
            no_db: Tensor::zeros(f.gpu, "no_db", &[4])?,
        })
    }

    /// The most columns of `gemm_nt_narrow_sg` (shaders/gemm.wgsl).
    pub const NARROW: u32 = 12;

    /// `C = [C +] A B [+ bias]` with the strides in `p`, on the given variant.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        gpu: &Gpu,
        variant: GemmVariant,
        p: GemmParams,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        c: &Tensor,
    ) -> Result<Dispatch> {
        assert_output_fits(&p, c);
        let groups = [p.n.div_ceil(64), p.m.div_ceil(64), 1];
        if variant == GemmVariant::RegBlock {
            let form = vec4_form(&p, a, b);
            if let (Some(Vec4Form::Nt), Some(narrow)) = (form, &self.nt_narrow_sg) {
                if p.n <= Self::NARROW {
                    // One invocation per row of C.
                    let groups = [p.m.div_ceil(8), 1, 1];
                    return narrow.bind(gpu, &p, &[a, b, bias, c], None, groups);
                }
            }
            let abc = [a, b, bias, c];
            match form {
                Some(Vec4Form::Nt) => {
                    // 4 rows per invocation (32 per workgroup), in either form.
                    let kernel = self.nt_vec4_sg.as_ref().unwrap_or(&self.nt_vec4);
                    let groups = [p.n.div_ceil(64), p.m.div_ceil(32), 1];
                    return kernel.bind(gpu, &p, &abc, None, groups);
                }
                Some(Vec4Form::Tn) => {
                    assert_eq!(p.bias_grad, 0, "matmul writes no bias gradient");
                    let (kernel, groups) = self.tn_vec4_form(&p);
                    return kernel.bind(gpu, &p, &[a, b, bias, c, &self.no_db], None, groups);
                }
                // 8 rows per invocation (64 per workgroup), in either form.
                Some(Vec4Form::Nn) => {
                    let kernel = self.nn_vec4_sg.as_ref().unwrap_or(&self.nn_vec4);
                    return kernel.bind(gpu, &p, &abc, None, groups);
                }
                None => {}
            }
        }
        match variant {
            GemmVariant::RegBlock if p.n < 64 => self.small.bind(
                gpu,
                &p,
                &[a, b, bias, c],
                None,
                super::grid_1d((p.m * p.n).div_ceil(64)),
            ),
            GemmVariant::RegBlock => self.regblock.bind(
                gpu,
                &p,
                &[a, b, bias, c],
                None,
                [p.n.div_ceil(64), p.m.div_ceil(64), 1],
            ),
            GemmVariant::Tiled => self.tiled_with(gpu, tiled_form(&p), p, a, b, bias, c),
        }
    }

    /// The GPU product on an explicit form (`matmul` picks with `tiled_form`).
    #[allow(clippy::too_many_arguments)]
    pub fn tiled_with(
        &self,
        gpu: &Gpu,
        form: TiledForm,
        p: GemmParams,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        c: &Tensor,
    ) -> Result<Dispatch> {
        assert_eq!(p.bias_grad, 0, "tiled_with writes no bias gradient");
        self.tiled_db(gpu, form, p, a, b, bias, c, &self.no_db)
    }

    /// `tiled_with`, also writing `db[m] = sum_k A(m, k)` when `p.bias_grad` is set (in the same
    /// dispatch: the first column of workgroups sums the rows of A it stages).
    #[allow(clippy::too_many_arguments)]
    pub fn tiled_db(
        &self,
        gpu: &Gpu,
        form: TiledForm,
        p: GemmParams,
        a: &Tensor,
        b: &Tensor,
        bias: &Tensor,
        c: &Tensor,
        db: &Tensor,
    ) -> Result<Dispatch> {
        assert_output_fits(&p, c);
        assert!(
            p.bias_grad == 0 || db.len() >= p.m as usize,
            "{}: bias gradient too small",
            db.label
        );
        let (kernel, side) = match form {
            TiledForm::Tiled => (&self.tiled, 16),
            TiledForm::SplitK => (&self.tiled_split, 8),
            TiledForm::TwoByTwo => (&self.tiled_2x2, 32),
        };
        kernel.bind(
            gpu,
            &p,
            &[a, b, bias, c, db],
            None,
            [p.n.div_ceil(side), p.m.div_ceil(side), 1],
        )
    }

    /// Linear forward `y = x w^T (+ bias)`: x (M x K), w (N x K), y (M x N).
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (m, k) = dims2(x);
        let (n, k2) = dims2(w);
        assert_eq!(k, k2, "forward: x {:?} vs w {:?}", x.shape, w.shape);
        assert_eq!(y.shape, vec![m, n], "forward: y shape");
        let p = GemmParams::linear_forward(m, n, k, bias.is_some());
        self.matmul(gpu, self.variant, p, x, w, bias.unwrap_or(dummy), y)
    }

    /// `forward` from the weight's transpose `wt` (K x N): the product that reads the weight along
    /// its contiguous output index (a masked linear layer's P is stored so).
    pub fn forward_t(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        wt: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        self.linear(gpu, x, wt, true, bias, y, false, dummy)
    }

    /// A linear layer's forward `y = act(x w^T + bias)`: `w` is N x K, or its transpose K x N
    /// (`transposed`); act is ReLU (fused into the product's store) or none.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        w: &Tensor,
        transposed: bool,
        bias: Option<&Tensor>,
        y: &Tensor,
        relu: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (m, k) = dims2(x);
        let (k2, n) = if transposed {
            dims2(w)
        } else {
            let (n, k2) = dims2(w);
            (k2, n)
        };
        assert_eq!(
            k, k2,
            "linear: x {:?} vs w {:?} (transposed {transposed})",
            x.shape, w.shape
        );
        assert_eq!(y.shape, vec![m, n], "linear: y shape");
        let mut p = if transposed {
            GemmParams::linear_forward_t(m, n, k, bias.is_some())
        } else {
            GemmParams::linear_forward(m, n, k, bias.is_some())
        };
        p.relu = relu as u32;
        self.matmul(gpu, self.variant, p, x, w, bias.unwrap_or(dummy), y)
    }

    /// `backward_input` from the weight's transpose `wt` (K x N).
    pub fn backward_input_t(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        wt: &Tensor,
        dx: &Tensor,
        accumulate: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (m, n) = dims2(g);
        let (k, n2) = dims2(wt);
        assert_eq!(
            n, n2,
            "backward_input_t: g {:?} vs wt {:?}",
            g.shape, wt.shape
        );
        assert_eq!(dx.shape, vec![m, k], "backward_input_t: dx shape");
        let p = GemmParams::linear_backward_input_t(m, n, k, accumulate);
        self.matmul(gpu, self.variant, p, g, wt, dummy, dx)
    }

    /// `backward_input` (or, `transposed`, `backward_input_t`) followed by the backward of the
    /// ReLU whose output `relu_out` (M x K) is the layer's input: dx = g w where relu_out > 0,
    /// else 0, in the product's store (one pass over dx instead of two; the same values).
    pub fn backward_input_gated(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        w: &Tensor,
        transposed: bool,
        relu_out: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let (m, n) = dims2(g);
        let (n2, k) = if transposed {
            let (k, n2) = dims2(w);
            (n2, k)
        } else {
            dims2(w)
        };
        assert_eq!(
            n, n2,
            "backward_input_gated: g {:?} vs w {:?} (transposed {transposed})",
            g.shape, w.shape
        );
        assert_eq!(dx.shape, vec![m, k], "backward_input_gated: dx shape");
        assert_eq!(relu_out.len(), m * k, "backward_input_gated: gate size");
        let mut p = if transposed {
            GemmParams::linear_backward_input_t(m, n, k, false)
        } else {
            GemmParams::linear_backward_input(m, n, k, false)
        };
        p.gate = 1;
        self.matmul(gpu, self.variant, p, g, w, relu_out, dx)
    }

    /// Linear input gradient `dx [+]= g w`: g (M x N), w (N x K), dx (M x K).
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        w: &Tensor,
        dx: &Tensor,
        accumulate: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (m, n) = dims2(g);
        let (n2, k) = dims2(w);
        assert_eq!(n, n2, "backward_input: g {:?} vs w {:?}", g.shape, w.shape);
        assert_eq!(dx.shape, vec![m, k], "backward_input: dx shape");
        let p = GemmParams::linear_backward_input(m, n, k, accumulate);
        self.matmul(gpu, self.variant, p, g, w, dummy, dx)
    }

    /// Linear weight gradient `dw [+]= g^T x`: g (M x N), x (M x K), dw (N x K).
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        x: &Tensor,
        dw: &Tensor,
        accumulate: bool,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (m, n) = dims2(g);
        let (m2, k) = dims2(x);
        assert_eq!(m, m2, "backward_weight: g {:?} vs x {:?}", g.shape, x.shape);
        assert_eq!(dw.shape, vec![n, k], "backward_weight: dw shape");
        let p = GemmParams::linear_backward_weight(m, n, k, accumulate);
        self.matmul(gpu, self.variant, p, g, x, dummy, dw)
    }

    /// A linear layer's weight and bias gradients, `dw = g^T x` and `db = sum_rows g`: one
    /// dispatch where the vec4 weight-gradient product applies or on GPUs (the bias sums ride on
    /// the product's loads of g), else `backward_weight` and `bias_backward`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_bias(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        x: &Tensor,
        dw: &Tensor,
        db: &Tensor,
        dummy: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        self.backward_weight_bias_with(gpu, self.variant, g, x, dw, db, dummy)
    }

    /// `backward_weight_bias` on an explicit variant.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_bias_with(
        &self,
        gpu: &Gpu,
        variant: GemmVariant,
        g: &Tensor,
        x: &Tensor,
        dw: &Tensor,
        db: &Tensor,
        dummy: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let (m, n) = dims2(g);
        let (m2, k) = dims2(x);
        assert_eq!(
            m, m2,
            "backward_weight_bias: g {:?} vs x {:?}",
            g.shape, x.shape
        );
        assert_eq!(dw.shape, vec![n, k], "backward_weight_bias: dw shape");
        assert_eq!(db.len(), n, "backward_weight_bias: db length");
        let mut p = GemmParams::linear_backward_weight(m, n, k, false);
        if variant == GemmVariant::Tiled {
            p.bias_grad = 1;
            return Ok(vec![self.tiled_db(
                gpu,
                tiled_form(&p),
                p,
                g,
                x,
                dummy,
                dw,
                db,
            )?]);
        }
        if variant == GemmVariant::RegBlock && vec4_form(&p, g, x) == Some(Vec4Form::Tn) {
            p.bias_grad = 1;
            let (kernel, groups) = self.tn_vec4_form(&p);
            return Ok(vec![kernel.bind(
                gpu,
                &p,
                &[g, x, dummy, dw, db],
                None,
                groups,
            )?]);
        }
        Ok(vec![
            self.matmul(gpu, variant, p, g, x, dummy, dw)?,
            self.bias_backward_with(gpu, variant, g, db)?,
        ])
    }

    /// The kernel of a `gemm_tn_vec4` product and its workgroups: the subgroup form where present
    /// (64 rows per workgroup), else the plain one (32).
    fn tn_vec4_form(&self, p: &GemmParams) -> (&Kernel, [u32; 3]) {
        match &self.tn_vec4_sg {
            Some(sg) => (sg, [p.n.div_ceil(64), p.m.div_ceil(64), 1]),
            None => (&self.tn_vec4, [p.n.div_ceil(64), p.m.div_ceil(32), 1]),
        }
    }

    /// Column blocks of the fused weight-gradient product over K input features: the partial
    /// sums per row of dL/dt it writes.
    pub fn dt_blocks(k: usize) -> usize {
        k.div_ceil(8)
    }

    /// The u32 words of `backward_weight_sgd`'s k lists for a weight gradient over `k` samples
    /// of `n` input features: a count per block of 8 features, then a list of up to `k` samples
    /// per block.
    pub fn k_list_words(n: usize, k: usize) -> usize {
        Self::dt_blocks(n) * (k + 1)
    }

    /// A linear layer's weight-gradient product fused with the weight's SGD step (and, for a
    /// masked weight, the mask's backward): one dispatch instead of the product, `mask_backward`
    /// and the weight's share of the optimiser pass; db as `backward_weight_bias`. With
    /// `k_lists` (`k_list_words` long), two dispatches: `tn_k_lists` lists, per block of 8 input
    /// features, the samples with a nonzero there, and `gemm_tn_sgd_listed` sums over those only
    /// (for a mostly-zero input such as MNIST's pixels; the same bits as the full sums); the
    /// second alone where the lists are `KLists::Built` this step. `None`
    /// where the vec4 weight-gradient form does not apply (GPUs; shapes or offsets it cannot
    /// take): the caller records the unfused passes.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_sgd(
        &self,
        gpu: &Gpu,
        g: &Tensor,
        x: &Tensor,
        db: &Tensor,
        target: &SgdTarget<'_>,
        k_lists: Option<KLists<'_>>,
        step: &super::StepRing,
        dummy: &Tensor,
    ) -> Result<Option<Vec<Dispatch>>> {
        let (m, n) = dims2(g);
        let (m2, k) = dims2(x);
        assert_eq!(
            m, m2,
            "backward_weight_sgd: g {:?} vs x {:?}",
            g.shape, x.shape
        );
        assert_eq!(
            target.weight.len(),
            n * k,
            "backward_weight_sgd: weight size"
        );
        assert_eq!(
            target.velocity.len(),
            n * k,
            "backward_weight_sgd: velocity size"
        );
        assert_eq!(db.len(), n, "backward_weight_sgd: db length");
        let mut p = GemmParams::linear_backward_weight(m, n, k, false);
        let aligned = target.weight.offset.is_multiple_of(16)
            && target.velocity.offset.is_multiple_of(16)
            && target.mask.is_none_or(|(t, part)| {
                n.is_multiple_of(4) && t.offset.is_multiple_of(16) && part.offset.is_multiple_of(16)
            });
        if self.variant != GemmVariant::RegBlock
            || vec4_form(&p, g, x) != Some(Vec4Form::Tn)
            || !aligned
        {
            return Ok(None);
        }
        p.bias_grad = 1;
        p.momentum = target.momentum;
        p.weight_decay = target.weight_decay;
        let (t, part) = match target.mask {
            Some((t, part)) => {
                assert_eq!(t.len(), n, "backward_weight_sgd: thresholds");
                assert!(
                    part.len() >= n * Self::dt_blocks(k),
                    "backward_weight_sgd: partial sums"
                );
                p.masked = 1;
                (t, part)
            }
            None => (dummy, dummy),
        };
        let bufs = [g, x, db, target.weight, target.velocity, t, part];
        let Some(lists) = k_lists else {
            let groups = [p.n.div_ceil(64), p.m.div_ceil(64), 1];
            let full = self.tn_sgd_sg.as_ref().unwrap_or(&self.tn_sgd);
            return Ok(Some(vec![full.bind(gpu, &p, &bufs, Some(step), groups)?]));
        };
        let (lists, built) = match lists {
            KLists::Build(l) => (l, false),
            KLists::Built(l) => (l, true),
        };
        assert!(
            lists.len() >= Self::k_list_words(p.n as usize, p.k as usize),
            "backward_weight_sgd: k lists too small"
        );
        let blocks = Self::dt_blocks(p.n as usize) as u32;
        let mut ds = Vec::new();
        if !built {
            ds.push(self.tn_k_lists.bind(
                gpu,
                &p,
                &[x, lists],
                None,
                [blocks.div_ceil(64), 1, 1],
            )?);
        }
        let mut listed_bufs = bufs.to_vec();
        listed_bufs.push(lists);
        let listed = self
            .tn_sgd_listed_sg
            .as_ref()
            .unwrap_or(&self.tn_sgd_listed);
        ds.push(listed.bind(
            gpu,
            &p,
            &listed_bufs,
            Some(step),
            [p.m.div_ceil(64), blocks, 1],
        )?);
        Ok(Some(ds))
    }

    /// `db[n] = sum_m g[m][n]`: g (M x N), db (N), on the device's variant.
    pub fn bias_backward(&self, gpu: &Gpu, g: &Tensor, db: &Tensor) -> Result<Dispatch> {
        self.bias_backward_with(gpu, self.variant, g, db)
    }

    /// `bias_backward` on an explicit variant: one invocation per column (register-block
    /// devices) or 16 row-strided partial sums per column added in order (`Tiled`, GPUs).
    pub fn bias_backward_with(
        &self,
        gpu: &Gpu,
        variant: GemmVariant,
        g: &Tensor,
        db: &Tensor,
    ) -> Result<Dispatch> {
        let (m, n) = dims2(g);
        assert_eq!(db.len(), n, "bias_backward: db length");
        let p = GemmParams {
            m: m as u32,
            n: n as u32,
            ..Default::default()
        };
        match variant {
            GemmVariant::RegBlock => {
                self.bias_backward_k
                    .bind(gpu, &p, &[g, db], None, [(n as u32).div_ceil(64), 1, 1])
            }
            GemmVariant::Tiled => self.bias_backward_split_k.bind(
                gpu,
                &p,
                &[g, db],
                None,
                [(n as u32).div_ceil(16), 1, 1],
            ),
        }
    }
}
