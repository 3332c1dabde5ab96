//! End-to-end training on the embedded MNIST subset (lavapipe in CI): the loss falls, accuracy
//! passes a bar, DST sparsifies, resume is bit-identical, bad checkpoints and divergence are
//! reported clearly.

mod common;
use common::*;

use dst::checkpoint::Checkpoint;
use dst::train::{TrainConfig, TrainError};

fn small(limit: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        limit_train: Some(limit),
        epochs,
        log_every: 20,
        ..Default::default()
    }
}

/// 300 DST steps on 6400 images: the loss falls and test accuracy passes 85%.
#[test]
fn short_dst_run_learns() {
    let out = tmp("test", "learn");
    let s = run(&small(6400, 3), &out, false).unwrap();
    let losses = step_losses(&out);
    assert_eq!(losses.len(), 15, "5 log points per epoch");
    assert!(losses[0] > 1.0, "first window loss {}", losses[0]);
    assert!(
        *losses.last().unwrap() < 0.6 * losses[0],
        "loss did not fall: {losses:?}"
    );
    assert!(
        s.last.test_acc >= 85.0,
        "test accuracy {} below the 85% bar",
        s.last.test_acc
    );
    assert!(
        s.last.keep_ratio < 1.0 && s.last.keep_ratio > 0.3,
        "keep {}",
        s.last.keep_ratio
    );
    assert_eq!(s.train_images, Some(6400), "the images trained on");
    assert_eq!(
        s.data,
        "embedded MNIST subset (10000 train / 2000 test); trained on 6400 of its images"
    );
    for f in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.meta("model"), Some("lenet300"));
    assert_eq!(ck.meta("epoch"), Some("3"));
    assert!(ck.get("fc1.threshold").is_some() && ck.get("optim.momentum.fc1.weight").is_some());
}

/// A large alpha prunes (keep ratio < 1, thresholds up); dense keeps everything.
#[test]
fn large_alpha_prunes_dense_does_not() {
    let out = tmp("test", "alpha");
    let cfg = TrainConfig {
        alpha: 1e-2,
        ..small(3200, 2)
    };
    let s = run(&cfg, &out, false).unwrap();
    assert!(
        s.last.keep_ratio < 0.9,
        "DST keep ratio {}",
        s.last.keep_ratio
    );
    let fc1 = &s.last.layers[0];
    assert!(
        fc1.threshold_mean.unwrap() > 0.0,
        "thresholds must rise: {:?}",
        fc1.threshold_mean
    );
    assert!(
        fc1.keep_ratio < s.last.layers[2].keep_ratio,
        "fc1 sparser than fc3"
    );

    let out = tmp("test", "dense");
    let cfg = TrainConfig {
        dense: true,
        ..small(3200, 2)
    };
    let s = run(&cfg, &out, false).unwrap();
    assert_eq!(s.last.keep_ratio, 1.0);
    assert!(s.last.layers.iter().all(|l| l.keep_ratio == 1.0));
    // Its step lines keep everything too (they logged 0, from no masked layers).
    let steps = metrics(&out, "step");
    assert!(!steps.is_empty());
    assert!(
        steps.iter().all(|v| v["model_keep"] == 1.0),
        "{:?}",
        steps[0]
    );
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert!(
        ck.get("fc1.threshold").is_none(),
        "dense models have no thresholds"
    );
}

/// N epochs in one go and k + (N - k) with a resume give bit-identical weights.
#[test]
fn resume_is_bit_identical() {
    let cfg = small(640, 3);
    let a = tmp("test", "once");
    run(&cfg, &a, false).unwrap();
    let b = tmp("test", "resumed");
    run(
        &TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
        &b,
        false,
    )
    .unwrap();
    // Resuming a finished run without more epochs is refused.
    let err = run(
        &TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
        &b,
        true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--epochs"), "{err}");
    run(&cfg, &b, true).unwrap();
    assert_same_checkpoints(&a, &b);
    // The summaries too, but for the timings: the history the checkpoint carries reads back as
    // the same floats (without serde_json's float_roundtrip, a loss could come back one ULP off).
    let summary = |dir: &std::path::Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        for k in ["epoch_seconds", "ms_per_step"] {
            v["last"].as_object_mut().unwrap().remove(k).expect(k);
        }
        v.as_object_mut()
            .unwrap()
            .remove("mean_ms_per_step")
            .unwrap();
        v
    };
    assert_eq!(summary(&a), summary(&b));
}

/// Floats written to JSON (metrics, summaries, the history a checkpoint carries and a resume
/// reads back) come back as the same f64: a resumed run records the numbers of one that never
/// stopped. Without serde_json's float_roundtrip feature, some come back one ULP off (a resumed
/// sweep's lowest keep read 0.99255822689707 where the run that never stopped had
/// 0.9925582268970699).
#[test]
fn json_floats_read_back_exactly() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut off = Vec::new();
    for i in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Accuracies, losses and keep ratios: [0, 100) at every scale of the mantissa.
        let v = (x >> 11) as f64 / (1u64 << 53) as f64 * [1.0, 100.0, 1e-3][i % 3];
        let back: f64 = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        if back.to_bits() != v.to_bits() {
            off.push((v, back));
        }
    }
    assert!(
        off.is_empty(),
        "{} of 200000, e.g. {:?}",
        off.len(),
        &off[..off.len().min(3)]
    );
}

