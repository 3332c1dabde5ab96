//! LeNet-5-Caffe end to end on the embedded MNIST subset (lavapipe in CI): it learns, resumes bit
//! for bit, and refuses LeNet-300-100 checkpoints (and the reverse).

mod common;
use common::*;

use dst::checkpoint::Checkpoint;
use dst::train::TrainConfig;

fn lenet5(limit: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        limit_train: Some(limit),
        epochs,
        log_every: 10,
        ..TrainConfig::for_model("lenet5").unwrap()
    }
}

/// 60 DST steps on 1920 images (SGD lr 0.01 leaves LeNet-5's initial plateau slowly; here it gets
/// to about 66 %): the loss falls, test accuracy passes 55 %, masks start to prune,
/// and the checkpoint holds the conv layers' thresholds (one per filter).
#[test]
fn short_lenet5_run_learns() {
    let out = tmp("lenet5", "learn");
    let cfg = lenet5(1920, 2);
    assert_eq!(
        (cfg.lr, cfg.batch, cfg.alpha),
        (0.01, 64, 5e-4),
        "paper defaults"
    );
    let s = run(&cfg, &out, false).unwrap();
    let losses = step_losses(&out);
    assert_eq!(losses.len(), 6);
    assert!(
        *losses.last().unwrap() < 0.8 * losses[0],
        "loss did not fall: {losses:?}"
    );
    assert!(s.last.test_acc >= 55.0, "test accuracy {}", s.last.test_acc);
    let names: Vec<&str> = s.last.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["conv1", "conv2", "fc3", "fc4"]);
    assert_eq!(s.last.layers[0].shape, vec![20, 25]);
    assert_eq!(s.last.layers[1].shape, vec![50, 500]);
    assert!(s.last.keep_ratio < 1.0, "keep {}", s.last.keep_ratio);
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.meta("model"), Some("lenet5"));
    let (_, shape, _) = ck.get("conv2.weight").unwrap();
    assert_eq!(shape, &vec![50, 20, 5, 5]);
    let (_, shape, _) = ck.get("conv1.threshold").unwrap();
    assert_eq!(shape, &vec![20]);
    // `dst bench --checkpoint` of it without --model times the checkpoint's model (it once
    // timed LeNet-300-100 and refused the checkpoint).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["bench", "--reps", "0", "--steps", "1", "--rounds", "1"])
        .arg("--checkpoint")
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && stdout.contains("lenet5: every variant with the settings of"),
        "{stdout}{stderr}"
    );
}

/// 2 epochs in one go and 1 + 1 with a resume give bit-identical parameters and momenta.
#[test]
fn lenet5_resume_is_bit_identical() {
    let cfg = lenet5(256, 2);
    let (a, b) = (tmp("lenet5", "once"), tmp("lenet5", "resumed"));
    run(&cfg, &a, false).unwrap();
    run(
        &TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
        &b,
        false,
    )
    .unwrap();
    run(&cfg, &b, true).unwrap();
    assert_same_checkpoints(&a, &b);
}

/// A LeNet-300-100 checkpoint is refused by LeNet-5 and the reverse, naming both models; so is
/// `dst eval`'s path with the wrong model (a checkpoint names its own model, so eval follows it).
#[test]
fn checkpoints_of_the_other_lenet_are_refused() {
    let (d300, d5) = (tmp("lenet5", "ck300"), tmp("lenet5", "ck5"));
    let c300 = TrainConfig {
        limit_train: Some(128),
        epochs: 1,
        ..TrainConfig::default()
    };
    run(&c300, &d300, false).unwrap();
    run(&lenet5(128, 1), &d5, false).unwrap();
    // Each run directory resumed with the other model's config.
    let err = run(&lenet5(128, 2), &d300, true).unwrap_err().to_string();
    assert!(
        err.contains("is a checkpoint of lenet300") && err.contains("config.json trains lenet5"),
        "{err}"
    );
    let err = run(&TrainConfig { epochs: 2, ..c300 }, &d5, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is a checkpoint of lenet5") && err.contains("config.json trains lenet300"),
        "{err}"
    );
}

