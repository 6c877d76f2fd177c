//! Box operations with torchvision's semantics (`torchvision.ops`). A box is
//! a row `[x0, y0, x1, y1]` with `x0 <= x1` and `y0 <= y1` (`xyxy`).
//!
//! The measures ([`Tensor::box_area`], [`Tensor::box_iou`],
//! [`Tensor::generalized_box_iou`], [`Tensor::generalized_box_iou_loss`]) are
//! compositions of tensor ops, so they differentiate like any other op and
//! fuse into the step around them. Non-maximum suppression ([`nms`],
//! [`batched_nms`]) is a sequential greedy choice over a few candidates, done
//! on the host after a model's decoding has cut the candidates down.

use cinder_runtime::{Error, Result};

use crate::loss::Reduction;
use crate::ops::float_only;
use crate::tensor::Tensor;

/// The four coordinates of `[..., 4]` boxes, each `[...]`.
fn coordinates(op: &'static str, boxes: &Tensor) -> Result<[Tensor; 4]> {
    float_only(op, boxes)?;
    if boxes.shape().last() != Some(&4) {
        return Err(Error::shape(
            op,
            format!(
                "boxes must be [..., 4] rows of [x0, y0, x1, y1], got {:?}",
                boxes.shape()
            ),
        ));
    }
    let column = |k: usize| boxes.narrow(-1, k, 1)?.squeeze(-1);
    Ok([column(0)?, column(1)?, column(2)?, column(3)?])
}

/// The coordinates of `[N, 4]` boxes as `[N, 1]` columns (`along_rows`) or
/// `[1, N]` rows, so that two sets broadcast to all their pairs.
fn pair_coordinates(op: &'static str, boxes: &Tensor, along_rows: bool) -> Result<[Tensor; 4]> {
    if boxes.dims() != 2 {
        return Err(Error::shape(
            op,
            format!("boxes must be [N, 4], got {:?}", boxes.shape()),
        ));
    }
    let axis = if along_rows { 1 } else { 0 };
    let [x0, y0, x1, y1] = coordinates(op, boxes)?;
    Ok([
        x0.unsqueeze(axis)?,
        y0.unsqueeze(axis)?,
        x1.unsqueeze(axis)?,
        y1.unsqueeze(axis)?,
    ])
}

/// `(x1 - x0) * (y1 - y0)`.
fn area(c: &[Tensor; 4]) -> Result<Tensor> {
    c[2].sub(&c[0])?.mul(&c[3].sub(&c[1])?)
}

/// The intersection's and the union's areas of boxes `p` and `q`, given as
/// coordinates that broadcast together (all pairs, or matching boxes).
fn overlap(p: &[Tensor; 4], q: &[Tensor; 4]) -> Result<(Tensor, Tensor)> {
    let side = |lo: usize, hi: usize| -> Result<Tensor> {
        p[hi]
            .minimum(&q[hi])?
            .sub(&p[lo].maximum(&q[lo])?)?
            .maximum_scalar(0.0)
    };
    let inter = side(0, 2)?.mul(&side(1, 3)?)?;
    let union = area(p)?.add(&area(q)?)?.sub(&inter)?;
    Ok((inter, union))
}

/// The area of the smallest box enclosing `p` and `q`.
fn enclosing(p: &[Tensor; 4], q: &[Tensor; 4]) -> Result<Tensor> {
    let side = |lo: usize, hi: usize| -> Result<Tensor> {
        p[hi].maximum(&q[hi])?.sub(&p[lo].minimum(&q[lo])?)
    };
    side(0, 2)?.mul(&side(1, 3)?)
}

/// The intersection's and the union's areas of every pair of `[N, 4]` and
/// `[M, 4]` boxes, each `[N, M]`, and the pairs' coordinates.
fn inter_union(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
) -> Result<(Tensor, Tensor, [Tensor; 4], [Tensor; 4])> {
    let p = pair_coordinates(op, a, true)?;
    let q = pair_coordinates(op, b, false)?;
    let (inter, union) = overlap(&p, &q)?;
    Ok((inter, union, p, q))
}

