//! Training charts (PNG) of one or several runs, overlaid and labelled: per-layer keep ratio over
//! the steps (log y), test accuracy and remaining % per epoch, per-layer threshold mean per
//! epoch, and alpha over the steps of the DST runs (a dense run's alpha is 0). Drawn with
//! plotters into an RGB buffer and encoded by `image`; text uses the DejaVu Sans font embedded
//! from `assets/fonts/`.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::runs::Run;
use super::{write_charts_replacing, Drawn, ReportError};

/// DejaVu Sans (Bitstream Vera licence, see assets/README.md): the only font the charts use, so
/// they look the same on every machine, with or without system fonts.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType file checked into the repository; a failure here would
        // only mean text is missing, which the drawing reports as an error.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// `title` broken at spaces into lines that each fit `width` px in the font of `size` px (a word
/// wider than that alone on its line).
pub(crate) fn title_lines(title: &str, size: u32, width: u32) -> Vec<&str> {
    register_font();
    let font: FontDesc = (FAMILY, size).into_font();
    let room = width.saturating_sub(24);
    let fits = |t: &str| font.box_size(t).map_or(true, |(w, _)| w <= room);
    let mut lines = Vec::new();
    let mut rest = title;
    while !fits(rest) {
        // The longest start that fits and ends before a space (at least one word).
        let Some(cut) = rest
            .rmatch_indices(' ')
            .map(|(i, _)| i)
            .find(|&i| fits(&rest[..i]))
            .or_else(|| rest.find(' '))
        else {
            break;
        };
        lines.push(&rest[..cut]);
        rest = &rest[cut + 1..];
    }
    lines.push(rest);
    lines
}

/// Draws `title` at the top of `area` in the font of `size` px, on as many lines as
/// `title_lines` gives for the area's width (a long note once ran off both edges of a picture),
/// and returns the area below it.
pub(crate) fn fit_title<'a>(
    area: &Area<'a>,
    title: &str,
    size: u32,
) -> Result<Area<'a>, Box<dyn std::error::Error>> {
    let mut below = area.clone();
    for line in title_lines(title, size, area.dim_in_pixel().0) {
        below = below.titled(line, (FAMILY, size))?;
    }
    Ok(below)
}

/// Draws a `w` x `h` picture with `f` and returns it as PNG; `path` names it in errors.
pub(crate) fn render_png(
    path: &Path,
    (w, h): (u32, u32),
    f: impl FnOnce(&Area) -> DrawResult,
) -> Result<Vec<u8>, ReportError> {
    register_font();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw = |e: Box<dyn std::error::Error>| ReportError::Draw {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        root.fill(&WHITE).map_err(|e| draw(e.into()))?;
        f(&root).map_err(draw)?;
        root.present().map_err(|e| draw(e.into()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer of w*h*3 bytes");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ReportError::Draw {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(png)
}

/// Draws a `w` x `h` picture with `f` and writes it as PNG to `path`, creating its folder. No
/// guard: for the files of a study's own folders; `dst plot` and `dst masks` go through
/// `write_charts`.
pub(crate) fn render(
    path: &Path,
    size: (u32, u32),
    f: impl FnOnce(&Area) -> DrawResult,
) -> Result<(), ReportError> {
    let png = render_png(path, size, f)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    crate::checkpoint::write_atomic(path, &png).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The Tableau 10 colours, then evenly spaced hues for more series.
pub(crate) fn colour(i: usize, n: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    if n <= TAB10.len() {
        let (r, g, b) = TAB10[i % TAB10.len()];
        return RGBColor(r, g, b);
    }
    let hsl = HSLColor(i as f64 / n as f64, 0.75, 0.42);
    let (r, g, b) = hsl.rgb();
    RGBColor(r, g, b)
}

/// A named polyline.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    /// On and off lengths in px of a dashed line; None: solid.
    dash: Option<(f64, f64)>,
    /// The colour, where a series is to keep one across panels and charts (its run's, or its
    /// layer's, see `layer_colour`); None: its place in the panel.
    colour: Option<RGBColor>,
}

/// A validation line's dashes (its run's test line is solid, in the same colour).
const DASHED: Option<(f64, f64)> = Some((8.0, 5.0));

/// The line of run `k` in a chart of several runs' layers, where a layer's lines differ only in
/// shade (`layer_colour`): solid, dashed, dotted, long dashes, then again.
fn run_dash(k: usize) -> Option<(f64, f64)> {
    [None, Some((10.0, 5.0)), Some((3.0, 3.0)), Some((16.0, 4.0))][k % 4]
}

/// A legend's 22 px sample of a line dashed as `dash`: at most four pieces (start, end) in px;
/// fewer repeat the first.
fn legend_pieces(dash: Option<(f64, f64)>) -> [(i32, i32); 4] {
    let pieces: Vec<(i32, i32)> = match dash {
        None => vec![(0, 22)],
        Some((on, off)) => dashes(&[(0.0, 0.0), (22.0, 0.0)], on, off)
            .iter()
            .map(|p| (p[0].0.round() as i32, p[p.len() - 1].0.round() as i32))
            .collect(),
    };
    std::array::from_fn(|i| pieces.get(i).or(pieces.first()).copied().unwrap_or((0, 22)))
}

/// The colour of layer `name` of run `k` of `runs` in a chart of several runs' layers: each
/// layer keeps one colour, the one it has in a chart of one run (its place among `layers`, the
/// names of every run's layers), and each run is a lighter shade of it. A chart of one run:
/// None, its place.
fn layer_colour(layers: &[String], name: &str, k: usize, runs: usize) -> Option<RGBColor> {
    if runs < 2 {
        return None;
    }
    let at = layers.iter().position(|l| l == name).unwrap_or(0);
    let base = colour(at, layers.len());
    let t = 0.5 * k as f64 / (runs - 1) as f64;
    let mix = |c: u8| (c as f64 + (255.0 - c as f64) * t).round() as u8;
    Some(RGBColor(mix(base.0), mix(base.1), mix(base.2)))
}

/// A series per run and layer of the points `of` gives (none where it gives none), coloured by
/// `layer_colour` among the runs that have any; and how many runs those are. `names`: the runs'
/// legend names (`legend_names`, made once per chart set).
fn layer_series(
    runs: &[Run],
    names: &[String],
    layers: &[String],
    of: impl Fn(&Run, &str) -> Vec<(f64, f64)>,
) -> (Vec<Series>, usize) {
    // Per run: its layers' names and points.
    type Lines = Vec<(String, Vec<(f64, f64)>)>;
    let per_run: Vec<Lines> = runs
        .iter()
        .map(|r| {
            r.layer_names()
                .into_iter()
                .map(|name| {
                    let points = of(r, &name);
                    (name, points)
                })
                .filter(|(_, points)| !points.is_empty())
                .collect()
        })
        .collect();
    let drawn = per_run.iter().filter(|l| !l.is_empty()).count();
    let mut series = Vec::new();
    // k: among the runs drawn (their shades and line styles); i: among `runs`.
    for (k, (i, lines)) in per_run
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .enumerate()
    {
        for (name, points) in lines {
            series.push(Series {
                colour: layer_colour(layers, &name, k, drawn),
                label: series_label(runs, names, i, &name),
                points,
                // Each run its own line style too: shades alone were hard to tell apart.
                dash: if drawn > 1 { run_dash(k) } else { None },
            });
        }
    }
    (series, drawn)
}

/// The keep ratios of layer `name` of run `r` over the steps (`plot_runs`' keep chart): those of
/// its step lines, and of its epoch lines after the step line of the same step. None for a
/// dense run (no masks).
fn keep_points(r: &Run, name: &str) -> Vec<(f64, f64)> {
    if r.config.dense {
        return Vec::new();
    }
    let steps = r
        .steps
        .iter()
        .filter_map(|s| Some(((s.step, 0), *s.keep.get(name)?)));
    let ends = r.epochs.iter().filter_map(|e| {
        let l = e.layers.iter().find(|l| l.name == name)?;
        Some(((e.step, 1), l.keep_ratio))
    });
    let mut points: Vec<((u64, u8), f64)> = steps.chain(ends).collect();
    points.sort_by_key(|p| p.0);
    points
        .into_iter()
        .map(|((s, _), k)| (s as f64, k))
        .collect()
}

/// A steered run's path in the keep chart: the model keep ratio its controller aimed at each
/// logged step, dashed in grey (a shade per steered run), one series per run that logged one.
fn target_series(runs: &[Run], names: &[String]) -> Vec<Series> {
    let steered: Vec<usize> = (0..runs.len())
        .filter(|&k| runs[k].steps.iter().any(|s| s.target_keep.is_some()))
        .collect();
    steered
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let grey = (90 + 100 * j / steered.len()) as u8;
            Series {
                label: series_label(runs, names, k, "target (model keep)"),
                points: runs[k]
                    .steps
                    .iter()
                    .filter_map(|s| Some((s.step as f64, s.target_keep?)))
                    .collect(),
                dash: DASHED,
                colour: Some(RGBColor(grey, grey, grey)),
            }
        })
        .collect()
}

/// The names of every run's layers, in first-seen order.
fn all_layer_names(runs: &[Run]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in runs.iter().flat_map(|r| r.layer_names()) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// A padded linear range around the values (never empty).
fn lin_range(vals: impl Iterator<Item = f64> + Clone, pad: f64) -> (f64, f64) {
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// A linear axis's label for `y` (plotters' own format) on an axis spanning `span`: a tick
/// that is zero but for float noise (-1e-17: "-0.0") is labelled 0.
fn lin_tick(y: f64, span: f64) -> String {
    use plotters::coord::{ranged1d::ValueFormatter, types::RangedCoordf64};
    let y = if y.abs() <= 1e-9 * span.abs() { 0.0 } else { y };
    <RangedCoordf64 as ValueFormatter<f64>>::format(&y)
}

/// A log range from the smallest positive value's decade (at least `floor`) to `hi`.
fn log_range(vals: impl Iterator<Item = f64> + Clone, floor: f64, top: Option<f64>) -> (f64, f64) {
    let lo = vals
        .clone()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (floor, top.unwrap_or(1.0));
    }
    // The decade below the smallest value; one on a decade (a keep ratio of 1 at the first
    // step) gets the decade under it, and one just above a decade (0.01003) a little room under
    // that decade, so that neither is drawn on the axis.
    let e = lo.log10();
    // The decade at or below it (a value a rounding error under a decade is on it).
    let d = (e + 1e-9).floor();
    let lo = if e - d < 1e-9 {
        10f64.powf(d - 1.0)
    } else if e - d < 1.1f64.log10() {
        lo / 1.1
    } else {
        10f64.powf(d)
    }
    .max(floor);
    // Likewise the decade above the largest value (where no top is given).
    let hi = top.unwrap_or_else(|| {
        let e = hi.log10();
        10f64.powf(if (e - e.round()).abs() < 1e-9 {
            e.round() + 1.0
        } else {
            e.ceil()
        })
    });
    if hi <= lo {
        (lo, lo * 10.0)
    } else {
        (lo, hi)
    }
}

/// The labelled values of a log axis over [lo, hi]: the decades, and over about one decade or
/// less also 2 and 5 times them, so that such an axis shows more than the one decade line it
/// may hold (plotters' own choice labels decades only).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let steps: &[f64] = if (hi / lo).log10() <= 1.5 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mut v = Vec::new();
    for d in d0..=d1 {
        for m in steps {
            let x = m * 10f64.powi(d);
            if x >= lo * (1.0 - 1e-9) && x <= hi * (1.0 + 1e-9) {
                v.push(x);
            }
        }
    }
    v
}

struct Panel<'s> {
    title: &'s str,
    x_desc: &'s str,
    y_desc: &'s str,
    series: &'s [Series],
    log_y: Option<(f64, Option<f64>)>,
    /// The legend's corner where the lines leave it free (`legend_corner`), else the free-est.
    legend: SeriesLabelPosition,
}

