//! What a training run leaves behind for a person to read: the per-epoch
//! metrics as CSV, loss and accuracy curves as a PNG, and a confusion matrix.

use cinder_tensor::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

/// One finished epoch of training.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub test_loss: f32,
    pub test_accuracy: f32,
    pub seconds: f64,
}

const CSV_HEADER: &str = "epoch,lr,train_loss,train_accuracy,test_loss,test_accuracy,seconds";

/// The history as CSV, one row per epoch. Floats use `Display`, the shortest
/// text that parses back to the same value, so the file round-trips exactly.
pub fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in history {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.epoch, r.lr, r.train_loss, r.train_accuracy, r.test_loss, r.test_accuracy, r.seconds
        ));
    }
    out
}

/// Reads back what [`metrics_csv`] wrote. Blank lines are skipped; any other
/// malformed line is an error naming its 1-based line number.
pub fn parse_metrics_csv(text: &str) -> Result<Vec<EpochRecord>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == CSV_HEADER => {}
        Some((_, header)) => {
            return Err(Error::invalid(
                "metrics",
                format!(
                    "line 1: expected header `{CSV_HEADER}`, found `{}`",
                    header.trim()
                ),
            ))
        }
        None => return Err(Error::invalid("metrics", "line 1: empty file, no header")),
    }
    let mut history = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |detail: String| Error::invalid("metrics", format!("line {}: {detail}", i + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 7 {
            return Err(bad(format!("expected 7 fields, found {}", fields.len())));
        }
        let f = |k: usize| -> Result<f32> {
            fields[k]
                .parse()
                .map_err(|_| bad(format!("field {} `{}` is not a number", k + 1, fields[k])))
        };
        history.push(EpochRecord {
            epoch: fields[0]
                .parse()
                .map_err(|_| bad(format!("epoch `{}` is not a whole number", fields[0])))?,
            lr: f(1)?,
            train_loss: f(2)?,
            train_accuracy: f(3)?,
            test_loss: f(4)?,
            test_accuracy: f(5)?,
            seconds: fields[6]
                .parse()
                .map_err(|_| bad(format!("seconds `{}` is not a number", fields[6])))?,
        });
    }
    Ok(history)
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 400;
const PANEL: u32 = WIDTH / 2;
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const TEST: Rgb<u8> = Rgb([255, 127, 14]);
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// A 900x400 PNG: loss (left) and accuracy (right) against epoch, train in
/// blue and test in orange. Non-finite values (a diverged loss, a run without
/// a test set) are left out of the curves rather than failing the chart.
pub fn curves_png(history: &[EpochRecord]) -> Result<Vec<u8>> {
    if history.is_empty() {
        return Err(Error::invalid("curves_png", "no epochs to plot"));
    }
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, BACKGROUND);
    let epochs: Vec<f64> = history.iter().map(|r| r.epoch as f64).collect();
    let series =
        |f: fn(&EpochRecord) -> f32| -> Vec<f64> { history.iter().map(|r| f(r) as f64).collect() };
    let loss = [series(|r| r.train_loss), series(|r| r.test_loss)];
    let acc = [series(|r| r.train_accuracy), series(|r| r.test_accuracy)];

    let finite = loss.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    // A flat curve still needs a y range; widen it relative to its size so
    // that tick steps stay within a few orders of magnitude of the values.
    let pad = if hi - lo < lo.abs().max(hi.abs()) * 1e-3 || hi == lo {
        (lo.abs() * 0.1).max(1e-3)
    } else {
        0.0
    };
    let step = nice_step((hi - lo + 2.0 * pad) / 4.0);
    let (k_lo, k_hi) = (((lo - pad) / step).floor(), ((hi + pad) / step).ceil());
    let loss_ticks: Vec<f64> = (0..=(k_hi - k_lo) as usize)
        .map(|k| (k_lo + k as f64) * step)
        .collect();
    let big = lo.abs().max(hi.abs()) >= 1e5;
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    let loss_label = |v: f64| {
        if big {
            format!("{v:.1e}")
        } else {
            format!("{v:.decimals$}")
        }
    };
    panel(
        &mut img,
        0,
        "loss",
        &epochs,
        &loss,
        &loss_ticks,
        &loss_label,
    );

    let acc_ticks = [0.0, 0.25, 0.5, 0.75, 1.0];
    panel(
        &mut img,
        PANEL,
        "accuracy",
        &epochs,
        &acc,
        &acc_ticks,
        &|v| format!("{:.0}%", v * 100.0),
    );

    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(img.as_raw(), WIDTH, HEIGHT, ExtendedColorType::Rgb8)
        .map_err(|e| Error::invalid("curves_png", format!("PNG encoding failed: {e}")))?;
    Ok(png)
}

