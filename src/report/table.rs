//! Aggregating finished runs: one row per configuration (everything but the seed: model, dense or
//! alpha, training settings, epochs, data; `RunConfig::settings` says what counts), the
//! mean ± standard deviation over its seeds of test accuracy and remaining %, under each epoch
//! selection rule; Markdown and CSV renderings; the paper's Table 1 to compare with.

use std::fmt::Write;

use super::runs::{Run, RunConfig, SummaryFile};

/// Which epoch of a run a figure comes from (METHOD.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The last epoch: no selection at all.
    Last,
    /// The epoch with the lowest model keep ratio, chosen on the test set (the paper's code). For
    /// a dense run, whose keep ratio never changes, the paper's code's other pick: the epoch with
    /// the best test accuracy.
    LowestKeep,
    /// The epoch with the best validation accuracy (runs trained with `--valid N`); test figures
    /// of that epoch.
    BestValid,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::Last, Rule::LowestKeep, Rule::BestValid];

    pub fn short(self) -> &'static str {
        match self {
            Rule::Last => "last epoch",
            Rule::LowestKeep => "lowest keep (test)",
            Rule::BestValid => "best on validation",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::LowestKeep => "lowest_keep_on_test",
            Rule::BestValid => "best_valid",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            Rule::Last => "the figures of the last epoch; no selection.",
            Rule::LowestKeep => "the epoch with the lowest model keep ratio, picked by looking at the test set, as the paper's public code reports; for dense runs (constant keep) its other pick, the epoch with the best test accuracy. Optimistic: the test set chooses the epoch.",
            Rule::BestValid => "the epoch with the best accuracy on a validation split held out of the training images (`dst train --valid N`), with that epoch's test accuracy and keep ratio; the test set plays no part in the choice. Only for runs trained with a validation split.",
        }
    }

    /// (test accuracy %, remaining %) of a finished run; None where the rule does not apply.
    pub fn pick(self, s: &SummaryFile) -> Option<(f64, f64)> {
        match self {
            Rule::Last => Some((s.last.test_acc, 100.0 * s.last.keep_ratio)),
            Rule::LowestKeep if s.dense => Some((s.best_acc, 100.0 * s.best_acc_keep)),
            Rule::LowestKeep => Some((s.lowest_keep_acc, 100.0 * s.lowest_keep)),
            Rule::BestValid => Some((s.best_valid_test_acc?, 100.0 * s.best_valid_keep?)),
        }
    }
}

/// Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Option<Stat> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }

    /// "97.69 ± 0.14" (2 decimals), or "97.69" for a single run.
    pub fn show(&self) -> String {
        if self.n > 1 {
            format!("{:.2} ± {:.2}", self.mean, self.std)
        } else {
            format!("{:.2}", self.mean)
        }
    }
}

/// A number of the paper's Table 1: mean ± standard deviation over 5 runs.
pub type PaperStat = (f64, f64);

/// One row of the paper's Table 1.
pub struct PaperRow {
    /// `dst train --model` name.
    pub model: &'static str,
    pub title: &'static str,
    pub dense_acc: PaperStat,
    pub dst_acc: PaperStat,
    pub remaining: PaperStat,
    /// The CIFAR-10 rows' second, sparser DST result (accuracy, remaining %).
    pub sparser: Option<(PaperStat, PaperStat)>,
}