/// The corner for a legend box of `w` x `h` (fractions of the plot) that covers the fewest
/// points of `lines` (each a polyline in plot fractions, 0..1 up and right), sampled along each
/// segment; `preferred` wins ties, then upper left, upper right, lower left, lower right.
fn legend_corner(
    lines: &[Vec<(f64, f64)>],
    w: f64,
    h: f64,
    preferred: SeriesLabelPosition,
) -> SeriesLabelPosition {
    use SeriesLabelPosition::*;
    let covered = |c: &SeriesLabelPosition| legend_covers(lines, (w, h), c);
    let mut best = (covered(&preferred), preferred.clone());
    for c in [UpperLeft, UpperRight, LowerLeft, LowerRight] {
        let n = covered(&c);
        if n < best.0 {
            best = (n, c);
        }
    }
    best.1
}

/// How many points of `lines` (plot fractions, sampled along each segment) a legend box of
/// `w` x `h` in corner `c` covers.
fn legend_covers(lines: &[Vec<(f64, f64)>], (w, h): (f64, f64), c: &SeriesLabelPosition) -> usize {
    use SeriesLabelPosition::*;
    let (w, h) = (w.min(1.0), h.min(1.0));
    // The corner's box, as (x from, x to, y from, y to).
    let (xa, xb, ya, yb) = match c {
        UpperLeft => (0.0, w, 1.0 - h, 1.0),
        UpperRight => (1.0 - w, 1.0, 1.0 - h, 1.0),
        LowerLeft => (0.0, w, 0.0, h),
        _ => (1.0 - w, 1.0, 0.0, h),
    };
    let inside = |(x, y): (f64, f64)| x >= xa && x <= xb && y >= ya && y <= yb;
    let mut n = 0usize;
    for line in lines {
        if let [only] = line.as_slice() {
            n += inside(*only) as usize;
        }
        for seg in line.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            n += (0..=16)
                .map(|k| {
                    let t = k as f64 / 16.0;
                    (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
                })
                .filter(|&q| inside(q))
                .count();
        }
    }
    n
}

/// Where a legend box of `w` x `h` (fractions of the plot) goes: the corner `legend_corner`
/// picks, or None (beside the plot) where that corner still covers some of `lines`.
fn legend_place(
    lines: &[Vec<(f64, f64)>],
    (w, h): (f64, f64),
    preferred: SeriesLabelPosition,
) -> Option<SeriesLabelPosition> {
    let corner = legend_corner(lines, w, h, preferred);
    (legend_covers(lines, (w, h), &corner) == 0).then_some(corner)
}

/// A legend with more entries than this goes beside the plot, in columns (`side_legend`),
/// rather than over it.
const LEGEND_INSIDE: usize = 12;
/// A side legend's line height, and its top and bottom margin, in px.
const SIDE_ROW: u32 = 19;
const SIDE_MARGIN: u32 = 44;

/// The width in px of the side legend of `series` in a panel `height` px high: none where the
/// legend fits inside the plot. Columns of `SIDE_ROW` px lines, as many as the height needs.
fn side_legend_width(series: &[Series], height: u32) -> u32 {
    if series.len() <= LEGEND_INSIDE {
        return 0;
    }
    legend_columns_width(series, height)
}

/// The width in px of a legend of `series` beside a panel `height` px high.
fn legend_columns_width(series: &[Series], height: u32) -> u32 {
    let rows = (height.saturating_sub(2 * SIDE_MARGIN) / SIDE_ROW).max(1) as usize;
    let cols = series.len().div_ceil(rows) as u32;
    let chars = series
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(0) as u32;
    cols * (chars * 7 + 44) + 12
}

/// Draws the legend of `series` (colours from `pick`) into `area`, column by column.
fn side_legend(area: &Area, series: &[Series], pick: &dyn Fn(usize) -> RGBColor) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let rows = (h.saturating_sub(2 * SIDE_MARGIN) / SIDE_ROW).max(1) as usize;
    let cols = series.len().div_ceil(rows).max(1) as i32;
    let col_w = (w as i32 - 12) / cols;
    let font = (FAMILY, 14).into_font().color(&BLACK);
    for (i, s) in series.iter().enumerate() {
        let (col, row) = ((i / rows) as i32, (i % rows) as i32);
        let (x, y) = (4 + col * col_w, SIDE_MARGIN as i32 + row * SIDE_ROW as i32);
        let c = pick(i).stroke_width(3);
        for (a, b) in legend_pieces(s.dash) {
            area.draw(&PathElement::new(vec![(x + a, y), (x + b, y)], c))?;
        }
        area.draw(&Text::new(s.label.clone(), (x + 28, y - 8), font.clone()))?;
    }
    Ok(())
}

