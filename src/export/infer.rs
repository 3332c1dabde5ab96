//! Inference from an export on the GPU. Fully connected layers (`fc_route`): on GPUs from their
//! CSR form through `csr_linear` (shaders/sparse.wgsl), activations feature-major between sparse
//! layers; on CPU adapters by the cheapest of that, the trainer's forward there (the product
//! over the input's nonzeros and the rows that keep a weight: `input_lists_counted`,
//! `ell_input_product`, its columns of P^T written once from the export) and the dense product
//! (LeNet-300-100 at 8 % kept: fc1 and fc2 the trainer's way, the logits dense). LeNet-5's
//! convolutions (shaders/conv.wgsl, then ReLU and pooling in pool.wgsl) run, on CPU adapters,
//! through a patch matrix: from the lists of their kept weights where they keep at most the
//! trainer's conv switch ratio (`listed_conv`), else the dense product; on GPUs, dense.
//! `Mode::DenseMasked` runs the same network with the dense products on the masked weights, the
//! baseline of `dst bench-infer`.
//! Models without sparse inference kernels (the LSTMs, the CIFAR-10 models) run their export as
//! the dense model's checkpoint through the trainer's evaluation plan (`run`).

use std::sync::Arc;
use std::time::Instant;

use crate::data::Dataset;
use crate::gpu::{AdapterClass, Gpu, Tensor};
use crate::kernels::conv::{ConvShape, ConvVariant};
use crate::kernels::pool::PoolShape;
use crate::kernels::sparse::{CsrTensors, EllLists, InputLists, Major};
use crate::kernels::{run_once, Dispatch, Kernels};

use super::Export;

/// How the masked layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Fully connected layers as `fc_route` says (GPUs: from CSR with `csr_linear`);
    /// convolutions that `listed_conv` marks from the lists of their kept weights.
    Sparse,
    /// Dense products on the masked weights (zeros included), as evaluation runs them.
    DenseMasked,
}

enum Fc {
    Sparse(CsrTensors),
    /// `FcRoute::InputSparse`: P's per-row keep counts (u32) and the columns of P^T that the
    /// compacted product reads (inputs x outputs, in the order `input_lists_counted` gives the
    /// rows: those that keep a weight first), written once in `Net::new`.
    InputSparse {
        counts: Tensor,
        pt_c: Tensor,
    },
    Dense(Tensor),
}

/// How sparse inference computes a fully connected layer (`fc_route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FcRoute {
    /// `csr_linear` from the CSR form: work in proportion to the kept weights.
    Csr,
    /// The trainer's forward on CPU adapters: the lists of the input's nonzeros per block of 8
    /// samples (`input_lists_counted`), then the product over them and over the workgroups of
    /// 64 rows that hold a row that keeps a weight (`ell_input_product`, compacted, from P^T's
    /// columns written once). Outputs a multiple of 4 only (its vec4 columns).
    InputSparse,
    /// The dense product of the masked weights.
    Dense,
}

/// `fc_route`'s cost of a kept weight in `csr_linear` on a CPU adapter, in multiply-adds of the
/// dense and listed products: there its loads decide, one vec4 of activations per kept weight
/// and 4 samples, where the register-blocked products load one per 16 multiply-adds. Measured
/// on one lavapipe thread (`dst bench-infer --profile`, default routes against `--routes gpu`,
/// BENCHMARKS.md): LeNet-300-100's fc1 at 5.84 % kept, batch 64, `csr_linear_fm` 2.4-2.5 ms for
/// 13,733 kept weights, the lists and the listed product 0.8-1.5 ms for 128 rows x 784 inputs at
/// 46 % listed: 6-13 multiply-adds' time per kept weight. LeNet-5's fc3 at 3 % (8,700 kept, 346
/// of 500 rows keep some) is faster from CSR, as 8 says (the choice turns at 17).
const CSR_COST: f64 = 8.0;

/// The fraction of its inputs that `fc_route` counts as listed in the input-sparse product (it
/// depends on the data: 46 % of MNIST's pixels are nonzero in at least one of 8 images, and a
/// ReLU's output is about half zeros).
const LISTED_INPUTS: f64 = 0.5;

/// How sparse inference on an adapter of `class` computes the fully connected layer `e`
/// (`rows x cols`). GPUs: from CSR. CPU adapters: the cheapest of the three by a cost in
/// multiply-adds per sample: the dense product rows x cols; `csr_linear`, `CSR_COST` per kept
/// weight; the input-sparse product (outputs a multiple of 4), `LISTED_INPUTS` x cols x the rows
/// of the workgroups of 64 that hold a row that keeps a weight. LeNet-300-100 at 8 % kept: fc1
/// and fc2 input-sparse, the logits dense; LeNet-5 at 3 %: fc3 (346 of 500 rows keep weights)
/// from CSR, the logits dense.
pub fn fc_route(class: AdapterClass, e: &super::Entry) -> FcRoute {
    if class == AdapterClass::Gpu {
        return FcRoute::Csr;
    }
    let (rows, cols) = (e.shape[0], e.shape[1]);
    let c = e.csr();
    let live = row_counts(&c).iter().filter(|&&n| n > 0).count();
    let dense = (rows * cols) as f64;
    let csr = CSR_COST * c.nnz() as f64;
    let listed = rows
        .is_multiple_of(4)
        .then(|| LISTED_INPUTS * (rows.min(64 * live.div_ceil(64)) * cols) as f64);
    if listed.is_some_and(|l| l <= dense.min(csr)) {
        FcRoute::InputSparse
    } else if csr < dense {
        FcRoute::Csr
    } else {
        FcRoute::Dense
    }
}

/// The weights each row of `c` keeps.
fn row_counts(c: &super::Csr) -> Vec<u32> {
    c.crow.windows(2).map(|w| w[1] - w[0]).collect()
}

enum Stage {
    /// conv (stride 1, no padding) + bias, ReLU, max-pool 2x2.
    ConvReluPool {
        c_in: usize,
        c_out: usize,
        k: usize,
        w: Tensor,
        b: Tensor,
        /// The row lists of the kept weights (`Mode::Sparse`, a conv `listed_conv` marks): the
        /// patch-matrix product over them.
        lists: Option<EllLists>,
    },
    Linear {
        rows: usize,
        cols: usize,
        w: Fc,
        b: Tensor,
        relu: bool,
    },
}

/// A model from an export, on the GPU.
pub struct Net {
    pub model: String,
    pub mode: Mode,
    /// Per-sample input shape.
    pub input: Vec<usize>,
    pub classes: usize,
    pub kernels: Arc<Kernels>,
    stages: Vec<Stage>,
    /// Convolutions go through a patch matrix (`Conv::forward_cols`): CPU adapters, where that
    /// path is the fast one (the trainer's too).
    patch_matrix: bool,
}

/// The dispatches of one batch of a `Net`, with its input and logits buffers.
pub struct Plan {
    pub batch: usize,
    pub input: Tensor,
    /// `(batch, classes)`, batch-major.
    pub logits: Tensor,
    pub dispatches: Vec<Dispatch>,
}

/// Whether `model` has sparse inference (`Net`): LeNet-300-100 and LeNet-5-Caffe. `dst infer`
/// runs the other models' exports through the trainer's evaluation plan (`run`).
pub fn has_sparse(model: &str) -> bool {
    matches!(model, "lenet300" | "lenet5")
}

