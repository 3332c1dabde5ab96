// CIFAR-10: the reader of the binary batches on generated folders, the normalisation values,
// the per-epoch crop and flip draws, the augmented batches on the GPU against the host reference,
// the tar reader, and `fetch_archive` (`dst fetch cifar10`) against a loopback HTTP server.

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dst::data::augment::{self, epoch_draws, CropFlip};
use dst::data::cifar::{self, FILES, MEAN, RECORD, STD, TEST_FILE, TRAIN_FILES};
use dst::data::fetch::{self, ArchiveSpec, AttemptError, FetchError, CIFAR10_ARCHIVE};
use dst::data::{tar, DataError, DatasetKind};
use dst::kernels::{run_once, Kernels, StepInfo, StepRing};
use dst::plan::GpuData;
use dst::reference::data::{self as reference, ImageSpec};
use dst::rng::Rng;
use http::Server;

// ---------------------------------------------------------------- helpers

/// A fresh, empty directory under the system temp dir, unique to this process and call.
fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dst-cifar-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` records: label `(i + seed) % 10`, pixels from a generator seeded by `seed`.
fn records(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(n * RECORD);
    for i in 0..n {
        v.push(((i as u64 + seed) % 10) as u8);
        v.extend((0..RECORD - 1).map(|_| rng.below(256) as u8));
    }
    v
}

/// Record counts of the six files (train 1..5, test) in the generated folders: 9 train, 3 test.
const COUNTS: [usize; 6] = [2, 1, 3, 1, 2, 3];

/// The six files' contents, order of `FILES`.
fn valid_files() -> Vec<Vec<u8>> {
    COUNTS
        .iter()
        .enumerate()
        .map(|(i, &n)| records(n, i as u64 + 1))
        .collect()
}

fn write_files(dir: &Path, files: &[Vec<u8>]) {
    for (name, bytes) in FILES.iter().zip(files) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn assert_mentions(err: &dyn std::fmt::Display, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

/// Names of all entries in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- reader

#[test]
fn reader_loads_generated_batches() {
    let dir = tmpdir("ok");
    let files = valid_files();
    write_files(&dir, &files);
    let d = cifar::load_dir(&dir).unwrap();
    assert_eq!(d.source, format!("CIFAR-10 in {}", dir.display()));
    let (tr, te) = (&d.train, &d.test);
    assert_eq!(
        (tr.count, tr.channels, tr.rows, tr.cols, tr.classes),
        (9, 3, 32, 32, 10)
    );
    assert_eq!((te.count, te.pixels()), (3, 3072));
    assert!(tr.augment && !te.augment, "train augments, test never");
    assert_eq!(tr.normalize, Some(cifar::normalize()));
    assert_eq!(te.normalize, Some(cifar::normalize()));
    // Train: the five batches in order, records split into label and CHW pixels as stored.
    let train_records: Vec<u8> = files[..5].concat();
    for (i, r) in train_records.chunks(RECORD).enumerate() {
        assert_eq!(tr.labels[i], r[0], "train label {i}");
        assert_eq!(
            &tr.images[i * 3072..(i + 1) * 3072],
            &r[1..],
            "train image {i}"
        );
    }
    assert_eq!(te.labels, vec![6, 7, 8]);
    assert_eq!(
        &te.images[..],
        &files[5]
            .chunks(RECORD)
            .flat_map(|r| r[1..].to_vec())
            .collect::<Vec<_>>()[..]
    );
    // The archive's own folder inside --data is found too.
    let outer = tmpdir("outer");
    std::fs::rename(&dir, outer.join(cifar::ARCHIVE_FOLDER)).unwrap();
    let e = DatasetKind::Cifar10.load(Some(&outer)).unwrap();
    assert_eq!(e.train, d.train);
    assert_eq!(e.test, d.test);
    // A limit or a validation tail keeps the kind of data.
    let l = tr.limit(4);
    assert_eq!((l.count, l.channels, l.augment), (4, 3, true));
    assert_eq!(l.images, tr.images[..4 * 3072].to_vec());
    assert_eq!(tr.tail(7).labels, tr.labels[7..].to_vec());
    std::fs::remove_dir_all(&outer).unwrap();
}

/// `dst eval` reads only the test batch: a folder (or its archive folder) with test_batch.bin
/// alone loads, its training set empty; without it, only that file is named as missing.
#[test]
fn test_set_alone_loads_from_test_batch() {
    let dir = tmpdir("test-only");
    let files = valid_files();
    std::fs::write(dir.join("test_batch.bin"), &files[5]).unwrap();
    let d = cifar::load_test_dir(&dir).unwrap();
    assert_eq!((d.train.count, d.test.count), (0, 3));
    assert_eq!(d.test.labels, vec![6, 7, 8]);
    assert!(!d.test.augment && d.train.channels == 3);
    let outer = tmpdir("test-only-outer");
    std::fs::rename(&dir, outer.join(cifar::ARCHIVE_FOLDER)).unwrap();
    let e = cifar::load_test_dir(&outer).unwrap();
    assert_eq!(e.test, d.test);
    let empty = tmpdir("test-only-empty");
    std::fs::write(empty.join("data_batch_1.bin"), &files[0]).unwrap();
    let err = cifar::load_test_dir(&empty).unwrap_err();
    assert!(
        matches!(&err, DataError::Missing { missing, .. } if missing == &vec!["test_batch.bin".to_string()]),
        "{err}"
    );
    for d in [outer, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn reader_refuses_partial_records() {
    for (which, delta) in [(2usize, -1isize), (5, 1), (0, -(RECORD as isize) + 5)] {
        let dir = tmpdir("partial");
        let mut files = valid_files();
        let len = (files[which].len() as isize + delta) as usize;
        files[which].resize(len, 7);
        write_files(&dir, &files);
        let err = cifar::load_dir(&dir).unwrap_err();
        assert!(
            matches!(err, DataError::PartialRecord { size, record: 3073, .. } if size == len),
            "{err}"
        );
        assert_mentions(
            &err,
            &[
                FILES[which],
                &format!("{len} bytes"),
                "not a whole number",
                "3073-byte records",
            ],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // An empty file holds no record.
    let dir = tmpdir("empty");
    let mut files = valid_files();
    files[4].clear();
    write_files(&dir, &files);
    let err = cifar::load_dir(&dir).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert_mentions(&err, &["data_batch_5.bin", "empty"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reader_refuses_bad_labels() {
    let dir = tmpdir("label");
    let mut files = valid_files();
    files[5][2 * RECORD] = 10;
    files[3][0] = 255; // data_batch_4 is read first
    write_files(&dir, &files);
    let err = cifar::load_dir(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordLabel {
                record: 0,
                value: 255,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["data_batch_4.bin", "record 0", "label 255"]);
    files[3][0] = 9;
    write_files(&dir, &files);
    let err = cifar::load_dir(&dir).unwrap_err();
    assert!(
        matches!(err, DataError::RecordLabel { record: 2, value: 10, offset, .. } if offset == 2 * RECORD),
        "{err}"
    );
    assert_mentions(
        &err,
        &[
            "test_batch.bin",
            "record 2 (counting from 0;",
            "label 10",
            "outside 0-9",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The training images are counted from the files' sizes, without reading them (what
/// `--valid` is checked against before an adapter opens); MNIST's from a label file's header.
#[test]
fn training_images_are_counted_without_reading_them() {
    use dst::data::DatasetKind;
    let dir = tmpdir("count");
    write_files(&dir, &valid_files());
    let train: usize = COUNTS[..5].iter().sum();
    assert_eq!(DatasetKind::Cifar10.train_count(Some(&dir)), Some(train));
    assert_eq!(DatasetKind::Cifar10.train_count(None), None);
    assert_eq!(DatasetKind::Mnist.train_count(None), Some(10_000));
    // Raw and gzip label files alike.
    let mnist = tmpdir("count-mnist");
    let subset = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-subset");
    for f in [
        "train-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::copy(
            subset.join(format!("{f}.gz")),
            mnist.join(format!("{f}.gz")),
        )
        .unwrap();
    }
    assert_eq!(DatasetKind::Mnist.train_count(Some(&mnist)), Some(10_000));
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(
        std::fs::File::open(subset.join("train-labels-idx1-ubyte.gz")).unwrap(),
    )
    .read_to_end(&mut raw)
    .unwrap();
    std::fs::write(mnist.join("train-labels-idx1-ubyte"), &raw[..8]).unwrap();
    assert_eq!(DatasetKind::Mnist.train_count(Some(&mnist)), Some(10_000));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&mnist).unwrap();
}

#[test]
fn reader_names_missing_files() {
    let dir = tmpdir("missing");
    write_files(&dir, &valid_files());
    std::fs::remove_file(dir.join("data_batch_2.bin")).unwrap();
    std::fs::remove_file(dir.join(TEST_FILE)).unwrap();
    let err = cifar::load_dir(&dir).unwrap_err();
    assert!(
        matches!(err, DataError::Missing { ref missing, dataset: "CIFAR-10", .. } if missing.len() == 2),
        "{err}"
    );
    assert_mentions(
        &err,
        &[
            &dir.display().to_string(),
            "CIFAR-10",
            "data_batch_2.bin",
            "test_batch.bin",
        ],
    );
    assert!(!err.to_string().contains("data_batch_1"));
    let err = cifar::load_dir(&dir.join("nowhere")).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::NotAFolder {
                ref why,
                dataset: "CIFAR-10",
                ..
            } if why == "no such folder"
        ),
        "{err}"
    );
    assert_mentions(
        &err,
        &["nowhere", "no such folder", "`dst fetch cifar10 --to "],
    );
    // A path with a space: the hint's command quotes it, to paste as it is.
    let err = cifar::load_dir(&dir.join("no where")).unwrap_err();
    assert_mentions(
        &err,
        &[&format!(
            "`dst fetch cifar10 --to '{}'`",
            dir.join("no where").display()
        )],
    );
    // One of the dataset's files: its folder is named, and only it (the fetch hint too
    // repeated the advice).
    let file = dir.join("data_batch_1.bin");
    let err = cifar::load_dir(&file).unwrap_err();
    assert_mentions(
        &err,
        &[
            "is a file, not a folder: its folder",
            &format!("give --data {}", dir.display()),
        ],
    );
    assert!(!err.to_string().contains("dst fetch"), "{err}");
    // Another file is no folder to fetch into: the hint names a new one.
    let other = tmpdir("not-data");
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let err = cifar::load_dir(&other.join("notes.txt")).unwrap_err();
    assert_mentions(
        &err,
        &[
            "is a file, not a folder",
            "`dst fetch cifar10 --to NEW_FOLDER`",
        ],
    );
    // The MNIST test set alone: fetched as `mnist`, not `mnist test` (no such command).
    let err = dst::export::infer::load_test(Some(&dir.join("nowhere")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("`dst fetch mnist --to "), "{err}");
    // A link to nothing is named as such (it was once "a file").
    #[cfg(unix)]
    {
        let link = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
        let err = cifar::load_dir(&link).unwrap_err();
        assert_mentions(&err, &["dangling", "a symbolic link to nothing"]);
        assert!(!err.to_string().contains("is a file"), "{err}");
    }
    // CIFAR-10 is not embedded: the error says how to get it.
    let err = DatasetKind::Cifar10.load(None).unwrap_err();
    assert_mentions(
        &err,
        &["CIFAR-10", "dst fetch cifar10 --to data/cifar10", "--data"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- input values

#[test]
fn normalisation_values() {
    let dir = tmpdir("norm");
    write_files(&dir, &valid_files());
    let d = cifar::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let lut = d.train.lut();
    assert_eq!(lut.len(), 3 * 256);
    for c in 0..3 {
        for b in 0..=255u8 {
            // torch: ToTensor's x / 255 in f32, Normalize's (v - mean) / std in f32.
            let want = (b as f32 / 255.0 - MEAN[c]) / STD[c];
            assert_eq!(lut[c * 256 + b as usize].to_bits(), want.to_bits());
            assert_eq!(d.train.value(c, b).to_bits(), want.to_bits());
        }
    }
    // The values in numbers: black, white and grey 128 per channel (f64 for the expectation).
    let expect = |c: usize, b: f64| (b / 255.0 - MEAN[c] as f64) / STD[c] as f64;
    for (c, black, white) in [
        (0, -2.42907, 2.51409),
        (1, -2.41825, 2.59679),
        (2, -2.22139, 2.75373),
    ] {
        assert!(
            (lut[c * 256] as f64 - black).abs() < 1e-4,
            "channel {c} black {}",
            lut[c * 256]
        );
        assert!(
            (lut[c * 256 + 255] as f64 - white).abs() < 1e-4,
            "channel {c} white"
        );
        assert!((lut[c * 256 + 128] as f64 - expect(c, 128.0)).abs() < 1e-5);
    }
    // The paper's code's constants (METHOD.md section 5).
    assert_eq!(MEAN, [0.4914, 0.4822, 0.4465]);
    assert_eq!(STD, [0.2023, 0.1994, 0.2010]);
    // MNIST stays x / 255, one channel: the table is the old byte table, bit for bit.
    let m = dst::data::load_embedded();
    assert_eq!(m.train.channels, 1);
    assert!(m.train.normalize.is_none() && !m.train.augment);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&m.train.lut()), bits(&dst::kernels::data::byte_lut()));
    assert_eq!(m.train.pixels(), 784);
}

#[test]
fn models_name_their_dataset() {
    for m in dst::models::MODELS {
        let want = if ["vgg16", "wrn-16-8", "wrn-16-1"].contains(&m.name) {
            DatasetKind::Cifar10
        } else {
            DatasetKind::Mnist
        };
        assert_eq!(m.dataset, want, "{}", m.name);
        assert_eq!(
            m.input.iter().product::<usize>(),
            m.dataset.shape().iter().product::<usize>(),
            "{}",
            m.name
        );
    }
    assert_eq!(DatasetKind::Cifar10.shape(), [3, 32, 32]);
    assert_eq!(DatasetKind::Cifar10.name(), "CIFAR-10");
}

// ---------------------------------------------------------------- augmentation

#[test]
fn epoch_draws_depend_on_seed_and_epoch_only() {
    let n = 3000;
    let a = epoch_draws(5, 3, n);
    assert_eq!(a, epoch_draws(5, 3, n), "same seed and epoch: same draws");
    // A prefix: draw i does not depend on how many positions follow.
    assert_eq!(&epoch_draws(5, 3, 10)[..], &a[..10]);
    let other_epoch = epoch_draws(5, 4, n);
    let other_seed = epoch_draws(6, 3, n);
    let same = |x: &[CropFlip], y: &[CropFlip]| x.iter().zip(y).filter(|(p, q)| p == q).count();
    // 9 x 9 x 2 equally likely draws: about n / 162 coincide by chance.
    assert!(
        same(&a, &other_epoch) < n / 40,
        "{}",
        same(&a, &other_epoch)
    );
    assert!(same(&a, &other_seed) < n / 40);
    // Uniform offsets 0..=8 and fair flips.
    let span = 2 * augment::PAD as u32 + 1;
    for axis in 0..2 {
        let mut hist = vec![0usize; span as usize];
        for d in &a {
            let v = if axis == 0 { d.dx } else { d.dy };
            assert!(v < span);
            hist[v as usize] += 1;
        }
        assert!(
            hist.iter().all(|&h| h > n / 15 && h < n / 6),
            "axis {axis}: {hist:?}"
        );
    }
    let flips = a.iter().filter(|d| d.flip).count();
    assert!(flips > n * 45 / 100 && flips < n * 55 / 100, "{flips}");
    assert_eq!(
        augment::epoch_words(5, 3, n),
        a.iter().map(|d| d.pack()).collect::<Vec<_>>()
    );
}

/// A generated CIFAR-10 folder, uploaded (its images split over two buffers), gathered for
/// training after `start_epoch` exactly as the host reference crops, flips and normalises with
/// the epoch's draws; the same (seed, epoch) after a fresh upload (a resume) gives the same bits,
/// another epoch other crops; the test set has no draws.
#[test]
fn augmented_batches_on_the_gpu() {
    let dir = tmpdir("gpu");
    write_files(&dir, &valid_files());
    let data = cifar::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let gpu = common::gpu();
    let k = Kernels::new(&gpu, None).unwrap();
    let ring = StepRing::new(&gpu, &k, 2);
    let tr = &data.train;
    let n = tr.count;
    let spec = ImageSpec {
        channels: 3,
        height: 32,
        width: 32,
        norm: (0..3).map(|c| (MEAN[c], STD[c])).collect(),
    };
    let seed = 7;
    let (rows, start, valid) = (6usize, 4usize, 5usize);
    // One batch of the epoch: (x bits, y) as the GPU and as the reference build them.
    let batch = |g: &GpuData, epoch: usize| -> (Vec<u32>, Vec<u32>) {
        g.start_epoch(&gpu, seed, epoch);
        ring.write(
            &gpu,
            &[StepInfo {
                batch_start: start as u32,
                valid: valid as u32,
                ..Default::default()
            }],
        );
        let x =
            dst::gpu::Tensor::from_slice(&gpu, "x", &[rows, 3072], &vec![f32::NAN; rows * 3072])
                .unwrap();
        let y = dst::gpu::Tensor::from_slice(&gpu, "y", &[rows], &vec![u32::MAX; rows]).unwrap();
        let d = k
            .data
            .gather_crop_flip(
                &gpu,
                &g.images(),
                &g.labels,
                &g.perm,
                &g.lut,
                g.crops
                    .as_ref()
                    .expect("a training set that augments has draws"),
                augment::PAD,
                &x,
                &y,
                &ring,
            )
            .unwrap();
        run_once(&gpu, &[d], 0).unwrap();
        let got: Vec<u32> = gpu
            .read::<f32>(&x)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let perm = Rng::derive(seed, &format!("epoch {epoch}")).permutation(n);
        let draws = epoch_draws(seed, epoch, n);
        let (want, want_y) = reference::gather(
            &tr.images,
            &tr.labels,
            &perm,
            &spec,
            Some((&draws, augment::PAD)),
            rows,
            start,
            valid,
        );
        let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "epoch {epoch}: GPU batch vs reference");
        assert_eq!(
            gpu.read::<u32>(&y).unwrap(),
            want_y,
            "epoch {epoch}: labels"
        );
        (got, want_y)
    };
    let split = GpuData::upload_split(&gpu, "train", tr, 4).unwrap();
    assert_eq!((split.split, split.count, split.shape), (4, 9, [3, 32, 32]));
    let e1 = batch(&split, 1);
    let e2 = batch(&split, 2);
    assert_ne!(e1.0, e2.0, "another epoch, other crops");
    // A fresh upload in one buffer (a resumed run) replays epoch 1 exactly.
    let whole = GpuData::upload(&gpu, "train", tr).unwrap();
    assert_eq!(whole.split, 9);
    assert_eq!(batch(&whole, 1), e1);
    let test = GpuData::upload(&gpu, "test", &data.test).unwrap();
    assert!(test.crops.is_none(), "test data is never augmented");
}