/// Draws the polyline through `pts` (the area's data coordinates) 2 px thick whatever its slope,
/// dashed (`dash`: on and off lengths in px) or not. plotters draws a thick line as a polygon
/// whose corners it truncates to whole pixels: its flat segments came out about 3 px thick, its
/// steep ones 2 and at their corners less. Here the 1 px line is drawn four times, shifted a
/// pixel right, down and both: 2 px at any slope.
fn thick_line<CT: CoordTranslate<From = (f64, f64)>>(
    area: &DrawingArea<BitMapBackend<'_>, CT>,
    pts: &[(f64, f64)],
    colour: RGBColor,
    dash: Option<(f64, f64)>,
) -> DrawResult {
    let (bx, by) = area.get_base_pixel();
    let px: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| {
            let (x, y) = area.map_coordinate(p);
            ((x - bx) as f64, (y - by) as f64)
        })
        .collect();
    let pieces = match dash {
        Some((on, off)) => dashes(&px, on, off),
        None => vec![px],
    };
    let raw = area.strip_coord_spec();
    for piece in pieces.iter().filter(|p| p.len() > 1) {
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let path: Vec<(i32, i32)> = piece
                .iter()
                .map(|&(x, y)| (x.round() as i32 + dx, y.round() as i32 + dy))
                .collect();
            raw.draw(&PathElement::new(path, colour.stroke_width(1)))?;
        }
    }
    Ok(())
}

/// The dashes of the polyline `px` (pixels): pieces `on` px long with gaps of `off` px, the
/// pattern running on across its corners.
fn dashes(px: &[(f64, f64)], on: f64, off: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(f64, f64)> = px.first().copied().into_iter().collect();
    let (mut drawing, mut left) = (true, on);
    for w in px.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = (b.0 - a.0).hypot(b.1 - a.1);
        let mut t = 0.0;
        while len - t > left {
            t += left;
            let p = (a.0 + (b.0 - a.0) * t / len, a.1 + (b.1 - a.1) * t / len);
            if drawing {
                cur.push(p);
                out.push(std::mem::take(&mut cur));
            } else {
                cur = vec![p];
            }
            drawing = !drawing;
            left = if drawing { on } else { off };
        }
        left -= len - t;
        if drawing {
            cur.push(b);
        }
    }
    if drawing && cur.len() > 1 {
        out.push(cur);
    }
    out
}

/// The y axis' description `desc`; on a log axis (`log`) with a value of 0 or less among `ys`,
/// with a note that such values lie on its foot (a log axis has no 0: a layer keeping nothing
/// read as one keeping 1 %).
fn y_axis_desc(desc: &str, log: bool, mut ys: impl Iterator<Item = f64>) -> String {
    if log && ys.any(|y| y <= 0.0) {
        format!("{desc}; 0 is drawn on the bottom axis")
    } else {
        desc.to_string()
    }
}

/// The colour of series `i` of a panel: its own, else its place's among the series without one
/// (a steered run's target line, coloured and last, leaves the layers their usual colours).
fn series_colour(series: &[Series], i: usize) -> RGBColor {
    let own = series.iter().filter(|s| s.colour.is_none()).count();
    series[i].colour.unwrap_or_else(|| colour(i, own))
}

/// A line chart with axes, ticks, a title and a legend.
fn line_panel(area: &Area, p: &Panel) -> DrawResult {
    let xs = p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0));
    let ys = p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1));
    let (x0, x1) = {
        let (a, b) = lin_range(xs, 0.0);
        (a.min(b), b)
    };
    let y_desc = y_axis_desc(p.y_desc, p.log_y.is_some(), ys.clone());
    let (y0, y1) = match p.log_y {
        Some((floor, top)) => log_range(ys, floor, top),
        None => lin_range(ys, 0.05),
    };
    // The lines as fractions of the axes, for the legend's place.
    let unit_y = |y: f64| match p.log_y {
        Some(_) => (y.max(y0) / y0).ln() / (y1 / y0).ln(),
        None => (y - y0) / (y1 - y0),
    };
    let lines: Vec<Vec<(f64, f64)>> = p
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| ((x - x0) / (x1 - x0).max(1e-12), unit_y(y)))
                .collect()
        })
        .collect();
    // The legend's size as fractions of the plot (its 14 px font: about 7 px a character, a
    // 19 px line, the sample line and the padding).
    let n = p.series.len();
    let (w, h) = area.dim_in_pixel();
    let (pw, ph) = ((w as f64 - 96.0).max(1.0), (h as f64 - 110.0).max(1.0));
    let chars = p.series.iter().map(|s| s.label.chars().count()).max();
    let bw = (chars.unwrap_or(0) as f64 * 7.0 + 50.0) / pw;
    let bh = (n as f64 * 19.0 + 16.0) / ph;
    // Many series: the legend beside the plot (the image is made wider for it by the caller);
    // so too a legend that would lie over the lines in every corner (the plot narrower).
    let corner = legend_place(&lines, (bw, bh), p.legend.clone());
    let side = match (side_legend_width(p.series, h), &corner) {
        (0, Some(_)) => 0,
        (0, None) => legend_columns_width(p.series, h),
        (w, _) => w,
    };
    let legend = corner.unwrap_or(SeriesLabelPosition::UpperLeft);
    let (area, beside) = if side > 0 {
        let (a, b) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(side));
        (a, Some(b))
    } else {
        (area.clone(), None)
    };
    let area = &area;
    let mut b = ChartBuilder::on(area);
    b.caption(p.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72);
    let pick = |i: usize| series_colour(p.series, i);
    let style = |i: usize| pick(i).stroke_width(2);
    macro_rules! finish {
        ($chart:expr, $legend:expr, $clamp:expr, $y_labels:expr $(, $y_format:expr)?) => {{
            let mut chart = $chart;
            // Steps and epochs are whole numbers: whole-number ticks only.
            let span = (x1 - x0).round().max(1.0) as usize;
            let mut mesh = chart.configure_mesh();
            $(mesh.y_label_formatter($y_format);)?
            // Light grid lines at whole numbers, not between them (there were 10 between two
            // labels 2 steps apart): plotters spaces at most labels x this many lines evenly.
            let labels = (span + 1).min(10);
            mesh.x_labels(labels)
                .x_max_light_lines(span.div_ceil(labels.max(1)).min(4))
                .y_labels($y_labels)
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-6 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .x_desc(p.x_desc)
                .y_desc(&y_desc)
                .label_style((FAMILY, 15))
                .axis_desc_style((FAMILY, 16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (i, s) in p.series.iter().enumerate() {
                let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, $clamp(y))).collect();
                let st = style(i);
                thick_line(
                    chart.plotting_area(),
                    &pts,
                    pick(i),
                    s.dash,
                )?;
                // The series' entry in the legend (the line is drawn above).
                let anno = chart.draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?;
                // A dashed series' legend line is dashed too.
                let (c, [p0, p1, p2, p3]) = (pick(i).stroke_width(3), legend_pieces(s.dash));
                anno.label(s.label.clone()).legend(move |(x, y)| {
                    let piece = |(a, b): (i32, i32)| PathElement::new(vec![(a, 0), (b, 0)], c);
                    EmptyElement::at((x, y)) + piece(p0) + piece(p1) + piece(p2) + piece(p3)
                });
                // A lone point, or points at one x (a one-step run's keep chart: its step line
                // and its epoch's end), would be no line or a sliver: marked.
                if pts.iter().all(|p| p.0 == pts[0].0) {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, st.filled())))?;
                }
            }
            if let Some(beside) = &beside {
                side_legend(beside, p.series, &pick)?;
            } else if !p.series.is_empty() {
                chart
                    .configure_series_labels()
                    .position($legend)
                    .label_font((FAMILY, 14))
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(160, 160, 160))
                    .draw()?;
            }
        }};
    }
    match p.log_y {
        Some(_) => {
            let ticks = log_ticks(y0, y1);
            let n = ticks.len();
            let chart =
                b.build_cartesian_2d(x0..x1, (y0..y1).log_scale().with_key_points(ticks))?;
            finish!(chart, legend, |y: f64| y.max(y0), n);
        }
        None => {
            let chart = b.build_cartesian_2d(x0..x1, y0..y1)?;
            let y_format = |y: &f64| lin_tick(*y, y1 - y0);
            finish!(chart, legend, |y: f64| y, 10, &y_format);
        }
    }
    Ok(())
}