impl Tensor {
    /// The area of each of `[..., 4]` boxes, `[...]` (`torchvision.ops.box_area`).
    pub fn box_area(&self) -> Result<Tensor> {
        area(&coordinates("box_area", self)?)
    }

    /// The intersection over union of every pair of `[N, 4]` boxes (self)
    /// and `[M, 4]` boxes, `[N, M]` (`torchvision.ops.box_iou`). Two boxes
    /// of zero area give NaN, as in torchvision.
    pub fn box_iou(&self, other: &Tensor) -> Result<Tensor> {
        let (inter, union, _, _) = inter_union("box_iou", self, other)?;
        inter.div(&union)
    }

    /// The generalized IoU of every pair, `[N, M]`
    /// (`torchvision.ops.generalized_box_iou`): the IoU less the share of the
    /// pair's smallest enclosing box that their union leaves empty, in
    /// [-1, 1].
    pub fn generalized_box_iou(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "generalized_box_iou";
        let (inter, union, p, q) = inter_union(OP, self, other)?;
        let iou = inter.div(&union)?;
        let enclosing = enclosing(&p, &q)?;
        iou.sub(&enclosing.sub(&union)?.div(&enclosing)?)
    }

    /// `1 - GIoU` of matching boxes: self and `target` are both `[..., 4]`,
    /// box `i` against box `i` (`torchvision.ops.generalized_box_iou_loss`,
    /// with its `eps` guarding both divisions). With [`Reduction::Mean`] an
    /// empty set of boxes gives 0, as torchvision's does.
    pub fn generalized_box_iou_loss(
        &self,
        target: &Tensor,
        reduction: Reduction,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "generalized_box_iou_loss";
        if self.shape() != target.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "boxes {:?} and target boxes {:?} must have the same shape",
                    self.shape(),
                    target.shape()
                ),
            ));
        }
        let p = coordinates(OP, self)?;
        let q = coordinates(OP, target)?;
        let (inter, union) = overlap(&p, &q)?;
        let iou = inter.div(&union.add_scalar(eps)?)?;
        let enclosing = enclosing(&p, &q)?;
        let empty_share = enclosing.sub(&union)?.div(&enclosing.add_scalar(eps)?)?;
        let loss = iou.sub(&empty_share)?.rsub_scalar(1.0)?;
        if reduction == Reduction::Mean && loss.numel() == 0 {
            return loss.sum_all();
        }
        loss.reduce_loss(reduction)
    }
}

/// Checks `boxes` (`[N, 4]` values, flat) and `scores` (`N`) and returns N.
fn check_candidates(op: &'static str, boxes: &[f32], scores: &[f32]) -> Result<usize> {
    if boxes.len() != 4 * scores.len() {
        return Err(Error::shape(
            op,
            format!(
                "{} box values are not 4 per score for {} scores",
                boxes.len(),
                scores.len()
            ),
        ));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::invalid(op, format!("the score of box {i} is NaN")));
    }
    Ok(scores.len())
}

fn check_threshold(op: &'static str, iou_threshold: f32) -> Result<()> {
    if iou_threshold.is_nan() {
        return Err(Error::invalid(op, "the IoU threshold is NaN"));
    }
    Ok(())
}

/// Candidates by decreasing score; equal scores keep their order.
fn by_decreasing_score(scores: &[f32], candidates: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut order: Vec<usize> = candidates.collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    order
}

/// Greedy suppression over `order` (already by decreasing score): a box is
/// kept unless its IoU with a kept box is above the threshold.
fn suppress(boxes: &[f32], order: &[usize], iou_threshold: f32) -> Vec<usize> {
    let at = |i: usize| {
        [
            boxes[4 * i],
            boxes[4 * i + 1],
            boxes[4 * i + 2],
            boxes[4 * i + 3],
        ]
    };
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut kept: Vec<usize> = Vec::new();
    for &i in order {
        let b = at(i);
        let overlapped = kept.iter().any(|&k| {
            let a = at(k);
            let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = w * h;
            // A NaN IoU (two empty boxes) suppresses nothing, as in torchvision.
            inter / (area(a) + area(b) - inter) > iou_threshold
        });
        if !overlapped {
            kept.push(i);
        }
    }
    kept
}

