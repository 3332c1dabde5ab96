//! Datasets: MNIST (IDX files from a directory, raw or gzip, or the subset embedded in the binary,
//! `assets/mnist-subset`, 10000 train / 2000 test images) and CIFAR-10 (the binary version's
//! batches, `cifar`); the per-epoch crop-and-flip draws of training augmentation (`augment`);
//! `dst fetch` (`fetch`, with the small tar reader `tar`).

pub mod augment;
pub mod cifar;
pub mod fetch;
pub mod idx;
pub mod tar;

use std::path::{Path, PathBuf};

use idx::IdxArray;

/// Which dataset a model trains on (`ModelInfo::dataset`); decides the loader and the input
/// values (MNIST: x / 255; CIFAR-10: x / 255 normalised per channel, training batches augmented).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// 1 x 28 x 28, 10 classes.
    Mnist,
    /// 3 x 32 x 32, 10 classes.
    Cifar10,
}

impl DatasetKind {
    /// The name users see ("MNIST", "CIFAR-10").
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::Cifar10 => "CIFAR-10",
        }
    }

    /// Per-sample shape of the images as delivered to a model: (channels, rows, cols).
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Mnist => [1, 28, 28],
            DatasetKind::Cifar10 => [cifar::CHANNELS, cifar::SIDE, cifar::SIDE],
        }
    }

    /// Loads train and test sets from `dir`; with no directory, MNIST's embedded subset (CIFAR-10
    /// is not embedded: an error that says how to fetch it).
    pub fn load(self, dir: Option<&Path>) -> Result<TrainTest, DataError> {
        match (self, dir) {
            (_, Some(d)) => self.load_for_model(None, d),
            (DatasetKind::Mnist, None) => try_load_embedded(),
            (DatasetKind::Cifar10, None) => Err(DataError::NotEmbedded {
                dataset: self.name(),
                hint: "download it with `dst fetch cifar10 --to data/cifar10` and pass \
                       `--data data/cifar10`",
            }),
        }
    }

    /// `load` from the folder `dir` for `model` (a model that trains on this dataset): the
    /// same, but a folder of the other dataset is refused naming the model ("DIR holds MNIST,
    /// but vgg16 trains on CIFAR-10: ...") rather than "the model".
    pub fn load_for(self, model: &str, dir: &Path) -> Result<TrainTest, DataError> {
        self.load_for_model(Some(model), dir)
    }

    fn load_for_model(self, model: Option<&str>, dir: &Path) -> Result<TrainTest, DataError> {
        let loaded = match self {
            DatasetKind::Mnist => load_dir(dir),
            DatasetKind::Cifar10 => cifar::load_dir(dir),
        };
        loaded.map_err(|e| naming_model(e, model))
    }

    /// Whether `dir` holds this dataset's files for `model`, without reading them: the errors of
    /// `load_for` about missing files or another dataset's folder, before any work.
    pub fn locate_for(self, model: &str, dir: &Path) -> Result<(), DataError> {
        let found = match self {
            DatasetKind::Mnist => idx_files(dir, &MNIST_NAMES, "MNIST").map(|_| ()),
            DatasetKind::Cifar10 => cifar::locate(dir).and_then(|d| cifar::check_files(&d)),
        };
        found.map_err(|e| naming_model(e, Some(model)))
    }

    /// The number of training images in `dir` (None: the embedded MNIST subset), from the
    /// label file's IDX header (MNIST) or the batch files' sizes (CIFAR-10), without reading the
    /// images: what `--valid` and `--limit-train` are checked against before an adapter opens.
    /// None where it cannot be told so cheaply (loading the data then says why).
    pub fn train_count(self, dir: Option<&Path>) -> Option<usize> {
        use std::io::Read;
        let header = |mut r: Box<dyn Read + '_>| -> Option<usize> {
            let mut h = [0u8; 8];
            r.read_exact(&mut h).ok()?;
            Some(u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize)
        };
        let gz = |bytes: &'static [u8]| header(Box::new(flate2::read::GzDecoder::new(bytes)));
        match (self, dir) {
            (DatasetKind::Mnist, None) => gz(EMBEDDED[1].1),
            (DatasetKind::Mnist, Some(d)) => {
                let path = idx_files(d, &MNIST_NAMES[1..2], "MNIST").ok()?.pop()?;
                let f = std::fs::File::open(&path).ok()?;
                if path.extension().is_some_and(|e| e == "gz") {
                    header(Box::new(flate2::read::GzDecoder::new(f)))
                } else {
                    header(Box::new(f))
                }
            }
            (DatasetKind::Cifar10, Some(d)) => {
                let d = cifar::locate(d).ok()?;
                cifar::TRAIN_FILES
                    .iter()
                    .map(|f| {
                        std::fs::metadata(d.join(f))
                            .ok()
                            .map(|m| m.len() as usize / cifar::RECORD)
                    })
                    .sum()
            }
            (DatasetKind::Cifar10, None) => None,
        }
    }

    /// How to get this dataset into a folder (`dst fetch`), for error messages.
    pub fn fetch_hint(self) -> &'static str {
        match self {
            DatasetKind::Mnist => {
                "get MNIST with `dst fetch mnist --to data/mnist` and pass `--data data/mnist`, \
                 or leave out --data for the embedded MNIST subset"
            }
            DatasetKind::Cifar10 => {
                "get CIFAR-10 with `dst fetch cifar10 --to data/cifar10` and pass \
                 `--data data/cifar10`"
            }
        }
    }
}