/// 1, 2 or 5 times a power of ten, the smallest such at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let exp = 10f64.powf(raw.log10().floor());
    let f = raw / exp;
    exp * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// One chart in the horizontal slot starting at `ox`; the y range is the
/// first and last of `yticks`, and values outside it are drawn at its edge.
fn panel(
    img: &mut RgbImage,
    ox: u32,
    title: &str,
    epochs: &[f64],
    series: &[Vec<f64>; 2],
    yticks: &[f64],
    label: &dyn Fn(f64) -> String,
) {
    let (x0, x1, y0, y1) = ((ox + 75) as f64, (ox + PANEL - 20) as f64, 40.0, 340.0);
    let (mut e_lo, mut e_hi) = epochs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &e| {
            (a.min(e), b.max(e))
        });
    if e_hi - e_lo < 1.0 {
        // A single epoch sits in the middle, with its own tick under it.
        e_lo -= 0.5;
        e_hi += 0.5;
    }
    let (v_lo, v_hi) = (yticks[0], yticks[yticks.len() - 1]);
    let px = |e: f64| x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0);
    let py = |v: f64| y1 - ((v - v_lo) / (v_hi - v_lo)).clamp(0.0, 1.0) * (y1 - y0);

    for &v in yticks {
        let y = py(v);
        line(img, x0, y, x1, y, GRID, 1);
        line(img, x0 - 5.0, y, x0, y, INK, 1);
        let s = label(v);
        text(img, x0 as i64 - 9 - text_width(&s), y as i64 - 5, &s, INK);
    }
    let x_step = nice_step((e_hi - e_lo) / 6.0).max(1.0);
    let mut e = (e_lo / x_step).ceil() * x_step;
    while e <= e_hi {
        let x = px(e);
        line(img, x, y1, x, y1 + 5.0, INK, 1);
        let s = format!("{e:.0}");
        text(img, x as i64 - text_width(&s) / 2, y1 as i64 + 10, &s, INK);
        e += x_step;
    }
    line(img, x0, y0, x0, y1, INK, 1);
    line(img, x0, y1, x1, y1, INK, 1);
    text(img, x0 as i64, 14, title, INK);
    let mid = ((x0 + x1) / 2.0) as i64;
    text(
        img,
        mid - text_width("epoch") / 2,
        y1 as i64 + 32,
        "epoch",
        INK,
    );

    let mut legend_x = x1 as i64 - text_width("train") - text_width("test") - 60;
    for (values, (colour, name)) in series.iter().zip([(TRAIN, "train"), (TEST, "test")]) {
        line(
            img,
            legend_x as f64,
            19.0,
            legend_x as f64 + 16.0,
            19.0,
            colour,
            2,
        );
        text(img, legend_x + 22, 14, name, INK);
        legend_x += text_width(name) + 38;

        let points: Vec<Option<(f64, f64)>> = epochs
            .iter()
            .zip(values)
            .map(|(&e, &v)| v.is_finite().then(|| (px(e), py(v))))
            .collect();
        for pair in points.windows(2) {
            if let (Some(a), Some(b)) = (pair[0], pair[1]) {
                line(img, a.0, a.1, b.0, b.1, colour, 2);
            }
        }
        for &(x, y) in points.iter().flatten() {
            line(img, x - 2.0, y, x + 2.0, y, colour, 4);
        }
    }
}

