// Tests of the MNIST loader (IDX parsing and validation), the embedded subset, and
// `fetch` against a loopback HTTP server.

#[path = "common/http.rs"]
mod http;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Server;

use dst::data::fetch::{self, AttemptError, FetchError, FileSpec};
use dst::data::idx::{self, IdxArray};
use dst::data::{load_dir, load_embedded, DataError, Dataset, MNIST_NAMES};

// ---------------------------------------------------------------- helpers

/// A fresh, empty directory under the system temp dir, unique to this process and call.
fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dst-data-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(type_code: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const ROWS: u32 = 4;
const COLS: u32 = 3;

/// Valid synthetic images (n x ROWS x COLS) and labels (i % 10), as raw IDX bytes.
fn images(n: u32, seed: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..n * ROWS * COLS)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    idx_bytes(8, &[n, ROWS, COLS], &payload)
}

fn labels(n: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    idx_bytes(8, &[n], &payload)
}

/// The four standard files' raw contents: 12 train, 5 test examples.
fn valid_set() -> [Vec<u8>; 4] {
    [images(12, 1), labels(12), images(5, 2), labels(5)]
}

/// Writes `files` (order of MNIST_NAMES) into `dir`, as `NAME.gz` if `gzip` else `NAME`.
fn write_set(dir: &Path, files: &[Vec<u8>; 4], gzip: bool) {
    for (name, bytes) in MNIST_NAMES.iter().zip(files) {
        if gzip {
            std::fs::write(dir.join(format!("{name}.gz")), gz(bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// Writes a valid set with file `which` replaced by `bad`, loads it, and returns the error.
fn load_with(which: usize, bad: Vec<u8>, gzip: bool) -> DataError {
    let dir = tmpdir("bad");
    let mut files = valid_set();
    files[which] = bad;
    write_set(&dir, &files, gzip);
    let err = load_dir(&dir).expect_err("corrupt data must not load");
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

fn assert_mentions(err: &dyn std::fmt::Display, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

// ---------------------------------------------------------------- loader

#[test]
fn raw_and_gzip_load_identically() {
    let (raw_dir, gz_dir) = (tmpdir("raw"), tmpdir("gz"));
    write_set(&raw_dir, &valid_set(), false);
    write_set(&gz_dir, &valid_set(), true);
    let a = load_dir(&raw_dir).unwrap();
    let b = load_dir(&gz_dir).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    assert_eq!((a.train.count, a.train.rows, a.train.cols), (12, 4, 3));
    assert_eq!((a.test.count, a.train.classes), (5, 10));
    assert_eq!(a.train.pixels(), 12);
    assert_eq!(a.train.images, images(12, 1)[16..].to_vec());
    assert_eq!(a.train.labels, labels(12)[8..].to_vec());
    assert_eq!(a.test.labels, vec![0, 1, 2, 3, 4]);
    // Not MNIST's files (a set in its format): said so where the data is described.
    assert_eq!(
        a.source,
        format!("{} ({})", raw_dir.display(), dst::data::NOT_MNIST)
    );
    std::fs::remove_dir_all(&raw_dir).unwrap();
    std::fs::remove_dir_all(&gz_dir).unwrap();
}

/// The SHA-256 of the IDX files a set was read from, made again from it, are those of the files
/// (what tells MNIST's own files from others in their format); the embedded subset, a part of
/// MNIST, is not MNIST's files.
#[test]
fn idx_hashes_are_those_of_the_files_read() {
    let dir = tmpdir("idx-sha");
    let set = valid_set();
    write_set(&dir, &set, true);
    let m = load_dir(&dir).unwrap();
    let sha = |i: usize| fetch::sha256_hex(&set[i]);
    assert_eq!(dst::data::idx_sha256(&m.train), (sha(0), sha(1)));
    assert_eq!(dst::data::idx_sha256(&m.test), (sha(2), sha(3)));
    assert!(!dst::data::is_mnist_file(&m.train, 0));
    let embedded = load_embedded();
    assert!(!dst::data::is_mnist_file(&embedded.test, 2));
    // The note such a folder's description carries reads back off it.
    let place = dir.display().to_string();
    assert_eq!(dst::data::not_mnist(&m.source), (place.as_str(), true));
    assert_eq!(dst::data::not_mnist(&place), (place.as_str(), false));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = tmpdir("missing");
    let files = valid_set();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz(&files[0])).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &files[3]).unwrap();
    let err = load_dir(&dir).unwrap_err();
    assert!(matches!(err, DataError::Missing { ref missing, .. } if missing.len() == 2));
    assert_mentions(
        &err,
        &[
            &dir.display().to_string(),
            "train-labels-idx1-ubyte (or train-labels-idx1-ubyte.gz)",
            "t10k-images-idx3-ubyte",
        ],
    );
    assert!(!err.to_string().contains("train-images"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_payload_is_an_error() {
    for gzip in [false, true] {
        let mut bad = images(12, 1);
        bad.pop();
        let err = load_with(0, bad, gzip);
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: 144,
                got: 143,
                ..
            }
        ));
        assert_mentions(
            &err,
            &["train-images-idx3-ubyte", "truncated", "144", "143"],
        );
    }
}

/// Bytes after a whole gzip stream are named as trailing data (they were "invalid gzip
/// header", as if the stream were damaged); a stream cut short is still corrupt or truncated.
#[test]
fn bytes_after_the_gzip_stream_are_named() {
    let mut bytes = gz(&labels(5));
    bytes.extend_from_slice(b"\0\0junk");
    let err = idx::gunzip(&bytes, "t.gz").unwrap_err();
    assert_mentions(&err, &["t.gz", "followed by 6 bytes that are not gzip"]);
    let mut cut = gz(&labels(5));
    cut.truncate(cut.len() - 4);
    let err = idx::gunzip(&cut, "t.gz").unwrap_err();
    assert!(!err.to_string().contains("followed by"), "{err}");
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bad = labels(5);
    bad.push(3);
    let err = load_with(3, bad, false);
    assert!(matches!(
        err,
        DataError::TrailingBytes {
            expected: 5,
            got: 6,
            ..
        }
    ));
    assert_mentions(&err, &["t10k-labels-idx1-ubyte", "trailing bytes"]);
}

#[test]
fn wrong_magic_and_type_are_errors() {
    let mut bad = images(5, 2);
    bad[0] = 0x50;
    let err = load_with(2, bad, true);
    assert!(matches!(err, DataError::BadMagic { .. }));
    assert_mentions(&err, &["t10k-images-idx3-ubyte.gz", "magic"]);

    let mut bad = labels(12);
    bad[2] = 0x0d; // float
    let err = load_with(1, bad, false);
    assert!(matches!(err, DataError::UnsupportedType { code: 0x0d, .. }));
    assert_mentions(&err, &["train-labels-idx1-ubyte", "element type 0x0d"]);
}

#[test]
fn wrong_ndim_is_an_error() {
    // Images given as 2-dim (count x pixels).
    let payload = vec![0u8; 12 * 12];
    let err = load_with(0, idx_bytes(8, &[12, 12], &payload), false);
    assert!(matches!(err, DataError::WrongNdim { got: 2, .. }));
    assert_mentions(&err, &["train-images-idx3-ubyte", "dimensions", "images"]);

    // Labels given as 2-dim.
    let err = load_with(3, idx_bytes(8, &[5, 1], &[0, 1, 2, 3, 4]), false);
    assert!(matches!(err, DataError::WrongNdim { got: 2, .. }));
    assert_mentions(&err, &["t10k-labels-idx1-ubyte", "labels"]);

    // A labels file with an images header (its payload too short for those dimensions): named
    // as the wrong kind of file, before the payload's size is checked. Gzip alike.
    for gzip in [false, true] {
        let err = load_with(1, idx_bytes(8, &[12, 28, 28], &[0; 12]), gzip);
        assert!(matches!(err, DataError::WrongNdim { got: 3, .. }), "{err}");
        assert_mentions(
            &err,
            &["train-labels-idx1-ubyte", "labels", "expected 1, got 3"],
        );
    }
    // And images with a labels header.
    let err = load_with(2, idx_bytes(8, &[5], &[0; 5 * 28 * 28]), false);
    assert!(matches!(err, DataError::WrongNdim { got: 1, .. }), "{err}");
    assert_mentions(
        &err,
        &["t10k-images-idx3-ubyte", "images", "expected 3, got 1"],
    );
}

#[test]
fn count_mismatch_is_an_error() {
    let err = load_with(1, labels(11), false);
    assert!(matches!(
        err,
        DataError::CountMismatch {
            n_images: 12,
            n_labels: 11,
            ..
        }
    ));
    assert_mentions(
        &err,
        &[
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "mismatch",
        ],
    );
}

#[test]
fn label_out_of_range_reports_first_bad_index() {
    let mut bad = labels(12);
    bad[8 + 3] = 10;
    bad[8 + 7] = 200;
    let err = load_with(1, bad, true);
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            index: 3,
            value: 10,
            ..
        }
    ));
    assert_mentions(
        &err,
        &[
            "train-labels-idx1-ubyte.gz",
            "out of range",
            "index 3 (counting from 0)",
            "value 10",
        ],
    );
}

#[test]
fn truncated_gzip_is_an_error() {
    let dir = tmpdir("gztrunc");
    write_set(&dir, &valid_set(), true);
    let path = dir.join("t10k-images-idx3-ubyte.gz");
    let full = std::fs::read(&path).unwrap();
    // Cut inside the deflate data, and separately drop only the CRC/length trailer.
    for cut in [full.len() / 2, full.len() - 4] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "cut {cut}: {err}");
        assert_mentions(&err, &["t10k-images-idx3-ubyte.gz", "gzip"]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_dataset_is_an_error() {
    let err = load_with(2, images(0, 0), false);
    // The image file is checked first.
    assert!(matches!(err, DataError::Empty { .. }));
    assert_mentions(&err, &["t10k-images-idx3-ubyte", "holds no samples"]);
}

#[test]
fn parse_idx_header_edge_cases() {
    let err = idx::parse_idx(&[0, 0], "short.idx").unwrap_err();
    assert!(matches!(
        err,
        DataError::HeaderTruncated {
            need: 4,
            got: 2,
            ..
        }
    ));
    assert_mentions(&err, &["short.idx", "header truncated"]);

    // ndim 3 but only one dimension's size present.
    let err = idx::parse_idx(&[0, 0, 8, 3, 0, 0, 0, 1], "hdr.idx").unwrap_err();
    assert!(matches!(
        err,
        DataError::HeaderTruncated {
            need: 16,
            got: 8,
            ..
        }
    ));

    let err = idx::parse_idx(&[0, 0, 8, 0], "zero.idx").unwrap_err();
    assert!(matches!(err, DataError::WrongNdim { got: 0, .. }));

    // A product of dimensions that overflows usize must be an error, not a panic.
    let huge = idx_bytes(8, &[u32::MAX, u32::MAX, u32::MAX], &[]);
    let err = idx::parse_idx(&huge, "huge.idx").unwrap_err();
    assert!(matches!(err, DataError::Overflow { .. }));
    assert_mentions(&err, &["huge.idx", "overflow"]);

    // Not gzip and not IDX.
    let err = idx::parse_idx(b"\x1f\x8bnot really gzip", "fake.gz").unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }));

    // Valid, parsed directly.
    let a = idx::parse_idx(&gz(&labels(3)), "ok").unwrap();
    assert_eq!(
        a,
        IdxArray {
            dims: vec![3],
            data: vec![0, 1, 2]
        }
    );
}

