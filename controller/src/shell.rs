//! POSIX shell quoting: every string that reaches a remote shell goes through here.
//!
//! Single quotes keep every byte literal in POSIX sh except `'` itself, which
//! is closed, escaped and reopened (`'\''`). NUL cannot be carried by a shell
//! word at all, so it is refused rather than silently truncated.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("a shell word cannot contain a NUL byte (at byte {at} of a {len}-byte string)")]
    Nul { at: usize, len: usize },
}

impl ShellError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ShellError::Nul { .. } => "nul",
        }
    }
}

/// Quote one word for POSIX sh: `it's` → `'it'\''s'`, `` → `''`.
pub fn quote(s: &str) -> Result<String, ShellError> {
    if let Some(at) = s.bytes().position(|b| b == 0) {
        return Err(ShellError::Nul { at, len: s.len() });
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

/// Quote each word.
pub fn quote_all<S: AsRef<str>>(words: &[S]) -> Result<Vec<String>, ShellError> {
    words.iter().map(|w| quote(w.as_ref())).collect()
}

/// A command line that runs `argv` as is: every word quoted, joined by spaces.
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> Result<String, ShellError> {
    Ok(quote_all(argv)?.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    #[test]
    fn a_plain_word_is_wrapped_in_single_quotes() {
        assert_eq!(quote("abc").unwrap(), "'abc'");
        assert_eq!(quote("").unwrap(), "''");
    }

    #[test]
    fn a_single_quote_is_closed_escaped_and_reopened() {
        assert_eq!(quote("it's").unwrap(), r"'it'\''s'");
    }

    #[test]
    fn a_nul_byte_is_refused_with_its_position() {
        let e = quote("ab\0c").unwrap_err();
        assert_eq!(e, ShellError::Nul { at: 2, len: 4 });
        assert!(e.to_string().contains("NUL"));
    }

    #[test]
    fn a_command_line_keeps_each_argument_whole() {
        let line = command_line(&["printf", "%s|", "a b", "-n", "$(x)"]).unwrap();
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a b|-n|$(x)|");
    }

    fn sh_printf(word: &str) -> Vec<u8> {
        let script = format!("printf %s {}", quote(word).unwrap());
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn nasty() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("$(echo pwned)".to_string()),
            Just("`id`".to_string()),
            Just("\\".to_string()),
            Just("\n".to_string()),
            Just("-n".to_string()),
            Just("--".to_string()),
            Just("$HOME".to_string()),
            Just("*".to_string()),
            Just("; rm -rf /tmp/x".to_string()),
            Just("é✓😀".to_string()),
            "[^\u{0}]{0,8}",
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_quoted_string_reaches_sh_as_exactly_its_bytes(s in nasty()) {
            prop_assert_eq!(sh_printf(&s), s.as_bytes().to_vec());
        }
    }
}
