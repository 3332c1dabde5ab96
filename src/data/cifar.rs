//! CIFAR-10, binary version: `data_batch_1.bin` ... `data_batch_5.bin` (train, in that order)
//! and `test_batch.bin` (test). Each file is a sequence of 3073-byte records: one label byte
//! (0..9), then 3072 pixel bytes, the 1024 red, 1024 green and 1024 blue values of a 32x32 image,
//! each plane row-major. The official files hold 10,000 records each; any whole number of
//! records (at least one) is accepted, so a subset works too. Images are kept as stored (CHW).

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Normalize, TrainTest, CLASSES};

/// Image side (32 x 32).
pub const SIDE: usize = 32;
/// Colour planes, in the order R, G, B.
pub const CHANNELS: usize = 3;
/// Pixel bytes per image.
pub const PIXELS: usize = CHANNELS * SIDE * SIDE;
/// Bytes per record: the label, then the pixels.
pub const RECORD: usize = 1 + PIXELS;

/// The five training files, in the order their records are concatenated.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Every file, train then test.
pub const FILES: [&str; 6] = [
    TRAIN_FILES[0],
    TRAIN_FILES[1],
    TRAIN_FILES[2],
    TRAIN_FILES[3],
    TRAIN_FILES[4],
    TEST_FILE,
];
/// The folder the official archive holds them in (also looked for inside `--data DIR`).
pub const ARCHIVE_FOLDER: &str = "cifar-10-batches-bin";

/// Per-channel mean (R, G, B) of the normalisation, the paper's code's values (METHOD.md
/// section 5).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the normalisation, the paper's code's values (METHOD.md
/// section 5; the per-pixel standard deviation of the training set would be about 0.2470,
/// 0.2435, 0.2616, which many other codes use).
pub const STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

/// CIFAR-10's normalisation.
pub fn normalize() -> Normalize {
    Normalize {
        mean: MEAN.to_vec(),
        std: STD.to_vec(),
    }
}

/// Splits one file's bytes into pixels and labels, checking that it is a non-empty whole number
/// of records and that every label is below 10. `name` names the file in errors.
pub fn parse_batch(bytes: &[u8], name: &str) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::PartialRecord {
            file: name.to_string(),
            size: bytes.len(),
            record: RECORD,
        });
    }
    if bytes.is_empty() {
        return Err(DataError::Empty {
            file: name.to_string(),
            dims: vec![0, CHANNELS, SIDE, SIDE],
        });
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (record, r) in bytes.chunks_exact(RECORD).enumerate() {
        if r[0] as usize >= CLASSES {
            return Err(DataError::RecordLabel {
                file: name.to_string(),
                record,
                offset: record * RECORD,
                value: r[0],
                classes: CLASSES,
            });
        }
        labels.push(r[0]);
        images.extend_from_slice(&r[1..]);
    }
    Ok((images, labels))
}

/// Reads and checks one file; returns (pixels, labels).
pub fn read_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        file: path.display().to_string(),
        source,
    })?;
    parse_batch(&bytes, &path.display().to_string())
}

/// The folder that holds the six files: `dir` itself, or `dir/cifar-10-batches-bin` when only
/// that has them (the archive unpacked as it is). Otherwise an error naming the missing files.
pub fn locate(dir: &Path) -> Result<PathBuf, DataError> {
    super::check_folder(dir, "CIFAR-10")?;
    let missing = |d: &Path| -> Vec<String> {
        FILES
            .iter()
            .filter(|f| !d.join(f).is_file())
            .map(|f| f.to_string())
            .collect()
    };
    let here = missing(dir);
    if here.is_empty() {
        return Ok(dir.to_path_buf());
    }
    let inner = dir.join(ARCHIVE_FOLDER);
    if inner.is_dir() {
        let there = missing(&inner);
        if there.is_empty() {
            return Ok(inner);
        }
        // The archive's folder holds some of them and `dir` none: what it lacks.
        if there.len() < FILES.len() && here.len() == FILES.len() {
            return Err(DataError::Missing {
                dir: inner.display().to_string(),
                dataset: "CIFAR-10",
                missing: there,
            });
        }
    }
    if !holds_any(dir) && super::holds_mnist(dir) {
        return Err(DataError::OtherDataset {
            dir: dir.display().to_string(),
            found: super::DatasetKind::Mnist,
            wanted: super::DatasetKind::Cifar10,
            model: None,
            expected: here,
        });
    }
    Err(DataError::Missing {
        dir: dir.display().to_string(),
        dataset: "CIFAR-10",
        missing: here,
    })
}

/// The size of the file `p` in bytes.
fn file_size(p: &Path) -> Result<usize, DataError> {
    Ok(std::fs::metadata(p)
        .map_err(|source| DataError::Io {
            file: p.display().to_string(),
            source,
        })?
        .len() as usize)
}

