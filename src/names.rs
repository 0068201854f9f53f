//! Host names and the name matcher.
//!
//! Everything that decides "is this name allowed" lives here, so the TLS and
//! HTTP listeners cannot disagree. A name from the wire is only ever compared
//! after it has become a [`HostName`]: lower-case, no trailing dot, and a valid
//! DNS host name. Anything else is refused before matching, so a garbage name
//! can never be routed by whatever suffix it happens to end in.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// RFC 1035: 255 octets on the wire, which is 253 characters written out.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A valid, normalised DNS host name (`blog.example.com`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

/// What a client asked for, once read from the SNI extension or a Host header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A valid host name.
    Host(HostName),
    /// An empty name or an IP literal: treated exactly like a missing SNI.
    NoName,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("label {0:?} is empty or longer than {MAX_LABEL_LEN} characters")]
    BadLabelLength(String),
    #[error("label {0:?} starts or ends with a hyphen")]
    BadHyphen(String),
    #[error("name contains a character other than letters, digits, hyphens and dots")]
    BadCharacter,
    #[error("a wildcard must be the whole first label, as in \"*.example.com\"")]
    BadWildcard,
}

impl HostName {
    /// Normalises and validates a name: ASCII letters are lower-cased and one
    /// trailing dot is dropped.
    pub fn parse(raw: &[u8]) -> Result<Requested, NameError> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() {
            return Ok(Requested::NoName);
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.') {
            return Err(NameError::BadCharacter);
        }
        // Only ASCII remains, so this cannot fail.
        let name = String::from_utf8_lossy(raw).to_ascii_lowercase();
        // RFC 6066 forbids IP literals in SNI; some clients send them anyway.
        // They name no virtual host, so they get the no-SNI treatment. Only
        // IPv4 can get here (an IPv6 literal's ':' was refused above), and
        // only a name of digits and dots can be one: others skip the parse.
        if raw.iter().all(|b| b.is_ascii_digit() || *b == b'.') && name.parse::<Ipv4Addr>().is_ok() {
            return Ok(Requested::NoName);
        }
        for label in name.split('.') {
            check_label(label)?;
        }
        Ok(Requested::Host(HostName(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(NameError::BadLabelLength(label.to_owned()));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::BadHyphen(label.to_owned()));
    }
    Ok(())
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A name pattern from the config: an exact name, or `*.suffix`, which
/// matches every name below `suffix` (any depth) but never `suffix` itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(HostName),
    Below(HostName),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, NameError> {
        let (below, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.contains('*') {
            return Err(NameError::BadWildcard);
        }
        match HostName::parse(rest.as_bytes())? {
            Requested::Host(name) if below => Ok(Pattern::Below(name)),
            Requested::Host(name) => Ok(Pattern::Exact(name)),
            // An empty pattern or an IP literal can never match a host name.
            Requested::NoName => Err(NameError::BadCharacter),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => write!(f, "{name}"),
            Pattern::Below(name) => write!(f, "*.{name}"),
        }
    }
}

/// Maps names to a value (a route index). An exact name wins over any
/// pattern; among patterns the longest suffix wins. Lookup costs one hash
/// probe per label of the name.
#[derive(Debug, Clone)]
pub struct Matcher<T> {
    exact: HashMap<HostName, T>,
    below: HashMap<HostName, T>,
}

impl<T> Default for Matcher<T> {
    fn default() -> Self {
        Matcher { exact: HashMap::new(), below: HashMap::new() }
    }
}

impl<T: Clone> Matcher<T> {
    /// Adds a pattern; returns the value already registered for the very
    /// same pattern, if any, so that the config can report the conflict.
    pub fn insert(&mut self, pattern: Pattern, value: T) -> Option<T> {
        let (map, name) = match pattern {
            Pattern::Exact(name) => (&mut self.exact, name),
            Pattern::Below(name) => (&mut self.below, name),
        };
        if let Some(existing) = map.get(&name) {
            return Some(existing.clone());
        }
        map.insert(name, value);
        None
    }

    pub fn lookup(&self, name: &HostName) -> Option<&T> {
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        // Walk up from the longest proper suffix: "a.b.c" tries "b.c" then "c".
        // Splitting on '.' keeps "evilkube.example.com" from ever being seen as
        // a name below "kube.example.com".
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            // HostName's invariants hold for every suffix of a valid name.
            if let Some(value) = self.below.get(&HostName(parent.to_owned())) {
                return Some(value);
            }
            rest = parent;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.below.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> HostName {
        match HostName::parse(s.as_bytes()).unwrap() {
            Requested::Host(h) => h,
            Requested::NoName => panic!("{s} is not a host name"),
        }
    }

    fn matcher(patterns: &[(&str, u32)]) -> Matcher<u32> {
        let mut m = Matcher::default();
        for (p, v) in patterns {
            assert!(m.insert(Pattern::parse(p).unwrap(), *v).is_none());
        }
        m
    }

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        assert_eq!(host("Blog.Example.COM.").as_str(), "blog.example.com");
        assert!(HostName::parse(b"blog.example.com..").is_err());
    }

    #[test]
    fn empty_names_and_ip_literals_count_as_no_name() {
        assert_eq!(HostName::parse(b"").unwrap(), Requested::NoName);
        assert_eq!(HostName::parse(b".").unwrap(), Requested::NoName);
        assert_eq!(HostName::parse(b"203.0.113.7").unwrap(), Requested::NoName);
        assert_eq!(HostName::parse(b"::1").unwrap_err(), NameError::BadCharacter);
    }

    #[test]
    fn rejects_what_is_not_a_host_name() {
        for bad in [
            &b"a..b"[..],
            b".a",
            b"-a.example.com",
            b"a-.example.com",
            b"a_b.example.com",
            b"a b.example.com",
            b"a\0.example.com",
            b"caf\xc3\xa9.example.com",
            b"blog.example.com/x",
            b"*.example.com",
        ] {
            assert!(HostName::parse(bad).is_err(), "{:?} was accepted", String::from_utf8_lossy(bad));
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(HostName::parse(long_label.as_bytes()), Err(NameError::BadLabelLength(_))));
        let long_name = vec!["a".repeat(63); 4].join(".") + ".com";
        assert_eq!(HostName::parse(long_name.as_bytes()), Err(NameError::TooLong));
        let max_name = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        assert_eq!(max_name.len(), 253);
        assert!(matches!(HostName::parse(max_name.as_bytes()), Ok(Requested::Host(_))));
    }

    #[test]
    fn suffix_patterns_match_below_only() {
        let m = matcher(&[("*.kube.example.com", 1)]);
        assert_eq!(m.lookup(&host("a.kube.example.com")), Some(&1));
        assert_eq!(m.lookup(&host("a.b.kube.example.com")), Some(&1));
        assert_eq!(m.lookup(&host("A.KUBE.example.com.")), Some(&1));
        assert_eq!(m.lookup(&host("kube.example.com")), None);
        assert_eq!(m.lookup(&host("evilkube.example.com")), None);
        assert_eq!(m.lookup(&host("kube.example.com.evil.test")), None);
        assert_eq!(m.lookup(&host("a.kube.example.co")), None);
    }

    #[test]
    fn exact_beats_suffix_and_longer_suffix_wins() {
        let m = matcher(&[("*.example.com", 1), ("*.kube.example.com", 2), ("x.kube.example.com", 3)]);
        assert_eq!(m.lookup(&host("x.kube.example.com")), Some(&3));
        assert_eq!(m.lookup(&host("y.kube.example.com")), Some(&2));
        assert_eq!(m.lookup(&host("kube.example.com")), Some(&1));
        assert_eq!(m.lookup(&host("example.com")), None);
    }

    #[test]
    fn exact_names_match_exactly() {
        let m = matcher(&[("blog.example.com", 1)]);
        assert_eq!(m.lookup(&host("blog.example.com")), Some(&1));
        assert_eq!(m.lookup(&host("BLOG.example.com.")), Some(&1));
        assert_eq!(m.lookup(&host("x.blog.example.com")), None);
        assert_eq!(m.lookup(&host("blog.example.com.evil.test")), None);
        assert_eq!(m.lookup(&host("evilblog.example.com")), None);
    }

    #[test]
    fn duplicate_patterns_are_reported() {
        let mut m = matcher(&[("blog.example.com", 1)]);
        assert_eq!(m.insert(Pattern::parse("BLOG.example.com.").unwrap(), 2), Some(1));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["*", "*.", "a.*.example.com", "**.example.com", "*example.com", "", "192.0.2.1"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
