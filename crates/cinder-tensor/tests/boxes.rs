//! Box measures (`boxes.rs`) against f64 references written from
//! torchvision's formulas, on awkward pairs (disjoint, touching, nested,
//! identical, degenerate), and their gradients by finite differences.

mod common;

use cinder_tensor::{Reduction, Tensor};
use common::*;

// ---- f64 references ------------------------------------------------------------------------

fn row(a: &Arr, i: usize) -> [f64; 4] {
    [
        a.data[4 * i],
        a.data[4 * i + 1],
        a.data[4 * i + 2],
        a.data[4 * i + 3],
    ]
}

fn area_ref(b: [f64; 4]) -> f64 {
    (b[2] - b[0]) * (b[3] - b[1])
}

fn inter_ref(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

fn enclosing_ref(a: [f64; 4], b: [f64; 4]) -> f64 {
    (a[2].max(b[2]) - a[0].min(b[0])) * (a[3].max(b[3]) - a[1].min(b[1]))
}

/// torchvision's `box_iou` (`giou: false`) or `generalized_box_iou` of all pairs.
fn pairwise_ref(a: &Arr, b: &Arr, giou: bool) -> Arr {
    let (n, m) = (a.shape[0], b.shape[0]);
    let mut out = Vec::with_capacity(n * m);
    for i in 0..n {
        for j in 0..m {
            let (p, q) = (row(a, i), row(b, j));
            let inter = inter_ref(p, q);
            let union = area_ref(p) + area_ref(q) - inter;
            let iou = inter / union;
            out.push(if giou {
                let c = enclosing_ref(p, q);
                iou - (c - union) / c
            } else {
                iou
            });
        }
    }
    Arr::new(&[n, m], out)
}

/// torchvision's `generalized_box_iou_loss` per matching pair, unreduced.
fn giou_loss_ref(a: &Arr, b: &Arr, eps: f64) -> Arr {
    let n = a.numel() / 4;
    let out = (0..n)
        .map(|i| {
            let (p, q) = (row(a, i), row(b, i));
            let inter = inter_ref(p, q);
            let union = area_ref(p) + area_ref(q) - inter;
            let c = enclosing_ref(p, q);
            1.0 - (inter / (union + eps) - (c - union) / (c + eps))
        })
        .collect();
    Arr::new(&a.shape[..a.rank() - 1], out)
}

// ---- inputs ------------------------------------------------------------------------------

/// Hand-picked boxes: nested, identical, touching at an edge, disjoint,
/// partly overlapping, thin.
const AWKWARD_A: [f32; 28] = [
    0.0, 0.0, 10.0, 10.0, //
    2.0, 2.0, 4.0, 4.0, //
    10.0, 0.0, 20.0, 10.0, //
    30.0, 30.0, 31.0, 45.0, //
    5.0, 5.0, 15.0, 15.0, //
    -3.0, 1.0, 2.5, 7.0, //
    0.0, 0.0, 10.0, 10.0, //
];
const AWKWARD_B: [f32; 20] = [
    0.0, 0.0, 10.0, 10.0, //
    1.0, 1.0, 9.0, 3.0, //
    10.0, 10.0, 12.0, 12.0, //
    -5.0, -5.0, 0.5, 0.5, //
    29.0, 29.0, 40.0, 32.0, //
];

/// `n` random boxes whose edges are more than 0.1 from every parallel edge
/// of the boxes in `apart` and of each other, so that central differences
/// with a step of 0.01 never cross a kink of a min, a max or a clamp.
fn random_boxes(rng: &mut Rng, n: usize, apart: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(4 * n);
    while out.len() < 4 * n {
        let v = rng.vec(4, 0.0, 8.0);
        let size = rng.vec(2, 1.0, 6.0);
        let b = [v[0], v[1], v[0] + size[0], v[1] + size[1]];
        let parallel =
            |a: &[f32]| (0..4).all(|k| (0..2).all(|e| (a[k] - b[k % 2 + 2 * e]).abs() > 0.1));
        if apart.chunks_exact(4).all(parallel) && out.chunks_exact(4).all(parallel) {
            out.extend_from_slice(&b);
        }
    }
    out
}

// ---- forward -----------------------------------------------------------------------------

#[test]
fn box_iou_and_giou_match_torchvision_on_awkward_pairs() {
    let a = tensor(&AWKWARD_A, &[7, 4]);
    let b = tensor(&AWKWARD_B, &[5, 4]);
    let (ra, rb) = (
        Arr::from_f32(&AWKWARD_A, &[7, 4]),
        Arr::from_f32(&AWKWARD_B, &[5, 4]),
    );
    let iou = ok("box_iou", a.box_iou(&b));
    assert_eq!(iou.shape(), [7, 5]);
    let got = read_f32("box_iou", &iou);
    assert_close(&got, &pairwise_ref(&ra, &rb, false).data, ATOL, RTOL);
    // Identical boxes: 1; touching at an edge and disjoint: 0.
    assert_eq!(got[0], 1.0);
    assert_eq!(got[2 * 5 + 2], 0.0);
    assert_eq!(got[3 * 5], 0.0);
    let giou = read_f32("giou", &ok("giou", a.generalized_box_iou(&b)));
    assert_close(&giou, &pairwise_ref(&ra, &rb, true).data, ATOL, RTOL);
    assert!(giou.iter().all(|g| (-1.0..=1.0).contains(g)), "{giou:?}");
    let areas = read_f32("box_area", &ok("box_area", a.box_area()));
    assert_eq!(areas, [100.0, 4.0, 100.0, 15.0, 100.0, 33.0, 100.0]);
    // torchvision: a degenerate pair has no union and an IoU of NaN.
    let point = tensor(&[1.0, 1.0, 1.0, 1.0], &[1, 4]);
    assert!(read_f32("nan", &ok("iou", point.box_iou(&point)))[0].is_nan());
}

#[test]
fn giou_loss_matches_torchvision_in_every_reduction() {
    let a = tensor(&AWKWARD_A[..20], &[5, 4]);
    let b = tensor(&AWKWARD_B, &[5, 4]);
    let (ra, rb) = (
        Arr::from_f32(&AWKWARD_A[..20], &[5, 4]),
        Arr::from_f32(&AWKWARD_B, &[5, 4]),
    );
    let want = giou_loss_ref(&ra, &rb, 1e-7);
    let none = read_f32(
        "none",
        &ok(
            "none",
            a.generalized_box_iou_loss(&b, Reduction::None, 1e-7),
        ),
    );
    assert_close(&none, &want.data, ATOL, RTOL);
    let sum: f64 = want.data.iter().sum();
    let got = |r| {
        read_f32(
            "reduced",
            &ok("reduced", a.generalized_box_iou_loss(&b, r, 1e-7)),
        )
    };
    assert_close(&got(Reduction::Sum), &[sum], ATOL, RTOL);
    assert_close(&got(Reduction::Mean), &[sum / 5.0], ATOL, RTOL);
    // Leading dims are kept, and an empty set's mean is 0 as in torchvision.
    let a3 = ok("reshape", a.reshape(&[1, 5, 4]));
    let b3 = ok("reshape", b.reshape(&[1, 5, 4]));
    let per = ok(
        "3d",
        a3.generalized_box_iou_loss(&b3, Reduction::None, 1e-7),
    );
    assert_eq!(per.shape(), [1, 5]);
    let empty = tensor(&[], &[0, 4]);
    let mean = ok(
        "empty",
        empty.generalized_box_iou_loss(&empty, Reduction::Mean, 1e-7),
    );
    assert_eq!(read_f32("empty", &mean), [0.0]);
}

#[test]
fn box_ops_refuse_bad_shapes() {
    let msg = |r: cinder_tensor::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let three = tensor(&[0.0; 6], &[2, 3]);
    let good = tensor(&[0.0, 0.0, 1.0, 1.0], &[1, 4]);
    let m = msg(three.box_iou(&good));
    assert!(m.contains("box_iou") && m.contains("[2, 3]"), "{m}");
    let flat = tensor(&[0.0, 0.0, 1.0, 1.0], &[4]);
    assert!(msg(flat.generalized_box_iou(&good)).contains("[N, 4]"));
    let two = tensor(&[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0], &[2, 4]);
    let m = msg(good.generalized_box_iou_loss(&two, Reduction::Mean, 1e-7));
    assert!(m.contains("[1, 4]") && m.contains("[2, 4]"), "{m}");
    let ints = tensor_i32(&[0, 0, 1, 1], &[1, 4]);
    assert!(ints.box_area().is_err());
}

// ---- gradients ---------------------------------------------------------------------------

#[test]
fn giou_loss_gradients_match_finite_differences() {
    let mut rng = Rng::named("giou_loss grads");
    let target = random_boxes(&mut rng, 6, &[]);
    let pred = random_boxes(&mut rng, 6, &target);
    let t = tensor(&target, &[6, 4]);
    let rt = Arr::from_f32(&target, &[6, 4]);
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        check_grad_ref(
            &format!("generalized_box_iou_loss {reduction:?}"),
            &[input(pred.clone(), &[6, 4])],
            |x| x[0].generalized_box_iou_loss(&t, reduction, 1e-7),
            |a| {
                let per = giou_loss_ref(&a[0], &rt, 1e-7);
                match reduction {
                    Reduction::None => per,
                    Reduction::Sum => Arr::new(&[], vec![per.data.iter().sum()]),
                    Reduction::Mean => Arr::new(&[], vec![per.data.iter().sum::<f64>() / 6.0]),
                }
            },
        );
    }
}

#[test]
fn pairwise_iou_gradients_match_finite_differences() {
    let mut rng = Rng::named("pairwise iou grads");
    let a = random_boxes(&mut rng, 3, &[]);
    let b = random_boxes(&mut rng, 4, &a);
    for giou in [false, true] {
        check_grad_ref(
            &format!("pairwise giou={giou}"),
            &[input(a.clone(), &[3, 4]), input(b.clone(), &[4, 4])],
            |x| {
                if giou {
                    x[0].generalized_box_iou(&x[1])
                } else {
                    x[0].box_iou(&x[1])
                }
            },
            |r| pairwise_ref(&r[0], &r[1], giou),
        );
    }
}
