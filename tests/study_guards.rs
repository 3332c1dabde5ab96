//! Guards of the studies and the report, on fake run directories (no GPU, no training): a study
//! never reuses a run on disk made with other settings or more epochs; values given twice are
//! refused; the report groups only runs that differ in nothing but their seed, and labels rows so
//! the difference shows; one unreadable run is left out of `dst report` / `dst plot` with a
//! warning.

use std::path::{Path, PathBuf};

use dst::report::{self, table, Rule, Run};
use dst::study::{self, Reproduce, RunState, Sweep};
use dst::train::{Quiet, TrainConfig};
use serde_json::json;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dst-guards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A finished run of `cfg` in `dir`, as `dst train` writes it (config.json, metrics.jsonl,
/// summary.json), with made-up figures; `config` replaces the config.json written when given.
fn fake_run(dir: &Path, cfg: &TrainConfig, acc: f64, config: Option<serde_json::Value>) {
    std::fs::create_dir_all(dir).unwrap();
    let config = config.unwrap_or_else(|| serde_json::to_value(cfg).unwrap());
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let keep = if cfg.dense { 1.0 } else { 0.1 };
    let mut lines = String::new();
    let mut last = json!({});
    for e in 1..=cfg.epochs {
        let step = 10 * e as u64;
        lines.push_str(&format!(
            "{}\n",
            json!({"kind": "step", "step": step, "epoch": e, "loss": 0.5, "penalty": 0.0,
                   "lr": cfg.lr, "keep": {"fc1": keep, "fc2": keep, "fc3": keep}})
        ));
        let layers: Vec<serde_json::Value> = ["fc1", "fc2", "fc3"]
            .iter()
            .map(|n| {
                json!({
                    "name": n, "shape": [10, 10], "kept": 10, "total": 100, "keep_ratio": keep,
                    "threshold_min": 0.0, "threshold_mean": 0.01 * e as f64, "threshold_max": 0.1,
                    "resets": 0
                })
            })
            .collect();
        last = json!({
            "epoch": e, "step": step, "train_loss": 0.3, "test_loss": 0.2,
            "test_acc": acc - (cfg.epochs - e) as f64, "keep_ratio": keep,
            "layers": layers,
            "epoch_seconds": 1.0, "ms_per_step": 10.0,
        });
        let mut l = last.clone();
        l["kind"] = json!("epoch");
        lines.push_str(&format!("{l}\n"));
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    let summary = json!({
        "model": cfg.model, "dense": cfg.dense, "adapter": "fake", "data": "embedded",
        "epochs": cfg.epochs, "steps": 10 * cfg.epochs, "last": last,
        "best_acc_epoch": cfg.epochs, "best_acc": acc, "best_acc_keep": keep,
        "lowest_keep_epoch": cfg.epochs, "lowest_keep": keep, "lowest_keep_acc": acc,
        "mean_ms_per_step": 10.0,
    });
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
}

fn err_of<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn sweep_spec() -> Sweep {
    Sweep {
        base: TrainConfig {
            limit_train: Some(256),
            epochs: 2,
            ..TrainConfig::default()
        },
        alphas: vec![5e-4],
        seeds: vec![1],
        dense: true,
    }
}

/// `dst sweep --lr 0.5` on a sweep folder trained with lr 0.01: refused, naming the run and the
/// setting, and nothing on disk changes; the same settings (or only another `log_every`) are
/// reused.
#[test]
fn a_sweep_refuses_runs_made_with_other_settings() {
    let out = tmp("sweep");
    let spec = sweep_spec();
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let runs = study::sweep(&spec, &out, &mut Quiet).unwrap();
    assert_eq!(runs.len(), 2);
    let before = std::fs::read(out.join("alpha5e-4-seed1/summary.json")).unwrap();

    let mut other = spec.clone();
    other.base.lr = 0.5;
    let e = err_of(study::sweep(&other, &out, &mut Quiet));
    assert!(
        e.contains("dense-seed1") && e.contains("lr 0.01") && e.contains("lr 0.5"),
        "{e}"
    );
    assert!(e.contains("pick another --out or remove it"), "{e}");
    // The other run refused is counted (removing the one named met the next).
    assert!(
        e.contains("(1 of this study's runs in the folder is refused too"),
        "{e}"
    );
    // Every run is refused on its own too, before any GPU work.
    let (dir, cfg) = &other.runs(&out)[1];
    let e = err_of(study::ensure_run(cfg, dir, &mut Quiet));
    assert!(
        e.contains("alpha5e-4-seed1") && e.contains("lr 0.01"),
        "{e}"
    );
    for (field, value, want) in [
        ("limit_train", json!(6000), "limit_train 256"),
        ("optimizer", json!("adam"), "optimizer sgd"),
        ("reset", json!("floor"), "reset paper"),
    ] {
        let mut v = serde_json::to_value(&spec.runs(&out)[1].1).unwrap();
        v[field] = value;
        let cfg: TrainConfig = serde_json::from_value(v).unwrap();
        let e = err_of(study::ensure_run(&cfg, dir, &mut Quiet));
        assert!(e.contains(want), "{field}: {e}");
    }
    assert_eq!(
        std::fs::read(out.join("alpha5e-4-seed1/summary.json")).unwrap(),
        before
    );

    // Only how often it logs: the same runs.
    let mut relog = spec.clone();
    relog.base.log_every = 7;
    study::sweep(&relog, &out, &mut Quiet).unwrap();
}

/// sweep.md names a one-epoch sweep's length in the singular.
#[test]
fn a_one_epoch_sweep_reads_1_epoch() {
    let out = tmp("one-epoch");
    let mut spec = sweep_spec();
    spec.base.epochs = 1;
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains("Model lenet300, 1 epoch, sgd lr 0.01 momentum 0.9, batch 64, data:"),
        "{md}"
    );
}

/// sweep.md names a momentum and a weight decay other than the defaults, and a learning-rate
/// schedule (it gave only the optimiser and lr: a sweep at momentum 0.5 could not be told from
/// its report).
#[test]
fn a_sweep_report_names_its_optimiser_settings() {
    let out = tmp("sweep-settings");
    let mut spec = sweep_spec();
    spec.base.momentum = 0.5;
    spec.base.weight_decay = 1e-4;
    spec.base.lr_steps = vec![1];
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains(
            "sgd lr 0.01 momentum 0.5, weight decay 0.0001, batch 64, lr x0.1 after epochs 1, data:"
        ),
        "{md}"
    );
}

