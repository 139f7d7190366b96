//! The allowed range of every resource and timeout of a sandbox, and the one check of them.
//!
//! burrowd applies [`check_resources`] to what a create or a patch asks for (and to the
//! configuration that results, defaults included); the CLI parses numbers and passes them on
//! unchecked, so a value out of range is refused in one place, with one message: 422
//! `<field> must be between <min> and <max>, got <value>`. The OpenAPI document states the
//! same ranges (`minimum`/`maximum`; a test keeps them equal).

use std::fmt;

/// CPUs, fractional: a hundredth of a CPU up to 256.
pub const CPUS: (f64, f64) = (0.01, 256.0);
/// Memory limit, MiB: 32 MiB up to 4 TiB.
pub const MEMORY_MB: (u64, u64) = (32, 1 << 22);
/// Disk size, GiB: 1 GiB up to 64 TiB.
pub const DISK_GB: (u64, u64) = (1, 1 << 16);
/// Processes (and threads): 16 up to 4194304 (the kernel's `pid_max` limit).
pub const PIDS: (u64, u64) = (16, 1 << 22);
/// Seconds without activity before warm sleep, or asleep before going cold: 0 (never) up to
/// 365 days.
pub const TIMEOUT_S: (u64, u64) = (0, 365 * 24 * 3600);

/// A value outside its field's range. `Display` is the API's message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfRange {
    pub field: &'static str,
    pub min: String,
    pub max: String,
    pub got: String,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be between {} and {}, got {}",
            self.field, self.min, self.max, self.got
        )
    }
}

impl std::error::Error for OutOfRange {}

/// What a request sets; `None` = not set (the default or the current value stays, and that
/// one is checked where it is decided).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub pids: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    pub cold_after_s: Option<u64>,
}

/// The one check of a sandbox's resources and timeouts: every value set lies in its range
/// (`cpus` finite: NaN and ±infinity are refused, never replaced by a default). The first
/// value out of range, in field order, is the error.
pub fn check_resources(r: &Resources) -> Result<(), OutOfRange> {
    if let Some(cpus) = r.cpus {
        // `contains` is false for NaN; ±inf are outside any finite range.
        if !(CPUS.0..=CPUS.1).contains(&cpus) {
            return Err(OutOfRange {
                field: "cpus",
                min: CPUS.0.to_string(),
                max: CPUS.1.to_string(),
                got: cpus.to_string(),
            });
        }
    }
    let ints = [
        ("memory_mb", r.memory_mb, MEMORY_MB),
        ("disk_gb", r.disk_gb, DISK_GB),
        ("pids", r.pids, PIDS),
        ("idle_timeout_s", r.idle_timeout_s, TIMEOUT_S),
        ("cold_after_s", r.cold_after_s, TIMEOUT_S),
    ];
    for (field, value, (min, max)) in ints {
        if let Some(v) = value
            && !(min..=max).contains(&v)
        {
            return Err(OutOfRange {
                field,
                min: min.to_string(),
                max: max.to_string(),
                got: v.to_string(),
            });
        }
    }
    Ok(())
}

impl crate::CreateSandbox {
    /// The resources and timeouts this request sets.
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            pids: self.pids,
            idle_timeout_s: self.idle_timeout_s,
            cold_after_s: self.cold_after_s,
        }
    }
}

impl crate::PatchSandbox {
    /// The resources and timeouts this request changes.
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            pids: self.pids,
            idle_timeout_s: self.idle_timeout_s,
            cold_after_s: self.cold_after_s,
        }
    }
}

impl crate::SandboxConfig {
    /// Every resource and timeout of this configuration.
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: Some(self.cpus),
            memory_mb: Some(self.memory_mb),
            disk_gb: Some(self.disk_gb),
            pids: Some(self.pids),
            idle_timeout_s: Some(self.idle_timeout_s),
            cold_after_s: Some(self.cold_after_s),
        }
    }
}

/// `cpus` on the wire. JSON has no NaN or infinity, and serde_json would write them as `null`
/// (which reads back as "not set": `--cpus nan` silently became the default). So a
/// non-finite value travels as the string `"NaN"`, `"inf"` or `"-inf"`, reads back as that
/// value, and [`check_resources`] refuses it with the range. Any other string is a type error.
pub(crate) mod cpus_wire {
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(x) if x.is_nan() => s.serialize_str("NaN"),
            Some(x) if x.is_infinite() && *x > 0.0 => s.serialize_str("inf"),
            Some(x) if x.is_infinite() => s.serialize_str("-inf"),
            Some(x) => s.serialize_f64(*x),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<f64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "NaN" | "nan" => Ok(Some(f64::NAN)),
                    "inf" | "+inf" | "infinity" | "Infinity" => Ok(Some(f64::INFINITY)),
                    "-inf" | "-infinity" | "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                    _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_option(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateSandbox, PatchSandbox};

