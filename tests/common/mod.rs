//! One device per test binary; a missing adapter fails the test with the
//! error that says how to install one.

use std::sync::OnceLock;

use cinder::Device;

pub fn device() -> Device {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    match DEVICE.get_or_init(|| Device::new().map_err(|e| e.to_string())) {
        Ok(d) => d.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Serialises tests that assert on the shared device's counters or its
/// default random stream. A test that panicked while holding it does not
/// poison the others.
#[allow(dead_code)]
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh temporary folder path for test `name` (removed if it exists,
/// not created).
#[allow(dead_code)]
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
