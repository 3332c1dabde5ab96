//! `dst plot` and `dst masks` replace only files they wrote: a file of the user's in the output
//! folder (same name as a chart) is left alone and the command fails naming it, before writing
//! anything; the same command repeated into the same folder works (its own charts, recorded with
//! their SHA-256 in the folder's `.dst-charts`); a run's folder takes that run's own charts only
//! (what `dst train` draws there), never other runs'; an `--out` that is a file is refused as
//! such. Fake run folders and a small checkpoint written here: no GPU, no training.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dst::checkpoint::Checkpoint;
use serde_json::json;

const PRECIOUS: &[u8] = b"MY PRECIOUS\n";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dst-chart-outputs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A run folder as `dst train` writes it (config.json, metrics.jsonl), 2 epochs, 3 layers.
fn fake_run(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "model": "lenet300", "dense": false, "alpha": 5e-4, "epochs": 2, "batch": 64,
        "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "seed": seed, "limit_train": null,
        "log_every": 10, "data": null, "optimizer": "sgd"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut text = String::new();
    for epoch in 1..=2u64 {
        for s in 1..=2u64 {
            let step = (epoch - 1) * 20 + s * 10;
            let k = 1.0 / step as f64;
            text.push_str(&format!(
                "{}\n",
                json!({"kind": "step", "step": step, "epoch": epoch, "loss": 0.5, "penalty": 0.01,
                       "lr": 0.01, "alpha": 5e-4, "keep": {"fc1": k, "fc2": 2.0 * k, "fc3": 0.5}})
            ));
        }
        let layers: Vec<serde_json::Value> = ["fc1", "fc2", "fc3"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({"name": n, "shape": [10, 10], "kept": 50, "total": 100, "keep_ratio": 0.5,
                       "threshold_min": 0.0, "threshold_mean": 0.01 * (epoch as usize * (i + 1)) as f64,
                       "threshold_max": 0.1, "resets": 0})
            })
            .collect();
        text.push_str(&format!(
            "{}\n",
            json!({"kind": "epoch", "epoch": epoch, "step": epoch * 20, "train_loss": 0.3,
                   "test_loss": 0.2, "test_acc": 90.0 + epoch as f64 + seed as f64,
                   "keep_ratio": 0.5 / epoch as f64, "layers": layers,
                   "epoch_seconds": 1.0, "ms_per_step": 10.0})
        ));
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// A dense run folder as `dst train --dense` writes it: alpha 0 logged at every step (no
/// penalty), no keep ratios or thresholds to follow.
fn fake_dense_run(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "model": "lenet300", "dense": true, "alpha": 5e-4, "epochs": 2, "batch": 64,
        "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "seed": seed, "limit_train": null,
        "log_every": 10, "data": null, "optimizer": "sgd"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut text = String::new();
    for epoch in 1..=2u64 {
        for s in 1..=2u64 {
            text.push_str(&format!(
                "{}\n",
                json!({"kind": "step", "step": (epoch - 1) * 20 + s * 10, "epoch": epoch,
                       "loss": 0.5, "penalty": 0.0, "lr": 0.01, "alpha": 0.0, "keep": {}})
            ));
        }
        text.push_str(&format!(
            "{}\n",
            json!({"kind": "epoch", "epoch": epoch, "step": epoch * 20, "train_loss": 0.3,
                   "test_loss": 0.2, "test_acc": 95.0 + epoch as f64, "keep_ratio": 1.0,
                   "layers": [], "epoch_seconds": 1.0, "ms_per_step": 10.0})
        ));
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// A small masked LeNet-300-100 checkpoint file (fc1 over the 784 pixels).
fn fake_checkpoint(path: &Path) {
    let mut ck = Checkpoint::default();
    ck.metadata.insert("model".into(), "lenet300".into());
    ck.metadata.insert("masked".into(), "true".into());
    let w: Vec<f32> = (0..300 * 784)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    ck.tensors = vec![
        ("fc1.weight".into(), vec![300, 784], w),
        ("fc1.threshold".into(), vec![300], vec![0.5; 300]),
    ];
    ck.save(path).unwrap();
}

fn dst(cwd: &Path, args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dst"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The command failed, without a panic, and its message holds each of `want`.
fn refused(o: &Output, what: &str, want: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} must fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    for w in want {
        assert!(err.contains(w), "{what}: {err:?} lacks {w:?}");
    }
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}

#[test]
fn plot_leaves_the_users_files_alone_and_replaces_its_own() {
    let root = tmp("plot");
    fake_run(&root.join("l300"), 1);
    fake_run(&root.join("l5"), 2);

    // A user's file of a chart's name: refused before anything is written, the file named.
    let user = root.join("pdir");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("keep_per_layer.png"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("plot"), p("l300"), p("--out"), p("pdir")]);
    refused(
        &o,
        "plot into the user's folder",
        &["pdir", "keep_per_layer.png", "--out"],
    );
    assert_eq!(
        std::fs::read(user.join("keep_per_layer.png")).unwrap(),
        PRECIOUS
    );
    assert!(
        !user.join("accuracy_remaining.png").exists(),
        "nothing written"
    );

    // The same command twice into a new folder: its own charts, replaced.
    let o = dst(
        &root,
        &[p("plot"), p("l300"), p("l5"), p("--out"), p("charts")],
    );
    ok(&o, "first plot");
    assert!(is_png(&root.join("charts/thresholds.png")));
    let o = dst(
        &root,
        &[p("plot"), p("l300"), p("l5"), p("--out"), p("charts")],
    );
    ok(&o, "the same plot again");
    // Other runs drawn into the same folder: still dst's own charts.
    let o = dst(&root, &[p("plot"), p("l5"), p("--out"), p("charts")]);
    ok(&o, "another plot into dst's chart folder");
    // A chart the user changed since is theirs now.
    std::fs::write(root.join("charts/alpha.png"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("plot"), p("l300"), p("--out"), p("charts")]);
    refused(&o, "plot over a chart the user changed", &["alpha.png"]);
    assert_eq!(
        std::fs::read(root.join("charts/alpha.png")).unwrap(),
        PRECIOUS
    );

    // The default ./plots of several runs: an existing thresholds.png of the user's is kept.
    std::fs::create_dir_all(root.join("plots")).unwrap();
    std::fs::write(root.join("plots/thresholds.png"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("plot"), p("l300"), p("l5")]);
    refused(&o, "plot into ./plots", &["plots", "thresholds.png"]);
    assert_eq!(
        std::fs::read(root.join("plots/thresholds.png")).unwrap(),
        PRECIOUS
    );
    assert!(
        !root.join("plots/keep_per_layer.png").exists(),
        "nothing written"
    );

    // --out a file.
    std::fs::write(root.join("afile"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("plot"), p("l300"), p("--out"), p("afile")]);
    refused(
        &o,
        "plot --out a file",
        &["afile", "is a file, not a folder"],
    );
    assert_eq!(std::fs::read(root.join("afile")).unwrap(), PRECIOUS);
}

#[test]
fn a_run_folder_takes_only_its_own_charts() {
    let root = tmp("runs");
    fake_run(&root.join("l300"), 1);
    fake_run(&root.join("l5"), 2);
    fake_run(&root.join("lstm"), 3);

    // A run's charts in its own folder, as `dst train` draws them (no manifest there: charts
    // drawn before are its own), again and again; by default and through --out.
    dst::report::draw_run_charts(&root.join("l5")).unwrap();
    let own = std::fs::read(root.join("l5/keep_per_layer.png")).unwrap();
    dst::report::draw_run_charts(&root.join("l5")).unwrap();
    ok(
        &dst(&root, &[p("plot"), p("l5")]),
        "plot a run into its folder",
    );
    ok(
        &dst(&root, &[p("plot"), p("l5"), p("--out"), p("./l5/")]),
        "plot a run into its folder, named",
    );
    assert_eq!(
        std::fs::read(root.join("l5/keep_per_layer.png")).unwrap(),
        own
    );

    // Other runs' charts into l5: refused, l5's charts untouched.
    for (args, what) in [
        (
            &["plot", "l300", "lstm", "--out", "l5"][..],
            "two other runs",
        ),
        (&["plot", "l300", "--out", "l5"][..], "another run"),
        (
            &["plot", "l300", "l5", "--out", "l5"][..],
            "l5 with another run",
        ),
    ] {
        let args: Vec<&Path> = args.iter().map(|a| p(a)).collect();
        let o = dst(&root, &args);
        refused(&o, what, &["l5", "run folder", "--out"]);
        assert_eq!(
            std::fs::read(root.join("l5/keep_per_layer.png")).unwrap(),
            own,
            "{what}"
        );
    }
    // Into a run folder without charts yet, too.
    let o = dst(&root, &[p("plot"), p("l300"), p("--out"), p("lstm")]);
    refused(
        &o,
        "another run into a folder without charts",
        &["lstm", "run folder"],
    );
    assert!(!root.join("lstm/keep_per_layer.png").exists());
}

#[test]
fn masks_leave_the_users_files_alone_and_replace_their_own() {
    let root = tmp("masks");
    let ck = root.join("ck.safetensors");
    fake_checkpoint(&ck);

    let user = root.join("userdir");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("fc1_input_keep.png"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("masks"), &ck, p("--out"), p("userdir")]);
    refused(
        &o,
        "masks into the user's folder",
        &["userdir", "fc1_input_keep.png", "--out"],
    );
    assert_eq!(
        std::fs::read(user.join("fc1_input_keep.png")).unwrap(),
        PRECIOUS
    );
    assert!(
        !user.join("fc1_neuron_masks.png").exists(),
        "nothing written"
    );

    // A run's folder whose pictures dst drew (listed in its .dst-charts) takes no other
    // checkpoint's (this one holds no settings: it is no run's checkpoint).
    ok(
        &dst(&root, &[p("masks"), &ck, p("--out"), p("run")]),
        "masks into a plain folder",
    );
    fake_run(&root.join("run"), 1);
    let before = std::fs::read(root.join("run/fc1_input_keep.png")).unwrap();
    let o = dst(&root, &[p("masks"), &ck, p("--out"), p("run")]);
    refused(
        &o,
        "masks into another run's folder",
        &["run", "another run than the checkpoint's", "--out"],
    );
    assert_eq!(
        std::fs::read(root.join("run/fc1_input_keep.png")).unwrap(),
        before
    );

    // Twice into the same folder, and by default next to the checkpoint: its own pictures.
    for _ in 0..2 {
        ok(
            &dst(&root, &[p("masks"), &ck, p("--out"), p("m")]),
            "masks --out m",
        );
        ok(
            &dst(&root, &[p("masks"), &ck]),
            "masks next to the checkpoint",
        );
    }
    assert!(is_png(&root.join("m/fc1_input_keep.png")));
    assert!(is_png(&root.join("fc1_neuron_masks.png")));

    std::fs::write(root.join("afile"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("masks"), &ck, p("--out"), p("afile")]);
    refused(
        &o,
        "masks --out a file",
        &["afile", "is a file, not a folder"],
    );
    assert_eq!(std::fs::read(root.join("afile")).unwrap(), PRECIOUS);
}

/// `dst report --out` replaces only a report of its own: a user's file, a run's config.json or
/// checkpoint, and a folder are refused and left as they were.
#[test]
fn report_replaces_only_its_own_reports() {
    let root = tmp("report-out");
    fake_run(&root.join("run"), 1);
    let config = std::fs::read(root.join("run/config.json")).unwrap();
    std::fs::write(root.join("notes.md"), PRECIOUS).unwrap();
    let ck = root.join("run/checkpoint.safetensors");
    fake_checkpoint(&ck);
    let ck_bytes = std::fs::read(&ck).unwrap();
    for (out, want) in [
        ("notes.md", "is not a report of `dst report`"),
        ("run/config.json", "is not a report of `dst report`"),
        (
            "run/checkpoint.safetensors",
            "is not a report of `dst report`",
        ),
        ("run", "is a folder"),
        ("notes.md/r.md", "notes.md is a file, not a folder"),
    ] {
        let o = dst(&root, &[p("report"), p("run"), p("--out"), p(out)]);
        refused(&o, &format!("report --out {out}"), &[out, want]);
    }
    assert_eq!(std::fs::read(root.join("notes.md")).unwrap(), PRECIOUS);
    assert_eq!(std::fs::read(root.join("run/config.json")).unwrap(), config);
    assert_eq!(std::fs::read(&ck).unwrap(), ck_bytes);
    // Its own report, written and then replaced.
    for _ in 0..2 {
        ok(
            &dst(
                &root,
                &[p("report"), p("run"), p("--out"), p("r/report.md")],
            ),
            "report --out r/report.md",
        );
    }
    let md = std::fs::read_to_string(root.join("r/report.md")).unwrap();
    assert!(md.starts_with(dst::report::REPORT_HEADER), "{md}");
    // Its last line seals it: notes added to it, or a report without the seal (an older dst's),
    // are not replaced (the notes were lost).
    assert!(
        md.lines()
            .last()
            .is_some_and(|l| l.starts_with("<!-- dst: SHA-256 of the text above: ")),
        "{md}"
    );
    let noted = format!("{md}\nMy notes on these runs.\n");
    let older = format!("{}\n| a table |\n", dst::report::REPORT_HEADER);
    // A figure changed above the seal, which is left as it was.
    let (body, seal) = md.trim_end().rsplit_once('\n').unwrap();
    let changed = format!("{}\n{seal}\n", body.replacen("| ", "|  ", 1));
    assert_ne!(changed, md);
    for text in [&noted, &older, &changed] {
        std::fs::write(root.join("r/report.md"), text).unwrap();
        let o = dst(
            &root,
            &[p("report"), p("run"), p("--out"), p("r/report.md")],
        );
        refused(
            &o,
            "report --out over an edited report",
            &["r/report.md", "changed after dst wrote it"],
        );
        assert_eq!(
            &std::fs::read_to_string(root.join("r/report.md")).unwrap(),
            text
        );
    }
    // Its line ends converted to CRLF (git's autocrlf), its last newline dropped, or a byte
    // order mark and blank lines an editor added: still its own, replaced.
    for text in [
        md.replace('\n', "\r\n"),
        md.trim_end().to_string(),
        format!("\u{feff}{md}\n  \n"),
    ] {
        std::fs::write(root.join("r/report.md"), &text).unwrap();
        ok(
            &dst(
                &root,
                &[p("report"), p("run"), p("--out"), p("r/report.md")],
            ),
            "report --out over its own report, CRLF or without its last newline",
        );
        assert_eq!(
            std::fs::read_to_string(root.join("r/report.md")).unwrap(),
            md
        );
    }
    // Through a symbolic link: the link stays, its target is replaced (the link became a plain
    // file, its target left stale); a link to nothing is refused.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("r/report.md", root.join("lnk.md")).unwrap();
        ok(
            &dst(&root, &[p("report"), p("run"), p("--out"), p("lnk.md")]),
            "report --out a link to its own report",
        );
        // A link to that link: both stay links (the middle one became a plain file).
        std::os::unix::fs::symlink("lnk.md", root.join("lnk2.md")).unwrap();
        ok(
            &dst(&root, &[p("report"), p("run"), p("--out"), p("lnk2.md")]),
            "report --out a link to a link",
        );
        for l in ["lnk.md", "lnk2.md"] {
            assert!(
                std::fs::symlink_metadata(root.join(l))
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{l}"
            );
        }
        std::os::unix::fs::symlink("nowhere.md", root.join("dang.md")).unwrap();
        refused(
            &dst(&root, &[p("report"), p("run"), p("--out"), p("dang.md")]),
            "report --out a dangling link",
            &["dang.md", "nowhere.md, which does not exist"],
        );
        assert!(!root.join("nowhere.md").exists());
    }
    // A name near the 255-byte limit (its temporary file's name once went over it).
    let long = format!("{}.md", "r".repeat(250));
    ok(
        &dst(&root, &[p("report"), p("run"), p("--out"), p(&long)]),
        "report --out a 253-byte name",
    );
    assert!(root.join(&long).is_file());
    // A .csv name gets the table as CSV (it got Markdown), and replaces only a table of its own.
    std::fs::write(root.join("mine.csv"), PRECIOUS).unwrap();
    let o = dst(&root, &[p("report"), p("run"), p("--out"), p("mine.csv")]);
    refused(
        &o,
        "report --out mine.csv",
        &["mine.csv", "is not a table of"],
    );
    assert_eq!(std::fs::read(root.join("mine.csv")).unwrap(), PRECIOUS);
    for _ in 0..2 {
        ok(
            &dst(
                &root,
                &[p("report"), p("run"), p("--out"), p("r/table.CSV")],
            ),
            "report --out r/table.CSV",
        );
    }
    let csv = std::fs::read_to_string(root.join("r/table.CSV")).unwrap();
    assert!(csv.starts_with(dst::report::table::CSV_HEADER), "{csv}");
    assert!(csv.lines().count() >= 2, "{csv}");
    // A table of an older dst (no target_keep column) is its own too.
    let older = dst::report::table::CSV_HEADERS[2];
    assert!(!older.contains("target_keep"));
    let old_row = "lenet300,false,0.0005,\"DST\",20,\"\",1,1,0,last,97.5,,2.5,\n";
    std::fs::write(root.join("old.csv"), format!("{older}{old_row}")).unwrap();
    ok(
        &dst(&root, &[p("report"), p("run"), p("--out"), p("old.csv")]),
        "report --out old.csv",
    );
    let csv = std::fs::read_to_string(root.join("old.csv")).unwrap();
    assert!(csv.starts_with(dst::report::table::CSV_HEADER), "{csv}");
    // Saved again by a spreadsheet (CRLF line ends, a byte order mark): still its own.
    std::fs::write(
        root.join("old.csv"),
        format!("\u{feff}{}", csv.replace('\n', "\r\n")),
    )
    .unwrap();
    ok(
        &dst(&root, &[p("report"), p("run"), p("--out"), p("old.csv")]),
        "report --out old.csv saved with CRLF",
    );
    // One with a line of notes added is kept, as an edited Markdown report is.
    let noted = format!(
        "{}checked by hand: fine\n",
        std::fs::read_to_string(root.join("old.csv")).unwrap()
    );
    std::fs::write(root.join("old.csv"), &noted).unwrap();
    refused(
        &dst(&root, &[p("report"), p("run"), p("--out"), p("old.csv")]),
        "report --out old.csv with notes",
        &["old.csv", "that was changed after dst wrote it"],
    );
    assert_eq!(
        std::fs::read_to_string(root.join("old.csv")).unwrap(),
        noted
    );
    // A sweep's own table (sweep.csv beside its sweep.md) is the sweep's, though it is dst's
    // CSV: another table there would pass for the sweep's.
    std::fs::create_dir_all(root.join("sw")).unwrap();
    std::fs::write(root.join("sw/sweep.md"), PRECIOUS).unwrap();
    std::fs::copy(root.join("r/table.CSV"), root.join("sw/sweep.csv")).unwrap();
    let before = std::fs::read(root.join("sw/sweep.csv")).unwrap();
    refused(
        &dst(
            &root,
            &[p("report"), p("run"), p("--out"), p("sw/sweep.csv")],
        ),
        "report --out a sweep's sweep.csv",
        &[
            "sw/sweep.csv",
            "is the table of the `dst sweep` study in ",
            "/sw (",
        ],
    );
    assert_eq!(std::fs::read(root.join("sw/sweep.csv")).unwrap(), before);
    // Nor through a link to it (reports write through links).
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("sw/sweep.csv", root.join("tl.csv")).unwrap();
        refused(
            &dst(&root, &[p("report"), p("run"), p("--out"), p("tl.csv")]),
            "report --out a link to a sweep's sweep.csv",
            &["is the table of the `dst sweep` study in"],
        );
        assert_eq!(std::fs::read(root.join("sw/sweep.csv")).unwrap(), before);
    }
}