/// A run stopped after a checkpoint but before its summary: `--resume` with fewer epochs than it
/// holds is refused (it used to write a summary claiming the smaller count), with as many it is
/// finished there, its config and metrics agreeing with the summary.
#[test]
fn unfinished_runs_end_only_where_their_checkpoint_is() {
    let cfg = TrainConfig {
        log_every: 5,
        ..small(640, 2)
    };
    let a = tmp("test", "unfinished");
    run(&cfg, &a, false).unwrap();
    std::fs::remove_file(a.join("summary.json")).unwrap();
    // What the interrupted third epoch had logged past the checkpoint.
    let mut lines = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    lines.push_str("{\"kind\":\"step\",\"step\":25,\"epoch\":3,\"loss\":1.0}\n");
    std::fs::write(a.join("metrics.jsonl"), lines).unwrap();
    let err = run(
        &TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
        &a,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("already holds 2 epochs") && err.contains("--epochs 2 to end it there"),
        "{err}"
    );
    assert!(!a.join("summary.json").exists());
    let s = run(&cfg, &a, true).unwrap();
    assert_eq!(s.last.epoch, 2);
    assert!(a.join("summary.json").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["epochs"], 2);
    let steps: Vec<u64> = metrics(&a, "step")
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(*steps.last().unwrap(), 20, "{steps:?}");

    // Extended to 3 epochs and stopped after its checkpoint, before the new summary: the
    // 2-epoch summary left there does not make it finished.
    run(
        &TrainConfig {
            epochs: 3,
            ..cfg.clone()
        },
        &a,
        true,
    )
    .unwrap();
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    summary["epochs"] = 2.into();
    std::fs::write(a.join("summary.json"), summary.to_string()).unwrap();
    let s = run(
        &TrainConfig {
            epochs: 3,
            ..cfg.clone()
        },
        &a,
        true,
    )
    .unwrap();
    assert_eq!((s.epochs, s.last.epoch), (3, 3));
}

/// Steps the progress bar was shown at.
struct Recorder(Vec<u64>);
impl dst::train::Progress for Recorder {
    fn start_epoch(&mut self, _: usize, _: usize, _: u64) {}
    fn step(&mut self, done: u64, _: &str) {
        self.0.push(done);
    }
    fn line(&mut self, _: &str) {}
    fn finish_epoch(&mut self) {}
}

/// The progress bar moves every tenth of an epoch (at most 100 steps) however rarely lines are
/// logged (it stood at 0 for a whole epoch shorter than --log-every), and the run is the same
/// bit for bit.
#[test]
fn progress_moves_between_rare_log_points() {
    use dst::train::progress_every;
    assert_eq!(
        [1, 10, 11, 157, 938, 5000].map(progress_every),
        [1, 1, 2, 16, 94, 100]
    );
    let cfg = TrainConfig {
        epochs: 1,
        log_every: 1000,
        ..Default::default()
    };
    let a = tmp("test", "progress-rare");
    let mut rec = Recorder(Vec::new());
    dst::train::train(
        gpu(),
        &cfg,
        &dst::train::RunOptions {
            out: a.clone(),
            resume: false,
            header: None,
        },
        &mut rec,
    )
    .unwrap();
    let want: Vec<u64> = (1..=9).map(|i| 16 * i).chain([157]).collect();
    assert_eq!(rec.0, want, "the embedded subset: 157 steps an epoch");
    assert_eq!(metrics(&a, "step").len(), 1, "one line, at the epoch's end");
    let b = tmp("test", "progress-often");
    run(
        &TrainConfig {
            log_every: 157,
            ..cfg.clone()
        },
        &b,
        false,
    )
    .unwrap();
    assert_same_checkpoints(&a, &b);
}

/// Adam: the loss falls, and a resume is bit-identical too (its second moments are checkpointed).
#[test]
fn adam_learns_and_resumes_bit_identically() {
    let cfg = TrainConfig {
        optimizer: "adam".into(),
        lr: 1e-3,
        ..small(640, 2)
    };
    let a = tmp("test", "adam-once");
    let s = run(&cfg, &a, false).unwrap();
    let losses = step_losses(&a);
    assert!(
        *losses.last().unwrap() < 0.7 * losses[0],
        "adam loss did not fall: {losses:?}"
    );
    assert!(s.last.keep_ratio < 1.0);
    let b = tmp("test", "adam-resumed");
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
    let ck = assert_same_checkpoints(&a, &b);
    assert!(ck.get("optim.second_moment.fc1.weight").is_some());
}