// ---------------------------------------------------------------- tar reader and fetch

/// One ustar header block.
fn tar_header(name: &str, size: usize, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"11145565225\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A member: header, data, padding to 512 bytes.
fn tar_member(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
    out.extend(tar_header(name, data.len(), kind));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar of `files` (name, data) in the archive's folder, with the official archive's extras
/// (the folder entry, batches.meta.txt, readme.html) and one member under a GNU long name.
fn cifar_tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut t = Vec::new();
    tar_member(&mut t, "cifar-10-batches-bin/", &[], b'5');
    tar_member(
        &mut t,
        "cifar-10-batches-bin/batches.meta.txt",
        b"airplane\nautomobile\n",
        b'0',
    );
    for (name, data) in files {
        tar_member(&mut t, &format!("cifar-10-batches-bin/{name}"), data, b'0');
    }
    let long = format!("cifar-10-batches-bin/{}/readme.html", "x".repeat(120));
    tar_member(
        &mut t,
        "././@LongLink",
        format!("{long}\0").as_bytes(),
        b'L',
    );
    tar_member(&mut t, &long[..99], b"<html></html>", b'0');
    t.extend(vec![0u8; 1024]);
    t
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The generated six files as a .tar.gz.
fn archive() -> Vec<u8> {
    let files: Vec<(&str, Vec<u8>)> = FILES.iter().copied().zip(valid_files()).collect();
    gz(&cifar_tar(&files))
}

/// CIFAR-10's spec with the MD5 of `bytes`.
fn spec_for(bytes: &[u8]) -> ArchiveSpec {
    ArchiveSpec {
        md5: Box::leak(fetch::md5_hex(bytes).into_boxed_str()),
        // The test archives hold a few records per file, not CIFAR-10's 10,000: the real
        // check (`check_complete`) but for the count.
        validate: |d| cifar::check_dir(&cifar::locate(d)?),
        ..CIFAR10_ARCHIVE
    }
}

#[test]
fn tar_reader_walks_members_and_checks_headers() {
    let t = cifar_tar(&[("a.bin", vec![1, 2, 3]), ("b.bin", vec![9; 1000])]);
    let mut seen = Vec::new();
    tar::for_each(&t[..], |e, data| {
        let mut v = Vec::new();
        data.read_to_end(&mut v)?;
        seen.push((e.name.clone(), e.is_file(), v.len()));
        Ok(())
    })
    .unwrap();
    let long = format!("cifar-10-batches-bin/{}/readme.html", "x".repeat(120));
    assert_eq!(
        seen,
        vec![
            ("cifar-10-batches-bin/".to_string(), false, 0),
            (
                "cifar-10-batches-bin/batches.meta.txt".to_string(),
                true,
                20
            ),
            ("cifar-10-batches-bin/a.bin".to_string(), true, 3),
            ("cifar-10-batches-bin/b.bin".to_string(), true, 1000),
            (long, true, 13),
        ]
    );
    // A damaged header, a cut inside a member and a missing end block are errors.
    let mut bad = t.clone();
    bad[512 * 3 + 10] ^= 0x40; // in a.bin's header
    let err = tar::for_each(&bad[..], |_, _| Ok(())).unwrap_err();
    assert_mentions(&err, &["checksum"]);
    let err = tar::for_each(&t[..512 * 6 + 100], |_, _| Ok(())).unwrap_err();
    assert_mentions(&err, &["truncated"]);
    let err = tar::for_each(&t[..t.len() - 1024], |_, _| Ok(())).unwrap_err();
    assert_mentions(&err, &["end-of-archive"]);
    // The real archive's MD5 in the spec, and a known vector.
    assert_eq!(CIFAR10_ARCHIVE.md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(fetch::md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
}

#[test]
fn fetch_archive_unpacks_checks_then_skips() {
    let body = archive();
    let spec = spec_for(&body);
    let mut routes = HashMap::new();
    routes.insert("/kriz/cifar-10-binary.tar.gz".to_string(), body);
    let server = Server::start(routes, 8);
    let parent = tmpdir("fetch-ok");
    let to = parent.join("data/cifar10");
    let mut log = Vec::new();
    // First mirror 404s; the second (no trailing slash) has it.
    let mirrors = [
        format!("{}/missing/", server.base),
        format!("{}/kriz", server.base),
    ];
    fetch::fetch_archive(&to, &mirrors, &spec, &mut |l| log.push(l.to_string())).unwrap();
    assert_eq!(server.hits().len(), 2);
    assert!(log.iter().any(|l| l.contains("HTTP status 404")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("MD5 verified")), "{log:?}");
    let mut want: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(entries(&to), want, "exactly the six files");
    assert_eq!(
        entries(&parent.join("data")),
        vec!["cifar10"],
        "no temporary folder left"
    );
    let d = cifar::load_dir(&to).unwrap();
    assert_eq!((d.train.count, d.test.count), (9, 3));
    assert_eq!(
        std::fs::read(to.join(TRAIN_FILES[2])).unwrap(),
        valid_files()[2]
    );
    // Again: complete and valid, so no request.
    log.clear();
    fetch::fetch_archive(&to, &mirrors, &spec, &mut |l| log.push(l.to_string())).unwrap();
    assert_eq!(server.hits().len(), 2);
    assert!(log.iter().all(|l| l.contains("already present")), "{log:?}");
    std::fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn fetch_archive_wrong_md5_writes_nothing() {
    let body = archive();
    let got = fetch::md5_hex(&body);
    let mut routes = HashMap::new();
    routes.insert("/cifar-10-binary.tar.gz".to_string(), body);
    let server = Server::start(routes, 4);
    let parent = tmpdir("fetch-md5");
    let to = parent.join("cifar10");
    // The official MD5, which the generated archive does not have.
    let err = fetch::fetch_archive(
        &to,
        std::slice::from_ref(&server.base),
        &CIFAR10_ARCHIVE,
        &mut |_| {},
    )
    .unwrap_err();
    match &err {
        FetchError::AllMirrorsFailed { attempts, .. } => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(
                attempts[0].error,
                AttemptError::Md5Mismatch {
                    expected: CIFAR10_ARCHIVE.md5.to_string(),
                    got: got.clone()
                }
            );
        }
        e => panic!("unexpected error {e}"),
    }
    assert_mentions(
        &err,
        &[
            "cifar-10-binary.tar.gz",
            "MD5 mismatch",
            CIFAR10_ARCHIVE.md5,
            &got,
        ],
    );
    assert!(
        entries(&parent).is_empty(),
        "left behind: {:?}",
        entries(&parent)
    );
    std::fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn fetch_archive_truncated_or_incomplete_writes_nothing() {
    let full = archive();
    // Cut inside the data: the MD5 is that of the cut bytes, so the unpacking must notice.
    let cut = full[..full.len() / 2].to_vec();
    // A whole archive that lacks the test batch.
    let files: Vec<(&str, Vec<u8>)> = FILES[..5].iter().copied().zip(valid_files()).collect();
    let lacking = gz(&cifar_tar(&files));
    // A whole archive with a partial record.
    let mut files: Vec<(&str, Vec<u8>)> = FILES.iter().copied().zip(valid_files()).collect();
    files[1].1.pop();
    let partial = gz(&cifar_tar(&files));
    for (body, parts) in [
        (cut, vec!["cannot unpack cifar-10-binary.tar.gz"]),
        (lacking, vec!["lacks cifar-10-batches-bin/test_batch.bin"]),
        (partial, vec!["data_batch_2.bin", "not a whole number"]),
    ] {
        let spec = spec_for(&body);
        let mut routes = HashMap::new();
        routes.insert("/cifar-10-binary.tar.gz".to_string(), body);
        let server = Server::start(routes, 4);
        let parent = tmpdir("fetch-cut");
        let to = parent.join("cifar10");
        let err = fetch::fetch_archive(&to, std::slice::from_ref(&server.base), &spec, &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::AllMirrorsFailed { attempts, .. }
                if matches!(attempts[0].error, AttemptError::Archive(_))),
            "{err}"
        );
        assert_mentions(&err, &parts);
        assert!(
            entries(&parent).is_empty(),
            "left behind: {:?}",
            entries(&parent)
        );
        std::fs::remove_dir_all(&parent).unwrap();
    }
}

#[test]
fn fetch_archive_respects_an_existing_folder() {
    let body = archive();
    let spec = spec_for(&body);
    let mut routes = HashMap::new();
    routes.insert("/cifar-10-binary.tar.gz".to_string(), body);
    let server = Server::start(routes, 4);
    let parent = tmpdir("fetch-existing");
    // A folder with other things in it is never touched.
    let busy = parent.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("data_batch_1.bin"), records(1, 1)).unwrap();
    let err = fetch::fetch_archive(
        &busy,
        std::slice::from_ref(&server.base),
        &spec,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, FetchError::Occupied { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            &busy.display().to_string(),
            "not a complete CIFAR-10 folder",
        ],
    );
    assert_eq!(entries(&busy), vec!["data_batch_1.bin"]);
    // MNIST's folder is named as such (it got the message meant for a model given the wrong
    // --data, which ended "remove it"), and MNIST is not fetched beside CIFAR-10's files.
    let mnist = parent.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(mnist.join(f), b"x").unwrap();
    }
    let err = fetch::fetch_archive(
        &mnist,
        std::slice::from_ref(&server.base),
        &spec,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} holds MNIST; CIFAR-10 goes into a folder of its own: choose another --to",
            mnist.display()
        )
    );
    let err = fetch::fetch(
        &busy,
        std::slice::from_ref(&server.base),
        &fetch::MNIST_FILES,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} holds CIFAR-10; MNIST goes into a folder of its own: choose another --to",
            busy.display()
        )
    );
    assert_eq!(entries(&busy), vec!["data_batch_1.bin"]);
    // Nor MNIST into a run's folder.
    let run = parent.join("a-run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), b"{}\n").unwrap();
    let err = fetch::fetch(
        &run,
        std::slice::from_ref(&server.base),
        &fetch::MNIST_FILES,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} holds a dst run (its checkpoint or metrics log); MNIST goes into a folder of its \
             own: choose another --to",
            run.display()
        )
    );
    assert_eq!(entries(&run), vec!["metrics.jsonl"]);
    let err = fetch::fetch_archive(&run, std::slice::from_ref(&server.base), &spec, &mut |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} holds a dst run (its checkpoint or metrics log); CIFAR-10 goes into a folder of \
             its own: choose another --to",
            run.display()
        )
    );
    assert_eq!(entries(&run), vec!["metrics.jsonl"]);
    std::fs::remove_dir_all(&run).unwrap();
    assert!(
        server.hits().is_empty(),
        "no download for an occupied folder"
    );
    std::fs::remove_dir_all(&mnist).unwrap();
    // An empty folder is filled; a leftover temporary folder of an interrupted fetch goes.
    let empty = parent.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(parent.join(".empty.part")).unwrap();
    std::fs::write(parent.join(".empty.part/junk"), b"x").unwrap();
    fetch::fetch_archive(
        &empty,
        std::slice::from_ref(&server.base),
        &spec,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(entries(&empty).len(), 6);
    assert_eq!(entries(&parent), vec!["busy", "empty"]);
    std::fs::remove_dir_all(&parent).unwrap();
}