/// Liu et al., ICLR 2020 (arXiv:2005.06870), Table 1 (METHOD.md section 6): the MNIST rows
/// (full MNIST, 20 epochs) and the CIFAR-10 rows (160 epochs), which give two DST results each;
/// each figure a mean ± standard deviation over 5 runs, accuracy and remaining weights in %. The
/// LSTM rows' remaining % were counted differently by the paper's code (METHOD.md section 6).
pub const PAPER_TABLE1: &[PaperRow] = &[
    PaperRow {
        model: "lenet300",
        title: "LeNet-300-100",
        dense_acc: (98.16, 0.06),
        dst_acc: (97.69, 0.14),
        remaining: (2.48, 0.21),
        sparser: None,
    },
    PaperRow {
        model: "lenet5",
        title: "LeNet-5-Caffe",
        dense_acc: (99.18, 0.05),
        dst_acc: (99.11, 0.07),
        remaining: (1.64, 0.13),
        sparser: None,
    },
    PaperRow {
        model: "lstm-a",
        title: "LSTM-a",
        dense_acc: (98.64, 0.12),
        dst_acc: (98.70, 0.06),
        remaining: (1.93, 0.03),
        sparser: None,
    },
    PaperRow {
        model: "lstm-b",
        title: "LSTM-b",
        dense_acc: (98.87, 0.07),
        dst_acc: (98.89, 0.11),
        remaining: (0.98, 0.04),
        sparser: None,
    },
    PaperRow {
        model: "vgg16",
        title: "VGG-16",
        dense_acc: (93.75, 0.21),
        dst_acc: (93.93, 0.05),
        remaining: (8.82, 0.34),
        sparser: Some(((93.02, 0.37), (3.76, 0.53))),
    },
    PaperRow {
        model: "wrn-16-8",
        title: "WRN-16-8",
        dense_acc: (95.18, 0.06),
        dst_acc: (95.05, 0.08),
        remaining: (9.86, 0.22),
        sparser: Some(((94.73, 0.11), (4.64, 0.15))),
    },
];

/// The models of Table 1's MNIST rows: what `dst reproduce table1` trains by default.
pub fn mnist_rows() -> Vec<&'static str> {
    PAPER_TABLE1
        .iter()
        .filter(|r| {
            crate::models::info(r.model).is_ok_and(|i| i.dataset == crate::data::DatasetKind::Mnist)
        })
        .map(|r| r.model)
        .collect()
}

pub fn paper_row(model: &str) -> Option<&'static PaperRow> {
    PAPER_TABLE1.iter().find(|r| r.model == model)
}

fn show_paper(s: PaperStat) -> String {
    format!("{:.2} ± {:.2}", s.0, s.1)
}

/// One configuration: the runs that differ only in their seed.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub model: String,
    pub dense: bool,
    /// None for dense rows; a steered run's starting alpha.
    pub alpha: Option<f64>,
    /// `--target-keep`: the keep ratio a steered DST row asked for (its alpha moved toward it).
    pub target_keep: Option<f64>,
    /// "dense", "DST alpha 5e-4", "DST target keep 5 %, reset floor" (`RunConfig::kind`), then
    /// the settings in which this row differs from another row of its model ("lr 0.1").
    pub label: String,
    /// The row's settings beyond its kind (`RunConfig::settings`).
    pub settings: Vec<(String, String)>,
    pub epochs: usize,
    /// Where the data came from: a folder or "embedded subset", and the training-image limit.
    pub data: String,
    pub seeds: Vec<u64>,
    /// Seeds of finished runs given again (copies of a run): counted once, under `seeds`.
    pub repeated: Vec<u64>,
    /// Of `repeated`, the seeds whose runs given again hold other results than the one counted
    /// (not copies: another adapter, other products): the first given is counted, and the
    /// table says so.
    pub differing: Vec<u64>,
    /// Run directories that have not finished (no summary.json), left out of the figures.
    pub unfinished: usize,
    /// Of `unfinished`, the runs that diverged (their log ends with the divergence).
    pub diverged: usize,
    /// Per rule (in `Rule::ALL` order): (test accuracy %, remaining %) over the finished runs.
    pub stats: [Option<(Stat, Stat)>; 3],
    /// The run folders in the row (finished or not), as given.
    pub dirs: Vec<std::path::PathBuf>,
    /// How the row's runs differ from the paper's setting of their model ("alpha 5e-3", "4
    /// epochs", "embedded subset"): its Table 1 figures were not measured so. Empty: the
    /// paper's settings (on a data folder, which may hold the full set).
    pub unlike_paper: Vec<String>,
}

impl Row {
    pub fn variant(&self) -> String {
        self.label.clone()
    }
    pub fn get(&self, rule: Rule) -> Option<(Stat, Stat)> {
        self.stats[Rule::ALL.iter().position(|r| *r == rule).unwrap()]
    }
}

/// `5e-4` rather than `0.0005`.
pub fn fmt_alpha(a: f64) -> String {
    if a == 0.0 {
        return "0".into();
    }
    format!("{a:e}")
}

/// The run's `--limit-train`, unless it was above the images there are (known from a finished
/// run's summary): such a run trained on all of them.
pub(crate) fn limit_that_left_out(r: &Run) -> Option<usize> {
    let held = r
        .summary
        .as_ref()
        .and_then(|x| x.train_images)
        .map(|t| t + r.config.valid.unwrap_or(0));
    r.config
        .limit_train
        .filter(|&n| held.is_none_or(|h| n <= h))
}