/// A checkpoint of another model is refused, as are files that are not dst checkpoints.
#[test]
fn foreign_checkpoints_are_refused() {
    let out = tmp("test", "foreign");
    run(
        &TrainConfig {
            dense: true,
            ..small(320, 1)
        },
        &out,
        false,
    )
    .unwrap();
    let path = out.join("checkpoint.safetensors");
    // A DST config resuming a dense run's checkpoint.
    let err = run(&small(320, 2), &out, true).unwrap_err();
    assert!(
        err.to_string().contains(
            "holds a dense run's checkpoint, and its config.json now says \"dense\": false"
        ),
        "{err}"
    );
    // Truncated file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = out.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::load(&cut).unwrap_err().to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    // A valid safetensors file without our format tag.
    let mut other = Checkpoint::load(&path).unwrap();
    other.metadata.clear();
    let foreign = out.join("foreign.safetensors");
    let raw = safetensors_without_format(&other);
    std::fs::write(&foreign, raw).unwrap();
    let err = Checkpoint::load(&foreign).unwrap_err().to_string();
    assert!(err.contains("not a dst training checkpoint"), "{err}");

    // Edited metadata, same length so the header stays valid: the epoch (a resume would rerun
    // or skip epochs), the hash of the tensors removed. Both refused.
    let edit = |from: &str, to: &str, name: &str| {
        let mut b = bytes.clone();
        let at = b
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in the header"));
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        let p = out.join(name);
        std::fs::write(&p, b).unwrap();
        Checkpoint::load(&p).unwrap_err().to_string()
    };
    let err = edit("\"epoch\":\"1\"", "\"epoch\":\"0\"", "epoch.safetensors");
    assert!(
        err.contains("metadata_sha256") && err.contains("edited"),
        "{err}"
    );
    let err = edit(
        "\"tensors_sha256\"",
        "\"tensors_sha25X\"",
        "nohash.safetensors",
    );
    assert!(err.contains("no SHA-256 of its tensors"), "{err}");
    // The metadata's hash renamed away (the epoch could then be edited unseen): refused too.
    let err = edit(
        "\"metadata_sha256\"",
        "\"metadata_sha25X\"",
        "nometahash.safetensors",
    );
    assert!(err.contains("no SHA-256 of its metadata"), "{err}");

    // A threshold in a dense model's checkpoint (hashes valid): the model has no place for it,
    // and it is refused rather than ignored.
    let mut extra = Checkpoint::load(&path).unwrap();
    extra
        .tensors
        .push(("fc1.threshold".into(), vec![300], vec![0.5; 300]));
    let p = out.join("extra.safetensors");
    extra.save(&p).unwrap();
    let data = dst::data::load_embedded();
    let err = dst::train::evaluate_checkpoint(gpu(), &p, &data)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor fc1.threshold has no place in the model"),
        "{err}"
    );
}

fn safetensors_without_format(ck: &Checkpoint) -> Vec<u8> {
    // Our writer always adds the tag, so rewrite the header's format value.
    let dir = tmp("test", "fmt");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.safetensors");
    ck.save(&p).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    let tag = dst::checkpoint::FORMAT.as_bytes();
    let at = b.windows(tag.len()).position(|w| w == tag).unwrap();
    b[at] = b'X';
    b
}

/// A diverging run stops with a message naming alpha and lr; the last good checkpoint stays.
#[test]
fn divergence_stops_and_keeps_last_checkpoint() {
    let out = tmp("test", "diverge");
    let cfg = small(640, 1);
    run(&cfg, &out, false).unwrap();
    let ck_path = out.join("checkpoint.safetensors");
    let before = std::fs::read(&ck_path).unwrap();
    let bad = TrainConfig {
        lr: 1e6,
        epochs: 2,
        ..cfg
    };
    let err = run(&bad, &out, true).unwrap_err();
    assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--alpha") && msg.contains("--lr"), "{msg}");
    // A retry with other settings needs another folder: the message says so.
    assert!(
        msg.contains(&format!("remove {}", out.display())) && msg.contains("another --out"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&ck_path).unwrap(),
        before,
        "the last good checkpoint must stay"
    );
    assert!(
        msg.contains("last good checkpoint (epoch 1) is kept unchanged"),
        "{msg}"
    );

    // A run that diverges before its first checkpoint: said so; its log ends with the
    // divergence, which a report reads (it showed the run as unfinished).
    let fresh = tmp("test", "diverge-fresh");
    let err = run(
        &TrainConfig {
            log_every: 5,
            ..bad.clone()
        },
        &fresh,
        false,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("No checkpoint had been written")
            && msg.contains(&format!("remove {}", fresh.display())),
        "{msg}"
    );
    assert!(!fresh.join("checkpoint.safetensors").exists());
    let metrics = fresh.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "diverged", "{text}");
    let r = dst::report::Run::load(&fresh).unwrap();
    let d = r.diverged.as_ref().expect("read as diverged");
    assert_eq!((d.epoch, d.step), (1, last["step"].as_u64().unwrap()));
    // A damaged line amid the log is left out, named; the run is still read (it was left out
    // of reports whole).
    std::fs::write(&metrics, format!("not json\n{text}")).unwrap();
    let r = dst::report::Run::load(&fresh).unwrap();
    assert_eq!(
        (r.damaged_lines.as_slice(), r.diverged.is_some()),
        (&[1][..], true)
    );
}

/// The blow-up of a too-large learning rate whose loss stays finite (thresholds run to +inf, so
/// exp(-t) hides them from the penalty and the mask drops every weight) is caught by the
/// parameter guard: the run stops with a message naming --lr, and no checkpoint holding a NaN or
/// an infinity is ever written (the epoch-1 checkpoint, if one was written, is finite).
#[test]
fn blown_up_parameters_stop_the_run() {
    let out = tmp("test", "blowup");
    let cfg = TrainConfig {
        lr: 100.0,
        ..small(640, 2)
    };
    let err = run(&cfg, &out, false).unwrap_err();
    let TrainError::Diverged { what, .. } = &err else {
        panic!("expected a divergence, got {err}");
    };
    assert!(what.contains("NaN or infinite"), "{err}");
    assert!(err.to_string().contains("--lr"), "{err}");
    let ck = out.join("checkpoint.safetensors");
    if ck.exists() {
        let ck = Checkpoint::load(&ck).unwrap();
        for (name, _, v) in &ck.tensors {
            assert!(v.iter().all(|x| x.is_finite()), "{name} is not finite");
        }
    }
    // A dense run has no --alpha: its message names only the learning rate.
    let out = tmp("test", "blowup-dense");
    let cfg = TrainConfig {
        lr: 1e6,
        dense: true,
        ..small(640, 1)
    };
    let err = run(&cfg, &out, false).unwrap_err();
    assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--lr") && !msg.contains("--alpha"), "{msg}");
}

