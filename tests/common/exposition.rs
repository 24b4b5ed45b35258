//! The strict reader of a metrics scrape, shared by the exposition's unit
//! tests (`src/obs/metrics/exposition.rs` includes this file) and the
//! scrape of real processes in `tests/operations.rs`.

/// Checks every line of a text exposition: `# HELP`, `# TYPE`, `# EOF`, or
/// a sample `name{key="value",...} number` whose label values hold only
/// the escapes `\\`, `\"` and `\n`. Returns each sample's labels, unescaped.
pub fn parse_exposition(text: &str) -> Vec<Vec<(String, String)>> {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let known = comment.starts_with("HELP openshell_bridge_")
                || comment.starts_with("TYPE openshell_bridge_")
                || comment == "EOF";
            assert!(known, "stray comment line {line:?} in:\n{text}");
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        let name_ok =
            name.starts_with("openshell_bridge_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        assert!(name_ok, "bad metric name in {line:?} in:\n{text}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                let eq = rest.find("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                let key = &rest[..eq];
                assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?} in:\n{text}"),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = &rest[eq + 2 + end + 1..];
                match rest.strip_prefix(',') {
                    Some(after) => rest = after,
                    None => {
                        rest = rest.strip_prefix('}').unwrap_or_else(|| panic!("no closing brace in {line:?}"));
                        break;
                    }
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?} in:\n{text}");
        samples.push(labels);
    }
    samples
}
