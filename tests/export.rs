//! Sparse export and inference end to end: a short DST run, `export` in both layouts, the CSR
//! round trip, sparse GPU inference against the masked model's evaluation logits, and every kind
//! of bad input refused before any GPU work.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use dst::checkpoint::Checkpoint;
use dst::export::infer::{self, Mode, Net};
use dst::export::{self, Csr, Layout, Value};
use dst::gpu::Gpu;
use dst::kernels::masked::ResetPolicy::{self, Floor, Paper};
use dst::kernels::Kernels;
use dst::train::{self, Quiet, RunOptions, TrainConfig};

fn gpu() -> Gpu {
    Gpu::from_env().unwrap_or_else(|e| panic!("export tests need an adapter: {e}"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dst-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// GPU work one test at a time (2-core machines).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// A checkpoint of a 1-epoch DST run of `model` on the first `limit` embedded images, trained once.
fn checkpoint(model: &'static str, limit: usize) -> PathBuf {
    static RUNS: OnceLock<Mutex<Vec<(&'static str, PathBuf)>>> = OnceLock::new();
    let runs = RUNS.get_or_init(|| Mutex::new(Vec::new()));
    let mut runs = runs.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = runs.iter().find(|(m, _)| *m == model) {
        return p.clone();
    }
    let out = tmp(&format!("run-{model}"));
    let cfg = TrainConfig {
        limit_train: Some(limit),
        epochs: 1,
        log_every: 5,
        ..TrainConfig::for_model(model).unwrap()
    };
    train::train(
        gpu(),
        &cfg,
        &RunOptions {
            out: out.clone(),
            resume: false,
            header: None,
        },
        &mut Quiet,
    )
    .unwrap();
    let p = out.join("checkpoint.safetensors");
    runs.push((model, p.clone()));
    p
}

/// The largest absolute difference between two sets of logits of the same length.
fn largest_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "logit counts");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn export_to(ck: &Path, layout: Layout, dir: &Path) -> (PathBuf, export::ExportReport) {
    let out = dir.join(format!("{}.safetensors", layout.name()));
    let r = export::export(ck, layout, &out).unwrap();
    assert_eq!(r.file_bytes, std::fs::metadata(&out).unwrap().len());
    (out, r)
}

#[test]
fn mask_rule_mirrors_the_trainer_reset() {
    // Row 0 keeps 1 of 4 (> 1%); a 10x10 matrix keeping 1 weight (1% <= 1%) is reset to dense.
    let w = [0.5f32, -0.1, 0.2, 0.0];
    let (m, r) = export::derive_mask(&w, &[0.3], 1, 4, 1, Paper);
    assert_eq!((m, r), (vec![true, false, false, false], 0));
    let mut w = vec![0.1f32; 100];
    w[7] = 0.9;
    w[50] = 0.0;
    let (m, r) = export::derive_mask(&w, &[0.5; 10], 10, 10, 1, Paper);
    assert_eq!(r, 1);
    assert_eq!(m.iter().filter(|&&k| k).count(), 99, "reset: |W| > 0 only");
    // Strict step: |W| - t == 0 is pruned.
    let (m, _) = export::derive_mask(&[0.25f32; 200], &[0.25, -1.0], 2, 100, 1, Paper);
    assert_eq!(m.iter().filter(|&&k| k).count(), 100);
}

/// The floor and `none` policies derive the masks training used: against the f64 reference's
/// `mask_reset_policy` on stacked matrices, one dying (floored: each row keeps its strongest
/// weight), one not (untouched), under every policy.
#[test]
fn mask_rule_follows_the_runs_reset_policy() {
    let (rows, cols, groups) = (8, 50, 2);
    let mut w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect();
    w[3 * cols + 7] = 2.0; // row 3's strongest
                           // Matrix 0 (rows 0-3): thresholds above every |w| (dying); matrix 1: a real mask.
    let t: Vec<f32> = (0..rows).map(|r| if r < 4 { 5.0 } else { 0.3 }).collect();
    for (policy, code) in [(Paper, 0), (Floor, 1), (ResetPolicy::None, 2)] {
        let (m, acted) = export::derive_mask(&w, &t, rows, cols, groups, policy);
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let t64: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let (p, _, counts, fired) =
            dst::reference::masked::mask_reset_policy(&w64, &t64, rows, cols, groups, code);
        let want: Vec<bool> = p.iter().map(|&v| v != 0.0).collect(); // P = W * M
        assert_eq!(m, want, "{policy:?}");
        assert_eq!(acted, fired.iter().filter(|&&f| f).count(), "{policy:?}");
        let kept0 = m[..4 * cols].iter().filter(|&&k| k).count() as u32;
        assert_eq!(kept0, counts[0][1], "{policy:?}");
        let expect0 = match policy {
            Paper => 4 * cols - (0..4 * cols).filter(|&i| w[i] == 0.0).count(),
            // Per row, what lies above 0.999 of its largest |w|: at least one weight each.
            Floor => (0..4)
                .map(|r| {
                    let row = &w[r * cols..(r + 1) * cols];
                    let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let n = row.iter().filter(|v| v.abs() - m * 0.999 > 0.0).count();
                    assert!(n >= 1);
                    n
                })
                .sum(),
            _ => 0,
        };
        assert_eq!(kept0 as usize, expect0, "{policy:?}");
        assert_eq!(acted, (policy != ResetPolicy::None) as usize, "{policy:?}");
    }
}

/// A `--reset floor` run's checkpoint is evaluated and exported under the floor, as it trained:
/// a layer it kept at <= 1 % keeps a weight per row in `eval` and in the export, where the
/// paper's reset (the old behaviour, and still the rule of a paper run) makes it dense.
#[test]
fn a_floor_runs_checkpoint_is_evaluated_and_exported_under_its_floor() {
    let _g = serial();
    let dir = tmp("floor");
    let mut ck = Checkpoint::load(&checkpoint("lenet300", 640)).unwrap();
    // fc2 dies: every threshold above every weight.
    let t = ck
        .tensors
        .iter_mut()
        .find(|t| t.0 == "fc2.threshold")
        .unwrap();
    t.2.fill(10.0);
    let mut cfg: TrainConfig = serde_json::from_str(ck.meta("config").unwrap()).unwrap();
    let paper = dir.join("paper.safetensors");
    ck.save(&paper).unwrap();
    cfg.reset = "floor".into();
    ck.metadata
        .insert("config".into(), serde_json::to_string(&cfg).unwrap());
    let floor = dir.join("floor.safetensors");
    ck.save(&floor).unwrap();
    let data = dst::data::load_embedded();
    let fc2_kept = |path: &Path| {
        let (_, layers, _) = train::evaluate_checkpoint(gpu(), path, &data).unwrap();
        let l = layers.iter().find(|l| l.name == "fc2").unwrap();
        let (e, r) =
            export::from_checkpoint(&Checkpoint::load(path).unwrap(), path, Layout::Csr).unwrap();
        let exported = r.layers.iter().find(|l| l.0 == "fc2.weight").unwrap().1;
        assert_eq!(
            e.get("fc2.weight")
                .unwrap()
                .dense()
                .iter()
                .filter(|&&v| v != 0.0)
                .count(),
            exported
        );
        (l.kept, exported as u64, r.policy)
    };
    // The floor keeps, per row, what lies above 0.999 of the row's largest |w| (f32): at least
    // one weight each.
    let w = &ck.get("fc2.weight").unwrap().2;
    let want: u64 = w
        .chunks(300)
        .map(|row| {
            let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            row.iter().filter(|v| v.abs() - m * 0.999 > 0.0).count() as u64
        })
        .sum();
    assert!((100..3000).contains(&want), "{want}");
    assert_eq!(
        fc2_kept(&floor),
        (want, want, Floor),
        "the floor's weights per row"
    );
    let (kept, exported, policy) = fc2_kept(&paper);
    assert_eq!(policy, Paper);
    assert!(
        kept > 29_000 && exported == kept,
        "reset to dense: {kept} {exported}"
    );
}

#[test]
fn lenet300_export_round_trips_and_infers_like_eval() {
    let _g = serial();
    let ck_path = checkpoint("lenet300", 640);
    let dir = tmp("l300");
    let (dense_path, dr) = export_to(&ck_path, Layout::Dense, &dir);
    let (csr_path, cr) = export_to(&ck_path, Layout::Csr, &dir);
    assert_eq!(dr.dense_f32_bytes, cr.dense_f32_bytes);
    assert_eq!(dr.dense_f32_bytes, 4 * (266_200 + 410));
    // A 1-epoch model is still mostly dense, so its CSR file is not smaller; the size is the
    // values (f32) and column indices (u16 for fc1, fc2; u8 for fc3) of the kept weights.
    let kept: Vec<usize> = cr.layers.iter().map(|l| l.1).collect();
    let payload = 6 * (kept[0] + kept[1]) + 5 * kept[2] + 4 * 410;
    assert!(cr.file_bytes as usize > payload && (cr.file_bytes as usize) < payload + 4096);

    // Dense: PyTorch names and layouts, masked weights, no thresholds or optimiser state.
    let dense = export::load(&dense_path).unwrap();
    let names: Vec<&str> = dense.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias"
        ]
    );
    assert_eq!(dense.get("fc1.weight").unwrap().shape, [300, 784]);
    let ck = Checkpoint::load(&ck_path).unwrap();
    for l in ["fc1", "fc2", "fc3"] {
        let w = &ck.get(&format!("{l}.weight")).unwrap().2;
        let t = &ck.get(&format!("{l}.threshold")).unwrap().2;
        let (rows, cols) = (t.len(), w.len() / t.len());
        let (mask, _) = export::derive_mask(w, t, rows, cols, 1, Paper);
        let want: Vec<f32> = w
            .iter()
            .zip(&mask)
            .map(|(&v, &m)| if m { v } else { 0.0 })
            .collect();
        assert_eq!(
            dense.get(&format!("{l}.weight")).unwrap().dense(),
            want,
            "{l}"
        );
        assert_eq!(
            dense.get(&format!("{l}.bias")).unwrap().dense(),
            ck.get(&format!("{l}.bias")).unwrap().2
        );
    }

    // CSR: the triplet, narrowest index types, shapes and order in the metadata; round trip.
    let csr = export::load(&csr_path).unwrap();
    for (d, c) in dense.entries.iter().zip(&csr.entries) {
        assert_eq!(d.name, c.name);
        assert_eq!(d.shape, c.shape);
        assert_eq!(
            d.dense(),
            c.dense(),
            "{}: CSR expands to the dense export",
            d.name
        );
        if let Value::Csr(m) = &c.value {
            let again = Csr::from_dense_where(m.rows, m.cols, &m.to_dense(), |r, col| {
                m.col[m.crow[r] as usize..m.crow[r + 1] as usize].contains(&(col as u32))
            });
            assert_eq!(&again, m);
        }
    }
    let bytes = std::fs::read(&csr_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    use safetensors::Dtype;
    assert_eq!(
        st.tensor("fc1.weight.col_indices").unwrap().dtype(),
        Dtype::U16
    );
    assert_eq!(
        st.tensor("fc3.weight.col_indices").unwrap().dtype(),
        Dtype::U8
    );
    assert_eq!(
        st.tensor("fc3.weight.crow_indices").unwrap().dtype(),
        Dtype::U16,
        "nnz 1000 > 255"
    );
    assert_eq!(st.tensor("fc1.weight.values").unwrap().dtype(), Dtype::F32);
    assert!(st.tensor("fc1.threshold").is_err());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["fc1.weight.shape"], "[300,784]");
    assert_eq!(meta["layout"], "csr");
    assert!(meta["order"].find("fc1.weight").unwrap() < meta["order"].find("fc3.bias").unwrap());

    // GPU: sparse inference from both files against the masked model's evaluation logits.
    let data = dst::data::load_embedded();
    let want = train::checkpoint_logits(gpu(), &ck_path, &data.test).unwrap();
    let (acc, _, _) = train::evaluate_checkpoint(gpu(), &ck_path, &data).unwrap();
    let g = gpu();
    let k = Kernels::new(&g, None).unwrap();
    for (what, e, mode, batch) in [
        ("csr sparse", &csr, Mode::Sparse, 500),
        ("csr sparse batch 7", &csr, Mode::Sparse, 7),
        ("dense-file sparse", &dense, Mode::Sparse, 64),
        ("dense-masked", &csr, Mode::DenseMasked, 500),
    ] {
        let net = Net::new(&g, k.clone(), e, mode).unwrap();
        let got = infer::logits(&g, &net, &data.test, batch).unwrap();
        let worst = largest_difference(&got, &want);
        assert!(worst <= 1e-5, "{what}: logits differ by {worst}");
        let (p, q) = (infer::predictions(&got, 10), infer::predictions(&want, 10));
        assert_eq!(p, q, "{what}: predictions");
        let correct = p
            .iter()
            .zip(&data.test.labels)
            .filter(|(p, &y)| **p == y as usize)
            .count();
        let a = 100.0 * correct as f64 / data.test.count as f64;
        assert!((a - acc).abs() < 1e-9, "{what}: accuracy {a} vs eval {acc}");
    }
}

#[test]
fn lenet5_exports_and_infers_with_sparse_fc_layers() {
    let _g = serial();
    let ck_path = checkpoint("lenet5", 256);
    let dir = tmp("l5");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let csr = export::load(&csr_path).unwrap();
    assert_eq!(csr.get("conv1.weight").unwrap().shape, [20, 1, 5, 5]);
    assert!(matches!(
        csr.get("conv2.weight").unwrap().value,
        Value::Csr(_)
    ));
    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(300);
    let want = train::checkpoint_logits(gpu(), &ck_path, &data.test).unwrap();
    let g = gpu();
    let net = Net::new(&g, Kernels::new(&g, None).unwrap(), &csr, Mode::Sparse).unwrap();
    let got = infer::logits(&g, &net, &data.test, 100).unwrap();
    let worst = largest_difference(&got, &want);
    assert!(worst <= 1e-5, "lenet5 logits differ by {worst}");
    assert_eq!(infer::predictions(&got, 10), infer::predictions(&want, 10));
}

/// LeNet-5's sparse inference computes a convolution that keeps at most the trainer's conv
/// switch ratio (CPU adapters: 50 %) from the lists of its kept weights, over the patch matrix,
/// and one that keeps more, or any on a GPU, densely: the same logits as the dense products on
/// the masked weights (`Mode::DenseMasked`), and the layer table says which convolution computes
/// how. conv2 is cut to its largest tenth of weights, one filter to none.
#[test]
fn lenet5_sparse_inference_computes_pruned_convolutions_from_their_kept_weights() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet5", 256)
    };
    let dir = tmp("l5-listed");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let mut e = export::load(&csr_path).unwrap();
    cut(&mut e, "conv2.weight", |filter, rank| {
        filter > 0 && rank >= 0.9
    });
    let g = gpu();
    let cpu = g.class == dst::gpu::AdapterClass::Cpu;
    assert_eq!(
        infer::listed_conv(g.class, e.get("conv2.weight").unwrap()),
        cpu
    );
    let conv1_kept = e.get("conv1.weight").unwrap().csr().nnz();
    assert!(conv1_kept > 250, "conv1 keeps {conv1_kept} of 500");
    assert!(!infer::listed_conv(g.class, e.get("conv1.weight").unwrap()));
    let table = infer::layer_table(&e, infer::Route::Sparse(g.class));
    assert!(
        table[0].ends_with("dense (conv on the masked weights)"),
        "{}",
        table[0]
    );
    let conv2_line = if cpu {
        "its kept weights only"
    } else {
        "dense (conv on the masked weights)"
    };
    assert!(table[1].ends_with(conv2_line), "{}", table[1]);
    // " of " in one column on every line (it wandered with the numbers' widths).
    let at: Vec<usize> = table.iter().map(|l| l.find(" of ").unwrap()).collect();
    assert!(at.iter().all(|&a| a == at[0]), "{table:#?}");

    let kernels = Kernels::new(&g, None).unwrap();
    let sparse = Net::new(&g, kernels.clone(), &e, Mode::Sparse).unwrap();
    let dense = Net::new(&g, kernels, &e, Mode::DenseMasked).unwrap();
    let listed = |net: &Net| {
        net.plan(&g, 100)
            .unwrap()
            .dispatches
            .iter()
            .filter(|d| d.label.contains("conv_forward_cols_listed"))
            .count()
    };
    assert_eq!(listed(&sparse), usize::from(cpu));
    assert_eq!(listed(&dense), 0);
    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(300);
    let got = infer::logits(&g, &sparse, &data.test, 100).unwrap();
    let want = infer::logits(&g, &dense, &data.test, 100).unwrap();
    let worst = largest_difference(&got, &want);
    assert!(worst <= 1e-5, "listed conv: logits differ by {worst}");
    assert_eq!(infer::predictions(&got, 10), infer::predictions(&want, 10));
}