/// The sparse products (forward and product to the input from the lists of kept weights) train
/// like the dense products: forced on every step (`sparse_keep` 1) against never (0), the step
/// losses and every tensor agree up to float reassociation after 40 steps (on CPU adapters they
/// are equal, and asserted so: fc1's only listed product is its forward, which sums each output
/// in column order as the dense GEMM does, whose zero products add nothing),
/// and the sparse run is deterministic (run twice: the same checkpoint bit for bit).
#[test]
fn sparse_products_train_like_dense_products() {
    // The input-sparse forward off: this test is about the lists of P's nonzeros.
    let cfg = |sparse: f64| TrainConfig {
        log_every: 5,
        sparse_keep: Some(sparse),
        sparse_input: Some(0.0),
        ..small(2560, 1)
    };
    assert_trains_alike(&cfg(0.0), &cfg(1.0), "sparse", true);
    // The sparse run's plan does route fc1 (the layer big enough for them) through the switch.
    let mut session = dst::train::Session::new(gpu(), "lenet300", true, 1, false).unwrap();
    let data = TrainConfig::default().load_data().unwrap();
    let train = session.upload("train", &data.train).unwrap();
    let opt = TrainConfig::default().optimizer();
    // (--sparse-keep, --sparse-input, routed dispatches): four for P's lists and the dense
    // product; on GPUs three more for the input-sparse product (the plain and the compacted
    // product and the compaction's copy). On CPU adapters fc1, the plan's first layer, takes
    // the compacted input-sparse product, unrouted, whenever --sparse-input is on: no dispatch
    // of it goes through the switch.
    let cpu = session.gpu.class == dst::gpu::AdapterClass::Cpu;
    for (keep, input, routed) in [
        (1.0, 0.0, 4),
        (0.0, 0.0, 0),
        (0.0, 0.3, if cpu { 0 } else { 7 }),
        (0.2, 0.3, if cpu { 0 } else { 7 }),
    ] {
        session.sparse_keep = keep;
        session.sparse_input = input;
        let plan = session
            .plan(&train, 64, dst::nn::Mode::Train, 5e-4, opt)
            .unwrap();
        let n = plan
            .dispatches
            .iter()
            .filter(|d| d.indirect.is_some())
            .count();
        assert_eq!(
            n, routed,
            "sparse_keep {keep} sparse_input {input}: dispatches through a switch"
        );
        let has = |prefix: &str| plan.dispatches.iter().any(|d| d.label.starts_with(prefix));
        // The lists of P's nonzeros (`ell_build`) exactly where P's products are routed.
        assert_eq!(has("sparse.ell_build"), routed > 0);
        assert_eq!(has("sparse.input_lists"), input > 0.0);
        assert_eq!(has("sparse.ell_input_product"), input > 0.0);
        assert_eq!(has("sparse.masked_columns"), cpu && input > 0.0);
    }
}

/// A dense LeNet-300-100 trains alike with its first layer's forward from the input's nonzeros
/// (`--sparse-input` on, the CPU adapters' default: W^T copied each step, the compacted product
/// over every row, the weight gradient's sample lists built with the input lists) and with the
/// dense GEMM: step losses and every tensor agree up to float reassociation after 40 steps, and
/// the listed run is deterministic. On a CPU adapter the plan has those dispatches exactly when
/// the input-sparse products are on; GPUs keep the GEMM.
#[test]
fn dense_first_layer_from_the_input_nonzeros_trains_like_the_gemm() {
    let cfg = |input: f64| TrainConfig {
        log_every: 5,
        dense: true,
        sparse_input: Some(input),
        ..small(2560, 1)
    };
    assert_trains_alike(&cfg(0.0), &cfg(1.0), "dense-listed", false);
    let mut session = dst::train::Session::new(gpu(), "lenet300", false, 1, false).unwrap();
    let data = TrainConfig::default().load_data().unwrap();
    let train = session.upload("train", &data.train).unwrap();
    let opt = TrainConfig::default().optimizer();
    let cpu = session.gpu.class == dst::gpu::AdapterClass::Cpu;
    for input in [0.0, 0.3] {
        session.sparse_input = input;
        let plan = session
            .plan(&train, 64, dst::nn::Mode::Train, 0.0, opt)
            .unwrap();
        let fc1: Vec<&str> = plan
            .dispatches
            .iter()
            .zip(&plan.owners)
            .filter(|(_, o)| *o == "fc1")
            .map(|(d, _)| d.label.as_str())
            .collect();
        let has = |prefix: &str| fc1.iter().any(|l| l.starts_with(prefix));
        let listed = cpu && input > 0.0;
        assert_eq!(has("sparse.input_lists"), listed, "{input}: {fc1:?}");
        assert_eq!(has("sparse.masked_columns"), listed, "{input}: {fc1:?}");
        assert_eq!(has("sparse.ell_input_product"), listed, "{input}: {fc1:?}");
        assert_eq!(has("gemm.gemm_nt"), !listed, "{input}: {fc1:?}");
        // The weight gradient's sample lists come from the input lists' dispatch.
        if listed {
            assert!(!has("gemm.tn_k_lists"), "{fc1:?}");
        }
        // fc2, not the first layer, keeps the GEMM.
        assert!(
            !plan
                .dispatches
                .iter()
                .zip(&plan.owners)
                .any(|(d, o)| o == "fc2" && d.label.starts_with("sparse.")),
            "{input}"
        );
    }
}