/// Number of classes (digits 0..9).
pub const CLASSES: usize = 10;

/// `e` with the model's name where it says the folder holds another dataset.
/// `e`, where it says the folder holds the other dataset, naming `model` and only the files
/// `wanted` of its dataset (a test set's, where only that is read).
pub fn naming_model_files(e: DataError, model: &str, wanted: &[&str]) -> DataError {
    match naming_model(e, Some(model)) {
        DataError::OtherDataset {
            dir,
            found,
            wanted: kind,
            model,
            ..
        } => DataError::OtherDataset {
            dir,
            found,
            wanted: kind,
            model,
            expected: wanted.iter().map(|f| f.to_string()).collect(),
        },
        e => e,
    }
}

fn naming_model(e: DataError, model: Option<&str>) -> DataError {
    match e {
        DataError::OtherDataset {
            dir,
            found,
            wanted,
            model: None,
            expected,
        } => DataError::OtherDataset {
            dir,
            found,
            wanted,
            model: model.map(str::to_string),
            expected,
        },
        e => e,
    }
}

/// The four standard MNIST file names (without `.gz`), in the order
/// train images, train labels, test images, test labels.
pub const MNIST_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Errors while loading IDX data. Every message names the file (or directory) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: corrupt or truncated gzip stream: {reason}")]
    Gzip { file: String, reason: String },
    #[error("{file}: decompressed data larger than the {limit}-byte limit")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: header truncated: need {need} bytes, file has {got}")]
    HeaderTruncated {
        file: String,
        need: usize,
        got: usize,
    },
    #[error("{file}: not an IDX file: bad magic {found:02x?} (expected [00, 00, 08, ndim])")]
    BadMagic { file: String, found: [u8; 4] },
    #[error("{file}: unsupported IDX element type 0x{code:02x} (only 0x08, unsigned byte)")]
    UnsupportedType { file: String, code: u8 },
    #[error("{file}: wrong number of dimensions for {what}: expected {expected}, got {got}")]
    WrongNdim {
        file: String,
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("{file}: dimensions {dims:?} overflow the address space")]
    Overflow { file: String, dims: Vec<usize> },
    #[error(
        "{file}: payload truncated: dimensions {dims:?} need {expected} bytes, file has {got}"
    )]
    Truncated {
        file: String,
        dims: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error(
        "{file}: trailing bytes: dimensions {dims:?} need {expected} payload bytes, file has {got}"
    )]
    TrailingBytes {
        file: String,
        dims: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("{file}: holds no samples (dimensions {dims:?})")]
    Empty { file: String, dims: Vec<usize> },
    #[error("image/label count mismatch: {images} has {n_images} images, {labels} has {n_labels} labels")]
    CountMismatch {
        images: String,
        labels: String,
        n_images: usize,
        n_labels: usize,
    },
    #[error("{file}: label out of range at index {index} (counting from 0): value {value} (must be < {classes})")]
    LabelOutOfRange {
        file: String,
        index: usize,
        value: u8,
        classes: usize,
    },
    #[error("image size mismatch: {train} has {train_rows}x{train_cols} images, {test} has {test_rows}x{test_cols}")]
    ShapeMismatch {
        train: String,
        test: String,
        train_rows: usize,
        train_cols: usize,
        test_rows: usize,
        test_cols: usize,
    },
    #[error(
        "{dir}: {why}{}",
        if *folder_named {
            // The folder to give is named already.
            String::new()
        } else {
            format!(
                "; give the folder that holds the {dataset} files (`dst fetch {} --to {}` writes \
                 one)",
                fetch_name(dataset),
                if *fetch_here {
                    crate::report::shell_word(Path::new(dir))
                } else {
                    "NEW_FOLDER".into()
                }
            )
        }
    )]
    NotAFolder {
        dir: String,
        dataset: &'static str,
        why: String,
        /// `dir` is nothing yet: `dst fetch` can make it.
        fetch_here: bool,
        /// `why` names the folder to give (a dataset file was given): no fetch hint.
        folder_named: bool,
    },
    #[error("{dir}: missing {dataset} file(s): {}", missing.join(", "))]
    Missing {
        dir: String,
        dataset: &'static str,
        missing: Vec<String>,
    },
    #[error(
        "{file}: {} is not a whole number of {record}-byte records ({} and {} over)",
        crate::report::plural(*size, "byte"),
        crate::report::plural(size / record, "whole record"),
        crate::report::plural(size % record, "byte")
    )]
    PartialRecord {
        file: String,
        size: usize,
        record: usize,
    },
    #[error("{file}: {records} records, where {dataset}'s file holds {want}: an incomplete copy")]
    Incomplete {
        file: String,
        dataset: &'static str,
        records: usize,
        want: usize,
    },
    #[error(
        "{file}: record {record} (counting from 0; byte offset {offset}) has label {value}, outside 0-{max}", max = .classes - 1
    )]
    RecordLabel {
        file: String,
        record: usize,
        offset: usize,
        value: u8,
        classes: usize,
    },
    #[error(
        "{dir} holds {}, but {} trains on {}: it has none of the {} files ({}); {}",
        found.name(),
        model.as_deref().unwrap_or("the model"),
        wanted.name(),
        wanted.name(),
        expected.join(", "),
        wanted.fetch_hint()
    )]
    OtherDataset {
        dir: String,
        /// The dataset whose files the folder holds.
        found: DatasetKind,
        /// The dataset the model trains on.
        wanted: DatasetKind,
        /// The model, when the loader was told (`DatasetKind::load_for`).
        model: Option<String>,
        /// The files of `wanted` looked for.
        expected: Vec<String>,
    },
    #[error("{dataset} is not embedded in the program: {hint}")]
    NotEmbedded {
        dataset: &'static str,
        hint: &'static str,
    },
}