/// The models sparse inference (`Net`) runs.
pub fn check_supported(model: &str) -> anyhow::Result<()> {
    if has_sparse(model) {
        return Ok(());
    }
    crate::models::check_name(model)?;
    anyhow::bail!(
        "sparse inference runs lenet300 and lenet5 exports, the models with sparse inference \
         kernels; an export of {model} runs in `dst infer` and `dst bench-infer` through the \
         trainer's evaluation, or loads in PyTorch or scipy"
    )
}

/// The per-sample input shape of `model` (`[784]` for lenet300's export: images flattened).
pub fn input_shape(model: &str) -> Vec<usize> {
    match crate::models::info(model) {
        Ok(i) if model != "lenet300" => i.input.to_vec(),
        _ => vec![784],
    }
}

/// Refuses images `model` cannot take (their size), before any GPU work.
pub fn check_images(model: &str, ds: &Dataset) -> anyhow::Result<()> {
    let want: usize = input_shape(model).iter().product();
    // The shape, not only the number of values: 7x112 images are 784 values too.
    let shape = crate::models::info(model).map(|i| i.dataset.shape());
    if ds.pixels() != want || shape.is_ok_and(|s| s != [ds.channels, ds.rows, ds.cols]) {
        let got = if ds.channels == 1 {
            format!("{}x{}", ds.rows, ds.cols)
        } else {
            format!("{}x{}x{}", ds.channels, ds.rows, ds.cols)
        };
        let kind = match crate::models::info(model).map(|i| i.dataset) {
            Ok(crate::data::DatasetKind::Cifar10) => "3x32x32 CIFAR-10",
            _ => "28x28 MNIST",
        };
        // The value count only where it differs: "(784 values, got 784)" would read as no fault.
        let count = if ds.pixels() == want {
            format!(" (the same {want} values per image, in another shape)")
        } else {
            format!(" ({want} values per image, got {})", ds.pixels())
        };
        anyhow::bail!("{got} images, {model} expects {kind} images{count}");
    }
    Ok(())
}

/// `check_images` of a test set, the refusal naming where its images came from.
pub fn check_test_set(model: &str, t: &TestSet) -> anyhow::Result<()> {
    // The folder named without the note that its files are not MNIST's (no wonder, here).
    let (place, _) = crate::data::not_mnist(&t.source);
    check_images(model, &t.images).map_err(|e| anyhow::anyhow!("{place}: {e}"))
}

/// The test set inference classifies, and where it came from.
pub struct TestSet {
    pub images: Dataset,
    /// "MNIST in DIR", "CIFAR-10 in DIR", or "the embedded MNIST subset".
    pub source: String,
}

/// The MNIST test set of `dir` (only `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, raw
/// or `.gz`, are read: the train files need not be there), or the embedded subset's.
pub fn load_test(dir: Option<&std::path::Path>) -> anyhow::Result<TestSet> {
    use crate::data::{idx, MNIST_NAMES};
    let Some(dir) = dir else {
        return Ok(TestSet {
            images: crate::data::try_load_embedded()?.test,
            source: "the embedded MNIST subset".into(),
        });
    };
    let paths = crate::data::idx_files(dir, &MNIST_NAMES[2..], "MNIST test")?;
    let (images, labels) = (&paths[0], &paths[1]);
    let images = Dataset::from_idx(
        idx::read_idx_as(images, Some(idx::IdxKind::Images))?,
        idx::read_idx_as(labels, Some(idx::IdxKind::Labels))?,
        &images.display().to_string(),
        &labels.display().to_string(),
    )?;
    let source = if crate::data::is_mnist_file(&images, 2) {
        format!("MNIST in {}", dir.display())
    } else {
        crate::data::not_mnist_source(&dir.display().to_string())
    };
    Ok(TestSet { images, source })
}

/// How `dst infer` computes an export's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Sparse inference (`Net`, `Mode::Sparse`) on an adapter of this class: LeNet-300-100 and
    /// LeNet-5.
    Sparse(crate::gpu::AdapterClass),
    /// The dense model's checkpoint through the trainer's evaluation plan (`to_checkpoint`).
    Dense,
    /// The masked model's checkpoint through the trainer's evaluation plan
    /// (`to_masked_checkpoint`) on an adapter of this class: layers that keep few weights
    /// compute from the kept ones (`kept_products`).
    Masked(crate::gpu::AdapterClass),
}

/// An LSTM gate matrix (`weight_ih`, `weight_hh`): its masked layer has a switch between the
/// dense and the kept-weight products in every plan where the trainer's LSTM ratio is above 0.
fn lstm_gates(e: &super::Entry) -> bool {
    e.name.contains(".weight_hh") || e.name.contains(".weight_ih")
}

/// Whether the trainer's masked evaluation on an adapter of `class` computes the LSTM gate
/// matrix `e` from its kept weights only: it keeps at most the LSTM switch ratio of its weights
/// (`kernels::sparse::default_sparse_keep_lstm`), the bound the trainer's switch compares the
/// same count with. False for any other weight: whether a convolution or linear layer switches
/// depends on the plan (batch, buffer limits, input density), so `dst infer` runs those models
/// dense.
pub fn kept_products(class: crate::gpu::AdapterClass, e: &super::Entry) -> bool {
    lstm_gates(e) && keeps_at_most(e, crate::kernels::sparse::default_sparse_keep_lstm(class))
}

/// Whether the weight `e` keeps at most `ratio` of its weights, as a trainer's switch at that
/// ratio counts (at most floor(ratio x weights) kept; never with a ratio of 0).
fn keeps_at_most(e: &super::Entry, ratio: f64) -> bool {
    let numel: usize = e.shape.iter().product();
    ratio > 0.0 && e.csr().nnz() as f64 <= (ratio.min(1.0) * numel as f64).floor()
}

/// Whether sparse inference (`Net`, `Mode::Sparse`) on an adapter of `class` computes the
/// convolution weight `e` from its kept weights only: it keeps at most the trainer's conv switch
/// ratio of them (`kernels::sparse::default_sparse_keep_conv`: CPU adapters, whose patch-matrix
/// product over the kept weights is the faster one there; 0 on GPUs).
pub fn listed_conv(class: crate::gpu::AdapterClass, e: &super::Entry) -> bool {
    e.shape.len() == 4 && keeps_at_most(e, crate::kernels::sparse::default_sparse_keep_conv(class))
}

/// The row lists (`EllLists`, as `Sparse::ell_build` writes them from P) of a convolution
/// weight's kept weights, from its CSR form (rows: filters, columns: (c_in, ky, kx)), made here
/// once: the lists of filter r at r x cols, columns ascending, their lengths at cnt[r]. The
/// column lists, which only the input gradient reads, are left zero.
fn conv_lists(gpu: &Gpu, name: &str, e: &super::Entry) -> anyhow::Result<EllLists> {
    let c = e.csr();
    let (rows, cols) = (c.rows, c.cols);
    let mut idx = vec![0u32; 2 * rows * cols];
    let mut val = vec![0f32; 2 * rows * cols];
    let mut cnt = vec![0u32; rows + cols];
    for r in 0..rows {
        let (a, b) = (c.crow[r] as usize, c.crow[r + 1] as usize);
        idx[r * cols..r * cols + (b - a)].copy_from_slice(&c.col[a..b]);
        val[r * cols..r * cols + (b - a)].copy_from_slice(&c.val[a..b]);
        cnt[r] = (b - a) as u32;
    }
    Ok(EllLists {
        rows,
        cols,
        p_transposed: false,
        idx: Tensor::from_slice(gpu, &format!("{name}.list_idx"), &[idx.len()], &idx)?,
        val: Tensor::from_slice(gpu, &format!("{name}.list_val"), &[val.len()], &val)?,
        cnt: Tensor::from_slice(gpu, &format!("{name}.list_cnt"), &[cnt.len()], &cnt)?,
    })
}

