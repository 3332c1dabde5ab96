//! The `dst` command line: parses, calls the library, reports. No logic here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dst::gpu::{describe_info, list_adapters, Gpu};
use dst::train::{self, LayerStats, Progress, RunOptions, TrainConfig};

#[derive(Parser)]
#[command(
    name = "dst",
    version,
    about = "Dynamic Sparse Training (Liu et al., ICLR 2020) on any GPU through wgpu",
    after_help = "With no command, dst runs its first example: `dst train --target-keep 0.03 \
                  --reset floor` (DST LeNet-300-100 on the embedded MNIST subset, about a minute \
                  on a CPU adapter), which writes a run folder under runs/."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu sees and the limits that matter here, and the models this build
    /// trains with the paper's settings; `--model M` also shows M's layers.
    Info {
        /// Also show this model's layers, output shapes and parameters, and the GPU memory it
        /// needs for training at --batch.
        #[arg(long)]
        model: Option<String>,
        /// Batch size of the memory report [default: the model's].
        #[arg(long, requires = "model", allow_negative_numbers = true)]
        batch: Option<usize>,
        /// Memory of dense training rather than DST.
        #[arg(long, requires = "model")]
        dense: bool,
    },
    /// Train a model (default: DST LeNet-300-100 on the embedded MNIST subset).
    Train(TrainArgs),
    /// Test accuracy and per-layer keep ratios of a checkpoint.
    Eval {
        #[command(flatten)]
        checkpoint: CheckpointArg,
        /// Folder of the checkpoint's dataset (MNIST: the two test files t10k-images-idx3-ubyte
        /// and t10k-labels-idx1-ubyte, .gz or raw; CIFAR-10: test_batch.bin); default: the
        /// folder the run trained on (its checkpoint records it; refused where it has gone), else
        /// the embedded MNIST subset.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Download a dataset and verify it: MNIST (SHA-256 of each file) or CIFAR-10 (the binary
    /// archive's MD5; its six batch files unpacked into --to).
    Fetch {
        /// Dataset name: mnist or cifar10.
        dataset: String,
        /// The folder the dataset's files go into (made if missing; one dataset per folder);
        /// files already there are kept where they check out: MNIST's by each file's SHA-256,
        /// CIFAR-10's by their sizes (six files of 10,000 records: its MD5 is the archive's,
        /// which checks a download only).
        #[arg(long)]
        to: PathBuf,
        /// Base URL to try before the public mirrors (repeatable); the file name is appended.
        #[arg(long)]
        mirror: Vec<String>,
    },
    /// GEMM and convolution throughput of each kernel variant, and step times.
    Bench {
        /// Timed repetitions per shape (0: skip the kernel tables, time steps only; on a CPU
        /// adapter the GEMM and conv tables time the GPU forms only with --gpu-forms).
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        reps: u32,
        /// Also time full training steps (dense and DST) over this many steps.
        #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
        steps: u32,
        /// Folder of the model's dataset for the step timing: MNIST's IDX files or CIFAR-10's
        /// batch files (default: the embedded MNIST subset; for CIFAR-10 models, random images
        /// of its shape).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Models whose training steps to time (repeatable; default: the --checkpoint's model,
        /// else lenet300).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Also time each dispatch of the dense step and of a DST step alone and print where the
        /// time goes, per layer and kernel, side by side (the DST step with the adapter's default
        /// products: from --checkpoint when given); each dispatch's median over 15 steps of its
        /// own, whatever --steps is.
        #[arg(long)]
        profile: bool,
        /// A DST checkpoint of the (one) --model: also time DST steps from it, with dense products,
        /// with the weight-sparse products forced and with the defaults (e.g. a trained run at a
        /// low keep ratio).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Alternating rounds of the step timings (every variant once per round, the order
        /// reversed every other round); each variant's time printed is the mean over the rounds,
        /// each ratio the median of the rounds' ratios (so not the ratio of two printed times),
        /// with their quartiles from 4 rounds on. On a noisy machine many short rounds (e.g.
        /// --steps 10 --rounds 40) pair the variants more closely in time.
        #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
        rounds: u32,
        /// On a CPU adapter, also time the GPU forms of the GEMM and conv kernels (10-100x
        /// slower there, where no layer takes them; at most 2 repetitions). GPUs always time them.
        #[arg(long)]
        gpu_forms: bool,
    },
    /// Export a checkpoint's masked model as safetensors with PyTorch's names: dense (zeros where
    /// the mask is 0) or csr (crow_indices / col_indices / values per masked layer).
    Export {
        #[command(flatten)]
        checkpoint: CheckpointArg,
        /// dense or csr.
        #[arg(long, default_value = "csr")]
        format: String,
        /// The export file to write (safetensors); an existing file is replaced only if it is
        /// an export of dst's.
        #[arg(long)]
        out: PathBuf,
    },
    /// Classify the test set from an export: sparse GPU inference for lenet300 and lenet5, the
    /// trainer's evaluation for the other models (the dense model on the masked weights; an LSTM
    /// whose gate matrices keep few weights runs masked on a CPU adapter, from its kept weights).
    Infer {
        /// An export file (`dst export` writes it).
        file: PathBuf,
        /// Folder with the test files: MNIST's t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte
        /// (raw or .gz), CIFAR-10's test_batch.bin; default: the folder the run trained on (the
        /// export records it; refused where it has gone), else the embedded MNIST subset (a
        /// CIFAR-10 export then needs --data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Images per batch of sparse inference (LeNet-300-100, LeNet-5; the other models run
        /// in the trainer's evaluation batches).
        /// [default: 500]
        #[arg(long, allow_negative_numbers = true)]
        batch: Option<usize>,
        /// Write each test image's index, label, predicted class and logits to this CSV file
        /// (a new file, or one `dst infer` wrote before).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Samples/s of dense-masked against sparse inference of an export at batch 1, 64 and 1024
    /// (best of 3 alternating rounds each); for the models without sparse inference kernels
    /// (LSTMs, CIFAR-10), the trainer's evaluation of the dense model against the masked one.
    BenchInfer {
        /// An export file (`dst export` writes it).
        file: PathBuf,
        /// Folder with the test files: MNIST's t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte
        /// (raw or .gz), CIFAR-10's test_batch.bin; default: the folder the run trained on (the
        /// export records it), else the embedded MNIST subset (a CIFAR-10 export then needs
        /// --data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Samples timed per batch size and mode (at least 3 batches; the models without sparse
        /// kernels: the first this many test images).
        #[arg(long, default_value_t = dst::export::infer::DEFAULT_SAMPLES, allow_negative_numbers = true)]
        samples: usize,
        /// Also time each dispatch of both modes alone, per batch size: the dispatch repeated
        /// back to back in one submission, microseconds each, the best of the rounds
        /// (LeNet-300-100 and LeNet-5).
        #[arg(long)]
        profile: bool,
        /// Sparse inference with the routes of this adapter class, `cpu` or `gpu` [default: the
        /// adapter's]: which product each layer takes (the layer table says), to compare them
        /// on one adapter.
        #[arg(long, value_parser = ["cpu", "gpu"])]
        routes: Option<String>,
    },
    /// Charts (PNG) of one or more runs, overlaid and labelled: keep ratio per layer over the
    /// steps, accuracy and remaining % per epoch, threshold means, alpha of the DST runs.
    Plot {
        /// Run directories (or folders holding runs, e.g. a sweep's).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where the PNGs go [default: the run directory for one run, plots/ for several].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pictures of a checkpoint's first-layer masks (no GPU): per-pixel keep heat map and
    /// neuron masks (LeNet-300-100), filters and masks (LeNet-5, and the CIFAR-10 models' RGB
    /// filters), per-gate pixel columns (LSTM).
    Masks {
        #[command(flatten)]
        checkpoint: CheckpointArg,
        /// Where the PNGs go [default: the checkpoint's folder].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Alpha sweep: DST runs for every alpha and seed plus a dense baseline per seed, resumable;
    /// then sweep.md, sweep.csv and sweep.png (accuracy and remaining % against alpha).
    Sweep(SweepArgs),
    /// Reproduce a table of the paper: `table1` trains its MNIST rows (dense and DST, the paper's
    /// settings, several seeds; resumable) and writes REPORT.md next to the paper's numbers; its
    /// CIFAR-10 rows with `--model vgg16 --model wrn-16-8 --data DIR` (160 epochs each).
    Reproduce {
        /// Which table: table1.
        table: String,
        /// Seeds, comma-separated: each model's dense and DST runs once per seed.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_parser = list_seed)]
        seeds: Vec<u64>,
        /// Epochs per run [default: the paper's: 20 for the MNIST rows, 160 for the CIFAR-10
        /// ones; 3 with --quick].
        #[arg(long, allow_negative_numbers = true)]
        epochs: Option<usize>,
        /// Folder of the models' dataset: MNIST's four IDX files (default: the embedded subset),
        /// or CIFAR-10's six batches for vgg16 and wrn-16-8 (one dataset per command).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The reproduction's folder: a folder of runs per model, charts/ and REPORT.md; run the
        /// same command again to resume.
        #[arg(long, default_value = "runs/table1")]
        out: PathBuf,
        /// Models to train (repeatable) [default: the MNIST rows: lenet300, lenet5, lstm-a,
        /// lstm-b; lenet300 with --quick]. The CIFAR-10 rows are asked for by name, with a
        /// CIFAR-10 --data: vgg16, wrn-16-8 (and wrn-16-1, a narrow WRN for quick runs).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Use only the first N training images [default: all; 6000 with --quick].
        #[arg(long, allow_negative_numbers = true)]
        limit_train: Option<usize>,
        /// A small version to try it out: 3 epochs on 6000 images, lenet300 only, unless given.
        #[arg(long)]
        quick: bool,
        /// Hold out the last N training images in every run and report the epoch best on them.
        #[arg(long, allow_negative_numbers = true)]
        valid: Option<usize>,
    },
    /// The results table (mean ± std over seeds, each epoch-selection rule, the paper's figures)
    /// of runs made by hand.
    Report {
        /// Run directories (or folders holding runs).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Write the Markdown here [default: print it]; a name ending in .csv gets the table as
        /// CSV (the columns of a sweep's sweep.csv).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The checkpoint `eval`, `export` and `masks` read, given either way: `dst eval RUN` or
/// `dst eval --checkpoint RUN`.
#[derive(clap::Args, Clone)]
struct CheckpointArg {
    /// The checkpoint, or the folder of the run that holds it.
    #[arg(
        value_name = "CHECKPOINT",
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    path: Option<PathBuf>,
    /// The same, as an option.
    #[arg(long, value_name = "CHECKPOINT")]
    checkpoint: Option<PathBuf>,
}

impl CheckpointArg {
    fn path(self) -> PathBuf {
        self.path
            .or(self.checkpoint)
            .expect("clap asks for one of the two")
    }
}

#[derive(clap::Args, Clone)]
struct SweepArgs {
    /// The model of every run (`dst info` lists them).
    #[arg(long, default_value = "lenet300")]
    model: String,
    /// Alphas to try, comma-separated (e.g. 1e-5,1e-4,5e-4,1e-3).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true,
        value_parser = list_alpha
    )]
    alpha: Vec<f64>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = list_seed)]
    seeds: Vec<u64>,
    /// Leave out the dense baseline runs.
    #[arg(long)]
    no_dense: bool,
    /// The sweep's folder: one run directory per (alpha, seed), the tables and the chart.
    #[arg(long)]
    out: PathBuf,
    /// Epochs per run [default: the model's].
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Batch size of every run [default: the model's].
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Learning rate of every run [default: the model's; with another --optimizer than the
    /// model's, 1e-3 for Adam, 0.01 for SGD].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum [default: the model's].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Weight decay [default: the model's].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// sgd or adam [default: the model's].
    #[arg(long)]
    optimizer: Option<String>,
    /// Folder of the model's dataset: MNIST's four IDX files (.gz or raw), or CIFAR-10's six
    /// binary batches (`dst fetch cifar10 --to DIR`); default: the embedded MNIST subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Log a line every N steps in every run (and at each epoch's end).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    log_every: usize,
    /// Use only the first N training images.
    #[arg(long, allow_negative_numbers = true)]
    limit_train: Option<usize>,
    /// Dead-layer policy of every run: paper, floor or none.
    #[arg(long, default_value = "paper")]
    reset: String,
    /// Hold out the last N training images in every run and report the epoch best on them.
    #[arg(long, allow_negative_numbers = true)]
    valid: Option<usize>,
}

#[derive(clap::Args, Clone)]
struct TrainArgs {
    /// Model to train: lenet300 (LeNet-300-100), lenet5 (LeNet-5-Caffe), lstm-a or lstm-b (two
    /// LSTM layers of 128 / 256 over the image rows) on MNIST; vgg16, wrn-16-8 or wrn-16-1 on
    /// CIFAR-10. Every flag below that is not given takes the paper's setting for the model
    /// (`dst info` lists them).
    #[arg(long, default_value = "lenet300")]
    model: String,
    /// Train dense (no masks); DST is the default.
    #[arg(long)]
    dense: bool,
    /// Sparsity penalty weight alpha (METHOD.md section 2) [default: the model's: 5e-4 for the
    /// LeNets, 1e-4 for the LSTMs, 5e-6 for the CIFAR-10 models].
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f64>,
    /// Epochs in all [default: the model's: 20 for the MNIST models, 160 for the CIFAR-10 ones;
    /// on --resume: the run's own].
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Batch size [default: the model's: 64 for the LeNets and the CIFAR-10 models, 100 for the
    /// LSTMs].
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Learning rate [default: the model's: 0.01 (SGD) for the LeNets, 1e-3 (Adam) for the LSTMs,
    /// 0.1 (SGD) for the CIFAR-10 models; with another --optimizer than the model's, 1e-3 for
    /// Adam, 0.01 for SGD].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Epochs after which the learning rate is multiplied by --lr-gamma, comma-separated (e.g.
    /// 80,120: epochs 81-120 at 0.1 lr, later ones at 0.01 lr), or `none` [default: the model's:
    /// 80,120 for the CIFAR-10 models, none for the MNIST ones].
    #[arg(long, value_parser = parse_lr_steps)]
    lr_steps: Option<LrSteps>,
    /// The factor --lr-steps apply (only with learning-rate steps: --lr-steps, or a model's
    /// default ones) [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    lr_gamma: Option<f64>,
    /// SGD momentum [default: the model's, 0.9 for the LeNets and the CIFAR-10 models; 0.9 for
    /// an LSTM trained with --optimizer sgd].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Weight decay, applied to every parameter [default: the model's: 0 for the MNIST models,
    /// 1e-4 for the CIFAR-10 ones].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Seed of the initial weights and of each epoch's order of training images (a run is
    /// repeatable from it on one adapter).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// Folder of the model's dataset: MNIST's four IDX files (.gz or raw), or CIFAR-10's six
    /// binary batches (`dst fetch cifar10 --to DIR`; the CIFAR-10 models need it); default: the
    /// embedded MNIST subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<timestamp>-<model>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Log a line every N steps (and at each epoch's end); only the logging follows it (the
    /// --target-keep controller keeps its own cadence; the progress bar moves at least every
    /// tenth of an epoch or 100 steps, and at each log point; on a pipe, a progress line comes
    /// every 100 steps and at each epoch's end).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    log_every: usize,
    /// Use only the first N training images.
    #[arg(long, allow_negative_numbers = true)]
    limit_train: Option<usize>,
    /// Optimiser: sgd (with --momentum) or adam (betas 0.9/0.999, eps 1e-8) [default: the
    /// model's: sgd for the LeNets and the CIFAR-10 models, adam for the LSTMs].
    #[arg(long)]
    optimizer: Option<String>,
    /// Steer alpha so that the model keeps this fraction of its masked weights by
    /// --target-epoch and then holds it (0 < R < 1; beyond the paper, which has only alpha).
    #[arg(long, allow_negative_numbers = true)]
    target_keep: Option<f64>,
    /// The epoch by which --target-keep is to be reached [default: 60 % of the run].
    #[arg(long, allow_negative_numbers = true)]
    target_epoch: Option<usize>,
    /// What a masked layer keeping <= 1 % does: paper (its thresholds go to 0: dense again, the
    /// paper's rule), floor (every row keeps at least its strongest weight: no collapse, no jump
    /// back to dense) or none.
    #[arg(long, default_value = "paper")]
    reset: String,
    /// Hold out the last N training images as a validation split (never the test set) and report
    /// the epoch best on it.
    #[arg(long, allow_negative_numbers = true)]
    valid: Option<usize>,
    /// Masked linear layers and convolutions keeping at most this fraction of their weights
    /// compute their forward and input-gradient products from the kept weights only, and masked
    /// LSTM layers their recurrent steps (0: never, 1: always; same results up to float
    /// rounding) [default on CPU adapters: 0.2 for linear layers, 0.5 for convolutions, 0.05 for
    /// LSTM layers; 0 (off) on GPUs].
    #[arg(long, allow_negative_numbers = true)]
    sparse_keep: Option<f64>,
    /// A linear layer of 65,536 weights or more skips its input's zeros: its weight gradient
    /// (where SGD is fused into it: CPU adapters) and, masked, its forward when at most this
    /// fraction of the (block of 8 samples, input) pairs hold a nonzero (MNIST: about 46 %),
    /// ahead of the --sparse-keep products; on CPU adapters a masked first layer takes it at any
    /// density once this is above 0 (0: never, 1: always; the same results as the dense
    /// products) [default: 0.6 on CPU adapters, 0 (off) on GPUs].
    #[arg(long, allow_negative_numbers = true)]
    sparse_input: Option<f64>,
    /// Continue the run in this directory from its last checkpoint (its config is reused;
    /// --epochs may change the total).
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// `--lr-steps`: epochs, comma-separated, or `none`.
#[derive(Clone, Debug)]
struct LrSteps(Vec<usize>);

fn parse_lr_steps(s: &str) -> Result<LrSteps, String> {
    if s == "none" {
        return Ok(LrSteps(Vec::new()));
    }
    s.split(',')
        .map(|e| {
            e.trim()
                .parse::<usize>()
                .map_err(|_| format!("{e:?} is not an epoch number (give e.g. 80,120 or none)"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(LrSteps)
}

fn main() -> ExitCode {
    // Ctrl-C and SIGTERM handled from the start: a stop at once removes a half-written file.
    train::interrupt::install();
    // A closed stdout or stderr (`dst info | head -1`) ends the program quietly, as a closed
    // pipe ends other command-line tools (status 141: 128 + SIGPIPE), instead of a panic from
    // `println!`. (Training's progress stops the run at its next log point first: `say`.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if (msg.starts_with("failed printing to stdout")
            || msg.starts_with("failed printing to stderr"))
            && msg.contains("Broken pipe")
        {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let matches =
        match Cli::command().try_get_matches_from(joined_negative_values(std::env::args_os())) {
            Ok(m) => m,
            Err(e) => match (e.kind(), no_such_option(&e.render().to_string())) {
                (clap::error::ErrorKind::UnknownArgument, Some(text)) => {
                    eprint!("{text}");
                    std::process::exit(2)
                }
                _ => e.exit(),
            },
        };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The train flags given on the command line (`--resume` takes no others but --epochs).
    let command = Cli::command();
    let train_args: Vec<&str> = command
        .find_subcommand("train")
        .map(|c| c.get_arguments().map(|a| a.get_id().as_str()).collect())
        .unwrap_or_default();
    let given: Vec<String> = matches
        .subcommand_matches("train")
        .map(|m| {
            m.ids()
                .filter(|id| {
                    train_args.contains(&id.as_str())
                        && m.value_source(id.as_str())
                            == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| format!("--{}", id.as_str().replace('_', "-")))
                .collect()
        })
        .unwrap_or_default();
    match run(cli, &given) {
        // Ctrl-C came with nothing left to stop at (a run's last epoch under way, a study's last
        // run): the work finished and is written, and the status still says a Ctrl-C came, so
        // that a script's loop stops as it would have.
        Ok(()) if train::interrupt::requested() => {
            eprintln!(
                "interrupt: Ctrl-C came with no log point left to stop at: the command finished \
                 and its results are complete (status 130, as for Ctrl-C)"
            );
            ExitCode::from(130)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            let interrupted = e.chain().any(|c| {
                let t =
                    c.downcast_ref::<train::TrainError>().or_else(|| match c
                        .downcast_ref::<dst::study::StudyError>()
                    {
                        Some(dst::study::StudyError::Train(t)) => Some(t),
                        _ => None,
                    });
                matches!(t, Some(train::TrainError::Interrupted { .. }))
                    || matches!(
                        c.downcast_ref::<dst::study::StudyError>(),
                        Some(dst::study::StudyError::Interrupted { .. })
                    )
                    || matches!(
                        c.downcast_ref::<dst::data::fetch::FetchError>(),
                        Some(dst::data::fetch::FetchError::Interrupted { .. })
                    )
            });
            // 130: the shell's code for a command stopped by Ctrl-C.
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes, each cause once: a message that already quotes its cause (as
/// "path: reason" does) is not followed by it again.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

/// The command line with a negative number in scientific notation after an option joined to it
/// (`--alpha -1e-4` as `--alpha=-1e-4`): clap reads only plain negative numbers (`-0.0001`) as
/// values, and took `-1e-4` for options `-1`, `-e`, ... ("unexpected argument '-1'"). dst has no
/// short option that such a word could mean.
fn joined_negative_values(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let negative = |w: &str| {
        w.starts_with('-')
            && w.contains(['e', 'E'])
            && w.split(',').all(|v| v.trim().parse::<f64>().is_ok())
    };
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut args = args.into_iter();
    for a in args.by_ref() {
        // After `--` every word is an argument as given.
        if a == "--" {
            out.push(a);
            break;
        }
        let option = out
            .last()
            .and_then(|p| p.to_str())
            .is_some_and(|p| p.starts_with("--") && p.len() > 2 && !p.contains('='));
        match a.to_str() {
            Some(w) if option && negative(w) => {
                let last = out.last_mut().expect("an option before");
                last.push("=");
                last.push(w);
            }
            _ => out.push(a),
        }
    }
    out.extend(args);
    out
}

/// Clap's message for an option the command lacks, where clap suggests passing it as a value
/// (`tip: to pass '--data' as a value, use '-- --data'`, for a command that takes positional
/// arguments) rewritten to say that the command has no such option. None for other messages.
fn no_such_option(text: &str) -> Option<String> {
    let command = text
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))?
        .split(" [")
        .next()?
        .split(" <")
        .next()?
        .trim()
        .to_string();
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let tip = l
                .trim_start()
                .strip_prefix("tip: to pass '")
                .and_then(|r| r.split_once("' as a value, use '-- "));
            match tip {
                Some((arg, _)) if arg.starts_with("--") => {
                    found = true;
                    format!("  tip: `{command}` has no option {arg}; `{command} --help` lists its options")
                }
                _ => l.to_string(),
            }
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

fn run(cli: Cli, given: &[String]) -> anyhow::Result<()> {
    match cli.command {
        None => {
            // The README's main job, the first run a user sees: DST LeNet-300-100 on the
            // embedded subset, steered to a clearly sparse network (3 % of the weights).
            let args = ["dst", "train", "--target-keep", "0.03", "--reset", "floor"];
            eprintln!(
                "no command given: the first example, `{}` (`dst --help` lists the commands)",
                args.join(" ")
            );
            match Cli::parse_from(args).command {
                Some(Command::Train(a)) => {
                    cmd_train(a, &[])?;
                    println!(
                        "\nThis first run asked for 3 % of the weights (dst train --target-keep 0.03 \
                         --reset floor: alpha steered, and a layer down to 1 % or less keeps each \
                         row's strongest weight rather than going dense again).\n\
                         The paper's exact settings (alpha 5e-4 fixed, the paper's reset): `dst train`; \
                         on full MNIST: `dst fetch mnist --to data/mnist` then `dst train --data data/mnist`.\n\
                         Other models: `dst info`; the method: METHOD.md."
                    );
                    Ok(())
                }
                _ => unreachable!("`dst train` parses as the train command"),
            }
        }
        Some(Command::Info {
            model,
            batch,
            dense,
        }) => cmd_info(model.as_deref(), batch, dense),
        Some(Command::Train(a)) => cmd_train(a, given),
        Some(Command::Eval { checkpoint, data }) => cmd_eval(checkpoint.path(), data),
        Some(Command::Fetch {
            dataset,
            to,
            mirror,
        }) => cmd_fetch(&dataset, &to, mirror),
        Some(Command::Bench {
            reps,
            steps,
            data,
            models,
            profile,
            checkpoint,
            rounds,
            gpu_forms,
        }) => dst::bench::run(
            reps,
            steps,
            data.as_deref(),
            &models,
            profile,
            checkpoint.as_deref(),
            rounds,
            gpu_forms,
        ),
        Some(Command::Export {
            checkpoint,
            format,
            out,
        }) => dst::export::run(&checkpoint.path(), &format, &out),
        Some(Command::Infer {
            file,
            data,
            batch,
            out,
        }) => dst::export::infer::run(&file, data.as_deref(), batch, out.as_deref()),
        Some(Command::BenchInfer {
            file,
            data,
            samples,
            profile,
            routes,
        }) => {
            if samples == 0 {
                bail!("--samples must be >= 1: it is how many test samples each mode is timed on");
            }
            let routes = routes.map(|r| match r.as_str() {
                "cpu" => dst::gpu::AdapterClass::Cpu,
                _ => dst::gpu::AdapterClass::Gpu,
            });
            let batches = [1, 64, 1024];
            dst::export::infer::bench(&file, data.as_deref(), &batches, samples, profile, routes)
        }
        Some(Command::Plot { runs, out }) => cmd_plot(&runs, out),
        Some(Command::Masks { checkpoint, out }) => cmd_masks(&checkpoint.path(), out),
        Some(Command::Sweep(a)) => cmd_sweep(a),
        Some(Command::Reproduce {
            table,
            seeds,
            epochs,
            data,
            out,
            models,
            limit_train,
            quick,
            valid,
        }) => {
            if table != "table1" {
                bail!("unknown table {table:?}; available: table1");
            }
            // A CIFAR-10 folder without --model: the default rows are MNIST's.
            if let Some(d) = data.as_deref().filter(|d| models.is_empty() && d.is_dir()) {
                if dst::data::cifar::holds_any(d) {
                    bail!(
                        "{} holds CIFAR-10, and without --model table1's rows are the MNIST ones; \
                         ask for the CIFAR-10 rows by name: --model vgg16 --model wrn-16-8 (or \
                         --model wrn-16-1 for a quick run)",
                        d.display()
                    );
                }
            }
            let models = if !models.is_empty() {
                models
            } else if quick {
                vec!["lenet300".into()]
            } else {
                dst::report::table::mnist_rows()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            };
            let r = dst::study::Reproduce {
                models,
                seeds,
                epochs,
                data,
                limit_train,
                quick,
                valid,
            };
            let path = dst::study::reproduce(&r, &out, &mut term_progress())?;
            println!("report: {}", path.display());
            Ok(())
        }
        Some(Command::Report { runs, out }) => {
            // `--out x.csv`: the table as CSV (sweep.csv's columns), not Markdown under that name.
            let csv = out
                .as_ref()
                .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")));
            if let Some(p) = &out {
                use dst::report::Own;
                if csv {
                    // A sweep's own table, which its sweep.md links to: another table there would
                    // pass for the sweep's (both are dst's CSV).
                    // Through a link too: the file written is the one it points to.
                    let target = p.canonicalize().unwrap_or_else(|_| p.clone());
                    let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
                    let dir = dir.unwrap_or(std::path::Path::new("."));
                    if target.file_name().is_some_and(|n| n == "sweep.csv")
                        && dir.join("sweep.md").is_file()
                    {
                        bail!(
                            "{} is the table of the `dst sweep` study in {} (its sweep.md links to \
                             it), which `dst sweep` writes; nothing was changed: pick another --out",
                            p.display(),
                            dir.display()
                        );
                    }
                    dst::report::check_own_text(
                        p,
                        Own::Csv,
                        "a table of `dst report` or `dst sweep`",
                    )?;
                } else {
                    dst::report::check_own_text(
                        p,
                        Own::Markdown {
                            header: dst::report::REPORT_HEADER,
                        },
                        "a report of `dst report`",
                    )?;
                }
            }
            let runs = dst::report::load_runs(&runs)?;
            warn_torn(&runs);
            let md = if csv {
                dst::report::table::csv(&dst::report::table::rows(&runs))
            } else {
                dst::report::report_markdown(&runs)
            };
            match out {
                Some(p) if csv => {
                    dst::report::write_user_text(&p, &md)?;
                    println!("report: {}", p.display());
                }
                Some(p) => {
                    dst::report::write_user_markdown(&p, &md)?;
                    println!("report: {}", p.display());
                }
                None => print!("{md}"),
            }
            Ok(())
        }
    }
}

/// A warning per run whose metrics.jsonl holds damaged lines (left out), or ended in a line cut
/// short or damaged.
fn warn_torn(runs: &[dst::report::Run]) {
    for r in runs {
        if !r.damaged_lines.is_empty() {
            let n = &r.damaged_lines;
            eprintln!(
                "warning: {}: {} {} not a log line (damaged or edited): left out, the run's other \
                 lines read",
                r.dir.join("metrics.jsonl").display(),
                if n.len() == 1 { "line" } else { "lines" },
                n.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if n.len() == 1 { " is" } else { " are" }
            );
        }
        if let Some(n) = r.torn_line {
            eprintln!(
                "warning: {}: line {n}, the last, is cut short or damaged (a crash mid-write?): \
                 left out",
                r.dir.join("metrics.jsonl").display()
            );
        }
    }
}

/// Refuses an --out of pictures that names a picture (`x.png`) where a folder is wanted: the
/// charts went into a new folder called `x.png`.
fn check_picture_folder(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    // (`x.png/`, with its slash, is a folder's name.)
    if let Some(out) = out.filter(|o| {
        !o.is_dir()
            && !o.to_string_lossy().ends_with(std::path::MAIN_SEPARATOR)
            && o.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
    }) {
        bail!(
            "--out {}: --out names the folder the pictures go into (they have their own \
             names, which the command prints), not a picture; give a folder",
            out.display()
        );
    }
    Ok(())
}

fn cmd_plot(runs: &[PathBuf], out: Option<PathBuf>) -> anyhow::Result<()> {
    check_picture_folder(out.as_deref())?;
    let runs = dst::report::load_runs_for_charts(runs)?;
    warn_torn(&runs);
    let out = out.unwrap_or_else(|| match runs.as_slice() {
        [one] => one.dir.clone(),
        _ => PathBuf::from("plots"),
    });
    // A run that is training draws its own charts when it ends, from its whole log: charts drawn
    // into its folder now would be replaced then, or, drawn as it ends, replace its final ones.
    if dst::report::is_run_folder(&out) && dst::train::in_use(&out) {
        bail!(
            "{} is in use by another dst process (training that run), which draws its charts \
             when it ends; to chart it now, give --out another folder",
            out.display()
        );
    }
    if runs.len() > 1 {
        for r in runs
            .iter()
            .filter(|r| r.steps.is_empty() && r.epochs.is_empty())
        {
            eprintln!(
                "warning: {} {}: not in the charts",
                r.dir.display(),
                r.why_nothing_logged()
            );
        }
    }
    // A run before its first epoch's end: only in the charts over the steps (a dense one has
    // none of those: in no chart).
    for r in runs
        .iter()
        .filter(|r| r.epochs.is_empty() && !r.steps.is_empty())
    {
        eprintln!(
            "{}: {} has no finished epoch yet: {}",
            if r.config.dense { "warning" } else { "note" },
            r.dir.display(),
            if r.config.dense {
                "a dense run's charts are per epoch, so it is in none of them"
            } else {
                "it is only in the charts over the steps (keep ratio per layer, alpha)"
            }
        );
    }
    for p in dst::report::plot_runs(&runs, &out)? {
        println!("{}", p.display());
    }
    Ok(())
}

fn cmd_masks(checkpoint: &std::path::Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    // A run folder reads as its checkpoint, and its pictures go into it.
    let checkpoint = &dst::checkpoint::resolve(checkpoint)?;
    // A checkpoint that is no file in a folder (a pipe) has no run folder to draw into. (One
    // that is not there at all is said so where it is read.)
    if out.is_none() && checkpoint.exists() && !checkpoint.is_file() {
        bail!(
            "{}: not a checkpoint file in a run folder, where the pictures would go: give --out",
            checkpoint.display()
        );
    }
    check_picture_folder(out.as_deref())?;
    let ck = dst::checkpoint::Checkpoint::load(checkpoint)?;
    let out = out.unwrap_or_else(|| {
        checkpoint
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default()
    });
    let pictures = dst::report::mask_images(&ck, &out).map_err(|e| match e {
        // The checkpoint named, as every other error about it does.
        dst::report::ReportError::Checkpoint(m) => anyhow::anyhow!("{}: {m}", checkpoint.display()),
        e => e.into(),
    })?;
    for p in pictures {
        println!("{}", p.display());
    }
    Ok(())
}

fn cmd_sweep(a: SweepArgs) -> anyhow::Result<()> {
    let d = TrainConfig::for_model(&a.model)?;
    let optimizer = a.optimizer.clone().unwrap_or(d.optimizer.clone());
    check_momentum(&optimizer, a.momentum)?;
    let (lr, note) = learning_rate(a.lr, &d, &optimizer, a.momentum.is_some());
    if let Some(n) = note {
        eprintln!("{n}");
    }
    let base = TrainConfig {
        model: a.model.clone(),
        epochs: a.epochs.unwrap_or(d.epochs),
        batch: a.batch.unwrap_or(d.batch),
        lr,
        momentum: a.momentum.unwrap_or(d.momentum),
        weight_decay: a.weight_decay.unwrap_or(d.weight_decay),
        optimizer,
        data: a.data.clone(),
        log_every: a.log_every,
        limit_train: a.limit_train,
        reset: a.reset.clone(),
        valid: a.valid,
        ..d
    };
    let sweep = dst::study::Sweep {
        base,
        alphas: a.alpha,
        seeds: a.seeds,
        dense: !a.no_dense,
    };
    dst::study::sweep(&sweep, &a.out, &mut term_progress())?;
    for f in ["sweep.md", "sweep.csv", "sweep.png"] {
        println!("{}", a.out.join(f).display());
    }
    Ok(())
}

fn term_progress() -> TermProgress {
    TermProgress {
        bar: None,
        plain: !train::draws_a_bar(
            std::io::stderr().is_terminal(),
            std::env::var("TERM").ok().as_deref(),
        ),
        epoch: 0,
        epochs: 0,
        steps: 0,
        printed: 0,
        gone: false,
    }
}

/// A seed of a comma-separated `--seeds` list, spaces around it allowed (`--seeds "1, 2"`).
fn list_seed(item: &str) -> Result<u64, String> {
    item.trim()
        .parse()
        .map_err(|e| format!("{e} (a seed is a whole number, 0 or more)"))
}

/// An alpha of a comma-separated `--alpha` list, spaces around it allowed.
fn list_alpha(item: &str) -> Result<f64, String> {
    item.trim().parse().map_err(|e| format!("{e}"))
}

/// `dst info`'s list of the models this build trains, with the paper's settings.
fn print_models() {
    println!("models (dst train --model M; defaults are the paper's settings):");
    for m in dst::models::MODELS {
        let d = &m.defaults;
        println!("  {:<9} {}", m.name, m.about);
        println!(
            "            {} lr {}{}{}, batch {}, {}, alpha {}, weight decay {}",
            d.optimizer,
            d.lr,
            if d.lr_steps.is_empty() {
                String::new()
            } else {
                format!(" (x0.1 after epochs {:?})", d.lr_steps)
            },
            if d.optimizer == "sgd" {
                format!(" momentum {}", d.momentum)
            } else {
                String::new()
            },
            d.batch,
            dst::report::plural(d.epochs, "epoch"),
            d.alpha,
            d.weight_decay
        );
    }
}

fn cmd_info(model: Option<&str>, batch: Option<usize>, dense: bool) -> anyhow::Result<()> {
    if let Some(m) = model {
        dst::models::check_name(m)?;
    }
    // A batch no run could take, refused before anything is printed (as `dst train` does).
    if let Some(b) = batch.filter(|b| !(1..=65_535).contains(b)) {
        bail!("--batch must be in 1..=65535, got {b}");
    }
    let adapters = list_adapters()?;
    if adapters.is_empty() {
        // What needs no adapter is listed still; the error names the fix (and the exit fails).
        print_models();
        return Err(dst::gpu::no_adapter().into());
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        println!("[{i}] {}", describe_info(&info));
        println!(
            "    max storage binding {} MiB, max uniform binding {} KiB, max buffer {} MiB, storage buffers/stage {}, workgroup storage {} KiB,",
            l.max_storage_buffer_binding_size >> 20,
            l.max_uniform_buffer_binding_size >> 10,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size >> 10
        );
        println!(
            "    invocations/workgroup {}, workgroups/dimension {}, storage offset alignment {}, uniform offset alignment {}",
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
            l.min_storage_buffer_offset_alignment,
            l.min_uniform_buffer_offset_alignment
        );
        println!(
            "    GEMM variant: {:?}",
            dst::kernels::GemmVariant::for_class(dst::gpu::AdapterClass::of(&info))
        );
    }
    match std::env::var("WGPU_ADAPTER_NAME") {
        Ok(name) => {
            let a = dst::gpu::select_adapter(Some(&name))?;
            println!(
                "selected (WGPU_ADAPTER_NAME={name:?}): {}",
                describe_info(&a.get_info())
            );
        }
        Err(_) => {
            let a = dst::gpu::select_adapter(None)?;
            println!("selected: {}", describe_info(&a.get_info()));
        }
    }
    print_models();
    if let Some(name) = model {
        let gpu = Gpu::from_env()?;
        // The model as the memory report below builds it: masked (DST) unless --dense.
        let m = dst::models::Model::build(&gpu, name, !dense, 1, false)?;
        let params: usize = m.arena.layout.entries.iter().map(|e| e.len()).sum();
        let masked: usize = m.mask_views().iter().map(|v| v.rows * v.cols).sum();
        if dense {
            println!(
                "{name}: input {:?}, {params} parameters in dense training (no masks, no thresholds)",
                m.input
            );
        } else {
            println!(
                "{name}: input {:?}, {params} parameters in DST (thresholds included), {masked} of them masked weights",
                m.input
            );
        }
        for line in m.describe() {
            println!("  {line}");
        }
        drop(m);
        let batch = batch.unwrap_or(dst::models::info(name)?.defaults.batch);
        let report = dst::train::memory::measure(gpu, name, batch, dense)?;
        // The full dataset's train and test images, resident on the GPU while the model trains.
        let (images, what) = match dst::models::info(name)?.dataset {
            dst::data::DatasetKind::Mnist => (
                70_000,
                "full MNIST's 70000 images (the embedded subset: 12000)",
            ),
            dst::data::DatasetKind::Cifar10 => (60_000, "CIFAR-10's 60000 images"),
        };
        for line in report.lines(images, what) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `--momentum` is SGD's: refused with Adam rather than ignored (`train` and `sweep`).
fn check_momentum(optimizer: &str, momentum: Option<f64>) -> anyhow::Result<()> {
    if optimizer == "adam" && momentum.is_some() {
        bail!(
            "--momentum is SGD's; Adam uses its own betas (0.9, 0.999): give --optimizer sgd \
             with it, or drop it"
        );
    }
    Ok(())
}

/// The learning rate: `--lr`, else the model's, or, with an `--optimizer` other than the
/// model's, that optimiser's usual one (Adam 1e-3, SGD 0.01: the paper's for the LSTMs and the
/// LeNets), with the note saying so.
fn learning_rate(
    given: Option<f64>,
    d: &TrainConfig,
    optimizer: &str,
    momentum_given: bool,
) -> (f64, Option<String>) {
    if let Some(lr) = given {
        return (lr, None);
    }
    // (An unknown optimiser is refused later, with the model's rate.)
    if optimizer == d.optimizer || !matches!(optimizer, "sgd" | "adam") {
        return (d.lr, None);
    }
    let lr = if optimizer == "adam" { 1e-3 } else { 0.01 };
    let note = format!(
        "note: --optimizer {optimizer} without --lr: lr {lr}, {optimizer}'s usual rate ({}'s {} is \
         for {}){}; give --lr for another",
        d.model,
        d.lr,
        d.optimizer,
        if optimizer == "sgd" && !momentum_given {
            format!(", momentum {} (--momentum for another)", d.momentum)
        } else {
            String::new()
        }
    );
    (lr, Some(note))
}

/// The model's paper settings, overridden by the flags given.
fn config_from(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let d = TrainConfig::for_model(&a.model)?;
    // Flags that would have no effect are refused rather than ignored.
    if a.dense && a.alpha.is_some() {
        bail!("--alpha weights DST's threshold penalty; a --dense run has no masks to use it");
    }
    if a.dense && a.reset != "paper" {
        bail!("--reset says what a masked layer keeping <= 1 % does; a --dense run has none");
    }
    // (--sparse-input applies to dense layers too: their input's zeros.)
    if a.dense && a.sparse_keep.is_some() {
        bail!(
            "--sparse-keep says when a masked layer's products skip its pruned weights; a \
             --dense run has no masks"
        );
    }
    let optimizer = a.optimizer.clone().unwrap_or(d.optimizer.clone());
    check_momentum(&optimizer, a.momentum)?;
    let (lr, note) = learning_rate(a.lr, &d, &optimizer, a.momentum.is_some());
    if let Some(n) = note {
        eprintln!("{n}");
    }
    let lr_steps = a.lr_steps.clone().map_or(d.lr_steps, |s| s.0);
    if lr_steps.is_empty() && a.lr_gamma.is_some() {
        bail!(
            "--lr-gamma multiplies the learning rate at the --lr-steps epochs, and this run has \
             none ({}): give --lr-steps {}(e.g. --lr-steps 15), or drop --lr-gamma",
            if a.lr_steps.is_some() {
                "--lr-steps none".to_string()
            } else {
                format!("{} has no default steps", a.model)
            },
            if a.lr_steps.is_some() { "epochs " } else { "" }
        );
    }
    Ok(TrainConfig {
        model: a.model.clone(),
        dense: a.dense,
        alpha: a.alpha.unwrap_or(d.alpha),
        epochs: a.epochs.unwrap_or(d.epochs),
        batch: a.batch.unwrap_or(d.batch),
        lr,
        lr_steps,
        lr_gamma: a.lr_gamma.unwrap_or(d.lr_gamma),
        momentum: a.momentum.unwrap_or(d.momentum),
        weight_decay: a.weight_decay.unwrap_or(d.weight_decay),
        seed: a.seed,
        limit_train: a.limit_train,
        log_every: a.log_every,
        data: a.data.clone(),
        optimizer,
        target_keep: a.target_keep,
        target_epoch: a.target_epoch,
        reset: a.reset.clone(),
        valid: a.valid,
        sparse_keep: a.sparse_keep,
        sparse_input: a.sparse_input,
    })
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct TermProgress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    epoch: usize,
    epochs: usize,
    steps: u64,
    /// The last step a plain (non-terminal) line was printed for.
    printed: u64,
    /// Stderr was closed (a pipe whose reader is gone): nothing more is written.
    gone: bool,
}

impl TermProgress {
    /// A line on stderr. A closed one (`dst train 2>&1 | head`) stops the run at its next log
    /// point with its checkpoint, as a first Ctrl-C does, instead of killing it mid-epoch.
    fn say(&mut self, text: &str) {
        use std::io::Write;
        if self.gone {
            return;
        }
        if let Err(e) = writeln!(std::io::stderr(), "{text}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.gone = true;
                train::interrupt::request();
            }
        }
    }
}

impl Progress for TermProgress {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: u64) {
        (self.epoch, self.epochs, self.steps, self.printed) = (epoch, epochs, steps, 0);
        if !self.plain {
            let bar = indicatif::ProgressBar::new(steps);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} steps {msg}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{epoch}/{epochs}"));
            self.bar = Some(bar);
        }
    }
    fn step(&mut self, done: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                // The position first: a redraw between the two never shows this message (the
                // loss so far) beside the last position.
                bar.set_position(done);
                // The time left once there is a rate to tell it from (at 0 steps indicatif's
                // estimate reads "0s", as if done).
                let eta = dst::report::eta_text(bar.eta().as_secs());
                bar.set_message(format!("{msg} (eta {eta})"));
            }
            // Lines, not a bar: one per 100 steps at most, and the epoch's last.
            None if done >= self.printed + 100 || done == self.steps => {
                self.printed = done;
                let text = format!(
                    "epoch {}/{} step {done}/{} {msg}",
                    self.epoch, self.epochs, self.steps
                );
                self.say(&text)
            }
            None => {}
        }
    }
    fn line(&mut self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => self.say(msg),
        }
    }
    fn finish_epoch(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `dst train`; `given`: the flags on its command line (`--lr`, `--resume`, ...).
fn cmd_train(a: TrainArgs, given: &[String]) -> anyhow::Result<()> {
    // made_here: the run's folder did not exist before this command.
    let mut made_runs = false;
    let (cfg, out, resume, made_here) = match &a.resume {
        Some(dir) => {
            let others: Vec<&str> = given
                .iter()
                .map(String::as_str)
                .filter(|f| !["--resume", "--epochs"].contains(f))
                .collect();
            if !others.is_empty() {
                bail!(
                    "--resume continues {} with the settings in its config.json; only --epochs \
                     may be given with it (also given: {}). To train with other settings, start \
                     a new run",
                    dir.display(),
                    others.join(", ")
                );
            }
            // A run's checkpoint stands for its folder, as in the other commands.
            let dir = &match dir.file_name() {
                Some(n) if n == dst::checkpoint::FILE_NAME && dir.is_file() => dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .to_path_buf(),
                _ => dir.clone(),
            };
            if !dir.is_dir() {
                bail!(
                    "--resume {}: {}; give the folder of the run to continue",
                    dir.display(),
                    if !dir.exists() {
                        "no such folder"
                    } else if dir
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
                    {
                        "is a file, not a run folder (a checkpoint is resumed only as its run \
                         folder's checkpoint.safetensors, beside that run's config.json; an \
                         export cannot be resumed)"
                    } else {
                        "is a file, not a run folder"
                    }
                );
            }
            if train::in_use(dir) {
                return Err(train::TrainError::InUse { dir: dir.clone() }.into());
            }
            let path = dir.join("config.json");
            // A folder without one is no run folder: said so (a raw "No such file" named it).
            if !path.exists() {
                bail!(
                    "--resume {}: not a run folder (no config.json there){}; give the folder \
                     `dst train` wrote (its --out, or runs/<timestamp>-<model>)",
                    dir.display(),
                    if dst::data::holds_mnist(dir) || dst::data::cifar::holds_any(dir) {
                        ": it holds a dataset (that is --data's)"
                    } else {
                        ""
                    }
                );
            }
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("--resume {}: cannot read its config.json", dir.display())
            })?;
            let mut cfg: TrainConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a dst run config", path.display()))?;
            // A key dst does not know (a misspelt one, beside the real one or in its place,
            // where the real one has a default) is named, not silently ignored.
            let known = serde_json::to_value(&cfg).unwrap_or_default();
            let unknown: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| known.get(k).is_none())
                .collect();
            if !unknown.is_empty() {
                eprintln!(
                    "warning: {} has {} dst does not know, left out: {}",
                    path.display(),
                    if unknown.len() == 1 { "a key" } else { "keys" },
                    unknown.join(", ")
                );
            }
            // Only the length of the run may change on resume. A targeted run keeps the target
            // epoch it steered by (the header names it).
            if let Some(epochs) = a.epochs {
                cfg.epochs = epochs;
            }
            if let Some(e) = train::pinned_target_epoch(&cfg, dir) {
                cfg.target_epoch = Some(e);
            }
            // A length the checkpoint already holds: refused before the adapter opens.
            train::check_resume_length(dir, cfg.epochs)?;
            cfg.check_data()
                .map_err(|e| train::resumed_data_error(e, &cfg, dir))?;
            (cfg, dir.clone(), true, false)
        }
        None => {
            let cfg = config_from(&a)?;
            cfg.validate()?;
            cfg.check_data()?;
            let (out, made_here) = match &a.out {
                Some(out) => {
                    check_new_run_dir(out)?;
                    (out.clone(), !out.exists())
                }
                None => {
                    // `runs` too goes again if this run made it and is refused.
                    made_runs = !std::path::Path::new("runs").exists();
                    (claim_default_run_dir(&cfg)?, true)
                }
            };
            (cfg, out, false, made_here)
        }
    };
    if resume {
        // The settings come from the run's config.json (a hand-edited value is named there).
        cfg.validate_resumed().with_context(|| {
            format!(
                "the settings of {} (its config.json{})",
                out.display(),
                if given.iter().any(|f| f == "--epochs") {
                    ", with --epochs"
                } else {
                    ""
                }
            )
        })?;
    } else {
        cfg.validate()?;
    }
    // Said with the header, once the run's folder accepts the resumed run.
    let short_of_target = cfg.target_keep.and_then(|r| {
        let e = cfg.target_epoch_or_default();
        (e > cfg.epochs).then(|| {
            format!(
                "\nnote: this run steers to keep {}% by epoch {e} and now ends at epoch {}, \
                 before its target epoch: it follows the path to the target that far",
                dst::report::percent(r),
                cfg.epochs
            )
        })
    });
    // Steps the run will not reach: named as the user's (--lr-steps, or kept from the run a
    // --resume continues) or as the model's own.
    let model_steps =
        dst::models::info(&cfg.model).map_or(Vec::new(), |m| m.defaults.lr_steps.to_vec());
    let own_steps = given.iter().any(|f| f == "--lr-steps")
        || (a.resume.is_some() && cfg.lr_steps != model_steps);
    let past: Vec<String> = cfg
        .lr_steps
        .iter()
        .filter(|&&e| e >= cfg.epochs)
        .map(|e| e.to_string())
        .collect();
    if let Some(e) = past.first() {
        if own_steps {
            eprintln!(
                "warning: --lr-steps {e}: the learning rate changes after epoch {e}, and this run \
                 ends at epoch {} (it applies only if the run is extended with --resume --epochs)",
                cfg.epochs
            );
        } else {
            eprintln!(
                "note: {}'s learning-rate {} after {} {} {} past this run's end at epoch {}; give \
                 --lr-steps to lower the rate within it",
                cfg.model,
                if past.len() == 1 { "step" } else { "steps" },
                if past.len() == 1 { "epoch" } else { "epochs" },
                past.join(", "),
                if past.len() == 1 { "lies" } else { "lie" },
                cfg.epochs
            );
        }
    }
    // A run refused before it wrote anything leaves no folder behind (remove_dir removes only an
    // empty one), nor the `runs` folder made for it.
    let unclaim = || {
        if made_here {
            let _ = std::fs::remove_dir(&out);
            if made_runs {
                let _ = std::fs::remove_dir("runs");
            }
        }
    };
    let gpu = Gpu::from_env().inspect_err(|_| unclaim())?;
    eprintln!("adapter: {}", gpu.describe());
    let header = format!(
        "training {} {} ({}{}, {}, batch {}, {} lr {}{}{}{}, seed {}) on {} -> {}",
        if cfg.dense { "dense" } else { "DST" },
        cfg.model,
        match cfg.target_keep {
            // A dense run has no thresholds for alpha to push.
            _ if cfg.dense => "no masks".to_string(),
            Some(r) => format!(
                "alpha from {} steered to keep {}% by epoch {}",
                cfg.alpha,
                dst::report::percent(r),
                cfg.target_epoch_or_default()
            ),
            None => format!("alpha {}", cfg.alpha),
        },
        if cfg.dense || cfg.reset == "paper" {
            String::new()
        } else {
            format!(", reset {}", cfg.reset)
        },
        dst::report::plural(cfg.epochs, "epoch"),
        cfg.batch,
        cfg.optimizer,
        dst::report::number(cfg.lr),
        if cfg.lr_steps.is_empty() {
            String::new()
        } else {
            let steps: Vec<String> = cfg.lr_steps.iter().map(|s| s.to_string()).collect();
            format!(
                " x{} after epochs {}",
                dst::report::number(cfg.lr_gamma),
                steps.join(", ")
            )
        },
        if cfg.optimizer == "adam" {
            String::new()
        } else {
            format!(", momentum {}", cfg.momentum)
        },
        if cfg.weight_decay == 0.0 {
            String::new()
        } else {
            format!(", weight decay {}", cfg.weight_decay)
        },
        cfg.seed,
        cfg.data
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "the embedded MNIST subset".into()),
        out.display()
    ) + short_of_target.as_deref().unwrap_or("");
    let mut progress = term_progress();
    let s = train::train(
        gpu,
        &cfg,
        &RunOptions {
            out: out.clone(),
            resume,
            header: Some(header),
        },
        &mut progress,
    );
    if s.is_err() {
        unclaim();
    }
    let s = s?;
    print_table(&s.last.layers, !s.dense);
    // Where the run's policy acts on its final masks (the floor, or a reset to dense), said as
    // `dst eval` and `dst export` say it.
    let ck_path = out.join(dst::checkpoint::FILE_NAME);
    if let Ok(ck) = dst::checkpoint::Checkpoint::load(&ck_path) {
        print_policy_note(&ck, &ck_path);
    }
    println!(
        "test accuracy {:.2}%, model keep ratio {:.4} ({:.2}% of weights remain), {:.2} ms/step",
        s.last.test_acc,
        s.last.keep_ratio,
        100.0 * s.last.keep_ratio,
        s.mean_ms_per_step
    );
    if s.dense {
        // Nothing masked: no keep ratio to pick an epoch by.
        println!(
            "best accuracy {:.2}% (epoch {})",
            s.best_acc, s.best_acc_epoch
        );
    } else {
        println!(
            "best accuracy {:.2}% (epoch {}, keep {:.4}); lowest keep {:.4} (epoch {}, accuracy {:.2}%)",
            s.best_acc, s.best_acc_epoch, s.best_acc_keep, s.lowest_keep, s.lowest_keep_epoch, s.lowest_keep_acc
        );
    }
    // The pick that does not look at the test set (`--valid`), said beside those that do.
    if let (Some(e), Some(v), Some(t), Some(k)) = (
        s.best_valid_epoch,
        s.best_valid_acc,
        s.best_valid_test_acc,
        s.best_valid_keep,
    ) {
        println!(
            "best on validation: epoch {e}, validation {v:.2}%, test {t:.2}%{} (the pick that \
             does not look at the test set)",
            if s.dense {
                String::new()
            } else {
                format!(", keep {k:.4}")
            }
        );
    }
    println!("run directory: {}", out.display());
    Ok(())
}

/// What a new run's `--out` may be: a new folder, or an empty one. A folder with a run in it
/// is `--resume`'s; one with other files is not ours to write into (config.json, summary.json
/// and the charts would replace files of the same names).
fn check_new_run_dir(out: &std::path::Path) -> anyhow::Result<()> {
    if !out.exists() {
        // A folder that cannot be made (a parent is a file): refused now, not after the
        // adapter and the data are ready.
        if let Some(f) = dst::checkpoint::file_in_the_way(out) {
            bail!(
                "--out {}: the folder cannot be made: {} is a file",
                out.display(),
                f.display()
            );
        }
        return Ok(());
    }
    if !out.is_dir() {
        bail!(
            "--out {}: is a file, not a folder; give a folder for the run",
            out.display()
        );
    }
    // Being written by another process: said so, whatever the folder holds by now.
    if train::in_use(out) {
        return Err(train::TrainError::InUse {
            dir: out.to_path_buf(),
        }
        .into());
    }
    let run = train::RunDir {
        dir: out.to_path_buf(),
    };
    // A run's folder (its config.json beside a log or checkpoint): --resume's. Without a
    // config.json, what is there is no run to resume (a user's metrics.jsonl): "not empty" below.
    if run.holds_run() && out.join("config.json").is_file() {
        // A run that diverged: --resume would take it up with the settings it diverged with.
        if let Some(d) = dst::report::Run::load(out).ok().and_then(|r| r.diverged) {
            let checkpoint = run.checkpoint().is_file();
            bail!(
                "{} holds a run that diverged at epoch {}, step {} ({}); `dst train --resume {}` \
                 would {} with the settings it diverged with: to train with other settings, \
                 remove it or pick another --out",
                out.display(),
                d.epoch,
                d.step,
                if checkpoint {
                    "its checkpoint is of an earlier epoch"
                } else {
                    "before its first checkpoint: only its settings and log are there"
                },
                dst::report::shell_word(out),
                if checkpoint {
                    "continue it"
                } else {
                    "train it again from the start"
                }
            );
        }
        bail!(
            "{} already holds a run; continue it with --resume {} or pick another --out",
            out.display(),
            dst::report::shell_word(out)
        );
    }
    let names: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("--out {}: cannot list the folder", out.display()))?
        .map(|e| e.map_or("?".into(), |e| e.file_name().to_string_lossy().into_owned()))
        // The lock file of a run that never wrote anything (`train::LOCK_FILE`).
        .filter(|n| n != dst::train::LOCK_FILE)
        .collect();
    if let Some(first) = names.first() {
        bail!(
            "--out {} is not empty (it holds `{first}`{}); a run writes config.json, \
             metrics.jsonl, summary.json, its checkpoint and charts there: give a new or empty \
             folder",
            out.display(),
            match names.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            }
        );
    }
    Ok(())
}

/// The default run folder, runs/<timestamp>-<model>[-dense], made here (exclusively: two runs
/// started in the same second get two folders, the second with a suffix -2, -3, ...).
fn claim_default_run_dir(cfg: &TrainConfig) -> anyhow::Result<PathBuf> {
    let base = format!(
        "{}-{}{}",
        timestamp(),
        cfg.model,
        if cfg.dense { "-dense" } else { "" }
    );
    claim_run_dir(std::path::Path::new("runs"), &base)
}

/// Makes `root/base`, or `root/base-2`, `-3`, ... when taken, and returns it.
fn claim_run_dir(root: &std::path::Path, base: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    for n in 1..1000 {
        let dir = root.join(if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!(
        "{}: 999 run folders named {base} already exist",
        root.display()
    )
}

/// A threshold in the per-layer table, to 3 significant digits: below 0.01 in scientific
/// notation (CIFAR-10's alpha 5e-6 leaves them near 1e-5, where "-0.0000" said nothing, and
/// 0.0005138 read "0.0005" beside "4.75e-4"), else to 4 decimals; "-" where there is none.
fn threshold_text(v: Option<f64>, masked: bool) -> String {
    match v {
        Some(v) if masked && v != 0.0 && v.abs() < 0.01 => format!("{v:.2e}"),
        Some(v) if masked => format!("{v:.4}"),
        _ => "-".to_string(),
    }
}

/// The per-layer table: the name column as wide as the longest name (a residual block's
/// `block2_1.shortcut`), so that the columns stay aligned. A dense model has no thresholds: its
/// threshold columns read "-".
fn print_table(layers: &[LayerStats], masked: bool) {
    let t = |v: Option<f64>| threshold_text(v, masked);
    let w = dst::models::name_width(layers.iter().map(|l| l.name.as_str()));
    println!(
        "{:<w$} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "layer", "shape", "kept", "total", "keep", "t min", "t mean", "t max"
    );
    for l in layers {
        println!(
            "{:<w$} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
            l.name,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.kept,
            l.total,
            dst::report::share(l.kept, l.total, 1.0, 4),
            t(l.threshold_min),
            t(l.threshold_mean),
            t(l.threshold_max)
        );
    }
}

/// Where the run's dead-layer policy acts on a checkpoint's masks (a matrix that keeps 1 % or
/// less), one line as `dst export` says it; nothing where it does not.
fn print_policy_note(ck: &dst::checkpoint::Checkpoint, path: &std::path::Path) {
    if let Ok((_, r)) = dst::export::from_checkpoint(ck, path, dst::export::Layout::Dense) {
        if let Some(note) = dst::export::policy_note(r.resets, r.policy) {
            println!("{note}");
        }
    }
}

fn cmd_eval(checkpoint: PathBuf, data: Option<PathBuf>) -> anyhow::Result<()> {
    // The whole file read and checked once (a damaged tensor, a model this build lacks) before
    // the adapter opens; once, so that it may come through a pipe.
    let ck = dst::checkpoint::Checkpoint::load(&checkpoint)?;
    let model = ck.meta("model").unwrap_or_default().to_string();
    dst::models::check_name(&model)?;
    if let Some(w) = dst::checkpoint::foreign_to_its_folder(&ck, &checkpoint) {
        eprintln!("warning: {w}");
    }
    // Without --data: the folder the run trained on (its checkpoint's config records it).
    let recorded = ck.trained_on_at(&checkpoint).map(PathBuf::from);
    let data =
        dst::export::infer::data_folder(data.as_deref(), recorded.as_deref(), "the run", true)?;
    // The checkpoint's model decides the dataset. Only the test set is scored: an MNIST folder
    // needs only its two test files (t10k-*), a CIFAR-10 one its test_batch.bin, as for
    // `dst infer`. `what` names the data in the result line.
    let t = dst::export::infer::test_set(&model, data.as_deref())?;
    // Images of another size: refused naming their folder, before the adapter opens.
    dst::export::infer::check_test_set(&model, &t)?;
    let what = t.source.clone();
    let data = dst::data::TrainTest {
        train: t.images.limit(0),
        test: t.images,
        source: t.source,
    };
    let gpu = Gpu::from_env()?;
    // Said before the work, which takes a while on a CPU adapter.
    eprintln!("adapter: {}", gpu.describe());
    eprintln!("checkpoint: {}", checkpoint_line(&ck, &model));
    let mut progress = dst::export::infer::progress_line(data.test.count);
    let (acc, layers, _) =
        train::evaluate_checkpoint_with(gpu, &ck, &checkpoint, &data, &mut progress)?;
    print_table(&layers, ck.meta("masked") != Some("false"));
    print_policy_note(&ck, &checkpoint);
    let kept: u64 = layers.iter().map(|l| l.kept).sum();
    let total: u64 = layers.iter().map(|l| l.total).sum();
    println!(
        "test accuracy {acc:.2}% on the {} of {what}, model keep ratio {:.4}",
        dst::report::plural(data.test.count, "test image"),
        kept as f64 / total.max(1) as f64
    );
    Ok(())
}

/// What `dst eval` says of the checkpoint it scores: its model and kind, the epoch it holds of
/// its run's epochs and its step; with a hold-out split, that it holds the last epoch's weights.
fn checkpoint_line(ck: &dst::checkpoint::Checkpoint, model: &str) -> String {
    let cfg: Option<TrainConfig> = ck.meta("config").and_then(|c| serde_json::from_str(c).ok());
    let kind = if ck.meta("masked") == Some("false") {
        "dense"
    } else {
        "DST"
    };
    let mut s = format!("{model} {kind}");
    if let Some(e) = ck.meta("epoch") {
        s.push_str(&format!(", epoch {e}"));
        if let Some(c) = &cfg {
            s.push_str(&format!(" of {}", c.epochs));
        }
    }
    if let Some(step) = ck.meta("step") {
        s.push_str(&format!(" (step {step})"));
    }
    if cfg.is_some_and(|c| c.valid.is_some()) {
        s.push_str(
            "; its weights are those of that epoch, the last one saved (summary.json names the \
             epoch best on the validation split)",
        );
    }
    s
}

fn cmd_fetch(dataset: &str, to: &std::path::Path, extra: Vec<String>) -> anyhow::Result<()> {
    use dst::data::fetch;
    if let Some(m) = extra
        .iter()
        .find(|m| !(m.starts_with("http://") || m.starts_with("https://")))
    {
        bail!("--mirror {m}: give a base URL starting with http:// or https://");
    }
    let mut mirrors = extra;
    // The first Ctrl-C stops the download and removes what it left; a second stops at once.
    let _catching = train::interrupt::Catching::saying(
        "stopping the download (Ctrl-C again to stop at once)",
        "`dst fetch` run again removes what this download left",
    );
    match dataset {
        "mnist" => {
            mirrors.extend(fetch::MNIST_MIRRORS.iter().map(|s| s.to_string()));
            fetch::fetch(to, &mirrors, &fetch::MNIST_FILES, &mut |l| eprintln!("{l}"))?;
            println!("MNIST ready in {}", to.display());
        }
        "cifar10" => {
            mirrors.extend(fetch::CIFAR10_MIRRORS.iter().map(|s| s.to_string()));
            fetch::fetch_archive(to, &mirrors, &fetch::CIFAR10_ARCHIVE, &mut |l| {
                eprintln!("{l}")
            })?;
            println!("CIFAR-10 ready in {}", to.display());
        }
        _ => bail!("unknown dataset {dataset:?}; available: mnist, cifar10"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thresholds keep 3 significant digits at any size below 1 (0.0005138 was "0.0005").
    #[test]
    fn thresholds_keep_three_digits() {
        assert_eq!(threshold_text(Some(0.0005138), true), "5.14e-4");
        assert_eq!(threshold_text(Some(-0.0008029), true), "-8.03e-4");
        assert_eq!(threshold_text(Some(0.0123), true), "0.0123");
        assert_eq!(threshold_text(Some(0.0), true), "0.0000");
        assert_eq!(threshold_text(Some(0.01), false), "-");
        assert_eq!(threshold_text(None, true), "-");
    }

    /// An option the command lacks is named as such; clap's tip to pass it as a value after
    /// `--` is gone. Other tips (a similar option) stay as clap words them.
    #[test]
    fn a_missing_option_is_named_as_missing() {
        let text = |args: &[&str]| Cli::command().try_get_matches_from(args).unwrap_err();
        let e = text(&["dst", "report", "runs", "--data", "x"]);
        let fixed = no_such_option(&e.render().to_string()).unwrap();
        assert!(
            fixed.contains(
                "tip: `dst report` has no option --data; `dst report --help` lists its options"
            ) && !fixed.contains("-- --data")
                && fixed.contains("unexpected argument '--data'"),
            "{fixed}"
        );
        let e = text(&["dst", "train", "--epoch", "3"]);
        assert_eq!(no_such_option(&e.render().to_string()), None);
    }

    /// Without --lr, another optimiser than the model's takes its own usual rate, noted; the
    /// model's own optimiser, or --lr given, takes no note.
    #[test]
    fn another_optimiser_takes_its_own_learning_rate() {
        let lenet5 = TrainConfig::for_model("lenet5").unwrap();
        let lstm = TrainConfig::for_model("lstm-a").unwrap();
        assert_eq!(learning_rate(None, &lenet5, "sgd", false), (0.01, None));
        assert_eq!(
            learning_rate(Some(0.5), &lenet5, "adam", false),
            (0.5, None)
        );
        let (lr, note) = learning_rate(None, &lenet5, "adam", false);
        assert_eq!(lr, 1e-3);
        assert_eq!(
            note.unwrap(),
            "note: --optimizer adam without --lr: lr 0.001, adam's usual rate (lenet5's 0.01 is \
             for sgd); give --lr for another"
        );
        // SGD for an LSTM: its momentum said too (it was taken in silence).
        let (lr, note) = learning_rate(None, &lstm, "sgd", false);
        assert_eq!(lr, 0.01);
        assert!(
            note.as_deref().is_some_and(|n| n
                .contains("(lstm-a's 0.001 is for adam), momentum 0.9 (--momentum for another)")),
            "{note:?}"
        );
        assert_eq!(learning_rate(None, &lstm, "adam", false), (1e-3, None));
        // --momentum given: its value is the header's, not the note's.
        let (_, note) = learning_rate(None, &lstm, "sgd", true);
        assert!(note.is_some_and(|n| !n.contains("momentum")));
        // An unknown one: no note (it is refused with its name later).
        assert_eq!(learning_rate(None, &lenet5, "rmsprop", false), (0.01, None));
    }

    /// Every option and argument of every command says what it is in `--help` (`--seed` and
    /// reproduce's `--seeds` and `--out` said nothing).
    #[test]
    fn every_option_is_described() {
        let cli = Cli::command();
        let mut bare = Vec::new();
        for c in cli.get_subcommands() {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.get_help().is_none() && !["help", "version"].contains(&id) {
                    bare.push(format!("dst {} {id}", c.get_name()));
                }
            }
        }
        assert!(bare.is_empty(), "no help text: {bare:?}");
    }

    /// A negative number in scientific notation after an option is its value (clap read
    /// `-1e-4` as options), so that it meets the option's own check; nothing else changes.
    #[test]
    fn negative_exponents_are_values() {
        let join = |args: &[&str]| -> Vec<String> {
            joined_negative_values(args.iter().map(std::ffi::OsString::from))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            join(&["dst", "sweep", "--alpha", "-1e-4,1e-3", "--out", "x"]),
            ["dst", "sweep", "--alpha=-1e-4,1e-3", "--out", "x"]
        );
        assert_eq!(
            join(&["dst", "train", "--alpha", "-1E-4"]),
            ["dst", "train", "--alpha=-1E-4"]
        );
        for args in [
            &["dst", "train", "--alpha", "-0.0001"][..],
            &["dst", "train", "--alpha=-1e-4"][..],
            &["dst", "train", "--alpha", "1e-4", "-e"][..],
            &["dst", "-1e-4"][..],
            &["dst", "report", "--", "--odd", "-1e5"][..],
        ] {
            assert_eq!(join(args), args);
        }
        let e = Cli::command()
            .try_get_matches_from(join(&["dst", "train", "--alpha", "-1e-4"]))
            .unwrap();
        let (_, m) = e.subcommand().unwrap();
        assert_eq!(m.get_one::<f64>("alpha"), Some(&-1e-4));
    }

    #[test]
    fn eta_text_is_short() {
        use dst::report::eta_text;
        assert_eq!(eta_text(0), "0s");
        assert_eq!(eta_text(59), "59s");
        assert_eq!(eta_text(60), "1m00s");
        assert_eq!(eta_text(185), "3m05s");
        assert_eq!(eta_text(7800), "2h10m");
    }

    /// `--seeds "1, 2"` and `--alpha "1e-4, 5e-4"` read as written (spaces after the commas were
    /// refused as invalid digits); an empty or negative item is still refused.
    #[test]
    fn list_items_may_have_spaces() {
        let cli = |args: &[&str]| Cli::try_parse_from([&["dst"], args].concat());
        let Ok(Cli {
            command: Some(Command::Sweep(a)),
        }) = cli(&[
            "sweep",
            "--alpha",
            "1e-4, 5e-4",
            "--seeds",
            " 1, 2 ",
            "--out",
            "x",
        ])
        else {
            panic!("not parsed");
        };
        assert_eq!((a.alpha, a.seeds), (vec![1e-4, 5e-4], vec![1, 2]));
        for bad in [
            ["--seeds", "1,,2"],
            ["--seeds", "1, -2"],
            ["--alpha", "1e-4, "],
        ] {
            let mut args = vec!["sweep", "--alpha", "1e-4", "--out", "x"];
            args.extend(bad);
            assert!(cli(&args).is_err(), "{bad:?}");
        }
        assert!(list_seed(" 7 ").is_ok_and(|s| s == 7));
    }

    #[test]
    fn run_folders_claimed_in_the_same_second_differ() {
        let root = std::env::temp_dir().join(format!("dst-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = claim_run_dir(&root, "20260101-000000-lenet300").unwrap();
        let b = claim_run_dir(&root, "20260101-000000-lenet300").unwrap();
        let c = claim_run_dir(&root, "20260101-000000-lenet300").unwrap();
        assert_eq!(a, root.join("20260101-000000-lenet300"));
        assert_eq!(b, root.join("20260101-000000-lenet300-2"));
        assert_eq!(c, root.join("20260101-000000-lenet300-3"));
        assert!(a.is_dir() && b.is_dir() && c.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_error_quotes_each_cause_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "File exists (os error 17)",
        );
        let e = anyhow::Error::new(dst::train::TrainError::Io {
            path: "afile".into(),
            source: io,
        });
        assert_eq!(error_text(&e), "afile: File exists (os error 17)");
        let e = anyhow::anyhow!("inner reason").context("outer");
        assert_eq!(error_text(&e), "outer: inner reason");
    }
}