/// The legend of model `m`'s DST line in a sweep chart of the rows `dst`: with the seeds per
/// alpha (one: no spread to show).
fn dst_legend(m: &str, dst: &[&super::table::Row]) -> String {
    let seeds: Vec<usize> = dst
        .iter()
        .filter(|r| r.model == m)
        .map(|r| r.seeds.len())
        .collect();
    match (seeds.iter().min(), seeds.iter().max()) {
        (Some(1), Some(1)) | (None, _) => format!("{m} DST (1 seed)"),
        (Some(a), Some(b)) if a == b => format!("{m} DST (mean ± std, {b} seeds)"),
        _ => format!("{m} DST (mean ± std)"),
    }
}

/// A legend names a run in at most this many characters (`elide`): longer folder names took
/// the plot's width for the legend, squeezing the lines and cutting the title.
const LABEL_CHARS: usize = 34;

/// The legend entry of run `k` of `runs` (`names`: `legend_names`) for `what` (a layer, "test";
/// empty: the run alone).
fn series_label(runs: &[Run], names: &[String], k: usize, what: &str) -> String {
    match (runs.len() > 1, what.is_empty()) {
        (false, true) => elide(&runs[k].label(), LABEL_CHARS),
        (false, false) => what.to_string(),
        (true, true) => names[k].clone(),
        (true, false) => format!("{}: {what}", names[k]),
    }
}

/// Each run's name in a legend of several: `distinct_labels` elided, unless that makes it the
/// same as another run's. Made once per chart (each label looks at every run).
fn legend_names(runs: &[Run]) -> Vec<String> {
    let full = distinct_labels(runs);
    full.iter()
        .map(|f| {
            let short = elide(f, LABEL_CHARS);
            let clash = full
                .iter()
                .any(|o| o != f && elide(o, LABEL_CHARS) == short);
            if clash {
                f.clone()
            } else {
                short
            }
        })
        .collect()
}

/// `s` in at most `max` characters: its start and its end (where run names differ: the seed,
/// the alpha) around an ellipsis.
fn elide(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

/// The runs' legend names: each its folder's name, or with the parent folder's name too
/// (`sweep-a/alpha5e-4-seed1`) when another run's folder has the same name. A folder `dst train`
/// named (`runs/<timestamp>-<model>`: nothing of the run but its model) is named by what sets
/// its run apart from the others (`describe`) instead, where that tells it from every other run.
pub fn distinct_labels(runs: &[Run]) -> Vec<String> {
    let default: Vec<bool> = runs.iter().map(|r| is_default_name(&r.label())).collect();
    // Every run's description, where one is to be named by it (a description shared with
    // another run, named by it or not, tells neither apart).
    let desc: Vec<String> = if runs.len() > 1 && default.contains(&true) {
        runs.iter().map(|r| describe(runs, r)).collect()
    } else {
        Vec::new()
    };
    let told_apart = |i: usize| {
        default[i]
            && desc.get(i).is_some_and(|d| !d.is_empty())
            && desc
                .iter()
                .enumerate()
                .all(|(j, d)| j == i || *d != desc[i])
    };
    runs.iter()
        .enumerate()
        .map(|(i, run)| {
            let name = run.label();
            if told_apart(i) {
                return desc[i].clone();
            }
            let same_name = runs
                .iter()
                .enumerate()
                .any(|(j, r)| j != i && r.dir != run.dir && r.label() == name);
            match run.dir.parent().and_then(|p| p.file_name()) {
                Some(parent) if same_name => format!("{}/{name}", parent.to_string_lossy()),
                _ => name,
            }
        })
        .collect()
}

/// Whether `name` is one `dst train` gives a run folder: `YYYYMMDD-HHMMSS-<model>` (then
/// `-dense`, and `-2`, `-3`, ... for a second run in the same second).
fn is_default_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
}

/// What sets `run` apart among `runs`: its model, kind (dense, the alpha or the target keep),
/// settings (`RunConfig::settings`), epochs and seed, each where they are not the same for all
/// runs; empty where nothing does.
fn describe(runs: &[Run], run: &Run) -> String {
    let differs = |f: &dyn Fn(&Run) -> String| runs.iter().any(|r| f(r) != f(run));
    let c = &run.config;
    let mut parts = Vec::new();
    if differs(&|r| r.config.model.clone()) {
        parts.push(c.model.clone());
    }
    if differs(&|r| r.config.kind()) {
        parts.push(c.kind());
    }
    for (k, v) in c.settings() {
        let other = |r: &Run| {
            r.config
                .settings()
                .into_iter()
                .find(|(k2, _)| *k2 == k)
                .map(|(_, v2)| v2)
        };
        if runs.iter().any(|r| other(r).is_some_and(|v2| v2 != v)) {
            parts.push(format!("{k} {v}"));
        }
    }
    if differs(&|r| r.config.epochs.to_string()) {
        parts.push(super::plural(c.epochs, "epoch"));
    }
    if differs(&|r| r.config.seed.to_string()) {
        parts.push(format!("seed {}", c.seed));
    }
    parts.join(", ")
}

/// A chart's title: `what`, then its one run, or how many of `runs` it draws (`drawn`: a dense
/// run has no keep ratios, thresholds or alpha to draw).
fn title(runs: &[Run], drawn: usize, what: &str) -> String {
    if runs.len() == 1 {
        let c = &runs[0].config;
        format!("{what}: {} {}, seed {}", c.model, c.kind(), c.seed)
    } else if drawn == runs.len() {
        format!("{what}: {} runs", runs.len())
    } else {
        format!("{what}: {drawn} of {} runs", runs.len())
    }
}