/// Per-channel normalisation applied after the scaling to [0, 1]: `(x - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// A set of images with their labels, and how they become a model's input values.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `count * channels * rows * cols` raw pixel bytes (0..255), image after image, each
    /// channel-major (all of channel 0 row by row, then channel 1, ...: CHW).
    pub images: Vec<u8>,
    /// `count` labels, each `< classes`.
    pub labels: Vec<u8>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub classes: usize,
    /// 1 (MNIST) or 3 (CIFAR-10, planes R, G, B).
    pub channels: usize,
    /// Applied after x / 255; None: the values stay x / 255 (MNIST).
    pub normalize: Option<Normalize>,
    /// Training batches from this set are augmented: zero padding of [`augment::PAD`] pixels, a
    /// random crop back to rows x cols and a random horizontal flip, drawn per epoch from the
    /// seed ([`augment::epoch_draws`]). Never applied to evaluation batches.
    pub augment: bool,
}

impl Dataset {
    /// Values per sample (`channels * rows * cols`; the pixels of an MNIST image).
    pub fn pixels(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// A dataset of the same kind holding `images`/`labels` (`count` samples).
    fn with(&self, images: Vec<u8>, labels: Vec<u8>, count: usize) -> Dataset {
        Dataset {
            images,
            labels,
            count,
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
            channels: self.channels,
            normalize: self.normalize.clone(),
            augment: self.augment,
        }
    }

    /// Images `[from, count)` (the last `count - from`), e.g. a validation split.
    pub fn tail(&self, from: usize) -> Dataset {
        let from = from.min(self.count);
        self.with(
            self.images[from * self.pixels()..].to_vec(),
            self.labels[from..].to_vec(),
            self.count - from,
        )
    }

    /// The first `n` examples (a clone of everything if `n >= count`).
    pub fn limit(&self, n: usize) -> Dataset {
        let n = n.min(self.count);
        self.with(
            self.images[..n * self.pixels()].to_vec(),
            self.labels[..n].to_vec(),
            n,
        )
    }

    /// The input value of byte `b` in channel `c`: `b as f32 / 255.0`, then `(v - mean[c]) /
    /// std[c]` in f32 when normalised, exactly as torchvision's `ToTensor` and `Normalize` compute
    /// it (each operation one correctly rounded f32 operation).
    pub fn value(&self, c: usize, b: u8) -> f32 {
        let v = b as f32 / 255.0;
        match &self.normalize {
            None => v,
            Some(n) => (v - n.mean[c]) / n.std[c],
        }
    }

    /// The table the GPU reads input values from: `lut[c * 256 + b] = value(c, b)`, `channels *
    /// 256` entries (bit-exact inputs whatever the GPU's division).
    pub fn lut(&self) -> Vec<f32> {
        (0..self.channels)
            .flat_map(|c| (0..=255u8).map(move |b| (c, b)))
            .map(|(c, b)| self.value(c, b))
            .collect()
    }

    /// Builds a dataset from parsed image (3-dim) and label (1-dim) arrays, validating shapes,
    /// counts and label range. `images_name`/`labels_name` are used in error messages.
    pub fn from_idx(
        images: IdxArray,
        labels: IdxArray,
        images_name: &str,
        labels_name: &str,
    ) -> Result<Dataset, DataError> {
        if images.dims.len() != 3 {
            return Err(DataError::WrongNdim {
                file: images_name.to_string(),
                what: "images",
                expected: "3",
                got: images.dims.len(),
            });
        }
        if labels.dims.len() != 1 {
            return Err(DataError::WrongNdim {
                file: labels_name.to_string(),
                what: "labels",
                expected: "1",
                got: labels.dims.len(),
            });
        }
        let (count, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
        if images.data.is_empty() {
            return Err(DataError::Empty {
                file: images_name.to_string(),
                dims: images.dims,
            });
        }
        if labels.data.is_empty() {
            return Err(DataError::Empty {
                file: labels_name.to_string(),
                dims: labels.dims,
            });
        }
        if count != labels.dims[0] {
            return Err(DataError::CountMismatch {
                images: images_name.to_string(),
                labels: labels_name.to_string(),
                n_images: count,
                n_labels: labels.dims[0],
            });
        }
        if let Some((index, &value)) = labels
            .data
            .iter()
            .enumerate()
            .find(|(_, &v)| v as usize >= CLASSES)
        {
            return Err(DataError::LabelOutOfRange {
                file: labels_name.to_string(),
                index,
                value,
                classes: CLASSES,
            });
        }
        Ok(Dataset {
            images: images.data,
            labels: labels.data,
            count,
            rows,
            cols,
            classes: CLASSES,
            channels: 1,
            normalize: None,
            augment: false,
        })
    }
}

/// MNIST's train and test sets (the name from before CIFAR-10; the same type).
pub type Mnist = TrainTest;

/// A dataset's train and test sets.
#[derive(Debug, Clone)]
pub struct TrainTest {
    pub train: Dataset,
    pub test: Dataset,
    /// Where the data came from: the directory, or a description of the embedded subset.
    pub source: String,
}

/// Builds train/test datasets from the four arrays (order of [`MNIST_NAMES`]) and checks that
/// train and test images have the same size.
fn assemble(arrays: [(IdxArray, String); 4], source: String) -> Result<TrainTest, DataError> {
    let [(ti, ti_name), (tl, tl_name), (vi, vi_name), (vl, vl_name)] = arrays;
    let train = Dataset::from_idx(ti, tl, &ti_name, &tl_name)?;
    let test = Dataset::from_idx(vi, vl, &vi_name, &vl_name)?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(DataError::ShapeMismatch {
            train: ti_name,
            test: vi_name,
            train_rows: train.rows,
            train_cols: train.cols,
            test_rows: test.rows,
            test_cols: test.cols,
        });
    }
    Ok(Mnist {
        train,
        test,
        source,
    })
}

/// `dst fetch`'s name of `dataset` ("MNIST test" -> "mnist", "CIFAR-10" -> "cifar10").
fn fetch_name(dataset: &str) -> String {
    dataset
        .split_whitespace()
        .next()
        .unwrap_or(dataset)
        .to_lowercase()
        .replace('-', "")
}

/// A data folder that is not one: missing, or a file.
pub(crate) fn check_folder(dir: &Path, dataset: &'static str) -> Result<(), DataError> {
    let (mut fetch_here, mut folder_named) = (false, false);
    let why = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        // One of the dataset's files given for its folder: the folder named.
        Ok(_) => match dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && (holds_mnist(p) || cifar::holds_any(p)))
        {
            Some(p) => {
                folder_named = true;
                format!(
                    "is a file, not a folder: its folder {} holds dataset files; give --data {}",
                    p.display(),
                    p.display()
                )
            }
            None => "is a file, not a folder".to_string(),
        },
        // A link to nothing is no file in the way.
        Err(_) if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) => {
            "a symbolic link to nothing (its target does not exist)".to_string()
        }
        Err(_) => match crate::checkpoint::file_in_the_way(dir) {
            Some(f) => format!("no such folder ({} is a file)", f.display()),
            None => {
                fetch_here = true;
                "no such folder".to_string()
            }
        },
    };
    Err(DataError::NotAFolder {
        dir: dir.display().to_string(),
        dataset,
        why,
        fetch_here,
        folder_named,
    })
}

