//! The command line: bad flags fail before any GPU work with a message naming the problem.

use std::process::Command;

fn dst(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(args)
        .output()
        .expect("run dst");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `dst(args)` where no adapter can be had (a back end this OS lacks): a command stops where it
/// opens the adapter, after what it says before that (its notes).
fn dst_without_adapter(args: &[&str]) -> (bool, String, String) {
    let o = without_adapter(Command::new(env!("CARGO_BIN_EXE_dst")).args(args))
        .output()
        .expect("run dst");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `c` set to find no adapter: a back end this OS does not have.
fn without_adapter(c: &mut Command) -> &mut Command {
    c.env(
        "WGPU_BACKEND",
        if cfg!(target_os = "macos") {
            "dx12"
        } else {
            "metal"
        },
    )
    .env_remove("WGPU_ADAPTER_NAME")
}

/// A path in the temp folder for this process's test `tag`, with nothing there.
fn nothing_at(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("dst-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The JSON file at `path` (a run's config.json).
fn read_json(path: impl AsRef<std::path::Path>) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `nothing_at(tag)`, made an empty folder.
fn empty_folder(tag: &str) -> std::path::PathBuf {
    let p = nothing_at(tag);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn bad_training_flags_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--lr", "-1"], "--lr must be a positive number"),
        (&["train", "--batch", "0"], "--batch must be in 1..=65535"),
        (&["train", "--alpha", "-0.5"], "--alpha must be >= 0"),
        (
            &["train", "--model", "resnet9000"],
            "unknown model \"resnet9000\"",
        ),
        (&["train", "--epochs", "0"], "--epochs must be >= 1"),
        (
            &["train", "--valid", "500", "--limit-train", "500"],
            "--valid 500 leaves no training images of the 500 that --limit-train takes",
        ),
        // Refused before its first run trains (it once said "[1/2] ...: training" first).
        (
            &[
                "sweep",
                "--alpha",
                "1e-3",
                "--valid",
                "500",
                "--limit-train",
                "500",
                "--out",
                "/nonexistent/sweep",
            ],
            "--valid 500 leaves no training images",
        ),
        (
            &["train", "--momentum", "1.5"],
            "--momentum must be in [0, 1)",
        ),
        (
            &["train", "--optimizer", "rmsprop"],
            "--optimizer must be sgd or adam",
        ),
        (&["train", "--batch", "abc"], "invalid value 'abc'"),
        (
            &["train", "--no-such-flag"],
            "unexpected argument '--no-such-flag'",
        ),
        // A flag another command has: named as missing here (clap's tip said to pass it as a
        // value after `--`).
        (
            &["report", "runs", "--data", "x"],
            "tip: `dst report` has no option --data; `dst report --help` lists its options",
        ),
        // Negative values reach the value check instead of reading as flags.
        (
            &["train", "--epochs", "-1"],
            "invalid value '-1' for '--epochs",
        ),
        (
            &["train", "--epochs", "99999999999"],
            "--epochs 99999999999 is more than 100000",
        ),
        (
            &["train", "--sparse-keep", "-0.5"],
            "--sparse-keep must be a fraction",
        ),
        // 0 in f32, the precision training computes in.
        (&["train", "--lr", "1e-46"], "--lr 1e-46 is 0 in f32"),
        // Flags that would do nothing are refused, not ignored.
        (
            &["train", "--dense", "--sparse-keep", "0.5"],
            "--sparse-keep says when a masked layer's",
        ),
        (
            &["train", "--dense", "--alpha", "1e-3"],
            "a --dense run has no masks",
        ),
        (
            &["train", "--dense", "--reset", "floor"],
            "a --dense run has none",
        ),
        (
            &["train", "--optimizer", "adam", "--momentum", "0.5"],
            "--momentum is SGD's",
        ),
        // --lr-gamma scales nothing without learning-rate steps (the MNIST models have none by
        // default; --lr-steps none drops a CIFAR-10 model's).
        (
            &["train", "--lr-gamma", "0.5"],
            "--lr-gamma multiplies the learning rate at the --lr-steps epochs, and this run has \
             none (lenet300 has no default steps): give --lr-steps (e.g. --lr-steps 15), or drop \
             --lr-gamma",
        ),
        // A step at or past the most epochs a run can take would never apply.
        (
            &["train", "--lr-steps", "100000"],
            "--lr-steps 100000: a step applies from the epoch after it, and a run takes at most \
             100000 epochs",
        ),
        (
            &[
                "train",
                "--model",
                "vgg16",
                "--lr-steps",
                "none",
                "--lr-gamma",
                "0.5",
            ],
            "this run has none (--lr-steps none): give --lr-steps epochs (e.g. --lr-steps 15), \
             or drop --lr-gamma",
        ),
        (&["bench", "--rounds", "0"], "--rounds must be >= 1"),
        (
            &[
                "fetch",
                "mnist",
                "--to",
                "/nonexistent/m",
                "--mirror",
                "example.org/mnist",
            ],
            "--mirror example.org/mnist: give a base URL starting with http://",
        ),
        (&["bench", "--reps", "0", "--steps", "0"], "nothing to time"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = dst(args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            !err.contains(": training") && !err.contains("adapter:"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn missing_data_dir_is_a_clear_error() {
    let (ok, _, err) = dst(&["train", "--data", "/nonexistent/mnist", "--epochs", "1"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/mnist"), "{err}");
}

#[test]
fn unknown_adapter_is_a_one_line_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_dst"))
        .arg("info")
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(line.contains("no-such-adapter-xyz"), "{err}");
}

/// A WGPU_BACKEND that names no back end is said to, not reported as "no adapter found".
#[test]
fn unknown_backend_names_the_variable() {
    for value in ["bogus", "vulkan,bogus"] {
        let o = Command::new(env!("CARGO_BIN_EXE_dst"))
            .arg("info")
            .env("WGPU_BACKEND", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!("WGPU_BACKEND={value:?}: \"bogus\" is no back end"))
                && !err.contains("no GPU adapter found"),
            "{err}"
        );
    }
}

/// A path under a file: `train --out` is refused before the adapter opens, and `--data` names
/// the file in the way rather than only a missing folder.
#[test]
fn paths_under_a_file_name_the_file() {
    let root = empty_folder("under");
    let file = root.join("afile");
    std::fs::write(&file, b"mine").unwrap();
    let sub = file.join("sub");
    let (ok, _, err) = dst(&["train", "--out", sub.to_str().unwrap()]);
    assert!(
        !ok && err.contains(&format!(
            "the folder cannot be made: {} is a file",
            file.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("adapter"),
        "refused only after the adapter opened: {err}"
    );
    let (ok, _, err) = dst(&["train", "--data", sub.to_str().unwrap()]);
    assert!(
        !ok && err.contains(&format!("no such folder ({} is a file)", file.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn eval_and_resume_flags_check_their_paths() {
    let (ok, _, err) = dst(&["eval", "--checkpoint", "/nonexistent/ck.safetensors"]);
    assert!(!ok && err.contains("/nonexistent/ck.safetensors"), "{err}");
    let (ok, _, err) = dst(&["train", "--resume", "/nonexistent/run"]);
    assert!(!ok && err.contains("--resume /nonexistent/run"), "{err}");
    // A .safetensors file: a checkpoint resumes only as its run folder's; one not there is
    // not there (it read "is a file").
    let (ok, _, err) = dst(&["train", "--resume", "/nonexistent/x.safetensors"]);
    assert!(
        !ok && err.contains("--resume /nonexistent/x.safetensors: no such folder"),
        "{err}"
    );
    let dir = empty_folder("resume-a-file");
    let file = dir.join("model.safetensors");
    std::fs::write(&file, b"not read").unwrap();
    let (ok, _, err) = dst(&["train", "--resume", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains(
            "is a file, not a run folder (a checkpoint is resumed only as its run folder's \
             checkpoint.safetensors"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not read");
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, _, err) = dst(&["fetch", "cifar", "--to", "/tmp/x"]);
    assert!(!ok && err.contains("unknown dataset"), "{err}");
    assert!(err.contains("mnist, cifar10"), "{err}");
}

/// `dst fetch cifar10` into a folder that holds something else refuses before any download.
#[test]
fn fetch_cifar10_leaves_an_occupied_folder_alone() {
    let dir = empty_folder("cifar");
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    // A mirror that cannot answer: the command must stop before trying any.
    let (ok, _, err) = dst(&[
        "fetch",
        "cifar10",
        "--to",
        dir.to_str().unwrap(),
        "--mirror",
        "http://127.0.0.1:9/",
    ]);
    assert!(!ok, "{err}");
    assert!(err.contains("not a complete CIFAR-10 folder"), "{err}");
    assert!(err.contains("data_batch_1.bin"), "{err}");
    assert!(!err.contains("127.0.0.1"), "no download tried: {err}");
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A short real run through the binary, then `dst eval` of its checkpoint, then a refused
/// second run into the same directory.
#[test]
fn train_then_eval_through_the_binary() {
    let out = nothing_at("run");
    let o = out.to_str().unwrap();
    let (ok, stdout, err) = dst(&["train", "--epochs", "1", "--limit-train", "640", "--out", o]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("fc1") && stdout.contains("test accuracy"),
        "{stdout}"
    );
    let ck = out.join("checkpoint.safetensors");
    let (ok, stdout, err) = dst(&["eval", "--checkpoint", ck.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("test accuracy") && stdout.contains("fc3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("on the 2000 test images of the embedded MNIST subset,"),
        "{stdout}"
    );
    // The adapter is named before the work: the first line on stderr.
    assert!(err.starts_with("adapter: "), "{err}");
    // The checkpoint as the argument (as export and masks take it) reads the same; given twice
    // it is refused.
    let (ok, positional, err) = dst(&["eval", o]);
    assert!(ok, "{err}");
    assert_eq!(positional, stdout);
    let (ok, _, err) = dst(&["eval", o, "--checkpoint", o]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let pictures = out.join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    let p = pictures.to_str().unwrap();
    let (ok, _, err) = dst(&["masks", "--checkpoint", o, "--out", p]);
    assert!(ok, "{err}");
    let exported = out.join("e.safetensors");
    let e = exported.to_str().unwrap();
    let (ok, _, err) = dst(&["export", "--checkpoint", o, "--out", e]);
    assert!(ok && exported.is_file(), "{err}");
    std::fs::remove_dir_all(&pictures).unwrap();
    std::fs::remove_file(&exported).unwrap();
    // eval scores the test set only: a folder with just the two test files (as `dst infer`
    // takes) will do.
    let test_only = out.join("t10k-only");
    std::fs::create_dir_all(&test_only).unwrap();
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-subset");
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(assets.join(f), test_only.join(f)).unwrap();
    }
    let (ok, stdout, err) = dst(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        test_only.to_str().unwrap(),
    ]);
    assert!(ok, "eval with only the test files: {err}");
    assert!(
        stdout.contains(&format!(
            // The embedded subset's test files: a part of MNIST, not MNIST's own files.
            "on the 2000 test images of {} (IDX files in MNIST's format, not MNIST's own",
            test_only.display()
        )),
        "{stdout}"
    );
    std::fs::remove_dir_all(&test_only).unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--out", o]);
    assert!(!ok && err.contains("already holds a run"), "{err}");
}

/// `dst bench --checkpoint` steps every variant with the settings of the checkpoint's run (an
/// Adam-trained LeNet-300-100 was once stepped with the model's SGD; an SGD-trained LSTM's
/// checkpoint could not be restored).
#[test]
fn bench_from_a_checkpoint_takes_its_runs_optimiser() {
    let out = nothing_at("bench-adam");
    let o = out.to_str().unwrap();
    let (ok, _, err) = dst(&[
        "train",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--epochs",
        "1",
        "--limit-train",
        "256",
        "--reset",
        "floor",
        "--out",
        o,
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = dst(&[
        "bench",
        "--reps",
        "0",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--checkpoint",
        o,
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("every variant with the settings of")
            && stdout.contains("optimizer adam, lr 0.001, batch 64")
            && stdout.contains("reset floor"),
        "{stdout}"
    );
    // The fresh DST step under the run's reset too (it took the paper's: fewer dispatches than
    // the checkpoint's step, whose ratio then counted the floor's passes against its sparsity).
    let dispatches = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split("(batch 64, ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{label}: {stdout}"))
    };
    assert_eq!(
        dispatches("lenet300 DST  "),
        dispatches("lenet300 DST from checkpoint (")
    );
    // fc1 takes the input-sparse products: that variant is timed; one round is said to be one.
    assert!(
        stdout.contains("with input-sparse products)")
            && !stdout.contains("not timed")
            && stdout.contains("[one round: no spread to judge it by; --rounds 4 or more"),
        "{stdout}"
    );
    // Labelled with the checkpoint's keep ratio, as eval gives it (it was the ratio after the
    // warm-up steps, which the bench's steps move).
    let label: f64 = stdout
        .split("DST from checkpoint (")
        .nth(1)
        .and_then(|t| t.split(" % kept").next())
        .and_then(|t| t.parse().ok())
        .expect(&stdout);
    let (ok, eval, err) = dst(&["eval", "--checkpoint", o]);
    assert!(ok, "{err}");
    // The checkpoint it scores: the run's one epoch of one, at its last step (4 of 64 images).
    assert!(
        err.contains("checkpoint: lenet300 DST, epoch 1 of 1 (step 4)"),
        "{err}"
    );
    let ratio: f64 = eval
        .split("model keep ratio ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .expect(&eval);
    assert!(
        (label / 100.0 - ratio).abs() < 1e-4,
        "{label} % vs {ratio}: {stdout}"
    );
    std::fs::remove_dir_all(&out).unwrap();
    // A dense run's checkpoint is named as such (it read "masked: false").
    let (ok, _, err) = dst(&[
        "train",
        "--dense",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--out",
        o,
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = dst(&["bench", "--reps", "0", "--steps", "1", "--checkpoint", o]);
    // No --model given: none named as a flag.
    assert!(
        !ok && err.contains(
            "a checkpoint of dense lenet300, but --checkpoint needs a DST checkpoint of lenet300"
        ),
        "{err}"
    );
    let (ok, _, err) = dst(&[
        "bench",
        "--reps",
        "0",
        "--steps",
        "1",
        "--model",
        "lenet300",
        "--checkpoint",
        o,
    ]);
    assert!(
        !ok && err.contains("needs a DST checkpoint of --model lenet300"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// With no adapter at all (here: a back end this OS does not have), commands say so and name
/// the fix, with a non-zero exit and no panic.
#[test]
fn no_adapter_names_the_fix() {
    for args in [&["info"][..], &["train", "--epochs", "1"][..]] {
        let o = without_adapter(Command::new(env!("CARGO_BIN_EXE_dst")).args(args))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("no GPU adapter found") && err.contains("mesa-vulkan-drivers"),
            "{args:?}: {err}"
        );
        // The back ends searched, by name, and the variable that narrowed them.
        assert!(
            err.contains("as WGPU_BACKEND=") && !err.contains("Backends("),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // `info` still lists the models, which need no adapter.
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            out.contains("models (dst train --model M"),
            args[0] == "info",
            "{out}"
        );
    }
}

/// A plain headless machine has no `XDG_RUNTIME_DIR` (and no display): every successful command
/// must print no line starting with `error` (a Vulkan layer that probes for a Wayland display
/// used to make libwayland print `error: XDG_RUNTIME_DIR is invalid ...` on every enumeration).
#[test]
fn headless_commands_print_no_error_lines() {
    let out = nothing_at("headless");
    let runs: [&[&str]; 2] = [
        &["info"],
        &[
            "train",
            "--epochs",
            "1",
            "--limit-train",
            "256",
            "--out",
            out.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let o = Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .env_remove("NODEVICE_SELECT")
            .env_remove("MESA_VK_DEVICE_SELECT")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{args:?}: {stderr}");
        for line in stdout.lines().chain(stderr.lines()) {
            assert!(
                !line.trim_start().to_lowercase().starts_with("error"),
                "{args:?} printed {line:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `dst train --help` and `dst info` name every model; `dst info --model` refuses an unknown one
/// before opening a device.
#[test]
fn help_and_info_list_the_models() {
    let (ok, help, _) = dst(&["train", "--help"]);
    assert!(ok);
    for m in ["lenet300", "lenet5", "lstm-a", "lstm-b"] {
        assert!(help.contains(m), "train --help lacks {m}: {help}");
    }
    // The CIFAR-10 models' defaults and data are described too, not only the MNIST ones'.
    for part in [
        "5e-6 for the CIFAR-10 models",
        "64 for the LeNets and the CIFAR-10 models",
        "0.1 (SGD) for the CIFAR-10 models",
        "or CIFAR-10's six binary batches",
    ] {
        assert!(help.contains(part), "train --help lacks {part:?}: {help}");
    }
    assert!(
        !help.contains("Folder with the four MNIST IDX files"),
        "{help}"
    );
    let (ok, _, err) = dst(&["info", "--model", "vgg99"]);
    assert!(!ok && err.contains("unknown model \"vgg99\""), "{err}");
    let (ok, out, err) = dst(&["info", "--model", "lenet5"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("lstm-b") && out.contains("conv2") && out.contains("[50, 4, 4]"),
        "{out}"
    );
    // A pool that applies the ReLU before it says so (the list seemed to lack those ReLUs).
    assert!(
        out.contains("pool2    -> [50, 4, 4]  (ReLU fused in: max-pool of relu(x))"),
        "{out}"
    );
}

/// Impossible targets, unknown reset policies and a sparse-products ratio outside [0, 1] are
/// refused before any GPU work.
#[test]
fn bad_target_and_reset_flags_are_clear_errors() {
    for (args, want) in [
        (
            &["train", "--target-keep", "0"][..],
            "--target-keep must be a fraction strictly between 0 and 1",
        ),
        (
            &["train", "--target-keep", "1"][..],
            "--target-keep must be a fraction strictly between 0 and 1",
        ),
        (
            &["train", "--target-keep", "-0.2"][..],
            "--target-keep must be a fraction strictly between 0 and 1",
        ),
        (
            &["train", "--target-keep", "0.05", "--dense"][..],
            "--target-keep needs DST",
        ),
        (
            &["train", "--target-epoch", "3"][..],
            "--target-epoch needs --target-keep",
        ),
        (
            &["train", "--target-keep", "0.05", "--target-epoch", "30"][..],
            "--target-epoch must be in 1..=20",
        ),
        (
            &["train", "--reset", "sometimes"][..],
            "--reset must be one of paper, floor, none",
        ),
        (&["train", "--valid", "0"][..], "--valid must be >= 1"),
        (
            &["train", "--sparse-keep", "1.5"][..],
            "--sparse-keep must be a fraction from 0 to 1",
        ),
        (
            &["train", "--sparse-input", "2"][..],
            "--sparse-input must be a fraction from 0 to 1",
        ),
    ] {
        // A back end this OS lacks: a value that got past validation would fail naming that.
        let o = without_adapter(Command::new(env!("CARGO_BIN_EXE_dst")).args(args))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Export-side and sweep flags that make no sense are refused with a message naming them.
#[test]
fn bad_infer_and_sweep_flags_are_clear_errors() {
    let (ok, _, err) = dst(&["infer", "/nonexistent.safetensors", "--batch", "0"]);
    assert!(!ok && err.contains("--batch must be >= 1"), "{err}");
    let (ok, _, err) = dst(&["sweep", "--alpha", "-1", "--out", "/tmp/dst-never-written"]);
    assert!(
        !ok && err.contains("--alpha values must be finite and positive"),
        "{err}"
    );
    let (ok, _, err) = dst(&["sweep", "--alpha", "inf", "--out", "/tmp/dst-never-written"]);
    assert!(
        !ok && err.contains("must be finite and positive (a log axis shows them), got inf"),
        "{err}"
    );
    assert!(!std::path::Path::new("/tmp/dst-never-written").exists());
    // Refused as `train` refuses them (once sweep ran Adam and ignored the momentum).
    let (ok, _, err) = dst(&[
        "sweep",
        "--alpha",
        "1e-3",
        "--optimizer",
        "adam",
        "--momentum",
        "0.5",
        "--out",
        "/tmp/dst-never-written",
    ]);
    assert!(!ok && err.contains("--momentum is SGD's"), "{err}");
    assert!(!std::path::Path::new("/tmp/dst-never-written").exists());
    let (ok, _, err) = dst(&["bench-infer", "/nonexistent.safetensors", "--samples", "0"]);
    assert!(!ok && err.contains("--samples must be >= 1"), "{err}");
}

/// `dst info --model M --batch B` reports the GPU memory of training M at batch B (parameters
/// with optimiser state, activations, data) and refuses, naming the buffer and --batch, a batch
/// whose activations cannot fit one buffer of the adapter; the training command refuses it the
/// same way before any step.
#[test]
fn info_reports_memory_and_refuses_a_batch_that_cannot_fit() {
    let (ok, out, err) = dst(&["info", "--model", "lenet300", "--batch", "64"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("GPU memory of lenet300 (DST) at batch 64"),
        "{out}"
    );
    // 266,610 weights and biases + 410 thresholds; params, grads, momentum: 3 x 4 bytes each.
    assert!(
        out.contains("parameters      267020 (thresholds included)"),
        "{out}"
    );
    assert!(out.contains("3.06 MiB"), "{out}");
    for part in [
        "per evaluation batch of 500",
        // The data line names what it counts: full MNIST, not the embedded default.
        "data            791 bytes per resident image: 52.80 MiB for full MNIST's 70000 images \
         (the embedded subset: 12000)",
        "total",
        "largest single buffer",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
    // The largest buffer is named: "largest single buffer 1.79 MiB (fc1.list_idx; this ...".
    let named = out
        .split("largest single buffer ")
        .nth(1)
        .and_then(|r| r.split_once(" MiB ("))
        .and_then(|(_, r)| r.split_once("; this adapter allows"))
        .map(|(name, _)| name.to_string());
    assert!(
        named
            .as_deref()
            .is_some_and(|n| !n.is_empty() && !n.contains(' ')),
        "{out}"
    );
    // Evaluation batches are the program's choice: where 500 images of WRN-16-8 cannot fit one
    // buffer (lavapipe binds at most 128 MiB), fewer are taken instead of failing.
    let (ok, out, err) = dst(&["info", "--model", "wrn-16-8", "--batch", "2"]);
    assert!(ok, "{err}");
    let limit_mib: f64 = out
        .split("this adapter allows ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no limit in {out}"));
    let eval_batch: usize = out
        .split("per evaluation batch of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no evaluation batch in {out}"));
    if limit_mib <= 256.0 {
        assert!(eval_batch < 500, "{out}");
    }
    assert!(eval_batch >= 1);
    // A batch no run could take: refused before anything is printed.
    let (ok, out, err) = dst(&["info", "--model", "lenet300", "--batch", "0"]);
    assert!(
        !ok && err.contains("--batch must be in 1..=65535, got 0"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    let (ok, _, err) = dst(&["info", "--model", "lenet5", "--batch", "65535"]);
    assert!(!ok);
    assert!(
        err.contains("the activation train.")
            && err.contains("[65535, ")
            && err.contains("use a smaller --batch")
            && err.contains("in one buffer, the adapter allows"),
        "{err}"
    );
    let dir = std::env::temp_dir().join("dst-cli-too-big");
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, _, err) = dst(&[
        "train",
        "--model",
        "lenet5",
        "--batch",
        "65535",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("use a smaller --batch"), "{err}");
    assert!(!dir.join("checkpoint.safetensors").exists());
}

/// `dst info --model M --dense` counts and describes the dense model (no thresholds, no masks).
#[test]
fn info_dense_counts_the_dense_parameters() {
    let (ok, out, err) = dst(&["info", "--model", "lenet300", "--dense"]);
    assert!(ok, "{err}");
    // 266,610 weights and biases; no thresholds.
    assert!(
        out.contains("lenet300: input [784], 266610 parameters in dense training"),
        "{out}"
    );
    assert!(
        !out.contains("in DST") && !out.contains("masked weights)"),
        "{out}"
    );
    assert!(out.contains("GPU memory of lenet300 (dense)"), "{out}");
}

#[test]
fn bad_lr_steps_are_clear_errors() {
    let (ok, _, err) = dst(&["train", "--lr-steps", "5,3"]);
    assert!(!ok);
    assert!(
        err.contains("--lr-steps must be increasing epochs"),
        "{err}"
    );
    // A model whose default settings have steps takes --lr-gamma: the run gets past it (and
    // stops at the missing CIFAR-10 folder).
    let (ok, _, err) = dst(&["train", "--model", "vgg16", "--lr-gamma", "0.5"]);
    assert!(!ok);
    assert!(
        !err.contains("--lr-gamma") && err.contains("not embedded"),
        "{err}"
    );
    let (ok, _, err) = dst(&["info", "--batch", "64"]);
    assert!(!ok, "--batch without --model");
    assert!(err.contains("--model"), "{err}");
    // Steps past the run's end: a warning naming the flag when given, a note naming the model's
    // own steps otherwise, only those it will not reach (here the runs then stop where they
    // would open the adapter: there is none to be had).
    let (ok, _, err) = dst_without_adapter(&[
        "train",
        "--model",
        "lenet5",
        "--lr-steps",
        "5",
        "--epochs",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("warning: --lr-steps 5: the learning rate changes after epoch 5"),
        "{err}"
    );
    let cifar = empty_folder("lr-note");
    for f in dst::data::cifar::FILES {
        std::fs::write(cifar.join(f), vec![1u8; dst::data::cifar::RECORD]).unwrap();
    }
    let c = cifar.to_str().unwrap();
    let (ok, _, err) =
        dst_without_adapter(&["train", "--model", "vgg16", "--data", c, "--epochs", "1"]);
    assert!(!ok);
    assert!(
        err.contains(
            "note: vgg16's learning-rate steps after epochs 80, 120 lie past this run's end at \
             epoch 1"
        ) && !err.contains("--lr-steps 80"),
        "{err}"
    );
    let (ok, _, err) =
        dst_without_adapter(&["train", "--model", "vgg16", "--data", c, "--epochs", "100"]);
    assert!(!ok);
    assert!(
        err.contains("note: vgg16's learning-rate step after epoch 120 lies past this run's end"),
        "{err}"
    );
    // A truncated or empty batch file, or one with a label that is no class, is named before
    // the adapter opens, as a missing one is.
    let batch3 = cifar.join("data_batch_3.bin");
    let mut bad_label = vec![1u8; 3 * dst::data::cifar::RECORD];
    bad_label[2 * dst::data::cifar::RECORD] = 12;
    for (bytes, want) in [
        (
            vec![1u8; dst::data::cifar::RECORD + 7],
            "is not a whole number of 3073-byte records",
        ),
        (vec![], "holds no samples"),
        (bad_label, "record 2"),
    ] {
        std::fs::write(&batch3, bytes).unwrap();
        let (ok, _, err) = dst(&["train", "--model", "vgg16", "--data", c, "--epochs", "1"]);
        assert!(
            !ok && err.contains("data_batch_3.bin")
                && err.contains(want)
                && !err.contains("adapter:"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&cifar).unwrap();
}

#[test]
fn bench_profiles_the_dense_and_the_dst_step_per_layer() {
    let (ok, out, err) = dst(&[
        "bench",
        "--reps",
        "0",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--profile",
    ]);
    assert!(ok, "{err}");
    for want in [
        "lenet300 dense",
        "lenet300 DST / dense step time:",
        "A: \"dense\", B: \"DST\"",
        "in rows both have (per row the smaller time):",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // One row per (layer, kernel), whatever the adapter's kernel variants: the batch gather in
    // both steps, fc1's mask pass in the DST step only (on CPU adapters, where fc1's forward
    // skips the input's zeros, the pass that only counts).
    let row = |layer: &str, kernels: &[&str]| {
        out.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(layer)
                    && w.next()
                        .is_some_and(|k| kernels.iter().any(|p| k.starts_with(p)))
            })
            .unwrap_or_else(|| panic!("no row {layer} {kernels:?}* in:\n{out}"))
            .to_string()
    };
    let cells = |l: &str| l.matches(" x ").count();
    assert_eq!(cells(&row("step", &["data.gather"])), 2);
    let mask = row("fc1", &["masked.mask_forward", "masked.mask_count"]);
    assert!(cells(&mask) == 1 && mask.contains(" - "), "{mask}");
    // DST's own rows summed by kernel family: its mask passes among them.
    let own = out
        .lines()
        .find(|l| l.starts_with("  in rows only B has, by kernel family: "))
        .unwrap_or_else(|| panic!("no line of B's own rows in:\n{out}"));
    assert!(
        own.contains("masked ") && own.contains(" dispatches)"),
        "{own}"
    );
}

/// A variant whose products no layer of the model takes (LSTM-a has no linear layer large
/// enough for the input-sparse products) has the dispatches of another: said so and not timed,
/// and the ratios leave it out (it was timed as if it were another step, adding only noise).
#[test]
fn bench_leaves_out_a_variant_no_layer_takes() {
    let out = nothing_at("bench-twin");
    let o = out.to_str().unwrap();
    let (ok, _, err) = dst(&[
        "train",
        "--model",
        "lstm-a",
        "--epochs",
        "1",
        "--limit-train",
        "100",
        "--out",
        o,
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = dst(&[
        "bench",
        "--reps",
        "0",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--model",
        "lstm-a",
        "--checkpoint",
        o,
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains(
            "lstm-a DST from checkpoint, input-sparse products: the same dispatches as \"DST from \
             checkpoint, dense products\" (no layer of this model takes them): not timed"
        ),
        "{stdout}"
    );
    let ratio = stdout
        .lines()
        .find(|l| l.starts_with("lstm-a DST from checkpoint / dense step time: "))
        .unwrap_or_else(|| panic!("no ratio line in:\n{stdout}"));
    assert!(
        ratio.contains("with weight-sparse products") && !ratio.contains("input-sparse"),
        "{ratio}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// From 4 rounds on the step ratios are the median of the rounds' ratios, with their quartiles;
/// every variant lists one time per round.
#[test]
fn bench_rounds_give_median_ratios_with_quartiles() {
    let (ok, out, err) = dst(&["bench", "--reps", "0", "--steps", "1", "--rounds", "4"]);
    assert!(ok, "{err}");
    let rounds = |label: &str| -> Vec<f64> {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("lenet300 {label} ")))
            .unwrap_or_else(|| panic!("no {label} line in:\n{out}"));
        let r = l.split("[rounds: ").nth(1).expect("round times");
        r.trim_end_matches(']')
            .split(", ")
            .map(|t| t.parse().unwrap())
            .collect()
    };
    let (dense, dst) = (rounds("dense"), rounds("DST"));
    assert_eq!((dense.len(), dst.len()), (4, 4), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("lenet300 DST / dense step time: "))
        .unwrap_or_else(|| panic!("no ratio line in:\n{out}"));
    assert!(line.contains(" [median of 4 rounds; quartiles "), "{line}");
    let printed: f64 = line.split_whitespace().nth(6).unwrap().parse().unwrap();
    let mut r: Vec<f64> = dst.iter().zip(&dense).map(|(a, b)| a / b).collect();
    r.sort_by(f64::total_cmp);
    let want = 0.5 * (r[1] + r[2]);
    // The printed times carry 3 decimals.
    assert!(
        (printed - want).abs() < 2e-3 * want.max(1.0),
        "{printed} vs {want}: {out}"
    );
}

/// The kernel tables (one repetition): every conv shape has its rows for each form (the CPU
/// kernels, both GPU tile forms, the patch-matrix and split GPU forms), every GEMM its four
/// forms, each GPU product marks exactly one form as the one a GPU's layer takes, and the legend
/// says so. On a CPU adapter the GPU forms are built but not timed (`-`) without --gpu-forms.
#[test]
fn bench_tables_list_every_gpu_form() {
    let (ok, out, err) = dst(&["bench", "--reps", "1", "--steps", "0"]);
    assert!(ok, "{err}");
    let cpu = out.lines().next().unwrap_or("").contains("Cpu, driver");
    assert!(
        out.contains("(*: the form a GPU's layer of the shape takes"),
        "{out}"
    );
    // The GEMM table's marks explained under it, before the conv table (its legend came only
    // after that one).
    let gemm_legend = out
        .find("(*: the tiled form a GPU's product of the shape takes")
        .expect(&out);
    assert!(
        gemm_legend < out.find("fc1 products (us)").expect(&out),
        "{out}"
    );
    assert_eq!(
        out.contains("(-: a GPU form, not timed on a CPU adapter"),
        cpu,
        "{out}"
    );
    // A timed cell starts with a digit; an untimed GPU form's is `-` (CPU adapters only).
    let timed = |cell: &str, gpu_form: bool| {
        cell.starts_with(|c: char| c.is_ascii_digit()) || (cpu && gpu_form && cell.starts_with('-'))
    };
    for shape in [
        "LeNet-5 conv1 b64 1->20 28x28 k5",
        "LeNet-5 conv2 b64 20->50 12x12 k5",
        "VGG-like b64 64->64 16x16 k3 p1",
    ] {
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(shape)).collect();
        for form in [
            "RegBlock",
            "Tiled 16x16",
            "Tiled 16x16 (patch | split)",
            "Tiled 2x2",
            "Tiled 2x2 (patch | split)",
        ] {
            let label = format!("{shape} {form} ");
            assert!(
                rows.iter().any(|l| l.starts_with(&label)
                    && timed(l[label.len()..].trim_start(), form != "RegBlock")),
                "no row {label:?} in:\n{out}"
            );
        }
        // Forward, input gradient, weight gradient: one `*` each among the GPU rows.
        let marks: usize = rows.iter().map(|l| l.matches(" *").count()).sum();
        assert_eq!(marks, 3, "{shape}: {rows:#?}");
    }
    // The GEMM table: every product in its four forms (regblock, tiled, split k, 2 x 2), one of
    // the three GPU forms marked; LSTM-a's input projection takes the 2 x 2 form.
    assert!(out.contains("tiled split k    tiled 2x2"), "{out}");
    let gemm_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("fc") || l.starts_with("lstm2 "))
        .filter(|l| l.contains(" . "))
        .collect();
    assert_eq!(gemm_rows.len(), 12, "{out}");
    for row in &gemm_rows {
        let (_, values) = row.split_at(36);
        let cells: Vec<&str> = values
            .split_whitespace()
            .filter(|v| *v != "*")
            .map(|v| v.trim_end_matches('*'))
            .collect();
        assert_eq!(cells.len(), 4, "{row}");
        let regblock: f64 = cells[0].parse().expect(row);
        assert!(regblock.is_finite() && regblock > 0.0, "{row}");
        for c in &cells[1..] {
            if *c != "-" || !cpu {
                let v: f64 = c.parse().expect(row);
                assert!(v.is_finite() && v > 0.0, "{row}");
            }
        }
        assert_eq!(row.matches('*').count(), 1, "{row}");
    }
    let xproj = gemm_rows
        .iter()
        .find(|l| l.starts_with("lstm2 xproj"))
        .unwrap();
    assert!(xproj.trim_end().ends_with('*'), "{xproj}");
}

/// What a user's files survive: a new run refuses a folder holding other files and a file as
/// `--out`; `--resume` refuses flags it would ignore; `dst export` refuses to write over the
/// checkpoint it reads or any file but an earlier export; damaged or wrong files given as a
/// checkpoint are named as such; a run refused once the adapter is open leaves no folder.
#[test]
fn user_files_are_never_overwritten_and_wrong_files_are_named() {
    let root = empty_folder("guard");
    let p = |name: &str| root.join(name).to_str().unwrap().to_string();

    // A folder with the user's own config.json is not a run folder.
    std::fs::create_dir_all(root.join("mine")).unwrap();
    std::fs::write(root.join("mine/config.json"), b"{\"mine\": true}").unwrap();
    let (ok, _, err) = dst(&[
        "train",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--out",
        &p("mine"),
    ]);
    assert!(
        !ok && err.contains("is not empty") && err.contains("config.json"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("mine/config.json")).unwrap(),
        b"{\"mine\": true}"
    );
    std::fs::write(root.join("afile"), b"text").unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--out", &p("afile")]);
    assert!(!ok && err.contains("is a file, not a folder"), "{err}");
    // Each cause once (no "File exists: File exists").
    assert_eq!(err.matches("afile").count(), 1, "{err}");

    // A short run to work on.
    let (ok, _, err) = dst(&[
        "train",
        "--epochs",
        "1",
        "--limit-train",
        "640",
        "--out",
        &p("run"),
    ]);
    assert!(ok, "{err}");
    let ck = p("run/checkpoint.safetensors");
    let ck_bytes = std::fs::read(&ck).unwrap();

    let (ok, _, err) = dst(&[
        "train",
        "--resume",
        &p("run"),
        "--epochs",
        "3",
        "--lr",
        "0.5",
    ]);
    assert!(
        !ok && err.contains("only --epochs") && err.contains("--lr"),
        "{err}"
    );
    assert!(
        !err.contains("--epochs,") && !err.contains("--resume,"),
        "{err}"
    );

    let (ok, _, err) = dst(&["export", &ck, "--out", &ck]);
    assert!(!ok && err.contains("would destroy it"), "{err}");
    let (ok, _, err) = dst(&["export", &ck, "--out", &p("afile")]);
    assert!(!ok && err.contains("not a dst export"), "{err}");
    assert_eq!(std::fs::read(root.join("afile")).unwrap(), b"text");
    let (ok, _, err) = dst(&["export", &ck, "--out", &p("run")]);
    assert!(!ok && err.contains("is a folder"), "{err}");
    let (ok, _, err) = dst(&["export", &ck, "--out", &p("m.safetensors")]);
    assert!(ok, "{err}");
    // An earlier export is replaced.
    let (ok, stdout, err) = dst(&[
        "export",
        &ck,
        "--out",
        &p("m.safetensors"),
        "--format",
        "dense",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("about the same size"), "{stdout}");
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        ck_bytes,
        "the checkpoint is untouched"
    );

    let (ok, _, err) = dst(&["eval", "--checkpoint", &p("m.safetensors")]);
    assert!(!ok && err.contains("`dst export` file"), "{err}");
    let (ok, _, err) = dst(&["eval", "--checkpoint", &p("afile")]);
    assert!(!ok && err.contains("not a valid safetensors file"), "{err}");

    // A NaN written into a copy of the checkpoint: refused, naming the tensor.
    let mut bytes = ck_bytes.clone();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = 8 + n + header["fc2.bias"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(root.join("nan.safetensors"), &bytes).unwrap();
    for cmd in [
        vec!["eval", "--checkpoint", &p("nan.safetensors")][..].to_vec(),
        vec!["export", &p("nan.safetensors"), "--out", &p("nan-export")],
    ] {
        let (ok, _, err) = dst(&cmd);
        assert!(
            !ok && err.contains("fc2.bias") && err.contains("non-finite"),
            "{cmd:?}: {err}"
        );
        // Refused from the file alone, before an adapter is opened.
        assert!(!err.contains("adapter:"), "{cmd:?}: {err}");
    }

    // A missing data folder is refused before the adapter opens.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["train", "--epochs", "1", "--data", "no-such-folder"])
        .current_dir(&root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no such folder") && !err.contains("adapter:"),
        "{err}"
    );
    assert!(!root.join("runs").exists(), "{err}");
    // A validation split as large as the training set: refused before the adapter opens, from
    // the images' count (it was after).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["train", "--epochs", "1", "--valid", "99999"])
        .current_dir(&root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && !err.contains("adapter:")
            && err
                .contains("--valid 99999 leaves no training images (the training set holds 10000)"),
        "{err}"
    );
    assert!(!root.join("runs").exists(), "{err}");
    // Refused after the adapter is open (a training-image file cut short, which only reading it
    // finds): the default run folder it claimed is gone again, and so is the `runs` folder it
    // made for it.
    let cut = root.join("cut-mnist");
    std::fs::create_dir_all(&cut).unwrap();
    let subset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-subset");
    for f in std::fs::read_dir(&subset).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        let keep = if f.file_name() == "train-images-idx3-ubyte.gz" {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        std::fs::write(cut.join(f.file_name()), &bytes[..keep]).unwrap();
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["train", "--epochs", "1", "--data", "cut-mnist"])
        .current_dir(&root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("adapter:")
            && err.contains("train-images-idx3-ubyte.gz"),
        "{err}"
    );
    assert!(!root.join("runs").exists(), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The epochs and step lines of a run's metrics.jsonl.
fn logged(dir: &std::path::Path) -> (Vec<u64>, Vec<u64>) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let (mut epochs, mut steps) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        match v["kind"].as_str() {
            Some("epoch") => epochs.push(v["epoch"].as_u64().unwrap()),
            _ => steps.push(v["step"].as_u64().unwrap()),
        }
    }
    (epochs, steps)
}

/// The binary, to be sent Ctrl-C or SIGTERM: both at their default action in it whatever this
/// test process inherited (a suite started in the background of a script ignores SIGINT, and
/// dst keeps a signal ignored that it was started ignoring).
#[cfg(unix)]
fn interruptible() -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dst"));
    // SAFETY: signal(2) is async-signal-safe, as pre_exec asks.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// Ctrl-C (SIGINT) to the process `pid`.
#[cfg(unix)]
fn sigint(pid: u32) {
    send("INT", pid);
}

/// `dst ARGS --out RUN` stopped by Ctrl-C as soon as RUN holds `wait_for`: its stderr, once it
/// exited with status 130.
#[cfg(unix)]
fn stopped_by_ctrl_c(run: &std::path::Path, args: &[&str], wait_for: &str) -> String {
    let child = interruptible()
        .args(args)
        .arg("--out")
        .arg(run)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join(wait_for).exists() {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no {wait_for} after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    sigint(child.id());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(130), "{err}");
    err
}

/// `dst train --epochs 200 --limit-train 640 EXTRA --out RUN` stopped by Ctrl-C as soon as its
/// first checkpoint is there: its stderr, once it exited with status 130.
#[cfg(unix)]
fn train_interrupted_after_first_checkpoint(run: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "--epochs", "200", "--limit-train", "640"];
    args.extend(extra);
    stopped_by_ctrl_c(run, &args, "checkpoint.safetensors")
}

/// Ctrl-C in a run's last epoch with no log point before its end: the run finishes (summary
/// written), says so, and exits with status 130 (it said "stopping at the next log point" and
/// exited 0, so a script's loop went on).
#[cfg(unix)]
#[test]
fn ctrl_c_in_the_last_epoch_finishes_with_status_130() {
    let run = nothing_at("int-last");
    // config.json is written just before the first step.
    let args = ["train", "--epochs", "1", "--log-every", "100000"];
    let err = stopped_by_ctrl_c(&run, &args, "config.json");
    assert!(
        err.contains(
            "interrupt: Ctrl-C came with no log point left to stop at: the command finished"
        ) && run.join("summary.json").is_file(),
        "{err}"
    );
    std::fs::remove_dir_all(&run).unwrap();
}

/// Ctrl-C stops a run at its next log point with status 130 and says how to go on; the resumed
/// run logs every step and epoch once. A run stopped before its first checkpoint starts over on
/// --resume; one stopped between its last checkpoint and its summary gets its summary.
#[cfg(unix)]
#[test]
fn interrupted_runs_resume_cleanly() {
    let root = empty_folder("int");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let err = train_interrupted_after_first_checkpoint(&run, &["--log-every", "2"]);
    assert!(
        err.contains("interrupted at epoch") && err.contains("--resume"),
        "{err}"
    );
    let saved: u64 = err
        .split("checkpoint of epoch ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|t| t.parse().ok())
        .expect(&err);
    let (_, steps) = logged(&run);
    // The run went on past its checkpoint: lines the resume must not repeat.
    assert!(*steps.last().unwrap() > saved * 10, "{steps:?}");
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", &(saved + 1).to_string()]);
    assert!(ok, "{err}");
    let (epochs, steps) = logged(&run);
    assert_eq!(epochs, (1..=saved + 1).collect::<Vec<_>>());
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(*steps.last().unwrap(), (saved + 1) * 10);

    // Complete but no summary: --resume writes it.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", &(saved + 1).to_string()]);
    assert!(ok && err.contains("no summary"), "{err}");
    assert!(run.join("summary.json").is_file());
    // A damaged summary (cut short): said so, rewritten, and the charts drawn (they read the
    // damaged file and were left out with a warning).
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    std::fs::write(run.join("summary.json"), &summary[..summary.len() / 2]).unwrap();
    for c in ["keep_per_layer.png", "accuracy_remaining.png"] {
        std::fs::remove_file(run.join(c)).unwrap();
    }
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", &(saved + 1).to_string()]);
    assert!(
        ok && err.contains("its summary.json is damaged") && !err.contains("warning"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("summary.json")).unwrap(),
        summary
    );
    for c in ["keep_per_layer.png", "accuracy_remaining.png"] {
        assert!(run.join(c).is_file(), "{c}");
    }
    // Finished: refused as the run's state (not as an invalid configuration), and with no
    // "training ..." header announcing a run that does not start.
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", &(saved + 1).to_string()]);
    assert!(!ok && err.contains("already holds"), "{err}");
    // ... before the adapter opens.
    assert!(
        !err.contains("training DST")
            && !err.contains("invalid configuration")
            && !err.contains("adapter:"),
        "{err}"
    );

    // A checkpoint gone from a run that logged epochs: refused, its results left as they are
    // (once it was retrained from scratch over them).
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "1"]);
    assert!(
        !ok && err.contains("a finished run (summary.json)") && err.contains("is missing"),
        "{err}"
    );
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "1"]);
    assert!(!ok && err.contains("epochs in metrics.jsonl"), "{err}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);

    // No checkpoint yet (stopped in its first epoch: only step lines): --resume starts it
    // over, its old lines gone.
    let text = String::from_utf8(before).unwrap();
    let first_epoch: String = text
        .lines()
        .take_while(|l| !l.contains("\"kind\":\"epoch\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!first_epoch.is_empty() && first_epoch.len() < text.len());
    std::fs::write(run.join("metrics.jsonl"), first_epoch).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "1"]);
    assert!(ok && err.contains("training it from the start"), "{err}");
    // The header first, then what the run found.
    let header = err.find("training DST").expect(&err);
    assert!(
        header < err.find("training it from the start").unwrap(),
        "{err}"
    );
    assert_eq!(logged(&run).0, vec![1]);

    // One flipped bit in a tensor: refused by its SHA-256.
    let ck = run.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = 8 + n + header["fc1.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at + 3] ^= 0x10;
    let bad = root.join("flipped.safetensors");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, _, err) = dst(&["eval", "--checkpoint", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("SHA-256"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Ctrl-C while an epoch has no log point left but its end (10 steps, --log-every 100) or while
/// it is evaluated: the epoch is evaluated and saved, and the run stops at that checkpoint (it
/// once trained the epoch to its end and threw it away, keeping the one before).
#[cfg(unix)]
#[test]
fn ctrl_c_keeps_the_epoch_it_interrupts() {
    let root = empty_folder("int-epoch");
    let run = root.join("run");
    let err = train_interrupted_after_first_checkpoint(&run, &[]);
    let at: u64 = err
        .split("interrupted at epoch ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect(&err);
    assert!(
        err.contains(&format!("keeps the checkpoint of epoch {at}:")),
        "{err}"
    );
    let ck = dst::checkpoint::Checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.meta("epoch"), Some(at.to_string().as_str()));
    let (epochs, _) = logged(&run);
    assert_eq!(*epochs.last().unwrap(), at, "the epoch is logged");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A targeted run resumed for another length names the target epoch it keeps steering by (the
/// default of the length it started with), and one resumed to end before its target epoch goes
/// on with a note (it was once refused, naming a --target-epoch the command did not give). The
/// header gives the target as a clean percentage and names a weight decay.
#[cfg(unix)]
#[test]
fn a_targeted_run_resumed_for_another_length_names_its_target_epoch() {
    let root = empty_folder("tk-resume");
    let run = root.join("a");
    let r = run.to_str().unwrap();
    let (ok, _, err) = dst(&[
        "train",
        "--epochs",
        "3",
        "--limit-train",
        "640",
        "--target-keep",
        "0.07",
        "--weight-decay",
        "0.0001",
        "--out",
        r,
    ]);
    assert!(ok, "{err}");
    // 60 % of 3 epochs: epoch 2; 0.07 is "7", not 7.000000000000001.
    assert!(
        err.contains("steered to keep 7% by epoch 2,") && err.contains("weight decay 0.0001"),
        "{err}"
    );
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "5"]);
    // Still epoch 2 (5 epochs' default would be 3): the path the controller keeps.
    assert!(
        ok && err.contains("steered to keep 7% by epoch 2,"),
        "{err}"
    );
    assert!(!err.contains("before its target epoch"), "{err}");
    // It goes on from the alpha of its checkpoint, and says so.
    assert!(
        err.contains("at this checkpoint: the controller goes on from there"),
        "{err}"
    );
    // bench steps from the checkpoint with the alpha the run had reached, not its start.
    let meta = dst::checkpoint::Checkpoint::read_metadata(&run).unwrap();
    let alpha: f64 = meta["alpha"].parse().unwrap();
    assert_ne!(alpha, 5e-4);
    let (ok, stdout, err) = dst(&[
        "bench",
        "--reps",
        "0",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--checkpoint",
        r,
    ]);
    assert!(
        ok && stdout.contains(&format!("alpha {alpha:.3e}, reset paper\n")),
        "{stdout}{err}"
    );

    // Two epochs of 10 steps cannot bring it to 10 %: the run ends with a warning saying so.
    let (ok, _, err) = dst(&[
        "train",
        "--epochs",
        "2",
        "--limit-train",
        "640",
        "--target-keep",
        "0.1",
        "--out",
        root.join("short").to_str().unwrap(),
    ]);
    assert!(
        ok && err.contains("well above its target 10%") && err.contains("20 steps"),
        "{err}"
    );

    let b = root.join("b");
    let err = train_interrupted_after_first_checkpoint(
        &b,
        &["--target-keep", "0.07", "--target-epoch", "150"],
    );
    let saved: u64 = err
        .split("checkpoint of epoch ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|t| t.parse().ok())
        .expect(&err);
    let end = (saved + 1).to_string();
    let (ok, _, err) = dst(&["train", "--resume", b.to_str().unwrap(), "--epochs", &end]);
    assert!(
        ok && err.contains(&format!(
            "steers to keep 7% by epoch 150 and now ends at epoch {end}"
        )),
        "{err}"
    );

    // A target below what the dead-layer policy lets the model keep: noted (LeNet-300-100's
    // floor: one weight per row, 410 of 266,200), not under --reset none.
    for (reset, note) in [
        ("floor", Some("about 0.15%")),
        ("paper", Some("about 1%")),
        ("none", None),
    ] {
        let out = root.join(format!("low-{reset}"));
        let (ok, _, err) = dst(&[
            "train",
            "--epochs",
            "1",
            "--limit-train",
            "128",
            "--target-keep",
            "0.0001",
            "--reset",
            reset,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        match note {
            Some(n) => assert!(
                err.contains("--target-keep 0.01% is below what") && err.contains(n),
                "{reset}: {err}"
            ),
            None => assert!(!err.contains("is below what"), "{reset}: {err}"),
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A metrics.jsonl whose last line is damaged (a crash mid-write): plot and report leave it out
/// with a warning naming it (they once dropped it silently).
#[test]
fn plot_and_report_name_a_damaged_last_metrics_line() {
    let root = empty_folder("torn");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--limit-train", "128", "--out", r]);
    assert!(ok, "{err}");
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    let n = text.lines().count() + 1;
    text.push_str("{\"kind\": \"epo\n");
    std::fs::write(&metrics, text).unwrap();
    let want = format!(
        "{}: line {n}, the last, is cut short or damaged",
        metrics.display()
    );
    let plots = root.join("plots");
    for args in [
        vec!["plot", r, "--out", plots.to_str().unwrap()],
        vec!["report", r],
    ] {
        let (ok, _, err) = dst(&args);
        assert!(ok && err.contains(&want), "{args:?}: {err}");
    }
    // A damaged line amid the log: named and left out, the run read (it was left out whole).
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, format!("garbage\n{text}")).unwrap();
    let (ok, out, err) = dst(&["report", r]);
    assert!(
        ok && err.contains("line 1 is not a log line (damaged or edited): left out")
            && !err.contains("run left out")
            && out.contains("| done: last epoch"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `dst bench` refuses what it would silently ignore: a step-time flag with --steps 0, and a
/// model given twice (it was timed twice).
#[test]
fn bench_refuses_flags_it_would_ignore() {
    for (args, want) in [
        (
            &["bench", "--reps", "1", "--steps", "0", "--profile"][..],
            "--profile is for the step times, which --steps 0 leaves out",
        ),
        (
            &["bench", "--reps", "1", "--steps", "0", "--checkpoint", "x"][..],
            "--checkpoint is for the step times",
        ),
        (
            &["bench", "--reps", "1", "--steps", "0", "--data", "x"][..],
            "--data is for the step times",
        ),
        (
            &["bench", "--model", "lenet300", "--model", "lenet300"][..],
            "--model lenet300 is given twice",
        ),
    ] {
        let (ok, _, err) = dst(args);
        assert!(
            !ok && err.contains(want) && !err.contains("adapter:"),
            "{args:?}: {err}"
        );
    }
}

/// `dst` with a deadline: (success, stderr), or a failure naming the command that hung.
#[cfg(unix)]
fn dst_within(args: &[&str], secs: u64) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() >= secs {
            let _ = child.kill();
            panic!("dst {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Pipes: an --out file that is a pipe is refused at once (infer, export, report: reading it to
/// see whose file it is once waited forever), and `dst eval` takes a checkpoint through a pipe (it reads it once).
#[cfg(unix)]
#[test]
fn pipes_as_out_are_refused_and_eval_reads_a_piped_checkpoint() {
    let root = empty_folder("pipes");
    let p = |n: &str| root.join(n).to_str().unwrap().to_string();
    let (ok, _, err) = dst(&[
        "train",
        "--epochs",
        "1",
        "--limit-train",
        "128",
        "--out",
        &p("run"),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = dst(&["export", &p("run"), "--out", &p("e.safetensors")]);
    assert!(ok, "{err}");
    let fifo = p("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for args in [
        vec!["infer", &p("e.safetensors"), "--out", &fifo],
        vec!["export", &p("run"), "--out", &fifo],
        vec!["report", &p("run"), "--out", &fifo],
    ] {
        let (ok, err) = dst_within(&args, 60);
        assert!(
            !ok && err.contains("is not a regular file"),
            "{args:?}: {err}"
        );
    }
    // masks draws into a checkpoint's run folder: a pipe has none.
    let (ok, err) = dst_within(&["masks", &fifo], 60);
    assert!(!ok && err.contains("give --out"), "{err}");
    // A writer on the other end, as `<(cat checkpoint)` would be.
    let bytes = std::fs::read(root.join("run/checkpoint.safetensors")).unwrap();
    let f = fifo.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|mut w| w.write_all(&bytes));
    });
    let (ok, err) = dst_within(&["eval", "--checkpoint", &fifo], 120);
    if !ok {
        // Never opened: a reader here releases the writer.
        drop(std::fs::File::open(&fifo));
    }
    writer.join().unwrap();
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// --sparse-input applies to a dense run's first layer (its input's zeros): taken, not refused.
#[test]
fn a_dense_run_takes_sparse_input() {
    let root = empty_folder("dense-si");
    let plan = |si: Option<&str>| {
        let out = root.join(si.unwrap_or("default"));
        let mut args = vec!["train", "--dense", "--epochs", "1", "--limit-train", "128"];
        if let Some(si) = si {
            args.extend(["--sparse-input", si]);
        }
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, _, err) = dst(&args);
        // No alpha named for a model without masks.
        assert!(
            ok && err.contains("training dense lenet300 (no masks, "),
            "{err}"
        );
        let config = read_json(out.join("config.json"));
        assert_eq!(
            config["sparse_input"].as_f64(),
            si.map(|s| s.parse().unwrap())
        );
        let n: usize = err
            .split("plans of ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .expect(&err);
        (n, err.contains(", Cpu,"))
    };
    let (never, cpu) = plan(Some("0"));
    let (default, _) = plan(None);
    // On CPU adapters the default takes the first layer from the input's nonzeros (W^T written
    // at every step): another plan than --sparse-input 0's. GPUs default to 0.
    if cpu {
        assert_ne!(never, default);
    } else {
        assert_eq!(never, default);
    }
    // Nor thresholds: eval's table shows none (not 0.0000).
    let (ok, stdout, err) = dst(&[
        "eval",
        "--checkpoint",
        root.join("default").to_str().unwrap(),
    ]);
    let fc1 = stdout
        .lines()
        .find(|l| l.starts_with("fc1 "))
        .unwrap_or_default();
    assert!(
        ok && fc1.ends_with(" -") && !fc1.contains("0.0000"),
        "{stdout}{err}"
    );
    // And its summary.json gives them as null, not 0.0.
    let summary = read_json(root.join("default").join("summary.json"));
    let layer = &summary["last"]["layers"][0];
    assert!(
        layer["threshold_mean"].is_null() && layer["threshold_max"].is_null(),
        "{layer}"
    );
    // A dense run has no masks to draw: said naming its checkpoint.
    let ck = root.join("default").join("checkpoint.safetensors");
    // A checkpoint that is not there is said so (it read "not a checkpoint file in a run
    // folder ... give --out").
    let missing = root.join("missing.safetensors");
    let (ok, _, err) = dst(&["masks", missing.to_str().unwrap()]);
    assert!(
        !ok && err.contains("missing.safetensors: ") && !err.contains("--out"),
        "{err}"
    );
    let (ok, _, err) = dst(&["masks", root.join("default").to_str().unwrap()]);
    assert!(
        !ok && err.contains(&ck.display().to_string()) && err.contains("no masks to draw"),
        "{err}"
    );
    // Its csr export stores every tensor dense: `dst infer` names it a dense run's export.
    let file = root.join("dense.safetensors");
    let (ok, _, err) = dst(&[
        "export",
        ck.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = dst(&["infer", file.to_str().unwrap()]);
    assert!(
        ok && stdout.contains("(csr export of a dense run)"),
        "{stdout}{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `child` (its stderr piped) sent `signals` Ctrl-Cs 50 ms apart once its stderr has a line
/// starting with `mark`: its exit status and all its stderr.
#[cfg(unix)]
fn ctrl_c_after(
    child: std::process::Child,
    mark: &str,
    signals: usize,
) -> (std::process::ExitStatus, String) {
    signal_after(child, mark, "INT", signals)
}

/// `child` (its stderr piped) sent `count` signals `sig` (`kill -SIG`) 50 ms apart once its
/// stderr has a line starting with `mark`: its exit status and all its stderr.
#[cfg(unix)]
fn signal_after(
    mut child: std::process::Child,
    mark: &str,
    sig: &str,
    count: usize,
) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        err.push_str(&l);
        err.push('\n');
        if l.starts_with(mark) {
            break;
        }
    }
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        send(sig, child.id());
    }
    for l in lines {
        err.push_str(&l.unwrap());
        err.push('\n');
    }
    (child.wait().unwrap(), err)
}

/// A second Ctrl-C stops a run at once (killed by SIGINT, not at a log point), and still says how
/// to go on from what the run folder keeps.
#[cfg(unix)]
#[test]
fn a_second_ctrl_c_stops_at_once_and_says_how_to_go_on() {
    use std::os::unix::process::ExitStatusExt;
    let root = empty_folder("int-twice");
    let run = root.join("run");
    // 1250 steps (the embedded subset's 10,000 images in batches of 8) to the first log point:
    // both signals land well before it, 50 ms apart.
    let child = interruptible()
        .args([
            "train",
            "--epochs",
            "2",
            "--batch",
            "8",
            "--log-every",
            "100000",
        ])
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = ctrl_c_after(child, "ready in", 2);
    // Killed by SIGINT (2), not an exit with status 130 at a log point.
    assert_eq!(status.signal(), Some(2), "{status:?}: {err}");
    assert!(
        err.contains("stopped at once")
            && err.contains(&format!("dst train --resume {}", run.display()))
            // Stopped in its first epoch: no checkpoint yet, and the hint does not claim one.
            && err.contains("or, stopped before its first checkpoint, trains it again from the start")
            && !err.contains("if one was written"),
        "{err}"
    );
    assert!(!err.contains("interrupted at epoch"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A second Ctrl-C in a run of a sweep says to run the sweep's command again (it goes on with
/// every run), before how to resume that run alone.
#[cfg(unix)]
#[test]
fn a_second_ctrl_c_in_a_study_names_its_command() {
    use std::os::unix::process::ExitStatusExt;
    let root = empty_folder("int-study");
    let sweep = root.join("sweep");
    let child = interruptible()
        .args([
            "sweep",
            "--alpha",
            "5e-4",
            "--seeds",
            "1",
            "--no-dense",
            "--epochs",
            "1",
            "--batch",
            "8",
            "--log-every",
            "100000",
        ])
        .arg("--out")
        .arg(&sweep)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = ctrl_c_after(child, "ready in", 2);
    assert_eq!(status.signal(), Some(2), "{status:?}: {err}");
    let run = sweep.join("alpha5e-4-seed1");
    assert!(
        err.contains(&format!(
            "stopped at once: run the study's command again to go on from the runs' last \
             checkpoints (this run alone: `dst train --resume {}`)",
            run.display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A local server whose every answer is a 200 with a 100 MB body it trickles out (1 KB each 20 ms)
/// until the client goes: a download that Ctrl-C has to stop. Its base URL.
#[cfg(unix)]
fn trickling_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while conn.write_all(&[0x1f; 1024]).is_ok() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
        }
    });
    base
}

/// Ctrl-C during `dst fetch` stops the download with status 130 and leaves nothing behind: no
/// target folder, no folder above it that the fetch made, no partial archive (`.NAME.part`).
/// Once the folder was left empty, and CIFAR-10's hidden `.part` folder held the partial archive.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_fetch_and_leaves_nothing() {
    let root = empty_folder("int-fetch");
    let base = trickling_server();
    for (dataset, mark) in [
        ("mnist", "train-images-idx3-ubyte.gz: downloading"),
        ("cifar10", "cifar-10-binary.tar.gz: downloading"),
    ] {
        let to = root.join("made").join(dataset);
        let child = interruptible()
            .args(["fetch", dataset, "--mirror", &base, "--to"])
            .arg(&to)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Well into the body: the download is under way when the signal comes.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (status, err) = ctrl_c_after(child, mark, 1);
        assert_eq!(status.code(), Some(130), "{dataset}: {err}");
        assert!(
            err.contains("stopping the download") && err.contains("stopped by Ctrl-C"),
            "{dataset}: {err}"
        );
        assert!(!err.contains("every mirror failed"), "{dataset}: {err}");
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{dataset} left {left:?}: {err}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Ctrl-C as a sweep's run sets up (before its adapter and data are ready): the run stops at its
/// first log point with the message that says how to go on (the process once died silently).
#[cfg(unix)]
#[test]
fn ctrl_c_while_a_sweeps_run_sets_up_says_how_to_go_on() {
    let root = empty_folder("int-sweep");
    let child = interruptible()
        .args(["sweep", "--alpha", "5e-4", "--no-dense", "--epochs", "50"])
        .args(["--limit-train", "640", "--log-every", "2", "--out"])
        .arg(root.join("sw"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = ctrl_c_after(child, "[1/1]", 1);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A relative --data is recorded as an absolute path, so that the run resumes from any folder
/// with the same data (it once failed there, or read that folder's files).
#[test]
fn a_relative_data_folder_resumes_from_anywhere() {
    let root = empty_folder("rel");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dst_in = |dir: &std::path::Path, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = dst_in(
        here,
        &[
            "train",
            "--data",
            "assets/mnist-subset",
            "--limit-train",
            "128",
            "--epochs",
            "1",
            "--out",
            r,
        ],
    );
    assert!(ok, "{err}");
    let config = read_json(run.join("config.json"));
    assert_eq!(
        config["data"].as_str().map(std::path::PathBuf::from),
        Some(here.join("assets/mnist-subset"))
    );
    let (ok, err) = dst_in(&root, &["train", "--resume", "run", "--epochs", "2"]);
    assert!(ok && err.contains("resuming"), "{err}");

    // Its data moved away: --resume (which takes no --data) says where the run reads it from
    // and how to go on, and changes nothing.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for e in std::fs::read_dir(here.join("assets/mnist-subset")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
    }
    let moved = root.join("moved");
    let (ok, err) = dst_in(
        &root,
        &[
            "train",
            "--data",
            "data",
            "--limit-train",
            "128",
            "--epochs",
            "1",
            "--out",
            "moved",
        ],
    );
    assert!(ok, "{err}");
    std::fs::rename(&data, root.join("data-elsewhere")).unwrap();
    let before = std::fs::read(moved.join("metrics.jsonl")).unwrap();
    let (ok, err) = dst_in(&root, &["train", "--resume", "moved", "--epochs", "2"]);
    assert!(
        !ok && err.contains("config.json records that folder")
            && err.contains("put the files back"),
        "{err}"
    );
    assert_eq!(std::fs::read(moved.join("metrics.jsonl")).unwrap(), before);
    // The advice followed (config.json's "data" set to the new folder): the run goes on with a
    // note on the data, not a warning that its settings changed.
    let mut config = read_json(moved.join("config.json"));
    let elsewhere = std::path::absolute(root.join("data-elsewhere")).unwrap();
    config["data"] = elsewhere.to_str().unwrap().into();
    std::fs::write(moved.join("config.json"), config.to_string()).unwrap();
    let (ok, err) = dst_in(&root, &["train", "--resume", "moved", "--epochs", "2"]);
    assert!(
        ok && err.contains(&format!("reading the data from {}", elsewhere.display()))
            && err.contains("the same files (their SHA-256 matches)")
            && !err.contains("settings that differ")
            && !err.contains("differ from those"),
        "{err}"
    );
    // Other files in that folder (a test label changed, in a raw file that is read before its
    // .gz): the resume says the data differs from what the run trained on.
    let mut labels = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(elsewhere.join("t10k-labels-idx1-ubyte.gz")).unwrap(),
        ),
        &mut labels,
    )
    .unwrap();
    labels[8] = (labels[8] + 1) % 10;
    std::fs::write(elsewhere.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    let (ok, err) = dst_in(&root, &["train", "--resume", "moved", "--epochs", "3"]);
    assert!(
        ok && err.contains(
            "warning: the images and labels read now differ from those the \
             checkpoint's run trained on"
        ),
        "{err}"
    );

    // `--data cw/../data-elsewhere` is recorded as the folder it names, so the run resumes once
    // `cw` is gone (it once recorded ".../cw/../data-elsewhere").
    let cw = root.join("cw");
    std::fs::create_dir_all(&cw).unwrap();
    let (ok, err) = dst_in(
        &cw,
        &[
            "train",
            "--data",
            "../data-elsewhere",
            "--limit-train",
            "128",
            "--epochs",
            "1",
            "--out",
            "../up",
        ],
    );
    assert!(ok, "{err}");
    std::fs::remove_dir(&cw).unwrap();
    let config = read_json(root.join("up/config.json"));
    assert_eq!(
        config["data"].as_str().map(std::path::PathBuf::from),
        Some(elsewhere.canonicalize().unwrap())
    );
    let (ok, err) = dst_in(&root, &["train", "--resume", "up", "--epochs", "2"]);
    assert!(
        ok && err.contains("resuming") && !err.contains("settings that differ"),
        "{err}"
    );
    // A setting edited in config.json (the lr): the resume names it, from the checkpoint's value
    // to the new one, and nothing else.
    let mut config = read_json(root.join("up/config.json"));
    config["lr"] = 0.005.into();
    std::fs::write(root.join("up/config.json"), config.to_string()).unwrap();
    let (ok, err) = dst_in(&root, &["train", "--resume", "up", "--epochs", "3"]);
    assert!(
        ok && err.contains("settings that differ from the checkpoint's (lr 0.01 -> 0.005)"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `dst eval` without --data scores the test set of the folder the run trained on (it scored
/// the embedded subset's, another number than the run's), and says so; where that folder has
/// gone, it warns and scores the embedded subset.
#[test]
fn eval_scores_the_data_the_run_trained_on() {
    let root = empty_folder("eval-data");
    let data = root.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(here.join("assets/mnist-subset")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), data.join(e.file_name())).unwrap();
    }
    let run = root.join("run");
    let (ok, _, err) = dst(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--limit-train",
        "128",
        "--epochs",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // The embedded subset's files, a part of MNIST, are not MNIST's own: the run says so at its
    // start, in its summary, and a report marks the paper's figures beside it.
    assert!(
        err.contains(&format!(
            "note: {}: the files there are not MNIST's (their SHA-256 differ)",
            data.display()
        )),
        "{err}"
    );
    let summary = read_json(run.join("summary.json"));
    assert!(
        summary["data"]
            .as_str()
            .unwrap()
            .contains("not MNIST's own: their SHA-256 differ from MNIST's"),
        "{summary}"
    );
    let (ok, md, err) = dst(&["report", run.to_str().unwrap()]);
    assert!(
        ok && md.contains("(1 epoch, data that is not MNIST's files, first 128 train)"),
        "{md}{err}"
    );
    let (ok, out, err) = dst(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(
        ok && err.contains("which the run trained on")
            && out.contains(&format!(
                "{} (IDX files in MNIST's format, not MNIST's own",
                data.display()
            )),
        "{out}{err}"
    );
    std::fs::rename(&data, root.join("gone")).unwrap();
    // Its folder gone: refused (the embedded subset's score would say nothing of a run on other
    // data, with exit 0), until --data names a copy.
    let (ok, out, err) = dst(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(
        !ok && err.contains(&format!(
            "the run trained on {}, which is not there now: give --data with its test files",
            data.display()
        )) && out.is_empty(),
        "{out}{err}"
    );
    let gone = root.join("gone");
    let (ok, out, err) = dst(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        gone.to_str().unwrap(),
    ]);
    assert!(
        ok && out.contains(&format!(
            "{} (IDX files in MNIST's format, not MNIST's own",
            gone.display()
        )),
        "{out}{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The checkpoint of another run of the same model, copied into a run folder, is refused by
/// `--resume` before anything changes: it was resumed with a warning, and then the folder's log
/// skipped epochs (a checkpoint ahead of it) or lost them (one behind it).
#[test]
fn resume_refuses_another_runs_checkpoint() {
    let root = empty_folder("foreign-ck");
    let train = |name: &str, epochs: &str, seed: &str| {
        let (ok, _, err) = dst(&[
            "train",
            "--limit-train",
            "128",
            "--epochs",
            epochs,
            "--seed",
            seed,
            "--out",
            root.join(name).to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
    };
    train("a", "1", "1");
    train("b", "2", "2");
    for name in ["a", "b"] {
        let ck = root.join(name).join("checkpoint.safetensors");
        std::fs::copy(&ck, root.join(format!("{name}.safetensors"))).unwrap();
    }
    for (into, from) in [("a", "b"), ("b", "a")] {
        let dir = root.join(into);
        std::fs::copy(
            root.join(format!("{from}.safetensors")),
            dir.join("checkpoint.safetensors"),
        )
        .unwrap();
        let before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
        let (ok, _, err) = dst(&["train", "--resume", dir.to_str().unwrap(), "--epochs", "4"]);
        assert!(
            !ok && err.contains("is not the checkpoint of the run that")
                && err.contains("its epoch 1 ended at step 2 ")
                && err.contains("Nothing was changed"),
            "{into}: {err}"
        );
        assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), before);
    }
    // Another model's checkpoint, trained with another optimiser (Adam): the model is named
    // (the refusal once blamed the optimiser in config.json). Eval and export of the folder
    // score and write the checkpoint, and warn that it is not the folder's run.
    let (ok, _, err) = dst(&[
        "train",
        "--model",
        "lstm-a",
        "--limit-train",
        "100",
        "--epochs",
        "1",
        "--out",
        root.join("c").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let a = root.join("a");
    std::fs::copy(
        root.join("c").join("checkpoint.safetensors"),
        a.join("checkpoint.safetensors"),
    )
    .unwrap();
    // With --epochs no more than the foreign checkpoint holds, too (that was refused first as
    // "already holds 1 epoch": the other run's epochs).
    for epochs in ["4", "1"] {
        let (ok, _, err) = dst(&["train", "--resume", a.to_str().unwrap(), "--epochs", epochs]);
        assert!(
            !ok && err.contains("is a checkpoint of lstm-a, and")
                && err.contains("config.json trains lenet300")
                && !err.contains("optimizer")
                && !err.contains("already holds"),
            "--epochs {epochs}: {err}"
        );
    }
    let warning = "is a checkpoint of DST lstm-a, but";
    let (ok, _, err) = dst(&["eval", "--checkpoint", a.to_str().unwrap()]);
    assert!(
        ok && err.contains(warning) && err.contains("of a DST lenet300 run"),
        "{err}"
    );
    let out = root.join("a.csr.safetensors");
    let (ok, _, err) = dst(&[
        "export",
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok && err.contains(warning), "{err}");
    // The run's own checkpoint: no warning.
    let (ok, _, err) = dst(&["eval", "--checkpoint", root.join("c").to_str().unwrap()]);
    assert!(ok && !err.contains("warning"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A value `--resume` cannot run, edited into a run's config.json, is refused naming the file
/// (the message named only the flag, which the user never gave).
#[test]
fn a_bad_value_in_config_json_is_named_there() {
    let root = empty_folder("bad-config");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--limit-train", "64", "--epochs", "1", "--out", r]);
    assert!(ok, "{err}");
    let path = run.join("config.json");
    let mut config = read_json(&path);
    config["alpha"] = (-1.0).into();
    // A key dst does not know (a misspelling) is named too, not silently ignored.
    config["weight_decy"] = 0.1.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "2"]);
    assert!(
        !ok && err.contains(&format!(
            "the settings of {r} (its config.json, with --epochs)"
        )) && err.contains("--alpha must be >= 0, got -1"),
        "{err}"
    );
    assert!(
        err.contains("has a key dst does not know, left out: weight_decy"),
        "{err}"
    );
    // Another optimiser: named as such (it was "tensor optim.second_moment... is missing").
    config["alpha"] = 5e-4.into();
    config["optimizer"] = "adam".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "2"]);
    assert!(
        !ok && err.contains("trained with sgd, and its config.json now says adam"),
        "{err}"
    );
    // A DST run made dense: named as such (it was "checkpoint of model lenet300 (masked true),
    // expected lenet300 (masked false)").
    config["optimizer"] = "sgd".into();
    config["dense"] = true.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", r, "--epochs", "2"]);
    assert!(
        !ok && err.contains(
            "holds a DST run's checkpoint, and its config.json now says \"dense\": true: a run \
             cannot turn dense; set \"dense\" back to false"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A closed stdout ends a command quietly (status 141), not with a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_no_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dst"))
        .arg("info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}

/// `dst train 2>&1 | head`: once its stderr is closed, a run stops at its next log point as a
/// first Ctrl-C stops it (status 141, like other tools at a closed pipe), keeping the checkpoint
/// of its last whole epoch to resume from. It once panicked (status 101) mid-epoch.
#[cfg(unix)]
#[test]
fn a_run_whose_output_is_closed_stops_with_its_checkpoint() {
    use std::io::BufRead;
    let root = empty_folder("closed-stderr");
    let run = root.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["train", "--epochs", "50", "--limit-train", "640"])
        .args(["--log-every", "2", "--out"])
        .arg(&run)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().starts_with("epoch   2 ") {
            break;
        }
    }
    drop(lines);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{status:?}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs = metrics.matches("\"kind\":\"epoch\"").count();
    assert!(
        (2..4).contains(&epochs),
        "{epochs} epochs logged:\n{metrics}"
    );
    assert!(run.join("checkpoint.safetensors").is_file());
    let (ok, _, err) = dst(&["train", "--resume", run.to_str().unwrap(), "--epochs", "4"]);
    assert!(ok && err.contains("resuming"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// `dst eval` says where the run's dead-layer policy acted on a mask, as `dst export` does (it
/// said nothing): here fc2's thresholds raised above every weight, which the paper's reset makes
/// dense again. `dst train`'s closing table says it too, here of a run pruned to the floor.
#[test]
fn eval_says_where_the_reset_acted() {
    let out = nothing_at("eval-reset");
    let o = out.to_str().unwrap();
    let (ok, stdout, err) = dst(&["train", "--limit-train", "64", "--epochs", "1", "--out", o]);
    assert!(ok && !stdout.contains("kept <= 1%"), "{stdout}{err}");
    let floor = nothing_at("train-floor");
    let (ok, stdout, err) = dst(&[
        "train",
        "--limit-train",
        "1000",
        "--epochs",
        "2",
        "--reset",
        "floor",
        "--alpha",
        "0.05",
        "--out",
        floor.to_str().unwrap(),
    ]);
    let at_the_floor = "2 matrices kept <= 1% so each row keeps at least its strongest weight";
    assert!(ok && stdout.contains(at_the_floor), "{stdout}{err}");
    std::fs::remove_dir_all(&floor).unwrap();
    let mut ck = dst::checkpoint::Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    for t in ck.tensors.iter_mut().filter(|t| t.0 == "fc2.threshold") {
        t.2.iter_mut().for_each(|v| *v = 1e3);
    }
    let edited = out.join("dead-fc2.safetensors");
    ck.save(&edited).unwrap();
    let note = "1 matrix kept <= 1% and was reset to dense";
    let (ok, stdout, err) = dst(&["eval", "--checkpoint", edited.to_str().unwrap()]);
    assert!(ok && stdout.contains(note), "{stdout}{err}");
    let (ok, stdout, err) = dst(&["eval", "--checkpoint", o]);
    assert!(ok && !stdout.contains("kept <= 1%"), "{stdout}{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A --limit-train larger than the training set trains on all of it, and says so.
#[test]
fn a_limit_above_the_training_set_is_noted() {
    let out = nothing_at("limit");
    let o = out.to_str().unwrap();
    // 10 training images after a validation split of 9,990: one step.
    let args = [
        "train",
        "--limit-train",
        "100000",
        "--valid",
        "9990",
        "--epochs",
        "1",
        "--out",
        o,
    ];
    let (ok, stdout, err) = dst(&args);
    assert!(ok, "{err}");
    let all = format!("{stdout}{err}");
    assert!(
        all.contains(
            "note: --limit-train 100000 is more than the 10000 training images there are; all of them are used"
        ),
        "{all}"
    );
    // A batch of 64 over those 10: said so.
    assert!(
        all.contains("note: the batch of 64 is more than the 10 training images"),
        "{all}"
    );
    // The split is named where the images are counted.
    assert!(
        all.contains(": 10 train / 9990 validation / 2000 test images on the GPU"),
        "{all}"
    );
    // The epoch picked on the validation split is in the closing lines (only in summary.json
    // before).
    assert!(
        stdout.contains("best on validation: epoch 1, validation ") && stdout.contains(", keep "),
        "{stdout}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// A batch above the training set is one step over all of it, with buffers sized for the set:
/// LeNet-5 at the largest batch on 10 images trains (its buffers for 65,535 images were refused).
/// Its summary counts the images trained on.
#[test]
fn a_batch_above_the_training_set_fits_the_set() {
    let out = nothing_at("huge-batch");
    let o = out.to_str().unwrap();
    let args = [
        "train",
        "--model",
        "lenet5",
        "--limit-train",
        "10",
        "--batch",
        "65535",
        "--epochs",
        "1",
        "--out",
        o,
    ];
    let (ok, stdout, err) = dst(&args);
    assert!(ok, "{err}");
    let all = format!("{stdout}{err}");
    assert!(
        all.contains("note: the batch of 65535 is more than the 10 training images: each epoch is one step over all of them"),
        "{all}"
    );
    let summary = read_json(out.join("summary.json"));
    assert_eq!(
        (summary["steps"].as_u64(), summary["train_images"].as_u64()),
        (Some(1), Some(10))
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--resume` takes a run's folder or its checkpoint; a missing folder or another file is named.
#[test]
fn resume_takes_the_run_folder_or_its_checkpoint() {
    let out = nothing_at("resume");
    let o = out.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--limit-train", "64", "--epochs", "1", "--out", o]);
    assert!(ok, "{err}");
    // A damaged line in metrics.jsonl is dropped with a warning; a last line cut short (a
    // crash) goes silently.
    let metrics = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    std::fs::write(&metrics, format!("{first}\nnot json\n{rest}{{\"step\": 1")).unwrap();
    let ck = out.join("checkpoint.safetensors");
    let (ok, _, err) = dst(&["train", "--resume", ck.to_str().unwrap(), "--epochs", "2"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("dropped 1 damaged line (not a JSON log line"),
        "{err}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"epochs\": 2"), "{summary}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.starts_with(first) && !text.contains("not json"),
        "{text}"
    );
    // A missing one is named; the run goes on and logs from where it resumed.
    std::fs::remove_file(&metrics).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", o, "--epochs", "3"]);
    assert!(ok, "{err}");
    assert!(err.contains("metrics.jsonl is missing"), "{err}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("\"epoch\":3"));
    // A log without the lines of epochs the checkpoint has done is named, epochs listed.
    let (ok, _, err) = dst(&["train", "--resume", o, "--epochs", "4"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("metrics.jsonl lacks the lines of epochs 1-2, which the checkpoint has done"),
        "{err}"
    );
    let missing = out.join("nonexistent");
    let (ok, _, err) = dst(&["train", "--resume", missing.to_str().unwrap()]);
    assert!(!ok && err.contains("no such folder"), "{err}");
    let cfg = out.join("config.json");
    let (ok, _, err) = dst(&["train", "--resume", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("is a file, not a run folder"), "{err}");
    // A folder without config.json (here the embedded data's): not a run folder, said so (a raw
    // "No such file or directory" named it), the dataset named as --data's.
    let (ok, _, err) = dst(&["train", "--resume", "assets/mnist-subset"]);
    assert!(
        !ok && err.contains("not a run folder (no config.json there): it holds a dataset"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// A new run given a folder another process is training is told the folder is in use, whatever
/// that run has written by then (it was told to resume it, or that the folder is not empty), and
/// a --resume of it alike; nothing there changes, and no "training ..." header is printed.
#[test]
fn a_folder_being_trained_is_named_in_use() {
    let out = empty_folder("in-use");
    let o = out.to_str().unwrap();
    std::fs::write(out.join("config.json"), "{}").unwrap();
    std::fs::write(out.join("metrics.jsonl"), "").unwrap();
    let held = std::fs::File::create(out.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    for args in [
        vec!["train", "--epochs", "1", "--out", o],
        vec!["train", "--resume", o, "--epochs", "2"],
    ] {
        let (ok, _, err) = dst(&args);
        assert!(
            !ok && err.contains("is in use by another dst process")
                && !err.contains("training DST"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), b"{}");
    // `dst eval` of it before its first checkpoint: told the run is training (it read as a
    // folder someone forgot to fill).
    let (ok, _, err) = dst(&["eval", o]);
    assert!(
        !ok && err.contains("without a checkpoint.safetensors yet: its run is training now"),
        "{err}"
    );
    drop(held);
    let (ok, _, err) = dst(&["eval", o]);
    assert!(
        !ok && err.contains("without a checkpoint.safetensors; give a checkpoint file"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// A run's lock held for an instant (what `dst plot` or `dst report` does to ask whether the run
/// trains) does not make a resume refuse: the lock is tried again for a short while. A lock held
/// for longer still is refused.
#[test]
fn a_lock_held_for_an_instant_is_waited_for() {
    let out = empty_folder("lock-instant");
    let held = std::fs::File::create(out.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(held);
    });
    assert!(matches!(dst::train::lock_run(&out), Ok(Some(_))));
    release.join().unwrap();
    // `in_use` (every resume and study asks it first) waits the same way.
    let held = std::fs::File::open(out.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(held);
    });
    assert!(!dst::train::in_use(&out));
    release.join().unwrap();
    let held = std::fs::File::open(out.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    assert!(matches!(
        dst::train::lock_run(&out),
        Err(dst::train::TrainError::InUse { .. })
    ));
    assert!(dst::train::in_use(&out));
    drop(held);
    std::fs::remove_dir_all(&out).unwrap();
}

/// A --data path that is not UTF-8 is refused before anything is made (config.json records it
/// as text: train and sweep panicked writing it, leaving a folder with only a lock file).
#[cfg(unix)]
#[test]
fn a_data_path_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let root = empty_folder("not-utf8");
    let data = root.join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    std::fs::create_dir_all(&data).unwrap();
    for f in std::fs::read_dir("assets/mnist-subset").unwrap().flatten() {
        std::fs::copy(f.path(), data.join(f.file_name())).unwrap();
    }
    let out = root.join("run");
    for sub in ["train", "sweep"] {
        let mut args: Vec<std::ffi::OsString> = vec![sub.into()];
        if sub == "sweep" {
            args.extend(["--alpha".into(), "1e-3".into()]);
        }
        args.extend([
            "--epochs".into(),
            "1".into(),
            "--limit-train".into(),
            "200".into(),
            "--data".into(),
            data.clone().into(),
            "--out".into(),
            out.clone().into(),
        ]);
        let o = Command::new(env!("CARGO_BIN_EXE_dst"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && err.contains("the path is not valid UTF-8")
                && !err.contains("panicked"),
            "{sub}: {err}"
        );
        assert!(!out.exists(), "{sub} left {out:?}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A folder holding a user's metrics.jsonl (no config.json) is named as not empty, not as a run
/// to --resume (which then said it is no run folder).
#[test]
fn a_folder_of_a_users_log_is_not_called_a_run() {
    let out = empty_folder("users-log");
    std::fs::write(out.join("metrics.jsonl"), "mine\n").unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--out", out.to_str().unwrap()]);
    assert!(
        !ok && err.contains("is not empty (it holds `metrics.jsonl`)") && !err.contains("--resume"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), b"mine\n");
    std::fs::remove_dir_all(&out).unwrap();
}

/// The progress is a bar only on a terminal that draws one: plain lines on a pipe, and on a
/// terminal of TERM=dumb, where the bar showed nothing at all.
#[test]
fn progress_is_plain_lines_where_no_bar_is_drawn() {
    use dst::train::draws_a_bar;
    assert!(draws_a_bar(true, Some("xterm-256color")));
    assert!(!draws_a_bar(true, Some("dumb")));
    #[cfg(unix)]
    assert!(!draws_a_bar(true, None), "no TERM: no bar is drawn either");
    assert!(!draws_a_bar(false, Some("xterm")));
}

/// `dst` with no command runs its first example, and says so before anything else (a user who
/// typed it to see the usage got a training run and files without a word); `dst --help` says it
/// too.
#[test]
fn no_command_says_it_runs_the_first_example() {
    let (ok, stdout, _) = dst(&["--help"]);
    assert!(
        ok && stdout.contains("With no command, dst runs its first example"),
        "{stdout}"
    );
    // Without an adapter it stops where the adapter opens, after its first line.
    let dir = nothing_at("no-command");
    std::fs::create_dir_all(&dir).unwrap();
    let o = without_adapter(Command::new(env!("CARGO_BIN_EXE_dst")).current_dir(&dir))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.starts_with(
                "no command given: the first example, `dst train --target-keep 0.03 --reset \
                 floor` (`dst --help` lists the commands)"
            )
            && err.contains("no GPU adapter found"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A folder whose run diverged before its first checkpoint is named as such to a new run given
/// it as --out (it said "continue it with --resume", which would train the same settings again
/// from the start), and nothing there changes.
#[test]
fn a_diverged_runs_folder_says_what_it_holds() {
    let out = nothing_at("diverged-folder");
    let o = out.to_str().unwrap();
    let args = ["train", "--limit-train", "640", "--epochs", "2", "--out", o];
    let (ok, _, err) = dst(&[&args[..], &["--lr", "1e6"]].concat());
    assert!(
        !ok && err.contains("No checkpoint had been written"),
        "{err}"
    );
    let log = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let (ok, _, err) = dst(&args);
    assert!(
        !ok && err.contains("holds a run that diverged at epoch 1, step ")
            && err.contains("before its first checkpoint")
            && err.contains("remove it or pick another --out"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), log);
    std::fs::remove_dir_all(&out).unwrap();
}

/// `kill -SIG` to the process `pid`.
#[cfg(unix)]
fn send(sig: &str, pid: u32) {
    let kill = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// SIGTERM (what `timeout`, systemd and batch schedulers send) stops a run at once and says how
/// to go on, as a second Ctrl-C does, leaving no temporary file (none is being written between
/// checkpoints: this only checks that nothing else leaves one); a process started ignoring SIGINT
/// (a background job of a script) keeps ignoring it and finishes its run.
#[cfg(unix)]
#[test]
fn sigterm_stops_at_once_and_an_ignored_sigint_stays_ignored() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let root = empty_folder("sigterm");
    // `signal` once stderr says "ready in"; `ignore`: the child starts with SIGINT ignored.
    let run_with = |name: &str, args: &[&str], signal: &str, ignore: bool| {
        let run = root.join(name);
        let mut cmd = interruptible();
        cmd.args(args)
            .arg("--out")
            .arg(&run)
            .stderr(std::process::Stdio::piped());
        if ignore {
            // SAFETY: signal(2) is async-signal-safe, as pre_exec asks.
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let (status, err) = signal_after(cmd.spawn().unwrap(), "ready in", signal, 1);
        (run, status, err)
    };
    // 1250 steps to the first log point: the signal lands well before it.
    let long = [
        "train",
        "--epochs",
        "2",
        "--batch",
        "8",
        "--log-every",
        "100000",
    ];
    let (run, status, err) = run_with("term", &long, "TERM", false);
    assert_eq!(status.signal(), Some(15), "{status:?}: {err}");
    assert!(
        err.contains("stopped at once")
            && err.contains(&format!("dst train --resume {}", run.display())),
        "{err}"
    );
    let temporaries = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(temporaries, 0);
    let short = ["train", "--epochs", "1", "--limit-train", "640"];
    let (run, status, err) = run_with("ignored", &short, "INT", true);
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        !err.contains("interrupt") && run.join("summary.json").is_file(),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A study folder another process is training into is refused, by a sweep and a reproduction,
/// and `dst plot` does not draw into a run folder that is training.
#[test]
fn a_study_folder_or_run_in_use_is_refused() {
    let out = empty_folder("study-in-use");
    let o = out.to_str().unwrap();
    let held = std::fs::File::create(out.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    for args in [
        vec![
            "sweep",
            "--alpha",
            "1e-3",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--limit-train",
            "64",
            "--out",
            o,
        ],
        vec![
            "reproduce",
            "table1",
            "--quick",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--out",
            o,
        ],
    ] {
        let (ok, _, err) = dst(&args);
        assert!(
            !ok && err.contains("is in use by another dst process (a study training into it)"),
            "{args:?}: {err}"
        );
    }
    drop(held);
    // A run of its own, then plotted while "training" (its lock held here).
    let run = out.join("run");
    let r = run.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--limit-train", "64", "--out", r]);
    assert!(ok, "{err}");
    let held = std::fs::File::open(run.join(dst::train::LOCK_FILE)).unwrap();
    held.try_lock().unwrap();
    let (ok, _, err) = dst(&["plot", r]);
    assert!(
        !ok && err.contains("is in use by another dst process (training that run)"),
        "{err}"
    );
    let elsewhere = out.join("charts");
    let (ok, _, err) = dst(&["plot", r, "--out", elsewhere.to_str().unwrap()]);
    assert!(ok, "{err}");
    drop(held);
    std::fs::remove_dir_all(&out).unwrap();
}

/// A run's validation split cannot change on resume (config.json edited: `valid`, or
/// `limit_train` where images are held out): refused, nothing changed. It once resumed with a
/// warning and picked its "best on validation" epoch from images it had trained on.
#[test]
fn resume_refuses_a_moved_validation_split() {
    let out = nothing_at("moved-split");
    let o = out.to_str().unwrap();
    let (ok, _, err) = dst(&[
        "train",
        "--limit-train",
        "128",
        "--valid",
        "32",
        "--epochs",
        "1",
        "--out",
        o,
    ]);
    assert!(ok, "{err}");
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let original = read_json(out.join("config.json"));
    for (key, value, then) in [
        ("valid", serde_json::json!(64), "32"),
        ("valid", serde_json::Value::Null, "32"),
        ("limit_train", serde_json::json!(256), "128"),
    ] {
        let mut config = original.clone();
        config[key] = value.clone();
        std::fs::write(out.join("config.json"), config.to_string()).unwrap();
        let (ok, _, err) = dst(&["train", "--resume", o, "--epochs", "2"]);
        let now = if value.is_null() {
            "none".to_string()
        } else {
            value.to_string()
        };
        assert!(
            !ok && err.contains(&format!(
                "trained with {key} {then}, and its config.json now says {now}: that moves images \
                 between the training and validation splits"
            )) && err.contains(&format!("set \"{key}\" back to {then}")),
            "{key} {value}: {err}"
        );
        assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    }
    // The split as it was, another setting changed: resumed, the change named ("none" for a
    // setting that had no value).
    let mut config = original.clone();
    config["sparse_keep"] = serde_json::json!(0.5);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", o, "--epochs", "2"]);
    assert!(
        ok && err.contains("settings that differ from the checkpoint's (sparse_keep none -> 0.5)"),
        "{err}"
    );
    // Without a hold-out, another limit moves no image into a validation split: taken, with
    // the warning.
    let plain = nothing_at("limit-no-split");
    let p = plain.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--limit-train", "128", "--epochs", "1", "--out", p]);
    assert!(ok, "{err}");
    let mut config = read_json(plain.join("config.json"));
    config["limit_train"] = serde_json::json!(192);
    std::fs::write(plain.join("config.json"), config.to_string()).unwrap();
    let (ok, _, err) = dst(&["train", "--resume", p, "--epochs", "2"]);
    assert!(ok && err.contains("(limit_train 128 -> 192)"), "{err}");
    std::fs::remove_dir_all(&plain).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}