/// A sweep run again with fewer seeds (or a reproduction with fewer seeds or models) reports
/// what it was asked for, and says which runs of the folder it leaves out; it said nothing, so
/// a mistyped list gave a smaller report in silence.
#[test]
fn a_study_names_the_runs_of_its_folder_it_leaves_out() {
    let out = tmp("left-out");
    let mut spec = sweep_spec();
    spec.seeds = vec![1, 2];
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(!md.contains("Not in this report"), "{md}");
    spec.seeds = vec![1];
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains(
            "Not in this report: 2 runs in this folder that were not asked for this time \
             (alpha5e-4-seed2, dense-seed2; other alphas or seeds)."
        ),
        "{md}"
    );
    // A reproduction: its runs are one level further down.
    let out = tmp("left-out-reproduce");
    let mut both = quick(None, Some(2));
    both.seeds = vec![1, 2];
    for (dir, cfg) in both.runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let one = quick(None, Some(2));
    let runs: Vec<Run> = one
        .runs(&out)
        .unwrap()
        .iter()
        .map(|(d, _)| Run::load(d).unwrap())
        .collect();
    let md = study::reproduce_markdown(&one, &runs, &out).unwrap();
    assert!(
        md.contains("Not in this report: 2 runs in this folder that were not asked for this time (lenet300/"),
        "{md}"
    );
}

/// A study's run folder that holds files no dst run wrote (no config.json) is refused, and the
/// files stay (a user's metrics.jsonl and chart there were replaced by the run's).
#[test]
fn a_run_folder_of_the_users_files_is_not_trained_over() {
    let out = tmp("users-files");
    let spec = sweep_spec();
    let (dir, _) = spec.runs(&out).into_iter().next().unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), "my precious log\n").unwrap();
    std::fs::write(dir.join("keep_per_layer.png"), "my png").unwrap();
    // A temporary of a killed first write and a file browser's file alone are no user's files.
    std::fs::write(dir.join(".config.json.tmp-123"), "{").unwrap();
    std::fs::write(dir.join(".DS_Store"), "").unwrap();
    let e = err_of(study::sweep(&spec, &out, &mut Quiet));
    assert!(
        e.contains("holds files no dst run wrote")
            && e.contains("metrics.jsonl")
            && !e.contains(".DS_Store")
            && !e.contains(".tmp-"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        "my precious log\n"
    );
    assert_eq!(
        std::fs::read(dir.join("keep_per_layer.png")).unwrap(),
        b"my png"
    );
}

