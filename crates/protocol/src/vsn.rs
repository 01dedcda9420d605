//! Serializer versions.

use std::fmt;

/// The protocol version of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: each frame is a JSON object; the server never sends `join_ref`.
    V1,
    /// `2.0.0`: each frame is `[join_ref, ref, topic, event, payload]`.
    V2,
}

/// The client asked for a `vsn` we do not speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedVsn(pub String);

impl fmt::Display for UnsupportedVsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported vsn {:?}: use 1.0.0 or 2.0.0", self.0)
    }
}

impl std::error::Error for UnsupportedVsn {}

impl Vsn {
    /// From the `vsn` query parameter. Missing means 1.0.0; like Phoenix's
    /// `~> 1.0.0` / `~> 2.0.0`, any patch version matches.
    pub fn from_query(vsn: Option<&str>) -> Result<Self, UnsupportedVsn> {
        let Some(v) = vsn else { return Ok(Vsn::V1) };
        let mut parts = v.split('.');
        let major = parts.next();
        let minor = parts.next();
        let patch_ok =
            parts.next().is_none_or(|p| p.parse::<u32>().is_ok()) && parts.next().is_none();
        match (major, minor, patch_ok) {
            (Some("1"), Some("0"), true) => Ok(Vsn::V1),
            (Some("2"), Some("0"), true) => Ok(Vsn::V2),
            _ => Err(UnsupportedVsn(v.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_refuses_others() {
        assert_eq!(Vsn::from_query(None), Ok(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("1.0.0")), Ok(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("2.0.0")), Ok(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("2.0.7")), Ok(Vsn::V2));
        for bad in ["3.0.0", "2.1.0", "", "2", "two", "2.0.x", "2.0.0.0"] {
            assert!(Vsn::from_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