/// Training plans with SGD fuse each linear weight's SGD step (and, masked, the mask's backward)
/// into its weight-gradient product on CPU adapters (`gemm_tn_sgd`), and their optimiser pass
/// skips those weights: 30 steps of LeNet-300-100, DST and dense, with and without weight decay,
/// give the same parameters and momenta as the unfused passes up to float reassociation (the
/// thresholds' gradient sums its row in another order), and the fused run is deterministic.
#[test]
fn fused_sgd_trains_like_the_unfused_passes() {
    use dst::kernels::GemmVariant;
    use dst::nn::Mode;
    use dst::plan::Optimizer;
    let data = TrainConfig::default().load_data().unwrap();
    let train_steps = |masked: bool, wd: f32, fuse: bool| {
        let mut session = dst::train::Session::new(gpu(), "lenet300", masked, 1, false).unwrap();
        session.fuse_sgd = fuse;
        let train = session.upload("train", &data.train).unwrap();
        let opt = Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: wd,
        };
        let plan = session
            .plan(
                &train,
                64,
                Mode::Train,
                if masked { 5e-3 } else { 0.0 },
                opt,
            )
            .unwrap();
        let labels: Vec<&str> = plan.dispatches.iter().map(|d| d.label.as_str()).collect();
        let fused_kernel = session.kernels.gemm.variant == GemmVariant::RegBlock;
        let n_fused = labels.iter().filter(|l| l.contains("gemm_tn_sgd")).count();
        // fc1 and fc2 (100 and 300 outputs); fc3's 10 outputs are no multiple of 4.
        assert_eq!(
            n_fused,
            if fuse && fused_kernel { 2 } else { 0 },
            "{labels:?}"
        );
        assert_eq!(
            labels.iter().any(|l| l.contains("sgd_ranges")),
            n_fused > 0,
            "{labels:?}"
        );
        let infos: Vec<_> = (0..30)
            .map(|s| opt.step_info(s + 1, 0.05, (s as usize * 64) % 6400, 64))
            .collect();
        session.run_steps(&plan, &infos).unwrap();
        session.snapshot().unwrap()
    };
    for (masked, wd) in [(true, 0.0), (true, 5e-4), (false, 5e-4)] {
        let fused = train_steps(masked, wd, true);
        let unfused = train_steps(masked, wd, false);
        assert_eq!(fused.tensors.len(), unfused.tensors.len());
        for ((name, _, a), (name_b, _, b)) in fused.tensors.iter().zip(&unfused.tensors) {
            assert_eq!(name, name_b);
            let scale = b.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "masked {masked} wd {wd} {name}: {x} vs {y}"
                );
            }
        }
        let again = train_steps(masked, wd, true);
        for ((name, _, a), (_, _, b)) in fused.tensors.iter().zip(&again.tensors) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "masked {masked} wd {wd} {name}: the fused run is not deterministic"
            );
        }
    }
}

/// The input-sparse forward (fc1 computed from the lists of each image's nonzero pixels, about a
/// fifth of MNIST's) trains like the dense products: forced on every step (`sparse_input` 1)
/// against off, 40 steps give the same losses and tensors up to float reassociation (on CPU
/// adapters the forwards add the same products in the same order, and fc2's product to the
/// input adds those of the rows that keep a weight, in vec4s of the compaction's order), and the
/// run is deterministic.
#[test]
fn input_sparse_forward_trains_like_dense_products() {
    let cfg = |input: f64| TrainConfig {
        log_every: 5,
        sparse_keep: Some(0.0),
        sparse_input: Some(input),
        ..small(2560, 1)
    };
    assert_trains_alike(&cfg(0.0), &cfg(1.0), "input", false);
}

/// The input-sparse forward over the rows of P that keep a weight (DST prunes whole rows): from
/// a state where two thirds of fc1's rows keep nothing (thresholds far above their weights), 12
/// steps with the input-sparse forward forced, which then runs compacted, give the dense
/// products' parameters and momenta (bit for bit on CPU adapters), and the compacted product is
/// live at the end. On CPU adapters the mask pass only counts and P^T is written after the
/// route is chosen (`masked_columns`: only the compacted columns here); elsewhere the copy of
/// P^T's columns is routed.
#[test]
fn compacted_input_sparse_forward_trains_like_dense_products() {
    assert_compacted_trains_alike("lenet300", "fc1", 12);
}

/// The same for LeNet-5's fc3, whose product to the input (to pool2) reads P^T: a hidden layer
/// keeps the full mask pass and the copy of P^T's columns in training (its evaluation plan
/// takes the first layer's path on CPU adapters).
#[test]
fn compacted_forward_of_a_hidden_layer_trains_like_dense_products() {
    assert_compacted_trains_alike("lenet5", "fc3", 4);
}

/// The same for LeNet-300-100's fc2, too small for the sparse products: on CPU adapters it takes
/// the compacted forward from its input's nonzeros (fc1's ReLU output, whose pruned neurons are
/// zero for every sample) after a full mask pass, and its product to the input from the same
/// compacted columns (`ordered_input_grad`). GPUs give it no compacted product (and fc1, which
/// keeps all its rows, its plain listed one): the same parameters within 1e-4.
#[test]
fn compacted_forward_of_a_small_hidden_layer_trains_like_dense_products() {
    assert_compacted_trains_alike("lenet300", "fc2", 12);
}

