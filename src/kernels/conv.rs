//! `shaders/conv.wgsl`: 2-D convolution (NCHW) as implicit GEMMs, its input, weight and bias
//! gradients; a CPU (register-block) and a GPU (workgroup-memory tiles, three tile forms) variant
//! of each product, on CPU adapters a faster path through a patch matrix the layer owns (im2col +
//! vec4 products), and on GPUs the input gradient through a patch matrix where most implicit taps
//! would miss the output and a weight gradient split over runs of positions.

use super::sparse::EllLists;
use super::{grid_1d, Access, Dispatch, Kernel, KernelFactory};
use crate::gpu::{AdapterClass, Gpu, Result, Tensor};

pub const SOURCE: &str = include_str!("../../shaders/conv.wgsl");

/// A convolution: input (batch, c_in, h, w), weight (c_out, c_in, kh, kw), zero padding `pad` on
/// every side, `stride` along both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    /// `(h + 2 pad - kh) / stride + 1` (floor).
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// `(w + 2 pad - kw) / stride + 1` (floor).
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// `c_in kh kw`: the weight viewed as (c_out, cols), one row per filter.
    pub fn cols(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    /// Multiply-adds of one product (forward, input or weight gradient): batch oh ow c_out cols.
    pub fn macs(&self) -> usize {
        self.batch * self.out_h() * self.out_w() * self.c_out * self.cols()
    }

    /// Elements of the patch matrix of the cols path: `cols() * batch * oh * ow`.
    pub fn cols_len(&self) -> usize {
        self.cols() * self.batch * self.out_h() * self.out_w()
    }

    fn check(&self) {
        assert!(
            self.batch > 0 && self.c_in > 0 && self.c_out > 0 && self.kh > 0 && self.kw > 0,
            "conv {self:?}: empty dimension"
        );
        assert!(self.stride > 0, "conv {self:?}: stride 0");
        assert!(
            self.h + 2 * self.pad >= self.kh && self.w + 2 * self.pad >= self.kw,
            "conv {self:?}: kernel larger than the padded input"
        );
    }

    fn params(&self, has_bias: bool) -> ConvParams {
        self.check();
        ConvParams {
            batch: self.batch as u32,
            c_in: self.c_in as u32,
            h: self.h as u32,
            w: self.w as u32,
            c_out: self.c_out as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            oh: self.out_h() as u32,
            ow: self.out_w() as u32,
            has_bias: has_bias as u32,
            run: 0,
            splits: 0,
        }
    }
}

/// Keep in sync with `ConvParams` in shaders/conv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    pub batch: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    pub has_bias: u32,
    /// `conv_backward_weight_tiled` and `conv_weight_parts_sum` only: positions per split and
    /// the number of splits (`weight_splits`); 0 elsewhere.
    pub run: u32,
    pub splits: u32,
}

/// Which kernels `forward`/`backward_*` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvVariant {
    /// Several outputs per invocation in registers, no workgroup memory: CPU adapters (lavapipe).
    RegBlock,
    /// 16x16 workgroup-memory tiles, one output per invocation: GPUs. The input gradient goes
    /// through a patch matrix where most implicit taps would miss the output (`input_via_cols`),
    /// the weight gradient is a split tile product over many weights (`weight_grad_tiled`) and a
    /// workgroup-per-element tree reduction otherwise.
    Tiled,
}

impl ConvVariant {
    pub const ALL: [ConvVariant; 2] = [ConvVariant::RegBlock, ConvVariant::Tiled];

    pub fn for_class(class: AdapterClass) -> ConvVariant {
        match class {
            AdapterClass::Cpu => ConvVariant::RegBlock,
            AdapterClass::Gpu => ConvVariant::Tiled,
        }
    }
}

