//! Mask pictures of a checkpoint's first layer, on the host (no GPU): the mask of each weight is
//! `|W| - t > 0` in f32, with `t` its row's threshold (METHOD.md section 1).
//!
//! - a first layer that reads the 784 pixels (LeNet-300-100's fc1): a 28x28 heat map of the
//!   fraction of its rows that keep each pixel, with a colour scale, and a grid of the masks of
//!   the 48 neurons that keep the most;
//! - a convolution over the image (LeNet-5-Caffe's conv1, 20 filters 5x5; the CIFAR-10 models'
//!   conv1, 3x3 over RGB, the channels side by side): every filter's weights and mask;
//! - an LSTM reading one 28-pixel image row per step (lstm1): per gate, the fraction of hidden
//!   units whose input matrix keeps each pixel column, a 4x28 heat map.
//!
//! The dead-layer reset (METHOD.md section 3) happens in the forward pass, not in the stored
//! thresholds: a layer whose stored mask keeps at most 1% would run densely (under a `--reset
//! floor` run's policy, with each row's strongest weight); the pictures show the stored mask
//! and say so in their title.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::charts::{fit_title, render_png, title_lines, Area, DrawResult, FAMILY};
use super::{write_charts, Drawn, ReportError};
use crate::checkpoint::Checkpoint;
use crate::kernels::masked::ResetPolicy;

/// The mask of a `rows` x `cols` weight matrix with one threshold per row, row-major.
pub fn mask(w: &[f32], t: &[f32], rows: usize, cols: usize) -> Vec<bool> {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(t.len(), rows);
    (0..rows * cols)
        .map(|i| w[i].abs() - t[i / cols] > 0.0)
        .collect()
}

/// For each column, the fraction of rows whose mask keeps it.
pub fn column_keep_fraction(m: &[bool], rows: usize, cols: usize) -> Vec<f64> {
    let mut kept = vec![0u32; cols];
    for r in 0..rows {
        for (c, k) in kept.iter_mut().enumerate() {
            *k += m[r * cols + c] as u32;
        }
    }
    kept.iter()
        .map(|&k| k as f64 / rows.max(1) as f64)
        .collect()
}

/// fc1's per-pixel keep fraction (784 values, row-major 28x28) of a LeNet-300-100 checkpoint.
pub fn fc1_pixel_keep(ck: &Checkpoint) -> Result<Vec<f64>, ReportError> {
    let (w, t, rows, cols) = matrix(ck, "fc1.weight", "fc1.threshold", None)?;
    Ok(column_keep_fraction(&mask(&w, &t, rows, cols), rows, cols))
}