/// A straight line stamped with `thick`-pixel squares; pixels off the image
/// are skipped so callers need not clip.
fn line(img: &mut RgbImage, xa: f64, ya: f64, xb: f64, yb: f64, colour: Rgb<u8>, thick: i64) {
    let steps = (xb - xa).abs().max((yb - ya).abs()).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (
            (xa + (xb - xa) * t).round() as i64,
            (ya + (yb - ya) * t).round() as i64,
        );
        for dy in 0..thick {
            for dx in 0..thick {
                put(img, x + dx - thick / 2, y + dy - thick / 2, colour);
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Glyphs are 3x5 cells drawn at 2x, with a 2-pixel gap between them.
const SCALE: i64 = 2;
const ADVANCE: i64 = 4 * SCALE;

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * ADVANCE - SCALE
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let gx = x + i as i64 * ADVANCE;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for d in 0..SCALE * SCALE {
                        put(
                            img,
                            gx + col * SCALE + d % SCALE,
                            y + row as i64 * SCALE + d / SCALE,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// Rows of three bits, top to bottom. Letters are small capitals: lowercase
/// shapes with descenders do not fit five rows legibly. Anything else is blank.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        'a' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'c' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'e' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'h' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'i' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'l' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'n' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'o' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'p' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'r' => [0b110, 0b101, 0b110, 0b101, 0b101],
        's' => [0b011, 0b100, 0b010, 0b001, 0b110],
        't' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'u' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        _ => [0; 5],
    }
}

/// `m[true][predicted]` counts. Every label and prediction must lie in
/// `0..classes`.
pub fn confusion_matrix(
    labels: &[i32],
    predicted: &[i32],
    classes: usize,
) -> Result<Vec<Vec<usize>>> {
    if labels.len() != predicted.len() {
        return Err(Error::invalid(
            "confusion_matrix",
            format!(
                "{} labels but {} predictions",
                labels.len(),
                predicted.len()
            ),
        ));
    }
    let mut m = vec![vec![0usize; classes]; classes];
    for (i, (&t, &p)) in labels.iter().zip(predicted).enumerate() {
        let class = |v: i32, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&c| c < classes)
                .ok_or_else(|| {
                    Error::invalid(
                        "confusion_matrix",
                        format!("{what} {v} at index {i} is outside 0..{classes}"),
                    )
                })
        };
        m[class(t, "label")?][class(p, "prediction")?] += 1;
    }
    Ok(m)
}

/// A terminal table: one row per true class, one column per predicted class,
/// then the row total and the class's recall; the last row holds column
/// totals and the overall accuracy.
pub fn format_confusion(m: &[Vec<usize>]) -> String {
    let cols = m.iter().map(Vec::len).max().unwrap_or(0).max(m.len());
    let at = |t: usize, p: usize| m.get(t).and_then(|row| row.get(p)).copied().unwrap_or(0);
    let total: usize = m.iter().flatten().sum();
    let correct: usize = (0..m.len()).map(|c| at(c, c)).sum();
    let w = total.to_string().len().max(cols.to_string().len()).max(5) + 1;
    let percent = |num: usize, den: usize| {
        if den == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * num as f64 / den as f64)
        }
    };

    let mut out = format!("{:>9}", "true\\pred");
    for p in 0..cols {
        out.push_str(&format!("{p:>w$}"));
    }
    out.push_str(&format!("{:>w$}{:>8}\n", "total", "recall"));
    for (t, row) in m.iter().enumerate() {
        out.push_str(&format!("{t:>9}"));
        for p in 0..cols {
            out.push_str(&format!("{:>w$}", at(t, p)));
        }
        let row_total: usize = row.iter().sum();
        out.push_str(&format!(
            "{row_total:>w$}{:>8}\n",
            percent(at(t, t), row_total)
        ));
    }
    out.push_str(&format!("{:>9}", "total"));
    for p in 0..cols {
        let col_total: usize = (0..m.len()).map(|t| at(t, p)).sum();
        out.push_str(&format!("{col_total:>w$}"));
    }
    out.push_str(&format!("{total:>w$}{:>8}\n", percent(correct, total)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn history(n: usize) -> Vec<EpochRecord> {
        (0..n)
            .map(|i| EpochRecord {
                epoch: i + 1,
                lr: 0.1 / (i as f32 + 3.0),
                train_loss: 2.3 / (i as f32 + 1.0) + 1e-7,
                train_accuracy: 1.0 - 0.9 / (i as f32 + 1.3),
                test_loss: 2.4 / (i as f32 + 1.0) + 0.1,
                test_accuracy: 0.95 - 0.85 / (i as f32 + 1.7),
                seconds: 1.234_567_890_123 * (i as f64 + 1.0),
            })
            .collect()
    }

    #[test]
    fn csv_round_trips_exactly() -> TestResult {
        let mut h = history(5);
        h[2].lr = f32::MIN_POSITIVE;
        h[3].seconds = 1e-300;
        let text = metrics_csv(&h);
        assert!(text.starts_with(CSV_HEADER));
        assert_eq!(text.lines().count(), 6);
        assert_eq!(parse_metrics_csv(&text)?, h);
        assert_eq!(parse_metrics_csv(&metrics_csv(&[]))?, vec![]);
        Ok(())
    }

    #[test]
    fn csv_errors_name_the_line() {
        let mut text = metrics_csv(&history(3));
        text.push_str("4,0.1,oops,0.5,1.0,0.5,2.0\n");
        let err = parse_metrics_csv(&text).unwrap_err().to_string();
        assert!(err.contains("line 5") && err.contains("oops"), "{err}");

        let short = format!("{CSV_HEADER}\n1,0.1,2.0\n");
        let err = parse_metrics_csv(&short).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("7 fields"), "{err}");

        let err = parse_metrics_csv("epoch,loss\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_metrics_csv("").is_err());
    }

    #[test]
    fn confusion_counts_a_hand_example() -> TestResult {
        let labels = [0, 0, 1, 1, 1, 2];
        let predicted = [0, 1, 1, 1, 2, 2];
        let m = confusion_matrix(&labels, &predicted, 3)?;
        assert_eq!(m, vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1]]);

        assert!(confusion_matrix(&[0, 1], &[0], 3).is_err());
        assert!(confusion_matrix(&[0, 3], &[0, 0], 3).is_err());
        assert!(confusion_matrix(&[0, 1], &[-1, 0], 3).is_err());
        Ok(())
    }

    #[test]
    fn confusion_table_shows_counts_totals_and_recall() {
        let m = vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1234]];
        let table = format_confusion(&m);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].contains("total") && lines[0].contains("recall"));
        let row1: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row1, ["1", "0", "2", "1", "3", "66.7%"], "{table}");
        let last: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            last,
            ["total", "1", "3", "1235", "1239", "99.8%"],
            "{table}"
        );
        // Columns line up: every row has the same width.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
    }

    fn count(img: &RgbImage, colour: Rgb<u8>) -> usize {
        img.pixels().filter(|&&p| p == colour).count()
    }

    fn render(h: &[EpochRecord]) -> RgbImage {
        image::load_from_memory(&curves_png(h).unwrap()) // ok: test fixture; a failure fails the test
            .unwrap() // ok: test fixture; a failure fails the test
            .to_rgb8()
    }

    #[test]
    fn curves_png_decodes_and_shows_both_series() {
        for n in [1, 2, 40] {
            let h = history(n);
            // The same chart with nothing plottable has only the legend
            // swatches in the series colours; the curves must add to that.
            let blank: Vec<EpochRecord> = h
                .iter()
                .map(|r| EpochRecord {
                    train_loss: f32::NAN,
                    train_accuracy: f32::NAN,
                    test_loss: f32::NAN,
                    test_accuracy: f32::NAN,
                    ..r.clone()
                })
                .collect();
            let (img, legend) = (render(&h), render(&blank));
            assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
            assert!(count(&legend, TRAIN) > 0 && count(&legend, TEST) > 0);
            assert!(count(&img, TRAIN) > count(&legend, TRAIN) + 20, "n={n}");
            assert!(count(&img, TEST) > count(&legend, TEST) + 20, "n={n}");
            assert!(count(&img, INK) > 500, "axes and labels");
        }
    }

    #[test]
    fn curves_png_survives_nan_and_flat_values() {
        let mut h = history(4);
        for r in &mut h {
            r.test_loss = f32::NAN;
            r.train_loss = 0.5;
        }
        h[1].train_loss = f32::INFINITY;
        let img = render(&h);
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(count(&img, TRAIN) > 100);
    }

    #[test]
    fn curves_png_rejects_empty_history() {
        assert!(matches!(
            curves_png(&[]),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert!((nice_step(0.0007) - 0.001).abs() < 1e-12);
    }
}