/// `e`'s weight `name` with only the weights `keep(row, rank)` keeps (row: the output or filter;
/// rank: the fraction of the weight's magnitudes below its own), as CSR.
fn cut(e: &mut export::Export, name: &str, keep: impl Fn(usize, f64) -> bool) {
    let entry = e.entries.iter_mut().find(|x| x.name == name).unwrap();
    let rows = entry.shape[0];
    let cols: usize = entry.shape[1..].iter().product();
    let mut w = entry.dense();
    let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    mags.sort_by(|a, b| a.total_cmp(b));
    for (i, v) in w.iter_mut().enumerate() {
        let rank = mags.partition_point(|m| *m < v.abs()) as f64 / mags.len() as f64;
        if !keep(i / cols, rank) {
            *v = 0.0;
        }
    }
    entry.value = Value::Csr(Csr::from_dense(rows, cols, &w));
}

/// Each route of a fully connected layer (`infer::fc_route`) gives the dense products' logits
/// (`Mode::DenseMasked`) at batches 1, 7 and 64. With a CPU adapter's routes: fc1 cut to its
/// largest 3 % of weights (nearly every row keeps some) from CSR, its feature-major output
/// turned around for fc2, which keeps weights in 34 of its 100 rows (then in none): the
/// input-sparse product over the workgroups of rows that keep one; the logits dense. With a
/// GPU's: CSR throughout, feature-major between the layers. Each runs on any adapter
/// (`Net::for_class`). A batch cap that is not a whole block of the lists' 8 samples is lowered
/// to one.
#[test]
fn every_fc_route_gives_the_dense_products_logits() {
    use dst::gpu::AdapterClass::{Cpu, Gpu as GpuClass};
    use infer::FcRoute;
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("fc-routes");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let mut e = export::load(&csr_path).unwrap();
    cut(&mut e, "fc1.weight", |_, rank| rank >= 0.97);
    cut(&mut e, "fc2.weight", |row, _| row >= 66);
    let route = |e: &export::Export, class, name: &str| {
        infer::fc_route(class, e.get(&format!("{name}.weight")).unwrap())
    };
    assert_eq!(route(&e, Cpu, "fc1"), FcRoute::Csr);
    assert_eq!(route(&e, Cpu, "fc2"), FcRoute::InputSparse);
    assert_eq!(route(&e, Cpu, "fc3"), FcRoute::Dense);
    for name in ["fc1", "fc2", "fc3"] {
        assert_eq!(route(&e, GpuClass, name), FcRoute::Csr);
    }
    let table = infer::layer_table(&e, infer::Route::Sparse(Cpu));
    assert!(table[0].ends_with("sparse (CSR)"), "{}", table[0]);
    assert!(
        table[1].ends_with("its rows that keep a weight, the input's nonzeros"),
        "{}",
        table[1]
    );
    assert!(
        table[2].ends_with("dense (the masked weights)"),
        "{}",
        table[2]
    );

    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(130);
    let _g = serial();
    let g = gpu();
    let k = Kernels::new(&g, None).unwrap();
    let check = |e: &export::Export, what: &str| {
        let dense = Net::new(&g, k.clone(), e, Mode::DenseMasked).unwrap();
        let want = infer::logits(&g, &dense, &data.test, 64).unwrap();
        for (class, kernels) in [
            (
                Cpu,
                [
                    "csr_linear_fm",
                    "to_feature_major",
                    "ell_input_product_compacted",
                    "gemm",
                ],
            ),
            (
                GpuClass,
                [
                    "csr_linear_fm",
                    "csr_linear_fm",
                    "csr_linear",
                    "to_feature_major",
                ],
            ),
        ] {
            let net = Net::for_class(&g, k.clone(), e, Mode::Sparse, class).unwrap();
            let labels: Vec<String> = net
                .plan(&g, 64)
                .unwrap()
                .dispatches
                .iter()
                .map(|d| d.label.clone())
                .collect();
            for kernel in kernels {
                assert!(
                    labels.iter().any(|l| l.contains(kernel)),
                    "{what}, {class:?} routes: no {kernel} in {labels:?}"
                );
            }
            for batch in [1, 7, 64] {
                let got = infer::logits(&g, &net, &data.test, batch).unwrap();
                let worst = largest_difference(&got, &want);
                assert!(
                    worst <= 1e-5,
                    "{what}, {class:?} routes, batch {batch}: logits differ by {worst}"
                );
                assert_eq!(
                    infer::predictions(&got, 10),
                    infer::predictions(&want, 10),
                    "{what}, {class:?} routes, batch {batch}"
                );
            }
        }
    };
    check(&e, "fc2 in 34 rows");
    cut(&mut e, "fc2.weight", |_, _| false);
    assert_eq!(route(&e, Cpu, "fc2"), FcRoute::InputSparse);
    check(&e, "fc2 empty");

    // Bindings for 45 samples of fc1's 784 inputs (and fc2's 120,000 bytes of weights): the
    // lists take whole blocks of 8.
    let mut small = gpu();
    small.limits.max_storage_buffer_binding_size = 45 * 4 * 784;
    let net = Net::for_class(
        &small,
        Kernels::new(&small, None).unwrap(),
        &e,
        Mode::Sparse,
        Cpu,
    )
    .unwrap();
    assert_eq!(net.sample_floats(), 784);
    assert_eq!(net.max_batch(&small), 40);
    let got = infer::logits(&small, &net, &data.test, 45).unwrap();
    let dense = Net::new(&g, k.clone(), &e, Mode::DenseMasked).unwrap();
    let want = infer::logits(&g, &dense, &data.test, 64).unwrap();
    assert!(largest_difference(&got, &want) <= 1e-5);

    // `bench-infer --profile`: each dispatch of both modes, per batch size; with `--routes`,
    // the other adapter class's routes.
    let other = if g.class == Cpu { "gpu" } else { "cpu" };
    for routes in [None, Some(other)] {
        let file = csr_path.to_str().unwrap();
        let mut args = vec!["bench-infer", file, "--samples", "8", "--profile"];
        args.extend(routes.iter().flat_map(|r| ["--routes", r]));
        let (ok, out, err) = dst_cli(&args);
        assert!(ok, "{err}");
        let cpu_routes = (g.class == Cpu) == routes.is_none();
        assert_eq!(
            out.contains("sparse inference with the routes of a"),
            routes.is_some(),
            "{out}"
        );
        let (kernel, dispatches) = if cpu_routes {
            ("ell_input_product_compacted", 3 * 5)
        } else {
            // A GPU's sparse plan makes the input feature-major first, except at batch 1.
            ("csr_linear", 3 + 2 * 4)
        };
        // Batches 1, 64 and 1024.
        for (mode, kernel, dispatches) in [
            ("dense-masked", "gemm", 3 * 5),
            ("sparse", kernel, dispatches),
        ] {
            // "  sparse  3 sparse.csr_linear_fm   2636.1 us": mode, index, kernel, time.
            let lines: Vec<Vec<&str>> = out
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|w| w.len() == 5 && w[0] == mode && w[1].parse::<usize>().is_ok())
                .collect();
            assert_eq!(lines.len(), dispatches, "{routes:?} {mode}: {out}");
            assert!(
                lines.iter().any(|w| w[2].contains(kernel)),
                "{routes:?} {mode}: {out}"
            );
            assert!(
                lines
                    .iter()
                    .all(|w| w[4] == "us" && w[3].parse::<f64>().is_ok_and(|t| t > 0.0)),
                "{out}"
            );
        }
    }
    let (ok, _, err) = dst_cli(&["bench-infer", csr_path.to_str().unwrap(), "--routes", "tpu"]);
    assert!(!ok && err.contains("tpu"), "{err}");
}