    fn cpus(v: f64) -> Resources {
        Resources {
            cpus: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn one_range_one_message() {
        let refused: &[(Resources, &str)] = &[
            (cpus(f64::NAN), "cpus must be between 0.01 and 256, got NaN"),
            (cpus(f64::INFINITY), "cpus must be between 0.01 and 256, got inf"),
            (
                cpus(f64::NEG_INFINITY),
                "cpus must be between 0.01 and 256, got -inf",
            ),
            (cpus(0.0), "cpus must be between 0.01 and 256, got 0"),
            (cpus(0.001), "cpus must be between 0.01 and 256, got 0.001"),
            (cpus(-1.0), "cpus must be between 0.01 and 256, got -1"),
            (cpus(256.5), "cpus must be between 0.01 and 256, got 256.5"),
            (
                Resources {
                    memory_mb: Some(31),
                    ..Default::default()
                },
                "memory_mb must be between 32 and 4194304, got 31",
            ),
            (
                Resources {
                    disk_gb: Some(0),
                    ..Default::default()
                },
                "disk_gb must be between 1 and 65536, got 0",
            ),
            (
                Resources {
                    pids: Some(u64::MAX),
                    ..Default::default()
                },
                "pids must be between 16 and 4194304, got 18446744073709551615",
            ),
            (
                Resources {
                    idle_timeout_s: Some(365 * 24 * 3600 + 1),
                    ..Default::default()
                },
                "idle_timeout_s must be between 0 and 31536000, got 31536001",
            ),
            (
                Resources {
                    cold_after_s: Some(u64::MAX),
                    ..Default::default()
                },
                "cold_after_s must be between 0 and 31536000, got 18446744073709551615",
            ),
        ];
        for (r, message) in refused {
            assert_eq!(check_resources(r).unwrap_err().to_string(), *message);
        }
        // Controls: the bounds themselves, and nothing set.
        let accepted = [
            cpus(0.01),
            cpus(0.5),
            cpus(256.0),
            Resources {
                cpus: Some(1.0),
                memory_mb: Some(32),
                disk_gb: Some(65536),
                pids: Some(16),
                idle_timeout_s: Some(0),
                cold_after_s: Some(31_536_000),
            },
            Resources {
                memory_mb: Some(1 << 22),
                disk_gb: Some(1),
                pids: Some(1 << 22),
                ..Default::default()
            },
            Resources::default(),
        ];
        for r in accepted {
            assert_eq!(check_resources(&r), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn non_finite_cpus_survive_the_wire() {
        for (v, text) in [
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"inf\""),
            (f64::NEG_INFINITY, "\"-inf\""),
        ] {
            let req = PatchSandbox {
                cpus: Some(v),
                ..Default::default()
            };
            let json = serde_json::to_string(&req).unwrap();
            assert_eq!(json, format!("{{\"cpus\":{text}}}"));
            let back: PatchSandbox = serde_json::from_str(&json).unwrap();
            let got = back.cpus.expect("still set, not turned into a default");
            assert_eq!(got.to_bits(), v.to_bits());
            assert!(check_resources(&back.resources()).is_err());
        }
        // Numbers as numbers; absent and null are "not set"; other strings are no number.
        let c: CreateSandbox = serde_json::from_str(r#"{"name":"a","cpus":2}"#).unwrap();
        assert_eq!(c.cpus, Some(2.0));
        assert_eq!(
            serde_json::to_string(&PatchSandbox {
                cpus: Some(1.5),
                ..Default::default()
            })
            .unwrap(),
            r#"{"cpus":1.5}"#
        );
        let c: CreateSandbox = serde_json::from_str(r#"{"name":"a","cpus":null}"#).unwrap();
        assert_eq!(c.cpus, None);
        let c: CreateSandbox = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(c.cpus, None);
        // A literal too large for f64 is no number serde_json reads (never infinity).
        let err = serde_json::from_str::<CreateSandbox>(r#"{"name":"a","cpus":1e999}"#).unwrap_err();
        assert!(err.to_string().contains("number out of range"), "{err}");
        let err = serde_json::from_str::<CreateSandbox>(r#"{"name":"a","cpus":"2"}"#).unwrap_err();
        assert!(err.to_string().contains("a number of CPUs"), "{err}");
    }

    #[test]
    fn the_openapi_document_states_the_same_ranges() {
        let doc: serde_yaml::Value = serde_yaml::from_str(crate::OPENAPI_YAML).unwrap();
        let schemas = &doc["components"]["schemas"];
        let as_f64 = |v: &serde_yaml::Value| v.as_f64().unwrap_or_else(|| panic!("{v:?}"));
        for schema in ["CreateSandbox", "PatchSandbox"] {
            let p = &schemas[schema]["properties"];
            assert_eq!(as_f64(&p["cpus"]["minimum"]), CPUS.0, "{schema}");
            assert_eq!(as_f64(&p["cpus"]["maximum"]), CPUS.1, "{schema}");
            for (field, (min, max)) in [
                ("memory_mb", MEMORY_MB),
                ("disk_gb", DISK_GB),
                ("pids", PIDS),
                ("idle_timeout_s", TIMEOUT_S),
                ("cold_after_s", TIMEOUT_S),
            ] {
                assert_eq!(p[field]["minimum"].as_u64(), Some(min), "{schema}.{field}");
                assert_eq!(p[field]["maximum"].as_u64(), Some(max), "{schema}.{field}");
            }
        }
    }
}
