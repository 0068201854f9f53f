//! The status channel: at the start of a session the gateway opens one
//! stream (GET), on which the agent says which of its targets it can reach,
//! one line each: `up NAME` or `down NAME`. The gateway sends no new
//! connection for a target to an agent that said it is down there.
//!
//! These lines are the only bytes of the tunnel this program parses itself
//! (TLS and h2 are the crates'), so they are read with limits and fuzzed.

/// A line longer than this ends the status channel.
pub const MAX_LINE: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status<'a> {
    pub target: &'a str,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("a status line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("a status line is `up NAME` or `down NAME`")]
    Malformed,
}

/// A target name: what a backend's `target` and an agent's `targets` keys
/// may be.
pub fn valid_target(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub fn line(status: Status<'_>) -> String {
    format!("{} {}\n", if status.up { "up" } else { "down" }, status.target)
}

/// Parses one line, without its LF.
pub fn parse_line(line: &[u8]) -> Result<Status<'_>, StatusError> {
    let text = std::str::from_utf8(line).map_err(|_| StatusError::Malformed)?;
    let (word, target) = text.split_once(' ').ok_or(StatusError::Malformed)?;
    let up = match word {
        "up" => true,
        "down" => false,
        _ => return Err(StatusError::Malformed),
    };
    if !valid_target(target) {
        return Err(StatusError::Malformed);
    }
    Ok(Status { target, up })
}

/// Collects received chunks into lines.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `chunk`, calling `each` for every complete line in it.
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(Status<'_>)) -> Result<(), StatusError> {
        for &byte in chunk {
            if byte == b'\n' {
                let status = parse_line(&self.pending);
                let result = status.map(&mut each);
                self.pending.clear();
                result?;
            } else if self.pending.len() >= MAX_LINE {
                return Err(StatusError::TooLong);
            } else {
                self.pending.push(byte);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_are_read_whole() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        for chunk in [&b"up ht"[..], b"tps\ndown http\n", b"up a.b-c_d\n"] {
            lines.push(chunk, |s| seen.push((s.target.to_owned(), s.up))).unwrap();
        }
        assert_eq!(seen, [("https".into(), true), ("http".into(), false), ("a.b-c_d".into(), true)]);
        assert_eq!(line(Status { target: "https", up: false }), "down https\n");
    }

    #[test]
    fn bad_lines_are_refused() {
        for bad in [&b"up\n"[..], b"up \n", b"sideways x\n", b"up a b\n", b"up a/b\n", b"up \xff\n", b"UP x\n"] {
            assert_eq!(Lines::default().push(bad, |_| ()), Err(StatusError::Malformed), "{bad:?}");
        }
        assert_eq!(Lines::default().push(&[b'u'; MAX_LINE + 1], |_| ()), Err(StatusError::TooLong));
    }
}
