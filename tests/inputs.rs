// Inputs given in the wrong place: a run folder where a checkpoint file is expected, another
// file given as a checkpoint, one dataset's folder given for a model of the other, and the
// wording of CIFAR-10's size error. Each is refused (or accepted) with a message that names the
// problem, before any GPU work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use dst::checkpoint::Checkpoint;
use dst::data::cifar::{self, RECORD};
use dst::data::{DataError, DatasetKind, MNIST_NAMES};

/// A fresh, empty directory under the system temp dir, unique to this process and call.
fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dst-inputs-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the program: (success, stdout, stderr).
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

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

/// A small checkpoint (not of a real model: no GPU is involved) saved as a run folder's
/// `checkpoint.safetensors` in `dir`; returns the file's path.
fn save_checkpoint(dir: &Path) -> PathBuf {
    let ck = Checkpoint {
        tensors: vec![
            ("a".into(), vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("b".into(), vec![2], vec![-1.0, 0.5]),
        ],
        metadata: [("model".to_string(), "lenet300".to_string())].into(),
    };
    let path = dir.join("checkpoint.safetensors");
    ck.save(&path).unwrap();
    path
}

/// A folder given as a checkpoint means the run folder's `checkpoint.safetensors`.
#[test]
fn a_run_folder_reads_as_its_checkpoint() {
    let run = tmpdir("run");
    let file = save_checkpoint(&run);
    let from_file = Checkpoint::load(&file).unwrap();
    let from_dir = Checkpoint::load(&run).expect("a run folder loads as its checkpoint");
    assert_eq!(from_dir.tensors, from_file.tensors);
    assert_eq!(from_dir.metadata, from_file.metadata);
    let meta = Checkpoint::read_metadata(&run).expect("a run folder's metadata");
    assert_eq!(meta.get("model").map(String::as_str), Some("lenet300"));
    assert_eq!(dst::checkpoint::resolve(&run).unwrap(), file);
    assert_eq!(dst::checkpoint::resolve(&file).unwrap(), file);
    std::fs::remove_dir_all(&run).unwrap();
}

/// A folder without a checkpoint: said plainly by every command that reads one (no raw "Is a
/// directory" OS error).
#[test]
fn a_folder_without_a_checkpoint_is_named() {
    let run = tmpdir("nock");
    std::fs::write(run.join("config.json"), b"{}").unwrap();
    let d = run.display().to_string();
    let want = format!(
        "{d} is a folder without a checkpoint.safetensors; give a checkpoint file (a run \
         folder's checkpoint.safetensors)"
    );
    let err = Checkpoint::load(&run).unwrap_err().to_string();
    assert_eq!(err, want);
    let err = Checkpoint::read_metadata(&run).unwrap_err().to_string();
    assert_eq!(err, want);

    let out = run.join("out.safetensors");
    let out = out.to_str().unwrap();
    for args in [
        vec!["eval", "--checkpoint", &d],
        vec!["masks", &d],
        vec!["export", &d, "--out", out],
        vec!["bench", "--model", "lenet300", "--checkpoint", &d],
    ] {
        let (ok, _, err) = dst(&args);
        assert!(!ok, "{args:?} succeeded");
        assert_mentions(&err, &[&want]);
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&run).unwrap();
}

/// Another file given as a checkpoint: text says what it holds (and where the folder's
/// checkpoint is); other bytes give both sizes rather than a bare impossible header length.
#[test]
fn another_file_given_as_a_checkpoint_says_what_it_is() {
    let run = tmpdir("text");
    let config = run.join("config.json");
    std::fs::write(
        &config,
        b"{\n  \"model\": \"lenet300\",\n  \"epochs\": 20\n}\n",
    )
    .unwrap();
    let c = config.display().to_string();
    let want = format!(
        "{c} is not a safetensors checkpoint: it holds text (starts with `{{\\n  \\\"model\\\": \
         \\\"le...`)"
    );
    for err in [
        Checkpoint::load(&config).unwrap_err().to_string(),
        Checkpoint::read_metadata(&config).unwrap_err().to_string(),
        dst(&["eval", "--checkpoint", &c]).2,
    ] {
        assert_mentions(&err, &[&want]);
        assert!(!err.contains("header of"), "{err}");
    }
    // In a run folder with a checkpoint: that checkpoint is named.
    let ck = save_checkpoint(&run);
    let err = Checkpoint::load(&config).unwrap_err().to_string();
    assert_mentions(
        &err,
        &[
            &want,
            &format!("; the checkpoint of its folder is {}", ck.display()),
        ],
    );
    // `dst infer`, which reads exports, points at `dst export` of that checkpoint instead.
    let err = dst(&["infer", &c]).2;
    assert_mentions(
        &err,
        &[&format!(
            "export its folder's checkpoint first: `dst export {} --out FILE`",
            ck.display()
        )],
    );
    assert!(!err.contains("the checkpoint of its folder is"), "{err}");
    // A short text file, whole: no "..." after it.
    let note = run.join("note.txt");
    std::fs::write(&note, "hello, world\n").unwrap();
    let err = Checkpoint::read_metadata(&note).unwrap_err().to_string();
    assert_mentions(&err, &["it holds text (starts with `hello, world\\n`)"]);

    // Binary bytes whose header length the file cannot hold.
    let bin = run.join("random.bin");
    let mut bytes = vec![0xffu8; 8];
    bytes.extend((0..92u8).map(|i| i.wrapping_mul(37) | 0x80));
    std::fs::write(&bin, &bytes).unwrap();
    let want = format!(
        "{}: not a valid safetensors file (its 8-byte header length says {} bytes, but the \
         whole file has only 100)",
        bin.display(),
        u64::MAX
    );
    assert_eq!(Checkpoint::load(&bin).unwrap_err().to_string(), want);
    assert_eq!(
        Checkpoint::read_metadata(&bin).unwrap_err().to_string(),
        want
    );
    std::fs::remove_dir_all(&run).unwrap();
}

/// Files that are not what a command reads, and outputs it cannot write, are named as such
/// before any work: a truncated checkpoint says it may be truncated; a run folder's own
/// checkpoint holding text does not point at itself; `infer` of a folder or of a text file
/// says what it is; `export --out` into a missing folder names the folder.
#[test]
fn damaged_inputs_and_missing_folders_are_named() {
    let run = tmpdir("damaged");
    let ck = save_checkpoint(&run);
    let bytes = std::fs::read(&ck).unwrap();
    let cut = run.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
    let err = Checkpoint::load(&cut).unwrap_err().to_string();
    assert_mentions(
        &err,
        &["not a valid safetensors file (truncated, or bytes added after it?"],
    );

    std::fs::write(&ck, "# notes, not a checkpoint at all\n").unwrap();
    let err = Checkpoint::load(&ck).unwrap_err().to_string();
    assert_mentions(&err, &["it holds text (starts with `# notes"]);
    assert!(!err.contains("the checkpoint of its folder"), "{err}");

    let d = run.display().to_string();
    let (ok, _, err) = dst(&["infer", &d]);
    assert!(!ok);
    assert_mentions(&err, &[&d, "is a folder; give an export file"]);
    assert!(!err.contains("os error"), "{err}");
    let note = run.join("note.txt");
    std::fs::write(&note, "hello, world, these are words\n").unwrap();
    let n = note.display().to_string();
    for cmd in ["infer", "bench-infer"] {
        let (ok, _, err) = dst(&[cmd, &n]);
        assert!(!ok, "{cmd}");
        assert_mentions(
            &err,
            &[
                &n,
                "not a safetensors file: it holds text (starts with `hello",
            ],
        );
    }

    let out = run.join("nodir/model.safetensors");
    let (ok, _, err) = dst(&[
        "export",
        &cut.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(!ok);
    assert_mentions(
        &err,
        &[&format!(
            "the folder {} does not exist",
            run.join("nodir").display()
        )],
    );
    assert!(!run.join("nodir").exists());
    // A parent that is a file: named as what is in the way, not as a missing folder.
    let file = run.join("a-file");
    std::fs::write(&file, b"mine").unwrap();
    let (ok, _, err) = dst(&[
        "export",
        &cut.display().to_string(),
        "--out",
        &file.join("model.safetensors").display().to_string(),
    ]);
    assert!(!ok);
    assert_mentions(&err, &[&format!("{} is a file", file.display())]);
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    std::fs::remove_dir_all(&run).unwrap();
}

/// Writes the four MNIST file names (gzip) into `dir`; their contents do not matter here.
fn write_mnist_names(dir: &Path) {
    for n in MNIST_NAMES {
        std::fs::write(dir.join(format!("{n}.gz")), b"x").unwrap();
    }
}

/// A folder of MNIST given for a CIFAR-10 model, and the reverse: the message says which
/// dataset the folder holds, which one the model needs and how to fetch it.
#[test]
fn a_folder_of_the_other_dataset_is_named() {
    let mnist = tmpdir("mnist");
    write_mnist_names(&mnist);
    let m = mnist.display().to_string();
    let err = DatasetKind::Cifar10.load(Some(&mnist)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::OtherDataset {
                found: DatasetKind::Mnist,
                wanted: DatasetKind::Cifar10,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(
        &err.to_string(),
        &[
            &format!("{m} holds MNIST, but the model trains on CIFAR-10"),
            "data_batch_1.bin",
            "test_batch.bin",
            "`dst fetch cifar10 --to data/cifar10`",
        ],
    );
    let err = DatasetKind::Cifar10.load_for("vgg16", &mnist).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[&format!("{m} holds MNIST, but vgg16 trains on CIFAR-10")],
    );

    // CIFAR-10 files, here as the archive unpacks them (in cifar-10-batches-bin).
    let cifar_dir = tmpdir("cifar");
    let inner = cifar_dir.join(cifar::ARCHIVE_FOLDER);
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("data_batch_1.bin"), b"x").unwrap();
    let c = cifar_dir.display().to_string();
    let err = DatasetKind::Mnist
        .load_for("lenet5", &cifar_dir)
        .unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            &format!("{c} holds CIFAR-10, but lenet5 trains on MNIST"),
            "train-images-idx3-ubyte",
            "`dst fetch mnist --to data/mnist`",
        ],
    );
    let err = dst::data::load_dir(&cifar_dir).unwrap_err().to_string();
    assert_mentions(&err, &[&format!("{c} holds CIFAR-10, but the model")]);

    // A folder with some of the wanted files still lists the missing ones.
    std::fs::write(mnist.join("data_batch_1.bin"), b"x").unwrap();
    let err = DatasetKind::Cifar10.load(Some(&mnist)).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    // An empty folder: the missing files, as before.
    let empty = tmpdir("empty");
    let err = DatasetKind::Cifar10.load(Some(&empty)).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    let err = DatasetKind::Mnist.load(Some(&empty)).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    for d in [mnist, cifar_dir, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Through the binary, with a trained run: `masks RUN` reads its checkpoint and draws into the
/// run folder (not the one above it), `export RUN --out RUN/checkpoint.safetensors` is refused as
/// the checkpoint being exported, and a CIFAR-10 model given an MNIST folder is named in the
/// refusal, which leaves no `runs` folder behind.
#[test]
fn run_folders_serve_as_checkpoints_through_the_binary() {
    let root = tmpdir("cli");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let (ok, _, err) = dst(&["train", "--epochs", "1", "--limit-train", "128", "--out", r]);
    assert!(ok, "{err}");
    let (ok, out, err) = dst(&["masks", r]);
    assert!(ok, "{err}");
    let drawn: Vec<&str> = out.lines().collect();
    assert!(!drawn.is_empty(), "{out}");
    for p in &drawn {
        assert_eq!(Path::new(p).parent(), Some(run.as_path()), "{out}");
    }
    let entries: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "only the run folder in {}",
        root.display()
    );
    let ck = run.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let (ok, _, err) = dst(&["export", r, "--out", ck.to_str().unwrap()]);
    assert!(!ok);
    assert_mentions(&err, &["is the checkpoint being exported"]);
    assert_eq!(std::fs::read(&ck).unwrap(), before);

    let mn = root.join("mn");
    std::fs::create_dir_all(&mn).unwrap();
    write_mnist_names(&mn);
    let o = Command::new(env!("CARGO_BIN_EXE_dst"))
        .args(["train", "--model", "vgg16", "--data", "mn", "--epochs", "1"])
        .current_dir(&root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_mentions(&err, &["mn holds MNIST, but vgg16 trains on CIFAR-10"]);
    assert!(
        !err.contains("adapter:"),
        "refused before the adapter opens: {err}"
    );
    assert!(!root.join("runs").exists(), "a refused run left runs/");
    std::fs::remove_dir_all(&root).unwrap();
}

/// CIFAR-10's partial-record error counts in words that agree with their numbers.
#[test]
fn partial_record_counts_read_right() {
    let msg = |n: usize| {
        cifar::parse_batch(&vec![0u8; n], "f.bin")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(RECORD + 1927),
        "f.bin: 5000 bytes is not a whole number of 3073-byte records (1 whole record and 1927 \
         bytes over)"
    );
    assert_eq!(
        msg(2 * RECORD + 1),
        "f.bin: 6147 bytes is not a whole number of 3073-byte records (2 whole records and 1 \
         byte over)"
    );
    assert_eq!(
        msg(1),
        "f.bin: 1 byte is not a whole number of 3073-byte records (0 whole records and 1 byte \
         over)"
    );
}