/// The paths of the IDX files `names` in the folder `dir`, each raw (`NAME`) or gzip
/// (`NAME.gz`; the raw file when both exist); an error naming the folder and every one missing
/// (`dataset` names what they make up).
pub fn idx_files(
    dir: &Path,
    names: &[&str],
    dataset: &'static str,
) -> Result<Vec<PathBuf>, DataError> {
    check_folder(dir, dataset)?;
    let mut paths = Vec::with_capacity(names.len());
    let mut missing = Vec::new();
    for name in names {
        let raw = dir.join(name);
        let gz = dir.join(format!("{name}.gz"));
        if raw.is_file() {
            paths.push(raw);
        } else if gz.is_file() {
            paths.push(gz);
        } else {
            missing.push(format!("{name} (or {name}.gz)"));
        }
    }
    if missing.len() == names.len() && cifar::holds_any(dir) {
        return Err(DataError::OtherDataset {
            dir: dir.display().to_string(),
            found: DatasetKind::Cifar10,
            wanted: DatasetKind::Mnist,
            model: None,
            expected: names.iter().map(|n| n.to_string()).collect(),
        });
    }
    if !missing.is_empty() {
        return Err(DataError::Missing {
            dir: dir.display().to_string(),
            dataset,
            missing,
        });
    }
    Ok(paths)
}