/// A config.json written by an older version (fields added since absent) is the run whose
/// settings are the defaults: reused, not refused.
#[test]
fn an_older_config_json_counts_with_its_defaults() {
    let out = tmp("older");
    let spec = sweep_spec();
    let (dir, cfg) = &spec.runs(&out)[1];
    let mut v = serde_json::to_value(cfg).unwrap();
    for k in [
        "lr_steps",
        "lr_gamma",
        "optimizer",
        "target_keep",
        "target_epoch",
        "reset",
        "valid",
        "sparse_keep",
        "sparse_input",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    fake_run(dir, cfg, 95.0, Some(v));
    assert_eq!(
        study::ensure_run(cfg, dir, &mut Quiet).unwrap(),
        RunState::Done
    );
}

/// A finished run of more epochs than asked is not passed off as the shorter run.
#[test]
fn a_longer_run_is_refused() {
    let out = tmp("longer");
    let spec = sweep_spec();
    let (dir, cfg) = &spec.runs(&out)[1];
    let four = TrainConfig {
        epochs: 4,
        ..cfg.clone()
    };
    fake_run(dir, &four, 95.0, None);
    let e = err_of(study::ensure_run(cfg, dir, &mut Quiet));
    assert!(
        e.contains("alpha5e-4-seed1") && e.contains("4 epochs") && e.contains("--epochs 4"),
        "{e}"
    );
    assert_eq!(
        study::ensure_run(&four, dir, &mut Quiet).unwrap(),
        RunState::Done
    );
}

fn quick(limit_train: Option<usize>, epochs: Option<usize>) -> Reproduce {
    Reproduce {
        models: vec!["lenet300".into()],
        seeds: vec![1],
        epochs,
        data: None,
        limit_train,
        quick: true,
        valid: None,
    }
}

/// `dst reproduce table1 --quick --limit-train 3000` over a quick reproduction on 6000 images, or
/// asking 3 epochs of runs of 4: refused; REPORT.md tells what the runs used.
#[test]
fn a_reproduction_refuses_runs_of_other_data_or_length() {
    let out = tmp("reproduce");
    for (dir, cfg) in quick(None, None).runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let e = err_of(study::reproduce(&quick(Some(3000), None), &out, &mut Quiet));
    assert!(
        e.contains("lenet300/dense-seed1")
            && e.contains("limit_train 6000")
            && e.contains("limit_train 3000"),
        "{e}"
    );
    // The full reproduction on a data folder over the quick one: the embedded data is named
    // as such (not "data none"). The folder holds MNIST's files (a folder of the wrong dataset,
    // or none, is refused before this check).
    let elsewhere = tmp("elsewhere").join("mnist");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let subset = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-subset");
    for f in std::fs::read_dir(&subset).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, elsewhere.join(f.file_name().unwrap())).unwrap();
    }
    let full = Reproduce {
        data: Some(elsewhere.clone()),
        quick: false,
        ..quick(None, Some(3))
    };
    let e = err_of(study::reproduce(&full, &out, &mut Quiet));
    assert!(
        e.contains("was trained with data the embedded subset, limit_train 6000")
            && e.contains(&format!(
                "asks for data {}, limit_train none",
                elsewhere.display()
            )),
        "{e}"
    );
    let missing = Reproduce {
        data: Some(PathBuf::from("/elsewhere/mnist")),
        ..full.clone()
    };
    let e = err_of(study::reproduce(&missing, &out, &mut Quiet));
    assert!(e.contains("/elsewhere/mnist: no such folder"), "{e}");
    assert!(!e.contains("data none"), "{e}");
    let report = study::reproduce(&quick(None, None), &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(report).unwrap();
    assert!(
        md.contains("first 6000 training images") && md.contains("- epochs: 3\n"),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "`dst reproduce table1 --seeds 1 --quick --model lenet300 --out {}`",
            out.display()
        )),
        "{md}"
    );
    // An MNIST reproduction: so titled, and the CIFAR-10 rows' command named (they are in this
    // build).
    assert!(
        md.starts_with("# Reproduction of Table 1 (MNIST rows)")
            && md.contains(
                "- Table 1's CIFAR-10 rows: `dst reproduce table1 --model vgg16 --model wrn-16-8"
            )
            && !md.contains("not in this build"),
        "{md}"
    );
    // Every chart drawn is linked (the all-runs folder's per-layer charts were not).
    let mut drawn = 0;
    for sub in ["dst-first-seed", "all-runs"] {
        let dir = out.join("charts/lenet300").join(sub);
        for f in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".png") {
                drawn += 1;
                let link = format!("(charts/lenet300/{sub}/{name})");
                assert!(md.contains(&link), "{link} not in {md}");
            }
        }
    }
    assert!(drawn >= 6, "{drawn} charts");
    // Run again in its own folder (its REPORT.md, charts/ and runs there): taken, not refused
    // as another study's, and the report written again.
    let again = study::reproduce(&quick(None, None), &out, &mut Quiet).unwrap();
    assert_eq!(std::fs::read_to_string(again).unwrap(), md);
    // A note added to REPORT.md meanwhile is not lost.
    let noted = format!("{md}\nmy notes\n");
    std::fs::write(out.join("REPORT.md"), &noted).unwrap();
    let e = err_of(study::reproduce(&quick(None, None), &out, &mut Quiet));
    assert!(e.contains("changed after dst wrote it"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("REPORT.md")).unwrap(),
        noted
    );
    std::fs::write(out.join("REPORT.md"), &md).unwrap();

    let out = tmp("reproduce4");
    for (dir, cfg) in quick(None, Some(4)).runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let e = err_of(study::reproduce(&quick(None, None), &out, &mut Quiet));
    assert!(e.contains("4 epochs") && e.contains("asks for 3"), "{e}");
}

