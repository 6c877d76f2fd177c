use cinder_runtime::*;

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn smoke() {
    let dev = Device::new().unwrap();
    eprintln!("{dev:?}");
    let a = Node::from_bytes(&dev, &[2, 3], DType::F32, bytes(&[1., 2., 3., 4., 5., 6.])).unwrap();
    let b = Node::from_bytes(&dev, &[2, 3], DType::F32, bytes(&[1., 1., 1., 2., 2., 2.])).unwrap();
    let c = a.binary(BinaryOp::Mul, &b).unwrap().unary(UnaryOp::Neg);
    assert_eq!(
        f32s(&c.to_bytes().unwrap()),
        vec![-1., -2., -3., -8., -10., -12.]
    );
    let s = c.reduce(ReduceOp::Sum, &[1]).unwrap();
    assert_eq!(f32s(&s.to_bytes().unwrap()), vec![-6., -30.]);
    let t = a
        .view(
            &[3, 2],
            ViewSpec {
                strides: vec![1, 3],
                offset: 0,
                mask: None,
            },
        )
        .unwrap();
    let bt = Node::matmul(&a, &t).unwrap();
    assert_eq!(f32s(&bt.to_bytes().unwrap()), vec![14., 32., 32., 77.]);
    let r = Node::rand(&dev, &[10000], 7, true);
    let v = f32s(&r.to_bytes().unwrap());
    let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
    eprintln!("mean {mean} stats {:?}", dev.stats());
}

/// A channels-last unfold (`Node::conv_rows`) computed into a buffer, as it
/// is wherever no texture product fetches it implicitly: every element
/// against the definition, with stride, padding and dilation that differ
/// per axis, a kernel that is not square, and taps outside the image.
#[test]
fn conv_rows_against_its_definition() {
    let dev = Device::new().unwrap();
    let (n, c, h, w) = (2usize, 3usize, 5usize, 7usize);
    let win = Window2d {
        image: [h, w],
        out: [3, 5],
        kernel: [2, 3],
        stride: [2, 1],
        padding: [1, 2],
        dilation: [1, 2],
    };
    let image: Vec<f32> = (0..n * h * w * c).map(|i| i as f32 + 1.0).collect();
    let x = Node::from_bytes(&dev, &[n * h * w, c], DType::F32, bytes(&image)).unwrap();
    let rows = x.conv_rows(&win).unwrap();
    let [oh, ow] = win.out;
    let [kh, kw] = win.kernel;
    assert_eq!(rows.shape(), &[n * oh * ow, kh * kw * c]);
    let got = f32s(&rows.to_bytes().unwrap());
    let mut want = Vec::new();
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..kh {
                    for kx in 0..kw {
                        for ch in 0..c {
                            let y = (oy * win.stride[0] + ky * win.dilation[0]) as i64
                                - win.padding[0] as i64;
                            let xx = (ox * win.stride[1] + kx * win.dilation[1]) as i64
                                - win.padding[1] as i64;
                            let inside = y >= 0 && xx >= 0 && y < h as i64 && xx < w as i64;
                            want.push(if inside {
                                image[((b * h + y as usize) * w + xx as usize) * c + ch]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
    }
    assert_eq!(got, want);
}

/// A product whose A is a channels-last unfold: on a CPU adapter the
/// texture kernel fetches A's windows from the image (an implicit GEMM),
/// here with a stride, a dilation and a kernel that differ per axis, and
/// with images that are uploaded, generated (iota) or constant (which
/// need a buffer to be packed from). Against the definition.
#[test]
fn conv_rows_products_against_their_definition() {
    let dev = Device::new().unwrap();
    let (n, c, h, w) = (2usize, 8usize, 9usize, 11usize);
    let win = Window2d {
        image: [h, w],
        out: [5, 11],
        kernel: [3, 2],
        stride: [2, 1],
        padding: [1, 1],
        dilation: [1, 2],
    };
    let [oh, ow] = win.out;
    let [kh, kw] = win.kernel;
    let (taps, cols) = (kh * kw * c, 5usize);
    let weights: Vec<f32> = (0..taps * cols)
        .map(|i| ((i * 7) % 13) as f32 - 6.0)
        .collect();
    let wn = Node::from_bytes(&dev, &[taps, cols], DType::F32, bytes(&weights)).unwrap();
    let pixels = n * h * w;
    let uploaded: Vec<f32> = (0..pixels * c)
        .map(|i| ((i * 5) % 17) as f32 - 8.0)
        .collect();
    let images = [
        (
            "uploaded",
            Node::from_bytes(&dev, &[pixels, c], DType::F32, bytes(&uploaded)).unwrap(),
            uploaded.clone(),
        ),
        (
            "iota",
            Node::iota(&dev, &[pixels, c], DType::F32, 0).unwrap(),
            (0..pixels * c).map(|i| (i / c) as f32).collect(),
        ),
        (
            "constant",
            Node::constant(&dev, &[pixels, c], DType::F32, 0.5),
            vec![0.5; pixels * c],
        ),
    ];
    for (name, image, values) in images {
        let product = Node::matmul(&image.conv_rows(&win).unwrap(), &wn).unwrap();
        let got = f32s(&product.to_bytes().unwrap());
        let mut want = Vec::new();
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for j in 0..cols {
                        let mut acc = 0.0f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * win.stride[0] + ky * win.dilation[0]) as i64
                                    - win.padding[0] as i64;
                                let x = (ox * win.stride[1] + kx * win.dilation[1]) as i64
                                    - win.padding[1] as i64;
                                if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
                                    continue;
                                }
                                for ch in 0..c {
                                    let v =
                                        values[((b * h + y as usize) * w + x as usize) * c + ch];
                                    let k = (ky * kw + kx) * c + ch;
                                    acc += v as f64 * weights[k * cols + j] as f64;
                                }
                            }
                        }
                        want.push(acc as f32);
                    }
                }
            }
        }
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - wv).abs() <= 1e-3 * (1.0 + wv.abs()),
                "{name}: element {i}: {g} against {wv}"
            );
        }
    }
}
