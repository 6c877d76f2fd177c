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
