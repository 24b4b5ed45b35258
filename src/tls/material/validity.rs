//! A certificate against the clock: where now falls in its validity
//! period, refusing an expired or not-yet-valid one, and warning a week
//! before the end.

use std::fmt;
use std::path::Path;

use time::OffsetDateTime;

use super::certs::CertInfo;
use super::{origin, MaterialError, MaterialErrorKind};

/// A certificate this close to expiry is reported, so rotation trouble is
/// noticed before the outage.
const EXPIRY_WARNING_DAYS: i64 = 7;

/// Where `now` falls in a certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid, with more than a week to go.
    Ok {
        /// Whole days until `not_after`.
        days_left: i64,
    },
    /// Valid, but expiring within a week.
    ExpiresSoon {
        /// Whole days until `not_after` (0 means less than a day).
        days_left: i64,
    },
    /// `now` is past `not_after`.
    Expired,
    /// `now` is before `not_before` (often a wrong clock on this host).
    NotYetValid,
}

/// Classifies `now` against the certificate's validity period. Pure: the
/// caller decides whether to warn or refuse (see [`require_valid`] and
/// [`warn_on_expiry`]).
pub fn check_validity(flag: &str, path: &Path, info: &CertInfo, now: OffsetDateTime) -> Validity {
    let validity = classify_validity(info, now);
    tracing::debug!(flag, path = %path.display(), subject = %info.subject, ?validity, "certificate validity");
    validity
}

fn classify_validity(info: &CertInfo, now: OffsetDateTime) -> Validity {
    if now < info.not_before {
        return Validity::NotYetValid;
    }
    if now > info.not_after {
        return Validity::Expired;
    }
    let days_left = (info.not_after - now).whole_days();
    if days_left < EXPIRY_WARNING_DAYS {
        Validity::ExpiresSoon { days_left }
    } else {
        Validity::Ok { days_left }
    }
}

/// Like [`check_validity`], but an expired or not-yet-valid certificate is
/// an error that says what to do.
pub fn require_valid(flag: &str, path: &Path, info: &CertInfo, now: OffsetDateTime) -> Result<Validity, MaterialError> {
    match check_validity(flag, path, info, now) {
        Validity::Expired => Err(MaterialError::new(
            MaterialErrorKind::Expired,
            flag,
            path,
            format!(
                "certificate {} expired at {}; renew it (development certificates: openshell-driver-bridge certs init --force)",
                info.subject,
                Utc(info.not_after)
            ),
        )),
        Validity::NotYetValid => Err(MaterialError::new(
            MaterialErrorKind::NotYetValid,
            flag,
            path,
            format!(
                "certificate {} is not valid before {} (now {}); check this host's clock",
                info.subject,
                Utc(info.not_before),
                Utc(now)
            ),
        )),
        ok => Ok(ok),
    }
}

/// Checks validity against the current time and logs a warning when the
/// certificate expires within a week. Returns the verdict; the caller
/// decides whether an expired certificate is fatal.
pub fn warn_on_expiry(flag: &str, path: &Path, info: &CertInfo) -> Validity {
    let validity = check_validity(flag, path, info, OffsetDateTime::now_utc());
    if let Validity::ExpiresSoon { days_left } = validity {
        tracing::warn!(
            "{}: certificate {} expires at {} ({days_left} whole days left); renew it soon",
            origin(flag, path),
            info.subject,
            Utc(info.not_after)
        );
    }
    validity
}

/// Formats a timestamp as `2025-01-31 12:00:00 UTC` without depending on
/// the `time` crate's formatting feature.
pub struct Utc(pub OffsetDateTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.to_offset(time::UtcOffset::UTC);
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::PeerIdentity;
    use crate::tls::material::*;

    fn info_between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertInfo {
        CertInfo { identity: PeerIdentity::default(), subject: "CN=t".to_owned(), not_before, not_after }
    }

    #[test]
    fn validity_classification() {
        let now = rcgen::date_time_ymd(2030, 6, 1);
        let days = time::Duration::days;
        let p = Path::new("/c.pem");
        let check = |nb, na| check_validity("--cert", p, &info_between(nb, na), now);
        assert_eq!(check(now - days(1), now + days(30)), Validity::Ok { days_left: 30 });
        assert_eq!(check(now - days(1), now + days(7)), Validity::Ok { days_left: 7 });
        assert_eq!(check(now - days(1), now + days(6)), Validity::ExpiresSoon { days_left: 6 });
        assert_eq!(check(now - days(1), now + time::Duration::hours(3)), Validity::ExpiresSoon { days_left: 0 });
        assert_eq!(check(now - days(10), now - days(1)), Validity::Expired);
        assert_eq!(check(now + days(1), now + days(10)), Validity::NotYetValid);
    }

    #[test]
    fn require_valid_explains_expired_and_future_certificates() {
        let now = rcgen::date_time_ymd(2030, 6, 1);
        let days = time::Duration::days;
        let p = Path::new("/c.pem");
        let expired = info_between(now - days(10), rcgen::date_time_ymd(2030, 5, 31));
        let err = require_valid("--cert", p, &expired, now).unwrap_err();
        assert_eq!(err.kind(), MaterialErrorKind::Expired);
        assert_eq!(
            err.to_string(),
            "--cert /c.pem: certificate CN=t expired at 2030-05-31 00:00:00 UTC; renew it (development certificates: openshell-driver-bridge certs init --force)"
        );
        let future = info_between(now + days(1), now + days(10));
        let err = require_valid("--cert", p, &future, now).unwrap_err();
        assert_eq!(err.kind(), MaterialErrorKind::NotYetValid);
        assert!(err.to_string().contains("check this host's clock"), "{err}");
        let fine = info_between(now - days(1), now + days(100));
        assert_eq!(require_valid("--cert", p, &fine, now).unwrap(), Validity::Ok { days_left: 100 });
    }

    #[test]
    fn warn_on_expiry_uses_the_current_time() {
        let now = OffsetDateTime::now_utc();
        let soon = info_between(now - time::Duration::days(1), now + time::Duration::days(2));
        assert!(matches!(
            warn_on_expiry("--cert", Path::new("/c.pem"), &soon),
            Validity::ExpiresSoon { days_left: 1 | 2 }
        ));
    }
}