/// Whether `dir` holds any of the four MNIST files (raw or gzip).
pub fn holds_mnist(dir: &Path) -> bool {
    MNIST_NAMES
        .iter()
        .any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
}

/// Loads MNIST from `dir`, which must hold the four standard files, each either raw
/// (`NAME`) or gzip (`NAME.gz`); the raw file is used when both exist.
pub fn load_dir(dir: &Path) -> Result<Mnist, DataError> {
    let paths = idx_files(dir, &MNIST_NAMES, "MNIST")?;
    let mut arrays = Vec::with_capacity(4);
    for path in &paths {
        let kind = path
            .file_name()
            .and_then(|n| idx::IdxKind::of_name(&n.to_string_lossy()));
        arrays.push((idx::read_idx_as(path, kind)?, path.display().to_string()));
    }
    let arrays: [(IdxArray, String); 4] = arrays.try_into().expect("four paths");
    let mut m = assemble(arrays, dir.display().to_string())?;
    // Other data in MNIST's format (Fashion-MNIST, KMNIST, a part of MNIST) trains as given, and
    // its description says so: it was called MNIST.
    if !(is_mnist_file(&m.train, 0) && is_mnist_file(&m.test, 2)) {
        m.source = not_mnist_source(&m.source);
    }
    Ok(m)
}

