//! Durations written the way people write them: `"500ms"`, `"30s"`, `"5m"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration in a job file: a string such as `"30s"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for ConfigDuration {
    fn from(d: Duration) -> Self {
        ConfigDuration(d)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(ConfigDuration)
            .map_err(|err| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {err} (write e.g. \"500ms\", \"30s\", \"5m\", \"1h\")"
                ))
            })
    }
}

/// A transfer rate in a job file: `"8MiB"` (per second), `"500KB"`, `"1GiB/s"`, or a number
/// of bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl ByteRate {
    /// Parses `"8MiB"`, `"8 MiB/s"`, `"500kB"`, `"1048576"`.
    pub fn parse(text: &str) -> Result<ByteRate, String> {
        let trimmed = text.trim();
        let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
        parse_bytes(trimmed, text).map(ByteRate)
    }
}

/// A size in a job file: `"16MiB"`, `"500kB"`, or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ByteRate::deserialize(deserializer).map(|rate| ByteSize(rate.0))
    }
}

/// Parses `trimmed` (from `text`, quoted in errors) as a number with an optional unit.
fn parse_bytes(trimmed: &str, text: &str) -> Result<u64, String> {
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid rate {text:?} (write e.g. \"8MiB\" or \"500kB\")"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid unit in {text:?} (B, kB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = (number * scale).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} must be at least one byte"));
    }
    Ok(bytes as u64)
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(0) => Err(serde::de::Error::custom("a rate must be above zero")),
            Raw::Number(n) => Ok(ByteRate(n)),
            Raw::Text(text) => ByteRate::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_parse() {
        assert_eq!(ByteRate::parse("8MiB"), Ok(ByteRate(8 << 20)));
        assert_eq!(ByteRate::parse("8 MiB/s"), Ok(ByteRate(8 << 20)));
        assert_eq!(ByteRate::parse("500kB"), Ok(ByteRate(500_000)));
        assert_eq!(ByteRate::parse("1.5KiB"), Ok(ByteRate(1536)));
        assert!(ByteRate::parse("fast").is_err());
        assert!(ByteRate::parse("0").is_err());
    }

    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: ConfigDuration,
    }

    #[test]
    fn parses_the_usual_forms() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            let t: T = toml::from_str(&format!("d = {text:?}")).expect("valid duration");
            assert_eq!(t.d.get(), want, "{text}");
        }
    }

    #[test]
    fn rejects_a_bare_number() {
        let err = toml::from_str::<T>("d = \"30\"")
            .err()
            .expect("a unit is required");
        assert!(err.to_string().contains("invalid duration \"30\""), "{err}");
    }
}