/// A safetensors file's bytes with metadata `key` set to `value` (None: removed), the tensors
/// as they are.
fn with_metadata(bytes: &[u8], key: &str, value: Option<&str>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"].as_object_mut().unwrap();
    assert!(meta.contains_key(key), "{key}");
    match value {
        Some(v) => meta.insert(key.into(), v.into()),
        None => meta.remove(key),
    };
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    out
}

/// Writes `e` with a valid checksum (so the checks behind it are what refuses) and loads it.
fn reload(e: &export::Export, dir: &Path, name: &str) -> Result<export::Export, String> {
    let p = dir.join(name);
    std::fs::write(&p, export::serialize(e).unwrap()).unwrap();
    export::load(&p).map_err(|e| e.to_string())
}

fn refused(r: Result<export::Export, String>, needle: &str) {
    match r {
        Ok(_) => panic!("accepted; expected an error containing {needle:?}"),
        Err(e) => assert!(
            e.contains(needle),
            "error {e:?} does not mention {needle:?}"
        ),
    }
}

#[test]
fn bad_exports_are_refused_before_any_gpu_work() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("bad");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let bytes = std::fs::read(&csr_path).unwrap();
    let good = export::load(&csr_path).unwrap();
    assert!(reload(&good, &dir, "same.safetensors").is_ok());
    let at = |name: &str| dir.join(name);

    // Truncated.
    std::fs::write(at("short"), &bytes[..bytes.len() - 100]).unwrap();
    refused(
        export::load(&at("short")).map_err(|e| e.to_string()),
        "truncated, or bytes added after it?",
    );
    std::fs::write(at("tiny"), &bytes[..5]).unwrap();
    refused(
        export::load(&at("tiny")).map_err(|e| e.to_string()),
        "not a valid safetensors",
    );
    // Tampered: one byte of a weight value flipped.
    let mut t = bytes.clone();
    let n = t.len();
    t[n - 3] ^= 0x40;
    std::fs::write(at("tampered"), &t).unwrap();
    refused(
        export::load(&at("tampered")).map_err(|e| e.to_string()),
        "SHA-256",
    );
    // A training checkpoint, not an export.
    refused(
        export::load(&ck_path).map_err(|e| e.to_string()),
        "run `dst export`",
    );
    // Edited metadata, the tensors untouched: a CSR file relabelled dense (`dst infer` once
    // reported it as a dense export), or its size claim changed.
    for (key, value) in [("layout", "dense"), ("dense_f32_bytes", "1")] {
        std::fs::write(at("relabelled"), with_metadata(&bytes, key, Some(value))).unwrap();
        refused(
            export::load(&at("relabelled")).map_err(|e| e.to_string()),
            "its metadata (model, layout, order, shapes) does not match",
        );
    }
    // The metadata's hash deleted, and the metadata then edited: refused (a file without the
    // hash once loaded as an older export, so deleting it let any edit through).
    let bare = with_metadata(&bytes, "metadata_sha256", None);
    std::fs::write(at("older"), &bare).unwrap();
    refused(
        export::load(&at("older")).map_err(|e| e.to_string()),
        "metadata `metadata_sha256` is missing",
    );
    std::fs::write(at("older"), with_metadata(&bare, "layout", Some("dense"))).unwrap();
    refused(
        export::load(&at("older")).map_err(|e| e.to_string()),
        "metadata `metadata_sha256` is missing",
    );

    // Another model's tensors under this name, and an unknown model.
    let mut other = good.clone();
    other.model = "lenet5".into();
    refused(reload(&other, &dir, "other"), "conv1.weight is missing");
    other.model = "resnet9000".into();
    refused(reload(&other, &dir, "unknown"), "unknown model");
    other.model = "vgg16".into();
    refused(
        reload(&other, &dir, "cifar"),
        "tensor conv1.weight is missing (neither dense nor CSR): not an export of vgg16?",
    );
    // A wrong shape.
    let mut other = good.clone();
    other.entries[1].shape = vec![301];
    if let Value::Dense(v) = &mut other.entries[1].value {
        v.push(0.0);
    }
    refused(reload(&other, &dir, "shape"), "fc1.bias has shape [301]");

    // CSR triplets that break the rules.
    let edit = |f: &dyn Fn(&mut Csr)| {
        let mut e = good.clone();
        if let Value::Csr(c) = &mut e.entries[2].value {
            f(c);
        }
        e
    };
    let first_row_with = |c: &Csr, k: u32| {
        (0..c.rows)
            .find(|&r| c.crow[r + 1] - c.crow[r] >= k)
            .unwrap()
    };
    refused(
        reload(&edit(&|c| c.col[0] = c.cols as u32 + 5), &dir, "range"),
        "out of range",
    );
    refused(
        reload(
            &edit(&|c| {
                let r = first_row_with(c, 2);
                let j = c.crow[r] as usize;
                c.col.swap(j, j + 1);
            }),
            &dir,
            "order",
        ),
        "not strictly increasing",
    );
    refused(
        reload(
            &edit(&|c| {
                let r = first_row_with(c, 2);
                let j = c.crow[r] as usize;
                c.col[j + 1] = c.col[j];
            }),
            &dir,
            "dup",
        ),
        "not strictly increasing",
    );
    refused(
        reload(
            &edit(&|c| {
                let r = first_row_with(c, 1);
                c.crow[r + 1] = c.crow[r + 2] + 1;
            }),
            &dir,
            "crow",
        ),
        "crow_indices decreases",
    );
    refused(
        reload(
            &edit(&|c| {
                c.col.pop();
                c.val.pop();
            }),
            &dir,
            "nnz",
        ),
        "crow_indices ends at",
    );
    refused(
        reload(&edit(&|c| c.val[0] = f32::NAN), &dir, "nan"),
        "not finite",
    );

    // An LSTM export has no sparse inference: `Net` refuses it, naming where it runs.
    let err = infer::check_supported("lstm-a").unwrap_err().to_string();
    assert!(
        err.contains("runs in `dst infer` and `dst bench-infer` through the trainer's evaluation"),
        "{err}"
    );
}