/// The six files of `dir` (as `locate` found it) each a non-empty whole number of records whose
/// labels are classes, from their sizes and their label bytes alone (one byte per record, not
/// the pixels): a truncated or damaged copy is named before the adapter opens.
pub fn check_files(dir: &Path) -> Result<(), DataError> {
    for f in FILES {
        let p = dir.join(f);
        let size = file_size(&p)?;
        if !size.is_multiple_of(RECORD) {
            return Err(DataError::PartialRecord {
                file: p.display().to_string(),
                size,
                record: RECORD,
            });
        }
        if size == 0 {
            return Err(DataError::Empty {
                file: p.display().to_string(),
                dims: vec![0, CHANNELS, SIDE, SIDE],
            });
        }
        check_labels(&p, size / RECORD)?;
    }
    Ok(())
}

/// The label byte of each of the `records` records of `p` below 10 (as `parse_batch` checks),
/// read one byte per record.
fn check_labels(p: &Path, records: usize) -> Result<(), DataError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| DataError::Io {
        file: p.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(p).map_err(io)?;
    let mut label = [0u8; 1];
    for record in 0..records {
        let offset = record * RECORD;
        f.seek(SeekFrom::Start(offset as u64)).map_err(io)?;
        f.read_exact(&mut label).map_err(io)?;
        if label[0] as usize >= CLASSES {
            return Err(DataError::RecordLabel {
                file: p.display().to_string(),
                record,
                offset,
                value: label[0],
                classes: CLASSES,
            });
        }
    }
    Ok(())
}

/// Whether `dir` (or its `cifar-10-batches-bin`) holds any of the six files.
pub fn holds_any(dir: &Path) -> bool {
    let inner = dir.join(ARCHIVE_FOLDER);
    FILES
        .iter()
        .any(|f| dir.join(f).is_file() || inner.join(f).is_file())
}

/// A dataset of CIFAR-10 images.
fn dataset(images: Vec<u8>, labels: Vec<u8>, augment: bool) -> Dataset {
    Dataset {
        count: labels.len(),
        images,
        labels,
        rows: SIDE,
        cols: SIDE,
        classes: CLASSES,
        channels: CHANNELS,
        normalize: Some(normalize()),
        augment,
    }
}

/// Loads CIFAR-10 from `dir` (see [`locate`]): train = the five batches in order, augmented in
/// training; test = `test_batch.bin`, never augmented. Both normalised per channel.
pub fn load_dir(dir: &Path) -> Result<TrainTest, DataError> {
    let dir = locate(dir)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in TRAIN_FILES {
        let (i, l) = read_batch(&dir.join(f))?;
        images.extend_from_slice(&i);
        labels.extend_from_slice(&l);
    }
    let (ti, tl) = read_batch(&dir.join(TEST_FILE))?;
    Ok(TrainTest {
        train: dataset(images, labels, true),
        test: dataset(ti, tl, false),
        source: format!("CIFAR-10 in {}", dir.display()),
    })
}

/// Only CIFAR-10's test set from `dir` (or its `cifar-10-batches-bin`): `test_batch.bin`, all
/// that scoring a model needs (`dst eval`). The training set comes back empty.
pub fn load_test_dir(dir: &Path) -> Result<TrainTest, DataError> {
    super::check_folder(dir, "CIFAR-10")?;
    // The folder training reads (`locate`) where it holds all six, else the first with the file.
    let inner = dir.join(ARCHIVE_FOLDER);
    let found = locate(dir).ok().or_else(|| {
        [dir.to_path_buf(), inner]
            .into_iter()
            .find(|d| d.join(TEST_FILE).is_file())
    });
    let Some(dir) = found else {
        // A folder of MNIST is named as such; otherwise the one file wanted.
        return Err(match locate(dir) {
            Err(e @ DataError::OtherDataset { .. }) => e,
            _ => DataError::Missing {
                dir: dir.display().to_string(),
                dataset: "CIFAR-10",
                missing: vec![TEST_FILE.to_string()],
            },
        });
    };
    let (ti, tl) = read_batch(&dir.join(TEST_FILE))?;
    Ok(TrainTest {
        train: dataset(Vec::new(), Vec::new(), true),
        test: dataset(ti, tl, false),
        source: format!("CIFAR-10 in {}", dir.display()),
    })
}

/// Records in each of CIFAR-10's six batch files as published.
pub const RECORDS_PER_FILE: usize = 10_000;

/// `check_dir` of the folder `locate` finds (`dir` or, as the archive unpacks, its
/// `cifar-10-batches-bin`), and each file as large as the published one (`RECORDS_PER_FILE`
/// records): the whole dataset, not a valid subset (`dst fetch cifar10` takes such a folder as
/// present, as training reads it).
pub fn check_complete(dir: &Path) -> Result<(), DataError> {
    let dir = &locate(dir)?;
    check_dir(dir)?;
    for f in FILES {
        let p = dir.join(f);
        let size = file_size(&p)?;
        if size != RECORDS_PER_FILE * RECORD {
            return Err(DataError::Incomplete {
                file: p.display().to_string(),
                dataset: "CIFAR-10",
                records: size / RECORD,
                want: RECORDS_PER_FILE,
            });
        }
    }
    Ok(())
}

/// Whether `dir` holds the six files, each a valid, non-empty set of records (reads them all).
pub fn check_dir(dir: &Path) -> Result<(), DataError> {
    for f in FILES {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(DataError::Missing {
                dir: dir.display().to_string(),
                dataset: "CIFAR-10",
                missing: vec![f.to_string()],
            });
        }
        read_batch(&p)?;
    }
    Ok(())
}