/// Non-maximum suppression (`torchvision.ops.nms`) of `N` boxes, given as
/// `N * 4` values `[x0, y0, x1, y1, ...]`, with `N` scores: visits the boxes
/// by decreasing score and drops every box whose IoU with an already kept one
/// is above `iou_threshold`. Returns the kept indices by decreasing score
/// (equal scores in index order).
pub fn nms(boxes: &[f32], scores: &[f32], iou_threshold: f32) -> Result<Vec<usize>> {
    const OP: &str = "nms";
    let n = check_candidates(OP, boxes, scores)?;
    check_threshold(OP, iou_threshold)?;
    let order = by_decreasing_score(scores, 0..n);
    Ok(suppress(boxes, &order, iou_threshold))
}

/// [`nms`] within each group (`torchvision.ops.batched_nms`): boxes of
/// different `groups` (classes, say, or images) never suppress each other.
/// Returns the kept indices of all groups by decreasing score.
pub fn batched_nms(
    boxes: &[f32],
    scores: &[f32],
    groups: &[i64],
    iou_threshold: f32,
) -> Result<Vec<usize>> {
    const OP: &str = "batched_nms";
    let n = check_candidates(OP, boxes, scores)?;
    check_threshold(OP, iou_threshold)?;
    if groups.len() != n {
        return Err(Error::shape(
            OP,
            format!("{} group ids for {n} boxes", groups.len()),
        ));
    }
    let mut ids: Vec<i64> = groups.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut kept: Vec<usize> = Vec::new();
    for id in ids {
        let order = by_decreasing_score(scores, (0..n).filter(|&i| groups[i] == id));
        kept.extend(suppress(boxes, &order, iou_threshold));
    }
    Ok(by_decreasing_score(scores, kept.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_the_best_of_each_cluster_by_decreasing_score() -> Result<()> {
        // Two overlapping clusters and a lone box.
        let boxes = [
            0.0, 0.0, 10.0, 10.0, // 0
            1.0, 1.0, 11.0, 11.0, // 1: IoU 81/119 = 0.68 with 0
            50.0, 50.0, 60.0, 60.0, // 2
            0.0, 0.0, 10.0, 5.0, // 3: IoU 0.5 with 0
            52.0, 50.0, 62.0, 60.0, // 4: IoU 80/120 with 2
        ];
        let scores = [0.9, 0.95, 0.3, 0.8, 0.6];
        assert_eq!(nms(&boxes, &scores, 0.5)?, [1, 3, 4]);
        assert_eq!(nms(&boxes, &scores, 0.7)?, [1, 0, 3, 4, 2]);
        // The IoU must be above the threshold: 0.5 exactly does not suppress.
        let half = [0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 5.0];
        assert_eq!(nms(&half, &[0.9, 0.8], 0.5)?, [0, 1]);
        assert_eq!(nms(&boxes, &scores, 0.66)?, [1, 3, 4]);
        assert!(nms(&[], &[], 0.5)?.is_empty());
        assert!(nms(&boxes[..16], &scores, 0.5).is_err());
        assert!(nms(&boxes, &[0.9, f32::NAN, 0.3, 0.8, 0.6], 0.5).is_err());
        // Ties keep index order.
        assert_eq!(nms(&boxes, &[0.5; 5], 0.99)?, [0, 1, 2, 3, 4]);
        Ok(())
    }

    #[test]
    fn batched_nms_suppresses_within_groups_only() -> Result<()> {
        let boxes = [
            0.0, 0.0, 10.0, 10.0, 1.0, 1.0, 11.0, 11.0, 0.0, 0.0, 10.0, 10.0,
        ];
        let scores = [0.9, 0.95, 0.5];
        assert_eq!(batched_nms(&boxes, &scores, &[0, 0, 0], 0.5)?, [1]);
        assert_eq!(batched_nms(&boxes, &scores, &[3, 7, 3], 0.5)?, [1, 0]);
        assert_eq!(batched_nms(&boxes, &scores, &[1, 2, 3], 0.5)?, [1, 0, 2]);
        assert!(batched_nms(&boxes, &scores, &[1, 2], 0.5).is_err());
        Ok(())
    }
}