#[test]
fn csr_parts_are_checked() {
    let ok = Csr::from_parts(2, 3, &[0, 1, 3], &[2, 0, 1], vec![1.0, 2.0, 3.0]).unwrap();
    assert_eq!(ok.to_dense(), [0.0, 0.0, 1.0, 2.0, 3.0, 0.0]);
    assert_eq!(Csr::from_dense(2, 3, &ok.to_dense()), ok);
    let empty = Csr::from_parts(3, 4, &[0, 0, 0, 0], &[], vec![]).unwrap();
    assert_eq!(empty.to_dense(), vec![0.0; 12]);
    for (crow, col, what) in [
        (&[0u64, 1][..], &[0u64][..], "entries, expected rows + 1"),
        (&[1, 1, 3], &[2, 0, 1], "crow_indices[0] is 1"),
        (&[0, 1, 2], &[2, 0, 1], "crow_indices ends at 2"),
        (&[0, 1, 3], &[3, 0, 1], "out of range"),
        (&[0, 1, 3], &[2, 1, 1], "not strictly increasing"),
        (&[0, 1, 3], &[2, 2, 0], "not strictly increasing"),
    ] {
        let e = Csr::from_parts(2, 3, crow, col, vec![1.0; col.len()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e:?} vs {what:?}");
    }
}

#[test]
fn the_cli_refuses_bad_files_with_a_message() {
    let dir = tmp("cli");
    let dst = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let short = dir.join("short.safetensors");
    std::fs::write(&short, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let (ok, err) = dst(&["infer", short.to_str().unwrap()]);
    assert!(!ok && err.contains("truncated or damaged"), "{err}");
    assert!(
        !err.contains("adapter"),
        "refused before opening the GPU: {err}"
    );
    let (ok, err) = dst(&[
        "export",
        short.to_str().unwrap(),
        "--format",
        "coo",
        "--out",
        "x",
    ]);
    assert!(!ok && err.contains("unknown export format"), "{err}");
}

#[test]
fn lstm_exports_with_nn_lstm_names_and_per_gate_resets() {
    // A synthetic lstm-a checkpoint: gate i of lstm1.weight_ih keeps nothing (reset: dense), the
    // other gates keep what |W| > t keeps.
    let h = 128;
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), "lstm-a".into());
    ck.metadata.insert("masked".into(), "true".into());
    let mut rng = dst::rng::Rng::new(3);
    let mut add = |name: &str, shape: &[usize], v: Option<f32>| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| v.unwrap_or_else(|| rng.range(-1.0, 1.0) as f32))
            .collect();
        ck.tensors.push((name.to_string(), shape.to_vec(), data));
    };
    for (l, i) in [("lstm1", 28), ("lstm2", h)] {
        add(&format!("{l}.weight_ih"), &[4 * h, i], None);
        add(&format!("{l}.weight_hh"), &[4 * h, h], None);
        add(&format!("{l}.bias"), &[4 * h], Some(0.5));
        add(&format!("{l}.threshold_hh"), &[4 * h], Some(0.5));
    }
    let mut t = vec![0.5f32; 4 * h];
    t[..h].fill(2.0); // gate i of lstm1.weight_ih: nothing above 2 -> reset
    add("lstm2.threshold_ih", &[4 * h], Some(0.5));
    add("fc.weight", &[10, h], None);
    add("fc.bias", &[10], Some(0.0));
    ck.tensors
        .push(("lstm1.threshold_ih".into(), vec![4 * h], t));
    let path = Path::new("synthetic");
    let (e, report) = export::from_checkpoint(&ck, path, Layout::Csr).unwrap();
    assert_eq!(report.resets, 1);
    let names: Vec<&str> = e.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lstm1.weight_ih_l0",
            "lstm1.weight_hh_l0",
            "lstm1.bias_ih_l0",
            "lstm1.bias_hh_l0",
            "lstm2.weight_ih_l0",
            "lstm2.weight_hh_l0",
            "lstm2.bias_ih_l0",
            "lstm2.bias_hh_l0",
            "fc.weight",
            "fc.bias"
        ]
    );
    let w = e.entries[0].csr();
    let gate_i = w.crow[h] as usize;
    assert_eq!(gate_i, h * 28, "the reset gate keeps every non-zero weight");
    assert!(matches!(e.get("fc.weight").unwrap().value, Value::Dense(_)));
    assert_eq!(e.get("lstm1.bias_hh_l0").unwrap().dense(), vec![0.0; 4 * h]);
    let dir = tmp("lstm");
    let back = reload(&e, &dir, "lstm.safetensors").unwrap();
    assert_eq!(back.entries[0].csr(), w);
    assert!(infer::check_supported(&back.model).is_err());
}