/// The header of REPORT.md comes from the runs' own settings, whatever the request says.
#[test]
fn the_reproduction_header_tells_what_the_runs_used() {
    let out = tmp("header");
    let asked = Reproduce {
        data: Some(PathBuf::from("/elsewhere/mnist")),
        valid: Some(500),
        ..quick(Some(3000), Some(3))
    };
    for (dir, cfg) in quick(None, Some(4)).runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let runs = report::load_runs(std::slice::from_ref(&out)).unwrap();
    let md = study::reproduce_markdown(&asked, &runs, &out).unwrap();
    assert!(
        md.contains("first 6000 training images") && md.contains("- epochs: 4\n"),
        "{md}"
    );
    assert!(!md.contains("first 3000 training images"), "{md}");
    assert!(
        md.contains("- data: the embedded MNIST subset") && !md.contains("held out"),
        "{md}"
    );
    // The command line is the request (which `reproduce` checks the runs against).
    assert!(
        md.contains("--limit-train 3000 --valid 500 --quick"),
        "{md}"
    );
    // Plain words, no internal names: one model, its seeds.
    assert!(
        md.contains("Table 1: the model lenet300, dense and DST")
            && md.contains("(`dst info` lists them; METHOD.md section 5) and seed 1.")
            && !md.contains("TrainConfig"),
        "{md}"
    );
}