/// Where a run's data came from, for a table: the folder's name (`full`: its whole canonical
/// path, where the folder still exists), or "embedded subset", and the training-image limit and
/// validation split. A limit above the images there are (known from a finished run's summary)
/// is left out: such a run trained on all of them.
fn data_label(r: &Run, full: bool) -> String {
    let canonical = r.config.data.as_ref().and_then(|d| d.canonicalize().ok());
    let mut s = match (&r.config.data, canonical) {
        (Some(_), Some(c)) if full => c.display().to_string(),
        (Some(d), _) => d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| d.display().to_string()),
        (None, _) => "embedded subset".into(),
    };
    if let Some(n) = limit_that_left_out(r) {
        let _ = write!(s, ", first {n} train");
    }
    if let Some(v) = r.config.valid {
        let _ = write!(s, ", {v} held out");
    }
    s
}

/// `unlike_paper`'s note on a run on data in MNIST's format that is not MNIST's files.
const NOT_MNIST_NOTE: &str = "data that is not MNIST's files";

/// Whether the run `r` trained on a folder of data in MNIST's format that is not MNIST's files
/// (a folder, as its summary records it).
fn on_other_data(r: &Run) -> bool {
    r.summary
        .as_ref()
        .is_some_and(|s| s.data.contains(crate::data::NOT_MNIST))
}

/// How the run `r` differs from the paper's setting of its model (`Row::unlike_paper`).
fn unlike_paper(r: &Run) -> Vec<String> {
    let c = &r.config;
    let Ok(info) = crate::models::info(&c.model) else {
        return Vec::new();
    };
    let d = &info.defaults;
    let mut v = Vec::new();
    match (c.dense, c.target_keep) {
        (true, _) => {}
        (false, Some(t)) => v.push(format!("target keep {} %", super::percent(t))),
        (false, None) if c.alpha != d.alpha => v.push(format!("alpha {}", fmt_alpha(c.alpha))),
        _ => {}
    }
    if c.epochs != d.epochs {
        v.push(super::plural(c.epochs, "epoch"));
    }
    let paper = RunConfig {
        optimizer: d.optimizer.into(),
        lr: d.lr,
        momentum: d.momentum,
        weight_decay: d.weight_decay,
        batch: d.batch,
        lr_steps: d.lr_steps.to_vec(),
        lr_gamma: 0.1,
        ..c.clone()
    };
    let theirs = paper.settings();
    for (k, val) in c.settings() {
        if matches!(k, "start alpha" | "target epoch") {
            continue;
        }
        if !theirs.iter().any(|(k2, v2)| *k2 == k && *v2 == val) {
            v.push(format!("{k} {val}"));
        }
    }
    if c.data.is_none() {
        v.push("the embedded subset".into());
    }
    if on_other_data(r) {
        v.push(NOT_MNIST_NOTE.into());
    }
    if let Some(n) = limit_that_left_out(r) {
        v.push(format!("first {n} train"));
    }
    if let Some(n) = c.valid {
        v.push(format!("{n} held out"));
    }
    // The reset policy acts on masks: a dense run (a sweep's baseline) has none.
    if !c.dense && c.reset.as_deref().is_some_and(|x| x != "paper") {
        v.push(format!("reset {}", c.reset.as_deref().unwrap_or("")));
    }
    v
}