/// Writes `count` images (`side` x `side`, pixels from the embedded test set, cycled) and labels
/// as the raw IDX files `names` (images, labels) in `dir`.
fn write_idx(dir: &Path, names: [&str; 2], count: usize, rows: usize, cols: usize) {
    let src = dst::data::load_embedded().test;
    let mut img = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        img.extend((d as u32).to_be_bytes());
    }
    let px = rows * cols;
    img.extend((0..count * px).map(|i| src.images[i % src.images.len()]));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((count as u32).to_be_bytes());
    lab.extend(&src.labels[..count]);
    std::fs::write(dir.join(names[0]), img).unwrap();
    std::fs::write(dir.join(names[1]), lab).unwrap();
}

const TRAIN: [&str; 2] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"];
const TEST: [&str; 2] = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Runs the binary: (success, stdout, stderr).
fn dst_cli(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn images_of_another_size_are_refused_before_any_gpu_work() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("32px");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let data = dir.join("mnist32");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, TRAIN, 20, 32, 32);
    write_idx(&data, TEST, 20, 32, 32);
    let (file, data) = (csr_path.to_str().unwrap(), data.to_str().unwrap());
    for cmd in ["infer", "bench-infer"] {
        let mut args = vec![cmd, file, "--data", data];
        if cmd == "bench-infer" {
            args.extend(["--samples", "8"]);
        }
        let (ok, out, err) = dst_cli(&args);
        assert!(!ok, "{cmd} accepted 32x32 images");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        assert!(
            err.contains(&format!("{data}: 32x32 images, lenet300 expects 28x28")),
            "{cmd}: {err}"
        );
        assert!(
            !out.contains("adapter") && !err.contains("adapter"),
            "{cmd}: GPU opened: {out} {err}"
        );
    }
    // A CIFAR-10 folder: the model is named in both commands (bench-infer said "the model").
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for f in dst::data::cifar::FILES {
        std::fs::write(cifar.join(f), vec![0u8; dst::data::cifar::RECORD]).unwrap();
    }
    for cmd in ["infer", "bench-infer"] {
        let (ok, _, err) = dst_cli(&[cmd, file, "--data", cifar.to_str().unwrap()]);
        assert!(
            !ok && err.contains("holds CIFAR-10, but lenet300 trains on MNIST"),
            "{cmd}: {err}"
        );
    }
    // The library: an error, not a panic in the upload.
    let _g = serial();
    let ds = dst::data::load_dir(Path::new(data)).unwrap().test;
    let g = gpu();
    let e = export::load(&csr_path).unwrap();
    let net = Net::new(&g, Kernels::new(&g, None).unwrap(), &e, Mode::Sparse).unwrap();
    let err = infer::throughput(&g, &net, &ds, 4, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("32x32 images"), "{err}");

    // 7x112 images hold 784 values, as 28x28 ones do: refused by their shape, in inference,
    // evaluation and training (they once trained as 28x28 images).
    let odd = dir.join("mnist7x112");
    std::fs::create_dir_all(&odd).unwrap();
    write_idx(&odd, TRAIN, 20, 7, 112);
    write_idx(&odd, TEST, 20, 7, 112);
    let odd = odd.to_str().unwrap();
    let (ok, _, err) = dst_cli(&["infer", file, "--data", odd]);
    assert!(
        !ok && err.contains("7x112 images, lenet300 expects 28x28")
            && err.contains("in another shape")
            && !err.contains("got 784"),
        "{err}"
    );
    let ck = ck_path.to_str().unwrap();
    // eval: the folder named, before the adapter opens.
    let (ok, _, err) = dst_cli(&["eval", "--checkpoint", ck, "--data", odd]);
    assert!(
        !ok && err.contains(&format!("{odd}: 7x112 images, lenet300 expects 28x28"))
            && !err.contains("adapter"),
        "eval: {err}"
    );
    let out = dir.join("odd-run");
    let (ok, _, err) = dst_cli(&["train", "--data", odd, "--out", out.to_str().unwrap()]);
    assert!(
        !ok && err.contains("1x7x112 images") && err.contains("expects 1x28x28"),
        "train: {err}"
    );
    assert!(!out.exists(), "a refused run leaves no folder");
}

#[test]
fn infer_reads_only_the_test_files_and_lists_every_masked_layer() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet5", 256)
    };
    let dir = tmp("l5-cli");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let e = export::load(&csr_path).unwrap();
    let table = infer::layer_table(&e, infer::Route::Sparse(gpu().class));
    let names: Vec<&str> = table
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["conv1.weight", "conv2.weight", "fc3.weight", "fc4.weight"]
    );
    let conv2 = e.get("conv2.weight").unwrap().csr().nnz();
    // The numbers right-aligned in their columns: "24970 of  25000 kept".
    let words: Vec<&str> = table[1].split_whitespace().collect();
    assert!(
        words
            .windows(4)
            .any(|w| w == [conv2.to_string().as_str(), "of", "25000", "kept"]),
        "{}",
        table[1]
    );
    assert!(table[1].contains("50 x 20 x 5 x 5"), "{}", table[1]);

    // A folder with only the two t10k files.
    let data = dir.join("t10k-only");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, TEST, 40, 28, 28);
    let file = csr_path.to_str().unwrap();
    let (ok, out, err) = {
        let _g = serial();
        dst_cli(&[
            "infer",
            file,
            "--data",
            data.to_str().unwrap(),
            "--batch",
            "16",
        ])
    };
    assert!(ok, "{err}");
    for n in names {
        assert!(out.contains(n), "{n} not listed: {out}");
    }
    let last = out.lines().last().unwrap();
    assert!(
        last.contains(&format!(
            "on the 40 test images of {} (IDX files in MNIST's format, not MNIST's own: their \
             SHA-256 differ from MNIST's), sparse",
            data.display()
        )),
        "{last}"
    );
    assert!(
        !last.contains("train") && last.split_whitespace().filter(|w| *w == "40").count() == 1,
        "{last}"
    );
    // The embedded subset, named once.
    let l = infer::load_test(None).unwrap();
    assert_eq!(
        (l.images.count, l.source.as_str()),
        (2000, "the embedded MNIST subset")
    );

    // Test files missing: a clear refusal naming them.
    std::fs::remove_file(data.join(TEST[1])).unwrap();
    let err = infer::load_test(Some(&data)).err().unwrap().to_string();
    assert!(
        err.contains("missing MNIST test file(s): t10k-labels-idx1-ubyte"),
        "{err}"
    );
}

#[test]
fn a_batch_larger_than_the_adapter_allows_is_capped_with_the_same_logits() {
    let _g = serial();
    let ck_path = checkpoint("lenet5", 256);
    let dir = tmp("cap");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let e = export::load(&csr_path).unwrap();
    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(200);
    let g = gpu();
    let net = Net::new(&g, Kernels::new(&g, None).unwrap(), &e, Mode::Sparse).unwrap();
    let want = infer::logits(&g, &net, &data.test, 20).unwrap();
    // An adapter with 4 MiB bindings. What bounds the batch: on a CPU adapter conv2's patch
    // matrix, 20 x 5 x 5 rows of 8 x 8 positions per image; on a GPU conv1's output, 20 x 24 x 24
    // f32 per image.
    let mut small = gpu();
    small.limits.max_storage_buffer_binding_size = 4 << 20;
    let net = Net::new(
        &small,
        Kernels::new(&small, None).unwrap(),
        &e,
        Mode::Sparse,
    )
    .unwrap();
    let per_image = if small.class == dst::gpu::AdapterClass::Cpu {
        500 * 8 * 8
    } else {
        20 * 24 * 24
    };
    assert_eq!(net.sample_floats(), per_image);
    let most = (4 << 20) / (4 * per_image);
    assert_eq!(net.max_batch(&small), most);
    assert!(infer::batch_note(&small, &net, 200, "--batch 200")
        .unwrap()
        .contains(&format!("running {most} images at a time")));
    assert!(infer::batch_note(&small, &net, most, &format!("--batch {most}")).is_none());
    let got = infer::logits(&small, &net, &data.test, 200).unwrap();
    let worst = largest_difference(&got, &want);
    assert!(worst <= 1e-5, "capped batch: logits differ by {worst}");
    assert_eq!(infer::predictions(&got, 10), infer::predictions(&want, 10));
}

#[test]
fn a_bad_shape_in_the_metadata_is_printed_plainly() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("meta");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let mut e = export::load(&csr_path).unwrap();
    e.entries[0].shape = vec![300, 884]; // only the metadata `fc1.weight.shape` changes
    let err = reload(&e, &dir, "shape884").err().unwrap();
    assert!(
        err.contains("metadata `fc1.weight.shape` is [300,884], lenet300 expects [300, 784]"),
        "{err}"
    );
    assert!(!err.contains("Some("), "{err}");
    // Sparse inference's refusal of an LSTM names where its exports run.
    let err = infer::check_supported("lstm-b").unwrap_err().to_string();
    assert!(
        err.starts_with("sparse inference runs lenet300 and lenet5 exports")
            && err.contains("an export of lstm-b runs in `dst infer` and `dst bench-infer`"),
        "{err}"
    );
}