pub struct Conv {
    pub forward_regblock: Kernel,
    /// The GPU tile kernels, indexed by `TileForm`.
    pub forward_tiled: [Kernel; 3],
    pub backward_input_regblock: Kernel,
    pub backward_input_tiled: [Kernel; 3],
    pub backward_weight_regblock: Kernel,
    pub backward_weight_split: Kernel,
    pub backward_weight_split_wide: Kernel,
    pub bias_backward_k: Kernel,
    pub bias_backward_wide_k: Kernel,
    pub im2col: Kernel,
    pub forward_cols_k: Kernel,
    pub backward_weight_cols_k: Kernel,
    pub backward_input_cols_k: Kernel,
    /// The subgroup forms of the three cols products above (run instead where present).
    pub forward_cols_sg: Option<Kernel>,
    pub backward_weight_cols_sg: Option<Kernel>,
    pub backward_input_cols_sg: Option<Kernel>,
    pub col2im: Kernel,
    pub backward_input_cols_tiled_k: [Kernel; 3],
    pub backward_weight_tiled_k: [Kernel; 3],
    pub weight_parts_sum: Kernel,
    pub forward_cols_listed_k: Kernel,
    pub backward_input_cols_listed_k: Kernel,
    /// The variant the plain wrappers use on this device.
    pub variant: ConvVariant,
    /// Bound as the split weight gradients' db when they write none.
    no_db: Tensor,
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const FORWARD: &[(u32, Access)] = &[(1, R), (2, R), (3, R), (4, RW)];
const BACKWARD_INPUT: &[(u32, Access)] = &[(5, R), (2, R), (6, RW)];
const BACKWARD_WEIGHT: &[(u32, Access)] = &[(5, R), (1, R), (7, RW)];
/// The GPU split weight gradients: BACKWARD_WEIGHT and the bias gradient they may write.
const BACKWARD_WEIGHT_SPLIT: &[(u32, Access)] = &[(5, R), (1, R), (7, RW), (8, RW)];
const IM2COL: &[(u32, Access)] = &[(1, R), (9, RW)];
const FORWARD_COLS: &[(u32, Access)] = &[(11, R), (2, R), (3, R), (4, RW)];
const BACKWARD_WEIGHT_COLS: &[(u32, Access)] = &[(12, R), (11, R), (7, RW)];
const BACKWARD_INPUT_COLS: &[(u32, Access)] = &[(12, R), (2, R), (9, RW)];
const COL2IM: &[(u32, Access)] = &[(10, R), (6, RW)];
// The tile kernels bind x, weight and dy, the operands of every tile product (shaders/conv.wgsl):
// the last binding of each is an operand its product does not read, bound to one it does.
const FORWARD_TILED: &[(u32, Access)] = &[(1, R), (2, R), (3, R), (4, RW), (5, R)];
const BACKWARD_INPUT_TILED: &[(u32, Access)] = &[(5, R), (2, R), (6, RW), (1, R)];
const BACKWARD_INPUT_COLS_TILED: &[(u32, Access)] = &[(5, R), (2, R), (9, RW), (1, R)];
const BACKWARD_WEIGHT_TILED: &[(u32, Access)] = &[(5, R), (1, R), (17, RW), (2, R)];
const WEIGHT_PARTS_SUM: &[(u32, Access)] = &[(18, R), (7, RW)];
const FORWARD_COLS_LISTED: &[(u32, Access)] =
    &[(13, R), (14, R), (15, R), (11, R), (3, R), (4, RW)];
const BACKWARD_INPUT_COLS_LISTED: &[(u32, Access)] = &[(13, R), (14, R), (15, R), (12, R), (9, RW)];

/// vec4s of columns per invocation of the listed cols products (`LQ` in the shader).
const LISTED_Q: usize = 4;

/// Filters (or patch rows) per invocation of the cols products (`CB` in the shader).
const CB: usize = 8;

/// Lists of P for `s`: `c_out x cols`, P row-major (a conv's P is not transposed).
fn assert_lists(lists: &EllLists, s: &ConvShape) {
    assert!(
        lists.rows == s.c_out && lists.cols == s.cols() && !lists.p_transposed,
        "conv lists {}x{} (transposed {}) for {s:?}",
        lists.rows,
        lists.cols,
        lists.p_transposed
    );
}

fn assert_len(t: &Tensor, n: usize, what: &str, s: &ConvShape) {
    assert_eq!(
        t.len(),
        n,
        "conv {what} ({}): {} elements for {s:?}",
        t.label,
        t.len()
    );
}

/// The cols path's conditions: four consecutive output positions in one image (oh ow % 4 == 0)
/// and a patch matrix within one binding.
fn cols_fit(gpu: &Gpu, s: &ConvShape) -> bool {
    (s.out_h() * s.out_w()).is_multiple_of(4) && (4 * s.cols_len()) as u64 <= gpu.max_binding()
}

fn assert_cols(s: &ConvShape, gpu: &Gpu) {
    assert!(
        cols_fit(gpu, s),
        "conv {s:?}: the cols path needs oh ow % 4 == 0 and a patch matrix within one binding"
    );
}

/// The sizes a forward's tensors must have.
fn check_forward(s: &ConvShape, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, y: &Tensor) {
    assert_len(x, s.batch * s.c_in * s.h * s.w, "x", s);
    assert_len(weight, s.c_out * s.cols(), "weight", s);
    assert_len(y, s.batch * s.c_out * s.out_h() * s.out_w(), "y", s);
    if let Some(b) = bias {
        assert_len(b, s.c_out, "bias", s);
    }
}

/// The sizes an input gradient's tensors must have.
fn check_input_grad(s: &ConvShape, dy: &Tensor, weight: &Tensor, dx: &Tensor) {
    assert_len(dy, s.batch * s.c_out * s.out_h() * s.out_w(), "dy", s);
    assert_len(weight, s.c_out * s.cols(), "weight", s);
    assert_len(dx, s.batch * s.c_in * s.h * s.w, "dx", s);
}

/// The sizes a weight gradient's tensors must have.
fn check_weight_grad(s: &ConvShape, dy: &Tensor, x: &Tensor, d_weight: &Tensor) {
    assert_len(dy, s.batch * s.c_out * s.out_h() * s.out_w(), "dy", s);
    assert_len(x, s.batch * s.c_in * s.h * s.w, "x", s);
    assert_len(d_weight, s.c_out * s.cols(), "d_weight", s);
}

/// Whether a GPU's weight and bias gradients sum each element with 256 invocations instead of
/// 64: sums over at least 8,192 positions (batch x output positions; LeNet-5's conv1 at batch 64:
/// 36,864, 576 per invocation at 64). A function of the shape alone: same sums, same order.
pub fn wide_sums(s: &ConvShape) -> bool {
    s.batch * s.out_h() * s.out_w() >= 8192
}

/// Whether a GPU takes the input gradient through a patch matrix (`backward_input_cols_tiled`):
/// stride 1, at most half of the input's positions have an output (so more than half of the
/// implicit form's taps would read nothing: LeNet-5's conv2, 64 of 144) and the patch matrix fits
/// one binding. Padded 3x3 convs keep the implicit form (almost every tap counts, and no
/// patch-matrix memory).
pub fn input_via_cols(gpu: &Gpu, s: &ConvShape) -> bool {
    s.stride == 1
        && 2 * s.out_h() * s.out_w() <= s.h * s.w
        && (4 * s.cols_len()) as u64 <= gpu.max_binding()
}

/// Whether a GPU's weight gradient is the split tile product (`backward_weight_tiled`) rather
/// than a workgroup per element: layers with at least 4,096 weights (LeNet-5's conv2: 25,000;
/// its conv1, 500 weights over 36,864 positions each, keeps the reduction).
pub fn weight_grad_tiled(s: &ConvShape) -> bool {
    s.c_out * s.cols() >= 4096
}

/// Positions per split of `backward_weight_tiled` and the number of splits for `s`: enough
/// workgroups for a large GPU (at least 1,024 with the 16x16 tiles) and runs of at least 256
/// positions, a multiple of 32 (the staged slice). A function of the shape alone, so a
/// gradient always sums in the same order.
pub fn weight_splits(s: &ConvShape) -> (usize, usize) {
    let np = s.batch * s.out_h() * s.out_w();
    let tiles = s.c_out.div_ceil(16) * s.cols().div_ceil(16);
    let want = 1024usize.div_ceil(tiles).clamp(1, 64);
    let run = np.div_ceil(want).max(256).next_multiple_of(32);
    (run, np.div_ceil(run))
}

/// The tile form of a GPU tile product (shaders/conv.wgsl): 16x16 outputs per workgroup, one per
/// invocation, 32x32, 2x2 per invocation, or 64x64, 4x4 per invocation. All add each output's
/// terms in the same order: the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileForm {
    One,
    TwoByTwo,
    FourByFour,
}

