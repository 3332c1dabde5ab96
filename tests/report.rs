//! Reporting: run directories read back, tables that agree with the run summaries, charts and
//! mask pictures that are real images, the alpha sweep (resumable) and a DST LeNet-300-100 whose
//! first layer prunes MNIST's empty border. The first tests build fake run directories (no GPU);
//! the last two train on the embedded subset (lavapipe in CI).

use std::path::{Path, PathBuf};

use dst::checkpoint::Checkpoint;
use dst::report::{self, table, Rule, Run};
use dst::study::{self, RunState, Sweep};
use dst::train::{Quiet, TrainConfig};
use serde_json::json;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dst-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Size of a PNG, and a check that it is a picture: several colours, and neither blank (nearly
/// all one colour) nor without background.
fn check_png(path: &Path, size: (u32, u32)) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let mut counts = std::collections::HashMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_insert(0usize) += 1;
    }
    let n = (size.0 * size.1) as usize;
    let most = *counts.values().max().unwrap();
    assert!(
        counts.len() >= 8,
        "{}: {} colours",
        path.display(),
        counts.len()
    );
    assert!(
        most < n * 99 / 100,
        "{}: {:.1}% of the pixels are one colour",
        path.display(),
        100.0 * most as f64 / n as f64
    );
}

struct Fake {
    model: &'static str,
    dense: bool,
    alpha: f64,
    seed: u64,
    epochs: usize,
    /// (test acc, keep) per epoch.
    history: Vec<(f64, f64)>,
    valid: Option<Vec<f64>>,
    finished: bool,
}