/// Groups runs by configuration: runs fall in one row only when everything but their seed is the
/// same (model, kind, `RunConfig::settings`, epochs, data). Rows come in a stable order: models in
/// first-seen order, dense before DST, alphas ascending. A row's label names the settings in
/// which it differs from another row of its model.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut rows: Vec<(Row, Vec<&SummaryFile>)> = Vec::new();
    // Per row: its data as the full path (runs on two folders of one name are two rows).
    let mut full_data: Vec<String> = Vec::new();
    for r in runs {
        let c = &r.config;
        let alpha = (!c.dense).then_some(c.alpha);
        let target_keep = c.target_keep.filter(|_| !c.dense);
        let data = data_label(r, false);
        let full = data_label(r, true);
        let kind = c.kind();
        let settings: Vec<(String, String)> = c
            .settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let i = match rows.iter().enumerate().position(|(j, (row, _))| {
            full_data[j] == full
                && row.model == c.model
                && row.dense == c.dense
                && row.label == kind
                && row.alpha == alpha
                && row.target_keep == target_keep
                && row.settings == settings
                && row.epochs == c.epochs
        }) {
            Some(i) => i,
            None => {
                full_data.push(full);
                rows.push((
                    Row {
                        model: c.model.clone(),
                        dense: c.dense,
                        alpha,
                        target_keep,
                        label: kind,
                        settings,
                        epochs: c.epochs,
                        data,
                        seeds: Vec::new(),
                        repeated: Vec::new(),
                        differing: Vec::new(),
                        unfinished: 0,
                        diverged: 0,
                        stats: [None; 3],
                        unlike_paper: unlike_paper(r),
                        dirs: Vec::new(),
                    },
                    Vec::new(),
                ));
                rows.len() - 1
            }
        };
        rows[i].0.dirs.push(r.dir.clone());
        // Any of its runs on data that is not MNIST's files marks the row (not only its first).
        let notes = &mut rows[i].0.unlike_paper;
        if on_other_data(r) && !notes.iter().any(|n| n == NOT_MNIST_NOTE) {
            notes.push(NOT_MNIST_NOTE.into());
        }
        // A summary of fewer epochs than configured is an older, shorter run being extended.
        match r.summary.as_ref().filter(|s| s.epochs >= c.epochs) {
            // The same seed twice (a run folder copied): one run, counted once.
            Some(s) if rows[i].0.seeds.contains(&c.seed) => {
                let (row, summaries) = &mut rows[i];
                if !row.repeated.contains(&c.seed) {
                    row.repeated.push(c.seed);
                }
                let at = row
                    .seeds
                    .iter()
                    .position(|&x| x == c.seed)
                    .expect("present");
                let first = summaries[at];
                let figures = |s: &SummaryFile| {
                    [
                        s.last.test_acc,
                        s.last.keep_ratio,
                        s.best_acc,
                        s.lowest_keep,
                        s.lowest_keep_acc,
                    ]
                };
                if figures(first) != figures(s) && !row.differing.contains(&c.seed) {
                    row.differing.push(c.seed);
                }
            }
            Some(s) => {
                rows[i].0.seeds.push(c.seed);
                rows[i].1.push(s);
            }
            None => {
                rows[i].0.unfinished += 1;
                rows[i].0.diverged += usize::from(r.diverged.is_some());
            }
        }
    }
    // Rows whose data folders share a name but not a path: named by their paths.
    let clashes: Vec<bool> = (0..rows.len())
        .map(|i| {
            (0..rows.len())
                .any(|j| rows[j].0.data == rows[i].0.data && full_data[j] != full_data[i])
        })
        .collect();
    for ((row, _), (clash, full)) in rows.iter_mut().zip(clashes.into_iter().zip(&full_data)) {
        if clash {
            row.data = full.clone();
        }
    }
    // Labels: the kind, then every setting that takes two values or more among the rows of the
    // model that have it (all rows have the optimizer, lr, batch...; only steered ones a start
    // alpha).
    let labels: Vec<String> = rows
        .iter()
        .map(|(row, _)| {
            let mut label = row.label.clone();
            for (k, v) in &row.settings {
                let differs = rows.iter().any(|(other, _)| {
                    other.model == row.model
                        && other.settings.iter().any(|(k2, v2)| k2 == k && v2 != v)
                });
                if differs {
                    let _ = write!(label, ", {k} {v}");
                }
            }
            label
        })
        .collect();
    for ((row, _), label) in rows.iter_mut().zip(labels) {
        row.label = label;
    }
    let order: Vec<String> = {
        let mut m: Vec<String> = Vec::new();
        for (row, _) in &rows {
            if !m.contains(&row.model) {
                m.push(row.model.clone());
            }
        }
        m
    };
    let mut out: Vec<Row> = rows
        .into_iter()
        .map(|(mut row, sums)| {
            for (k, rule) in Rule::ALL.iter().enumerate() {
                let picks: Vec<(f64, f64)> = sums.iter().filter_map(|s| rule.pick(s)).collect();
                // A rule is shown only when every finished run of the row supports it.
                if !picks.is_empty() && picks.len() == sums.len() {
                    let acc: Vec<f64> = picks.iter().map(|p| p.0).collect();
                    let rem: Vec<f64> = picks.iter().map(|p| p.1).collect();
                    row.stats[k] = Some((Stat::of(&acc).unwrap(), Stat::of(&rem).unwrap()));
                }
            }
            row
        })
        .collect();
    out.sort_by(|a, b| {
        let ma = order.iter().position(|m| *m == a.model);
        let mb = order.iter().position(|m| *m == b.model);
        ma.cmp(&mb)
            .then(b.dense.cmp(&a.dense))
            .then(a.alpha.unwrap_or(0.0).total_cmp(&b.alpha.unwrap_or(0.0)))
            .then(a.epochs.cmp(&b.epochs))
            .then(a.data.cmp(&b.data))
            .then(a.label.cmp(&b.label))
    });
    out
}

