//! Bounded caches: plans, pipelines, bind groups and pooled buffers are
//! kept least-recently-used within their documented sizes, so a program
//! that runs a thousand distinct shapes keeps its memory bounded, while a
//! loop over one shape keeps hitting its cached plan.

use cinder::runtime::{CacheSizes, DeviceOptions};
use cinder::{Device, Result, Tensor};

fn device_with(sizes: CacheSizes) -> Result<Device> {
    Device::with_options(&DeviceOptions {
        cache_sizes: sizes,
        ..DeviceOptions::from_env()
    })
}

#[test]
fn a_thousand_distinct_shapes_keep_memory_bounded() -> Result<()> {
    let sizes = CacheSizes {
        plans: 32,
        pipelines: 16,
        bind_groups: 256,
        textures: 4,
        buffer_age: 32,
    };
    let device = device_with(sizes)?;
    let mut peak = 0;
    for len in 1000..2000usize {
        let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let y = Tensor::from_slice(&device, &data, &[len])?
            .mul_scalar(2.0)?
            .add_scalar(1.0)?
            .to_vec::<f32>()?;
        assert_eq!((y[0], y[len - 1]), (1.0, 2.0 * (len - 1) as f32 + 1.0));
        peak = peak.max(device.stats().bytes_allocated);
    }
    let stats = device.stats();
    assert!(stats.plans_cached <= 32, "{stats:?}");
    assert!(stats.bind_groups_cached <= 256, "{stats:?}");
    assert!(stats.pipelines_cached <= 16, "{stats:?}");
    // Every shape compiled a plan once; all but the last 32 were dropped.
    assert_eq!(stats.plans_compiled, 1000);
    assert!(stats.plan_cache_evictions >= 1000 - 32, "{stats:?}");
    // Buffers of shapes gone by are freed. Each shape uses about 18 KiB
    // (upload, result, read-back; lengths within 16 bytes share buffers),
    // so keeping them all would end near 4.5 MB.
    assert!(
        stats.buffers_freed * 10 > stats.buffers_created * 8,
        "{stats:?}"
    );
    assert!(peak < 1 << 20, "peak {peak} bytes: {stats:?}");
    Ok(())
}

#[test]
fn pipelines_past_the_cache_size_are_evicted_and_results_stay_right() -> Result<()> {
    let device = device_with(CacheSizes {
        pipelines: 8,
        ..CacheSizes::default()
    })?;
    // A reduction's kernel is specialised to its length: one pipeline each.
    for len in 100..130usize {
        let total = Tensor::ones(&device, &[3, len])
            .sum(&[1], false)?
            .to_vec::<f32>()?;
        assert_eq!(total, vec![len as f32; 3]);
    }
    let stats = device.stats();
    assert!(stats.pipelines_cached <= 8, "{stats:?}");
    assert!(stats.pipeline_cache_evictions >= 20, "{stats:?}");
    Ok(())
}

#[test]
fn a_texture_cache_of_one_keeps_each_plans_textures_consistent() -> Result<()> {
    // A plan's pack and product (and a value computed into a texture and
    // its readers) must hold the same texture even when the cache drops it
    // between their lookups.
    let device = device_with(CacheSizes {
        textures: 1,
        ..CacheSizes::default()
    })?;
    let (m, k, n) = (1024, 512, 256);
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32 - 2.0) / 3.0).collect();
    let x = Tensor::from_slice(&device, &a, &[m, k])?;
    let w = Tensor::from_slice(&device, &b, &[k, n])?;
    let got = x.mul_scalar(2.0)?.matmul(&w)?.to_vec::<f32>()?;
    for (r, c) in [(0usize, 0usize), (1, 2), (511, 100), (1023, 255)] {
        let want: f64 = (0..k)
            .map(|j| 2.0 * a[r * k + j] as f64 * b[j * n + c] as f64)
            .sum();
        let have = got[r * n + c] as f64;
        assert!(
            (have - want).abs() <= 1e-3 * (1.0 + want.abs()),
            "[{r}, {c}]: {have} vs {want}"
        );
    }
    Ok(())
}

#[test]
fn a_repeated_shape_hits_the_plan_cache() -> Result<()> {
    let device = device_with(CacheSizes::default())?;
    let step = |v: f32| -> Result<f32> { Tensor::full(&device, &[64], v).exp()?.sum_all()?.item() };
    step(0.0)?;
    let before = device.stats();
    for i in 0..10 {
        step(i as f32 * 0.01)?;
    }
    let after = device.stats();
    assert_eq!(after.plans_compiled, before.plans_compiled);
    assert_eq!(after.plan_cache_hits - before.plan_cache_hits, 10);
    assert_eq!(after.pipelines_created, before.pipelines_created);
    assert_eq!(after.plan_cache_evictions, 0);
    Ok(())
}