/// The header names the runs' data folder as the command gave it (a relative path) where that
/// is the folder they read, not as the absolute path they record (a machine's own, which the
/// shipped report carried); a folder other than the one given is named in full.
#[test]
fn the_reproduction_header_names_the_data_folder_as_given() {
    let here = std::env::current_dir().unwrap();
    let abs = here.join("assets/mnist-subset");
    for (given, want) in [
        (
            "assets/mnist-subset",
            "- data: assets/mnist-subset,".to_string(),
        ),
        ("assets", format!("- data: {},", abs.display())),
    ] {
        let out = tmp(&format!("header-data-{}", given.len()));
        let asked = Reproduce {
            data: Some(PathBuf::from(given)),
            ..quick(None, Some(2))
        };
        for (dir, mut cfg) in quick(None, Some(2)).runs(&out).unwrap() {
            cfg.data = Some(abs.clone());
            fake_run(&dir, &cfg, 95.0, None);
        }
        let runs = report::load_runs(std::slice::from_ref(&out)).unwrap();
        let md = study::reproduce_markdown(&asked, &runs, &out).unwrap();
        assert!(md.contains(&want), "{given}: {md}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// A `--limit-train` above the images the folder holds left none out: the header does not
/// name it (a quick reproduction on 320 images said "first 6000 training images").
#[test]
fn the_reproduction_header_names_no_limit_that_left_nothing_out() {
    let out = tmp("header-limit");
    let asked = quick(None, Some(2));
    for (dir, cfg) in asked.runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
        let path = dir.join("summary.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["train_images"] = json!(320);
        std::fs::write(&path, v.to_string()).unwrap();
    }
    let runs = report::load_runs(std::slice::from_ref(&out)).unwrap();
    let md = study::reproduce_markdown(&asked, &runs, &out).unwrap();
    assert!(
        md.contains("- data: the embedded MNIST subset") && !md.contains("first 6000"),
        "{md}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// A reproduction of a model outside Table 1 (WRN-16-1) says it has no paper figures.
#[test]
fn a_model_outside_table_1_is_named_as_such() {
    let out = tmp("outside");
    let r = Reproduce {
        models: vec!["wrn-16-1".into()],
        seeds: vec![1],
        data: Some(PathBuf::from("/elsewhere/cifar10")),
        ..quick(None, Some(1))
    };
    for (dir, cfg) in r.runs(&out).unwrap() {
        fake_run(&dir, &cfg, 60.0, None);
    }
    let runs = report::load_runs(std::slice::from_ref(&out)).unwrap();
    let md = study::reproduce_markdown(&r, &runs, &out).unwrap();
    assert!(
        md.contains("the model wrn-16-1, dense and DST")
            && md.contains(
                "and seed 1. wrn-16-1 is not in the paper's table: it has no paper figures."
            ),
        "{md}"
    );
}

/// Seeds, alphas or models given twice would be trained once and counted twice: refused before
/// any work.
#[test]
fn values_given_twice_are_refused() {
    let out = tmp("twice");
    let mut s = sweep_spec();
    s.seeds = vec![1, 2, 1];
    let e = err_of(study::sweep(&s, &out, &mut Quiet));
    assert!(
        e.contains("--seeds") && e.contains("seed 1 is given twice"),
        "{e}"
    );
    let mut s = sweep_spec();
    s.alphas = vec![1e-4, 1e-4];
    let e = err_of(study::sweep(&s, &out, &mut Quiet));
    assert!(
        e.contains("--alpha") && e.contains("1e-4 is given twice"),
        "{e}"
    );

    let mut r = quick(None, None);
    r.seeds = vec![1, 1];
    let e = err_of(study::reproduce(&r, &out, &mut Quiet));
    assert!(e.contains("seed 1 is given twice"), "{e}");
    let mut r = quick(None, None);
    r.models = vec!["lenet300".into(), "lenet300".into()];
    let e = err_of(study::reproduce(&r, &out, &mut Quiet));
    assert!(e.contains("--model lenet300 is given twice"), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written"
    );

    for (args, want) in [
        (
            &["sweep", "--alpha", "1e-4,1e-4", "--out"][..],
            "1e-4 is given twice",
        ),
        (
            &["reproduce", "table1", "--quick", "--seeds", "1,1", "--out"][..],
            "seed 1 is given twice",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(args)
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// Finished runs that differ in something besides the seed are separate rows, labelled with the
/// difference; the seed, `log_every` and the kernel choices do not split a row.
#[test]
fn report_rows_hold_one_configuration_each() {
    let root = tmp("rows");
    let base = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    fake_run(&root.join("dst-1"), &base, 97.0, None);
    fake_run(
        &root.join("dst-2"),
        &TrainConfig {
            seed: 2,
            log_every: 10,
            sparse_keep: Some(0.3),
            ..base.clone()
        },
        96.0,
        None,
    );
    fake_run(
        &root.join("steered"),
        &TrainConfig {
            target_keep: Some(0.05),
            reset: "floor".into(),
            lr: 0.1,
            ..base.clone()
        },
        20.0,
        None,
    );
    let dense = TrainConfig {
        dense: true,
        ..base.clone()
    };
    fake_run(&root.join("dense-sgd"), &dense, 98.0, None);
    fake_run(
        &root.join("dense-adam"),
        &TrainConfig {
            optimizer: "adam".into(),
            lr: 1e-3,
            seed: 2,
            ..dense.clone()
        },
        90.0,
        None,
    );
    let runs = report::load_runs(std::slice::from_ref(&root)).unwrap();
    let rows = table::rows(&runs);
    let got: Vec<(String, Vec<u64>)> = rows
        .iter()
        .map(|r| (r.variant(), r.seeds.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("dense, optimizer adam, lr 0.001".to_string(), vec![2]),
            ("dense, optimizer sgd, lr 0.01".to_string(), vec![1]),
            (
                "DST alpha 5e-4, optimizer sgd, lr 0.01".to_string(),
                vec![1, 2]
            ),
            (
                "DST target keep 5 %, reset floor, optimizer sgd, lr 0.1".to_string(),
                vec![1]
            ),
        ]
    );
    let (acc, _) = rows[2].get(Rule::Last).unwrap();
    assert!((acc.mean - 96.5).abs() < 1e-9 && acc.n == 2, "{acc:?}");
    let md = report::report_markdown(&runs);
    assert!(
        md.contains("| DST target keep 5 %, reset floor, optimizer sgd, lr 0.1 |"),
        "{md}"
    );
    let csv = table::csv(&rows);
    assert!(table::csv_as_written(&csv), "{csv}");
    assert!(csv.contains("\"dense, optimizer adam, lr 0.001\""));
    // A steered row: its starting alpha and the keep it steered toward, each in its column; a
    // fixed-alpha row has no target, a dense row neither.
    assert!(
        csv.contains("lenet300,false,0.0005,0.05,\"DST target keep 5 %, reset floor,"),
        "{csv}"
    );
    assert!(
        csv.contains("lenet300,false,0.0005,,\"DST alpha 5e-4,")
            && csv.contains("lenet300,true,,,\"dense, optimizer sgd"),
        "{csv}"
    );
}

/// One run with a damaged config.json: `dst report` and `dst plot` leave it out with a warning
/// naming the file, and go on; with no readable run at all, a clear error.
#[test]
fn a_damaged_run_is_left_out_with_a_warning() {
    let root = tmp("damaged");
    let cfg = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    fake_run(&root.join("good"), &cfg, 97.0, None);
    let bad = root.join("bad");
    fake_run(&bad, &cfg, 97.0, None);
    std::fs::write(bad.join("config.json"), "{\"model\": \"lenet300\", ").unwrap();

    let runs = report::load_runs(std::slice::from_ref(&root)).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].dir.ends_with("good"));
    let bad_file = bad.join("config.json").display().to_string();
    let dst = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(args)
            .output()
            .unwrap()
    };
    let plots = root.join("plots").display().to_string();
    for args in [
        vec!["report", root.to_str().unwrap()],
        vec!["plot", root.to_str().unwrap(), "--out", &plots],
    ] {
        let o = dst(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("warning") && err.contains(&bad_file) && err.contains("EOF"),
            "{args:?}: {err}"
        );
    }

    std::fs::write(root.join("good/config.json"), "not json").unwrap();
    let e = err_of(report::load_runs(std::slice::from_ref(&root)));
    assert!(
        e.contains("no readable run") && e.contains(&bad_file),
        "{e}"
    );
    let o = dst(&["report", root.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no readable run"));
}

/// `train` records --data as an absolute path: a sweep given the same folder relative (run again
/// to resume it) reuses its runs, as it did before; another folder is still refused.
#[test]
fn a_relative_data_folder_is_the_same_folder() {
    let out = tmp("relative-data");
    let mut spec = sweep_spec();
    let here = std::env::current_dir().unwrap();
    spec.base.data = Some(here.join("assets/mnist-subset"));
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    spec.base.data = Some("assets/mnist-subset".into());
    let (dir, cfg) = &spec.runs(&out)[1];
    study::check_reuse(cfg, dir).unwrap();
    spec.base.data = Some("assets/elsewhere".into());
    let (dir, cfg) = &spec.runs(&out)[1];
    let e = err_of(study::check_reuse(cfg, dir));
    assert!(e.contains("assets/elsewhere"), "{e}");
    // Only the data folder differs: how to keep the runs if the data moved (it said only to
    // remove them).
    assert!(
        e.contains("if the data moved, set \"data\" in the runs' config.json files"),
        "{e}"
    );
    // Another setting besides: no such hint.
    spec.base.lr = 0.5;
    let (dir, cfg) = &spec.runs(&out)[1];
    let e = err_of(study::check_reuse(cfg, dir));
    assert!(!e.contains("if the data moved"), "{e}");
}

/// A study's run whose checkpoint cannot be read, or whose checkpoint went missing after it
/// finished, is refused naming it, and nothing in its folder changes (both were once taken for
/// "nothing usable" and trained over, the run's results deleted).
#[test]
fn a_run_with_a_bad_or_missing_checkpoint_is_not_trained_over() {
    let out = tmp("bad-checkpoint");
    let mut spec = sweep_spec();
    spec.base.epochs = 1;
    let (dir, cfg) = spec.runs(&out)[1].clone();
    fake_run(&dir, &cfg, 95.0, None);
    let files = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        v
    };
    // Finished for 1 epoch, no checkpoint: asked for 2, it cannot be extended.
    let longer = TrainConfig {
        epochs: 2,
        ..cfg.clone()
    };
    let before = files(&dir);
    let e = err_of(study::ensure_run(&longer, &dir, &mut Quiet));
    assert!(
        e.contains("checkpoint is missing, so it cannot be extended"),
        "{e}"
    );
    assert_eq!(files(&dir), before);
    // A damaged checkpoint beside it: named, left as it is.
    std::fs::write(dir.join("checkpoint.safetensors"), b"not a checkpoint").unwrap();
    let before = files(&dir);
    let e = err_of(study::ensure_run(&longer, &dir, &mut Quiet));
    assert!(
        e.contains("its checkpoint cannot be used") && e.contains("checkpoint.safetensors"),
        "{e}"
    );
    assert_eq!(files(&dir), before);
}

/// A finished run that lost its metrics.jsonl is in the reproduction's table (from its summary)
/// but not in its charts: REPORT.md is still written (the charts once failed the command with
/// "nothing to draw").
#[test]
fn a_reproduction_with_a_run_that_lost_its_log_is_still_reported() {
    let out = tmp("reproduce-no-log");
    let runs = quick(None, None).runs(&out).unwrap();
    for (dir, cfg) in &runs {
        fake_run(dir, cfg, 95.0, None);
    }
    let dst_run = runs.iter().find(|(_, c)| !c.dense).unwrap();
    std::fs::remove_file(dst_run.0.join("metrics.jsonl")).unwrap();
    let report = study::reproduce(&quick(None, None), &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(report).unwrap();
    assert!(md.contains("alpha5e-4-seed1"), "{md}");
}

/// A study's --out under a file is refused naming the file, before any run.
#[test]
fn a_study_folder_under_a_file_names_the_file() {
    let root = tmp("under-file");
    let file = root.join("afile");
    std::fs::write(&file, b"mine").unwrap();
    let e = err_of(study::sweep(&sweep_spec(), &file.join("sw"), &mut Quiet));
    assert!(
        e.contains(&format!(
            "the folder cannot be made: {} is a file",
            file.display()
        )),
        "{e}"
    );
    let e = err_of(study::reproduce(
        &quick(None, None),
        &file.join("rp"),
        &mut Quiet,
    ));
    assert!(e.contains("the folder cannot be made"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

/// A second sweep into a sweep's folder with other settings is refused even where no run folder
/// collides (other alphas, `--no-dense`): its sweep.md replaced the first one's and `dst report`
/// mixed models, lengths and learning rates. Runs that differ only in alpha or seed are another
/// part of the same sweep: accepted, and named as left out.
#[test]
fn a_sweep_into_another_sweeps_folder_is_refused() {
    let out = tmp("other-sweep");
    let spec = sweep_spec();
    for (dir, cfg) in spec.runs(&out) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let md = std::fs::read(out.join("sweep.md")).unwrap();
    let other = |edit: &dyn Fn(&mut Sweep)| {
        let mut s = Sweep {
            alphas: vec![7e-3],
            dense: false,
            ..sweep_spec()
        };
        edit(&mut s);
        s
    };
    for (edit, theirs, ours) in [
        (
            &(|s: &mut Sweep| s.base.lr = 0.05) as &dyn Fn(&mut Sweep),
            "lr 0.01",
            "lr 0.05",
        ),
        (
            &|s: &mut Sweep| {
                s.base.model = "lenet5".into();
                s.base.epochs = 1;
            },
            "model lenet300, epochs 2",
            "model lenet5, epochs 1",
        ),
        (
            &|s: &mut Sweep| s.base.limit_train = Some(300),
            "limit_train 256",
            "limit_train 300",
        ),
    ] {
        let e = err_of(study::sweep(&other(edit), &out, &mut Quiet));
        assert!(
            e.contains(&format!(
                "holds runs of another study (alpha5e-4-seed1 and another run): \
                 alpha5e-4-seed1 was trained with {theirs}, this study's runs use {ours}."
            )),
            "{e}"
        );
        assert!(!out.join("alpha7e-3-seed1").exists());
    }
    // Only another length: the hint says how to make them one study; asking for them too
    // only where that extends them, and for the dense baseline by dropping --no-dense.
    let e = err_of(study::sweep(
        &other(&|s| s.base.epochs = 3),
        &out,
        &mut Quiet,
    ));
    assert!(
        e.contains("holds runs of 2 epochs (alpha5e-4-seed1 and another run), and this study's runs are of 3")
            && e.contains("Pass --epochs 2, ask for their alphas and seeds too"),
        "{e}"
    );
    let e = err_of(study::sweep(
        &other(&|s| s.base.epochs = 1),
        &out,
        &mut Quiet,
    ));
    assert!(
        e.contains("Pass --epochs 2, or pick another --out") && !e.contains("ask for"),
        "{e}"
    );
    let mut dense_only = other(&|s| s.base.epochs = 3);
    dense_only.alphas = vec![5e-4];
    let e = err_of(study::sweep(&dense_only, &out, &mut Quiet));
    assert!(
        e.contains("(dense-seed1)") && e.contains("Pass --epochs 2, drop --no-dense"),
        "{e}"
    );
    // A run it cannot read is not this study's to judge (`dst report` names it).
    let hidden = out.join("zz-unreadable");
    fake_run(&hidden, &spec.runs(&out)[0].1, 90.0, None);
    std::fs::write(hidden.join("config.json"), "{").unwrap();
    let e = err_of(study::sweep(
        &other(&|s| s.base.lr = 0.05),
        &out,
        &mut Quiet,
    ));
    assert!(
        e.contains("(alpha5e-4-seed1 and another run): alpha5e-4-seed1 was"),
        "{e}"
    );
    std::fs::remove_dir_all(&hidden).unwrap();
    assert_eq!(std::fs::read(out.join("sweep.md")).unwrap(), md);
    // The same settings, another alpha: part of this sweep.
    let more = other(&|_| {});
    for (dir, cfg) in more.runs(&out) {
        fake_run(&dir, &cfg, 94.0, None);
    }
    study::sweep(&more, &out, &mut Quiet).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains("(alpha5e-4-seed1, dense-seed1; other alphas or seeds)"),
        "{md}"
    );

    // A reproduction likewise: another limit for the same model, over runs of seed 1.
    let out = tmp("other-reproduction");
    for (dir, cfg) in quick(None, Some(2)).runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let mut seven = quick(Some(500), Some(2));
    seven.seeds = vec![7];
    let e = err_of(study::reproduce(&seven, &out, &mut Quiet));
    assert!(
        e.contains("lenet300/alpha5e-4-seed1 was trained with limit_train 6000")
            && e.contains("this study's runs use limit_train 500"),
        "{e}"
    );
    // Asked again for one of its models: the other model's runs are of the same study (each
    // model at its own settings), and a run of a model this build lacks is not judged.
    let out = tmp("reproduction-part");
    let mut two = quick(None, Some(2));
    two.models = vec!["lenet300".into(), "lenet5".into()];
    for (dir, cfg) in two.runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    let (_, any) = &two.runs(&out).unwrap()[0];
    let mut unknown = serde_json::to_value(any).unwrap();
    unknown["model"] = json!("mystery");
    unknown["lr"] = json!(0.5);
    fake_run(&out.join("mystery/dense-seed1"), any, 90.0, Some(unknown));
    study::reproduce(&quick(None, Some(2)), &out, &mut Quiet).unwrap();
}

/// Each study marks its folder (study.json) before it trains: a reproduction stopped in its first
/// run (no REPORT.md yet) is still one, and a sweep into a folder of its models is refused; a
/// reproduction whose model folder holds a sweep is refused too (both were accepted, and their
/// reports took in each other's runs).
#[test]
fn the_two_kinds_of_study_stay_apart_before_their_reports() {
    let out = tmp("marked");
    let r = quick(None, Some(2));
    for (dir, cfg) in r.runs(&out).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::reproduce(&r, &out, &mut Quiet).unwrap();
    let marker = std::fs::read_to_string(out.join(study::STUDY_FILE)).unwrap();
    assert!(
        marker.contains("\"study\":\"reproduce table1\""),
        "{marker}"
    );
    // As a reproduction interrupted before its report left it.
    std::fs::remove_file(out.join("REPORT.md")).unwrap();
    std::fs::remove_dir_all(out.join("charts")).unwrap();
    let sweep = Sweep {
        base: TrainConfig {
            limit_train: Some(6000),
            epochs: 2,
            ..TrainConfig::default()
        },
        ..sweep_spec()
    };
    let e = err_of(study::sweep(&sweep, &out.join("lenet300"), &mut Quiet));
    assert!(
        e.contains("is the lenet300 folder of the `dst reproduce` study"),
        "{e}"
    );
    // Any folder in it (the reproduction's report would take its runs in), through a link or
    // by another spelling too, and a reproduction nested in it.
    let e = err_of(study::sweep(&sweep, &out.join("foo"), &mut Quiet));
    assert!(
        e.contains("is the foo folder of the `dst reproduce` study"),
        "{e}"
    );
    let e = err_of(study::sweep(
        &sweep,
        &out.join("lenet300/../lenet300/."),
        &mut Quiet,
    ));
    assert!(
        e.contains("is the lenet300 folder of the `dst reproduce`"),
        "{e}"
    );
    #[cfg(unix)]
    {
        let link = tmp("marked-link").join("to300");
        std::os::unix::fs::symlink(out.join("lenet300"), &link).unwrap();
        let e = err_of(study::sweep(&sweep, &link, &mut Quiet));
        assert!(
            e.contains("is the lenet300 folder of the `dst reproduce`"),
            "{e}"
        );
    }
    let e = err_of(study::reproduce(&r, &out.join("lenet5"), &mut Quiet));
    assert!(
        e.contains("is the lenet5 folder of the `dst reproduce` study")
            && e.contains("a reproduction's runs"),
        "{e}"
    );
    assert!(!out.join("foo").exists() && !out.join("lenet5").exists());
    let e = err_of(study::sweep(&sweep, &out, &mut Quiet));
    assert!(e.contains("`dst reproduce` study (study.json)"), "{e}");
    assert!(!out.join("lenet300/sweep.md").exists());

    // A sweep in a folder named after a model, then a reproduction over its parent.
    let root = tmp("marked-sweep");
    let sw = root.join("lenet300");
    for (dir, cfg) in sweep.runs(&sw) {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::sweep(&sweep, &sw, &mut Quiet).unwrap();
    assert!(std::fs::read_to_string(sw.join(study::STUDY_FILE))
        .unwrap()
        .contains("\"study\":\"sweep\""));
    for f in ["sweep.md", "sweep.csv", "sweep.png"] {
        let _ = std::fs::remove_file(sw.join(f));
    }
    let e = err_of(study::reproduce(&r, &root, &mut Quiet));
    assert!(
        e.contains("looks like a `dst sweep` study") && e.contains("study.json"),
        "{e}"
    );
    assert!(!root.join("REPORT.md").exists());

    // A reproduction over a folder whose model folder holds another reproduction.
    let outer = tmp("marked-outer");
    for (dir, cfg) in r.runs(&outer.join("lenet300")).unwrap() {
        fake_run(&dir, &cfg, 95.0, None);
    }
    study::reproduce(&r, &outer.join("lenet300"), &mut Quiet).unwrap();
    let e = err_of(study::reproduce(&r, &outer, &mut Quiet));
    assert!(
        e.contains("looks like a `dst reproduce` study")
            && e.contains(&format!("lenet300{}study.json", std::path::MAIN_SEPARATOR)),
        "{e}"
    );
    assert!(!outer.join(study::STUDY_FILE).exists());

    // A study.json that dst did not write is not replaced.
    let theirs = tmp("marked-theirs");
    std::fs::write(theirs.join(study::STUDY_FILE), "{\"mine\": 1}").unwrap();
    let e = err_of(study::sweep(&sweep, &theirs, &mut Quiet));
    assert!(
        e.contains("holds a study.json that dst did not write"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(theirs.join(study::STUDY_FILE)).unwrap(),
        "{\"mine\": 1}"
    );
}

/// A study that fails before any of its runs is set up (one in use by another process) leaves
/// no study.json behind: it said nothing was changed, and the mark refused the other kind of
/// study there.
#[test]
fn a_study_stopped_before_its_runs_leaves_no_mark() {
    let out = tmp("unmarked");
    let spec = sweep_spec();
    let (first, _) = spec.runs(&out).into_iter().next().unwrap();
    std::fs::create_dir_all(&first).unwrap();
    let held = dst::train::lock_run(&first).unwrap();
    let e = err_of(study::sweep(&spec, &out, &mut Quiet));
    drop(held);
    assert!(e.contains("in use by another dst process"), "{e}");
    assert!(!out.join(study::STUDY_FILE).exists());
}
