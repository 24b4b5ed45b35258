//! How the report writes times and durations: dates, milliseconds, spans.

use std::time::Duration;

use time::OffsetDateTime;

/// `2027-11-28`.
pub(super) fn date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `1.3 ms`.
pub(super) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `5 s`, or `500 ms` when not whole seconds.
pub(super) fn span(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_dates() {
        assert_eq!(span(Duration::from_secs(5)), "5 s");
        assert_eq!(span(Duration::from_millis(250)), "250 ms");
        assert_eq!(ms(Duration::from_micros(1250)), "1.2 ms");
        let t = OffsetDateTime::from_unix_timestamp(1_811_462_400).expect("timestamp");
        assert_eq!(date(t), "2027-05-28");
    }
}
