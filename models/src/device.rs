//! The compute device: CPU always; CUDA with the `cuda` feature; Metal with the `metal` feature.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// What the manifest asks for: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The best device this build supports and this machine has: CUDA 0, then Metal, then the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("device `{other}` is not auto, cpu, cuda, cuda:N or metal")),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        match d {
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
            DeviceSpec::Metal => "metal".into(),
        }
    }
}

/// Opens the device; returns it with its budget key (`cpu`, `cuda:0`, `metal:0`). `auto` falls back to the
/// CPU when this build or machine has no GPU; naming a GPU this build cannot drive is an error.
pub fn open_device(spec: &DeviceSpec) -> Result<(candle_core::Device, String), ModelError> {
    let fail = |message: String| ModelError::Device { spec: String::from(spec.clone()), message };
    match spec {
        DeviceSpec::Cpu => Ok((candle_core::Device::Cpu, "cpu".into())),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(fail("this build has no CUDA support; rebuild with `--features cuda`".into()));
            }
            candle_core::Device::new_cuda(*n)
                .map(|d| (d, format!("cuda:{n}")))
                .map_err(|e| fail(format!("cannot open CUDA device {n}: {e}")))
        }
        DeviceSpec::Metal => {
            if !cfg!(feature = "metal") {
                return Err(fail("this build has no Metal support; rebuild with `--features metal`".into()));
            }
            candle_core::Device::new_metal(0)
                .map(|d| (d, "metal:0".into()))
                .map_err(|e| fail(format!("cannot open the Metal device: {e}")))
        }
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match candle_core::Device::new_cuda(0) {
                    Ok(d) => return Ok((d, "cuda:0".into())),
                    Err(e) => tracing::warn!("no usable CUDA device ({e}); models run on the CPU"),
                }
            }
            if cfg!(feature = "metal") {
                match candle_core::Device::new_metal(0) {
                    Ok(d) => return Ok((d, "metal:0".into())),
                    Err(e) => tracing::warn!("no usable Metal device ({e}); models run on the CPU"),
                }
            }
            Ok((candle_core::Device::Cpu, "cpu".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        for (s, want) in [("auto", DeviceSpec::Auto), ("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0))] {
            assert_eq!(DeviceSpec::try_from(s.to_string()).unwrap(), want);
        }
        assert_eq!(DeviceSpec::try_from("cuda:3".to_string()).unwrap(), DeviceSpec::Cuda(3));
        assert!(DeviceSpec::try_from("tpu".to_string()).unwrap_err().contains("tpu"));
    }

    #[test]
    fn auto_opens_something_and_cpu_is_cpu() {
        let (_, key) = open_device(&DeviceSpec::Auto).unwrap();
        assert!(!key.is_empty());
        let (d, key) = open_device(&DeviceSpec::Cpu).unwrap();
        assert!(d.is_cpu());
        assert_eq!(key, "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = open_device(&DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
