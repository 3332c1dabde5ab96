//! LSTM-a end to end on the embedded MNIST subset (lavapipe in CI, where an LSTM-a step takes
//! about a second: the runs are small): it learns with the paper's defaults, reports the eight
//! gate matrices of each layer, resumes bit for bit, and evaluates from zero states.

mod common;
use common::*;

use dst::checkpoint::Checkpoint;
use dst::train::{self, TrainConfig};

fn lstm_a(limit: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        limit_train: Some(limit),
        epochs,
        log_every: 10,
        ..TrainConfig::for_model("lstm-a").unwrap()
    }
}

/// 40 DST steps (batch 100, Adam 1e-3, alpha 1e-4: the paper's defaults): the loss falls, test
/// accuracy beats chance clearly, keep ratios are reported per gate matrix and fall below 1, the
/// head stays dense (no threshold), and evaluating the same checkpoint twice gives the same
/// accuracy (every sequence starts from zero states).
#[test]
fn short_lstm_a_run_learns() {
    let out = tmp("lstm", "learn");
    let cfg = lstm_a(2000, 2);
    assert_eq!(
        (cfg.optimizer.as_str(), cfg.lr, cfg.batch, cfg.alpha),
        ("adam", 1e-3, 100, 1e-4),
        "paper defaults"
    );
    let s = run(&cfg, &out, false).unwrap();
    let losses = step_losses(&out);
    assert_eq!(losses.len(), 4);
    assert!(
        *losses.last().unwrap() < 0.85 * losses[0],
        "loss did not fall: {losses:?}"
    );
    assert!(s.last.test_acc >= 30.0, "test accuracy {}", s.last.test_acc);
    assert_eq!(s.last.layers.len(), 16, "8 gate matrices per LSTM layer");
    assert_eq!(s.last.layers[0].name, "lstm1.wx_i");
    assert_eq!(s.last.layers[0].shape, vec![128, 28]);
    assert_eq!(s.last.layers[15].name, "lstm2.wh_o");
    assert!(s.last.layers.iter().all(|l| l.keep_ratio < 1.0));
    // The step lines list the gate matrices in the model's order, as the epoch lines do (they
    // were sorted by name, so a chart of a run stopped before its first epoch's end had them
    // in another order, and other colours, than the finished run's).
    let logged = dst::report::Run::load_with(&out, false).unwrap();
    let order: Vec<&str> = s.last.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(logged.steps.len(), 4);
    for st in &logged.steps {
        assert_eq!(
            st.keep.keys().map(String::as_str).collect::<Vec<_>>(),
            order
        );
    }
    assert_eq!(logged.layer_names(), order);
    let ck_path = out.join("checkpoint.safetensors");
    let ck = Checkpoint::load(&ck_path).unwrap();
    assert!(ck.get("lstm1.threshold_hh").is_some());
    assert!(ck.get("fc.threshold").is_none(), "the head is not masked");
    assert!(ck.get("optim.second_moment.lstm2.weight_ih").is_some());
    let data = dst::data::try_load_embedded().unwrap();
    let (a1, _, _) = train::evaluate_checkpoint(gpu(), &ck_path, &data).unwrap();
    let (a2, _, _) = train::evaluate_checkpoint(gpu(), &ck_path, &data).unwrap();
    assert_eq!(a1, a2);
    assert_eq!(
        a1, s.last.test_acc,
        "eval of the checkpoint = the run's last test pass"
    );
}

/// 2 epochs in one go and 1 + 1 with a resume give bit-identical parameters and Adam moments.
#[test]
fn lstm_a_resume_is_bit_identical() {
    let cfg = lstm_a(200, 2);
    let (a, b) = (tmp("lstm", "once"), tmp("lstm", "resumed"));
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

/// The other adapter class's plan trains like this adapter's own: LSTM-a (DST, Adam, batch 100)
/// with the GPU kernels (the recurrent steps split across a workgroup, tiled products, ...) and
/// with the CPU adapters' ones, 2 steps from the same state: parameters and Adam's moments agree
/// within float reassociation. On lavapipe this runs the GPU plan on CI, which has no GPU.
#[test]
fn gpu_and_cpu_plans_train_alike() {
    let (gpu_labels, cpu_labels) = assert_classes_train_alike(&lstm_a(400, 1), 100, 2, 1e-4);
    assert_ne!(
        gpu_labels, cpu_labels,
        "the two plans hold different kernels"
    );
    // Each plan holds its class's recurrent steps.
    for k in ["lstm.lstm_step_split", "lstm.lstm_step_backward_split"] {
        assert!(gpu_labels.iter().any(|l| l == k), "GPU plan without {k}");
        assert!(!cpu_labels.iter().any(|l| l == k), "CPU plan with {k}");
    }
}

/// A dense LSTM-a lists every weight matrix in its layer table, summary and metrics: each LSTM
/// layer's `weight_ih` and `weight_hh` and the head (it once listed the head alone, 0.6 % of its
/// weights).
#[test]
fn a_dense_lstm_lists_its_gate_matrices() {
    let session = train::Session::new(gpu(), "lstm-a", false, 1, true).unwrap();
    let layers = session.layer_stats().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lstm1.weight_ih",
            "lstm1.weight_hh",
            "lstm2.weight_ih",
            "lstm2.weight_hh",
            "fc"
        ]
    );
    assert_eq!(layers[0].shape, vec![512, 28]);
    let total: u64 = layers.iter().map(|l| l.total).sum();
    assert_eq!(total, 14336 + 3 * 65536 + 1280);
    assert!(layers.iter().all(|l| l.kept == l.total));
}