/// 32x32 tiles (times splits) from which a product takes the 2x2 form. Measured on an H200
/// (`dst bench`'s conv table, BENCHMARKS.md): at 256 (LeNet-5's conv2 forward; its split weight
/// gradient, 32 tiles x 8 runs) the 2x2 form ran 1.7-2.0x as fast as the 16x16 one; at 64
/// (conv1's split weight gradient) 0.88-0.89x.
pub const TILES_2X2: usize = 256;

/// 64x64 tiles (times splits) from which a product of at least 64 rows takes the 4x4 form (half
/// the 2x2 form's staged loads and index arithmetic per output, a quarter as many workgroups).
/// Measured on an H200 (`dst bench`'s conv table, BENCHMARKS.md, nineteenth round): the
/// VGG-like forward (64 x 16,384 outputs, 256 tiles) ran at 7.7 against 5.9 TFLOP/s, its input
/// gradient 6.4 against 4.4, LeNet-5's conv2 input gradient through the patch matrix (500 x
/// 4,096) 5.0 against 4.1; with fewer rows than a tile LeNet-5's conv1 forward (20 x 36,864,
/// 576 tiles) ran at 1.5 against 1.8, and with fewer tiles its conv2 forward (64 tiles) 1.9
/// against 3.4.
pub const TILES_4X4: usize = 256;

impl TileForm {
    pub const ALL: [TileForm; 3] = [TileForm::One, TileForm::TwoByTwo, TileForm::FourByFour];