/// A fully connected layer's operands for `FcRoute::InputSparse`, from its export entry `e`
/// (`rows x cols`, rows % 4 == 0): P's per-row keep counts, and the columns of P^T that the
/// compacted product reads, written here once with the trainer's kernels: `input_lists_counted`
/// orders the rows from the counts (on a zero input), and `masked_columns` writes the columns
/// from the export's weights with every threshold 0, so that P holds exactly its nonzeros. Each
/// plan's lists dispatch writes the same order again before its product reads it.
fn input_sparse_fc(gpu: &Gpu, k: &Kernels, name: &str, e: &super::Entry) -> anyhow::Result<Fc> {
    let (rows, cols) = (e.shape[0], e.shape[1]);
    let counts = row_counts(&e.csr());
    let counts = Tensor::from_slice(gpu, &format!("{name}.row_counts"), &[rows], &counts)?;
    let weight = Tensor::from_slice(gpu, &format!("{name}.weight"), &[rows, cols], &e.dense())?;
    let zero_thresholds = Tensor::zeros(gpu, &format!("{name}.threshold"), &[rows])?;
    let x = Tensor::zeros(gpu, &format!("{name}.x"), &[1, cols])?;
    let lists = InputLists::new(gpu, &format!("{name}.lists"), 1, cols, rows)?;
    let pt_c = Tensor::zeros(gpu, &format!("{name}.pt_compacted"), &[cols, rows])?;
    run_once(
        gpu,
        &[
            k.sparse
                .input_lists_counted(gpu, &x, &lists, &counts, None)?,
            k.sparse
                .masked_columns(gpu, &lists, &weight, &zero_thresholds, &pt_c)?,
        ],
        0,
    )?;
    Ok(Fc::InputSparse { counts, pt_c })
}

/// The export's masked weights (weights, biases and other tensors left out).
fn masked_entries(export: &Export) -> Vec<&super::Entry> {
    let specs = super::model_params(&export.model).unwrap_or_default();
    export
        .entries
        .iter()
        .filter(|e| {
            specs
                .iter()
                .any(|s| s.export == e.name && s.threshold.is_some())
        })
        .collect()
}

/// Whether `dst infer` runs an export without sparse inference kernels through the trainer's
/// masked evaluation on `gpu`: an LSTM export with a gate matrix that computes from its kept
/// weights there (CPU adapters; on GPUs the dense products are the fast path and the switches
/// are off).
pub fn masked_evaluation(gpu: &Gpu, export: &Export) -> bool {
    masked_evaluation_on(gpu.class, export)
}

fn masked_evaluation_on(class: crate::gpu::AdapterClass, export: &Export) -> bool {
    masked_entries(export)
        .into_iter()
        .any(|e| kept_products(class, e))
}

/// One line per weight with a mask (fully connected and convolutional): its shape, the weights
/// kept of the total, and how inference computes it (`route`).
pub fn layer_table(export: &Export, route: Route) -> Vec<String> {
    let masked = masked_entries(export);
    let weights = || masked.iter().copied();
    let width = weights().map(|e| e.name.len()).max().unwrap_or(0).max(14);
    let dims = |e: &super::Entry| {
        e.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ")
    };
    let shape_width = weights().map(|e| dims(e).len()).max().unwrap_or(0).max(16);
    // "kept of total" with each number right-aligned in its own column (" of " in one column).
    let num_width = |n: usize| n.to_string().len();
    let total_width = weights()
        .map(|e| num_width(e.shape.iter().product()))
        .max()
        .unwrap_or(0);
    weights()
        .map(|e| {
            let shape = dims(e);
            let kept = e.csr().nnz();
            let total: usize = e.shape.iter().product();
            let how = match route {
                Route::Dense => "dense (the masked weights)",
                Route::Masked(class) if kept_products(class, e) => "its kept weights only",
                Route::Masked(_) if lstm_gates(e) => "dense, masked",
                Route::Masked(_) => "masked (the trainer's products)",
                Route::Sparse(class) if e.shape.len() == 2 => match fc_route(class, e) {
                    FcRoute::Csr => "sparse (CSR)",
                    FcRoute::InputSparse => "its rows that keep a weight, the input's nonzeros",
                    FcRoute::Dense => "dense (the masked weights)",
                },
                Route::Sparse(class) if listed_conv(class, e) => "its kept weights only",
                Route::Sparse(_) => "dense (conv on the masked weights)",
            };
            format!(
                "{:<width$} {:<shape_width$} {kept:>total_width$} of {total:>total_width$} kept \
                 ({}%), {how}",
                e.name,
                shape,
                crate::report::share(kept as u64, total as u64, 100.0, 2)
            )
        })
        .collect()
}

/// A conv stage's shapes: the k x k convolution (stride 1, no padding) of `batch` images of
/// `c_in` x h x w, and the 2 x 2 max pooling (stride 2) of its output.
fn conv_pool_shapes(
    batch: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    h: usize,
    w: usize,
) -> (ConvShape, PoolShape) {
    let s = ConvShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        stride: 1,
        pad: 0,
    };
    let ps = PoolShape {
        batch,
        channels: c_out,
        h: s.out_h(),
        w: s.out_w(),
        k: 2,
        stride: 2,
        pad: 0,
    };
    (s, ps)
}

impl Net {
    pub fn new(
        gpu: &Gpu,
        kernels: Arc<Kernels>,
        export: &Export,
        mode: Mode,
    ) -> anyhow::Result<Net> {
        Net::for_class(gpu, kernels, export, mode, gpu.class)
    }

    /// `Net::new` with the routes of an adapter of `class` (`fc_route`, `listed_conv`): the
    /// tests run a GPU's routes on a CPU adapter with it.
    pub fn for_class(
        gpu: &Gpu,
        kernels: Arc<Kernels>,
        export: &Export,
        mode: Mode,
        class: AdapterClass,
    ) -> anyhow::Result<Net> {
        check_supported(&export.model)?;
        let dense = |name: &str| -> anyhow::Result<Tensor> {
            let e = export
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
            Ok(Tensor::from_slice(gpu, name, &e.shape, &e.dense())?)
        };
        let mut stages = Vec::new();
        let patch_matrix = kernels.conv.variant == ConvVariant::RegBlock;
        let fcs: &[(&str, bool)] = if export.model == "lenet5" {
            for (name, c_in, c_out) in [("conv1", 1, 20), ("conv2", 20, 50)] {
                let weight = format!("{name}.weight");
                let e = export
                    .get(&weight)
                    .ok_or_else(|| anyhow::anyhow!("{weight} missing"))?;
                let lists = (mode == Mode::Sparse && patch_matrix && listed_conv(class, e))
                    .then(|| conv_lists(gpu, name, e))
                    .transpose()?;
                stages.push(Stage::ConvReluPool {
                    c_in,
                    c_out,
                    k: 5,
                    w: dense(&weight)?,
                    b: dense(&format!("{name}.bias"))?,
                    lists,
                });
            }
            &[("fc3", true), ("fc4", false)]
        } else {
            &[("fc1", true), ("fc2", true), ("fc3", false)]
        };
        for &(name, relu) in fcs {
            let e = export
                .get(&format!("{name}.weight"))
                .expect("validated export");
            let (rows, cols) = (e.shape[0], e.shape[1]);
            let route = match mode {
                Mode::DenseMasked => FcRoute::Dense,
                Mode::Sparse => fc_route(class, e),
            };
            let w = match route {
                FcRoute::Dense => {
                    Fc::Dense(Tensor::from_slice(gpu, name, &[rows, cols], &e.dense())?)
                }
                FcRoute::InputSparse => input_sparse_fc(gpu, &kernels, name, e)?,
                FcRoute::Csr => {
                    let c = e.csr();
                    // At least one element each: an all-pruned layer still binds.
                    let col: Vec<u32> = if c.col.is_empty() {
                        vec![0]
                    } else {
                        c.col.clone()
                    };
                    let val: Vec<f32> = if c.val.is_empty() {
                        vec![0.0]
                    } else {
                        c.val.clone()
                    };
                    Fc::Sparse(CsrTensors {
                        rows,
                        cols,
                        crow: Tensor::from_slice(gpu, "crow", &[rows + 1], &c.crow)?,
                        col: Tensor::from_slice(gpu, "col", &[col.len()], &col)?,
                        val: Tensor::from_slice(gpu, "val", &[val.len()], &val)?,
                    })
                }
            };
            stages.push(Stage::Linear {
                rows,
                cols,
                w,
                b: dense(&format!("{name}.bias"))?,
                relu,
            });
        }
        let input = input_shape(&export.model);
        Ok(Net {
            model: export.model.clone(),
            mode,
            input,
            classes: 10,
            kernels,
            stages,
            patch_matrix,
        })
    }