/// The rules that at least one row can show.
pub fn rules_present(rows: &[Row]) -> Vec<Rule> {
    Rule::ALL
        .into_iter()
        .filter(|r| rows.iter().any(|row| row.get(*r).is_some()))
        .collect()
}

/// A Markdown table of `rows` with a column pair per selection rule present, the paper's figures
/// where the model has a Table 1 row (`with_paper`), and the rules explained underneath.
pub fn markdown(rows: &[Row], with_paper: bool) -> String {
    let rules = rules_present(rows);
    let paper = with_paper && rows.iter().any(|r| paper_row(&r.model).is_some());
    let mut s = String::new();
    s.push_str("| model | variant | epochs | data | seeds |");
    for r in &rules {
        let _ = write!(s, " test acc % ({0}) | remaining % ({0}) |", r.short());
    }
    if paper {
        s.push_str(" paper acc % | paper remaining % |");
    }
    s.push('\n');
    let cols = 5 + 2 * rules.len() + if paper { 2 } else { 0 };
    s.push('|');
    for _ in 0..cols {
        s.push_str("---|");
    }
    s.push('\n');
    for row in rows {
        let mut seeds = row
            .seeds
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if row.unfinished > 0 {
            let sep = if seeds.is_empty() { "" } else { " " };
            // Counts of runs, said so: "2 (2 diverged)" read as seed 2 diverging.
            let runs = |n: usize| super::plural(n, "run");
            let _ = match (row.unfinished, row.diverged) {
                (u, 0) => write!(seeds, "{sep}({} unfinished)", runs(u)),
                (u, d) if d == u => write!(seeds, "{sep}({} diverged)", runs(d)),
                (u, d) => write!(seeds, "{sep}({} unfinished, {d} of them diverged)", runs(u)),
            };
        }
        let list = |seeds: &[u64]| {
            format!(
                "{} {}",
                if seeds.len() == 1 { "seed" } else { "seeds" },
                seeds
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let copies: Vec<u64> = row
            .repeated
            .iter()
            .copied()
            .filter(|x| !row.differing.contains(x))
            .collect();
        if !copies.is_empty() {
            let _ = write!(seeds, " ({} given again, counted once)", list(&copies));
        }
        if !row.differing.is_empty() {
            let _ = write!(
                seeds,
                " ({} given again with other results: the first given counted)",
                list(&row.differing)
            );
        }
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.model,
            super::md_cell(&row.variant()),
            row.epochs,
            super::md_cell(&row.data),
            seeds
        );
        for r in &rules {
            match row.get(*r) {
                Some((acc, rem)) => {
                    let _ = write!(s, " {} | {} |", acc.show(), rem.show());
                }
                None => s.push_str(" – | – |"),
            }
        }
        if paper {
            // Figures measured at other settings than the row's: marked, and explained below.
            let mark = if row.unlike_paper.is_empty() {
                ""
            } else {
                " †"
            };
            match paper_row(&row.model) {
                Some(p) if row.dense => {
                    let _ = write!(s, " {}{mark} | 100 |", show_paper(p.dense_acc));
                }
                Some(p) => {
                    let (mut acc, mut rem) = (show_paper(p.dst_acc), show_paper(p.remaining));
                    if let Some((a, r)) = p.sparser {
                        let _ = write!(acc, " / {}", show_paper(a));
                        let _ = write!(rem, " / {}", show_paper(r));
                    }
                    let _ = write!(s, " {acc}{mark} | {rem} |");
                }
                None => s.push_str(" – | – |"),
            }
        }
        s.push('\n');
    }
    if rules.is_empty() && !paper {
        // No figures to explain: no row has a finished run.
        return s;
    }
    s.push_str("\nMean ± sample standard deviation over the seeds listed (n − 1 in the denominator); remaining % = 100 × the model keep ratio (METHOD.md section 4). Epoch selection:\n\n");
    for r in &rules {
        let _ = writeln!(s, "- *{}*: {}", r.short(), r.explain());
    }
    if paper {
        s.push_str("- *paper*: Liu et al., ICLR 2020, Table 1 (mean ± std over 5 runs; MNIST rows: full MNIST, 20 epochs; CIFAR-10 rows: 160 epochs, two DST results each, `a / b`); its public code reports the lowest-keep epoch. Its LSTM remaining % undercounts the output gates (METHOD.md section 6).\n");
        let unlike: Vec<String> = rows
            .iter()
            .filter(|r| !r.unlike_paper.is_empty() && paper_row(&r.model).is_some())
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.model,
                    r.variant(),
                    r.unlike_paper.join(", ")
                )
            })
            .collect();
        if !unlike.is_empty() {
            let _ = writeln!(
                s,
                "- *†*: the paper's figures for the model, measured at its own settings (`dst info`; a CIFAR-10 row's second DST figure at a larger alpha, METHOD.md section 6); {} ran otherwise, so compare with care: {}.",
                if unlike.len() == 1 { "this row" } else { "these rows" },
                unlike.join("; ")
            );
        }
    }
    s
}