/// The suffix of a kernel's subgroup form (`Gpu::subgroups8`: lavapipe) in a dispatch label.
const SUBGROUP_FORM: &str = "_sg";

/// A dispatch label with a subgroup form's suffix taken off: the plain form's label.
fn plain_form(label: &str) -> &str {
    label.strip_suffix(SUBGROUP_FORM).unwrap_or(label)
}

/// `steps` steps of `model` from a state where two thirds of `layer`'s rows keep nothing, with
/// the input-sparse forward forced against off: the same parameters and momenta (bit for bit
/// on CPU adapters, except LeNet-300-100's there, whose fc2's product to the input sums only
/// the rows that keep a weight: within 1e-4), the layer's compacted product live at the end,
/// the plan's P^T writes as the adapter class has them, and the same test loss and accuracy
/// from an evaluation plan (bit for bit where the parameters are). Both adapter classes' plans
/// run on this adapter, so lavapipe (CI) checks the GPU plans too: an H200 found that this test
/// read another layer's product there.
fn assert_compacted_trains_alike(model: &str, layer: &str, steps: usize) {
    for class in [dst::gpu::AdapterClass::Cpu, dst::gpu::AdapterClass::Gpu] {
        compacted_trains_alike_as(model, layer, steps, class);
    }
}

/// `assert_compacted_trains_alike` with the plan of adapter class `class`.
fn compacted_trains_alike_as(
    model: &str,
    layer: &str,
    steps: usize,
    class: dst::gpu::AdapterClass,
) {
    use dst::nn::Mode;
    let cfg = small(1024, 1);
    let mut data = cfg.load_data().unwrap();
    // One evaluation batch (500) of test images is enough to compare the two paths.
    data.test = data.test.limit(500);
    let opt = cfg.optimizer();
    // This adapter's own class and subgroups; the plans are built for `class`.
    let (adapter_cpu, subgroups8) = {
        let g = gpu();
        (g.class == dst::gpu::AdapterClass::Cpu, g.subgroups8)
    };
    let cpu = class == dst::gpu::AdapterClass::Cpu;
    let gpu = || {
        let mut g = gpu();
        g.class = class;
        g
    };
    let start = {
        let session = dst::train::Session::new(gpu(), model, true, 1, false).unwrap();
        let mut ck = session.snapshot().unwrap();
        let name = format!("{layer}.threshold");
        let t = ck
            .tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .expect("the layer's thresholds");
        t.2.iter_mut()
            .enumerate()
            .filter(|(r, _)| r % 3 != 0)
            .for_each(|(_, v)| *v = 100.0);
        ck
    };
    let train_steps = |input: f64| {
        let mut session = dst::train::Session::new(gpu(), model, true, 1, false).unwrap();
        session
            .restore(&start, std::path::Path::new("start"), true)
            .unwrap();
        session.sparse_keep = 0.0;
        session.sparse_input = input;
        let train = session.upload("train", &data.train).unwrap();
        train.start_epoch(&session.gpu, 1, 1);
        let plan = session
            .plan(&train, 64, Mode::Train, cfg.alpha as f32, opt)
            .unwrap();
        let infos: Vec<_> = (0..steps)
            .map(|s| opt.step_info(s as u64 + 1, cfg.lr, (s * 64) % 960, 64))
            .collect();
        session.run_steps(&plan, &infos).unwrap();
        let labels: Vec<String> = plan.dispatches.iter().map(|d| d.label.clone()).collect();
        // The layer's compacted product's live workgroup counts after the last step, or None
        // when it is not routed (none at all when the layer has no such product).
        let product = plan
            .dispatches
            .iter()
            .zip(&plan.owners)
            .find(|(d, owner)| {
                *owner == layer && plain_form(&d.label) == "sparse.ell_input_product_compacted"
            })
            .map(|(d, _)| {
                d.indirect.clone().map(|(buf, at)| {
                    let raw = session.gpu.read_ranges(&[(&buf, at, 12)]).unwrap();
                    bytemuck::pod_collect_to_vec::<u8, u32>(&raw[0])
                })
            });
        // The trained state evaluated on the test images (an evaluation plan: on CPU adapters
        // every input-sparse layer of it takes the compacted product, hidden ones too).
        let test = session.upload("test", &data.test).unwrap();
        let eval = session.eval_plan(&test, cfg.alpha as f32).unwrap();
        let scores = session.evaluate(&eval, &test).unwrap();
        (session.snapshot().unwrap(), product, labels, scores)
    };
    let (dense, none, _, dense_scores) = train_steps(0.0);
    assert_eq!(
        none, None,
        "{model}: no input-sparse forward, no compacted product"
    );
    let (compacted, product, labels, scores) = train_steps(1.0);
    // Bit for bit where a CPU adapter runs its own plan (a GPU's compiler may contract the
    // two paths' multiply-adds differently).
    let exact = cpu && adapter_cpu && model != "lenet300";
    if exact {
        assert_eq!(
            (scores.0.to_bits(), scores.1.to_bits()),
            (dense_scores.0.to_bits(), dense_scores.1.to_bits()),
            "{model}: test loss and accuracy {scores:?} against {dense_scores:?}"
        );
    } else {
        assert!(
            (scores.0 - dense_scores.0).abs() <= 1e-4,
            "{model}: {scores:?}"
        );
    }
    let hidden = model != "lenet300";
    // On CPU adapters the first layer's forward goes through no switch, nor does a small
    // layer's (`small_input_sparse`, LeNet-300-100's fc2), which GPUs never give that forward.
    let unrouted = cpu && !hidden;
    let small = !hidden && layer != "fc1";
    match product {
        None => assert!(small && !cpu, "{model}: {layer} has no compacted product"),
        // Unrouted, it runs every step.
        Some(None) => assert!(
            unrouted,
            "{model}: {layer}'s compacted product is not routed"
        ),
        Some(Some(live)) => {
            assert!(!unrouted, "{model}: {layer}'s product is routed");
            assert!(live[0] > 0, "{model}: {layer}'s compacted product ran last");
        }
    }
    // Kernels counted by their plain form's name; the subgroup forms where the device has them.
    let count = |l: &str| labels.iter().filter(|x| plain_form(x) == l).count();
    let subgroup_forms = labels.iter().filter(|x| x.ends_with(SUBGROUP_FORM)).count();
    if unrouted {
        // fc1's and fc2's compacted products, fc2's product to the input, fc1's listed weight
        // gradient and fc2's full one, fc3's forward.
        assert_eq!(subgroup_forms, if subgroups8 { 6 } else { 0 }, "{labels:?}");
        // The first layer's mask pass only counts, P^T's columns are written from W, and the
        // compacted product always runs, unrouted: no copy, no plain product, no other route.
        // So does fc2's (`small_input_sparse`), whose product to the input reads those columns.
        // fc2's count and reset one dispatch (100 rows: `SMALL_PASS_ROWS`), fc3's mask pass
        // and reset one more (10 rows), its weight gradient one more.
        assert_eq!(
            count("masked.mask_count_rowwise4"),
            1,
            "{model}: {labels:?}"
        );
        assert_eq!(count("masked.mask_count_pass_small4"), 1, "{labels:?}");
        // fc1's weight-gradient lists come with its input lists: no dispatch of their own.
        assert_eq!(count("sparse.input_lists_split_klists"), 1, "{labels:?}");
        assert_eq!(count("gemm.tn_k_lists"), 0, "{labels:?}");
        assert_eq!(count("masked.mask_forward_rowwise4"), 0, "{labels:?}");
        assert_eq!(count("masked.mask_pass_small4"), 1, "{labels:?}");
        assert_eq!(count("masked.narrow_weight_grad"), 1, "{labels:?}");
        assert_eq!(count("masked.mask_backward"), 0, "{labels:?}");
        assert_eq!(count("sparse.masked_columns4"), 2, "{labels:?}");
        assert_eq!(count("sparse.ell_input_product_compacted"), 2, "{labels:?}");
        assert_eq!(count("sparse.ordered_input_grad"), 1, "{labels:?}");
        assert_eq!(count("sparse.compact_columns"), 0, "{labels:?}");
        assert_eq!(count("sparse.ell_input_product"), 0, "{labels:?}");
        assert_eq!(count("sparse.ell_build"), 0, "{labels:?}");
    } else {
        // GPUs, and a hidden layer (whose product to the input reads P^T): the full mask pass
        // and the routed copy.
        assert_eq!(count("masked.mask_count_rowwise4"), 0, "{labels:?}");
        assert_eq!(
            labels
                .iter()
                .filter(|l| l.starts_with("sparse.masked_columns"))
                .count(),
            0,
            "{labels:?}"
        );
        assert_eq!(count("sparse.compact_columns"), 1, "{labels:?}");
    }
    for ((t, _, a), (_, _, b)) in dense.tensors.iter().zip(&compacted.tensors) {
        if exact {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{model}: {t} differs"
            );
        } else {
            assert!(
                a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4),
                "{model}: {t} differs"
            );
        }
    }
}