/// `dst fetch cifar10` takes a folder as present only when it holds the whole dataset: six valid
/// files of a few records each (a subset, or a cut copy) are an incomplete folder, named, left
/// alone and not downloaded over (it was once reported ready).
#[test]
fn fetch_archive_does_not_take_a_subset_for_cifar10() {
    let parent = tmpdir("fetch-subset");
    let to = parent.join("cifar10");
    std::fs::create_dir_all(&to).unwrap();
    for (f, bytes) in FILES.iter().zip(valid_files()) {
        std::fs::write(to.join(f), bytes).unwrap();
    }
    cifar::check_dir(&to).unwrap();
    let err = fetch::fetch_archive(&to, &[], &CIFAR10_ARCHIVE, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::Occupied { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "not a complete CIFAR-10 folder",
            "where CIFAR-10's file holds 10000",
        ],
    );
    assert_eq!(entries(&to).len(), 6);
    std::fs::remove_dir_all(&parent).unwrap();
}

/// A complete CIFAR-10 copy as its archive unpacks (`DIR/cifar-10-batches-bin/`), which training
/// reads from `--data DIR`, is present for `fetch cifar10 --to DIR` too (it was refused as a
/// folder missing data_batch_1.bin). Full-size files of zero bytes: every record label 0.
#[test]
fn fetch_archive_takes_the_archives_own_layout_as_present() {
    let parent = tmpdir("fetch-nested");
    let to = parent.join("cifar10");
    let inner = to.join(cifar::ARCHIVE_FOLDER);
    std::fs::create_dir_all(&inner).unwrap();
    for f in FILES {
        let file = std::fs::File::create(inner.join(f)).unwrap();
        file.set_len((cifar::RECORDS_PER_FILE * RECORD) as u64)
            .unwrap();
    }
    let mut log = Vec::new();
    fetch::fetch_archive(&to, &[], &CIFAR10_ARCHIVE, &mut |l| log.push(l.to_string())).unwrap();
    // Kept, saying what was checked (sizes: files of zeros of the right size pass; the MD5 is
    // the archive's, and the help once said the files "verify").
    assert!(
        log.iter().any(|l| l
            .contains("already present (six batch files of 10,000 records each, checked by size")),
        "{log:?}"
    );
    // One file short of complete: that file is named, in the folder that lacks it.
    std::fs::remove_file(inner.join("test_batch.bin")).unwrap();
    let err = fetch::fetch_archive(&to, &[], &CIFAR10_ARCHIVE, &mut |_| {}).unwrap_err();
    assert_mentions(&err, &["cifar-10-batches-bin: missing", "test_batch.bin"]);
    assert!(!err.to_string().contains("data_batch_1.bin"), "{err}");
    std::fs::remove_dir_all(&parent).unwrap();
}