/// The convolutions' products over P's lists (forward and product to the input, CPU adapters'
/// patch-matrix path) train like the dense products: 12 DST steps with them forced on every step
/// (`sparse_keep_conv` 1) and off (0) give equal parameters and momenta (the listed
/// sums leave out terms that add +0; on GPUs the plans hold no lists and the runs are the same
/// run), the listed run is deterministic, and the plans route conv1's forward and conv2's forward
/// and input gradient through the layers' switches only where asked (also at the CPU default,
/// 0.5: the mask pass decides each step).
#[test]
fn conv_listed_products_train_like_dense_products() {
    use dst::nn::Mode;
    let cfg = lenet5(1024, 1);
    let data = cfg.load_data().unwrap();
    let opt = cfg.optimizer();
    let cpu = gpu().class == dst::gpu::AdapterClass::Cpu;
    let train_steps = |keep_conv: f64, listed: bool| {
        let mut session = dst::train::Session::new(gpu(), "lenet5", true, 1, false).unwrap();
        session.sparse_keep = 0.0;
        session.sparse_input = 0.0;
        session.sparse_keep_conv = keep_conv;
        let train = session.upload("train", &data.train).unwrap();
        train.start_epoch(&session.gpu, 1, 1);
        let plan = session
            .plan(&train, 64, Mode::Train, cfg.alpha as f32, opt)
            .unwrap();
        // Counted by the plain form's label (the subgroup forms' end in `_sg`).
        let count = |label: &str| {
            plan.dispatches
                .iter()
                .filter(|d| d.label.strip_suffix("_sg").unwrap_or(&d.label) == label)
                .map(|d| d.indirect.is_some())
                .collect::<Vec<_>>()
        };
        let (n_fwd, n_dx) = if listed { (2, 1) } else { (0, 0) };
        assert_eq!(count("conv.conv_forward_cols_listed"), vec![true; n_fwd]);
        assert_eq!(
            count("conv.conv_backward_input_cols_listed"),
            vec![true; n_dx]
        );
        if cpu {
            assert_eq!(count("conv.conv_forward_cols"), vec![listed; 2]);
            assert_eq!(count("conv.conv_backward_input_cols"), vec![listed; 1]);
        }
        let infos: Vec<_> = (0..12)
            .map(|s| opt.step_info(s + 1, cfg.lr, (s as usize * 64) % 960, 64))
            .collect();
        session.run_steps(&plan, &infos).unwrap();
        session.snapshot().unwrap()
    };
    // The default builds the switched plan too.
    let _ = train_steps(0.5, cpu);
    let dense = train_steps(0.0, false);
    let listed = train_steps(1.0, cpu);
    let again = train_steps(1.0, cpu);
    assert_eq!(dense.tensors.len(), listed.tensors.len());
    for ((t, _, a), (_, _, b)) in dense.tensors.iter().zip(&listed.tensors) {
        assert!(a.iter().zip(b).all(|(x, y)| x == y), "{t} differs");
    }
    for ((t, _, a), (_, _, b)) in listed.tensors.iter().zip(&again.tensors) {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{t}: the listed run is not deterministic");
    }
}

/// The other adapter class's plan trains like this adapter's own: LeNet-5 (DST, batch 64) built
/// with the kernels a GPU takes (workgroup tiles in the 2x2 and 4x4 forms, the input gradient
/// through a patch matrix, the split weight gradient, the row-wise mask backward, ...) and with the
/// CPU adapters' kernels (register blocks, patch matrix), sparse products off in both, 3 SGD steps
/// from the same state: parameters and momenta agree within float reassociation. On lavapipe this
/// runs the GPU plan on CI, which has no GPU (and on a GPU, the CPU plan).
#[test]
fn gpu_and_cpu_plans_train_alike() {
    let (gpu_labels, cpu_labels) = assert_classes_train_alike(&lenet5(256, 1), 64, 3, 1e-5);
    // Each plan holds its class's kernels.
    for k in [
        "conv.conv_forward_tiled_2x2",
        "conv.conv_backward_input_cols_tiled_4x4",
        "conv.conv_backward_weight_tiled_2x2",
        "conv.conv_weight_parts_sum",
        "conv.conv_backward_weight_split_wide",
    ] {
        assert!(gpu_labels.iter().any(|l| l == k), "GPU plan without {k}");
        assert!(!cpu_labels.iter().any(|l| l == k), "CPU plan with {k}");
    }
    let cols = ["conv.conv_forward_cols", "conv.conv_forward_cols_sg"];
    assert!(cpu_labels.iter().any(|l| cols.contains(&l.as_str())));
    // On GPUs conv1's bias gradient rides on its split weight gradient; conv2's (a tiled weight
    // gradient) keeps its own pass, as both do on CPU adapters.
    let bias = |ls: &[String]| {
        ls.iter()
            .filter(|l| l.starts_with("conv.conv_bias_backward"))
            .count()
    };
    assert_eq!((bias(&gpu_labels), bias(&cpu_labels)), (1, 2));
}
