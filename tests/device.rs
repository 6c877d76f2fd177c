//! Adapter selection, several devices in one process, and the no-adapter error.

mod common;

use cinder::runtime::{list_adapters, DeviceOptions};
use cinder::{Device, Tensor};

#[test]
fn device_is_send_sync_and_cheap_to_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Device>();
    check::<Tensor>();
}

#[test]
fn several_devices_coexist_and_work_from_threads() -> cinder::Result<()> {
    let a = common::device();
    let b = Device::new()?;
    assert_ne!(a, b);
    let handles: Vec<_> = [a, b]
        .into_iter()
        .map(|d| {
            std::thread::spawn(move || -> cinder::Result<Vec<f32>> {
                let x = Tensor::from_slice(&d, &[1.0f32, 2.0, 3.0], &[3])?;
                x.mul(&x)?.to_vec::<f32>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread")?, vec![1.0, 4.0, 9.0]);
    }
    Ok(())
}

/// Adapters exist, so a filter that rules them all out is the mistake: the
/// error names it and lists the adapters to choose from.
#[test]
fn a_filter_that_matches_nothing_lists_the_adapters() {
    let present = common::device().adapter_name().to_string();
    let options = DeviceOptions {
        backend: None,
        adapter_name: Some("no adapter is called this".into()),
        ..Default::default()
    };
    let err = Device::with_options(&options).err();
    assert!(
        matches!(&err, Some(cinder::Error::NoMatchingAdapter { available, .. })
            if available.iter().any(|a| a.contains(&present))),
        "{err:?}"
    );
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("CINDER_ADAPTER=no adapter is called this") && err.contains(&present),
        "{err}"
    );
    let bad = DeviceOptions {
        backend: Some("glide".into()),
        ..Default::default()
    };
    let err = Device::with_options(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("glide") && err.contains("vulkan") && err.contains(&present),
        "{err}"
    );
}

#[test]
fn adapter_filter_and_listing() -> cinder::Result<()> {
    let adapters = list_adapters();
    assert!(!adapters.is_empty());
    let first = common::device();
    let name = first.adapter_name().to_string();
    let chosen = Device::with_options(&DeviceOptions {
        backend: Some(first.backend().to_lowercase()),
        adapter_name: Some(name[..name.len().min(6)].to_uppercase()),
        ..Default::default()
    })?;
    assert_eq!(chosen.adapter_name(), name);
    Ok(())
}