/// `fetch cifar10 --to` a file, or a folder under a file, is refused naming the file; a fetch
/// that fails removes the folders it made above `--to` (no network: every mirror fails).
#[test]
fn fetch_archive_names_a_file_in_the_way_and_leaves_no_folders() {
    let parent = tmpdir("fetch-in-the-way");
    let file = parent.join("afile");
    std::fs::write(&file, b"mine").unwrap();
    let spec = spec_for(b"x");
    let err = fetch::fetch_archive(&file, &[], &spec, &mut |_| {}).unwrap_err();
    assert_mentions(&err, &["afile", "it is a file, not a folder"]);
    let err = fetch::fetch_archive(&file.join("sub"), &[], &spec, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::UnderFile { .. }), "{err}");
    assert_mentions(&err, &["the folder cannot be made", "afile is a file"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    // Nothing listens on port 9 here: the mirror fails, and fc/new/ goes with fc/.
    let to = parent.join("fc/new/cifar10");
    let mirrors = ["http://127.0.0.1:9/".to_string()];
    fetch::fetch_archive(&to, &mirrors, &spec, &mut |_| {}).unwrap_err();
    assert!(!parent.join("fc").exists(), "{:?}", entries(&parent));
    std::fs::remove_dir_all(&parent).unwrap();
}
