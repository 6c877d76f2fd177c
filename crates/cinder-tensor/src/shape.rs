//! Shape rules shared by the ops: broadcasting, axis normalisation.

use cinder_runtime::{contiguous_strides, Error, Result, ViewSpec};

/// NumPy/PyTorch broadcasting of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {a:?} with {b:?}"),
                ))
            }
        };
    }
    Ok(out)
}

/// The view that broadcasts `from` to `to` (which must be a valid broadcast).
pub fn expand_spec(op: &'static str, from: &[usize], to: &[usize]) -> Result<ViewSpec> {
    if to.len() < from.len() {
        return Err(Error::shape(
            op,
            format!("cannot broadcast {from:?} to {to:?}"),
        ));
    }
    let lead = to.len() - from.len();
    let cs = contiguous_strides(from);
    let mut strides = vec![0i64; to.len()];
    for i in 0..from.len() {
        let (f, t) = (from[i], to[lead + i]);
        if f == t {
            strides[lead + i] = if f == 1 { 0 } else { cs[i] };
        } else if f == 1 {
            strides[lead + i] = 0;
        } else {
            return Err(Error::shape(
                op,
                format!("cannot broadcast {from:?} to {to:?}"),
            ));
        }
    }
    Ok(ViewSpec {
        strides,
        offset: 0,
        mask: None,
    })
}

/// A possibly negative axis (`-1` is the last) as an index below `rank`.
pub fn norm_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(Error::invalid(
            op,
            format!("axis {axis} out of range for a tensor of rank {rank}"),
        ));
    }
    Ok(a as usize)
}

pub fn norm_axes(op: &'static str, axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(op, a, rank)?;
        if out.contains(&a) {
            return Err(Error::invalid(op, format!("axis {a} given twice")));
        }
        out.push(a);
    }
    out.sort_unstable();
    Ok(out)
}
