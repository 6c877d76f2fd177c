//! Average precision of detections against true boxes, per class, at one
//! IoU threshold (mAP@0.5) and averaged over COCO's ten thresholds
//! 0.5, 0.55, ..., 0.95 (mAP@0.5:0.95).
//!
//! COCO's rules: detections of a class are visited by decreasing score over
//! all images; each is a true positive when an unmatched true box of its
//! class in its image overlaps it at or above the threshold (the best such
//! box is matched), otherwise a false positive. The precision curve is made
//! non-increasing and read at 101 recall points. IoU is torchvision's
//! (continuous coordinates, no `+ 1`). A class with no true box in any
//! image has no AP and is left out of the means, as COCO does.

use cinder_tensor::{Error, Result};

/// One predicted box: `[x0, y0, x1, y1]` in pixels, its class and score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub class: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// A true box and its class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrueBox {
    pub class: usize,
    pub bbox: [f32; 4],
}

/// COCO's IoU thresholds, 0.5 to 0.95 by 0.05.
pub const COCO_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// Per-class AP at IoU 0.5 and over [`COCO_THRESHOLDS`]; `NaN` for classes
/// without true boxes.
#[derive(Clone, Debug, PartialEq)]
pub struct ApReport {
    pub ap50: Vec<f64>,
    pub ap: Vec<f64>,
}

impl ApReport {
    /// mAP@0.5: the mean of [`ApReport::ap50`] over classes with true boxes.
    pub fn map50(&self) -> f64 {
        mean_present(&self.ap50)
    }

    /// mAP@0.5:0.95 (COCO's AP).
    pub fn map(&self) -> f64 {
        mean_present(&self.ap)
    }
}

fn mean_present(values: &[f64]) -> f64 {
    let present: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if present.is_empty() {
        return f64::NAN;
    }
    present.iter().sum::<f64>() / present.len() as f64
}

/// IoU of two `xyxy` boxes; 0 when both are empty.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The report for `detections[i]` against `truths[i]`, image by image.
pub fn average_precision(
    detections: &[Vec<Detection>],
    truths: &[Vec<TrueBox>],
    classes: usize,
) -> Result<ApReport> {
    const OP: &str = "average_precision";
    if detections.len() != truths.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} images of detections against {} images of true boxes",
                detections.len(),
                truths.len()
            ),
        ));
    }
    let out_of_range = detections
        .iter()
        .flatten()
        .map(|d| d.class)
        .chain(truths.iter().flatten().map(|t| t.class))
        .find(|&c| c >= classes);
    if let Some(c) = out_of_range {
        return Err(Error::invalid(
            OP,
            format!("class {c} is not below {classes}"),
        ));
    }
    let mut report = ApReport {
        ap50: vec![f64::NAN; classes],
        ap: vec![f64::NAN; classes],
    };
    for class in 0..classes {
        let positives = truths.iter().flatten().filter(|t| t.class == class).count();
        if positives == 0 {
            continue;
        }
        let mut ranked: Vec<(usize, &Detection)> = detections
            .iter()
            .enumerate()
            .flat_map(|(image, ds)| ds.iter().map(move |d| (image, d)))
            .filter(|(_, d)| d.class == class)
            .collect();
        // Stable: equal scores keep image order, as COCO's mergesort does.
        ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
        let per_threshold: Vec<f64> = COCO_THRESHOLDS
            .iter()
            .map(|&t| class_ap(&ranked, truths, class, positives, t))
            .collect();
        report.ap50[class] = per_threshold[0];
        report.ap[class] = per_threshold.iter().sum::<f64>() / per_threshold.len() as f64;
    }
    Ok(report)
}

