//! Names from the wire are data: a request's `:path`, the method name taken
//! from it, a header value, a name read from a peer's certificate. Wherever
//! such text reaches a log line or an error message it goes through
//! [`for_log`], escaped and bounded, so a client can neither forge a log
//! line (a newline, a carriage return, an escape sequence for the terminal,
//! a bidirectional override) nor make one line huge.
//!
//! Metrics label values are escaped by the exposition encoder instead (see
//! `metrics/exposition.rs`); their length is bounded in `metrics/mod.rs`.

use std::fmt;

/// The usual bound of a path, method name or identity in a log line.
pub const LIMIT: usize = 256;

/// `text` escaped Rust-style (`\n`, `\"`, `\\`, `\u{1b}` for anything not
/// printable) and cut after at most `limit` bytes of escaped output, with
/// `…(+N bytes)` telling how much of `text` was left out. Printable
/// non-ASCII text (`é`, `東京`) stays as it is; a cut never splits a
/// character or an escape.
///
/// Nothing is allocated until the value is formatted, so a log line that
/// is filtered out costs nothing:
/// `tracing::warn!(path = %for_log(path, LIMIT), "refused")`.
pub fn for_log(text: &str, limit: usize) -> ForLog<'_> {
    ForLog { text, limit }
}

/// Wire text as it is logged; see [`for_log`]. `Display` gives the escaped
/// text, `Debug` the same in double quotes.
#[derive(Clone, Copy)]
pub struct ForLog<'a> {
    text: &'a str,
    limit: usize,
}

impl ForLog<'_> {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text;
        let mut written = 0;
        // Start of the run of characters not yet written that need no escape.
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            let escape = needs_escape(c);
            let width = match &escape {
                Some(e) => e.len(),
                None => c.len_utf8(),
            };
            if written + width > self.limit {
                f.write_str(&text[plain..at])?;
                return write!(f, "…(+{} bytes)", text.len() - at);
            }
            written += width;
            if let Some(escape) = escape {
                f.write_str(&text[plain..at])?;
                write!(f, "{escape}")?;
                plain = at + c.len_utf8();
            }
        }
        f.write_str(&text[plain..])
    }
}

/// The escape of `c`, or `None` when it is written as it is.
fn needs_escape(c: char) -> Option<std::char::EscapeDebug> {
    // `'` needs no escape inside double quotes; everything else that
    // `escape_debug` changes does: `\`, `"`, `\n`, `\r`, `\t`, control and
    // format characters, line separators, unassigned code points.
    if c == '\'' {
        return None;
    }
    let escape = c.escape_debug();
    if escape.len() == 1 {
        None
    } else {
        Some(escape)
    }
}

impl fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

impl fmt::Debug for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write(f)?;
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str, limit: usize) -> String {
        for_log(text, limit).to_string()
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            escaped("/openshell.compute.v1.ComputeDriver/GetSandbox", LIMIT),
            "/openshell.compute.v1.ComputeDriver/GetSandbox"
        );
        assert_eq!(escaped("caf\u{e9} 東京 it's", LIMIT), "café 東京 it's");
        assert_eq!(escaped("", LIMIT), "");
    }

    #[test]
    fn a_newline_cannot_start_a_line_of_its_own() {
        let forged = "/x\n2026-01-01T00:00:00Z  INFO relay serving\r\n";
        let out = escaped(forged, LIMIT);
        assert_eq!(out, "/x\\n2026-01-01T00:00:00Z  INFO relay serving\\r\\n");
        assert!(!out.contains('\n') && !out.contains('\r'));
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(escaped(r#"Bad"name\x"#, LIMIT), r#"Bad\"name\\x"#);
        assert_eq!(format!("{:?}", for_log("a\"b", LIMIT)), r#""a\"b""#);
    }

    #[test]
    fn control_and_format_characters_are_escaped() {
        assert_eq!(escaped("\u{1b}[31mred\u{7f}\0\t", LIMIT), "\\u{1b}[31mred\\u{7f}\\0\\t");
        // Bidirectional override, zero-width space, line separator, NEL.
        assert_eq!(escaped("a\u{202e}b\u{200b}c\u{2028}d\u{85}", LIMIT), "a\\u{202e}b\\u{200b}c\\u{2028}d\\u{85}");
        assert!(escaped("\u{1}\u{2}\u{1f}", LIMIT).chars().all(|c| c.is_ascii_graphic()));
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        let long = "a".repeat(1000);
        assert_eq!(escaped(&long, 10), "aaaaaaaaaa…(+990 bytes)");
        assert_eq!(escaped(&"a".repeat(10), 10), "aaaaaaaaaa", "exactly the limit is not cut");
    }

    #[test]
    fn a_cut_never_splits_a_character_or_an_escape() {
        // 'é' is two bytes: with room for 3 bytes, "aé" fits and the next 'é' does not.
        assert_eq!(escaped("aééé", 3), "aé…(+4 bytes)");
        assert_eq!(escaped("aééé", 4), "aé…(+4 bytes)");
        assert_eq!(escaped("東京", 4), "東…(+3 bytes)");
        assert_eq!(escaped("😀😀", 5), "😀…(+4 bytes)");
        // "\n" escapes to two bytes: it goes whole or not at all.
        assert_eq!(escaped("ab\ncd", 3), "ab…(+3 bytes)");
        assert_eq!(escaped("ab\ncd", 4), "ab\\n…(+2 bytes)");
        assert_eq!(escaped("\u{1b}x", 5), "…(+2 bytes)");
        for limit in 0..20 {
            let out = escaped("é\n東\"😀\\x", limit);
            assert!(!out.contains('\n'), "{out}");
        }
    }
}