/// A standard deviation for the CSV: empty for a single run, which has none.
fn std(s: &Stat) -> String {
    if s.n < 2 {
        String::new()
    } else {
        csv_number(s.std)
    }
}

/// `x` for the CSV without float noise: 12 significant digits at most (26.3, where the sum of
/// the runs' figures gave 26.299999999999997).
pub fn csv_number(x: f64) -> String {
    let v: f64 = format!("{x:.11e}").parse().unwrap_or(x);
    format!("{v}")
}

/// The first line of `csv`'s tables.
pub const CSV_HEADER: &str = "model,dense,alpha,target_keep,variant,epochs,data,seeds,n,unfinished,diverged,rule,acc_mean,acc_std,remaining_mean,remaining_std\n";

/// The first lines `csv`'s tables have had, the current one first (then before `diverged`, and
/// before `target_keep`): a CSV that begins with one of them is dst's own, which a new table may
/// replace.
pub const CSV_HEADERS: &[&str] = &[
    CSV_HEADER,
    "model,dense,alpha,target_keep,variant,epochs,data,seeds,n,unfinished,rule,acc_mean,acc_std,remaining_mean,remaining_std\n",
    "model,dense,alpha,variant,epochs,data,seeds,n,unfinished,rule,acc_mean,acc_std,remaining_mean,remaining_std\n",
];

/// The records of CSV `text` (RFC 4180: fields in double quotes may hold commas, line ends and
/// doubled quotes), each a list of its fields unquoted; `None` where a quote is left open or
/// stray (a quote inside an unquoted field, text after a closing quote).
fn csv_records(text: &str) -> Option<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => (quoted, was_quoted) = (true, true),
            '"' => return None,
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                was_quoted = false;
            }
            _ if was_quoted => return None,
            c => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Some(records)
}

/// Whether CSV `text` (LF line ends) reads as a table `csv` writes, under one of `CSV_HEADERS`:
/// each line has the header's columns, each field the form `csv` gives that column (a number, a
/// flag, a seed list, a rule's key, or empty), blank lines at the end aside.
pub fn csv_as_written(text: &str) -> bool {
    let Some(records) = csv_records(text.trim_end_matches(['\n', ' ', '\t'])) else {
        return false;
    };
    let Some((header, rows)) = records.split_first() else {
        return false;
    };
    let joined = format!("{}\n", header.join(","));
    if !CSV_HEADERS.contains(&joined.as_str()) {
        return false;
    }
    let number = |f: &str| f.is_empty() || f.parse::<f64>().is_ok_and(f64::is_finite);
    let count = |f: &str| f.is_empty() || f.parse::<usize>().is_ok();
    rows.iter().all(|row| {
        row.len() == header.len()
            && header
                .iter()
                .zip(row)
                .all(|(column, f)| match column.as_str() {
                    "model" => !f.is_empty() && !f.contains(char::is_whitespace),
                    "dense" => f == "true" || f == "false",
                    "alpha" | "target_keep" | "acc_mean" | "acc_std" | "remaining_mean"
                    | "remaining_std" => number(f),
                    "epochs" | "n" | "unfinished" | "diverged" => count(f),
                    "seeds" => f
                        .split(' ')
                        .all(|x| x.is_empty() || x.parse::<u64>().is_ok()),
                    "rule" => f.is_empty() || Rule::ALL.iter().any(|r| r.key() == f),
                    // `variant` and `data`: any text.
                    _ => true,
                })
    })
}