    /// The form for `rows x cols` outputs computed over `splits` runs: 4x4 from `TILES_4X4`
    /// 64x64 tiles on where `rows` fill at least one, else 2x2 from `TILES_2X2` 32x32 tiles on.
    /// A function of the shape alone.
    pub fn for_shape(rows: usize, cols: usize, splits: usize) -> TileForm {
        let tiles = |t: usize| rows.div_ceil(t) * cols.div_ceil(t) * splits;
        if rows >= 64 && tiles(64) >= TILES_4X4 {
            TileForm::FourByFour
        } else if tiles(32) >= TILES_2X2 {
            TileForm::TwoByTwo
        } else {
            TileForm::One
        }
    }

    /// Outputs per workgroup along each axis.
    pub fn tile(self) -> usize {
        match self {
            TileForm::One => 16,
            TileForm::TwoByTwo => 32,
            TileForm::FourByFour => 64,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `16x16`, `2x2` or `4x4`, as in tables.
    pub fn name(self) -> &'static str {
        match self {
            TileForm::One => "16x16",
            TileForm::TwoByTwo => "2x2",
            TileForm::FourByFour => "4x4",
        }
    }

    /// The suffix of the form's entry points (`name`, `name_2x2`, `name_4x4`).
    pub fn suffix(self) -> &'static str {
        match self {
            TileForm::One => "",
            TileForm::TwoByTwo => "_2x2",
            TileForm::FourByFour => "_4x4",
        }
    }
}

/// The tile forms of entry point `name`, indexed by `TileForm`.
fn tile_kernels(
    f: &KernelFactory<'_>,
    name: &str,
    bindings: &[(u32, Access)],
) -> Result<[Kernel; 3]> {
    let k = |form: TileForm| f.kernel(&format!("{name}{}", form.suffix()), bindings, false);
    Ok([
        k(TileForm::One)?,
        k(TileForm::TwoByTwo)?,
        k(TileForm::FourByFour)?,
    ])
}

/// Workgroups of a tile kernel: one per tile of `form`, folded into y past the axis limit.
fn form_groups(form: TileForm, rows: usize, cols: usize, splits: usize) -> [u32; 3] {
    let t = form.tile();
    grid_1d((rows.div_ceil(t) * cols.div_ceil(t) * splits) as u32)
}

impl Conv {
    pub fn new(f: &KernelFactory<'_>, class: AdapterClass) -> Result<Conv> {
        Ok(Conv {
            forward_regblock: f.kernel("conv_forward_regblock", FORWARD, false)?,
            forward_tiled: tile_kernels(f, "conv_forward_tiled", FORWARD_TILED)?,
            backward_input_regblock: f.kernel(
                "conv_backward_input_regblock",
                BACKWARD_INPUT,
                false,
            )?,
            backward_input_tiled: tile_kernels(
                f,
                "conv_backward_input_tiled",
                BACKWARD_INPUT_TILED,
            )?,
            backward_weight_regblock: f.kernel(
                "conv_backward_weight_regblock",
                BACKWARD_WEIGHT,
                false,
            )?,
            backward_weight_split: f.kernel(
                "conv_backward_weight_split",
                BACKWARD_WEIGHT_SPLIT,
                false,
            )?,
            backward_weight_split_wide: f.kernel(
                "conv_backward_weight_split_wide",
                BACKWARD_WEIGHT_SPLIT,
                false,
            )?,
            bias_backward_k: f.kernel("conv_bias_backward", &[(5, R), (8, RW)], false)?,
            bias_backward_wide_k: f.kernel("conv_bias_backward_wide", &[(5, R), (8, RW)], false)?,
            im2col: f.kernel("conv_im2col", IM2COL, false)?,
            forward_cols_k: f.kernel("conv_forward_cols", FORWARD_COLS, false)?,
            backward_weight_cols_k: f.kernel(
                "conv_backward_weight_cols",
                BACKWARD_WEIGHT_COLS,
                false,
            )?,
            backward_input_cols_k: f.kernel(
                "conv_backward_input_cols",
                BACKWARD_INPUT_COLS,
                false,
            )?,
            forward_cols_sg: f.subgroup_kernel("conv_forward_cols_sg", FORWARD_COLS, false)?,
            backward_weight_cols_sg: f.subgroup_kernel(
                "conv_backward_weight_cols_sg",
                BACKWARD_WEIGHT_COLS,
                false,
            )?,
            backward_input_cols_sg: f.subgroup_kernel(
                "conv_backward_input_cols_sg",
                BACKWARD_INPUT_COLS,
                false,
            )?,
            col2im: f.kernel("conv_col2im", COL2IM, false)?,
            backward_input_cols_tiled_k: tile_kernels(
                f,
                "conv_backward_input_cols_tiled",
                BACKWARD_INPUT_COLS_TILED,
            )?,
            backward_weight_tiled_k: tile_kernels(
                f,
                "conv_backward_weight_tiled",
                BACKWARD_WEIGHT_TILED,
            )?,
            weight_parts_sum: f.kernel("conv_weight_parts_sum", WEIGHT_PARTS_SUM, false)?,
            forward_cols_listed_k: f.kernel(
                "conv_forward_cols_listed",
                FORWARD_COLS_LISTED,
                false,
            )?,
            backward_input_cols_listed_k: f.kernel(
                "conv_backward_input_cols_listed",
                BACKWARD_INPUT_COLS_LISTED,
                false,
            )?,
            variant: ConvVariant::for_class(class),
            no_db: Tensor::zeros(f.gpu, "conv.no_db", &[4])?,
        })
    }