/// A synthetic LSTM-a export without zeros (as a dense run's): `dst infer` classifies with it
/// through the trainer's dense kernels and says so; `dst bench-infer` compares the dense model
/// with the masked one and says that `dst infer` runs the dense one.
#[test]
fn lstm_exports_infer_densely_and_bench_infer_compares_evaluations() {
    let e = lstm_export(1.0, 1);
    assert!(!has_zeros(&e));
    let p = tmp("lstm-cli").join("lstm-a.safetensors");
    std::fs::write(&p, export::serialize(&e).unwrap()).unwrap();
    let (ok, out, err) = {
        let _g = serial();
        dst_cli(&["infer", p.to_str().unwrap(), "--batch", "7"])
    };
    assert!(ok, "{err}");
    assert!(
        err.contains("note: --batch 7 is not used: lstm-a has no sparse inference kernels"),
        "{err}"
    );
    // Why its gate matrices compute dense: they keep every weight (a CPU adapter), or the
    // adapter is a GPU.
    assert!(
        out.contains(
            "on the 2000 test images of the embedded MNIST subset, dense inference (the masked \
             weights, zeros included, through the trainer's kernels: lstm-a has no sparse \
             inference kernels, and "
        ) && out.contains(") of lstm-a (csr export of a dense run)")
            && (out.contains(
                "none of its gate matrices keeps at most 5% of its weights, where the trainer's \
                 products from kept weights take over"
            ) || out.contains("on a GPU the trainer computes its gate matrices dense")),
        "{out}"
    );
    assert_eq!(
        out.matches("dense (the masked weights)").count(),
        4,
        "{out}"
    );
    assert!(!out.contains("fc.weight"), "the head has no mask: {out}");
    let (ok, out, err) = {
        let _g = serial();
        dst_cli(&["bench-infer", p.to_str().unwrap(), "--samples", "100"])
    };
    assert!(ok, "{err}");
    // What it is about to time, on stderr (a large model on a CPU adapter is minutes a round).
    assert!(
        err.contains("an untimed round of each model over the 100 images, then 3 timed rounds"),
        "{err}"
    );
    for flag in [&["--profile"][..], &["--routes", "cpu"]] {
        let mut args = vec!["bench-infer", p.to_str().unwrap()];
        args.extend(flag);
        let (ok, _, refused) = dst_cli(&args);
        let want = format!(
            "{} is for sparse inference: lstm-a has no sparse inference kernels",
            flag[0]
        );
        assert!(!ok && refused.contains(&want), "{refused}");
    }
    assert!(
        out.contains(
            "lstm-a (csr export of a dense run) has no sparse inference kernels: the trainer's \
             evaluation of \
             the dense model against the masked one, batches of 100, 100 test images of the \
             embedded MNIST subset"
        ) && out.contains("`dst infer` runs this export as the dense model"),
        "{out}"
    );
    assert_eq!(out.matches("dense, masked").count(), 4, "{out}");
    // More --samples than test images: all of them, said so.
    let few = tmp("lstm-few");
    write_idx(&few, TEST, 20, 28, 28);
    let (ok, few_out, err) = {
        let _g = serial();
        dst_cli(&[
            "bench-infer",
            p.to_str().unwrap(),
            "--samples",
            "50",
            "--data",
            few.to_str().unwrap(),
        ])
    };
    assert!(ok, "{err}");
    assert!(
        few_out.contains(&format!(
            "20 test images of {} (IDX files in MNIST's format, not MNIST's own: their SHA-256 \
             differ from MNIST's) (all of them: fewer than --samples 50)",
            few.display()
        )),
        "{few_out}"
    );
    // The spread of the rounds' speed-ups is shown with the best of each mode's.
    let spread = out
        .lines()
        .find_map(|l| l.strip_prefix("speedup of each round: "))
        .expect(&out);
    let (lo, hi) = spread.split_once(" to ").expect(spread);
    let x = |t: &str| {
        t.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<f64>()
    };
    let (lo, hi) = (
        x(lo).expect(spread),
        x(hi.split('x').next().unwrap()).expect(spread),
    );
    assert!(0.0 < lo && lo <= hi, "{spread}");
}

/// Whether a gate matrix of the LSTM export `e` has a zero weight.
fn has_zeros(e: &export::Export) -> bool {
    e.entries
        .iter()
        .filter(|x| x.name.contains(".weight_"))
        .any(|x| x.csr().nnz() < x.shape.iter().product::<usize>())
}

/// A synthetic LSTM-a export: U(-0.4, 0.4) weights, each gate matrix keeping about `keep` of
/// them (the others exactly 0), the head dense.
fn lstm_export(keep: f64, seed: u64) -> export::Export {
    let mut state = seed;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), "lstm-a".into());
    for s in export::model_params("lstm-a").unwrap() {
        let n = s.shape.iter().product();
        let v = (0..n)
            .map(|_| {
                let w = ((uniform() - 0.5) * 0.8) as f32;
                let kept = s.threshold.is_none() || uniform() < keep;
                if kept && w != 0.0 {
                    w
                } else if kept {
                    0.25
                } else {
                    0.0
                }
            })
            .collect();
        ck.tensors.push((s.name.to_string(), s.shape.clone(), v));
    }
    export::from_checkpoint(&ck, Path::new("lstm"), Layout::Csr)
        .unwrap()
        .0
}