/// One CSV line per row and rule: the figures in machine-readable form (a single run's standard
/// deviations empty); a row without a finished run, one line without a rule or figures. `alpha`
/// is a steered row's starting alpha, `target_keep` the keep ratio it steered toward.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    for row in rows {
        // model, dense, alpha, target_keep, variant, epochs, data: the row's settings on each
        // of its lines.
        let head = format!(
            "{},{},{},{},\"{}\",{},\"{}\"",
            row.model,
            row.dense,
            row.alpha.map(|a| a.to_string()).unwrap_or_default(),
            row.target_keep.map(|a| a.to_string()).unwrap_or_default(),
            row.label.replace('"', "\"\""),
            row.epochs,
            row.data.replace('"', "\"\""),
        );
        // A row with no finished run (all unfinished, or diverged) is listed too, without
        // figures: its `unfinished` and `diverged` counts are what there is to say.
        if Rule::ALL.iter().all(|r| row.get(*r).is_none()) {
            let _ = writeln!(s, "{head},,0,{},{},,,,,", row.unfinished, row.diverged);
            continue;
        }
        for rule in Rule::ALL {
            let Some((acc, rem)) = row.get(rule) else {
                continue;
            };
            let _ = writeln!(
                s,
                "{head},{},{},{},{},{},{},{},{},{}",
                row.seeds
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                acc.n,
                row.unfinished,
                row.diverged,
                rule.key(),
                csv_number(acc.mean),
                std(&acc),
                csv_number(rem.mean),
                std(&rem)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{csv_as_written, CSV_HEADER, CSV_HEADERS};

    /// A table as `csv` writes it reads as written, under either header, with blank lines
    /// after it; a line, a column or a word added to it does not, nor a quote left open.
    #[test]
    fn a_table_reads_as_written_until_edited() {
        let rows = "lenet300,false,0.0005,0.05,\"DST target keep 5 %, reset \"\"floor\"\"\",20,\"/d/mnist, 2\",1 2 3,3,0,0,last,97.5,0.1,2.5,0.2\n\
                    lenet300,true,,,\"dense\",20,\"\",1,1,0,0,last,98,,100,\n\
                    lenet5,false,0.0005,,\"DST\",20,\"\",,0,2,1,,,,,\n";
        let table = format!("{CSV_HEADER}{rows}");
        assert!(csv_as_written(&table), "{table}");
        assert!(csv_as_written(&format!("{table}\n\n")));
        assert!(csv_as_written(CSV_HEADER));
        let old = "lenet300,false,0.0005,\"DST\",20,\"\",1,1,0,last,97.5,,2.5,\n";
        assert!(csv_as_written(&format!("{}{old}", CSV_HEADERS[2])));
        let before_diverged = "lenet300,false,0.0005,,\"DST\",20,\"\",1,1,0,last,97.5,,2.5,\n";
        assert!(csv_as_written(&format!(
            "{}{before_diverged}",
            CSV_HEADERS[1]
        )));
        for edited in [
            format!("{table}my notes\n"),
            format!("{table}# checked by hand, all fine\n"),
            table.replacen(",97.5,", ",97.5 (rerun),", 1),
            table.replacen('\n', ",notes\n", 2),
            table.replacen(",last,", ",mine,", 1),
            table.replacen(",true,", ",yes,", 1),
            table.replacen("\"dense\"", "\"dense", 1),
            table.replacen("1 2 3", "1 2 three", 1),
            format!("{CSV_HEADER}{old}"),
        ] {
            assert!(!csv_as_written(&edited), "{edited}");
        }
    }
}