/// Runs `off`, `on` and `on` again: the repeat gives the same checkpoint bit for bit, and the
/// step losses and every tensor of `on` agree with `off`'s within 1e-4 (bit for bit on a CPU
/// adapter with `exact_on_cpu`).
fn assert_trains_alike(off: &TrainConfig, on: &TrainConfig, name: &str, exact_on_cpu: bool) {
    let (a, b, again) = (
        tmp("test", &format!("{name}-off")),
        tmp("test", &format!("{name}-on")),
        tmp("test", &format!("{name}-on-again")),
    );
    run(off, &a, false).unwrap();
    run(on, &b, false).unwrap();
    run(on, &again, false).unwrap();
    assert_same_checkpoints(&b, &again);
    let (la, lb) = (step_losses(&a), step_losses(&b));
    assert_eq!(la.len(), 8);
    for (x, y) in la.iter().zip(&lb) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "{name}: losses {la:?} vs {lb:?}"
        );
    }
    let exact = exact_on_cpu && gpu().class == dst::gpu::AdapterClass::Cpu;
    let (ca, cb) = (
        Checkpoint::load(&a.join("checkpoint.safetensors")).unwrap(),
        Checkpoint::load(&b.join("checkpoint.safetensors")).unwrap(),
    );
    for ((t, _, va), (_, _, vb)) in ca.tensors.iter().zip(&cb.tensors) {
        for (x, y) in va.iter().zip(vb) {
            if exact {
                assert_eq!(x, y, "{name}: {t} differs");
            } else {
                assert!((x - y).abs() <= 1e-4, "{name}: {t}: {x} vs {y}");
            }
        }
    }
}