/// Viridis, by linear interpolation between 9 of its colours; `x` in [0, 1].
pub fn viridis(x: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let x = if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let p = x * (STOPS.len() - 1) as f64;
    let i = (p.floor() as usize).min(STOPS.len() - 2);
    let f = p - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Blue (negative) - white - red (positive), `x` in [-1, 1].
fn diverging(x: f64) -> RGBColor {
    let x = if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = if x >= 0.0 {
        (1.0, 1.0 - 0.8 * x, 1.0 - 0.85 * x)
    } else {
        (1.0 + 0.85 * x, 1.0 + 0.6 * x, 1.0)
    };
    RGBColor((255.0 * r) as u8, (255.0 * g) as u8, (255.0 * b) as u8)
}

/// Weight matrix (row view), thresholds, rows, cols; `rows_of` picks a block of rows.
fn matrix(
    ck: &Checkpoint,
    weight: &str,
    threshold: &str,
    rows_of: Option<std::ops::Range<usize>>,
) -> Result<(Vec<f32>, Vec<f32>, usize, usize), ReportError> {
    let missing = |name: &str| {
        ReportError::Checkpoint(format!(
        "the checkpoint has no tensor {name} (a dense checkpoint has no thresholds and no masks)"
    ))
    };
    let (_, shape, w) = ck.get(weight).ok_or_else(|| missing(weight))?;
    let (_, _, t) = ck.get(threshold).ok_or_else(|| missing(threshold))?;
    if shape.len() < 2 || shape[0] == 0 {
        return Err(ReportError::Checkpoint(format!(
            "{weight} has shape {shape:?}, expected a matrix or a conv kernel"
        )));
    }
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    if t.len() != rows {
        return Err(ReportError::Checkpoint(format!(
            "{threshold} has {} values for {rows} rows of {weight}",
            t.len()
        )));
    }
    let r = rows_of.unwrap_or(0..rows);
    Ok((
        w[r.start * cols..r.end * cols].to_vec(),
        t[r.clone()].to_vec(),
        r.len(),
        cols,
    ))
}

/// A heat map of `values` (`h` x `w`, row-major: fractions, 0 to 1) with a colour scale from the
/// smallest to the largest value, and tick labels of the given axes.
fn heat_map(
    area: &Area,
    title: &str,
    values: &[f64],
    (h, w): (usize, usize),
    (x_desc, y_desc): (&str, &str),
    y_labels: Option<&[&str]>,
    scale_desc: &str,
) -> DrawResult {
    let (vmin, vmax) = scale_range(values);
    let norm = |v: f64| (v - vmin) / (vmax - vmin);
    let dim_w = area.dim_in_pixel().0;
    let (main, bar) = area.split_horizontally(dim_w as i32 - 150);
    let main = fit_title(&main, title, 20)?;
    let mut chart = ChartBuilder::on(&main)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(if y_labels.is_some() { 90 } else { 50 })
        .build_cartesian_2d(0f64..w as f64, h as f64..0f64)?;
    let labels: Vec<String> = y_labels
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(w.min(8))
        .y_labels(if labels.is_empty() {
            h.min(8)
        } else {
            h * 2 + 1
        })
        .y_label_formatter(&|y| {
            if labels.is_empty() {
                return format!("{y:.0}");
            }
            // Label a row at its centre.
            let f = y - y.floor();
            let i = y.floor() as usize;
            if (f - 0.5).abs() < 1e-6 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    chart.draw_series((0..h).flat_map(|y| {
        (0..w).map(move |x| {
            Rectangle::new(
                [(x as f64, y as f64), (x as f64 + 1.0, y as f64 + 1.0)],
                viridis(norm(values[y * w + x])).filled(),
            )
        })
    }))?;

    // The colour scale.
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(50)
        .margin_bottom(56)
        .margin_right(12)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1f64, vmin..vmax)?;
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(scale_desc)
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()?;
    const STEPS: usize = 100;
    scale.draw_series((0..STEPS).map(|i| {
        let at = |i: usize| vmin + (vmax - vmin) * i as f64 / STEPS as f64;
        let (a, b) = (at(i), at(i + 1));
        Rectangle::new([(0.0, a), (1.0, b)], viridis(norm((a + b) / 2.0)).filled())
    }))?;
    Ok(())
}

/// A heat map's colour scale for `values` (fractions): their own range, so that small
/// differences show (the scale says which values the colours stand for); all alike (every row
/// keeps every pixel, or none), half the fractions' range on that value's side (it was 0.5 to
/// 1.5 for all ones, -0.5 to 0.5 for all zeros).
fn scale_range(values: &[f64]) -> (f64, f64) {
    let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
    let vmax = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if vmax - vmin > 1e-9 {
        (vmin, vmax)
    } else if vmin >= 0.5 {
        (vmin - 0.5, vmin)
    } else {
        (vmin, vmin + 0.5)
    }
}

/// The input channels of a convolution's filter that `mask_images` draws.
const MAX_CHANNELS: usize = 4;

/// A grid of small pictures (those of `n` slots that are `present`), each `ph` x `pw` cells
/// coloured by `cell(i, y, x)`, with a caption per picture and a title.
#[allow(clippy::too_many_arguments)]
fn picture_grid(
    area: &Area,
    title: &str,
    n: usize,
    per_row: usize,
    (ph, pw): (usize, usize),
    px: u32,
    present: &dyn Fn(usize) -> bool,
    caption: &dyn Fn(usize) -> String,
    cell: &dyn Fn(usize, usize, usize) -> RGBColor,
) -> DrawResult {
    let area = fit_title(area, title, GRID_TITLE)?;
    let (cw, ch) = (pw as u32 * px, ph as u32 * px);
    let (gap_x, gap_y) = (14u32, 24u32);
    for i in (0..n).filter(|&i| present(i)) {
        let (gx, gy) = ((i % per_row) as u32, (i / per_row) as u32);
        let x0 = 14 + gx * (cw + gap_x);
        let y0 = 8 + gy * (ch + gap_y) + 16;
        area.draw(&Text::new(
            caption(i),
            (x0 as i32, y0 as i32 - 16),
            (FAMILY, 12).into_font(),
        ))?;
        for y in 0..ph {
            for x in 0..pw {
                let (a, b) = ((x0 + x as u32 * px) as i32, (y0 + y as u32 * px) as i32);
                area.draw(&Rectangle::new(
                    [(a, b), (a + px as i32, b + px as i32)],
                    cell(i, y, x).filled(),
                ))?;
            }
        }
        area.draw(&Rectangle::new(
            [
                (x0 as i32 - 1, y0 as i32 - 1),
                ((x0 + cw) as i32, (y0 + ch) as i32),
            ],
            RGBColor(150, 150, 150).stroke_width(1),
        ))?;
    }
    Ok(())
}

/// The size of a `picture_grid` picture, with room for its title on as many lines as it takes.
fn grid_size(
    n: usize,
    per_row: usize,
    (ph, pw): (usize, usize),
    px: u32,
    title: &str,
) -> (u32, u32) {
    let rows = n.div_ceil(per_row) as u32;
    let w = (14 + per_row as u32 * (pw as u32 * px + 14) + 14).max(820);
    // A line of the title takes about 27 px (17 px text and its padding).
    let more_lines = title_lines(title, GRID_TITLE, w).len() as u32 - 1;
    let h = 40 + 27 * more_lines + 8 + rows * (ph as u32 * px + 24) + 10;
    (w, h)
}

/// The title size of a `picture_grid`, px.
const GRID_TITLE: u32 = 17;

/// Model keep ratio of a layer's stored mask, and a note when the run's dead-layer policy
/// (`policy`, its `--reset`) would act on it in the forward pass.
fn keep_note(m: &[bool], policy: ResetPolicy) -> (f64, &'static str) {
    let k = m.iter().filter(|b| **b).count() as f64 / m.len().max(1) as f64;
    let note = match policy {
        _ if k > 0.01 => "",
        ResetPolicy::Floor => {
            " (at most 1% kept: the run's floor keeps each row's strongest weight in the forward pass)"
        }
        ResetPolicy::None | ResetPolicy::Count => "",
        ResetPolicy::Paper => " (at most 1% kept: the forward pass resets this layer to dense)",
    };
    (k, note)
}

/// Writes the mask pictures of `ck`'s first layer into `out`; returns the files written.
/// Replaces only pictures of its own (see `write_charts`): otherwise refuses, and writes nothing.
pub fn mask_images(ck: &Checkpoint, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let model = ck.meta("model").unwrap_or("").to_string();
    if ck.meta("masked") == Some("false") {
        return Err(ReportError::Checkpoint(format!(
            "a dense {model} checkpoint: no thresholds, so no masks to draw"
        )));
    }
    let epoch = ck
        .meta("epoch")
        .map(|e| format!(", epoch {e}"))
        .unwrap_or_default();
    let mut pngs: Vec<(&str, Vec<u8>)> = Vec::new();
    if ck.get("fc1.weight").map(|t| t.1.get(1) == Some(&784)) == Some(true) {
        let (w, t, rows, cols) = matrix(ck, "fc1.weight", "fc1.threshold", None)?;
        let m = mask(&w, &t, rows, cols);
        let frac = column_keep_fraction(&m, rows, cols);
        let (k, note) = keep_note(&m, crate::train::reset_policy_of(ck));
        let name = "fc1_input_keep.png";
        let png = render_png(&out.join(name), (760, 640), |a| {
            heat_map(
                a,
                &format!(
                    "{model} fc1: rows keeping each input pixel (keep {:.2}%{epoch}){note}",
                    100.0 * k
                ),
                &frac,
                (28, 28),
                ("pixel column", "pixel row"),
                None,
                "fraction of the fc1 rows",
            )
        })?;
        pngs.push((name, png));

        // The 48 neurons that keep the most inputs (a sparse fc1 often leaves most neurons with
        // none, and an even sample of rows would show empty squares), in row order; only those
        // that keep any where fewer do (empty squares among them said nothing).
        let kept_of = |r: usize| m[r * cols..(r + 1) * cols].iter().filter(|b| **b).count();
        let empty = (0..rows).filter(|&r| kept_of(r) == 0).count();
        let keeping = rows - empty;
        let n = if keeping == 0 {
            48.min(rows)
        } else {
            48.min(keeping)
        };
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(kept_of(r)));
        let mut pick: Vec<usize> = order[..n].to_vec();
        pick.sort_unstable();
        let px = 3;
        let per_row = 8;
        let name = "fc1_neuron_masks.png";
        let which = if n == keeping && n < rows {
            "that keep any input"
        } else {
            "that keep the most inputs"
        };
        let title = if keeping == 0 {
            format!(
                "{model} fc1: none of its {rows} neurons keeps an input, every mask is empty (the first {n} shown){epoch}"
            )
        } else {
            format!(
                "{model} fc1: the {n} of its {rows} neurons {which} (dark: kept); {empty} keep none{epoch}"
            )
        };
        let size = grid_size(n, per_row, (28, 28), px, &title);
        let png = render_png(&out.join(name), size, |a| {
            picture_grid(
                a,
                &title,
                n,
                per_row,
                (28, 28),
                px,
                &|_| true,
                &|i| {
                    let r = pick[i];
                    let kept = m[r * cols..(r + 1) * cols].iter().filter(|b| **b).count();
                    format!("#{r}: {:.1}%", 100.0 * kept as f64 / cols as f64)
                },
                &|i, y, x| {
                    if m[pick[i] * cols + y * 28 + x] {
                        RGBColor(20, 30, 80)
                    } else {
                        RGBColor(238, 238, 238)
                    }
                },
            )
        })?;
        pngs.push((name, png));
    } else if let Some((_, shape, _)) = ck.get("conv1.weight") {
        if shape.len() != 4 {
            return Err(ReportError::Checkpoint(format!(
                "conv1.weight has shape {shape:?}, expected (c_out, c_in, kh, kw)"
            )));
        }
        // A picture shows a filter's input channels side by side, a blank column between them
        // (RGB for the CIFAR-10 models; only the first few where there are more).
        let (c_out, c_in, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
        let shown = c_in.min(MAX_CHANNELS);
        let pw = shown * (kw + 1) - 1;
        let (w, t, rows, cols) = matrix(ck, "conv1.weight", "conv1.threshold", None)?;
        let m = mask(&w, &t, rows, cols);
        let (k, note) = keep_note(&m, crate::train::reset_policy_of(ck));
        let wmax = w.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-12) as f64;
        // Each band of filters twice: weights, then their masks; as many bands as it takes.
        let per_row = 10.min(c_out);
        let pictures = 2 * per_row * c_out.div_ceil(per_row);
        // Cells wide enough for the captions ("mask 27/27").
        let px = 12.max(60u32.div_ceil(pw as u32));
        let channels = match (c_in, shown) {
            (1, _) => String::new(),
            (3, 3) => ", channels R, G, B side by side".to_string(),
            (c, s) if c == s => format!(", its {c} input channels side by side"),
            (c, s) => format!(", the first {s} of its {c} input channels side by side"),
        };
        let filter = |i: usize| (i / per_row / 2) * per_row + i % per_row;
        let name = "conv1_filters.png";
        let title = format!(
            "{model} conv1: {c_out} filters {kh}x{kw}{channels} (red +, blue -), masks below (dark: kept); keep {:.1}%{epoch}{note}",
            100.0 * k
        );
        let png = render_png(
            &out.join(name),
            grid_size(pictures, per_row, (kh, pw), px, &title),
            |a| {
                picture_grid(
                    a,
                    &title,
                    pictures,
                    per_row,
                    (kh, pw),
                    px,
                    &|i| filter(i) < c_out,
                    &|i| {
                        let f = filter(i);
                        if (i / per_row) % 2 == 0 {
                            format!("filter {f}")
                        } else {
                            let kept = m[f * cols..(f + 1) * cols].iter().filter(|b| **b).count();
                            format!("mask {kept}/{cols}")
                        }
                    },
                    &|i, y, x| {
                        let (band, f) = (i / per_row, filter(i));
                        let (c, xx) = (x / (kw + 1), x % (kw + 1));
                        if f >= c_out || xx == kw {
                            return WHITE;
                        }
                        let j = f * cols + (c * kh + y) * kw + xx;
                        if band % 2 == 0 {
                            diverging(w[j] as f64 / wmax)
                        } else if m[j] {
                            RGBColor(20, 30, 80)
                        } else {
                            RGBColor(238, 238, 238)
                        }
                    },
                )
            },
        )?;
        pngs.push((name, png));
    } else if let Some((_, shape, _)) = ck.get("lstm1.weight_ih") {
        if shape.len() != 2 || shape[0] == 0 || !shape[0].is_multiple_of(4) {
            return Err(ReportError::Checkpoint(format!(
                "lstm1.weight_ih has shape {shape:?}, expected (4 x hidden, inputs)"
            )));
        }
        let (g4, cols) = (shape[0], shape[1]);
        let hidden = g4 / 4;
        let mut values = Vec::with_capacity(4 * cols);
        let mut all = Vec::new();
        for g in 0..4 {
            let (w, t, rows, cols) = matrix(
                ck,
                "lstm1.weight_ih",
                "lstm1.threshold_ih",
                Some(g * hidden..(g + 1) * hidden),
            )?;
            let m = mask(&w, &t, rows, cols);
            values.extend(column_keep_fraction(&m, rows, cols));
            all.extend(m);
        }
        let (k, _) = keep_note(&all, crate::train::reset_policy_of(ck));
        let name = "lstm1_input_keep.png";
        let png = render_png(&out.join(name), (900, 420), |a| {
            heat_map(
                a,
                // "LSTM-a", not "lstm-a lstm1": this font's l reads as a capital I.
                &format!(
                    "{} layer 1 input matrices: units keeping each column (keep \
                     {:.1}%{epoch})",
                    model.replacen("lstm", "LSTM", 1),
                    100.0 * k
                ),
                &values,
                (4, cols),
                ("pixel column (each step reads one image row)", "gate"),
                Some(&["input i", "forget f", "cell g", "output o"]),
                "fraction of units",
            )
        })?;
        pngs.push((name, png));
    } else {
        return Err(ReportError::Checkpoint(format!(
            "no mask picture for model {model:?}: its first layer is neither fc1 over 784 pixels, conv1 nor lstm1"
        )));
    }
    write_charts(out, &pngs, Drawn::Checkpoint(ck))
}

#[cfg(test)]
mod tests {
    use super::{keep_note, ResetPolicy};

    /// A title's note follows the run's policy: the paper's reset makes a layer at <= 1 % dense,
    /// the floor keeps a weight per row, `none` does nothing; above 1 % there is no note.
    #[test]
    fn the_note_names_what_the_runs_policy_does() {
        let mut m = vec![false; 1000];
        m[0] = true;
        assert!(keep_note(&m, ResetPolicy::Paper)
            .1
            .contains("resets this layer to dense"));
        assert!(keep_note(&m, ResetPolicy::Floor)
            .1
            .contains("strongest weight"));
        assert_eq!(keep_note(&m, ResetPolicy::None), (0.001, ""));
        m[..20].fill(true);
        assert_eq!(keep_note(&m, ResetPolicy::Paper), (0.02, ""));
    }

    /// A heat map whose values are all alike keeps its colour scale within 0 to 1 (all ones gave
    /// a scale of 0.5 to 1.5).
    #[test]
    fn a_uniform_heat_map_keeps_its_scale_within_fractions() {
        assert_eq!(super::scale_range(&[0.25, 0.75, 0.5]), (0.25, 0.75));
        assert_eq!(super::scale_range(&[1.0; 4]), (0.5, 1.0));
        assert_eq!(super::scale_range(&[0.0; 4]), (0.0, 0.5));
    }

    /// A title too wide for its picture is broken at spaces into lines that each fit (it once ran
    /// off both edges), and a grid picture grows by the lines it adds; a short one stays one line.
    #[test]
    fn long_titles_go_on_more_lines() {
        use super::{grid_size, title_lines, GRID_TITLE};
        // 1 of 200 weights kept under the floor: the note that overran.
        let mut m = vec![false; 200];
        m[0] = true;
        let long = format!(
            "lenet300 fc1: rows keeping each input pixel (keep 0.14%, epoch 3){}",
            keep_note(&m, ResetPolicy::Floor).1
        );
        let lines = title_lines(&long, 20, 610);
        assert!(lines.len() >= 2, "{lines:?}");
        assert_eq!(lines.join(" "), long);
        let font: plotters::style::FontDesc = (super::FAMILY, 20).into();
        for l in &lines {
            assert!(font.box_size(l).unwrap().0 <= 610 - 24, "{l}");
        }
        assert_eq!(title_lines("lenet300 fc1", 20, 610), ["lenet300 fc1"]);
        let short = grid_size(48, 8, (28, 28), 3, "fc1");
        let tall = grid_size(48, 8, (28, 28), 3, &long.repeat(2));
        assert_eq!(short.0, tall.0);
        let more = title_lines(&long.repeat(2), GRID_TITLE, short.0).len() as u32 - 1;
        assert!(
            more >= 1 && tall.1 == short.1 + 27 * more,
            "{short:?} {tall:?}"
        );
    }
}