/// An LSTM-a export keeping 3 % of each gate matrix (under the 5 % at which a CPU adapter's
/// trainer runs the LSTM's products over the kept weights): its masked checkpoint (every
/// threshold 0) computes the dense model's logits; on a CPU adapter `dst infer` runs it so and
/// marks the layers; `dst bench-infer` gives both evaluations' logits within float rounding.
#[test]
fn a_pruned_lstm_export_infers_from_its_kept_weights() {
    let e = lstm_export(0.03, 7);
    assert!(has_zeros(&e));
    let masked = export::to_masked_checkpoint(&e).unwrap();
    assert_eq!(masked.meta("masked"), Some("true"));
    for part in ["ih", "hh"] {
        let (_, shape, t) = masked.get(&format!("lstm2.threshold_{part}")).unwrap();
        assert_eq!(
            (shape.as_slice(), t.iter().all(|&t| t == 0.0)),
            (&[512][..], true)
        );
    }
    let table = infer::layer_table(&e, infer::Route::Masked(dst::gpu::AdapterClass::Cpu));
    assert_eq!(table.len(), 4, "{table:?}");
    for line in &table {
        assert!(line.ends_with("its kept weights only"), "{line}");
    }
    let table = infer::layer_table(&e, infer::Route::Masked(dst::gpu::AdapterClass::Gpu));
    assert!(
        table.iter().all(|l| l.ends_with("dense, masked")),
        "{table:?}"
    );

    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(200);
    let p = tmp("lstm-pruned").join("lstm-a.safetensors");
    std::fs::write(&p, export::serialize(&e).unwrap()).unwrap();
    let _g = serial();
    let g = gpu();
    let on_cpu = g.class == dst::gpu::AdapterClass::Cpu;
    assert_eq!(infer::masked_evaluation(&g, &e), on_cpu);
    let dense = export::to_checkpoint(&e).unwrap();
    let (want, _) = train::restored_logits(g, &dense, &p, &data.test, &mut |_| {}).unwrap();
    let (got, _) = train::restored_logits(gpu(), &masked, &p, &data.test, &mut |_| {}).unwrap();
    assert_eq!(got.len(), 2000);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "logits differ by {worst}");
    assert!(
        want.iter().any(|&l| l.abs() > 1e-3),
        "the logits say something"
    );

    let (ok, out, err) = dst_cli(&["infer", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    if on_cpu {
        assert!(
            out.contains(
                "masked inference (the trainer's masked evaluation: the layers marked \
                          above compute from their kept weights only) of lstm-a (csr export)"
            ),
            "{out}"
        );
        assert_eq!(out.matches("its kept weights only").count(), 4, "{out}");
    }
    let (ok, out, err) = dst_cli(&["bench-infer", p.to_str().unwrap(), "--samples", "100"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.contains("`dst infer` runs this export as the dense model"),
        !on_cpu,
        "{out}"
    );
    let mut lines = out.lines().skip_while(|l| !l.contains("max |dlogit|"));
    let row = lines.nth(1).unwrap();
    let diff: f32 = row.split_whitespace().last().unwrap().parse().unwrap();
    assert!(diff <= 1e-4, "{row}");
}

/// A trained LSTM-a's export, run by `dst infer`'s dense path (`to_checkpoint`: nn.LSTM's two
/// biases summed back into the trainer's one), gives the checkpoint's evaluation logits.
#[test]
fn lstm_export_infers_like_eval() {
    let _g = serial();
    let ck_path = checkpoint("lstm-a", 200);
    let dir = tmp("lstm-eval");
    let mut data = dst::data::load_embedded();
    data.test = data.test.limit(300);
    let want = train::checkpoint_logits(gpu(), &ck_path, &data.test).unwrap();
    for layout in [Layout::Dense, Layout::Csr] {
        let (path, report) = export_to(&ck_path, layout, &dir);
        assert_eq!(report.layers.len(), 4, "lstm1/2 weight_ih, weight_hh");
        let e = export::load(&path).unwrap();
        let ck = export::to_checkpoint(&e).unwrap();
        assert_eq!(ck.meta("masked"), Some("false"));
        let (got, _) = train::restored_logits(gpu(), &ck, &path, &data.test, &mut |_| {}).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{}: logits differ by {worst}", layout.name());
    }
}

/// The export's tensor list of every model is the trainer's: each parameter (thresholds aside)
/// and each non-trainable state, with its shape, under the name the export reads it by.
#[test]
fn every_models_export_lists_the_trainers_tensors() {
    let _g = serial();
    let g = gpu();
    for info in dst::models::MODELS {
        let specs = export::model_params(info.name).unwrap();
        let model = dst::models::Model::build(&g, info.name, true, 0, false).unwrap();
        let layout = &model.arena.layout;
        let mut trainer: Vec<(String, Vec<usize>)> = layout
            .entries
            .iter()
            .filter(|e| !e.name.contains(".threshold"))
            .chain(&layout.states)
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        let mut ours: Vec<(String, Vec<usize>)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect();
        // In layer order: the parameters as the arena declares them, the states likewise.
        let is_state = |n: &str| layout.find_state(n).is_some();
        let params: Vec<&String> = ours.iter().map(|e| &e.0).filter(|n| !is_state(n)).collect();
        let states: Vec<&String> = ours.iter().map(|e| &e.0).filter(|n| is_state(n)).collect();
        let arena_params: Vec<&String> = layout
            .entries
            .iter()
            .map(|e| &e.name)
            .filter(|n| !n.contains(".threshold"))
            .collect();
        let arena_states: Vec<&String> = layout.states.iter().map(|e| &e.name).collect();
        assert_eq!(
            (params, states),
            (arena_params, arena_states),
            "{}",
            info.name
        );
        trainer.sort();
        ours.sort();
        assert_eq!(ours, trainer, "{}", info.name);
        // Every masked weight names the threshold the trainer declares for it.
        for s in specs.iter().filter(|s| s.threshold.is_some()) {
            let t = s.threshold.as_deref().unwrap();
            let e = layout
                .find(t)
                .unwrap_or_else(|| panic!("{}: no {t}", info.name));
            assert_eq!(e.shape, [s.shape[0]], "{t}");
        }
        let masked = layout
            .entries
            .iter()
            .filter(|e| e.name.contains(".threshold"))
            .count();
        assert_eq!(
            specs.iter().filter(|s| s.threshold.is_some()).count(),
            masked,
            "{}",
            info.name
        );
    }
}

/// `dst infer --out` (sparse path): one CSV row per test image with its label, the class of its
/// largest logit and the logits of sparse inference; a second run replaces the file; a file it
/// did not write, a folder and a place it cannot write are refused before any GPU work, left as
/// they were.
#[test]
fn infer_writes_predictions_and_replaces_only_its_own_file() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("pred");
    let (csr_path, _) = export_to(&ck_path, Layout::Csr, &dir);
    let file = csr_path.to_str().unwrap();
    let pred = dir.join("pred.csv");
    let want = {
        let _g = serial();
        let g = gpu();
        let e = export::load(&csr_path).unwrap();
        let net = Net::new(&g, Kernels::new(&g, None).unwrap(), &e, Mode::Sparse).unwrap();
        infer::logits(&g, &net, &infer::load_test(None).unwrap().images, 500).unwrap()
    };
    let labels = infer::load_test(None).unwrap().images.labels;
    for _ in 0..2 {
        let (ok, out, err) = {
            let _g = serial();
            dst_cli(&["infer", file, "--out", pred.to_str().unwrap()])
        };
        assert!(ok, "{err}");
        assert!(
            out.ends_with(&format!("predictions: {}\n", pred.display())),
            "{out}"
        );
        let csv = std::fs::read_to_string(&pred).unwrap();
        let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows[0][..4], ["index", "label", "prediction", "logit_0"]);
        assert_eq!(rows.len(), 2001);
        let mut correct = 0;
        for (i, r) in rows[1..].iter().enumerate() {
            let logits: Vec<f32> = r[3..].iter().map(|v| v.parse().unwrap()).collect();
            assert_eq!(logits, want[i * 10..i * 10 + 10], "image {i}");
            assert_eq!(r[1], labels[i].to_string());
            let p: usize = r[2].parse().unwrap();
            assert!(logits.iter().all(|&v| v <= logits[p]), "image {i}: {r:?}");
            correct += (p == labels[i] as usize) as usize;
        }
        let acc = format!("test accuracy {:.2}%", 100.0 * correct as f64 / 2000.0);
        assert!(out.contains(&acc), "{acc}: {out}");
    }
    // What `dst infer` wrote reads as its own; a file that only begins like it does not (its
    // header alone is a common one: such a file was replaced).
    let csv = std::fs::read_to_string(&pred).unwrap();
    assert!(infer::is_predictions_file(&csv));
    let mut edited = csv.clone();
    edited.push_str("my notes\n");
    assert!(!infer::is_predictions_file(&edited));
    let theirs = dir.join("theirs.csv");
    std::fs::write(&theirs, "index,label,prediction\nimportant\n").unwrap();
    let other = dir.join("notes.txt");
    std::fs::write(&other, "keep me").unwrap();
    let nowhere = dir.join("no-such-folder").join("p.csv");
    let slash = PathBuf::from(format!("{}/", dir.join("new-folder").display()));
    // A folder that takes no new file, for root too (CI runs as root): sysfs's top.
    let unwritable = PathBuf::from("/sys/dst-predictions.csv");
    let mut cases = vec![
        (&other, "is not a predictions file of `dst infer`"),
        (&theirs, "is not a predictions file of `dst infer`"),
        (&dir, "is a folder"),
        (&csr_path, "is not a predictions file of `dst infer`"),
        (&nowhere, "no-such-folder does not exist"),
        (&slash, "names a folder"),
    ];
    // "-" (standard output elsewhere): refused, not a file named "-" in the working folder.
    let dash = PathBuf::from("-");
    cases.push((&dash, "--out -: the predictions go to a file"));
    let under_file = other.join("p.csv");
    let in_the_way = format!("cannot exist: {} is a file", other.display());
    cases.push((&under_file, &in_the_way));
    // A symbolic link to nothing (it stays as it was).
    let dangling = dir.join("dangling.csv");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("nowhere.csv"), &dangling).unwrap();
        cases.push((&dangling, "nowhere.csv, which does not exist"));
    }
    // (Where /sys is not mounted sysfs and takes files, that case is left out.)
    let sys_refuses = std::fs::File::create("/sys/.dst-probe").is_err();
    let _ = std::fs::remove_file("/sys/.dst-probe");
    if cfg!(target_os = "linux") && sys_refuses {
        cases.push((&unwritable, "/sys/dst-predictions.csv: cannot write there"));
    }
    for (target, needle) in cases {
        let (ok, out, err) = dst_cli(&["infer", file, "--out", target.to_str().unwrap()]);
        assert!(!ok && err.contains(needle), "{err}");
        assert!(
            !err.contains("adapter") && !out.contains("adapter"),
            "GPU opened: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
    assert!(!dir.join("nowhere.csv").exists());
    assert!(!Path::new("-").exists());
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "index,label,prediction\nimportant\n"
    );
    assert!(export::load(&csr_path).is_ok());
}