/// A run directory as `dst train` writes it, from made-up numbers; returns its summary as JSON.
fn write_fake(dir: &Path, f: &Fake) -> serde_json::Value {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "model": f.model, "dense": f.dense, "alpha": f.alpha, "epochs": f.epochs, "batch": 64,
        "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "seed": f.seed, "limit_train": null,
        "log_every": 100, "data": null, "optimizer": "sgd"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let layers = ["fc1", "fc2", "fc3"];
    let mut lines = Vec::new();
    let mut epochs = Vec::new();
    for (e, &(acc, keep)) in f.history.iter().enumerate() {
        let epoch = e + 1;
        for s in 0..3 {
            let step = (e * 3 + s + 1) as u64 * 10;
            let k = |i: usize| (keep.powf(1.0 / (i as f64 + 1.0))).min(1.0);
            lines.push(json!({
                "kind": "step", "step": step, "epoch": epoch, "loss": 1.0 / step as f64,
                "penalty": 0.01, "lr": 0.01, "train_acc": 90.0, "alpha": f.alpha * (1.0 + s as f64),
                "keep": {"fc1": k(0), "fc2": k(1), "fc3": k(2)},
            }));
        }
        let mut rec = json!({
            "epoch": epoch, "step": (epoch * 30) as u64, "train_loss": 0.3, "train_penalty": 0.01,
            "train_acc": 95.0, "test_loss": 0.2, "test_acc": acc, "keep_ratio": keep,
            "layers": layers.iter().enumerate().map(|(i, n)| json!({
                "name": n, "shape": [10, 10], "kept": 50, "total": 100,
                "keep_ratio": keep.powf(1.0 / (i as f64 + 1.0)),
                "threshold_min": 0.0, "threshold_mean": 0.01 * epoch as f64 * (i + 1) as f64,
                "threshold_max": 0.1, "resets": 0
            })).collect::<Vec<_>>(),
            "epoch_seconds": 1.0, "ms_per_step": 10.0,
        });
        if let Some(v) = &f.valid {
            rec["valid_acc"] = json!(v[e]);
        }
        epochs.push(rec.clone());
        rec["kind"] = json!("epoch");
        lines.push(rec);
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let best = epochs
        .iter()
        .max_by(|a, b| {
            a["test_acc"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["test_acc"].as_f64().unwrap())
        })
        .unwrap();
    let low = epochs
        .iter()
        .min_by(|a, b| {
            a["keep_ratio"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["keep_ratio"].as_f64().unwrap())
        })
        .unwrap();
    let mut s = json!({
        "model": f.model, "dense": f.dense, "adapter": "fake", "data": "embedded",
        "epochs": f.epochs, "steps": f.epochs * 30, "last": epochs.last().unwrap(),
        "best_acc_epoch": best["epoch"], "best_acc": best["test_acc"], "best_acc_keep": best["keep_ratio"],
        "lowest_keep_epoch": low["epoch"], "lowest_keep": low["keep_ratio"], "lowest_keep_acc": low["test_acc"],
        "mean_ms_per_step": 10.0,
    });
    if let Some(v) = &f.valid {
        let (i, _) = v
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        s["best_valid_epoch"] = json!(i + 1);
        s["best_valid_test_acc"] = epochs[i]["test_acc"].clone();
        s["best_valid_keep"] = epochs[i]["keep_ratio"].clone();
    }
    if f.finished {
        std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    }
    s
}

/// A finished one-epoch DST LeNet-300-100 run of `seed` at test accuracy `acc`, 5 % kept.
fn one_epoch_dst(seed: u64, acc: f64) -> Fake {
    Fake {
        model: "lenet300",
        dense: false,
        alpha: 5e-4,
        seed,
        epochs: 1,
        history: vec![(acc, 0.05)],
        valid: None,
        finished: true,
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// A small set of runs: dense seeds 1-2, DST alpha 5e-4 seeds 1-3 (with a validation split),
/// DST alpha 1e-3 seeds 1-2 and one unfinished run.
fn fake_study(root: &Path) -> Vec<(String, serde_json::Value)> {
    let mut sums = Vec::new();
    let hist = |a: f64, k: f64| vec![(a - 1.0, 0.6), (a, k), (a - 0.3, k * 1.5)];
    for seed in 1..=2u64 {
        let name = format!("dense-seed{seed}");
        sums.push((
            name.clone(),
            write_fake(
                &root.join(name),
                &Fake {
                    model: "lenet300",
                    dense: true,
                    alpha: 5e-4,
                    seed,
                    epochs: 3,
                    history: vec![(97.0, 1.0), (98.0 + 0.1 * seed as f64, 1.0), (97.9, 1.0)],
                    valid: None,
                    finished: true,
                },
            ),
        ));
    }
    for seed in 1..=3u64 {
        let name = format!("alpha5e-4-seed{seed}");
        sums.push((
            name.clone(),
            write_fake(
                &root.join(name),
                &Fake {
                    model: "lenet300",
                    dense: false,
                    alpha: 5e-4,
                    seed,
                    epochs: 3,
                    history: hist(97.0 + 0.2 * seed as f64, 0.05 + 0.01 * seed as f64),
                    valid: Some(vec![90.0, 95.0 + seed as f64, 94.0]),
                    finished: true,
                },
            ),
        ));
    }
    for seed in 1..=2u64 {
        let name = format!("alpha1e-3-seed{seed}");
        sums.push((
            name.clone(),
            write_fake(
                &root.join(name),
                &Fake {
                    model: "lenet300",
                    dense: false,
                    alpha: 1e-3,
                    seed,
                    epochs: 3,
                    history: hist(96.0 + 0.5 * seed as f64, 0.02 * seed as f64),
                    valid: None,
                    finished: true,
                },
            ),
        ));
    }
    write_fake(
        &root.join("alpha1e-3-seed3"),
        &Fake {
            model: "lenet300",
            dense: false,
            alpha: 1e-3,
            seed: 3,
            epochs: 3,
            history: vec![(90.0, 0.5)],
            valid: None,
            finished: false,
        },
    );
    sums
}

#[test]
fn tables_agree_with_the_run_summaries() {
    let root = tmp("table");
    let sums = fake_study(&root);
    let runs = report::load_runs(std::slice::from_ref(&root)).unwrap();
    assert_eq!(runs.len(), 8);
    let rows = table::rows(&runs);
    assert_eq!(
        rows.iter().map(|r| r.variant()).collect::<Vec<_>>(),
        ["dense", "DST alpha 5e-4", "DST alpha 1e-3"]
    );
    let pick = |variant: &str, key: &str, scale: f64| -> Vec<f64> {
        let prefix = match variant {
            "dense" => "dense-".to_string(),
            a => format!("alpha{a}-"),
        };
        sums.iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, s)| scale * key.split('.').fold(s, |v, k| &v[k]).as_f64().unwrap())
            .collect()
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // Last epoch.
    for (i, variant) in ["dense", "5e-4", "1e-3"].iter().enumerate() {
        let (acc, rem) = rows[i].get(Rule::Last).unwrap();
        let (m, s) = mean_std(&pick(variant, "last.test_acc", 1.0));
        assert!(
            close(acc.mean, m) && close(acc.std, s),
            "{variant}: {acc:?} vs {m} ± {s}"
        );
        let (m, s) = mean_std(&pick(variant, "last.keep_ratio", 100.0));
        assert!(
            close(rem.mean, m) && close(rem.std, s),
            "{variant}: {rem:?} vs {m} ± {s}"
        );
    }
    // Lowest keep on test (dense: best accuracy), best on validation where every run has it.
    let (acc, rem) = rows[1].get(Rule::LowestKeep).unwrap();
    let (m, _) = mean_std(&pick("5e-4", "lowest_keep_acc", 1.0));
    assert!(close(acc.mean, m));
    let (m, _) = mean_std(&pick("5e-4", "lowest_keep", 100.0));
    assert!(close(rem.mean, m));
    let (acc, _) = rows[0].get(Rule::LowestKeep).unwrap();
    assert!(close(acc.mean, mean_std(&pick("dense", "best_acc", 1.0)).0));
    let (acc, rem) = rows[1].get(Rule::BestValid).unwrap();
    assert!(close(
        acc.mean,
        mean_std(&pick("5e-4", "best_valid_test_acc", 1.0)).0
    ));
    assert!(close(
        rem.mean,
        mean_std(&pick("5e-4", "best_valid_keep", 100.0)).0
    ));
    assert!(rows[0].get(Rule::BestValid).is_none() && rows[2].get(Rule::BestValid).is_none());
    assert_eq!(rows[2].seeds, [1, 2]);
    assert_eq!(rows[2].unfinished, 1);

    // The Markdown shows those numbers, the paper's, and the rules.
    let md = report::report_markdown(&runs);
    let (acc, rem) = rows[1].get(Rule::Last).unwrap();
    for want in [
        format!("{:.2} ± {:.2}", acc.mean, acc.std),
        format!("{:.2} ± {:.2}", rem.mean, rem.std),
        "97.69 ± 0.14".into(),
        "2.48 ± 0.21".into(),
        "98.16 ± 0.06".into(),
        "(1 run unfinished)".into(),
        "last epoch".into(),
        "lowest keep (test)".into(),
        "best on validation".into(),
    ] {
        assert!(md.contains(&want), "report lacks {want:?}:\n{md}");
    }
    // The CSV: one line per row and rule, same numbers.
    let csv = table::csv(&rows);
    assert!(table::csv_as_written(&csv), "{csv}");
    let line = csv
        .lines()
        .find(|l| l.starts_with("lenet300,false,0.0005,") && l.contains(",last,"))
        .unwrap();
    let f: Vec<&str> = line.rsplit(',').take(4).collect();
    assert!(close(f[3].parse::<f64>().unwrap(), acc.mean), "{line}");
    assert!(close(f[0].parse::<f64>().unwrap(), rem.std), "{line}");
    assert_eq!(csv.lines().count(), 1 + 2 + 3 + 2);

    // The CLI prints the same table.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["report", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), md);
}

/// Runs on two data folders of one name are two rows, each named by its folder's path (they
/// used to be averaged together); a run folder copied (its seed again in one row) counts once and
/// is said so; a single run's standard deviations are empty in the CSV, not a measured 0.
#[test]
fn rows_keep_data_folders_apart_and_count_a_seed_once() {
    let root = tmp("data-rows");
    let (a, b) = (root.join("a").join("mnist"), root.join("b").join("mnist"));
    let runs_dir = root.join("runs");
    let fake = |name: &str, data: &Path, acc: f64| {
        let dir = runs_dir.join(name);
        write_fake(&dir, &one_epoch_dst(1, acc));
        let path = dir.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c["data"] = json!(data);
        std::fs::write(&path, c.to_string()).unwrap();
    };
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    fake("on-a", &a, 97.0);
    fake("on-b", &b, 91.0);
    fake("on-a-copy", &a, 97.0);
    let runs = report::load_runs(std::slice::from_ref(&runs_dir)).unwrap();
    assert_eq!(runs.len(), 3);
    let rows = table::rows(&runs);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let data: Vec<&str> = rows.iter().map(|r| r.data.as_str()).collect();
    let canon = |p: &Path| p.canonicalize().unwrap().display().to_string();
    assert!(
        data.contains(&canon(&a).as_str()) && data.contains(&canon(&b).as_str()),
        "{data:?}"
    );
    let on_a = rows.iter().find(|r| r.data == canon(&a)).unwrap();
    assert_eq!(
        (on_a.seeds.as_slice(), on_a.repeated.as_slice()),
        (&[1][..], &[1][..])
    );
    let (acc, _) = on_a.get(Rule::Last).unwrap();
    assert_eq!((acc.n, acc.mean), (1, 97.0));
    let md = table::markdown(&rows, false);
    assert!(md.contains("1 (seed 1 given again, counted once)"), "{md}");
    // The same seed again with other results (another adapter, other products): not a copy,
    // and the table says which counted (it once passed for a copy).
    fake("on-a-other", &a, 95.0);
    let runs = report::load_runs(std::slice::from_ref(&runs_dir)).unwrap();
    let rows = table::rows(&runs);
    let on_a = rows.iter().find(|r| r.data == canon(&a)).unwrap();
    assert_eq!(on_a.differing, [1]);
    let md = table::markdown(&rows, false);
    assert!(
        md.contains("| 1 (seed 1 given again with other results: the first given counted) |"),
        "{md}"
    );
    std::fs::remove_dir_all(runs_dir.join("on-a-other")).unwrap();
    let rows = table::rows(&report::load_runs(std::slice::from_ref(&runs_dir)).unwrap());
    let csv = table::csv(&rows);
    assert!(table::csv_as_written(&csv), "{csv}");
    let line = csv.lines().find(|l| l.contains(",last,")).unwrap();
    let f: Vec<&str> = line.rsplit(',').take(4).collect();
    assert!(f[0].is_empty() && f[2].is_empty(), "{line}");
    assert_eq!(f[3].parse::<f64>().unwrap(), 97.0, "{line}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run file without a field every `dst train` writes (edited, or written by another program)
/// is damaged: the run is left out, the field named, never read as 0 (a summary without its
/// `lowest_keep` gave a row at 0 % remaining; a config without `limit_train` put a run trained on
/// 2,000 images in the row of the full set). A `null` where the trainer writes one still reads.
#[test]
fn a_run_file_lacking_a_field_is_left_out_not_read_as_zero() {
    let root = tmp("missing-field");
    let cases: &[(&str, &str)] = &[
        ("summary.json", "lowest_keep"),
        ("summary.json", "last.test_acc"),
        ("summary.json", "last"),
        ("summary.json", "epochs"),
        ("config.json", "alpha"),
        ("config.json", "seed"),
        ("config.json", "epochs"),
        ("config.json", "limit_train"),
        ("config.json", "data"),
    ];
    for (i, (file, key)) in cases.iter().enumerate() {
        let dir = root.join(format!("r{i}"));
        write_fake(&dir, &one_epoch_dst(1, 97.0));
        let path = dir.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        match key.split_once('.') {
            Some((outer, inner)) => v[outer].as_object_mut().unwrap().remove(inner),
            None => v.as_object_mut().unwrap().remove(*key),
        };
        std::fs::write(&path, v.to_string()).unwrap();
        let field = key.rsplit('.').next().unwrap();
        match Run::load(&dir) {
            Err(e) => assert!(
                e.to_string().contains(file) && e.to_string().contains(&format!("`{field}`")),
                "{file} {key}: {e}"
            ),
            Ok(_) => panic!("{file} without {key} was read"),
        }
    }
    // The trainer's own nulls and a run without the later, optional fields still read.
    let dir = root.join("plain");
    write_fake(&dir, &one_epoch_dst(1, 97.0));
    let run = Run::load(&dir).unwrap();
    assert_eq!(run.config.limit_train, None);
    assert_eq!(run.summary.unwrap().lowest_keep, 0.05);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The paper's figures beside a row run at other settings (fewer epochs, the embedded subset,
/// another alpha) are marked and the differences named under the table; beside a row at the
/// paper's settings they are not.
#[test]
fn paper_figures_beside_other_settings_are_marked() {
    let root = tmp("unlike-paper");
    let short = root.join("short");
    write_fake(&short, &one_epoch_dst(1, 90.0));
    // A 20-epoch run of the paper's settings on a data folder, `edit` applied to its config.
    let twenty = |name: &str, dense: bool, last: (f64, f64), edit: &[(&str, serde_json::Value)]| {
        let dir = root.join(name);
        write_fake(
            &dir,
            &Fake {
                model: "lenet300",
                dense,
                alpha: 5e-4,
                seed: 1,
                epochs: 20,
                history: vec![last; 20],
                valid: None,
                finished: true,
            },
        );
        let path = dir.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c["data"] = json!(root);
        for (k, v) in edit {
            c[*k] = v.clone();
        }
        std::fs::write(&path, c.to_string()).unwrap();
        dir
    };
    let paper = twenty("paper", false, (97.9, 0.08), &[]);
    let rows = table::rows(&report::load_runs(std::slice::from_ref(&paper)).unwrap());
    let md = table::markdown(&rows, true);
    assert!(!md.contains('†'), "{md}");
    // A dense baseline with a sweep's `--reset floor` is at the paper's settings (the reset acts
    // on masks, which a dense run has none of).
    let dense = twenty("dense", true, (98.2, 1.0), &[("reset", json!("floor"))]);
    let rows = table::rows(&report::load_runs(std::slice::from_ref(&dense)).unwrap());
    let md = table::markdown(&rows, true);
    assert!(!md.contains('†'), "{md}");
    std::fs::remove_dir_all(&dense).unwrap();
    let rows = table::rows(&report::load_runs(&[paper, short]).unwrap());
    let md = table::markdown(&rows, true);
    assert_eq!(md.matches(" 97.69 ± 0.14 † |").count(), 1, "{md}");
    assert!(
        md.contains("this row ran otherwise, so compare with care: lenet300 DST alpha 5e-4 (1 epoch, the embedded subset)."),
        "{md}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The report's run list names each run as its row does: two runs that differ only in lr are
/// told apart there too (both read "DST alpha 5e-4"), with their data.
#[test]
fn the_run_list_names_runs_as_their_rows_do() {
    let root = tmp("run-list");
    for (name, lr) in [("a", 0.01), ("b", 0.02)] {
        let dir = root.join(name);
        write_fake(&dir, &one_epoch_dst(1, 90.0));
        let path = dir.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c["lr"] = json!(lr);
        std::fs::write(&path, c.to_string()).unwrap();
    }
    let md = report::report_markdown(&report::load_runs(std::slice::from_ref(&root)).unwrap());
    for (name, lr) in [("a", "0.01"), ("b", "0.02")] {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", root.join(name).display())))
            .unwrap_or_else(|| panic!("no line of run {name}:\n{md}"));
        assert!(
            line.contains(&format!(
                "| DST alpha 5e-4, lr {lr} | embedded subset | 1 |"
            )),
            "{line}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();

    // A `|` in a folder's name is escaped: it ended the cell, and the row's columns shifted.
    let root = tmp("run-list-pipe");
    write_fake(&root.join("a|b"), &one_epoch_dst(1, 90.0));
    let md = report::report_markdown(&report::load_runs(std::slice::from_ref(&root)).unwrap());
    let line = md
        .lines()
        .find(|l| l.contains("a\\|b"))
        .unwrap_or_else(|| panic!("{md}"));
    // Seven cells: eight unescaped bars.
    let bars = line.len() - line.replace('|', "").len() - line.matches("\\|").count();
    assert_eq!(bars, 8, "{line}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Paths in the commands messages give to paste are one shell word each: a shell reads back
/// the path itself (a hint of `--resume sp ace run` failed when pasted).
#[cfg(unix)]
#[test]
fn paths_in_pasteable_commands_are_shell_words() {
    for p in [
        "runs/a",
        "sp ace run",
        "it's here",
        "-x",
        "ü/$HOME/`x`",
        "~user",
        "x=~/p",
        "=cmd",
        "a;b|c",
    ] {
        let w = report::shell_word(Path::new(p));
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {w}"))
            .output()
            .unwrap();
        let back = String::from_utf8(o.stdout).unwrap();
        let want = if p.starts_with('-') {
            format!("./{p}")
        } else {
            p.to_string()
        };
        assert_eq!(back, want, "{p} -> {w}");
    }
    assert_eq!(report::shell_word(Path::new("runs/a-1")), "runs/a-1");
}

/// A `--limit-train` above the images there are trained on all of them: the table does not say
/// "first N train" of such a run (it did, from the config alone), and puts it in the row of the
/// run without a limit. A limit that left images out is still named.
#[test]
fn a_limit_above_the_set_is_not_named() {
    let root = tmp("limit-rows");
    let fake = |name: &str, limit: Option<usize>, trained: Option<usize>, seed: u64| {
        let dir = root.join(name);
        write_fake(&dir, &one_epoch_dst(seed, 95.0));
        let edit = |file: &str, key: &str, v: serde_json::Value| {
            let path = dir.join(file);
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            c[key] = v;
            std::fs::write(&path, c.to_string()).unwrap();
        };
        edit("config.json", "limit_train", json!(limit));
        if let Some(t) = trained {
            edit("summary.json", "train_images", json!(t));
        }
    };
    fake("all", None, Some(10_000), 1);
    fake("limit-above", Some(60_000), Some(10_000), 2);
    fake("limit-below", Some(1_000), Some(1_000), 3);
    // A run from before summaries counted their images: its limit is named, as before.
    fake("old", Some(60_000), None, 4);
    let rows = table::rows(&report::load_runs(std::slice::from_ref(&root)).unwrap());
    let mut data: Vec<(&str, &[u64])> = rows
        .iter()
        .map(|r| (r.data.as_str(), r.seeds.as_slice()))
        .collect();
    data.sort();
    assert_eq!(
        data,
        [
            ("embedded subset", &[1u64, 2][..]),
            ("embedded subset, first 1000 train", &[3][..]),
            ("embedded subset, first 60000 train", &[4][..]),
        ],
        "{rows:#?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Table 1's CIFAR-10 rows sit beside VGG-16 runs: the dense accuracy, and the paper's two DST
/// results as `a / b`, named in the note under the table.
#[test]
fn cifar_rows_show_the_papers_two_dst_results() {
    let root = tmp("cifar-rows");
    for (name, dense) in [("dense", true), ("dst", false)] {
        write_fake(
            &root.join(name),
            &Fake {
                model: "vgg16",
                dense,
                alpha: 5e-6,
                seed: 1,
                epochs: 1,
                history: vec![(90.0, if dense { 1.0 } else { 0.1 })],
                valid: None,
                finished: true,
            },
        );
    }
    let runs = report::load_runs(std::slice::from_ref(&root)).unwrap();
    let md = table::markdown(&table::rows(&runs), true);
    for want in [
        "| 93.75 ± 0.21 † | 100 |",
        "| 93.93 ± 0.05 / 93.02 ± 0.37 † | 8.82 ± 0.34 / 3.76 ± 0.53 |",
        "CIFAR-10 rows: 160 epochs, two DST results each",
    ] {
        assert!(md.contains(want), "lacks {want:?}:\n{md}");
    }
    assert_eq!(
        table::mnist_rows(),
        ["lenet300", "lenet5", "lstm-a", "lstm-b"]
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn metrics_of_a_resumed_run_read_as_one_history() {
    let dir = tmp("resumed");
    std::fs::write(
        dir.join("config.json"),
        r#"{"model":"lenet300","dense":false,"alpha":0.0005,"epochs":2,"batch":64,"lr":0.01,"momentum":0.9,"weight_decay":0,"seed":4,"limit_train":null,"log_every":10,"data":null}"#,
    )
    .unwrap();
    let step = |s: u64, k: f64| {
        format!(r#"{{"kind":"step","step":{s},"epoch":1,"loss":1,"keep":{{"fc1":{k}}}}}"#)
    };
    let epoch = |e: usize, acc: f64| {
        format!(
            r#"{{"kind":"epoch","epoch":{e},"step":{},"train_loss":0.3,"test_loss":0.2,"test_acc":{acc},"keep_ratio":0.5,"layers":[]}}"#,
            20 * e
        )
    };
    // Epoch 1, part of epoch 2 (interrupted), then epoch 2 again after the resume, and a torn line.
    let lines = [
        step(10, 0.9),
        step(20, 0.8),
        epoch(1, 90.0),
        step(30, 0.7),
        step(30, 0.65),
        step(40, 0.6),
        epoch(2, 91.0),
        r#"{"kind":"step","ste"#.to_string(),
    ];
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    let run = Run::load(&dir).unwrap();
    assert_eq!(
        run.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        [10, 20, 30, 40]
    );
    assert_eq!(run.steps[2].keep.get("fc1"), Some(&0.65));
    assert_eq!(
        run.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(
        run.summary.is_none() && run.steps[0].alpha.is_none() && run.epochs[0].valid_acc.is_none()
    );
    assert_eq!(run.config.seed, 4);
    assert!(report::load_runs(&[dir.join("nope")]).is_err());
}

#[test]
fn charts_are_real_pictures() {
    let root = tmp("charts");
    fake_study(&root);
    // One run: its charts in its directory (what `dst train` does at the end).
    let one = root.join("alpha5e-4-seed1");
    let files = report::draw_run_charts(&one).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "keep_per_layer.png",
            "accuracy_remaining.png",
            "thresholds.png",
            "alpha.png"
        ]
    );
    for f in &files {
        let size = if f.ends_with("accuracy_remaining.png") {
            (1000, 900)
        } else {
            (1000, 620)
        };
        check_png(f, size);
    }
    // Several runs overlaid, through the CLI.
    let out = root.join("plots");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args([
            "plot",
            one.to_str().unwrap(),
            root.join("dense-seed1").to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_png(&out.join("keep_per_layer.png"), (1000, 620));
    check_png(&out.join("accuracy_remaining.png"), (1000, 900));
    // The sweep chart from the table's rows.
    let rows = table::rows(&report::load_runs(std::slice::from_ref(&root)).unwrap());
    let p = root.join("sweep.png");
    report::charts::sweep_chart(&rows, Rule::Last, &p).unwrap();
    check_png(&p, (1000, 900));
    // Rows without a finished run: an error, and no picture of empty axes.
    let none = root.join("none.png");
    let unfinished: Vec<table::Row> = rows
        .iter()
        .map(|r| table::Row {
            stats: [None; 3],
            ..r.clone()
        })
        .collect();
    let e = report::charts::sweep_chart(&unfinished, Rule::Last, &none).unwrap_err();
    assert!(e.to_string().contains("no row has a finished run"), "{e}");
    assert!(!none.exists());
}

/// A checkpoint of `model` with the given tensors.
fn checkpoint(model: &str, tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> Checkpoint {
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), model.into());
    ck.metadata.insert("masked".into(), "true".into());
    ck.metadata.insert("epoch".into(), "3".into());
    ck.tensors = tensors
        .into_iter()
        .map(|(n, s, v)| (n.to_string(), s, v))
        .collect();
    ck
}

#[test]
fn mask_pictures_of_each_model_family() {
    let out = tmp("masks");
    // LeNet-300-100: weights grow towards the image centre; thresholds 0.5 keep the centre only.
    let mut w = Vec::new();
    for r in 0..300 {
        for p in 0..784 {
            let (y, x) = ((p / 28) as f32, (p % 28) as f32);
            let d = ((y - 13.5).powi(2) + (x - 13.5).powi(2)).sqrt() / 19.1;
            w.push((1.0 - d) * if (r + p) % 2 == 0 { 1.0 } else { -1.0 } + (r % 7) as f32 * 0.01);
        }
    }
    let ck = checkpoint(
        "lenet300",
        vec![
            ("fc1.weight", vec![300, 784], w),
            ("fc1.threshold", vec![300], vec![0.5; 300]),
        ],
    );
    let frac = report::masks::fc1_pixel_keep(&ck).unwrap();
    assert_eq!(frac[0], 0.0);
    assert_eq!(frac[14 * 28 + 14], 1.0);
    let files = report::mask_images(&ck, &out).unwrap();
    check_png(&files[0], (760, 640));
    assert!(files[1].ends_with("fc1_neuron_masks.png"));
    let img = image::open(&files[1]).unwrap();
    assert!(img.width() > 600 && img.height() > 500);
    check_png(&files[1], (img.width(), img.height()));
    // Only 10 neurons keep any input: those 10 are drawn (2 rows of 8), not 38 empty squares
    // beside them.
    let mut few = ck.clone();
    for t in few.tensors.iter_mut().filter(|t| t.0 == "fc1.threshold") {
        t.2 = (0..300).map(|r| if r < 10 { 0.5 } else { 10.0 }).collect();
    }
    let few_out = out.join("few");
    let files = report::mask_images(&few, &few_out).unwrap();
    let small = image::open(&files[1]).unwrap();
    assert!(
        small.width() == img.width() && small.height() < img.height() / 2,
        "{}x{} against {}x{}",
        small.width(),
        small.height(),
        img.width(),
        img.height()
    );

    // LeNet-5: 20 filters 5x5.
    let w: Vec<f32> = (0..500)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let ck = checkpoint(
        "lenet5",
        vec![
            ("conv1.weight", vec![20, 1, 5, 5], w),
            (
                "conv1.threshold",
                vec![20],
                (0..20).map(|i| i as f32 * 0.05).collect(),
            ),
        ],
    );
    let files = report::mask_images(&ck, &out).unwrap();
    assert!(files[0].ends_with("conv1_filters.png"));
    let img = image::open(&files[0]).unwrap();
    check_png(&files[0], (img.width(), img.height()));

    // WRN-16-1: 16 filters 3x3 over RGB, the channels side by side (a blank column between
    // them), cells wide enough for "mask 27/27"; filters 16-19 of the last band do not exist
    // and get no frame. Thresholds 0.5 keep channel 2 (|w| = 0.9) and drop channels 0 and 1.
    let w: Vec<f32> = (0..16 * 27)
        .map(|i| [0.1, -0.2, 0.9][(i % 27) / 9] * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let ck = checkpoint(
        "wrn-16-1",
        vec![
            ("conv1.weight", vec![16, 3, 3, 3], w),
            ("conv1.threshold", vec![16], vec![0.5; 16]),
        ],
    );
    let files = report::mask_images(&ck, &out).unwrap();
    assert!(files[0].ends_with("conv1_filters.png"));
    // 10 per row: cells of 12 px, pictures 11 cells wide, gaps of 14; 4 bands of 36 + 24 px.
    check_png(
        &files[0],
        (14 + 10 * (11 * 12 + 14) + 14, 40 + 8 + 4 * 60 + 10),
    );
    let img = image::open(&files[0]).unwrap().to_rgb8();
    let frame = |x: u32, y: u32| img.get_pixel(x, y).0 == [150, 150, 150];
    // The first frame's top edge: the left edge of picture 0 at x = 13.
    let top = (0..img.height()).find(|&y| frame(13, y)).unwrap();
    let left = |col: u32| 13 + col * (11 * 12 + 14);
    assert!(frame(left(5), top + 120), "filter 15 has a frame");
    assert!(
        !frame(left(6), top + 120),
        "filter 16 does not exist: no frame"
    );
    // Filter 0's mask (band 1): channel 0 dropped (light), channel 2 kept (dark).
    let cell = |c: u32| *img.get_pixel(14 + c * 4 * 12 + 6, top + 1 + 60 + 6);
    assert_eq!(cell(0).0, [238, 238, 238]);
    assert_eq!(cell(2).0, [20, 30, 80]);

    // LSTM-a: lstm1's input matrices over the 28 pixel columns.
    let w: Vec<f32> = (0..512 * 28)
        .map(|i| ((i % 28) as f32 - 13.5).abs() / 14.0 * if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    let ck = checkpoint(
        "lstm-a",
        vec![
            ("lstm1.weight_ih", vec![512, 28], w),
            ("lstm1.threshold_ih", vec![512], vec![0.3; 512]),
        ],
    );
    let files = report::mask_images(&ck, &out).unwrap();
    check_png(&files[0], (900, 420));

    // A dense checkpoint has no masks: a clear error, no panic.
    let mut ck = checkpoint(
        "lenet300",
        vec![("fc1.weight", vec![300, 784], vec![0.0; 300 * 784])],
    );
    ck.metadata.insert("masked".into(), "false".into());
    let e = report::mask_images(&ck, &out).unwrap_err().to_string();
    assert!(e.contains("dense"), "{e}");
}

fn sweep_spec(epochs: usize) -> Sweep {
    Sweep {
        base: TrainConfig {
            limit_train: Some(256),
            epochs,
            log_every: 20,
            ..TrainConfig::default()
        },
        alphas: vec![1e-3, 5e-4],
        seeds: vec![1],
        dense: true,
    }
}

/// A run that diverges does not stop a sweep: the others train, sweep.md is written with the
/// diverged runs counted unfinished, and the error names each diverged run (it used to stop at
/// the first, with no report).
#[test]
fn a_diverged_run_leaves_the_sweep_going() {
    let out = tmp("sweep-diverged");
    let spec = Sweep {
        base: TrainConfig {
            lr: 1e6,
            ..sweep_spec(1).base
        },
        ..sweep_spec(1)
    };
    let err = study::sweep(&spec, &out, &mut Quiet).unwrap_err();
    let study::StudyError::Diverged { total, runs, .. } = &err else {
        panic!("not a divergence: {err}");
    };
    assert_eq!(*total, 3);
    let unfinished: Vec<String> = spec
        .runs(&out)
        .iter()
        .filter(|(d, _)| !d.join("summary.json").exists())
        .map(|(d, _)| d.display().to_string())
        .collect();
    assert!(!unfinished.is_empty());
    assert_eq!(runs.len(), unfinished.len(), "{err}");
    for d in &unfinished {
        assert!(runs.iter().any(|r| r.contains(d.as_str())), "{d}: {err}");
    }
    // sweep.md shows them as diverged (they read as unfinished: their logs now end with the
    // divergence).
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains("(1 run diverged)") && !md.contains("unfinished"),
        "{md}"
    );
    assert!(
        err.to_string().contains("sweep.md lists them as diverged"),
        "{err}"
    );
    let runs = report::load_runs(std::slice::from_ref(&out)).unwrap();
    let diverged = runs.iter().filter(|r| r.diverged.is_some()).count();
    assert_eq!(diverged, unfinished.len());
    let listed = report::report_markdown(&runs);
    assert!(listed.contains("| diverged at epoch 1, step "), "{listed}");
    // One seed per row: each diverged run's row is in sweep.csv without figures (n 0, 1
    // unfinished, 1 diverged, no rule), as sweep.md lists it (they once had no line at all, then
    // read as interrupted runs).
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let empty: Vec<&str> = csv
        .lines()
        .filter(|l| l.ends_with(",,0,1,1,,,,,"))
        .collect();
    assert_eq!(empty.len(), unfinished.len(), "{csv}");
    if unfinished.len() == *total {
        assert!(err.to_string().contains("(none finished;"), "{err}");
        // No chart of empty axes: sweep.md says why there is none.
        assert!(!out.join("sweep.png").exists());
        assert!(
            md.contains("No run finished") && !md.contains("(sweep.png)"),
            "{md}"
        );
        assert!(!md.contains("Epoch selection"), "{md}");
    } else {
        check_png(&out.join("sweep.png"), (1000, 900));
    }
}

fn file_state(p: &Path) -> (std::time::SystemTime, Vec<u8>) {
    (
        std::fs::metadata(p).unwrap().modified().unwrap(),
        std::fs::read(p).unwrap(),
    )
}

/// A real tiny sweep (LeNet-300-100, 2 alphas x 1 seed and the dense baseline, 256 images, 2
/// epochs) that starts with one run interrupted after its first epoch: that run resumes, the
/// others are trained; a second call redoes nothing; the tables agree with the summaries; a run
/// whose summary is lost gets it back without training.
#[test]
fn tiny_sweep_resumes_and_reports() {
    let out = tmp("sweep");
    let spec = sweep_spec(2);
    let grid = spec.runs(&out);
    let names: Vec<String> = grid
        .iter()
        .map(|(d, _)| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["dense-seed1", "alpha1e-3-seed1", "alpha5e-4-seed1"]);
    // The "interrupted" run: one epoch of two, no summary.
    let (dir, cfg) = &grid[1];
    let one = TrainConfig {
        epochs: 1,
        ..cfg.clone()
    };
    assert_eq!(
        study::ensure_run(&one, dir, &mut Quiet).unwrap(),
        RunState::Fresh
    );
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    assert_eq!(study::run_state(dir, cfg), RunState::Resume);
    let first_epoch = Run::load(dir).unwrap().epochs[0].test_acc;

    let runs = study::sweep(&spec, &out, &mut Quiet).unwrap();
    let resumed = Run::load(dir).unwrap();
    assert_eq!(
        resumed.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        resumed.epochs[0].test_acc, first_epoch,
        "epoch 1 was not redone"
    );
    assert_eq!(
        resumed.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        [4, 8]
    );
    for (d, c) in &grid {
        assert_eq!(study::run_state(d, c), RunState::Done);
        check_png(&d.join("accuracy_remaining.png"), (1000, 900));
    }

    // A second call trains nothing: every checkpoint stays as it was.
    let before: Vec<_> = grid
        .iter()
        .map(|(d, _)| file_state(&d.join("checkpoint.safetensors")))
        .collect();
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    let after: Vec<_> = grid
        .iter()
        .map(|(d, _)| file_state(&d.join("checkpoint.safetensors")))
        .collect();
    assert!(before == after, "a finished run was redone");
    // A sweep.md with notes is refused; moved away, as the refusal says, the same command
    // writes the report again (sweep.png, beside sweep.csv, was refused as anyone's).
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    std::fs::write(out.join("sweep.md"), format!("{md}my notes\n")).unwrap();
    let e = study::sweep(&spec, &out, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed after dst wrote it"), "{e}");
    // Edited while the runs trained: refused when the report is written, saying the runs are
    // kept (not to pick another --out, which would train them all again).
    let loaded: Vec<Run> = grid.iter().map(|(d, _)| Run::load(d).unwrap()).collect();
    let e = study::write_sweep_report(&loaded, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("The runs are trained and kept: move the file away")
            && !e.contains("another --out"),
        "{e}"
    );
    std::fs::rename(out.join("sweep.md"), out.with_extension("notes.md")).unwrap();
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("sweep.md")).unwrap(), md);
    std::fs::remove_file(out.with_extension("notes.md")).unwrap();

    // sweep.md / sweep.csv hold each run's own summary figures (one seed: mean = the value).
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    for r in &runs {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r.dir.join("summary.json")).unwrap())
                .unwrap();
        let acc = s["last"]["test_acc"].as_f64().unwrap();
        let rem = 100.0 * s["last"]["keep_ratio"].as_f64().unwrap();
        assert!(md.contains(&format!("| {acc:.2} | {rem:.2} |")), "{md}");
        let line = csv
            .lines()
            .find(|l| {
                l.contains(",last,")
                    && l.split(',').nth(1) == Some(if r.config.dense { "true" } else { "false" })
                    && (r.config.dense || l.split(',').nth(2) == Some(&r.config.alpha.to_string()))
            })
            .unwrap();
        // Single runs: their standard deviations are empty (NaN here).
        let f: Vec<f64> = line
            .rsplit(',')
            .take(4)
            .map(|x| x.parse().unwrap_or(f64::NAN))
            .collect();
        assert!(f[0].is_nan() && f[2].is_nan(), "{line}");
        assert!(
            (f[3] - acc).abs() < 1e-9 && (f[1] - rem).abs() < 1e-9,
            "{line}"
        );
    }
    check_png(&out.join("sweep.png"), (1000, 900));

    // A run that stopped between its last checkpoint and its summary gets its summary back from
    // the checkpoint, without training again.
    let (dir, cfg) = &grid[2];
    let summary = std::fs::read(dir.join("summary.json")).unwrap();
    let checkpoint = file_state(&dir.join("checkpoint.safetensors"));
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    assert_eq!(study::run_state(dir, cfg), RunState::Resume);
    study::sweep(&spec, &out, &mut Quiet).unwrap();
    assert!(
        file_state(&dir.join("checkpoint.safetensors")) == checkpoint,
        "the finished run was trained again"
    );
    // The same figures (read back from the checkpoint's history, which serde_json parses to
    // within an ulp).
    let rounded = |bytes: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        fn round(v: &serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Number(n) if n.is_f64() => {
                    format!("{:.12e}", n.as_f64().unwrap()).into()
                }
                serde_json::Value::Array(a) => a.iter().map(round).collect(),
                serde_json::Value::Object(o) => {
                    o.iter().map(|(k, v)| (k.clone(), round(v))).collect()
                }
                v => v.clone(),
            }
        }
        round(&v)
    };
    assert_eq!(
        rounded(&std::fs::read(dir.join("summary.json")).unwrap()),
        rounded(&summary)
    );
    assert_eq!(study::run_state(dir, cfg), RunState::Done);
}

/// DST LeNet-300-100 on 6400 embedded images (alpha 5e-3, 5 epochs, ~11 s on lavapipe): fc1
/// keeps a smaller share of the 4-pixel border (always blank in MNIST) than of the centre; the CLI
/// draws its masks. The border's weights never get a gradient (their input is 0), so they stay at
/// their initial values while the thresholds rise; the centre's weights grow with training. The
/// gap widens with training: after 5 epochs it is about 10% (0.088 vs 0.098 on lavapipe); with
/// alpha 1e-3 and 2 epochs it is not there yet (0.814 vs 0.810).
#[test]
fn dst_lenet300_prunes_the_mnist_border() {
    let dir = tmp("border");
    let cfg = TrainConfig {
        alpha: 5e-3,
        limit_train: Some(6400),
        epochs: 5,
        log_every: 50,
        ..TrainConfig::default()
    };
    study::ensure_run(&cfg, &dir, &mut Quiet).unwrap();
    let ck = Checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap();
    let frac = report::masks::fc1_pixel_keep(&ck).unwrap();
    let mean = |f: &dyn Fn(usize, usize) -> bool| {
        let v: Vec<f64> = (0..784)
            .filter(|p| f(p / 28, p % 28))
            .map(|p| frac[p])
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let border = mean(&|y, x| !(4..24).contains(&y) || !(4..24).contains(&x));
    let centre = mean(&|y, x| (8..20).contains(&y) && (8..20).contains(&x));
    assert!(
        border < 0.95 * centre,
        "border keeps {border:.3}, centre {centre:.3}"
    );

    let out = dir.join("masks");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args([
            "masks",
            dir.join("checkpoint.safetensors").to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_png(&out.join("fc1_input_keep.png"), (760, 640));
    let p = out.join("fc1_neuron_masks.png");
    let img = image::open(&p).unwrap();
    check_png(&p, (img.width(), img.height()));
    check_png(&dir.join("keep_per_layer.png"), (1000, 620));
}

#[test]
fn bad_report_flags_are_clear_errors() {
    let empty = tmp("empty");
    let empty = empty.to_str().unwrap();
    // The six CIFAR-10 files, one record each (their sizes are checked, not their contents,
    // before a run starts).
    let cifar = tmp("cifar-names");
    for f in dst::data::cifar::FILES {
        std::fs::write(cifar.join(f), vec![0u8; dst::data::cifar::RECORD]).unwrap();
    }
    let cifar = cifar.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["sweep", "--alpha", "0", "--out", "x"],
            "--alpha values must be finite and positive",
        ),
        (
            &["sweep", "--alpha", "1e-4", "--model", "vgg", "--out", "x"],
            "unknown model \"vgg\"",
        ),
        (&["reproduce", "table2"], "unknown table \"table2\""),
        (
            &["reproduce", "table1", "--model", "wrn"],
            "unknown model \"wrn\"",
        ),
        // One --data for models of both datasets: refused before any run trains.
        (
            &[
                "reproduce",
                "table1",
                "--model",
                "vgg16",
                "--model",
                "lenet300",
                "--data",
                cifar,
                "--out",
                empty,
            ],
            "holds CIFAR-10, but lenet300 trains on MNIST",
        ),
        // Without --model: the CIFAR-10 rows are named.
        (
            &["reproduce", "table1", "--data", cifar, "--out", empty],
            "ask for the CIFAR-10 rows by name: --model vgg16 --model wrn-16-8",
        ),
        (
            &["masks", "/nonexistent/ck.safetensors"],
            "/nonexistent/ck.safetensors",
        ),
        (&["plot", "/nonexistent/run"], "/nonexistent/run"),
        (&["report", empty], "no run directory"),
    ];
    for (args, want) in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Target keeps in labels carry no float noise: 0.07 is "7", not "7.000000000000001".
#[test]
fn percentages_carry_no_float_noise() {
    use dst::report::percent;
    assert_eq!(percent(0.07), "7");
    assert_eq!(percent(0.029), "2.9");
    assert_eq!(percent(0.025), "2.5");
    assert_eq!(percent(1e-5), "0.001");
    // A tiny one in exponent form (`--target-keep 1e-300` printed 300 zeros).
    assert_eq!(percent(1e-9), "1e-7");
    assert_eq!(percent(1e-300), "1e-298");
    assert_eq!(percent(0.123456789), "12.3456789");
    // The CSV's figures likewise (`dst report --out x.csv` gave 26.299999999999997).
    use dst::report::table::csv_number;
    assert_eq!(csv_number(26.299999999999997), "26.3");
    assert_eq!(csv_number((97.88 + 97.91 + 97.89) / 3.0), "97.8933333333");
    assert_eq!(csv_number(98.2), "98.2");
    assert_eq!(csv_number(0.0), "0");
}

/// Shares of kept weights are never rounded to all or none unless they are: a layer keeping all
/// but one of 36,864 weights once showed "100.00%" (and "1.0000").
#[test]
fn shares_never_round_to_all_or_none() {
    use dst::report::share;
    assert_eq!(share(36863, 36864, 100.0, 2), "99.99");
    assert_eq!(share(36864, 36864, 100.0, 2), "100.00");
    assert_eq!(share(36863, 36864, 1.0, 4), "0.9999");
    assert_eq!(share(1, 1_000_000, 100.0, 2), "0.01");
    assert_eq!(share(0, 1_000_000, 100.0, 2), "0.00");
    assert_eq!(share(8, 100, 100.0, 2), "8.00");
    assert_eq!(share(1, 3, 1.0, 4), "0.3333");
}