/// An LSTM trained on sequences of many lengths (each its own plan) stays
/// within the cache sizes: going through the same lengths again, with their
/// plans evicted meanwhile, ends with no more memory than the first time.
#[test]
fn recurrent_steps_over_many_sequence_lengths_keep_memory_bounded() -> Result<()> {
    use cinder::nn::{lstm, Adam, Module, Optimizer, RnnOptions};
    let device = device_with(CacheSizes {
        plans: 4,
        pipelines: 64,
        bind_groups: 512,
        textures: 8,
        buffer_age: 8,
    })?;
    device.manual_seed(1);
    let layer = lstm(&device, 3, 8, RnnOptions::default())?;
    let mut opt = Adam::new(layer.parameters(), 1e-3)?;
    let mut after_round = Vec::new();
    for round in 0..3 {
        for steps in 2..18usize {
            let x = Tensor::rand_seeded(&device, &[steps, 4, 3], -1.0, 1.0, steps as u64)?;
            let loss = layer.forward(&x)?.sum_all()?;
            opt.step(&loss.backward()?)?;
            assert!(loss.item()?.is_finite(), "round {round}, {steps} steps");
        }
        after_round.push(device.stats().bytes_allocated);
    }
    let stats = device.stats();
    assert!(stats.plans_cached <= 4, "{stats:?}");
    // 16 lengths, three times over, four plans kept.
    assert!(stats.plan_cache_evictions >= 40, "{stats:?}");
    assert!(
        after_round[2] <= after_round[0] + after_round[0] / 4,
        "bytes after each round: {after_round:?}"
    );
    Ok(())
}

/// A new plan's pipelines are created on several threads before its first
/// run: each distinct kernel exactly once (no two threads compile the same
/// one), every one of them cached, and the plan's replay creates none.
#[test]
fn a_new_plans_pipelines_are_created_once_each() -> Result<()> {
    let device = device_with(CacheSizes::default())?;
    let before = device.stats();
    let first = a_dozen_kernels(&device, 0.5)?;
    let after = device.stats();
    let created = after.pipelines_created - before.pipelines_created;
    assert!(created >= 8, "{after:?}");
    assert_eq!(created as usize, device.compiled_kernels().len());
    assert_eq!(a_dozen_kernels(&device, 0.5)?, first);
    assert_eq!(device.stats().pipelines_created, after.pipelines_created);
    Ok(())
}

/// One realization of a dozen distinct kernels: reductions and element-wise
/// kernels of several shapes, and a product.
fn a_dozen_kernels(device: &Device, v: f32) -> Result<Vec<f32>> {
    let x = Tensor::full(device, &[4, 96], v);
    let a = x.exp()?.sum(&[1], true)?;
    let b = x.sin()?.mul_scalar(3.0)?.max(&[0], true)?;
    let c = x.reshape(&[8, 48])?.tanh()?.mean(&[1], false)?;
    let d = a.add(&b.sum_all()?)?.mul(&c.reshape(&[8, 1])?.sum_all()?)?;
    let e = x.sqrt()?.matmul(&x.t()?)?.softmax(1)?;
    Tensor::concat(&[&d.flatten(0, -1)?, &e.flatten(0, -1)?], 0)?.to_vec::<f32>()
}

/// A product over operand textures on a CPU adapter (its operands computed
/// into them or packed), in a realization of its own.
fn a_texture_product(device: &Device, v: f32) -> Result<Vec<f32>> {
    let a = Tensor::full(device, &[192, 160], v).sin()?;
    let b = Tensor::full(device, &[200, 160], v).cos()?.t()?;
    a.matmul(&b)?.sum(&[1], false)?.to_vec::<f32>()
}

/// On lavapipe a helper device compiles a new plan's kernels ahead, on
/// another core: each exactly once, and each bound to stand-ins the kernel
/// accepts (one it rejected would be left out of the count). On a GPU, or
/// turned off, there is no helper. Either way the results are the same.
#[test]
fn a_new_plans_kernels_are_compiled_ahead_on_a_cpu_adapter() -> Result<()> {
    let mut results = Vec::new();
    for compile_ahead in [true, false] {
        let device = Device::with_options(&DeviceOptions {
            compile_ahead,
            ..DeviceOptions::from_env()
        })?;
        let mut out = a_dozen_kernels(&device, 0.25)?;
        out.extend(a_texture_product(&device, 0.25)?);
        let stats = device.stats();
        let created = stats.pipelines_created;
        assert!(created >= 10, "{stats:?}");
        // Kernels that bind textures too, which the helper must stand in for.
        assert_eq!(
            stats.texture_products > 0,
            device.texture_matmul(),
            "{stats:?}"
        );
        let lavapipe = device.backend() == "Vulkan" && device.adapter_name().contains("llvmpipe");
        let spare_core = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let mesa_cache = std::env::var("MESA_SHADER_CACHE_DISABLE")
            .map_or(true, |v| !matches!(v.trim(), "1" | "true" | "TRUE" | "yes"));
        assert_eq!(
            device.compiles_ahead(),
            compile_ahead && lavapipe && spare_core && mesa_cache
        );
        let expected = if device.compiles_ahead() { created } else { 0 };
        // The helper runs behind the realization; give it ample time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while device.stats().kernels_compiled_ahead < expected
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(device.stats().kernels_compiled_ahead, expected);
        results.push(out);
    }
    assert_eq!(results[0], results[1]);
    Ok(())
}