    /// `y (batch, c_out, oh, ow) = conv(x (batch, c_in, h, w), weight (c_out, c_in, kh, kw))
    /// + bias[c_out]` (bias optional: None binds `dummy`); writes every y.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        self.forward_with(self.variant, gpu, s, x, weight, bias, y, dummy)
    }

    /// `forward` on an explicit variant.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        variant: ConvVariant,
        gpu: &Gpu,
        s: &ConvShape,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let (oh, ow) = (s.out_h(), s.out_w());
        match variant {
            ConvVariant::RegBlock => {
                check_forward(s, x, weight, bias, y);
                // Workgroups: one channel block x 64 blocks of 8 columns of an output row.
                let groups = (s.batch * oh * ow.div_ceil(8)).div_ceil(64) * s.c_out.div_ceil(4);
                self.forward_regblock.bind(
                    gpu,
                    &s.params(bias.is_some()),
                    &[x, weight, bias.unwrap_or(dummy), y],
                    None,
                    grid_1d(groups as u32),
                )
            }
            ConvVariant::Tiled => {
                let form = TileForm::for_shape(s.c_out, s.batch * oh * ow, 1);
                self.forward_tiled_with(form, gpu, s, x, weight, bias, y, dummy)
            }
        }
    }

    /// `dx (batch, c_in, h, w)`: the gradient to the input given `dy (batch, c_out, oh, ow)`;
    /// writes every dx.
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        self.backward_input_with(self.variant, gpu, s, dy, weight, dx)
    }

    /// `backward_input` on an explicit variant.
    pub fn backward_input_with(
        &self,
        variant: ConvVariant,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        match variant {
            ConvVariant::RegBlock => {
                check_input_grad(s, dy, weight, dx);
                // Workgroups: one channel block x 64 blocks of 8 columns of an input row.
                let groups = (s.batch * s.h * s.w.div_ceil(8)).div_ceil(64) * s.c_in.div_ceil(4);
                self.backward_input_regblock.bind(
                    gpu,
                    &s.params(false),
                    &[dy, weight, dx],
                    None,
                    grid_1d(groups as u32),
                )
            }
            ConvVariant::Tiled => {
                let form = TileForm::for_shape(s.c_in, s.batch * s.h * s.w, 1);
                self.backward_input_tiled_with(form, gpu, s, dy, weight, dx)
            }
        }
    }

    /// The GPU forward on an explicit tile form (`forward` picks with `TileForm::for_shape`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_tiled_with(
        &self,
        form: TileForm,
        gpu: &Gpu,
        s: &ConvShape,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(bias.is_some());
        check_forward(s, x, weight, bias, y);
        let positions = s.batch * s.out_h() * s.out_w();
        self.forward_tiled[form.index()].bind(
            gpu,
            &p,
            &[x, weight, bias.unwrap_or(dummy), y, x],
            None,
            form_groups(form, s.c_out, positions, 1),
        )
    }

    /// The GPU implicit input gradient on an explicit tile form.
    pub fn backward_input_tiled_with(
        &self,
        form: TileForm,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        check_input_grad(s, dy, weight, dx);
        self.backward_input_tiled[form.index()].bind(
            gpu,
            &p,
            &[dy, weight, dx, dy],
            None,
            form_groups(form, s.c_in, s.batch * s.h * s.w, 1),
        )
    }

    /// `d_weight (c_out, c_in, kh, kw)` = sum over batch and output positions of dy * x-patch;
    /// writes (not accumulates) every element.
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        d_weight: &Tensor,
    ) -> Result<Dispatch> {
        self.backward_weight_with(self.variant, gpu, s, dy, x, d_weight)
    }

    /// `backward_weight` on an explicit variant (`Tiled`: the workgroup-reduction kernel).
    pub fn backward_weight_with(
        &self,
        variant: ConvVariant,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        d_weight: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        check_weight_grad(s, dy, x, d_weight);
        let buffers = [dy, x, d_weight];
        match variant {
            ConvVariant::RegBlock => {
                // Workgroups: one block of 4 filters x 32 blocks of 4 columns.
                let groups = s.cols().div_ceil(4).div_ceil(32) * s.c_out.div_ceil(4);
                self.backward_weight_regblock
                    .bind(gpu, &p, &buffers, None, grid_1d(groups as u32))
            }
            ConvVariant::Tiled => {
                self.backward_weight_reduction(gpu, wide_sums(s), s, dy, x, d_weight, None)
            }
        }
    }

    /// `backward_weight`, and `d_bias` (the bias gradient, `bias_backward`'s value) in the same
    /// dispatch where the device's form can write it (GPUs: `backward_weight_reduction`). Returns
    /// the dispatch and whether it writes `d_bias` (else the caller records `bias_backward`).
    pub fn backward_weight_bias(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        d_weight: &Tensor,
        d_bias: &Tensor,
    ) -> Result<(Dispatch, bool)> {
        Ok(match self.variant {
            ConvVariant::RegBlock => (self.backward_weight(gpu, s, dy, x, d_weight)?, false),
            ConvVariant::Tiled => (
                self.backward_weight_reduction(
                    gpu,
                    wide_sums(s),
                    s,
                    dy,
                    x,
                    d_weight,
                    Some(d_bias),
                )?,
                true,
            ),
        })
    }

    /// The GPU weight gradient on an explicit form: a workgroup per weight element, 256
    /// invocations wide (`wide`) or 64. `backward_weight` picks with `wide_sums`. With `d_bias`,
    /// the workgroup of each channel's first weight element also sums the dy it reads into the
    /// channel's bias gradient (the same positions in the same order, then its own tree sum).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_reduction(
        &self,
        gpu: &Gpu,
        wide: bool,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        d_weight: &Tensor,
        d_bias: Option<&Tensor>,
    ) -> Result<Dispatch> {
        check_weight_grad(s, dy, x, d_weight);
        if let Some(db) = d_bias {
            assert_len(db, s.c_out, "d_bias", s);
        }
        let k = if wide {
            &self.backward_weight_split_wide
        } else {
            &self.backward_weight_split
        };
        k.bind(
            gpu,
            &s.params(d_bias.is_some()),
            &[dy, x, d_weight, d_bias.unwrap_or(&self.no_db)],
            None,
            grid_1d((s.c_out * s.cols()) as u32),
        )
    }

    /// `d_bias[c_out]` = sum over batch and positions of dy; writes.
    pub fn bias_backward(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        d_bias: &Tensor,
    ) -> Result<Dispatch> {
        let wide = self.variant == ConvVariant::Tiled && wide_sums(s);
        self.bias_backward_with(gpu, wide, s, dy, d_bias)
    }

    /// `bias_backward` on an explicit form: a workgroup per channel, 256 invocations wide
    /// (`wide`: GPUs, for long sums) or 64 (every adapter otherwise).
    pub fn bias_backward_with(
        &self,
        gpu: &Gpu,
        wide: bool,
        s: &ConvShape,
        dy: &Tensor,
        d_bias: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_len(dy, s.batch * s.c_out * s.out_h() * s.out_w(), "dy", s);
        assert_len(d_bias, s.c_out, "d_bias", s);
        let k = if wide {
            &self.bias_backward_wide_k
        } else {
            &self.bias_backward_k
        };
        k.bind(gpu, &p, &[dy, d_bias], None, grid_1d(s.c_out as u32))
    }

    /// Whether a layer on this device takes `backward_weight_tiled` for `s` (GPUs, many weights).
    pub fn use_weight_tiled(&self, s: &ConvShape) -> bool {
        self.variant == ConvVariant::Tiled && weight_grad_tiled(s)
    }

    /// Whether a layer on this device takes `backward_input_cols_tiled` for `s` (GPUs, convs
    /// whose implicit input gradient would mostly read nothing).
    pub fn use_input_cols_tiled(&self, gpu: &Gpu, s: &ConvShape) -> bool {
        self.variant == ConvVariant::Tiled && input_via_cols(gpu, s)
    }

    /// Whether the plain-variant layer should take the patch-matrix path for `s` on this device:
    /// CPU adapters (the register-block variant), oh ow % 4 == 0, and a patch matrix that fits one
    /// binding.
    pub fn use_cols(&self, gpu: &Gpu, s: &ConvShape) -> bool {
        self.variant == ConvVariant::RegBlock && cols_fit(gpu, s)
    }

    /// `y = conv(x, weight) + bias` through the patch matrix `cols` (`s.cols_len()` elements, the
    /// caller's scratch, filled here): im2col, then the product. Writes every y and every cols.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_cols(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        cols: &Tensor,
        dummy: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        let p = s.params(bias.is_some());
        let (oh, ow) = (s.out_h(), s.out_w());
        assert_cols(s, gpu);
        check_forward(s, x, weight, bias, y);
        assert_len(cols, s.cols_len(), "cols", s);
        let rows = s.cols() * s.batch * oh;
        let fill =
            self.im2col
                .bind(gpu, &p, &[x, cols], None, grid_1d(rows.div_ceil(64) as u32))?;
        // Workgroups: one block of 8 filters x 64 blocks of 8 columns.
        let groups = (s.batch * oh * ow / 4).div_ceil(2).div_ceil(64) * s.c_out.div_ceil(CB);
        let prod = self
            .forward_cols_sg
            .as_ref()
            .unwrap_or(&self.forward_cols_k);
        let prod = prod.bind(
            gpu,
            &p,
            &[cols, weight, bias.unwrap_or(dummy), y],
            None,
            grid_1d(groups as u32),
        )?;
        Ok([fill, prod])
    }

    /// `backward_weight` from the patch matrix `cols` the forward filled (same x); writes every
    /// d_weight element.
    pub fn backward_weight_cols(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        cols: &Tensor,
        d_weight: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_cols(s, gpu);
        assert_len(dy, s.batch * s.c_out * s.out_h() * s.out_w(), "dy", s);
        assert_len(cols, s.cols_len(), "cols", s);
        assert_len(d_weight, s.c_out * s.cols(), "d_weight", s);
        // Workgroups: one block of 8 filters x 32 blocks of 4 patch rows.
        let groups = s.cols().div_ceil(4).div_ceil(32) * s.c_out.div_ceil(CB);
        let k = self.backward_weight_cols_sg.as_ref();
        k.unwrap_or(&self.backward_weight_cols_k).bind(
            gpu,
            &p,
            &[dy, cols, d_weight],
            None,
            grid_1d(groups as u32),
        )
    }

    /// `backward_input` through the patch matrix: `cols` (overwritten, the caller's scratch) =
    /// W^T dy, then dx gathered from it (col2im). Writes every dx.
    pub fn backward_input_cols(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        cols: &Tensor,
        dx: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        let p = s.params(false);
        assert_cols(s, gpu);
        check_input_grad(s, dy, weight, dx);
        assert_len(cols, s.cols_len(), "cols", s);
        // Workgroups: one block of 8 patch rows x 64 blocks of 8 columns.
        let groups = (s.batch * s.out_h() * s.out_w() / 4)
            .div_ceil(2)
            .div_ceil(64)
            * s.cols().div_ceil(CB);
        let prod = self.backward_input_cols_sg.as_ref();
        let prod = prod.unwrap_or(&self.backward_input_cols_k).bind(
            gpu,
            &p,
            &[dy, weight, cols],
            None,
            grid_1d(groups as u32),
        )?;
        Ok([prod, self.gather_dx(gpu, s, cols, dx)?])
    }

    /// `forward_cols`'s product from the row lists of P (`lists`: `c_out x cols`, built by
    /// `Sparse::ell_build` from the P the conv uses) over the patch matrix `cols` the forward's
    /// im2col filled: the same y as the dense product (its products with zero left out). Writes
    /// every y.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_cols_listed(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        lists: &EllLists,
        cols: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        dummy: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(bias.is_some());
        assert_cols(s, gpu);
        assert_lists(lists, s);
        assert_len(cols, s.cols_len(), "cols", s);
        assert_len(y, s.batch * s.c_out * s.out_h() * s.out_w(), "y", s);
        if let Some(b) = bias {
            assert_len(b, s.c_out, "bias", s);
        }
        // Workgroups: one filter x 64 blocks of 4 LISTED_Q columns.
        let groups = Self::listed_blocks(s) * s.c_out;
        self.forward_cols_listed_k.bind(
            gpu,
            &p,
            &[
                &lists.idx,
                &lists.val,
                &lists.cnt,
                cols,
                bias.unwrap_or(dummy),
                y,
            ],
            None,
            grid_1d(groups as u32),
        )
    }

    /// `backward_input_cols`'s product from the column lists of P (`lists` as for
    /// `forward_cols_listed`): `cols` (overwritten) = P^T dy, every element, the same values as
    /// the dense product; `col2im` then gathers dx from it as on the dense path.
    pub fn backward_input_cols_listed(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        lists: &EllLists,
        dy: &Tensor,
        cols: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_cols(s, gpu);
        assert_lists(lists, s);
        assert_len(dy, s.batch * s.c_out * s.out_h() * s.out_w(), "dy", s);
        assert_len(cols, s.cols_len(), "cols", s);
        // Workgroups: one patch row x 64 blocks of 4 LISTED_Q columns.
        let groups = Self::listed_blocks(s) * s.cols();
        self.backward_input_cols_listed_k.bind(
            gpu,
            &p,
            &[&lists.idx, &lists.val, &lists.cnt, dy, cols],
            None,
            grid_1d(groups as u32),
        )
    }

    /// Workgroups of 64 column blocks (of `4 LISTED_Q` columns) a list of the listed products
    /// takes.
    fn listed_blocks(s: &ConvShape) -> usize {
        (s.batch * s.out_h() * s.out_w() / 4)
            .div_ceil(LISTED_Q)
            .div_ceil(64)
    }

    /// `backward_input` through a patch matrix on GPUs: `dcols` (`s.cols_len()` elements, the
    /// caller's scratch, overwritten) = W^T dy by tiles, then dx gathered from it (col2im). The
    /// same sums as `backward_input_cols`. Writes every dx.
    pub fn backward_input_cols_tiled(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        dcols: &Tensor,
        dx: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        let form = TileForm::for_shape(s.cols(), s.batch * s.out_h() * s.out_w(), 1);
        self.backward_input_cols_tiled_with(form, gpu, s, dy, weight, dcols, dx)
    }

    /// `backward_input_cols_tiled` on an explicit tile form.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input_cols_tiled_with(
        &self,
        form: TileForm,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        weight: &Tensor,
        dcols: &Tensor,
        dx: &Tensor,
    ) -> Result<[Dispatch; 2]> {
        let p = s.params(false);
        check_input_grad(s, dy, weight, dx);
        assert_len(dcols, s.cols_len(), "dcols", s);
        let positions = s.batch * s.out_h() * s.out_w();
        let prod = self.backward_input_cols_tiled_k[form.index()].bind(
            gpu,
            &p,
            &[dy, weight, dcols, dy],
            None,
            form_groups(form, s.cols(), positions, 1),
        )?;
        Ok([prod, self.gather_dx(gpu, s, dcols, dx)?])
    }

    /// Elements of the partial-sum scratch `backward_weight_tiled` needs for `s`: none for one
    /// run (the product then writes d_weight itself).
    pub fn weight_parts_len(s: &ConvShape) -> usize {
        match weight_splits(s).1 {
            1 => 0,
            splits => splits * s.c_out * s.cols(),
        }
    }

    /// The weight gradient as a split tile product (GPUs): the sums over each run of positions
    /// (`weight_splits`) into `parts` (`weight_parts_len` elements, the caller's scratch; None
    /// when that is 0), then their sum in order into `d_weight`; over one run, the product
    /// straight into `d_weight` (one dispatch). Writes every d_weight element.
    pub fn backward_weight_tiled(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        parts: Option<&Tensor>,
        d_weight: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        let form = TileForm::for_shape(s.c_out, s.cols(), weight_splits(s).1);
        self.backward_weight_tiled_with(form, gpu, s, dy, x, parts, d_weight)
    }

    /// `backward_weight_tiled` on an explicit tile form.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_tiled_with(
        &self,
        form: TileForm,
        gpu: &Gpu,
        s: &ConvShape,
        dy: &Tensor,
        x: &Tensor,
        parts: Option<&Tensor>,
        d_weight: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        check_weight_grad(s, dy, x, d_weight);
        let (run, splits) = weight_splits(s);
        let p = ConvParams {
            run: run as u32,
            splits: splits as u32,
            ..s.params(false)
        };
        let groups = form_groups(form, s.c_out, s.cols(), splits);
        let k = &self.backward_weight_tiled_k[form.index()];
        let Some(parts) = parts else {
            assert_eq!(
                splits, 1,
                "conv {s:?}: {splits} runs need a partial-sum scratch"
            );
            return Ok(vec![k.bind(
                gpu,
                &p,
                &[dy, x, d_weight, x],
                None,
                groups,
            )?]);
        };
        assert!(
            splits > 1,
            "conv {s:?}: one run needs no partial-sum scratch"
        );
        assert_len(parts, Self::weight_parts_len(s), "parts", s);
        let prod = k.bind(gpu, &p, &[dy, x, parts, x], None, groups)?;
        let n = s.c_out * s.cols();
        let sum = self.weight_parts_sum.bind(
            gpu,
            &p,
            &[parts, d_weight],
            None,
            grid_1d(n.div_ceil(64) as u32),
        )?;
        Ok(vec![prod, sum])
    }

    /// The col2im half of `backward_input_cols` alone: dx from the dcols in `cols`.
    pub fn gather_dx(
        &self,
        gpu: &Gpu,
        s: &ConvShape,
        cols: &Tensor,
        dx: &Tensor,
    ) -> Result<Dispatch> {
        let p = s.params(false);
        assert_len(cols, s.cols_len(), "cols", s);
        assert_len(dx, s.batch * s.c_in * s.h * s.w, "dx", s);
        let n = s.batch * s.c_in * s.h * s.w;
        self.col2im
            .bind(gpu, &p, &[cols, dx], None, grid_1d(n.div_ceil(64) as u32))
    }
}