#[test]
fn read_idx_names_unreadable_file() {
    let path = std::env::temp_dir().join("dst-data-test-does-not-exist.idx");
    let err = idx::read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert_mentions(&err, &["dst-data-test-does-not-exist.idx", "cannot read"]);
}

#[test]
fn limit_takes_a_prefix() {
    let d = Dataset::from_idx(
        idx::parse_idx(&images(12, 1), "i").unwrap(),
        idx::parse_idx(&labels(12), "l").unwrap(),
        "i",
        "l",
    )
    .unwrap();
    let l = d.limit(5);
    assert_eq!((l.count, l.rows, l.cols, l.classes), (5, 4, 3, 10));
    assert_eq!(l.images, d.images[..5 * 12].to_vec());
    assert_eq!(l.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(d.limit(12), d);
    assert_eq!(d.limit(1000), d);
    assert_eq!(d.limit(0).images.len(), 0);
}

// ---------------------------------------------------------------- embedded subset

#[test]
fn embedded_subset_is_real_mnist() {
    let m = load_embedded();
    assert_eq!(m.source, "embedded MNIST subset (10000 train / 2000 test)");
    for (d, n) in [(&m.train, 10000), (&m.test, 2000)] {
        assert_eq!((d.count, d.rows, d.cols, d.classes), (n, 28, 28, 10));
        assert_eq!(d.images.len(), n * 784);
        assert_eq!(d.labels.len(), n);
        let mut hist = [0usize; 10];
        for &l in &d.labels {
            hist[l as usize] += 1;
        }
        // Every digit present at roughly its MNIST share (each is 9-11% of the data).
        for (digit, &h) in hist.iter().enumerate() {
            assert!(
                h * 100 > n * 7 && h * 100 < n * 14,
                "digit {digit}: {h} of {n}"
            );
        }
        // Mean MNIST pixel intensity is about 0.1307 * 255 = 33.3.
        let mean = d.images.iter().map(|&p| p as f64).sum::<f64>() / d.images.len() as f64;
        assert!((30.0..37.0).contains(&mean), "mean pixel {mean}");
    }
    // The well-known first labels of the MNIST training and test sets.
    assert_eq!(m.train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(m.test.labels[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
}

#[test]
fn embedded_assets_match_documented_hashes() {
    // SHA-256 of the decompressed files, as listed in assets/README.md.
    let expected = [
        "2889698e6bc3614913e76901316712919d1998fc2b44512451bfe65bc1e668b1",
        "651e38e2ac0632f5113ec18f1df4977117f953197819034009971a6675a0df78",
        "3f6bd66dee48df299584c67669bceee490faa25f931496bd7473b42106d7daed",
        "7b098e5f6a3065807cebeabf36fb1724a8aff19f2673ac08b4923e0e8c715bce",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-subset");
    for (name, sha) in MNIST_NAMES.iter().zip(expected) {
        let bytes = std::fs::read(dir.join(format!("{name}.gz"))).unwrap();
        let raw = idx::gunzip(&bytes, name).unwrap();
        assert_eq!(fetch::sha256_hex(&raw), sha, "{name}");
    }
    // load_dir on the asset directory gives the same data as the embedded copy.
    let from_dir = load_dir(&dir).unwrap();
    let embedded = load_embedded();
    assert_eq!(from_dir.train, embedded.train);
    assert_eq!(from_dir.test, embedded.test);
}

// ---------------------------------------------------------------- fetch

#[test]
fn sha256_hex_known_vector() {
    assert_eq!(
        fetch::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(fetch::MNIST_FILES.len(), 4);
    for (spec, name) in fetch::MNIST_FILES.iter().zip(MNIST_NAMES) {
        assert_eq!(spec.name, name);
        assert_eq!(spec.sha256.len(), 64);
    }
}

/// A manifest for the four standard names over a valid synthetic set, and the routes
/// serving it under `prefix`.
fn served_set(prefix: &str) -> (Vec<FileSpec>, HashMap<String, Vec<u8>>) {
    let mut specs = Vec::new();
    let mut routes = HashMap::new();
    for (name, raw) in MNIST_NAMES.iter().zip(valid_set()) {
        let sha: &'static str = Box::leak(fetch::sha256_hex(&raw).into_boxed_str());
        specs.push(FileSpec { name, sha256: sha });
        routes.insert(format!("{prefix}{name}.gz"), gz(&raw));
    }
    (specs, routes)
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

#[test]
fn fetch_downloads_verifies_then_skips() {
    let (specs, routes) = served_set("/mnist/");
    let server = Server::start(routes, 16);
    let dir = tmpdir("fetch-ok").join("nested/dir");
    let mut log = Vec::new();
    fetch::fetch(
        &dir,
        &[format!("{}/mnist/", server.base)],
        &specs,
        &mut |s| log.push(s.to_string()),
    )
    .unwrap();
    let mut want: Vec<String> = MNIST_NAMES.iter().map(|n| format!("{n}.gz")).collect();
    want.sort();
    assert_eq!(entries(&dir), want, "exactly the four files, no temp files");
    assert_eq!(server.hits().len(), 4);
    let m = load_dir(&dir).unwrap();
    assert_eq!((m.train.count, m.test.count), (12, 5));
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("SHA-256 verified"))
            .count(),
        4
    );

    // The same fetch again, its log lines collected.
    let again = |log: &mut Vec<String>| {
        log.clear();
        fetch::fetch(
            &dir,
            &[format!("{}/mnist/", server.base)],
            &specs,
            &mut |s| log.push(s.to_string()),
        )
    };
    // Second run: everything present and verified, no request made.
    again(&mut log).unwrap();
    assert_eq!(server.hits().len(), 4);
    assert_eq!(log.len(), 4);
    assert!(
        log.iter().all(|l| l.contains("ok, already present")),
        "{log:?}"
    );

    // A raw file beside its verified .gz is what training reads: the real one is verified too;
    // a damaged one is an error naming it (once the folder was said to be ready), left alone,
    // and nothing is downloaded.
    let raw = dir.join(MNIST_NAMES[0]);
    std::fs::write(&raw, &valid_set()[0]).unwrap();
    again(&mut log).unwrap();
    assert!(
        log[0].contains("raw file present, SHA-256 verified"),
        "{log:?}"
    );
    let mut damaged = valid_set()[0].clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&raw, &damaged).unwrap();
    let err = again(&mut log).unwrap_err().to_string();
    assert!(
        err.contains(&raw.display().to_string()) && err.contains("dst reads this raw file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&raw).unwrap(), damaged);
    assert_eq!(server.hits().len(), 4);
    // A verified raw file without its .gz: the folder is ready, nothing is downloaded.
    std::fs::write(&raw, &valid_set()[0]).unwrap();
    std::fs::remove_file(dir.join(format!("{}.gz", MNIST_NAMES[0]))).unwrap();
    again(&mut log).unwrap();
    assert_eq!(server.hits().len(), 4, "{log:?}");
    assert!(!log.iter().any(|l| l.contains("downloading")), "{log:?}");
    assert_eq!(load_dir(&dir).unwrap().train.count, 12);
    std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
}

#[test]
fn fetch_falls_back_to_next_mirror_and_replaces_bad_file() {
    let (specs, routes) = served_set("/good/");
    let server = Server::start(routes, 16);
    let dir = tmpdir("fetch-fallback");
    // A present but corrupt file must be downloaded again.
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), b"garbage").unwrap();
    let mut log = Vec::new();
    // First mirror 404s everything; the second has no trailing slash.
    let mirrors = [
        format!("{}/missing/", server.base),
        format!("{}/good", server.base),
    ];
    fetch::fetch(&dir, &mirrors, &specs, &mut |s| log.push(s.to_string())).unwrap();
    let hits = server.hits();
    assert_eq!(hits.len(), 8, "{hits:?}");
    assert_eq!(
        hits.iter().filter(|h| h.starts_with("/missing/")).count(),
        4
    );
    assert!(log.iter().any(|l| l.contains("HTTP status 404")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("present but bad")), "{log:?}");
    assert_eq!(entries(&dir).len(), 4);
    let m = load_dir(&dir).unwrap();
    assert_eq!(m.train.labels, (0..12).map(|i| i % 10).collect::<Vec<u8>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A .gz that is a whole IDX file of the right kind but another dataset's (Fashion-MNIST in an
/// MNIST folder) is the user's: refused before any download, left as it was. One cut short (a
/// download interrupted) is downloaded again.
#[test]
fn fetch_keeps_another_datasets_idx_files() {
    let (specs, routes) = served_set("/good/");
    let server = Server::start(routes, 16);
    let dir = tmpdir("fetch-other-data");
    let payload: Vec<u8> = (0..12).map(|i| (i + 1) % 10).collect();
    let other = gz(&idx_bytes(8, &[12], &payload));
    let path = dir.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&path, &other).unwrap();
    let mirrors = [format!("{}/good/", server.base)];
    let err = fetch::fetch(&dir, &mirrors, &specs, &mut |_| {})
        .unwrap_err()
        .to_string();
    let refused = |err: &str| {
        err.contains(&format!(
            "{}: a complete IDX file, but not this one of MNIST's",
            path.display()
        )) && err.contains("another dataset in MNIST's format")
            && err.contains("It is not replaced")
    };
    assert!(refused(&err), "{err}");
    assert!(server.hits().is_empty(), "nothing downloaded");
    assert_eq!(std::fs::read(&path).unwrap(), other);
    assert_eq!(entries(&dir), ["train-labels-idx1-ubyte.gz"]);
    // Not gzipped (training reads it all the same), or an images file under a labels file's
    // name: refused too.
    for kept in [idx_bytes(8, &[12], &payload), gz(&images(12, 3))] {
        std::fs::write(&path, &kept).unwrap();
        let err = fetch::fetch(&dir, &mirrors, &specs, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(refused(&err), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), kept);
    }
    assert!(server.hits().is_empty(), "nothing downloaded");
    // Cut short: no whole IDX file, replaced by the download, which says why.
    std::fs::write(&path, &other[..other.len() / 2]).unwrap();
    let mut lines = Vec::new();
    fetch::fetch(&dir, &mirrors, &specs, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(
        lines.iter().any(
            |l| l.contains("train-labels-idx1-ubyte.gz: present but bad (")
                && l.ends_with("; downloading")
        ),
        "{lines:?}"
    );
    assert_eq!(load_dir(&dir).unwrap().train.count, 12);
    // MNIST's own file unpacked under its .gz name (as a browser may save it): kept, not
    // refused as "not this one" naming itself, nor downloaded again.
    let hits = server.hits().len();
    let unpacked = valid_set()[1].clone();
    std::fs::write(&path, &unpacked).unwrap();
    let mut lines = Vec::new();
    fetch::fetch(&dir, &mirrors, &specs, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("present unpacked under its .gz name, SHA-256 verified")),
        "{lines:?}"
    );
    assert_eq!(server.hits().len(), hits, "nothing downloaded");
    assert_eq!(std::fs::read(&path).unwrap(), unpacked);
    assert_eq!(load_dir(&dir).unwrap().train.count, 12);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fetch_sha_mismatch_leaves_nothing() {
    let raw = labels(7);
    let mut routes = HashMap::new();
    routes.insert("/m/t10k-labels-idx1-ubyte.gz".to_string(), gz(&raw));
    let server = Server::start(routes, 4);
    let dir = tmpdir("fetch-sha");
    let wrong = "00".repeat(32);
    let spec = FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: Box::leak(wrong.clone().into_boxed_str()),
    };
    let err =
        fetch::fetch(&dir, &[format!("{}/m/", server.base)], &[spec], &mut |_| {}).unwrap_err();
    match &err {
        FetchError::AllMirrorsFailed { attempts, .. } => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(
                attempts[0].error,
                AttemptError::ShaMismatch {
                    expected: wrong.clone(),
                    got: fetch::sha256_hex(&raw)
                }
            );
        }
        e => panic!("unexpected error {e}"),
    }
    assert_mentions(
        &err,
        &[
            "t10k-labels-idx1-ubyte.gz",
            // Of the decompressed file: `sha256sum` of the .gz never matches it.
            "SHA-256 mismatch of the decompressed file",
            &wrong,
            &fetch::sha256_hex(&raw),
        ],
    );
    assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fetch_corrupt_gzip_is_an_error() {
    let mut routes = HashMap::new();
    let mut body = gz(&labels(7));
    body.truncate(body.len() - 6);
    routes.insert("/t10k-labels-idx1-ubyte.gz".to_string(), body);
    let server = Server::start(routes, 4);
    let dir = tmpdir("fetch-gz");
    let spec = FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: Box::leak(fetch::sha256_hex(&labels(7)).into_boxed_str()),
    };
    let err = fetch::fetch(
        &dir,
        std::slice::from_ref(&server.base),
        &[spec],
        &mut |_| {},
    )
    .unwrap_err();
    // A folder where the download is to go: named before any download (it was after).
    let blocked = tmpdir("fetch-blocked");
    std::fs::create_dir_all(blocked.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let hits = server.hits().len();
    let spec = FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: Box::leak(fetch::sha256_hex(&labels(7)).into_boxed_str()),
    };
    let refused = fetch::fetch(
        &blocked,
        std::slice::from_ref(&server.base),
        &[spec],
        &mut |_| {},
    )
    .unwrap_err();
    assert_mentions(&refused, &["t10k-labels-idx1-ubyte.gz", "not a file"]);
    assert_eq!(server.hits().len(), hits, "no download");
    std::fs::remove_dir_all(&blocked).unwrap();
    assert_mentions(&err, &["t10k-labels-idx1-ubyte.gz", "gzip"]);
    // The file is named once, where the line starts (the gzip error named it again).
    assert_eq!(
        err.to_string().matches("t10k-labels-idx1-ubyte.gz").count(),
        2,
        "the file and its URL: {err}"
    );
    assert!(entries(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fetch_unreachable_mirrors_are_listed() {
    // Two ports that were just free and are now closed: connection refused.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        })
        .collect();
    let dir = tmpdir("fetch-refused");
    let spec = FileSpec {
        name: "train-labels-idx1-ubyte",
        sha256: "00",
    };
    let err = fetch::fetch(&dir, &closed, &[spec], &mut |_| {}).unwrap_err();
    match &err {
        FetchError::AllMirrorsFailed { attempts, .. } => {
            assert_eq!(attempts.len(), 2);
            assert!(attempts
                .iter()
                .all(|a| matches!(a.error, AttemptError::Network(_))));
        }
        e => panic!("unexpected error {e}"),
    }
    for url in &closed {
        assert_mentions(&err, &[&format!("{url}train-labels-idx1-ubyte.gz")]);
    }
    assert_mentions(&err, &["network error"]);
    assert!(entries(&dir).is_empty());

    let err = fetch::fetch(&dir, &[], &[spec], &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::NoMirrors { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A connection cut inside the body says how far the download got (it said only "network
/// error: Peer disconnected").
#[test]
fn a_download_cut_short_says_how_far_it_got() {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&[7u8; 1000]);
            let _ = stream.flush();
        }
    });
    let dir = tmpdir("fetch-cut");
    let spec = FileSpec {
        name: "train-labels-idx1-ubyte",
        sha256: "00",
    };
    let err = fetch::fetch(&dir, &[base], &[spec], &mut |_| {}).unwrap_err();
    assert_mentions(&err, &["network error", "after 1000 bytes of the body"]);
    assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failed fetch into a folder it made leaves no empty folder; the gzip error names the URL once
/// (the attempt's line) and the file.
#[test]
fn a_failed_fetch_leaves_no_folder_and_names_the_url_once() {
    let mut routes = HashMap::new();
    let mut body = gz(&labels(7));
    body.truncate(body.len() - 6);
    routes.insert("/t10k-labels-idx1-ubyte.gz".to_string(), body);
    let server = Server::start(routes, 4);
    let parent = tmpdir("fetch-new");
    let dir = parent.join("mnist");
    let spec = FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: Box::leak(fetch::sha256_hex(&labels(7)).into_boxed_str()),
    };
    let err = fetch::fetch(
        &dir,
        std::slice::from_ref(&server.base),
        &[spec],
        &mut |_| {},
    )
    .unwrap_err();
    let text = err.to_string();
    let url = format!(
        "{}/t10k-labels-idx1-ubyte.gz",
        server.base.trim_end_matches('/')
    );
    assert_eq!(text.matches(&url).count(), 1, "{text}");
    assert!(!dir.exists(), "the folder it made is left behind");
    // Folders it made above the target go too; a target under a file is named.
    let nested = parent.join("a/b/mnist");
    fetch::fetch(
        &nested,
        &["http://127.0.0.1:9/".to_string()],
        &[spec],
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        !parent.join("a").exists(),
        "the folders it made are left behind"
    );
    std::fs::write(parent.join("afile"), b"mine").unwrap();
    let err = fetch::fetch(&parent.join("afile/mnist"), &[], &[spec], &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the folder cannot be made") && err.contains("afile is a file"),
        "{err}"
    );
    std::fs::remove_dir_all(&parent).unwrap();
}
