//! Port numbers and port specs such as `3001-3010` or `3001,3005,3007-3009`.

use std::fmt;

/// Parses a port the way every map key spells it: plain decimal digits, no
/// sign, no leading zero, 1 to 65535. Anything else is `None`.
pub fn parse_port(text: &str) -> Option<u16> {
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    if !canonical {
        return None;
    }
    text.parse::<u16>().ok()
}

/// The set of ports of a pool, parsed from a spec like `3001-3010` or
/// `3001,3005,3007-3009`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Sorted, without duplicates.
    ports: Vec<u16>,
    text: String,
}

/// Why a port spec was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The spec, or one of its comma-separated parts, is empty.
    Empty,
    /// A part is not a port number from 1 to 65535.
    BadPort(String),
    /// A range runs backwards (`3010-3001`).
    Reversed(String),
    /// A port appears twice (`3001-3005,3004`).
    Overlap(u16),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Empty => f.write_str("empty port spec or empty part between commas"),
            SpecError::BadPort(part) => write!(f, "{part:?} is not a port from 1 to 65535"),
            SpecError::Reversed(part) => write!(f, "range {part:?} runs backwards"),
            SpecError::Overlap(port) => write!(f, "port {port} is listed twice"),
        }
    }
}

impl std::error::Error for SpecError {}

impl PortSpec {
    /// Parses `3001-3010`, `3001,3005,3007-3009`; spaces around parts are
    /// allowed.
    pub fn parse(spec: &str) -> Result<PortSpec, SpecError> {
        let mut ports = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(SpecError::Empty);
            }
            let bad = || SpecError::BadPort(part.to_owned());
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (
                    parse_port(a.trim()).ok_or_else(bad)?,
                    parse_port(b.trim()).ok_or_else(bad)?,
                ),
                None => {
                    let port = parse_port(part).ok_or_else(bad)?;
                    (port, port)
                }
            };
            if first > last {
                return Err(SpecError::Reversed(part.to_owned()));
            }
            ports.extend(first..=last);
        }
        ports.sort_unstable();
        if let Some(pair) = ports.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(SpecError::Overlap(pair[0]));
        }
        Ok(PortSpec {
            ports,
            text: spec.trim().to_owned(),
        })
    }

    /// True if `port` belongs to the pool.
    pub fn contains(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    /// The ports, ascending.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for PortSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_plain_decimal_from_1_to_65535() {
        assert_eq!(parse_port("3001"), Some(3001));
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in [
            "", "0", "65536", "99999", "+3001", "-1", "03001", "3 001", "3001;", "0x10", "١٢٣",
        ] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_and_lists_parse() {
        let spec = PortSpec::parse("3001-3003").expect("range");
        assert_eq!(spec.ports(), [3001, 3002, 3003]);
        let spec = PortSpec::parse("3001, 3005,3007-3009").expect("list");
        assert_eq!(spec.ports(), [3001, 3005, 3007, 3008, 3009]);
        assert!(spec.contains(3008) && !spec.contains(3006));
        assert_eq!(PortSpec::parse("3005-3005").expect("one").ports(), [3005]);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        assert_eq!(PortSpec::parse(""), Err(SpecError::Empty));
        assert_eq!(PortSpec::parse("3001,,3002"), Err(SpecError::Empty));
        assert_eq!(PortSpec::parse("3001,"), Err(SpecError::Empty));
        assert!(matches!(PortSpec::parse("0"), Err(SpecError::BadPort(_))));
        assert!(matches!(
            PortSpec::parse("3001-70000"),
            Err(SpecError::BadPort(_))
        ));
        assert!(matches!(PortSpec::parse("abc"), Err(SpecError::BadPort(_))));
        assert!(matches!(
            PortSpec::parse("3001-"),
            Err(SpecError::BadPort(_))
        ));
        assert!(matches!(
            PortSpec::parse("3010-3001"),
            Err(SpecError::Reversed(_))
        ));
        assert_eq!(
            PortSpec::parse("3001-3005,3004"),
            Err(SpecError::Overlap(3004))
        );
        assert_eq!(PortSpec::parse("3001,3001"), Err(SpecError::Overlap(3001)));
    }
}
