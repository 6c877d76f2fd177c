//! `curves.png`: a run's losses (log scale where they are all positive) and
//! its other metrics against epoch, one line per series with a legend, drawn
//! with `plotters` in an embedded font (DejaVu Sans, see
//! `assets/FONT-LICENSE.md`).

use std::sync::OnceLock;

use cinder_tensor::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::history::History;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;

/// Registers the embedded font with plotters, once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "curves.png",
            "the embedded font did not load",
        ))
    }
}

/// Colours of the series, in order (Tableau's ten).
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A PNG of the history: losses on the left, the other metrics on the
/// right (learning rates are left out: `metrics.csv` has them), under a
/// title naming the run. Non-finite values are left out of the lines.
pub fn curves_png(history: &History, title: &str) -> Result<Vec<u8>> {
    if history.rows.is_empty() {
        return Err(Error::invalid("curves.png", "no epochs to plot"));
    }
    font()?;
    let columns = history.columns();
    let plotted: Vec<&String> = columns.iter().filter(|c| !c.starts_with("lr")).collect();
    let losses: Vec<&String> = plotted
        .iter()
        .copied()
        .filter(|c| c.contains("loss"))
        .collect();
    let others: Vec<&String> = plotted
        .iter()
        .copied()
        .filter(|c| !c.contains("loss"))
        .collect();
    let last_epoch = history.rows.iter().map(|r| r.epoch).max().unwrap_or(1);
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| Error::invalid("curves.png", e.to_string());
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| draw(&e))?;
        let panels = root.split_evenly((1, 2));
        let mut colour = 0;
        for (panel, (names, what)) in panels.iter().zip([(&losses, "loss"), (&others, "metrics")]) {
            let series: Vec<(String, Vec<(usize, f64)>)> = names
                .iter()
                .map(|n| (n.to_string(), history.series(n)))
                .filter(|(_, s)| !s.is_empty())
                .collect();
            let (lo, hi) = series
                .iter()
                .flat_map(|(_, s)| s.iter().map(|&(_, v)| v))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            // NaN values never move lo/hi, so no finite value leaves lo > hi.
            if series.is_empty() || lo > hi {
                continue;
            }
            let x_range = 1.0..(last_epoch.max(2) as f64);
            let log = what == "loss" && lo > 0.0;
            let mut builder = ChartBuilder::on(panel);
            builder
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .caption(what, ("sans-serif", 16));
            // A flat series still needs a y range.
            let span = (hi - lo).max(hi.abs().max(1e-6) * 1e-3);
            if log {
                let mut chart = builder
                    .build_cartesian_2d(x_range, ((lo / 1.5)..(hi * 1.5)).log_scale())
                    .map_err(|e| draw(&e))?;
                chart
                    .configure_mesh()
                    .x_desc("epoch")
                    .x_labels(last_epoch.clamp(2, 12))
                    .x_label_formatter(&|x| format!("{x:.0}"))
                    .y_desc(format!("{what} (log scale)"))
                    .y_label_formatter(&|y| tick(*y))
                    // A log axis's minor lines crowd into a grey band.
                    .light_line_style(WHITE.mix(0.0))
                    .label_style(("sans-serif", 13))
                    .draw()
                    .map_err(|e| draw(&e))?;
                draw_lines(&mut chart, &series, &mut colour)?;
            } else {
                let mut chart = builder
                    .build_cartesian_2d(x_range, (lo - 0.05 * span)..(hi + 0.05 * span))
                    .map_err(|e| draw(&e))?;
                chart
                    .configure_mesh()
                    .x_desc("epoch")
                    .x_labels(last_epoch.clamp(2, 12))
                    .x_label_formatter(&|x| format!("{x:.0}"))
                    .y_desc(what)
                    .label_style(("sans-serif", 13))
                    .draw()
                    .map_err(|e| draw(&e))?;
                draw_lines(&mut chart, &series, &mut colour)?;
            }
        }
        root.present().map_err(|e| draw(&e))?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&buffer, WIDTH, HEIGHT, ExtendedColorType::Rgb8)
        .map_err(|e| Error::invalid("curves.png", e.to_string()))?;
    Ok(png)
}

/// A tick label with three significant digits at most and no float noise
/// (`0.7`, not `0.7000000001`); scientific far from 1.
fn tick(y: f64) -> String {
    if y == 0.0 || !y.is_finite() {
        return format!("{y}");
    }
    let magnitude = y.abs().log10().floor();
    if !(-3.0..5.0).contains(&magnitude) {
        return format!("{y:.0e}");
    }
    let decimals = (2.0 - magnitude).max(0.0) as usize;
    let text = format!("{y:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Each series as a line with its points marked, coloured in turn, and the
/// legend.
fn draw_lines<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[(String, Vec<(usize, f64)>)],
    colour: &mut usize,
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let draw = |e: &dyn std::fmt::Display| Error::invalid("curves.png", e.to_string());
    for (name, points) in series {
        let c = COLOURS[*colour % COLOURS.len()];
        *colour += 1;
        let pts: Vec<(f64, f64)> = points.iter().map(|&(e, v)| (e as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| draw(&e))?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .border_style(BLACK.mix(0.4))
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::curves_png;
    use crate::history::{EpochRow, History};

    fn history(epochs: usize) -> History {
        History {
            rows: (1..=epochs)
                .map(|e| EpochRow {
                    epoch: e,
                    values: vec![
                        ("lr".into(), 1e-3),
                        ("train_loss".into(), 2.0 / e as f64),
                        ("test_loss".into(), 2.2 / e as f64),
                        ("test_accuracy".into(), 1.0 - 0.5 / e as f64),
                    ],
                })
                .collect(),
        }
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(super::tick(0.7000000001), "0.7");
        assert_eq!(super::tick(0.30000000004), "0.3");
        assert_eq!(super::tick(0.125), "0.125");
        assert_eq!(super::tick(2.0), "2");
        assert_eq!(super::tick(15.5), "15.5");
        assert_eq!(super::tick(0.0001), "1e-4");
    }

    #[test]
    fn curves_draw_lines_in_their_colours_and_repeat_exactly() {
        let png = curves_png(&history(6), "test run").unwrap(); // ok: a test; a panic is its failure
        let again = curves_png(&history(6), "test run").unwrap(); // ok: a test; a panic is its failure
        assert_eq!(png, again, "the same history draws the same bytes");
        let img = image::load_from_memory(&png).unwrap().to_rgb8(); // ok: a test; a panic is its failure
        assert_eq!(img.dimensions(), (1200, 480));
        // Each of the three series' colours is on the canvas, and text (dark
        // pixels) is too.
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count([31, 119, 180]) > 100, "train loss line");
        assert!(count([255, 127, 14]) > 100, "test loss line");
        assert!(count([44, 160, 44]) > 100, "test accuracy line");
        assert!(img.pixels().filter(|p| p.0.iter().all(|&v| v < 60)).count() > 500);
    }

    #[test]
    fn one_epoch_and_non_finite_values_still_draw() {
        let mut h = history(1);
        h.rows[0].values.push(("train_other_loss".into(), f64::NAN));
        assert!(curves_png(&h, "one epoch").is_ok());
        assert!(curves_png(&History::default(), "none").is_err());
    }
}
