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