/// Draws the charts of `runs` (overlaid when several) into `out`; returns the files written.
/// Charts without data are left out (a dense run has no keep ratios or thresholds to follow and
/// no alpha: `alpha.png` only when a DST run logged an alpha other than 0), and such a chart that
/// an earlier drawing left in `out` is removed when it is this command's own to replace.
/// Replaces only files of its own, and draws into a run's folder only that run's charts (see
/// `write_charts`): otherwise refuses, and writes nothing.
pub fn plot_runs(runs: &[Run], out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    // Nothing logged at all: an error naming the runs, and `out` left as it is (drawing
    // nothing would remove its charts and still succeed).
    if runs
        .iter()
        .all(|r| r.steps.is_empty() && r.epochs.is_empty())
    {
        return Err(ReportError::NoRuns(format!(
            "nothing to draw: {}",
            runs.iter()
                .map(|r| format!("{} {}", r.dir.display(), r.why_nothing_logged()))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let mut pictures: Vec<(&str, Vec<u8>)> = Vec::new();
    const SIZE: (u32, u32) = (1000, 620);

    // Per-layer keep ratio over the steps: the masks each logged step trained with, and at each
    // epoch's end the masks after its last step (what the epoch's line reports: a layer the reset
    // made dense again shows as such).
    let layers = all_layer_names(runs);
    let names = legend_names(runs);
    let (mut keep, keep_runs) = layer_series(runs, &names, &layers, keep_points);
    if !keep.is_empty() {
        keep.extend(target_series(runs, &names));
    }
    // The per-layer charts are made wider by their side legend, if any.
    let wide = |series: &[Series]| (SIZE.0 + side_legend_width(series, SIZE.1), SIZE.1);
    if !keep.is_empty() {
        let name = "keep_per_layer.png";
        let png = render_png(&out.join(name), wide(&keep), |a| {
            line_panel(
                a,
                &Panel {
                    title: &title(runs, keep_runs, "Keep ratio per layer"),
                    x_desc: "training step",
                    y_desc: "keep ratio (log)",
                    series: &keep,
                    log_y: Some((1e-4, Some(1.5))),
                    legend: SeriesLabelPosition::LowerLeft,
                },
            )
        })?;
        pictures.push((name, png));
    }

    // Test accuracy and remaining % per epoch.
    let mut acc = Vec::new();
    let mut rem = Vec::new();
    // Each run in its own colour in both panels (its validation line dashed in that colour).
    for (k, r) in runs.iter().enumerate() {
        if r.epochs.is_empty() {
            continue;
        }
        acc.push(Series {
            label: series_label(runs, &names, k, if runs.len() > 1 { "" } else { "test" }),
            points: r
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.test_acc))
                .collect(),
            dash: None,
            colour: Some(colour(k, runs.len())),
        });
        let valid: Vec<(f64, f64)> = r
            .epochs
            .iter()
            .filter_map(|e| e.valid_acc.map(|v| (e.epoch as f64, v)))
            .collect();
        if !valid.is_empty() {
            acc.push(Series {
                label: series_label(runs, &names, k, "validation"),
                points: valid,
                dash: DASHED,
                colour: Some(colour(k, runs.len())),
            });
        }
        rem.push(Series {
            label: series_label(runs, &names, k, if runs.len() > 1 { "" } else { "model" }),
            points: r
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, 100.0 * e.keep_ratio))
                .collect(),
            dash: None,
            colour: Some(colour(k, runs.len())),
        });
    }
    if !acc.is_empty() {
        let name = "accuracy_remaining.png";
        let png = render_png(&out.join(name), (SIZE.0, 900), |a| {
            let halves = a.split_evenly((2, 1));
            line_panel(
                &halves[0],
                &Panel {
                    title: &title(runs, rem.len(), "Accuracy per epoch"),
                    x_desc: "epoch",
                    y_desc: "accuracy %",
                    series: &acc,
                    log_y: None,
                    legend: SeriesLabelPosition::LowerRight,
                },
            )?;
            line_panel(
                &halves[1],
                &Panel {
                    title: "Remaining weights per epoch (model keep ratio x 100)",
                    x_desc: "epoch",
                    y_desc: "remaining % (log)",
                    series: &rem,
                    log_y: Some((1e-2, Some(150.0))),
                    legend: SeriesLabelPosition::LowerLeft,
                },
            )
        })?;
        pictures.push((name, png));
    }

    // Threshold mean per layer and epoch (a dense run has none; its logs from before they were
    // null give 0.0).
    let (thr, thr_runs) = layer_series(runs, &names, &layers, |r, name| {
        if r.config.dense {
            return Vec::new();
        }
        r.epochs
            .iter()
            .filter_map(|e| {
                e.layers
                    .iter()
                    .find(|l| l.name == name)
                    .and_then(|l| Some((e.epoch as f64, l.threshold_mean?)))
            })
            .collect()
    });
    if !thr.is_empty() {
        let name = "thresholds.png";
        let png = render_png(&out.join(name), wide(&thr), |a| {
            line_panel(
                a,
                &Panel {
                    title: &title(runs, thr_runs, "Mean threshold per layer"),
                    x_desc: "epoch",
                    y_desc: "threshold mean",
                    series: &thr,
                    log_y: None,
                    legend: SeriesLabelPosition::UpperLeft,
                },
            )
        })?;
        pictures.push((name, png));
    }

    // Alpha over the steps, of the DST runs that logged it (a dense run logs alpha 0: no penalty
    // to weigh); drawn only when some run's alpha is not 0.
    let mut alpha = Vec::new();
    for (k, r) in runs.iter().enumerate().filter(|(_, r)| !r.config.dense) {
        let points: Vec<(f64, f64)> = r
            .steps
            .iter()
            .filter_map(|s| s.alpha.map(|a| (s.step as f64, a)))
            .collect();
        if !points.is_empty() {
            alpha.push(Series {
                label: series_label(runs, &names, k, if runs.len() > 1 { "" } else { "alpha" }),
                points,
                dash: None,
                colour: Some(colour(k, runs.len())),
            });
        }
    }
    if alpha.iter().any(|s| s.points.iter().any(|p| p.1 != 0.0)) {
        let positive = alpha.iter().all(|s| s.points.iter().all(|p| p.1 > 0.0));
        let name = "alpha.png";
        let png = render_png(&out.join(name), SIZE, |a| {
            line_panel(
                a,
                &Panel {
                    title: &title(runs, alpha.len(), "Penalty weight alpha"),
                    x_desc: "training step",
                    y_desc: if positive { "alpha (log)" } else { "alpha" },
                    series: &alpha,
                    log_y: positive.then_some((1e-12, None)),
                    legend: SeriesLabelPosition::UpperRight,
                },
            )
        })?;
        pictures.push((name, png));
    }
    write_charts_replacing(out, &pictures, CHARTS, Drawn::Runs(runs))
}

/// Every chart `plot_runs` may draw: one it leaves out this time (no data for it) is removed
/// where an earlier drawing of these names left one (see `write_charts`).
const CHARTS: &[&str] = &[
    "keep_per_layer.png",
    "accuracy_remaining.png",
    "thresholds.png",
    "alpha.png",
];

/// Draws the charts of the run in `dir` into `dir` (what `dst train` does at the end of a run and
/// of each `--resume`): a run's own charts in its own folder, which they may always replace.
pub fn draw_run_charts(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    // Not its summary.json: the charts need none, and the trainer draws them before it writes
    // the summary (a damaged one left from before is replaced after them).
    let run = Run::load_with(dir, false)?;
    plot_runs(std::slice::from_ref(&run), dir)
}

/// The sweep chart's captions' note of the alphas whose runs all diverged, which have no point
/// (the chart showed the dense baseline alone, as if they had not been swept); empty if none.
fn diverged_caption(rows: &[super::table::Row], rule: super::table::Rule) -> String {
    let mut lost: Vec<String> = rows
        .iter()
        .filter(|r| !r.dense && r.get(rule).is_none() && r.diverged > 0)
        .filter(|r| r.diverged == r.unfinished)
        .filter_map(|r| r.alpha.map(super::table::fmt_alpha))
        .collect();
    lost.dedup();
    match lost.len() {
        0 => String::new(),
        n if n > 3 => format!(
            "; diverged: alpha {} and {} more",
            lost[..2].join(", "),
            n - 2
        ),
        _ => format!("; diverged: alpha {}", lost.join(", ")),
    }
}