/// The other adapter class's plan trains like this adapter's own: LeNet-300-100 (DST, batch 64)
/// with the GPU kernels (tiled and split-k products, the row-wise mask backward, ...) and with
/// the CPU adapters' ones (register blocks, SGD inside the weight gradient), 4 steps from the
/// same state: parameters and momenta agree within float reassociation. On lavapipe this runs the
/// GPU plan on CI, which has no GPU.
#[test]
fn gpu_and_cpu_plans_train_alike() {
    let cfg = TrainConfig {
        limit_train: Some(512),
        epochs: 1,
        ..TrainConfig::default()
    };
    let (gpu_labels, cpu_labels) = assert_classes_train_alike(&cfg, 64, 4, 1e-5);
    assert!(gpu_labels.iter().any(|l| l == "masked.mask_backward_rows"));
    assert!(!cpu_labels.iter().any(|l| l == "masked.mask_backward_rows"));
}

/// A run another process is writing (the lock on its `.dst.lock` held) is refused by `--resume`,
/// by a study that would extend it and by a new run given its folder, before anything there is
/// read or changed (two processes once wrote one folder together: one config, the other's
/// checkpoint, both logs interleaved); released, the run resumes.
#[test]
fn a_run_in_use_is_refused() {
    let cfg = small(640, 1);
    let a = tmp("test", "in-use");
    run(&cfg, &a, false).unwrap();
    let files = |d: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    // A refused call makes no lock file (a run of an older version has none).
    std::fs::remove_file(a.join(dst::train::LOCK_FILE)).unwrap();
    let e = run(&cfg, &a, true).unwrap_err();
    assert!(matches!(e, TrainError::Refused(_)), "{e}");
    assert!(!a.join(dst::train::LOCK_FILE).exists());
    // Another process's lock: a second open file of the lock is locked apart from train's.
    let held = std::fs::File::create(a.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    assert!(dst::train::in_use(&a));
    let before = files(&a);
    let two = TrainConfig {
        epochs: 2,
        ..cfg.clone()
    };
    let in_use = |e: String| {
        assert!(
            e.contains("is in use by another dst process") && e.contains("nothing was changed"),
            "{e}"
        );
    };
    let e = run(&two, &a, true).unwrap_err();
    assert!(matches!(e, TrainError::InUse { .. }), "{e}");
    in_use(e.to_string());
    let e = dst::study::ensure_run(&two, &a, &mut dst::train::Quiet).unwrap_err();
    in_use(e.to_string());
    assert_eq!(files(&a), before);
    // An attempt stopped in its first epoch (no checkpoint: a study trains it again, its lines
    // removed first) that another process is training: its lines stay.
    let c = tmp("test", "in-use-attempt");
    run(&cfg, &c, false).unwrap();
    for f in ["checkpoint.safetensors", "summary.json"] {
        std::fs::remove_file(c.join(f)).unwrap();
    }
    let steps: String = std::fs::read_to_string(c.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!steps.is_empty());
    std::fs::write(c.join("metrics.jsonl"), &steps).unwrap();
    let held_c = std::fs::File::open(c.join(dst::train::LOCK_FILE)).unwrap();
    held_c.try_lock().unwrap();
    in_use(
        dst::study::ensure_run(&cfg, &c, &mut dst::train::Quiet)
            .unwrap_err()
            .to_string(),
    );
    assert_eq!(
        std::fs::read_to_string(c.join("metrics.jsonl")).unwrap(),
        steps
    );
    drop(held_c);
    // A new run into an empty folder someone holds.
    let b = tmp("test", "in-use-new");
    std::fs::create_dir_all(&b).unwrap();
    let held_b = std::fs::File::create(b.join(dst::train::LOCK_FILE)).unwrap();
    held_b.try_lock().unwrap();
    in_use(run(&cfg, &b, false).unwrap_err().to_string());
    assert!(!b.join("config.json").exists());
    drop((held, held_b));
    assert_eq!(run(&two, &a, true).unwrap().last.epoch, 2);
    assert_eq!(run(&cfg, &b, false).unwrap().last.epoch, 1);
}

/// A write that fails for want of room says how to go on (the bare OS error said nothing of it);
/// a read-only file system names --out; other errors get no hint.
#[test]
fn a_full_or_read_only_disk_says_how_to_go_on() {
    let err = |kind| {
        TrainError::Io {
            path: "runs/a/checkpoint.safetensors".into(),
            source: std::io::Error::from(kind),
        }
        .to_string()
    };
    let full = err(std::io::ErrorKind::StorageFull);
    assert!(
        full.starts_with("runs/a/checkpoint.safetensors: ")
            && full.contains("free some space, then run the command again"),
        "{full}"
    );
    let ro = err(std::io::ErrorKind::ReadOnlyFilesystem);
    assert!(ro.contains("write into a writable one"), "{ro}");
    // The checkpoint's own write (the largest) says it too.
    let ck = dst::checkpoint::CheckpointError::Io {
        path: "runs/a/checkpoint.safetensors".into(),
        source: std::io::Error::from(std::io::ErrorKind::StorageFull),
    }
    .to_string();
    assert!(ck.contains("free some space"), "{ck}");
    let other = err(std::io::ErrorKind::NotFound);
    assert!(
        !other.contains("free some space") && !other.contains("--out"),
        "{other}"
    );
}