    /// Values (f32) per sample of the largest buffer whose size grows with the batch: the
    /// input, each layer's output, a convolution's patch matrix (CPU adapters: `patch_matrix`)
    /// and, before a sparse layer, its feature-major copy or its input's lists (the values of
    /// each listed input for a block of samples: the input's width per sample).
    pub fn sample_floats(&self) -> usize {
        let mut dims = self.input.clone();
        let mut most: usize = dims.iter().product();
        for st in &self.stages {
            match st {
                Stage::ConvReluPool { c_in, c_out, k, .. } => {
                    let (s, ps) = conv_pool_shapes(1, *c_in, *c_out, *k, dims[1], dims[2]);
                    most = most.max(c_out * s.out_h() * s.out_w());
                    if self.patch_matrix {
                        most = most.max(s.cols_len());
                    }
                    dims = vec![*c_out, ps.out_h(), ps.out_w()];
                }
                Stage::Linear { rows, cols, .. } => {
                    most = most.max(*rows).max(*cols);
                    dims = vec![*rows];
                }
            }
        }
        most
    }

    /// The largest batch whose buffers fit the adapter's largest storage binding (at least 1).
    pub fn max_batch(&self, gpu: &Gpu) -> usize {
        let per = 4 * self.sample_floats().max(1) as u64;
        let most = (gpu.max_binding() / per).clamp(1, usize::MAX as u64) as usize;
        // The input lists hold whole blocks of samples.
        let lists = self.stages.iter().any(|st| {
            matches!(
                st,
                Stage::Linear {
                    w: Fc::InputSparse { .. },
                    ..
                }
            )
        });
        if lists && most >= InputLists::BLOCK {
            most - most % InputLists::BLOCK
        } else {
            most
        }
    }

