//! Span timestamps: microseconds since the Unix epoch, shown as RFC 3339 with microseconds, UTC.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{SystemTime, UNIX_EPOCH};
use time::{format_description::well_known::Rfc3339, macros::format_description, OffsetDateTime};

/// A point in time, microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        let micros = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Self(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub fn from_unix_millis(ms: u64) -> Self {
        Self(ms.saturating_mul(1000))
    }

    pub fn micros(self) -> u64 {
        self.0
    }

    /// Parses RFC 3339 (any offset, any fraction; kept to the microsecond).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        let micros = t.unix_timestamp_nanos() / 1000;
        u64::try_from(micros).ok().map(Self)
    }

    /// `2026-11-27T02:21:28.123456Z`
    pub fn to_rfc3339(self) -> String {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let nanos = i128::from(self.0) * 1000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&fmt).ok())
            .unwrap_or_else(|| "1970-01-01T00:00:00.000000Z".to_string())
    }

    /// Milliseconds from `self` to `later` (0 when `later` is earlier), with microsecond precision.
    pub fn ms_until(self, later: Timestamp) -> f64 {
        later.0.saturating_sub(self.0) as f64 / 1000.0
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&raw)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {raw:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_microseconds() {
        let t = Timestamp(1_764_210_088_123_456);
        let s = t.to_rfc3339();
        assert_eq!(s, "2025-11-27T02:21:28.123456Z");
        assert_eq!(
            Timestamp::parse_rfc3339(&s),
            Some(t),
            "formatting then parsing is lossless"
        );
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        assert_eq!(
            Timestamp::parse_rfc3339("2025-11-27T03:21:28.123456+01:00"),
            Some(Timestamp(1_764_210_088_123_456))
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
        assert_eq!(Timestamp::parse_rfc3339("2025-13-01T00:00:00Z"), None);
    }
}
