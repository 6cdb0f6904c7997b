//! `Retry-After`: delay-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value relative to `now`. A date in the past is zero; garbage is `None`.
///
/// Two forms outside the grammar that servers and proxies send are read on the safe side: a
/// fraction of a second (`1.5`) waits the whole second above it, and a list a proxy made of
/// repeated fields (`5, 5`, `2, 10`, `5, soon`) waits its longest, as the fields unmerged
/// do. Anything else (`-5`, `soon`) is ignored: the backoff alone decides.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Some(d) = seconds(v) {
        return Some(d);
    }
    if v.contains(',') {
        // Each part that reads as seconds, and each date ("Sun, 06 Nov 1994 …": a day's
        // name, the comma of its own, the rest), as the fields unmerged are read.
        let parts: Vec<&str> = v.split(',').map(str::trim).collect();
        let mut longest = None;
        let mut i = 0;
        while i < parts.len() {
            let part = parts[i];
            if let Some(d) = seconds(part) {
                longest = longest.max(Some(d));
            } else if let Some(rest) = parts.get(i + 1)
                && let Ok(at) = httpdate::parse_http_date(&format!("{part}, {rest}"))
            {
                longest = longest.max(Some(at.duration_since(now).unwrap_or(Duration::ZERO)));
                i += 1;
            }
            i += 1;
        }
        if longest.is_some() {
            return longest;
        }
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Delay-seconds (`120`), or a fraction of one rounded up (`1.5` is 2 s).
fn seconds(v: &str) -> Option<Duration> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Saturate absurd values rather than fail: they are capped by max_retry_after anyway.
    let whole = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    match v.split_once('.') {
        None if digits(v) => Some(Duration::from_secs(whole(v))),
        Some((int, frac)) if digits(int) && digits(frac) => {
            let up = u64::from(frac.bytes().any(|b| b != b'0'));
            Some(Duration::from_secs(whole(int).saturating_add(up)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        let now = SystemTime::now();
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(parse(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        // The obsolete forms a recipient must accept (RFC 9110, 5.6.7): RFC 850's, whose
        // comma is the day's own, and asctime's.
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Sun Nov  6 08:50:07 1994", now),
            Some(Duration::from_secs(30))
        );
    }

    /// Outside the grammar, read on the safe side: a fraction rounded up, a merged list's
    /// longest.
    #[test]
    fn fractions_and_merged_lists_wait_at_least_as_asked() {
        let now = SystemTime::now();
        assert_eq!(parse("1.5", now), Some(Duration::from_secs(2)));
        assert_eq!(parse("0.25", now), Some(Duration::from_secs(1)));
        assert_eq!(parse("3.0", now), Some(Duration::from_secs(3)));
        assert_eq!(parse("5, 5", now), Some(Duration::from_secs(5)));
        assert_eq!(parse("2,10", now), Some(Duration::from_secs(10)));
    }

    #[test]
    fn garbage() {
        let now = SystemTime::now();
        assert_eq!(parse("", now), None);
        assert_eq!(parse("-5", now), None);
        assert_eq!(parse("soon", now), None);
        assert_eq!(parse("1.", now), None);
        assert_eq!(parse(".5", now), None);
        // As the two fields unmerged are read: the one that parses.
        assert_eq!(parse("5, soon", now), Some(Duration::from_secs(5)));
        // Seconds and a date merged: the longer.
        let then = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse("5, Sun, 06 Nov 1994 08:50:37 GMT", then),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:39 GMT, 5", then),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse(",", now), None);
    }
}
