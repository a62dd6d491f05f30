//! Engine versions as users declare them (`"16"`, `"16.14"`, `"16.14.2"`).
//!
//! A declaration may stop at any part: `"16"` means "the 16 series, newest release". This module keeps
//! what was written (so messages can quote it back) and answers the one question schemas ask of a
//! version: does a declared version satisfy an argument's `since`?

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// An engine version as declared: `"16"`, `"16.14"`, `"16.14.2"`.
///
/// `Ord` compares numerically with missing parts counted as 0; when two versions are numerically equal
/// the one with fewer written parts sorts first (`"16"` < `"16.0"`), which keeps `Ord` consistent with
/// `Eq` (they are different declarations).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: Option<u32>,
    pub patch: Option<u32>,
}

impl Version {
    /// A bare major version, such as the `since = 18` of an argument.
    pub const fn from_major(major: u32) -> Version {
        Version {
            major,
            minor: None,
            patch: None,
        }
    }

    /// Parses `MAJOR`, `MAJOR.MINOR` or `MAJOR.MINOR.PATCH`, each part plain ASCII digits.
    /// Anything else (`"v16"`, `"16."`, `"16.x"`, `" 16"`, four parts) is `None`.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.');
        let major = parse_part(parts.next()?)?;
        let minor = match parts.next() {
            Some(part) => Some(parse_part(part)?),
            None => None,
        };
        let patch = match parts.next() {
            Some(part) => Some(parse_part(part)?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
        })
    }

    /// Does this declared version satisfy `since` (the first version that has a feature)?
    ///
    /// Parts are compared left to right, numerically. A part the declaration leaves out stands for the
    /// whole series, which resolves to its newest release: `"18"` satisfies `since = "18.1"` because the
    /// 18 series has such releases, while `"18.0"` does not. A part `since` leaves out counts as 0.
    /// So `"16"` does not satisfy `18`, `"18"` satisfies `18`, and `"17.2"` satisfies `"17.1"`.
    pub fn satisfies(&self, since: &Version) -> bool {
        let declared = [Some(self.major), self.minor, self.patch];
        let required = [
            since.major,
            since.minor.unwrap_or(0),
            since.patch.unwrap_or(0),
        ];
        for (declared_part, required_part) in declared.into_iter().zip(required) {
            let Some(declared_part) = declared_part else {
                return true;
            };
            match declared_part.cmp(&required_part) {
                Ordering::Greater => return true,
                Ordering::Less => return false,
                Ordering::Equal => {}
            }
        }
        true
    }

    fn numeric_key(&self) -> (u32, u32, u32) {
        (self.major, self.minor.unwrap_or(0), self.patch.unwrap_or(0))
    }

    fn written_parts(&self) -> usize {
        1 + usize::from(self.minor.is_some()) + usize::from(self.patch.is_some())
    }
}

fn parse_part(part: &str) -> Option<u32> {
    if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numeric_key()
            .cmp(&other.numeric_key())
            .then_with(|| self.written_parts().cmp(&other.written_parts()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    /// Writes the version with exactly the parts that were declared: `16`, `16.14`, `16.14.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major)?;
        if let Some(minor) = self.minor {
            write!(f, ".{minor}")?;
            if let Some(patch) = self.patch {
                write!(f, ".{patch}")?;
            }
        }
        Ok(())
    }
}

/// The text given to [`Version::from_str`] was not a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseVersionError {
    pub input: String,
}

impl fmt::Display for ParseVersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid version {:?}: expected MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH, such as \"16\" or \"16.14\"",
            self.input
        )
    }
}

impl std::error::Error for ParseVersionError {}

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Version::parse(text).ok_or_else(|| ParseVersionError {
            input: text.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|| panic!("{text:?} should parse"))
    }

    #[test]
    fn parses_each_precision() {
        let cases = [
            (
                "16",
                Version {
                    major: 16,
                    minor: None,
                    patch: None,
                },
            ),
            (
                "16.14",
                Version {
                    major: 16,
                    minor: Some(14),
                    patch: None,
                },
            ),
            (
                "16.14.2",
                Version {
                    major: 16,
                    minor: Some(14),
                    patch: Some(2),
                },
            ),
            (
                "0",
                Version {
                    major: 0,
                    minor: None,
                    patch: None,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Version::parse(text), Some(expected.clone()), "{text}");
            assert_eq!(expected.to_string(), text, "display round-trips {text}");
            assert_eq!(text.parse::<Version>(), Ok(expected));
        }
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "",
            "v16",
            "16.",
            ".16",
            "16..1",
            "16.x",
            " 16",
            "16 ",
            "+16",
            "-1",
            "1.2.3.4",
            "99999999999",
        ] {
            assert_eq!(Version::parse(text), None, "{text:?} should not parse");
        }
        let error = "v16".parse::<Version>().unwrap_err();
        assert_eq!(error.input, "v16");
        assert!(error.to_string().contains("MAJOR.MINOR"), "{error}");
    }

    #[test]
    fn orders_numerically() {
        assert!(v("9") < v("10"));
        assert!(v("16.2") < v("16.10"));
        assert!(v("16.14.2") < v("16.14.10"));
        assert!(v("16") < v("16.1"));
        assert!(v("17") > v("16.99.99"));
        assert_eq!(v("16.0").cmp(&v("16.0")), Ordering::Equal);
        // Numerically equal, different declarations: fewer parts first, consistent with Eq.
        assert!(v("16") < v("16.0"));
        assert!(v("16.0") < v("16.0.0"));
        let mut sorted = [v("18"), v("14.9"), v("16.0"), v("16"), v("15.10.1")];
        sorted.sort();
        let sorted: Vec<String> = sorted.iter().map(Version::to_string).collect();
        assert_eq!(sorted, ["14.9", "15.10.1", "16", "16.0", "18"]);
    }

    #[test]
    fn satisfies_since() {
        let cases = [
            ("16", "18", false),
            ("17", "18", false),
            ("18", "18", true),
            ("19", "18", true),
            ("18.3", "18", true),
            ("17.2", "17.1", true),
            ("17.1", "17.1", true),
            ("17.0", "17.1", false),
            ("17.9.9", "18", false),
            // A series stands for its newest release.
            ("18", "18.1", true),
            ("18.1", "18.1.2", true),
            ("18.1.1", "18.1.2", false),
        ];
        for (declared, since, expected) in cases {
            assert_eq!(
                v(declared).satisfies(&v(since)),
                expected,
                "{declared} satisfies {since}"
            );
        }
    }
}