/// Test accuracy (top) and remaining % (bottom, log) against alpha (log x) of a sweep's rows
/// under `rule`: mean with a ± std bar per alpha, one line per model; dense rows as dashed
/// horizontal baselines. An error (nothing written) when no row has a finished run.
pub fn sweep_chart(
    rows: &[super::table::Row],
    rule: super::table::Rule,
    path: &Path,
) -> Result<(), ReportError> {
    let dst: Vec<&super::table::Row> = rows
        .iter()
        .filter(|r| r.alpha.is_some_and(|a| a > 0.0) && r.get(rule).is_some())
        .collect();
    let alphas = dst.iter().map(|r| r.alpha.unwrap());
    let (a0, a1) = (
        alphas.clone().fold(f64::INFINITY, f64::min),
        alphas.fold(f64::NEG_INFINITY, f64::max),
    );
    let (a0, a1) = if a0.is_finite() {
        (a0 / 2.0, a1 * 2.0)
    } else {
        (1e-5, 1e-2)
    };
    // Ticks at the alphas swept.
    let mut ticks: Vec<f64> = dst.iter().map(|r| r.alpha.unwrap()).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let mut models: Vec<&str> = Vec::new();
    for r in rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    let dense: Vec<&super::table::Row> = rows
        .iter()
        .filter(|r| r.dense && r.get(rule).is_some())
        .collect();
    let lost = diverged_caption(rows, rule);
    if dst.is_empty() && dense.is_empty() {
        // Empty axes would pass for a chart: say why there is none instead.
        return Err(ReportError::NoRuns(format!(
            "nothing to draw in {}: no row has a finished run",
            path.display()
        )));
    }
    render(path, (1000, 900), |root| {
        let halves = root.split_evenly((2, 1));
        for (k, area) in halves.iter().enumerate() {
            // k = 0: accuracy, k = 1: remaining %.
            let val = |r: &super::table::Row| {
                let (acc, rem) = r.get(rule).unwrap();
                if k == 0 {
                    acc
                } else {
                    rem
                }
            };
            let ys = dst
                .iter()
                .chain(dense.iter())
                .flat_map(|r| {
                    let s = val(r);
                    [s.mean - s.std, s.mean + s.std]
                })
                .collect::<Vec<f64>>();
            let mut b = ChartBuilder::on(area);
            b.caption(
                if k == 0 {
                    format!("Test accuracy against alpha ({}{lost})", rule.short())
                } else {
                    format!("Remaining weights against alpha ({}{lost})", rule.short())
                },
                (FAMILY, 22),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72);
            // The legend where the lines, bars and baselines leave room (`legend_corner`), from
            // each point's place as a fraction of the axes (`unit_y` for the y axis).
            let corner = |unit_y: &dyn Fn(f64) -> f64| {
                let (w, h) = area.dim_in_pixel();
                let (pw, ph) = ((w as f64 - 96.0).max(1.0), (h as f64 - 110.0).max(1.0));
                let ux = |a: f64| (a / a0).ln() / (a1 / a0).ln();
                let (mut lines, mut labels, mut chars) = (Vec::new(), 0usize, 0usize);
                for m in &models {
                    let mut pts: Vec<(f64, f64)> = dst
                        .iter()
                        .filter(|r| r.model == *m)
                        .map(|r| (ux(r.alpha.unwrap()), unit_y(val(r).mean)))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    if !pts.is_empty() {
                        lines.push(pts);
                        (labels, chars) =
                            (labels + 1, chars.max(dst_legend(m, &dst).chars().count()));
                    }
                    for d in dense.iter().filter(|r| r.model == *m) {
                        let y = unit_y(val(d).mean);
                        lines.push(vec![(0.0, y), (1.0, y)]);
                        (labels, chars) = (labels + 1, chars.max(m.len() + 28));
                    }
                }
                for r in &dst {
                    let (x, s) = (ux(r.alpha.unwrap()), val(r));
                    lines.push(vec![
                        (x, unit_y(s.mean - s.std)),
                        (x, unit_y(s.mean + s.std)),
                    ]);
                }
                legend_corner(
                    &lines,
                    (chars as f64 * 7.0 + 50.0) / pw,
                    (labels as f64 * 19.0 + 16.0) / ph,
                    SeriesLabelPosition::LowerLeft,
                )
            };
            macro_rules! body {
                ($chart:expr, $legend:expr, $clamp:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc("alpha (log)")
                        .y_desc(if k == 0 {
                            "test accuracy %"
                        } else {
                            "remaining % (log)"
                        })
                        .x_label_formatter(&|x| super::table::fmt_alpha(*x))
                        .y_labels(if k == 0 { 10 } else { 5 })
                        .label_style((FAMILY, 15))
                        .axis_desc_style((FAMILY, 16))
                        .light_line_style(RGBColor(235, 235, 235))
                        .draw()?;
                    let n = models.len() * 2;
                    // The dense baselines first: under the DST points and bars (their line
                    // crossed the markers).
                    for (mi, m) in models.iter().enumerate() {
                        for d in dense.iter().filter(|r| r.model == *m) {
                            let y = $clamp(val(d).mean);
                            chart.draw_series(DashedLineSeries::new(
                                vec![(a0, y), (a1, y)],
                                10,
                                6,
                                colour(2 * mi + 1, n).stroke_width(2),
                            ))?;
                        }
                    }
                    for (mi, m) in models.iter().enumerate() {
                        let c = colour(2 * mi, n);
                        let mut pts: Vec<(f64, f64, f64)> = dst
                            .iter()
                            .filter(|r| r.model == *m)
                            .map(|r| {
                                let s = val(r);
                                (r.alpha.unwrap(), s.mean, s.std)
                            })
                            .collect();
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                        if !pts.is_empty() {
                            let line: Vec<(f64, f64)> =
                                pts.iter().map(|p| (p.0, $clamp(p.1))).collect();
                            thick_line(chart.plotting_area(), &line, c, None)?;
                            chart
                                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                                // One seed per alpha: no spread to show.
                                .label(dst_legend(m, &dst))
                                .legend(move |(x, y)| {
                                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                                });
                            chart.draw_series(
                                pts.iter()
                                    .map(|p| Circle::new((p.0, $clamp(p.1)), 4, c.filled())),
                            )?;
                            chart.draw_series(pts.iter().map(|p| {
                                PathElement::new(
                                    vec![(p.0, $clamp(p.1 - p.2)), (p.0, $clamp(p.1 + p.2))],
                                    c.stroke_width(2),
                                )
                            }))?;
                        }
                        for d in dense.iter().filter(|r| r.model == *m) {
                            let c = colour(2 * mi + 1, n);
                            // Its legend entry (the line is drawn above, under the DST points).
                            chart
                                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                                .label(format!(
                                    "{m} dense baseline ({})",
                                    super::plural(d.seeds.len(), "seed")
                                ))
                                // Dashed, as its line is.
                                .legend(move |(x, y)| {
                                    EmptyElement::at((x, y))
                                        + PathElement::new(vec![(0, 0), (9, 0)], c.stroke_width(3))
                                        + PathElement::new(
                                            vec![(14, 0), (22, 0)],
                                            c.stroke_width(3),
                                        )
                                });
                        }
                    }
                    chart
                        .configure_series_labels()
                        .position($legend)
                        .label_font((FAMILY, 14))
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(160, 160, 160))
                        .draw()?;
                }};
            }
            if k == 0 {
                let (y0, y1) = lin_range(ys.iter().copied(), 0.1);
                let legend = corner(&|y: f64| (y - y0) / (y1 - y0));
                let chart = b.build_cartesian_2d(
                    (a0..a1).log_scale().with_key_points(ticks.clone()),
                    y0..y1,
                )?;
                body!(chart, legend, |y: f64| y);
            } else {
                let (y0, y1) = log_range(ys.iter().copied(), 1e-3, Some(150.0));
                let legend = corner(&|y: f64| (y.max(y0) / y0).ln() / (y1 / y0).ln());
                // 2 and 5 times the decades too where the axis spans little more than one
                // (plotters' own ticks labelled only 10 and 100).
                let chart = b.build_cartesian_2d(
                    (a0..a1).log_scale().with_key_points(ticks.clone()),
                    (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
                )?;
                body!(chart, legend, |y: f64| y.max(y0));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::{
        all_layer_names, colour, dashes, elide, layer_colour, layer_series, legend_columns_width,
        legend_corner, legend_covers, legend_place, lin_tick, log_range, side_legend_width,
        thick_line, title, Series, LEGEND_INSIDE,
    };

    /// A long run name keeps its start and end within the legend's width; a short one is kept.
    #[test]
    fn long_names_are_elided_in_the_middle() {
        let long = format!(
            "{}-alpha5e-4-seed3",
            "a-very-descriptive-experiment-name".repeat(2)
        );
        let e = elide(&long, 34);
        assert_eq!(e.chars().count(), 34);
        assert!(e.starts_with("a-very-descr") && e.ends_with("alpha5e-4-seed3") && e.contains('…'));
        assert_eq!(elide("alpha5e-4-seed3", 34), "alpha5e-4-seed3");
    }

    /// A legend that would cover lines in every corner goes beside the plot (it lay over a
    /// line's start; raising the axis instead put a keep-ratio axis up to 100); one with a free
    /// corner takes it.
    #[test]
    fn a_legend_over_the_lines_everywhere_goes_beside_them() {
        use plotters::prelude::SeriesLabelPosition::*;
        // A zigzag across the whole plot: every corner's box covers some of it.
        let zigzag: Vec<(f64, f64)> = (0..=10)
            .map(|i| (i as f64 / 10.0, (i % 2) as f64))
            .collect();
        for c in [UpperLeft, UpperRight, LowerLeft, LowerRight] {
            assert!(legend_covers(std::slice::from_ref(&zigzag), (0.3, 0.3), &c) > 0);
        }
        assert_eq!(legend_place(&[zigzag], (0.3, 0.3), UpperLeft), None);
        let falling = vec![(0.0, 1.0), (1.0, 0.0)];
        assert_eq!(
            legend_place(&[falling], (0.3, 0.2), LowerRight),
            Some(UpperRight)
        );
        // Beside the plot, the legend is as wide as its longest label needs.
        let one = |label: &str| Series {
            label: label.into(),
            points: vec![(0.0, 1.0)],
            dash: None,
            colour: None,
        };
        let (short, long) = (
            legend_columns_width(&[one("fc1")], 620),
            legend_columns_width(&[one("alpha5e-4-seed1: fc1")], 620),
        );
        assert!(short > 40 && long >= short + 17 * 7, "{short} {long}");
    }
    use plotters::prelude::*;

    /// In a chart of several runs' layers a layer keeps the colour it has in a one-run chart, and
    /// each run is a lighter shade of it (colours meant runs in some charts, layers in others,
    /// and neither here: each of 9 lines had its own).
    #[test]
    fn a_layer_keeps_its_colour_across_runs() {
        let layers: Vec<String> = ["fc1", "fc2", "fc3"].map(String::from).to_vec();
        assert_eq!(layer_colour(&layers, "fc2", 0, 1), None);
        assert_eq!(layer_colour(&layers, "fc2", 0, 3), Some(colour(1, 3)));
        let (a, b) = (
            layer_colour(&layers, "fc2", 1, 3).unwrap(),
            layer_colour(&layers, "fc2", 2, 3).unwrap(),
        );
        let sum = |c: RGBColor| c.0 as u32 + c.1 as u32 + c.2 as u32;
        let base = colour(1, 3);
        assert!(
            sum(base) < sum(a) && sum(a) < sum(b),
            "{base:?} {a:?} {b:?}"
        );
        // The last run's shade is still far from white.
        assert!(sum(b) < 3 * 235, "{b:?}");
    }

    /// A steep line is as thick as a flat one: every row a steep segment crosses, and every
    /// column a flat one does, holds 2 of its pixels or more.
    #[test]
    fn steep_and_flat_lines_are_equally_thick() {
        let (w, h) = (100u32, 100u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let chart = ChartBuilder::on(&root)
                .build_cartesian_2d(0.0..100.0, 0.0..100.0)
                .unwrap();
            let red = RGBColor(255, 0, 0);
            thick_line(
                chart.plotting_area(),
                &[(10.0, 5.0), (13.0, 95.0)],
                red,
                None,
            )
            .unwrap();
            thick_line(
                chart.plotting_area(),
                &[(30.0, 50.0), (95.0, 52.0)],
                red,
                None,
            )
            .unwrap();
        }
        let red = |x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            buf[i] > 200 && buf[i + 1] < 100
        };
        for y in 10..90 {
            let n = (0..25).filter(|&x| red(x, y)).count();
            assert!(n >= 2, "row {y}: {n} px");
        }
        for x in 35..90 {
            let n = (0..h).filter(|&y| red(x, y)).count();
            assert!(n >= 2, "column {x}: {n} px");
        }
    }

    /// Dashes of `on` px with gaps of `off` px, the pattern running on across a corner.
    #[test]
    fn dashes_run_across_corners() {
        let d = dashes(&[(0.0, 0.0), (30.0, 0.0)], 8.0, 5.0);
        assert_eq!(
            d,
            vec![
                vec![(0.0, 0.0), (8.0, 0.0)],
                vec![(13.0, 0.0), (21.0, 0.0)],
                vec![(26.0, 0.0), (30.0, 0.0)]
            ]
        );
        // A corner inside a dash: the dash bends with the line.
        let d = dashes(&[(0.0, 0.0), (4.0, 0.0), (4.0, 10.0)], 8.0, 5.0);
        assert_eq!(d[0], vec![(0.0, 0.0), (4.0, 0.0), (4.0, 4.0)]);
        assert_eq!(d[1], vec![(4.0, 9.0), (4.0, 10.0)]);
    }

    /// The shades of a per-layer chart go to the runs it draws, in order: a dense run first
    /// (nothing to draw) took the base colour, and the DST runs drew in lighter shades only.
    #[test]
    fn the_runs_drawn_take_the_shades() {
        let run = |dir: &str, keep: Option<f64>| {
            let mut r = run_at(
                dir,
                crate::report::runs::RunConfig {
                    dense: keep.is_none(),
                    ..Default::default()
                },
            );
            r.steps = vec![crate::report::runs::StepLine {
                step: 10,
                keep: keep
                    .map(|k| [("fc1".to_string(), k)].into_iter().collect())
                    .unwrap_or_default(),
                ..Default::default()
            }];
            r
        };
        let runs = [run("d", None), run("a", Some(0.5)), run("b", Some(0.2))];
        let layers = all_layer_names(&runs);
        let names = super::legend_names(&runs);
        let (series, drawn) = layer_series(&runs, &names, &layers, |r, name| {
            r.steps
                .iter()
                .filter_map(|s| s.keep.get(name).map(|k| (s.step as f64, *k)))
                .collect()
        });
        assert_eq!((series.len(), drawn), (2, 2));
        assert_eq!(series[0].colour, Some(colour(0, 1)));
        assert_eq!(series[1].colour, layer_colour(&layers, "fc1", 1, 2));
        assert_ne!(series[0].colour, series[1].colour);
    }

    fn run_at(dir: &str, config: crate::report::runs::RunConfig) -> crate::report::Run {
        crate::report::Run {
            dir: dir.into(),
            config,
            steps: vec![],
            epochs: vec![],
            summary: None,
            torn_line: None,
            damaged_lines: vec![],
            diverged: None,
        }
    }

    /// The keep chart shows each epoch's end (what the epoch's line and the summary report),
    /// after the step line of the same step: a layer the paper's reset made dense again at an
    /// epoch's end ended the chart at its last step's 0.47.
    #[test]
    fn the_keep_chart_ends_each_epoch_with_its_reported_masks() {
        use crate::report::runs::{EpochLine, LayerLine, StepLine};
        let mut r = run_at("r", Default::default());
        let step = |step, k| StepLine {
            step,
            keep: [("fc1".to_string(), k)].into_iter().collect(),
            ..Default::default()
        };
        let end = |epoch, step, k| EpochLine {
            epoch,
            step,
            layers: vec![LayerLine {
                name: "fc1".into(),
                keep_ratio: k,
                ..Default::default()
            }],
            ..Default::default()
        };
        r.steps = vec![step(5, 0.9), step(10, 0.47), step(15, 0.4), step(20, 0.3)];
        r.epochs = vec![end(1, 10, 1.0), end(2, 20, 0.25)];
        assert_eq!(
            super::keep_points(&r, "fc1"),
            [
                (5.0, 0.9),
                (10.0, 0.47),
                (10.0, 1.0),
                (15.0, 0.4),
                (20.0, 0.3),
                (20.0, 0.25)
            ]
        );
        assert!(super::keep_points(&r, "fc2").is_empty());
        r.config.dense = true;
        assert!(super::keep_points(&r, "fc1").is_empty());
    }

    /// A steered run's keep chart follows its target too (a grey dashed line after the layers',
    /// which keep the colours they have in an unsteered run's chart); other runs have none.
    #[test]
    fn a_steered_run_draws_its_target() {
        use crate::report::runs::StepLine;
        let step = |step, target| StepLine {
            step,
            target_keep: target,
            keep: [("fc1".to_string(), 0.5)].into_iter().collect(),
            ..Default::default()
        };
        let mut steered = run_at("s", Default::default());
        steered.steps = vec![step(10, Some(0.9)), step(20, Some(0.8))];
        let mut plain = run_at("p", Default::default());
        plain.steps = vec![step(10, None)];
        let runs = [plain, steered];
        let names = super::legend_names(&runs);
        let t = super::target_series(&runs, &names);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].points, [(10.0, 0.9), (20.0, 0.8)]);
        assert_eq!(t[0].label, "s: target (model keep)");
        assert!(t[0].dash.is_some() && t[0].colour.is_some());
        // The layers' colours as without it.
        let layer = |name: &str| super::Series {
            label: name.into(),
            points: vec![],
            dash: None,
            colour: None,
        };
        let mut series = vec![layer("fc1"), layer("fc2"), layer("fc3")];
        let before: Vec<_> = (0..3).map(|i| super::series_colour(&series, i)).collect();
        series.extend(t);
        let after: Vec<_> = (0..3).map(|i| super::series_colour(&series, i)).collect();
        assert_eq!(before, after);
    }

    /// The sweep chart names the alphas whose runs all diverged (no point of theirs is drawn);
    /// an alpha with a finished run, or whose runs are only unfinished, is not named.
    #[test]
    fn the_sweep_chart_names_alphas_that_diverged() {
        use crate::report::table::{Row, Rule};
        let row = |alpha: f64, diverged: usize| Row {
            alpha: Some(alpha),
            unfinished: 1,
            diverged,
            ..Default::default()
        };
        let mixed = Row {
            unfinished: 2,
            ..row(2e-3, 1)
        };
        let rows = [row(1e-4, 1), row(1e-3, 1), row(5e-4, 0), mixed];
        assert_eq!(
            super::diverged_caption(&rows, Rule::Last),
            "; diverged: alpha 1e-4, 1e-3"
        );
        assert_eq!(super::diverged_caption(&rows[2..], Rule::Last), "");
        let many: Vec<Row> = [1e-4, 2e-4, 3e-4, 4e-4].map(|a| row(a, 1)).to_vec();
        assert_eq!(
            super::diverged_caption(&many, Rule::Last),
            "; diverged: alpha 1e-4, 2e-4 and 2 more"
        );
    }

    /// A log axis says where its zeros are drawn (on its foot, which read as 1 % kept).
    #[test]
    fn a_log_axis_names_where_zeros_go() {
        let desc = |log, ys: &[f64]| super::y_axis_desc("keep", log, ys.iter().copied());
        assert_eq!(desc(true, &[0.5, 0.01]), "keep");
        assert_eq!(
            desc(true, &[0.5, 0.0]),
            "keep; 0 is drawn on the bottom axis"
        );
        assert_eq!(desc(false, &[0.5, 0.0]), "keep");
    }

    /// Runs overlaid in a per-layer chart differ in line style as well as shade, and a legend
    /// draws each style in at most four pieces within its 22 px.
    #[test]
    fn overlaid_runs_differ_in_line_style() {
        use super::{legend_pieces, run_dash};
        let styles: Vec<_> = (0..4).map(run_dash).collect();
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(styles[i], styles[j]);
            }
        }
        assert_eq!(run_dash(4), run_dash(0));
        assert_eq!(legend_pieces(None), [(0, 22); 4]);
        assert_eq!(
            legend_pieces(Some((8.0, 5.0))),
            [(0, 8), (13, 21), (0, 8), (0, 8)]
        );
        for k in 0..4 {
            let p = legend_pieces(run_dash(k));
            assert!(p.iter().all(|&(a, b)| 0 <= a && a < b && b <= 22), "{p:?}");
        }
    }

    /// Runs in folders `dst train` named (a timestamp and the model: nothing of the run) are
    /// named in a legend by what sets them apart; folders a user named keep their names.
    #[test]
    fn default_named_runs_are_named_by_their_settings() {
        use crate::report::runs::RunConfig;
        let distinct_label =
            |runs: &[crate::report::Run], i: usize| super::distinct_labels(runs)[i].clone();
        let dst = |alpha, seed| RunConfig {
            model: "lenet300".into(),
            alpha,
            seed,
            optimizer: "sgd".into(),
            ..Default::default()
        };
        let runs = [
            run_at("runs/20261129-205802-lenet300", dst(5e-3, 1)),
            run_at("runs/20261129-205805-lenet300", dst(1e-3, 1)),
            run_at("mine/a5e-4", dst(5e-4, 1)),
        ];
        assert_eq!(distinct_label(&runs, 0), "DST alpha 5e-3");
        assert_eq!(distinct_label(&runs, 1), "DST alpha 1e-3");
        assert_eq!(distinct_label(&runs, 2), "a5e-4");
        // Two runs alike but for the folder: their folders' names.
        let twins = [
            run_at("runs/20261129-205802-lenet300", dst(5e-3, 1)),
            run_at("runs/20261129-205802-lenet300-2", dst(5e-3, 1)),
        ];
        assert_eq!(distinct_label(&twins, 1), "20261129-205802-lenet300-2");
        // The seed and the learning rate, where they differ.
        let mut other = dst(5e-3, 2);
        other.lr = 0.1;
        let runs = [
            run_at("runs/20261129-205802-lenet300", dst(5e-3, 1)),
            run_at("runs/20261129-205805-lenet300", other),
        ];
        assert_eq!(distinct_label(&runs, 1), "lr 0.1, seed 2");
        assert!(!super::is_default_name("alpha5e-4-seed1"));
        assert!(super::is_default_name("20261129-205802-lenet300-dense"));
    }

    /// A chart of several runs counts the runs it draws (a keep-ratio chart of 2 DST and 2 dense
    /// runs said "4 runs").
    #[test]
    fn a_title_counts_the_runs_drawn() {
        let run = |dense| {
            run_at(
                "r",
                crate::report::runs::RunConfig {
                    dense,
                    ..Default::default()
                },
            )
        };
        let runs = [run(false), run(false), run(true), run(true)];
        assert_eq!(title(&runs, 4, "Accuracy"), "Accuracy: 4 runs");
        assert_eq!(title(&runs, 2, "Keep"), "Keep: 2 of 4 runs");
    }

    /// A log axis whose smallest value is on a decade (a keep ratio of 1 at the first step)
    /// starts a decade below it: the point is not drawn on the axis (the axis was 1.0-1.5).
    #[test]
    fn a_value_on_a_decade_is_above_the_log_axis() {
        assert_eq!(log_range([1.0].into_iter(), 1e-4, Some(1.5)), (0.1, 1.5));
        // Just above a decade: some room under that decade (fc1 at 0.01003 of a reset run was
        // drawn on the axis), not a whole empty decade.
        let (lo, hi) = log_range([0.01003, 1.0].into_iter(), 1e-4, Some(1.5));
        assert!((lo - 0.01003 / 1.1).abs() < 1e-12 && hi == 1.5, "{lo} {hi}");
        assert_eq!(log_range([0.0125].into_iter(), 1e-4, Some(1.5)).0, 0.01);
        assert_eq!(
            log_range([0.984, 1.0].into_iter(), 1e-4, Some(1.5)),
            (0.1, 1.5)
        );
        assert_eq!(
            log_range([0.02, 0.5].into_iter(), 1e-4, Some(1.5)),
            (0.01, 1.5)
        );
        assert_eq!(log_range([1e-4].into_iter(), 1e-4, Some(1.5)), (1e-4, 1.5));
        // Without a top: a constant alpha of 1e-3 sits between two decades, not on an edge.
        let (lo, hi) = log_range([1e-3, 1e-3].into_iter(), 1e-12, None);
        assert!(
            (lo / 1e-4 - 1.0).abs() < 1e-9 && (hi / 1e-2 - 1.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi) = log_range([5e-4].into_iter(), 1e-12, None);
        assert!(
            (lo / 1e-4 - 1.0).abs() < 1e-9 && (hi / 1e-3 - 1.0).abs() < 1e-9,
            "{lo} {hi}"
        );
    }

    /// Up to `LEGEND_INSIDE` series the legend sits in the plot; more (a VGG-16 or several runs'
    /// layers) go beside it, in as many columns as the height needs (47 entries ran off the
    /// bottom of the plot, over the lines).
    #[test]
    fn many_series_get_a_legend_beside_the_plot() {
        let series = |n: usize| -> Vec<Series> {
            (0..n)
                .map(|i| Series {
                    label: format!("run: layer{i:02}"),
                    points: vec![(0.0, 1.0)],
                    dash: None,
                    colour: None,
                })
                .collect()
        };
        assert_eq!(side_legend_width(&series(LEGEND_INSIDE), 620), 0);
        let one = side_legend_width(&series(LEGEND_INSIDE + 1), 620);
        let two = side_legend_width(&series(47), 620);
        assert!(one > 100 && two > one + 100, "{one} {two}");
    }

    /// A zero tick is "0.0", whatever its sign or float noise (it was once "-0.0"); others keep
    /// plotters' format.
    #[test]
    fn a_zero_tick_has_no_minus_sign() {
        for noise in [-0.0, -1.4e-17, 2e-18] {
            assert_eq!(lin_tick(noise, 0.2), "0.0");
        }
        assert_eq!(lin_tick(-0.05, 0.2), "-0.05");
        assert_eq!(lin_tick(0.25, 1.0), "0.25");
    }

    /// The legend goes where the lines leave room: its preferred corner when that is free,
    /// else the corner its box covers least of them (segments count, not only their ends).
    #[test]
    fn the_legend_avoids_the_lines() {
        use plotters::prelude::SeriesLabelPosition::*;
        // From the upper left down to the lower right: both of those corners are taken.
        let falling = vec![vec![(0.0, 1.0), (1.0, 0.0)]];
        assert_eq!(legend_corner(&falling, 0.3, 0.2, UpperLeft), UpperRight);
        assert_eq!(legend_corner(&falling, 0.3, 0.2, LowerRight), UpperRight);
        // A line along the top: the lower corners, the preferred one first.
        let top = vec![vec![(0.0, 0.95), (1.0, 0.95)]];
        assert_eq!(legend_corner(&top, 0.3, 0.2, UpperRight), LowerLeft);
        assert_eq!(legend_corner(&top, 0.3, 0.2, LowerRight), LowerRight);
        // Two points far apart whose segment crosses the upper left corner's box.
        let across = vec![vec![(0.0, 0.5), (0.5, 1.0)]];
        assert_ne!(legend_corner(&across, 0.3, 0.3, UpperLeft), UpperLeft);
    }
}