    /// The dispatches of one batch of `batch` samples.
    pub fn plan(&self, gpu: &Gpu, batch: usize) -> anyhow::Result<Plan> {
        let k = &self.kernels;
        let mut shape = vec![batch];
        shape.extend(&self.input);
        let input = Tensor::zeros(gpu, "infer.input", &shape)?;
        let mut x = input.clone();
        let mut major = Major::Batch;
        let mut ds = Vec::new();
        let last = self.stages.len() - 1;
        for (i, st) in self.stages.iter().enumerate() {
            match st {
                Stage::ConvReluPool {
                    c_in,
                    c_out,
                    k: kk,
                    w,
                    b,
                    lists,
                } => {
                    let (s, ps) =
                        conv_pool_shapes(batch, *c_in, *c_out, *kk, x.shape[2], x.shape[3]);
                    let y_shape = [batch, *c_out, s.out_h(), s.out_w()];
                    let y = Tensor::zeros(gpu, "infer.conv", &y_shape)?;
                    if self.patch_matrix && k.conv.use_cols(gpu, &s) {
                        // im2col, then the product: over the kept weights' lists where the conv
                        // has them (the same sums as the dense product, its zeros left out).
                        let cols = Tensor::zeros(gpu, "infer.cols", &[s.cols_len()])?;
                        let [fill, dense] =
                            k.conv
                                .forward_cols(gpu, &s, &x, w, Some(b), &y, &cols, &k.dummy)?;
                        ds.push(fill);
                        ds.push(match lists {
                            Some(l) => k.conv.forward_cols_listed(
                                gpu,
                                &s,
                                l,
                                &cols,
                                Some(b),
                                &y,
                                &k.dummy,
                            )?,
                            None => dense,
                        });
                    } else {
                        ds.push(k.conv.forward(gpu, &s, &x, w, Some(b), &y, &k.dummy)?);
                    }
                    // ReLU then 2x2 max pooling, as one pass.
                    let pooled =
                        Tensor::zeros(gpu, "infer.pool", &[batch, *c_out, ps.out_h(), ps.out_w()])?;
                    ds.push(k.pool.max_forward(gpu, &ps, true, &y, &pooled)?);
                    x = pooled;
                }
                Stage::Linear {
                    rows,
                    cols,
                    w,
                    b,
                    relu,
                } => {
                    let x2 = Tensor {
                        shape: vec![batch, *cols],
                        ..x.clone()
                    };
                    let y = Tensor::zeros(gpu, "infer.fc", &[batch, *rows])?;
                    match w {
                        Fc::Sparse(c) => {
                            // A batch-major input is made feature-major first (not for batch 1,
                            // where both layouts are the same).
                            let x2 = if major == Major::Batch && batch > 1 {
                                let t = Tensor::zeros(gpu, "infer.fm", &[*cols, batch])?;
                                ds.push(k.sparse.to_feature_major(gpu, batch, *cols, &x2, &t)?);
                                major = Major::Feature;
                                t
                            } else {
                                x2
                            };
                            // Feature-major out where the next layer is sparse too; batch-major
                            // for the logits and for a next layer of another route (CPU adapters),
                            // which reads batch-major: there the feature-major product, then a
                            // copy that turns it around.
                            let next_csr = matches!(
                                self.stages.get(i + 1),
                                Some(Stage::Linear {
                                    w: Fc::Sparse(_),
                                    ..
                                })
                            );
                            let y_major = if next_csr {
                                Major::Feature
                            } else {
                                Major::Batch
                            };
                            if major == Major::Feature
                                && (y_major == Major::Feature || i != last)
                                && batch.is_multiple_of(4)
                            {
                                let out = if y_major == Major::Feature {
                                    y.clone()
                                } else {
                                    Tensor::zeros(gpu, "infer.fc_fm", &[*rows, batch])?
                                };
                                ds.push(k.sparse.csr_linear_fm(
                                    gpu,
                                    c,
                                    batch,
                                    &x2,
                                    Some(b),
                                    &out,
                                    *relu,
                                    &k.dummy,
                                )?);
                                if y_major == Major::Batch {
                                    ds.push(
                                        k.sparse.to_feature_major(gpu, *rows, batch, &out, &y)?,
                                    );
                                }
                            } else {
                                ds.push(k.sparse.csr_linear(
                                    gpu,
                                    c,
                                    batch,
                                    &x2,
                                    major,
                                    Some(b),
                                    &y,
                                    y_major,
                                    *relu,
                                    &k.dummy,
                                )?);
                            }
                            major = y_major;
                            x = y;
                        }
                        Fc::InputSparse { counts, pt_c } => {
                            assert_eq!(major, Major::Batch, "the lists read a batch-major input");
                            let lists = InputLists::new(gpu, "infer.lists", batch, *cols, *rows)?;
                            ds.push(
                                k.sparse
                                    .input_lists_counted(gpu, &x2, &lists, counts, None)?,
                            );
                            ds.push(k.sparse.ell_input_product(
                                gpu,
                                &lists,
                                pt_c,
                                Some(b),
                                &y,
                                *relu,
                                true,
                                &k.dummy,
                            )?);
                            x = y;
                        }
                        Fc::Dense(wt) => {
                            assert_eq!(major, Major::Batch, "the GEMM reads a batch-major input");
                            ds.push(k.gemm.forward(gpu, &x2, wt, Some(b), &y, &k.dummy)?);
                            if *relu {
                                let r = Tensor::zeros(gpu, "infer.relu", &[batch, *rows])?;
                                ds.push(k.act.relu_forward(gpu, &y, &r)?);
                                x = r;
                            } else {
                                x = y;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(major, Major::Batch, "logits are batch-major");
        Ok(Plan {
            batch,
            input,
            logits: x,
            dispatches: ds,
        })
    }
}

/// Images `[from, from + n)` of `ds` as the trainer's input values (its table: x / 255 for
/// MNIST), padded with zeros to `batch` samples.
pub fn images(ds: &Dataset, from: usize, n: usize, batch: usize) -> Vec<f32> {
    let px = ds.pixels();
    let plane = (ds.rows * ds.cols).max(1);
    let lut = ds.lut();
    let mut v = vec![0.0f32; batch * px];
    for (i, (o, &b)) in v
        .iter_mut()
        .zip(&ds.images[from * px..(from + n) * px])
        .enumerate()
    {
        *o = lut[(i % px) / plane * 256 + b as usize];
    }
    v
}

/// Logits `(count, classes)` of every image of `ds`, `batch` at a time (at most `ds.count` and
/// `net.max_batch`: each sample is computed on its own, so the batch changes only the speed).
pub fn logits(gpu: &Gpu, net: &Net, ds: &Dataset, batch: usize) -> anyhow::Result<Vec<f32>> {
    check_images(&net.model, ds)?;
    let batch = batch.clamp(1, ds.count.max(1)).min(net.max_batch(gpu));
    let plan = net.plan(gpu, batch)?;
    let mut out = Vec::with_capacity(ds.count * net.classes);
    let mut at = 0;
    while at < ds.count {
        let n = (ds.count - at).min(batch);
        gpu.write(&plan.input, &images(ds, at, n, batch));
        run_once(gpu, &plan.dispatches, 0)?;
        let l = gpu.read::<f32>(&plan.logits)?;
        out.extend_from_slice(&l[..n * net.classes]);
        at += n;
    }
    Ok(out)
}

/// The index of the largest logit of each row (the first on ties).
pub fn predictions(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|r| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// A batch of `batch` images from the first of `ds` (again from the first where it has fewer),
/// as the trainer's input values: the timed input of `throughput` and `dispatch_times`.
fn first_images(ds: &Dataset, batch: usize) -> Vec<f32> {
    let mut input = Vec::with_capacity(batch * ds.pixels());
    for i in 0..batch {
        input.extend(images(ds, i % ds.count, 1, 1));
    }
    input
}

/// Samples per second of `net` at `batch`, over `reps` back-to-back batches in one submission
/// (after one warm-up batch), on the first images of `ds`; also returns the logits.
pub fn throughput(
    gpu: &Gpu,
    net: &Net,
    ds: &Dataset,
    batch: usize,
    reps: usize,
) -> anyhow::Result<(f64, Vec<f32>)> {
    check_images(&net.model, ds)?;
    anyhow::ensure!(ds.count > 0, "no images to time inference on");
    let plan = net.plan(gpu, batch)?;
    gpu.write(&plan.input, &first_images(ds, batch));
    run_once(gpu, &plan.dispatches, 0)?;
    let all: Vec<Dispatch> = (0..reps)
        .flat_map(|_| plan.dispatches.iter().cloned())
        .collect();
    let t = Instant::now();
    run_once(gpu, &all, 0)?;
    let secs = t.elapsed().as_secs_f64();
    Ok(((batch * reps) as f64 / secs, gpu.read::<f32>(&plan.logits)?))
}

/// The note printed when a batch of `asked` samples (`what`: how the user asked for it) is more
/// than the adapter's buffers allow for `net`; `None` when it fits.
pub fn batch_note(gpu: &Gpu, net: &Net, asked: usize, what: &str) -> Option<String> {
    let max = net.max_batch(gpu);
    (asked > max).then(|| {
        let per = 4 * net.sample_floats() as u64;
        format!(
            "note: {what} needs {} MiB in one buffer for {}, this adapter allows {} \
             MiB: running {max} images at a time, the largest batch that fits (the results are \
             the same; the batch only sets the speed)",
            (asked as u64 * per) >> 20,
            net.model,
            gpu.max_binding() >> 20
        )
    })
}

/// A rate (images/s) shown to 3 significant digits below 100 ("0.412", "11.3"), whole above:
/// a slow model on a CPU adapter read "1 images/s".
pub fn rate(per_second: f64) -> String {
    let whole = format!("{per_second:.0}");
    if per_second >= 100.0 || per_second == 0.0 || !per_second.is_finite() {
        return whole;
    }
    let digits = (2 - per_second.log10().floor() as i32).max(0) as usize;
    let shown = format!("{per_second:.digits$}");
    // 99.96 rounds up to 100: whole, as the rates above it.
    if shown.parse::<f64>().is_ok_and(|v| v >= 100.0) {
        whole
    } else {
        shown
    }
}

/// A progress reporter for an evaluation of `total` images: on a terminal, one line on stderr
/// rewritten as images are done and cleared at the end; elsewhere (logs, pipes) a line on
/// stderr as each quarter of them is passed, before the end.
pub fn progress_line(total: usize) -> impl FnMut(usize) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut quarter = 0;
    move |done: usize| {
        if !tty {
            // A log (not a terminal): a line at each quarter passed, none at the end.
            let q = 4 * done / total.max(1);
            if q > quarter && done < total {
                quarter = q;
                eprintln!("  {done}/{total} test images");
            }
            return;
        }
        let mut e = std::io::stderr();
        if done >= total {
            let _ = write!(e, "\r\x1b[K");
        } else {
            let _ = write!(e, "\r  {done}/{total} test images");
        }
        let _ = e.flush();
    }
}

/// `dst infer`'s batch of sparse inference unless `--batch` is given.
pub const DEFAULT_BATCH: usize = 500;

/// The header of the predictions file `dst infer --out` writes (and alone replaces).
pub const PREDICTIONS_HEADER: &str = "index,label,prediction";

/// `dst infer --out`'s guard: `out` may be new or an earlier predictions file of `dst infer`
/// (first line `PREDICTIONS_HEADER`...), nothing else (a folder, the export, any other file).
fn check_predictions_out(out: &std::path::Path) -> anyhow::Result<()> {
    // Standard output's usual name elsewhere: not a file named "-" here.
    anyhow::ensure!(
        out.as_os_str() != "-",
        "--out -: the predictions go to a file, replaced whole, not to standard output; give a \
         file's path (e.g. predictions.csv)"
    );
    if let Some(to) = crate::checkpoint::dangling_link(out) {
        anyhow::bail!(
            "--out {}: a symbolic link to {}, which does not exist; give a file's path",
            out.display(),
            to.display()
        );
    }
    let Ok(meta) = std::fs::metadata(out) else {
        // A new file: its folder must be there (found now, not after the inference).
        anyhow::ensure!(
            !out.as_os_str().to_string_lossy().ends_with('/'),
            "--out {}: names a folder; give the predictions file's path (e.g. predictions.csv)",
            out.display()
        );
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if let Some(f) = crate::checkpoint::file_in_the_way(parent) {
            anyhow::bail!(
                "--out {}: the folder {} cannot exist: {} is a file",
                out.display(),
                parent.display(),
                f.display()
            );
        }
        anyhow::ensure!(
            parent.is_dir(),
            "--out {}: the folder {} does not exist",
            out.display(),
            parent.display()
        );
        return writable(out);
    };
    anyhow::ensure!(
        !meta.is_dir(),
        "--out {}: is a folder; give the predictions file's path (e.g. predictions.csv)",
        out.display()
    );
    // A pipe or a device (never read: reading a pipe this process writes would wait forever).
    anyhow::ensure!(
        meta.is_file(),
        "--out {}: is not a regular file (a pipe or a device); the predictions are written to a \
         file, replaced whole: give a file's path",
        out.display()
    );
    // The whole file must read as one `dst infer` writes (its header alone is a common one).
    let ours = meta.len() <= MAX_PREDICTIONS_BYTES
        && std::fs::read_to_string(out).is_ok_and(|t| is_predictions_file(&t));
    anyhow::ensure!(
        ours,
        "--out {}: already exists and is not a predictions file of `dst infer`; it replaces only \
         its own files: remove it or pick another --out",
        out.display()
    );
    writable(out)
}

/// The largest file `check_predictions_out` reads to tell whether it is a predictions file
/// (CIFAR-10's 10,000 test images take about 1.5 MB).
const MAX_PREDICTIONS_BYTES: u64 = 256 << 20;

/// Whether `text` is a predictions file as `predictions_csv` writes it: the header with its
/// logit columns `logit_0..logit_{k-1}`, then one row per image numbered from 0: its label,
/// predicted class and `k` logits.
pub fn is_predictions_file(text: &str) -> bool {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return false;
    };
    let Some(logits) = header.strip_prefix(PREDICTIONS_HEADER) else {
        return false;
    };
    let k = logits.split(',').skip(1).count();
    let columns_ok = logits
        .split(',')
        .skip(1)
        .enumerate()
        .all(|(c, name)| name == format!("logit_{c}"));
    if k == 0 || !columns_ok || !logits.starts_with(',') {
        return false;
    }
    lines.enumerate().all(|(i, l)| {
        let f: Vec<&str> = l.split(',').collect();
        f.len() == 3 + k
            && f[0] == i.to_string()
            && f[1].parse::<u8>().is_ok()
            && f[2].parse::<usize>().is_ok_and(|p| p < k)
            && f[3..].iter().all(|v| v.parse::<f32>().is_ok())
    })
}

/// `--out`'s folder takes the file (`write_atomic`'s temporary beside it): checked before the
/// inference, which may take minutes.
fn writable(out: &std::path::Path) -> anyhow::Result<()> {
    let file = crate::checkpoint::link_target(out).unwrap_or_else(|| out.to_path_buf());
    crate::checkpoint::check_writable(&file)
        .map_err(|e| anyhow::anyhow!("--out {}: cannot write there: {e}", out.display()))
}

/// The predictions CSV: per test image its index, label, predicted class and logits.
pub fn predictions_csv(logits: &[f32], labels: &[u8], classes: usize) -> String {
    let mut s = String::from(PREDICTIONS_HEADER);
    for c in 0..classes {
        s.push_str(&format!(",logit_{c}"));
    }
    s.push('\n');
    for (i, (row, p)) in logits
        .chunks(classes)
        .zip(predictions(logits, classes))
        .enumerate()
    {
        s.push_str(&format!("{i},{},{p}", labels[i]));
        for v in row {
            s.push_str(&format!(",{v:e}"));
        }
        s.push('\n');
    }
    s
}

/// `dst infer`: checks the export, the images and `out` (before any GPU work), classifies the
/// test set of `data` (MNIST: its two t10k files, the embedded subset's without `data`;
/// CIFAR-10: its `test_batch.bin`) and prints the accuracy; `out`: writes every image's
/// prediction and logits there (`predictions_csv`). LeNet-300-100 and LeNet-5 run with sparse
/// inference (`Net`); the other models' exports as the dense model's checkpoint
/// (`super::to_checkpoint`: the masked weights, zeros included) through the trainer's
/// evaluation plan, in its batches (`--batch` applies to sparse inference only).
pub fn run(
    file: &std::path::Path,
    data: Option<&std::path::Path>,
    batch: Option<usize>,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let asked_batch = batch;
    let batch = batch.unwrap_or(DEFAULT_BATCH);
    anyhow::ensure!(batch >= 1, "--batch must be >= 1, got {batch}");
    if let Some(out) = out {
        check_predictions_out(out)?;
    }
    let export = super::load(file)?;
    let sparse = has_sparse(&export.model);
    let data = data_folder(
        data,
        export.data.as_deref().map(std::path::Path::new),
        "the exported run",
        true,
    )?;
    let test = test_set(&export.model, data.as_deref())?;
    check_test_set(&export.model, &test)?;
    // Built before the adapter opens: an export without the model's tensors fails here.
    let dense = if sparse {
        None
    } else {
        Some(super::to_checkpoint(&export).map_err(anyhow::Error::msg)?)
    };
    let gpu = Gpu::from_env()?;
    eprintln!("adapter: {}", gpu.describe());
    let count = test.images.count;
    let (l, secs, how) = if let Some(dense) = dense {
        if let Some(b) = asked_batch {
            eprintln!(
                "note: --batch {b} is not used: {} has no sparse inference kernels, and its \
                 export runs in the trainer's evaluation batches (the results do not depend \
                 on the batch)",
                export.model
            );
        }
        let masked = masked_evaluation(&gpu, &export);
        let class = gpu.class;
        let route = if masked {
            Route::Masked(gpu.class)
        } else {
            Route::Dense
        };
        for line in layer_table(&export, route) {
            println!("{line}");
        }
        let ck = if masked {
            super::with_zero_thresholds(dense, &export.model).map_err(anyhow::Error::msg)?
        } else {
            dense
        };
        let mut progress = progress_line(count);
        let (l, secs) = crate::train::restored_logits(gpu, &ck, file, &test.images, &mut progress)?;
        let how = if masked {
            "masked inference (the trainer's masked evaluation: the layers marked above compute \
             from their kept weights only)"
                .to_string()
        } else {
            // An LSTM's gate matrices could compute from their kept weights (`kept_products`):
            // said why they do not, beside the kernels it lacks.
            let lstm = masked_entries(&export).into_iter().any(lstm_gates);
            let ratio = crate::kernels::sparse::default_sparse_keep_lstm(class);
            format!(
                "dense inference (the masked weights, zeros included, through the trainer's \
                 kernels: {} has no sparse inference kernels{})",
                export.model,
                match (lstm, ratio > 0.0) {
                    (false, _) => String::new(),
                    (true, false) => ", and on a GPU the trainer computes its gate matrices \
                                      dense (its products from kept weights are for CPU adapters)"
                        .to_string(),
                    (true, true) => format!(
                        ", and none of its gate matrices keeps at most {}% of its weights, where \
                         the trainer's products from kept weights take over",
                        100.0 * ratio
                    ),
                }
            )
        };
        (l, secs, how)
    } else {
        let kernels = Kernels::new(&gpu, None)?;
        let net = Net::new(&gpu, kernels, &export, Mode::Sparse)?;
        let asked = batch.min(count.max(1));
        let what = if asked == batch {
            format!("--batch {batch}")
        } else {
            format!("--batch {batch} (all {asked} test images)")
        };
        if let Some(note) = batch_note(&gpu, &net, asked, &what) {
            eprintln!("{note}");
        }
        for line in layer_table(&export, Route::Sparse(gpu.class)) {
            println!("{line}");
        }
        let t = Instant::now();
        let l = logits(&gpu, &net, &test.images, batch)?;
        (l, t.elapsed().as_secs_f64(), "sparse inference".to_string())
    };
    let classes = l.len() / count.max(1);
    let pred = predictions(&l, classes.max(1));
    let correct = pred
        .iter()
        .zip(&test.images.labels)
        .filter(|(p, &y)| **p == y as usize)
        .count();
    if let Some(out) = out {
        let csv = predictions_csv(&l, &test.images.labels, classes.max(1));
        crate::checkpoint::write_through_link(out, csv.as_bytes())
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", out.display()))?;
    }
    println!(
        "test accuracy {:.2}% on the {} of {}, {how} of {} ({}), {} images/s",
        100.0 * correct as f64 / count.max(1) as f64,
        crate::report::plural(count, "test image"),
        test.source,
        export.model,
        export.describe(),
        rate(count as f64 / secs)
    );
    if let Some(out) = out {
        println!("predictions: {}", out.display());
    }
    Ok(())
}

/// The data folder `dst eval`, `dst infer` and `dst bench-infer` read: `given` (`--data`), else
/// the folder the run trained on (`trained_on`: its checkpoint's config, an export's metadata),
/// said so, so that they score the test set the run scored; none (the embedded subset) where the
/// run had none. A folder that has gone is refused where the scores are the point (`scores`:
/// eval, infer: the embedded subset's would say nothing of a run on other data, and exit 0), and
/// warned about where only the speed is (bench-infer: the embedded subset). `run` names the run
/// ("the run", "the exported run").
pub fn data_folder(
    given: Option<&std::path::Path>,
    trained_on: Option<&std::path::Path>,
    run: &str,
    scores: bool,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    Ok(match (given, trained_on) {
        (Some(d), _) => Some(d.to_path_buf()),
        (None, Some(r)) if r.is_dir() => {
            eprintln!(
                "note: no --data: the test set of {}, which {run} trained on (give --data for \
                 another)",
                r.display()
            );
            Some(r.to_path_buf())
        }
        (None, Some(r)) if scores => anyhow::bail!(
            "{run} trained on {}, which is not there now: give --data with its test files (the \
             folder's new place, or another copy of the dataset) to score it",
            r.display()
        ),
        (None, Some(r)) => {
            eprintln!(
                "warning: {run} trained on {}, which is not there now: timing the embedded \
                 subset's test images (give --data with its test files for its own)",
                r.display()
            );
            None
        }
        (None, None) => None,
    })
}

/// The test set of `model`'s dataset (`dst infer`, `dst eval`): MNIST as `load_test` (the
/// embedded subset's without `data`), CIFAR-10's `test_batch.bin` in `data` (required: no
/// CIFAR-10 images are embedded). A folder of the other dataset is named as such, with `model`
/// and the test files it lacks. A model unknown here reads MNIST (the caller names it later).
pub fn test_set(model: &str, data: Option<&std::path::Path>) -> anyhow::Result<TestSet> {
    use crate::data::{naming_model_files, DatasetKind, MNIST_NAMES};
    let kind = crate::models::info(model).map_or(DatasetKind::Mnist, |i| i.dataset);
    match kind {
        DatasetKind::Cifar10 => {
            let Some(dir) = data else {
                anyhow::bail!(
                    "{model} classifies CIFAR-10 images, and none are embedded: give --data DIR \
                     with CIFAR-10's test_batch.bin (`dst fetch cifar10 --to DIR`)"
                );
            };
            let t = crate::data::cifar::load_test_dir(dir)
                .map_err(|e| naming_model_files(e, model, &[crate::data::cifar::TEST_FILE]))?;
            Ok(TestSet {
                images: t.test,
                source: t.source,
            })
        }
        DatasetKind::Mnist => load_test(data).map_err(|e| match e.downcast() {
            Ok(e) => naming_model_files(e, model, &MNIST_NAMES[2..]).into(),
            Err(e) => e,
        }),
    }
}

/// `dst bench-infer`'s `--samples` unless given.
pub const DEFAULT_SAMPLES: usize = 8192;

/// Timed rounds per mode and batch size in `bench`.
pub const ROUNDS: usize = 3;

/// `dst bench-infer`: samples/s of dense-masked against sparse inference of an export at each
/// batch size, in one process (the best of `ROUNDS` alternating rounds each), and the largest
/// logit difference between the two; with `profile`, each dispatch's time alone too
/// (`dispatch_times`). Sparse inference takes the routes of `routes` (default: the adapter's
/// class).
pub fn bench(
    file: &std::path::Path,
    data: Option<&std::path::Path>,
    batches: &[usize],
    samples: usize,
    profile: bool,
    routes: Option<AdapterClass>,
) -> anyhow::Result<()> {
    let export = super::load(file)?;
    if !has_sparse(&export.model) {
        let flag = if profile { "--profile" } else { "--routes" };
        anyhow::ensure!(
            !profile && routes.is_none(),
            "{flag} is for sparse inference: {} has no sparse inference kernels \
             (LeNet-300-100 and LeNet-5 have)",
            export.model
        );
    }
    // Timing only: an MNIST export may time the embedded subset's images instead (none of
    // CIFAR-10's are embedded).
    let mnist = crate::models::info(&export.model)
        .is_ok_and(|i| i.dataset == crate::data::DatasetKind::Mnist);
    let data = data_folder(
        data,
        export.data.as_deref().map(std::path::Path::new),
        "the exported run",
        !mnist,
    )?;
    let data = data.as_deref();
    if !has_sparse(&export.model) {
        return bench_evaluation(file, &export, data, samples);
    }
    // Through `test_set`: a folder of the other dataset is named with the model.
    let test = test_set(&export.model, data)?;
    check_test_set(&export.model, &test)?;
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.describe());
    let kernels = Kernels::new(&gpu, None)?;
    let class = routes.unwrap_or(gpu.class);
    let dense = Net::new(&gpu, kernels.clone(), &export, Mode::DenseMasked)?;
    let sparse = Net::for_class(&gpu, kernels, &export, Mode::Sparse, class)?;
    let masked = masked_entries(&export);
    let kept: usize = masked.iter().map(|e| e.csr().nnz()).sum();
    let total: usize = masked
        .iter()
        .map(|e| e.shape.iter().product::<usize>())
        .sum();
    println!(
        "{} ({}): its masked layers keep {kept} of {total} weights ({}%)",
        export.model,
        export.describe(),
        crate::report::share(kept as u64, total as u64, 100.0, 2)
    );
    if class != gpu.class {
        let name = match class {
            AdapterClass::Cpu => "CPU",
            AdapterClass::Gpu => "GPU",
        };
        println!("sparse inference with the routes of a {name} adapter (--routes)");
    }
    for line in layer_table(&export, Route::Sparse(class)) {
        println!("{line}");
    }
    println!(
        "{:>6} {:>8} {:>18} {:>18} {:>9} {:>12}",
        "batch", "batches", "dense-masked/s", "sparse/s", "speedup", "max |dlogit|"
    );
    for &b in batches {
        if let Some(note) = batch_note(&gpu, &dense, b, &format!("batch {b}")) {
            eprintln!("{note}");
        }
        let b = b.max(1).min(dense.max_batch(&gpu));
        let reps = (samples / b).max(3);
        // Alternating rounds, the best of each mode: robust to a shared, noisy machine.
        let (mut d, mut s, mut ld, mut ls) = (0.0f64, 0.0f64, Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (x, l) = throughput(&gpu, &dense, &test.images, b, reps)?;
            (d, ld) = (d.max(x), l);
            let (x, l) = throughput(&gpu, &sparse, &test.images, b, reps)?;
            (s, ls) = (s.max(x), l);
        }
        let diff = ld
            .iter()
            .zip(&ls)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{b:>6} {reps:>8} {:>18} {:>18} {:>8.2}x {diff:>12.2e}",
            rate(d),
            rate(s),
            s / d
        );
        if profile {
            let (mut pd, mut ps) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                best_of(
                    &mut pd,
                    dispatch_times(&gpu, &dense, &test.images, b, reps)?,
                );
                best_of(
                    &mut ps,
                    dispatch_times(&gpu, &sparse, &test.images, b, reps)?,
                );
            }
            for (mode, times) in [("dense-masked", pd), ("sparse", ps)] {
                for (i, (label, us)) in times.iter().enumerate() {
                    println!("{:>6} {mode:>12} {i:>3} {label:<44} {us:>10.1} us", "");
                }
            }
        }
    }
    Ok(())
}

/// Keeps the smaller time of each dispatch (`best` empty: takes `times`).
fn best_of(best: &mut Vec<(String, f64)>, times: Vec<(String, f64)>) {
    if best.is_empty() {
        *best = times;
    } else {
        for (b, t) in best.iter_mut().zip(times) {
            b.1 = b.1.min(t.1);
        }
    }
}

/// Microseconds per run of each dispatch of `net`'s plan at `batch` alone: the dispatch
/// repeated `reps` times back to back in one submission (each reads what the one before it in
/// the plan wrote in a first full run, and rewrites the same values), with its label.
pub fn dispatch_times(
    gpu: &Gpu,
    net: &Net,
    ds: &Dataset,
    batch: usize,
    reps: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    check_images(&net.model, ds)?;
    anyhow::ensure!(ds.count > 0, "no images to time inference on");
    let plan = net.plan(gpu, batch)?;
    gpu.write(&plan.input, &first_images(ds, batch));
    run_once(gpu, &plan.dispatches, 0)?;
    let mut out = Vec::with_capacity(plan.dispatches.len());
    for d in &plan.dispatches {
        let all = vec![d.clone(); reps.max(1)];
        let t = Instant::now();
        run_once(gpu, &all, 0)?;
        out.push((
            d.label.clone(),
            t.elapsed().as_secs_f64() * 1e6 / all.len() as f64,
        ));
    }
    Ok(out)
}

/// `dst bench-infer` of a model without sparse inference kernels: images/s of the trainer's
/// evaluation of the dense model's checkpoint against the masked model's (`to_checkpoint`,
/// `to_masked_checkpoint`) over the first `samples` test images, in one process (the best of
/// `ROUNDS` alternating rounds each), and the largest logit difference between the two.
fn bench_evaluation(
    file: &std::path::Path,
    export: &Export,
    data: Option<&std::path::Path>,
    samples: usize,
) -> anyhow::Result<()> {
    use crate::train::Restored;
    let test = test_set(&export.model, data)?;
    check_test_set(&export.model, &test)?;
    let images = test.images.limit(samples.max(1));
    let dense_ck = super::to_checkpoint(export).map_err(anyhow::Error::msg)?;
    let masked_ck = super::to_masked_checkpoint(export).map_err(anyhow::Error::msg)?;
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.describe());
    let class = gpu.class;
    for line in layer_table(export, Route::Masked(class)) {
        println!("{line}");
    }
    let dense = Restored::new(gpu, &dense_ck, file, &images)?;
    let masked = Restored::new(Gpu::from_env()?, &masked_ck, file, &images)?;
    println!(
        "{} ({}) has no sparse inference kernels: the trainer's evaluation of the dense \
         model against the masked one, batches of {}, {} of {}{}",
        export.model,
        export.describe(),
        dense.batch(),
        crate::report::plural(images.count, "test image"),
        test.source,
        if samples > images.count && samples != DEFAULT_SAMPLES {
            format!(" (all of them: fewer than --samples {samples})")
        } else {
            String::new()
        }
    );
    println!(
        "{:>18} {:>18} {:>9} {:>12}",
        "dense/s", "masked/s", "speedup", "max |dlogit|"
    );
    let (mut d, mut m, mut ld, mut lm) = (0.0f64, 0.0f64, Vec::new(), Vec::new());
    let n = images.count as f64;
    // One untimed round of each first (the first evaluation of a plan pays for its set-up), then
    // the timed ones; the ratio of each round too, whose spread says how noisy the machine is.
    // Progress on stderr: a large model on a CPU adapter takes minutes a round.
    eprintln!(
        "an untimed round of each model over the {}, then {ROUNDS} timed rounds",
        crate::report::plural(images.count, "image")
    );
    let t0 = std::time::Instant::now();
    dense.logits(images.count, &mut progress_line(images.count))?;
    masked.logits(images.count, &mut progress_line(images.count))?;
    let first = t0.elapsed().as_secs_f64();
    if first > 10.0 {
        eprintln!(
            "the untimed round took {:.0} s: about {:.0} s more for the timed ones (--samples \
             sets how many images a round takes)",
            first,
            first * ROUNDS as f64
        );
    }
    let mut ratios = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let (l, secs) = dense.logits(images.count, &mut |_| {})?;
        let rate_d = n / secs;
        (d, ld) = (d.max(rate_d), l);
        let (l, secs) = masked.logits(images.count, &mut |_| {})?;
        ratios.push((n / secs) / rate_d);
        (m, lm) = (m.max(n / secs), l);
        if first > 10.0 {
            eprintln!(
                "  round {}/{ROUNDS}: dense {} images/s, masked {}",
                i + 1,
                rate(rate_d),
                rate(n / secs)
            );
        }
    }
    let diff = ld
        .iter()
        .zip(&lm)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{:>18} {:>18} {:>8.2}x {diff:>12.2e}",
        rate(d),
        rate(m),
        m / d
    );
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "speedup of each round: {lo:.2}x to {hi:.2}x{}",
        if hi > 1.25 * lo {
            " (rounds this far apart: a busy machine; more --samples time longer rounds)"
        } else {
            ""
        }
    );
    if !masked_evaluation_on(class, export) {
        println!(
            "`dst infer` runs this export as the dense model (the masked one only for an LSTM \
             export with a gate matrix marked \"its kept weights only\")"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Slow rates keep three significant digits ("1 images/s" said little); fast ones are whole.
    #[test]
    fn rates_keep_their_digits() {
        let r = super::rate;
        assert_eq!(
            [
                r(0.4123),
                r(1.04),
                r(11.26),
                r(99.4),
                r(99.97),
                r(1234.6),
                r(0.0)
            ],
            ["0.412", "1.04", "11.3", "99.4", "100", "1235", "0"]
        );
    }
}