/// The description of the folder `place` of IDX files in MNIST's format that are not MNIST's own
/// (`load_dir`, `export::infer::load_test`): its `NOT_MNIST` note added.
pub fn not_mnist_source(place: &str) -> String {
    format!("{place} ({NOT_MNIST})")
}

/// What the description of a folder of IDX files in MNIST's format that are not MNIST's own
/// ends with, in parentheses (`not_mnist_source`).
pub const NOT_MNIST: &str =
    "IDX files in MNIST's format, not MNIST's own: their SHA-256 differ from MNIST's";

/// A data description (`TrainTest::source`, `TestSet::source`) without its `NOT_MNIST` note, and
/// whether it had one.
pub fn not_mnist(source: &str) -> (&str, bool) {
    match source
        .strip_suffix(')')
        .and_then(|s| s.strip_suffix(NOT_MNIST))
        .and_then(|s| s.strip_suffix(" ("))
    {
        Some(folder) => (folder, true),
        None => (source, false),
    }
}

/// Whether `d` holds the MNIST images and labels of `fetch::MNIST_FILES[at]` and `[at + 1]`
/// (0: the training set, 2: the test set): the SHA-256 of its IDX files (`idx_sha256`) are
/// MNIST's.
pub fn is_mnist_file(d: &Dataset, at: usize) -> bool {
    let files = &fetch::MNIST_FILES;
    d.channels == 1 && idx_sha256(d) == (files[at].sha256.into(), files[at + 1].sha256.into())
}

/// The SHA-256 of the raw IDX files (unsigned bytes) that hold a one-channel `d`'s images and
/// its labels, made again from their headers and bytes: those of the files it was read from.
pub fn idx_sha256(d: &Dataset) -> (String, String) {
    use sha2::{Digest, Sha256};
    let count = (d.count as u32).to_be_bytes();
    let mut images = Sha256::new();
    images.update([0, 0, 8, 3]);
    images.update(count);
    images.update((d.rows as u32).to_be_bytes());
    images.update((d.cols as u32).to_be_bytes());
    images.update(&d.images);
    let mut labels = Sha256::new();
    labels.update([0, 0, 8, 1]);
    labels.update(count);
    labels.update(&d.labels);
    (
        fetch::hex(&images.finalize()),
        fetch::hex(&labels.finalize()),
    )
}

macro_rules! embedded {
    ($name:literal) => {
        (
            concat!("embedded assets/mnist-subset/", $name, ".gz"),
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/mnist-subset/",
                $name,
                ".gz"
            ))
            .as_slice(),
        )
    };
}

/// The embedded subset (gzip IDX bytes), in the order of [`MNIST_NAMES`].
const EMBEDDED: [(&str, &[u8]); 4] = [
    embedded!("train-images-idx3-ubyte"),
    embedded!("train-labels-idx1-ubyte"),
    embedded!("t10k-images-idx3-ubyte"),
    embedded!("t10k-labels-idx1-ubyte"),
];

/// Parses the embedded MNIST subset.
pub fn try_load_embedded() -> Result<Mnist, DataError> {
    let mut arrays = Vec::with_capacity(4);
    for (name, bytes) in EMBEDDED {
        arrays.push((idx::parse_idx(bytes, name)?, name.to_string()));
    }
    let arrays: [(IdxArray, String); 4] = arrays.try_into().expect("four files");
    let mut mnist = assemble(arrays, String::new())?;
    mnist.source = format!(
        "embedded MNIST subset ({} train / {} test)",
        mnist.train.count, mnist.test.count
    );
    Ok(mnist)
}

/// The embedded MNIST subset (10000 train / 2000 test images, 28x28).
///
/// Panics only if the asset compiled into the binary is broken, which the tests rule out.
pub fn load_embedded() -> Mnist {
    try_load_embedded().expect("the embedded MNIST subset (assets/mnist-subset) is corrupt")
}
