use cinder_tensor::*;

#[test]
fn tensor_smoke() -> Result<()> {
    let dev = Device::new()?;
    let x = Tensor::from_slice(&dev, &[1.0f32, -2.0, 3.0, 4.0, 5.0, -6.0], &[2, 3])?.requires_grad_();
    let w = Tensor::from_slice(&dev, &[0.5f32, 1.0, -1.0, 2.0, 0.0, 1.0], &[3, 2])?.requires_grad_();
    let y = x.matmul(&w)?.relu()?;
    let t = Tensor::from_slice(&dev, &[1i32, 0], &[2])?;
    let loss = y.cross_entropy(&t)?;
    let l = loss.item()?;
    eprintln!("loss {l}");
    let g = loss.backward()?;
    let gx = g.get(&x).unwrap().to_vec::<f32>()?;
    let gw = g.get(&w).unwrap().to_vec::<f32>()?;
    eprintln!("gx {gx:?} gw {gw:?}");
    let c = Tensor::concat(&[&x, &x.mul_scalar(2.0)?], 0)?;
    eprintln!("{:?}", c.to_vec::<f32>()?);
    let s = x.softmax(-1)?.sum(&[-1], false)?;
    eprintln!("{:?}", s.to_vec::<f32>()?);
    eprintln!("{:?}", x.argmax(1, false)?.to_vec::<i32>()?);
    eprintln!("{:?}", x.var(&[1], 1, false)?.to_vec::<f32>()?);
    Ok(())
}