/// `dst sweep` and `dst reproduce` refuse, before any run trains, an --out that is a training
/// run's folder or a file, one holding a sweep.md, sweep.csv, sweep.png or REPORT.md they
/// did not write, and one holding the other kind of study; nothing there changes.
#[test]
fn studies_refuse_folders_and_files_not_their_own() {
    let root = tmp("study-out");
    fake_run(&root.join("run"), 1);
    // The other kind of study: a sweep's runs lie in its folder, a reproduction's in a folder per
    // model; each has its report.
    fake_run(&root.join("a-sweep/alpha1e-4-seed1"), 1);
    fake_run(&root.join("a-reproduction/lenet300/dst-seed1"), 1);
    std::fs::create_dir_all(root.join("sweep-report")).unwrap();
    std::fs::write(root.join("sweep-report/sweep.md"), PRECIOUS).unwrap();
    // A reproduction's report, and its charts' folder (a user's REPORT.md, or the charts of
    // `dst plot --out x/charts`, are no reproduction: a sweep goes on beside them).
    std::fs::create_dir_all(root.join("repro-report")).unwrap();
    std::fs::write(
        root.join("repro-report/REPORT.md"),
        "# Reproduction of Table 1 (MNIST rows)\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("repro-charts/charts/lenet300")).unwrap();
    // A reproduction's folder of one model's runs, which has a sweep's layout.
    fake_run(&root.join("repro2/lenet300/dst-seed1"), 1);
    std::fs::copy(
        root.join("repro-report/REPORT.md"),
        root.join("repro2/REPORT.md"),
    )
    .unwrap();
    std::fs::write(root.join("afile"), PRECIOUS).unwrap();
    for name in ["sweep.md", "sweep.csv", "sweep.png", "REPORT.md"] {
        let d = root.join(format!("user-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), PRECIOUS).unwrap();
    }
    // Data folders: MNIST's files (one is enough), CIFAR-10's as its archive unpacks.
    for (d, f) in [
        ("mnist", "t10k-labels-idx1-ubyte.gz"),
        ("cifar/cifar-10-batches-bin", "data_batch_1.bin"),
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join(f), PRECIOUS).unwrap();
    }
    let sweep = |out: &str| {
        dst(
            &root,
            &[
                p("sweep"),
                p("--alpha"),
                p("1e-4"),
                p("--no-dense"),
                p("--epochs"),
                p("1"),
                p("--limit-train"),
                p("64"),
                p("--out"),
                p(out),
            ],
        )
    };
    let reproduce = |out: &str| {
        dst(
            &root,
            &[
                p("reproduce"),
                p("table1"),
                p("--quick"),
                p("--seeds"),
                p("1"),
                p("--epochs"),
                p("1"),
                p("--limit-train"),
                p("64"),
                p("--out"),
                p(out),
            ],
        )
    };
    for (o, what, want) in [
        (
            sweep("run"),
            "sweep into a run",
            "is the folder of a training run",
        ),
        (
            sweep("afile"),
            "sweep into a file",
            "is a file, not a folder",
        ),
        (
            sweep("user-sweep.md"),
            "sweep over sweep.md",
            "is not a `dst sweep` report",
        ),
        (
            sweep("user-sweep.csv"),
            "sweep over sweep.csv",
            "is not a `dst sweep` table",
        ),
        (
            sweep("user-sweep.png"),
            "sweep over sweep.png",
            "no `dst sweep` report or table lies beside it",
        ),
        (
            reproduce("run"),
            "reproduce into a run",
            "is the folder of a training run",
        ),
        (
            sweep("mnist"),
            "sweep into MNIST",
            "holds a dataset's files",
        ),
        (
            reproduce("cifar"),
            "reproduce into CIFAR-10",
            "holds a dataset's files",
        ),
        (
            reproduce("user-REPORT.md"),
            "reproduce over REPORT.md",
            "is not a `dst reproduce` report",
        ),
        (
            sweep("repro-report"),
            "sweep beside REPORT.md",
            "looks like a `dst reproduce` study (REPORT.md)",
        ),
        (
            sweep("repro-charts"),
            "sweep beside charts/lenet300",
            "looks like a `dst reproduce` study (",
        ),
        (
            sweep("repro2/charts"),
            "sweep into a reproduction's charts",
            "is the charts folder of the `dst reproduce` study in",
        ),
        (
            sweep("repro2/lenet300"),
            "sweep into a reproduction's model folder",
            "is the lenet300 folder of the `dst reproduce` study in",
        ),
        (
            sweep("a-reproduction"),
            "sweep into a reproduction",
            "looks like a `dst reproduce` study (runs in",
        ),
        (
            reproduce("a-sweep"),
            "reproduce into a sweep",
            "holds runs of its own (",
        ),
        (
            reproduce("sweep-report"),
            "reproduce beside sweep.md",
            "looks like a `dst sweep` study (sweep.md)",
        ),
        (
            reproduce("user-sweep.png"),
            "reproduce beside sweep.png",
            "looks like a `dst sweep` study (sweep.png)",
        ),
    ] {
        refused(&o, what, &[want]);
    }
    for name in ["sweep.md", "sweep.csv", "sweep.png", "REPORT.md"] {
        let d = root.join(format!("user-{name}"));
        assert_eq!(std::fs::read(d.join(name)).unwrap(), PRECIOUS, "{name}");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "nothing added to {d:?}"
        );
    }
    assert_eq!(std::fs::read(root.join("afile")).unwrap(), PRECIOUS);
    assert_eq!(std::fs::read_dir(root.join("mnist")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(root.join("cifar")).unwrap().count(), 1);
    let run: Vec<_> = std::fs::read_dir(root.join("run")).unwrap().collect();
    assert_eq!(run.len(), 2, "config.json and metrics.jsonl only");
    for (d, n) in [
        ("a-sweep", 1),
        ("a-reproduction", 1),
        ("sweep-report", 1),
        ("repro-report", 1),
        ("repro-charts", 1),
        ("repro2", 2),
        ("repro2/lenet300", 1),
    ] {
        assert_eq!(std::fs::read_dir(root.join(d)).unwrap().count(), n, "{d}");
    }
}

/// A run given twice, under two spellings of its path, is drawn and counted once.
#[test]
fn a_run_given_twice_counts_once() {
    let root = std::env::temp_dir().join(format!("dst-find-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["r", "s"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("config.json"), b"{}").unwrap();
    }
    let again = root.join("s").join("..").join("r");
    let runs = dst::report::find_runs(&[root.join("r"), root.join("s"), again]).unwrap();
    assert_eq!(runs, vec![root.join("r"), root.join("s")]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two runs in folders of the same name get legend names that tell them apart.
#[test]
fn runs_of_the_same_folder_name_are_told_apart() {
    let root = std::env::temp_dir().join(format!("dst-labels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    fake_run(&root.join("a/run"), 1);
    fake_run(&root.join("b/run"), 2);
    fake_run(&root.join("c/other"), 3);
    let runs =
        dst::report::load_runs(&[root.join("a/run"), root.join("b/run"), root.join("c/other")])
            .unwrap();
    let labels = dst::report::charts::distinct_labels(&runs);
    assert_eq!(labels, ["a/run", "b/run", "other"]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A log axis over about a decade labels 1, 2 and 5 times its decades (plotters alone labelled
/// only the one decade line such an axis holds); over more decades, the decades.
#[test]
fn log_axes_label_more_than_one_value() {
    use dst::report::charts::log_ticks;
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs())
    };
    let t = log_ticks(0.1, 1.2);
    assert!(close(&t, &[0.1, 0.2, 0.5, 1.0]), "{t:?}");
    let t = log_ticks(0.01, 1.0);
    assert!(close(&t, &[0.01, 0.1, 1.0]), "{t:?}");
    let t = log_ticks(1e-4, 1e-1);
    assert!(close(&t, &[1e-4, 1e-3, 1e-2, 1e-1]), "{t:?}");
}

/// A dense run logs alpha 0: it draws no alpha.png (an empty chart of 0), in its own folder or
/// with others, where a DST run's alpha is drawn alone. A chart an earlier drawing left that the
/// runs drawn now have no data for is removed where it is dst's own (its run's folder, or listed
/// in `.dst-charts` unchanged), and left alone where it is the user's.
#[test]
fn dense_runs_draw_no_alpha_chart() {
    let root = tmp("dense-alpha");
    fake_run(&root.join("l300"), 1);
    fake_dense_run(&root.join("dense"), 1);

    // Its own folder: no alpha.png; one that an earlier version drew there is removed.
    std::fs::write(root.join("dense/alpha.png"), b"an empty chart of alpha 0").unwrap();
    let files = dst::report::draw_run_charts(&root.join("dense")).unwrap();
    assert!(files.iter().all(|f| !f.ends_with("alpha.png")), "{files:?}");
    assert!(is_png(&root.join("dense/accuracy_remaining.png")));
    assert!(!root.join("dense/alpha.png").exists());

    // With a DST run: the chart holds the DST run's alpha only.
    ok(
        &dst(
            &root,
            &[p("plot"), p("l300"), p("dense"), p("--out"), p("charts")],
        ),
        "plot DST and dense",
    );
    assert!(is_png(&root.join("charts/alpha.png")));
    // The dense run alone into the same folder: no alpha (or keep, or threshold) chart, and
    // those drawn before are gone from the folder and from its manifest.
    let o = dst(&root, &[p("plot"), p("dense"), p("--out"), p("charts")]);
    ok(&o, "plot the dense run alone");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("alpha.png"),
        "{o:?}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    for gone in ["alpha.png", "keep_per_layer.png", "thresholds.png"] {
        assert!(!root.join("charts").join(gone).exists(), "{gone} left");
        // Named as it goes.
        assert!(
            err.contains(&format!("removed charts/{gone}: drawn there before")),
            "{err}"
        );
    }
    assert!(is_png(&root.join("charts/accuracy_remaining.png")));
    let manifest = std::fs::read_to_string(root.join("charts/.dst-charts")).unwrap();
    assert!(
        manifest.contains("accuracy_remaining.png") && !manifest.contains("alpha.png"),
        "{manifest}"
    );

    // A file of the user's of such a name stays.
    std::fs::create_dir_all(root.join("mine")).unwrap();
    std::fs::write(root.join("mine/alpha.png"), PRECIOUS).unwrap();
    ok(
        &dst(&root, &[p("plot"), p("dense"), p("--out"), p("mine")]),
        "plot the dense run next to the user's alpha.png",
    );
    assert_eq!(
        std::fs::read(root.join("mine/alpha.png")).unwrap(),
        PRECIOUS
    );
}

/// Overlaid runs keep one colour each in every panel of `accuracy_remaining.png`: a run's
/// validation line is dashed in its colour (Tableau blue and orange for two runs), rather than
/// taking the next colours (green, red), which gave a run one colour above and another below.
#[test]
fn a_run_keeps_its_colour_across_panels() {
    let root = tmp("colours");
    for (name, seed) in [("a", 1), ("b", 2)] {
        let dir = root.join(name);
        fake_run(&dir, seed);
        let path = dir.join("metrics.jsonl");
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["kind"] == "epoch" {
                    v["valid_acc"] = json!(v["test_acc"].as_f64().unwrap() - 3.0);
                }
                format!("{v}\n")
            })
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let o = dst(&root, &[p("plot"), p("a"), p("b"), p("--out"), p("charts")]);
    ok(&o, "plot");
    let img = image::open(root.join("charts").join("accuracy_remaining.png"))
        .unwrap()
        .to_rgb8();
    let count = |c: [u8; 3]| img.pixels().filter(|px| px.0 == c).count();
    let (blue, orange) = (count([31, 119, 180]), count([255, 127, 14]));
    let (green, red) = (count([44, 160, 44]), count([214, 39, 40]));
    assert!(blue > 100 && orange > 100, "blue {blue}, orange {orange}");
    assert_eq!((green, red), (0, 0), "colours beyond the two runs'");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run whose summary.json is damaged is still drawn, from its log, with a warning (charts
/// need no summary; `dst plot` refused it as "no readable run").
#[test]
fn a_run_with_a_damaged_summary_is_drawn_from_its_log() {
    let root = tmp("damaged-summary");
    fake_run(&root.join("r"), 1);
    std::fs::write(
        root.join("r").join("summary.json"),
        "{\"model\": \"lenet300\", \"de",
    )
    .unwrap();
    let o = dst(&root, &[p("plot"), p("r"), p("--out"), p("charts")]);
    ok(&o, "plot of a run with a damaged summary");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("summary.json") && err.contains("the run is drawn from its metrics.jsonl"),
        "{err}"
    );
    assert!(is_png(&root.join("charts").join("keep_per_layer.png")));
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run that logged nothing (no metrics.jsonl): `dst plot` fails naming it, and the charts an
/// earlier drawing left in its folder stay (it once drew nothing and succeeded); beside a run
/// that logged, a warning names it.
#[test]
fn a_run_that_logged_nothing_is_no_silent_success() {
    let root = tmp("nothing-logged");
    fake_run(&root.join("r"), 1);
    ok(&dst(&root, &[p("plot"), p("r")]), "plot r");
    let chart = root.join("r").join("keep_per_layer.png");
    let drawn = std::fs::read(&chart).unwrap();
    std::fs::remove_file(root.join("r").join("metrics.jsonl")).unwrap();
    refused(
        &dst(&root, &[p("plot"), p("r")]),
        "plot of a run without metrics",
        &["nothing to draw", "r logged no step or epoch"],
    );
    assert_eq!(std::fs::read(&chart).unwrap(), drawn, "its charts stay");
    fake_run(&root.join("s"), 2);
    let o = dst(&root, &[p("plot"), p("r"), p("s"), p("--out"), p("both")]);
    ok(&o, "plot r s");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("r logged no step or epoch yet"), "{err}");
    assert!(is_png(&root.join("both").join("keep_per_layer.png")));
    // A run that diverged before its first log point is said to have diverged (not to have
    // logged nothing: its metrics.jsonl holds the "diverged" line).
    std::fs::write(
        root.join("r").join("metrics.jsonl"),
        "{\"kind\":\"diverged\",\"epoch\":1,\"step\":3,\"what\":\"loss is NaN\"}\n",
    )
    .unwrap();
    refused(
        &dst(&root, &[p("plot"), p("r")]),
        "plot of a run that diverged at once",
        &["r diverged at step 3 (loss is NaN), before its first log point"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run before its first epoch's end is said to be only in the charts over the steps; an
/// --out that names a picture (`x.png`) is refused, nothing made (the charts went into a new
/// folder of that name).
#[test]
fn plots_of_unfinished_runs_and_picture_names_are_told() {
    let root = tmp("unfinished");
    fake_run(&root.join("r"), 1);
    fake_run(&root.join("s"), 2);
    // s's first epoch unfinished: its first step line only.
    let text = std::fs::read_to_string(root.join("s/metrics.jsonl")).unwrap();
    std::fs::write(
        root.join("s/metrics.jsonl"),
        text.lines().next().unwrap().to_owned() + "\n",
    )
    .unwrap();
    let o = dst(&root, &[p("plot"), p("r"), p("s"), p("--out"), p("both")]);
    ok(&o, "plot r s");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("note: s has no finished epoch yet: it is only in the charts over the steps"),
        "{err}"
    );
    assert!(!err.contains("r has no finished"), "{err}");
    refused(
        &dst(&root, &[p("plot"), p("r"), p("--out"), p("r.png")]),
        "plot --out r.png",
        &["--out r.png: --out names the folder the pictures go into"],
    );
    fake_checkpoint(&root.join("r/checkpoint.safetensors"));
    refused(
        &dst(&root, &[p("masks"), p("r"), p("--out"), p("m.PNG")]),
        "masks --out m.PNG",
        &["--out m.PNG: --out names the folder"],
    );
    assert!(!root.join("r.png").exists() && !root.join("m.PNG").exists());
    // Given with a slash, it names a folder: taken (made).
    ok(
        &dst(&root, &[p("plot"), p("r"), p("--out"), p("s.png/")]),
        "plot --out s.png/",
    );
    assert!(is_png(&root.join("s.png/keep_per_layer.png")));
    // A folder of that name that exists is a folder: taken.
    std::fs::create_dir(root.join("r.png")).unwrap();
    ok(
        &dst(&root, &[p("plot"), p("r"), p("--out"), p("r.png")]),
        "plot into a folder r.png",
    );
    assert!(is_png(&root.join("r.png/keep_per_layer.png")));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two runs of the same command (the same config.json): one's mask pictures are refused in the
/// other's folder, whose own checkpoint holds other weights (they once replaced its pictures),
/// and taken in its own; a run folder whose config.json cannot be read is named as such.
#[test]
fn masks_tell_runs_of_the_same_settings_apart() {
    let root = tmp("masks-same-settings");
    let mut cks = Vec::new();
    for (name, bias) in [("a", 0.0f32), ("b", 0.25)] {
        let dir = root.join(name);
        fake_run(&dir, 3);
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let mut ck = Checkpoint::default();
        ck.metadata.insert("model".into(), "lenet300".into());
        ck.metadata.insert("masked".into(), "true".into());
        ck.metadata.insert("config".into(), config);
        let w: Vec<f32> = (0..300 * 784)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0 + bias)
            .collect();
        ck.tensors = vec![
            ("fc1.weight".into(), vec![300, 784], w),
            ("fc1.threshold".into(), vec![300], vec![0.5; 300]),
        ];
        ck.save(&dir.join("checkpoint.safetensors")).unwrap();
        cks.push(dir.join("checkpoint.safetensors"));
    }
    ok(&dst(&root, &[p("masks"), p("b")]), "masks of b into b");
    let before = std::fs::read(root.join("b/fc1_input_keep.png")).unwrap();
    let o = dst(&root, &[p("masks"), &cks[0], p("--out"), p("b")]);
    refused(
        &o,
        "a's masks into b",
        &["another run than the checkpoint's", "holds other weights"],
    );
    assert_eq!(
        std::fs::read(root.join("b/fc1_input_keep.png")).unwrap(),
        before
    );
    ok(&dst(&root, &[p("masks"), p("a")]), "masks of a into a");
    // Its config.json then resumed for more epochs, or its data folder edited (as the README
    // says to where the data moved): still its own run (its pictures were refused).
    let path = root.join("a/config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["epochs"] = serde_json::json!(9);
    c["data"] = serde_json::json!("/elsewhere/mnist");
    std::fs::write(&path, c.to_string()).unwrap();
    ok(
        &dst(&root, &[p("masks"), p("a")]),
        "masks of a, its config.json edited",
    );
    std::fs::write(root.join("b/config.json"), b"{ damaged").unwrap();
    let o = dst(&root, &[p("masks"), &cks[1], p("--out"), p("b")]);
    refused(
        &o,
        "b with a damaged config",
        &["config.json cannot be read"],
    );
}