fn class_ap(
    ranked: &[(usize, &Detection)],
    truths: &[Vec<TrueBox>],
    class: usize,
    positives: usize,
    threshold: f32,
) -> f64 {
    let mut matched: Vec<Vec<bool>> = truths.iter().map(|t| vec![false; t.len()]).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut curve: Vec<(f64, f64)> = Vec::with_capacity(ranked.len());
    for &(image, det) in ranked {
        let best = truths[image]
            .iter()
            .enumerate()
            .filter(|(j, t)| t.class == class && !matched[image][*j])
            .map(|(j, t)| (j, iou(det.bbox, t.bbox)))
            .filter(|&(_, o)| o >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((j, _)) => {
                matched[image][j] = true;
                tp += 1;
            }
            None => fp += 1,
        }
        curve.push((tp as f64 / positives as f64, tp as f64 / (tp + fp) as f64));
    }
    // Precision made non-increasing in recall, then read at 101 points.
    for i in (0..curve.len().saturating_sub(1)).rev() {
        curve[i].1 = curve[i].1.max(curve[i + 1].1);
    }
    let mut sum = 0.0;
    for step in 0..=100 {
        // pycocotools' points, np.linspace(0, 1, 101): step * 0.01, which
        // lands just above some decimals (70 * 0.01 = 0.7000000000000001),
        // compared exactly as its searchsorted does.
        let r = step as f64 * 0.01;
        if let Some(&(_, p)) = curve.iter().find(|(recall, _)| *recall >= r) {
            sum += p;
        }
    }
    sum / 101.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection { class, score, bbox }
    }

    fn truth(class: usize, bbox: [f32; 4]) -> TrueBox {
        TrueBox { class, bbox }
    }

    #[test]
    fn perfect_detections_score_one() -> Result<()> {
        let truths = vec![
            vec![
                truth(0, [0.0, 0.0, 10.0, 10.0]),
                truth(1, [20.0, 20.0, 30.0, 32.0]),
            ],
            vec![truth(0, [5.0, 5.0, 9.0, 9.0])],
        ];
        let dets: Vec<Vec<Detection>> = truths
            .iter()
            .map(|ts| ts.iter().map(|t| det(t.class, 0.9, t.bbox)).collect())
            .collect();
        let r = average_precision(&dets, &truths, 3)?;
        assert_eq!(r.ap50[..2], [1.0, 1.0]);
        assert!(r.ap50[2].is_nan(), "no truth of class 2: no AP");
        assert_eq!((r.map50(), r.map()), (1.0, 1.0));
        Ok(())
    }

    #[test]
    fn ranking_duplicates_and_thresholds() -> Result<()> {
        // Two true boxes. Detections by score: a hit, a duplicate of it (a
        // false positive), a miss, then the second box.
        let truths = vec![vec![
            truth(0, [0.0, 0.0, 10.0, 10.0]),
            truth(0, [50.0, 50.0, 60.0, 60.0]),
        ]];
        let dets = vec![vec![
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.7, [30.0, 30.0, 40.0, 40.0]),
            det(0, 0.6, [50.0, 50.0, 60.0, 60.0]),
        ]];
        let r = average_precision(&dets, &truths, 1)?;
        // Recall 0.5 at precision 1 (points 0..=50), recall 1 at precision
        // 2/4 (points 51..=100).
        let want = (51.0 * 1.0 + 50.0 * 0.5) / 101.0;
        assert!((r.ap50[0] - want).abs() < 1e-12, "{} vs {want}", r.ap50[0]);
        // Shifted by 2 pixels ([2, 0, 12, 10] on [0, 0, 10, 10]: IoU 80/120),
        // a box counts at thresholds 0.5 to 0.65 and not above.
        let truths = vec![vec![truth(0, [0.0, 0.0, 10.0, 10.0])]];
        let dets = vec![vec![det(0, 0.5, [2.0, 0.0, 12.0, 10.0])]];
        let r = average_precision(&dets, &truths, 1)?;
        assert_eq!(r.ap50[0], 1.0);
        assert!((r.ap[0] - 0.4).abs() < 1e-12, "{}", r.ap[0]);
        Ok(())
    }

    #[test]
    fn wrong_class_and_missing_detections() -> Result<()> {
        let truths = vec![vec![truth(1, [0.0, 0.0, 10.0, 10.0])], vec![]];
        let dets = vec![vec![det(2, 0.9, [0.0, 0.0, 10.0, 10.0])], vec![]];
        let r = average_precision(&dets, &truths, 3)?;
        assert_eq!(r.ap50[1], 0.0);
        assert!(r.ap50[2].is_nan());
        assert!(average_precision(&dets, &truths[..1], 3).is_err());
        assert!(average_precision(&dets, &truths, 2).is_err());
        Ok(())
    }
}