/// A CIFAR-10 model's export (a synthetic WRN-16-1 checkpoint): batch norms carry
/// `num_batches_tracked` (an I64 scalar, the checkpoint's step) after their running variance;
/// a re-signed file whose counter is missing, not an I64 scalar or negative, or whose running
/// variance is negative, is refused naming the tensor.
#[test]
fn batch_norm_counters_travel_and_are_checked() {
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), "wrn-16-1".into());
    ck.metadata.insert("masked".into(), "true".into());
    ck.metadata.insert("step".into(), "42".into());
    for s in export::model_params("wrn-16-1").unwrap() {
        let n: usize = s.shape.iter().product();
        ck.tensors
            .push((s.name.clone(), s.shape.clone(), vec![0.25; n]));
        if let Some(t) = &s.threshold {
            ck.tensors
                .push((t.clone(), vec![s.shape[0]], vec![0.1; s.shape[0]]));
        }
    }
    let (e, report) = export::from_checkpoint(&ck, Path::new("wrn"), Layout::Csr).unwrap();
    assert_eq!(
        report.layers.len(),
        16,
        "conv1, 12 block convs, 2 shortcuts, fc"
    );
    let names: Vec<&str> = e.entries.iter().map(|e| e.name.as_str()).collect();
    let at = names
        .iter()
        .position(|n| *n == "block2_1.bn1.running_var")
        .unwrap();
    assert_eq!(names[at + 1], "block2_1.bn1.num_batches_tracked");
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with("num_batches_tracked"))
            .count(),
        13
    );
    assert!(matches!(e.entries[at + 1].value, Value::Int(42)));
    let dir = tmp("bn-counters");
    let back = reload(&e, &dir, "ok").unwrap();
    assert!(matches!(back.entries[at + 1].value, Value::Int(42)));
    assert_eq!(back.entries.len(), e.entries.len());

    let with = |f: &dyn Fn(&mut export::Export)| {
        let mut x = e.clone();
        f(&mut x);
        x
    };
    let counter = "block2_1.bn1.num_batches_tracked";
    refused(
        reload(
            &with(&|x| {
                x.entries.remove(at + 1);
            }),
            &dir,
            "gone",
        ),
        &format!("tensor {counter} is missing"),
    );
    refused(
        reload(
            &with(&|x| x.entries[at + 1].value = Value::Dense(vec![42.0])),
            &dir,
            "f32",
        ),
        "expected an I64 scalar",
    );
    refused(
        reload(
            &with(&|x| x.entries[at + 1].value = Value::Int(-1)),
            &dir,
            "neg",
        ),
        "never negative",
    );
    refused(
        reload(
            &with(&|x| x.entries[at].value = Value::Dense(vec![-1.0; 16])),
            &dir,
            "var",
        ),
        "block2_1.bn1.running_var[0] is negative",
    );
}

/// `dst eval`'s evaluation in chunks gives one submission's loss and accuracy, and reports the
/// images done after each chunk.
#[test]
fn evaluation_in_chunks_reports_progress_and_the_same_figures() {
    let _g = serial();
    let ck_path = checkpoint("lenet300", 640);
    let ck = Checkpoint::load(&ck_path).unwrap();
    let session = train::Session::new(gpu(), "lenet300", true, 0, false).unwrap();
    session.restore(&ck, &ck_path, false).unwrap();
    let data = dst::data::load_embedded();
    let test = session.upload("test", &data.test).unwrap();
    let plan = session.eval_plan(&test, 0.0).unwrap();
    let whole = session.evaluate(&plan, &test).unwrap();
    let mut seen = Vec::new();
    let chunked = session
        .evaluate_in_chunks(&plan, &test, 1, &mut |d| seen.push(d))
        .unwrap();
    assert_eq!(whole, chunked);
    let b = plan.batch;
    let want: Vec<usize> = (1..=2000usize.div_ceil(b))
        .map(|i| (i * b).min(2000))
        .collect();
    assert!(want.len() > 1, "batch {b}");
    assert_eq!(seen, want);
    // Up to 10 batches a submission: the first is one batch (its progress comes after the
    // first batch, however slow), the same accuracy.
    let mut seen = Vec::new();
    let adaptive = session
        .evaluate_in_chunks(&plan, &test, 10, &mut |d| seen.push(d))
        .unwrap();
    assert_eq!(whole, adaptive);
    assert_eq!((seen.first(), seen.last()), (Some(&want[0]), Some(&2000)));
    // Never more than the cap a submission: at most 2 batches here.
    let mut seen = Vec::new();
    let capped = session
        .evaluate_in_chunks(&plan, &test, 2, &mut |d| seen.push(d))
        .unwrap();
    assert_eq!(whole, capped);
    assert_eq!(seen.first(), Some(&want[0]));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 2 * b),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&2000));
}

/// An export remembers the data folder its run trained on: `dst infer` without `--data` scores
/// that folder's test set (said so), as `dst eval` does, and the embedded subset with a warning
/// once the folder has gone. An export written where one was keeps that file's permissions and a
/// symbolic link there; `--out` naming a folder, and bytes added after an export, are named.
#[test]
fn infer_scores_the_runs_own_test_set_and_exports_replace_files_in_place() {
    let ck_path = {
        let _g = serial();
        checkpoint("lenet300", 640)
    };
    let dir = tmp("trained-on");
    let data = dir.join("mnist-small");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, TEST, 40, 28, 28);
    let mut ck = Checkpoint::load(&ck_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(ck.meta("config").unwrap()).unwrap();
    config["data"] = data.to_str().unwrap().into();
    ck.metadata.insert("config".into(), config.to_string());
    let run_ck = dir.join("checkpoint.safetensors");
    ck.save(&run_ck).unwrap();
    let out = dir.join("model.safetensors");
    export::export(&run_ck, Layout::Csr, &out).unwrap();
    let e = export::load(&out).unwrap();
    assert_eq!(e.data.as_deref(), data.to_str());
    // The embedded run's export records none.
    let (plain, _) = export_to(&ck_path, Layout::Csr, &dir.join(""));
    assert_eq!(export::load(&plain).unwrap().data, None);

    let file = out.to_str().unwrap();
    let (ok, stdout, err) = {
        let _g = serial();
        dst_cli(&["infer", file])
    };
    let d = data.display();
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "note: no --data: the test set of {d}, which the exported run trained on"
        )),
        "{err}"
    );
    assert!(
        stdout.contains(&format!(
            "on the 40 test images of {d} (IDX files in MNIST's format, not MNIST's own"
        )),
        "{stdout}"
    );
    let gone = dir.join("moved");
    std::fs::rename(&data, &gone).unwrap();
    let (ok, stdout, err) = {
        let _g = serial();
        dst_cli(&["infer", file])
    };
    assert!(
        !ok && err.contains(&format!(
            "the exported run trained on {d}, which is not there now: give --data with its test \
             files"
        )) && stdout.is_empty(),
        "{err}"
    );
    // bench-infer times the embedded subset's images instead, and says so.
    let (ok, _, err) = {
        let _g = serial();
        dst_cli(&["bench-infer", file, "--samples", "8"])
    };
    assert!(
        ok && err.contains("which is not there now: timing the embedded subset's test images"),
        "{err}"
    );
    // --data wins, with no note.
    let (ok, stdout, err) = {
        let _g = serial();
        dst_cli(&["infer", file, "--data", gone.to_str().unwrap()])
    };
    assert!(ok && !err.contains("no --data"), "{err}");
    assert!(stdout.contains("on the 40 test images"), "{stdout}");
    // The run folder's config.json then names the new place (the README's fix for moved data):
    // eval and a new export take it (they kept the checkpoint's old record).
    let mut moved = config.clone();
    moved["data"] = gone.to_str().unwrap().into();
    std::fs::write(dir.join("config.json"), moved.to_string()).unwrap();
    let (ok, stdout, err) = {
        let _g = serial();
        dst_cli(&["eval", run_ck.to_str().unwrap()])
    };
    assert!(ok && !err.contains("not there now"), "{err}");
    assert!(
        stdout.contains(&format!(
            "{} (IDX files in MNIST's format, not MNIST's own",
            gone.display()
        )),
        "{stdout}"
    );
    export::export(&run_ck, Layout::Csr, &out).unwrap();
    assert_eq!(export::load(&out).unwrap().data.as_deref(), gone.to_str());

    // Replaced in place: a read-only export stays read-only, a link stays a link.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut p = std::fs::metadata(&out).unwrap().permissions();
        p.set_mode(0o444);
        std::fs::set_permissions(&out, p).unwrap();
        export::export(&run_ck, Layout::Dense, &out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(export::load(&out).unwrap().layout, Layout::Dense);
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        let mut p = std::fs::metadata(&out).unwrap().permissions();
        p.set_mode(0o644);
        std::fs::set_permissions(&out, p).unwrap();
        export::export(&run_ck, Layout::Csr, &link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(export::load(&out).unwrap().layout, Layout::Csr);
        // A link to nothing is refused, and stays as it was.
        let dangling = dir.join("dangling.safetensors");
        std::os::unix::fs::symlink(dir.join("nowhere.safetensors"), &dangling).unwrap();
        let err = export::export(&run_ck, Layout::Csr, &dangling)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a symbolic link to")
                && err.contains("nowhere.safetensors, which does not exist"),
            "{err}"
        );
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!dir.join("nowhere.safetensors").exists());
    }

    // --out ending in a slash, with nothing there or an export there.
    for slash in [
        format!("{}/", dir.join("new").display()),
        format!("{file}/"),
    ] {
        let err = export::export(&run_ck, Layout::Csr, Path::new(&slash))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names a folder; give the export file's path"),
            "{err}"
        );
    }
    assert!(!dir.join("new").exists());
    // "-" (standard output elsewhere): refused, no file named "-" written.
    let err = export::export(&run_ck, Layout::Csr, Path::new("-"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not to standard output"), "{err}");
    assert!(!Path::new("-").exists());

    // Bytes after the tensors: named as such, not only as a cut.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.extend(b"junk\n");
    let longer = dir.join("longer.safetensors");
    std::fs::write(&longer, &bytes).unwrap();
    let err = export::load(&longer).unwrap_err().to_string();
    assert!(err.contains("bytes added after it"), "{err}");
}
