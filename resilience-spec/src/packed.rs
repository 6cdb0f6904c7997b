//! A compiled policy as one string: what `#[resilient]` hands the runtime.
//!
//! The macro resolves and checks a policy at compile time; what it leaves in the function is
//! one `static` holding the policy's values packed into a string literal, which the runtime
//! unpacks into its `Policy` on the function's first call. One string literal is far cheaper
//! for the compiler to check than the same values written out as a nested struct expression
//! (which the compiler must resolve, type-check, borrow-check and evaluate for every annotated
//! function), and it costs nothing after the first call.
//!
//! The format: a version tag, then every field of [`Packed`] in order, each number in decimal
//! followed by `,`, each string as its length in bytes, `:`, its bytes. It is written and read
//! only by this module, and the macro and the runtime always come from the same release.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::Method;

/// The version tag every packed policy starts with.
const TAG: &str = "rp3,";

/// A breaker's settings, as the runtime's `BreakerSpec` holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct PackedBreaker {
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: u32,
    pub open_for: Duration,
    pub half_open_calls: u32,
    pub window_for: Duration,
    pub slow_call_duration: Duration,
    pub slow_call_rate: f64,
}

/// A rate limit's settings, as the runtime's `RateLimitSpec` holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct PackedRateLimit {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub max_wait: Duration,
    pub store: RateStore,
}

/// How long a shared rate limit's decision may wait for Redis before the local limit decides
/// instead: on top of its `max_wait`, in a call's worst-case time.
pub const RATE_STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// Where a rate limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateStore {
    /// In the process.
    Local,
    /// In Redis, shared by every instance.
    Redis,
}

/// An adaptive concurrency limit's settings, as the runtime's `ConcurrencySpec` holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct PackedConcurrency {
    pub initial: u32,
    pub min: u32,
    pub max: u32,
    pub latency: Duration,
    pub backoff: f64,
    pub max_wait: Duration,
}

/// How a backoff delay is drawn around its nominal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PackedJitter {
    Full,
    Equal,
    Decorrelated,
    None,
}

/// Where a call's idempotency key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PackedKey {
    None,
    Auto,
    Param,
}

/// Every value of a compiled policy but the function's path: the runtime's `Policy`, in plain
/// data. Each shared part (`budget`, `breaker`, …) carries the name it is shared under (empty:
/// the function's own).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct Packed<'a> {
    /// The policy's name (`[policies.NAME]`), or empty for an inline policy.
    pub name: &'a str,
    pub method: Method,
    pub timeout: Duration,
    pub deadline: Duration,
    pub max_attempts: u32,
    /// Constant rather than exponential.
    pub backoff_constant: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_multiplier_milli: u32,
    pub jitter: PackedJitter,
    pub retry_connect: bool,
    pub retry_reset: bool,
    pub retry_timeout: bool,
    pub retry_statuses: Vec<u16>,
    pub key: PackedKey,
    pub idempotent: bool,
    pub max_retry_after: Duration,
    /// Name, ratio, retries per second always allowed.
    pub budget: Option<(&'a str, f64, u32)>,
    pub breaker: Option<(&'a str, PackedBreaker)>,
    /// Name, slots, longest wait.
    pub bulkhead: Option<(&'a str, u32, Duration)>,
    pub rate_limit: Option<(&'a str, PackedRateLimit)>,
    pub concurrency: Option<(&'a str, PackedConcurrency)>,
    /// Delay, hedges at most.
    pub hedge: Option<(Duration, u32)>,
    /// The method an attempt counts as when the runtime saw none of its requests.
    pub unseen: Method,
    /// Every request the body may send of a method less safe than GET is one the runtime sees
    /// when it goes out (see `Policy::sends_seen` in the runtime).
    pub sends_seen: bool,
    /// The connect timeout of the function's `client = "NAME"`, which every attempt's timeout
    /// must exceed (`None`: no client named).
    pub connect_timeout: Option<Duration>,
}

/// A packed policy that does not unpack: written by another release, or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Where in the string reading stopped.
    pub at: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl fmt::Display for Unpacked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the compiled policy does not unpack: {} expected at byte {} (the macro and the \
             runtime must come from the same release)",
            self.expected, self.at
        )
    }
}

impl std::error::Error for Unpacked {}

struct Writer(String);

impl Writer {
    fn num(&mut self, n: u64) {
        let _ = write!(self.0, "{n},");
    }
    fn flag(&mut self, b: bool) {
        self.num(u64::from(b));
    }
    fn dur(&mut self, d: Duration) {
        self.num(d.as_secs());
        self.num(u64::from(d.subsec_nanos()));
    }
    fn float(&mut self, x: f64) {
        self.num(x.to_bits());
    }
    fn text(&mut self, s: &str) {
        let _ = write!(self.0, "{}:{s}", s.len());
    }
    fn method(&mut self, m: Method) {
        // Its place among the named methods; one past them for `Other`.
        let code = Method::NAMED.iter().position(|x| *x == m);
        self.num(code.unwrap_or(Method::NAMED.len()) as u64);
    }
    fn present(&mut self, name: Option<&str>) {
        match name {
            None => self.flag(false),
            Some(n) => {
                self.flag(true);
                self.text(n);
            }
        }
    }
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, expected: &'static str) -> Result<T, Unpacked> {
        Err(Unpacked {
            at: self.at,
            expected,
        })
    }
    fn num(&mut self) -> Result<u64, Unpacked> {
        let rest = &self.text[self.at..];
        let Some(end) = rest.find(',') else {
            return self.fail("a number");
        };
        match rest[..end].parse() {
            Ok(n) => {
                self.at += end + 1;
                Ok(n)
            }
            Err(_) => self.fail("a number"),
        }
    }
    fn small(&mut self) -> Result<u32, Unpacked> {
        let n = self.num()?;
        u32::try_from(n).or_else(|_| self.fail("a 32-bit number"))
    }
    fn flag(&mut self) -> Result<bool, Unpacked> {
        match self.num()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => self.fail("0 or 1"),
        }
    }
    fn dur(&mut self) -> Result<Duration, Unpacked> {
        let secs = self.num()?;
        let nanos = self.num()?;
        match u32::try_from(nanos) {
            Ok(n) if n < 1_000_000_000 => Ok(Duration::new(secs, n)),
            _ => self.fail("nanoseconds under a second"),
        }
    }
    fn float(&mut self) -> Result<f64, Unpacked> {
        Ok(f64::from_bits(self.num()?))
    }
    fn text(&mut self) -> Result<&'a str, Unpacked> {
        let rest = &self.text[self.at..];
        let Some(colon) = rest.find(':') else {
            return self.fail("a string's length");
        };
        let Ok(len) = rest[..colon].parse::<usize>() else {
            return self.fail("a string's length");
        };
        let Some(end) = (colon + 1).checked_add(len) else {
            return self.fail("a string of the length given");
        };
        match rest.get(colon + 1..end) {
            Some(s) => {
                self.at += end;
                Ok(s)
            }
            None => self.fail("a string of the length given"),
        }
    }
    fn method(&mut self) -> Result<Method, Unpacked> {
        let code = usize::try_from(self.num()?).unwrap_or(usize::MAX);
        match Method::NAMED.get(code) {
            Some(m) => Ok(*m),
            None if code == Method::NAMED.len() => Ok(Method::Other),
            None => self.fail("a method's code"),
        }
    }
    fn present(&mut self) -> Result<Option<&'a str>, Unpacked> {
        Ok(if self.flag()? {
            Some(self.text()?)
        } else {
            None
        })
    }
}

impl<'a> Packed<'a> {
    /// The policy as one string.
    pub fn pack(&self) -> String {
        let mut w = Writer(String::from(TAG));
        w.text(self.name);
        w.method(self.method);
        w.dur(self.timeout);
        w.dur(self.deadline);
        w.num(u64::from(self.max_attempts));
        w.flag(self.backoff_constant);
        w.dur(self.backoff_initial);
        w.dur(self.backoff_max);
        w.num(u64::from(self.backoff_multiplier_milli));
        w.num(match self.jitter {
            PackedJitter::Full => 0,
            PackedJitter::Equal => 1,
            PackedJitter::Decorrelated => 2,
            PackedJitter::None => 3,
        });
        w.flag(self.retry_connect);
        w.flag(self.retry_reset);
        w.flag(self.retry_timeout);
        w.num(self.retry_statuses.len() as u64);
        for s in &self.retry_statuses {
            w.num(u64::from(*s));
        }
        w.num(match self.key {
            PackedKey::None => 0,
            PackedKey::Auto => 1,
            PackedKey::Param => 2,
        });
        w.flag(self.idempotent);
        w.dur(self.max_retry_after);
        w.present(self.budget.map(|b| b.0));
        if let Some((_, ratio, floor)) = self.budget {
            w.float(ratio);
            w.num(u64::from(floor));
        }
        w.present(self.breaker.map(|b| b.0));
        if let Some((_, b)) = self.breaker {
            w.float(b.failure_rate);
            w.num(u64::from(b.min_calls));
            w.num(u64::from(b.window));
            w.dur(b.open_for);
            w.num(u64::from(b.half_open_calls));
            w.dur(b.window_for);
            w.dur(b.slow_call_duration);
            w.float(b.slow_call_rate);
        }
        w.present(self.bulkhead.map(|b| b.0));
        if let Some((_, slots, wait)) = self.bulkhead {
            w.num(u64::from(slots));
            w.dur(wait);
        }
        w.present(self.rate_limit.map(|r| r.0));
        if let Some((_, r)) = self.rate_limit {
            w.num(u64::from(r.rate));
            w.dur(r.per);
            w.num(u64::from(r.burst));
            w.dur(r.max_wait);
            w.flag(r.store == RateStore::Redis);
        }
        w.present(self.concurrency.map(|c| c.0));
        if let Some((_, c)) = self.concurrency {
            w.num(u64::from(c.initial));
            w.num(u64::from(c.min));
            w.num(u64::from(c.max));
            w.dur(c.latency);
            w.float(c.backoff);
            w.dur(c.max_wait);
        }
        w.flag(self.hedge.is_some());
        if let Some((delay, max)) = self.hedge {
            w.dur(delay);
            w.num(u64::from(max));
        }
        w.method(self.unseen);
        w.flag(self.sends_seen);
        w.flag(self.connect_timeout.is_some());
        if let Some(d) = self.connect_timeout {
            w.dur(d);
        }
        w.0
    }

    /// Reads a policy written by [`pack`](Self::pack); its strings borrow from `text`.
    pub fn unpack(text: &'a str) -> Result<Packed<'a>, Unpacked> {
        let mut r = Reader { text, at: 0 };
        if !text.starts_with(TAG) {
            return r.fail("the version tag");
        }
        r.at = TAG.len();
        let name = r.text()?;
        let method = r.method()?;
        let timeout = r.dur()?;
        let deadline = r.dur()?;
        let max_attempts = r.small()?;
        let backoff_constant = r.flag()?;
        let backoff_initial = r.dur()?;
        let backoff_max = r.dur()?;
        let backoff_multiplier_milli = r.small()?;
        let jitter = match r.num()? {
            0 => PackedJitter::Full,
            1 => PackedJitter::Equal,
            2 => PackedJitter::Decorrelated,
            3 => PackedJitter::None,
            _ => return r.fail("a jitter's code"),
        };
        let retry_connect = r.flag()?;
        let retry_reset = r.flag()?;
        let retry_timeout = r.flag()?;
        let n = r.num()?;
        // Statuses are 100 to 599: a count above that is damage, not a list.
        if n > 500 {
            return r.fail("a count of statuses");
        }
        let mut retry_statuses = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let s = r.num()?;
            match u16::try_from(s) {
                Ok(s) => retry_statuses.push(s),
                Err(_) => return r.fail("a status"),
            }
        }
        let key = match r.num()? {
            0 => PackedKey::None,
            1 => PackedKey::Auto,
            2 => PackedKey::Param,
            _ => return r.fail("a key source's code"),
        };
        let idempotent = r.flag()?;
        let max_retry_after = r.dur()?;
        let budget = match r.present()? {
            None => None,
            Some(n) => Some((n, r.float()?, r.small()?)),
        };
        let breaker = match r.present()? {
            None => None,
            Some(n) => Some((
                n,
                PackedBreaker {
                    failure_rate: r.float()?,
                    min_calls: r.small()?,
                    window: r.small()?,
                    open_for: r.dur()?,
                    half_open_calls: r.small()?,
                    window_for: r.dur()?,
                    slow_call_duration: r.dur()?,
                    slow_call_rate: r.float()?,
                },
            )),
        };
        let bulkhead = match r.present()? {
            None => None,
            Some(n) => Some((n, r.small()?, r.dur()?)),
        };
        let rate_limit = match r.present()? {
            None => None,
            Some(n) => Some((
                n,
                PackedRateLimit {
                    rate: r.small()?,
                    per: r.dur()?,
                    burst: r.small()?,
                    max_wait: r.dur()?,
                    store: if r.flag()? {
                        RateStore::Redis
                    } else {
                        RateStore::Local
                    },
                },
            )),
        };
        let concurrency = match r.present()? {
            None => None,
            Some(n) => Some((
                n,
                PackedConcurrency {
                    initial: r.small()?,
                    min: r.small()?,
                    max: r.small()?,
                    latency: r.dur()?,
                    backoff: r.float()?,
                    max_wait: r.dur()?,
                },
            )),
        };
        let hedge = if r.flag()? {
            Some((r.dur()?, r.small()?))
        } else {
            None
        };
        let unseen = r.method()?;
        let sends_seen = r.flag()?;
        let connect_timeout = if r.flag()? { Some(r.dur()?) } else { None };
        if r.at != text.len() {
            return r.fail("the end");
        }
        Ok(Packed {
            name,
            method,
            timeout,
            deadline,
            max_attempts,
            backoff_constant,
            backoff_initial,
            backoff_max,
            backoff_multiplier_milli,
            jitter,
            retry_connect,
            retry_reset,
            retry_timeout,
            retry_statuses,
            key,
            idempotent,
            max_retry_after,
            budget,
            breaker,
            bulkhead,
            rate_limit,
            concurrency,
            hedge,
            unseen,
            sends_seen,
            connect_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_part<'a>(name: &'a str, shared: &'a str) -> Packed<'a> {
        Packed {
            name,
            method: Method::Patch,
            timeout: Duration::new(2, 500),
            deadline: Duration::from_secs(10),
            max_attempts: 4,
            backoff_constant: true,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_multiplier_milli: 1500,
            jitter: PackedJitter::Decorrelated,
            retry_connect: true,
            retry_reset: false,
            retry_timeout: true,
            retry_statuses: vec![408, 503],
            key: PackedKey::Param,
            idempotent: true,
            max_retry_after: Duration::from_secs(30),
            budget: Some((shared, 0.1, 10)),
            breaker: Some((
                "",
                PackedBreaker {
                    failure_rate: 0.5,
                    min_calls: 10,
                    window: 20,
                    open_for: Duration::from_secs(30),
                    half_open_calls: 3,
                    window_for: Duration::from_millis(1500),
                    slow_call_duration: Duration::from_nanos(7),
                    slow_call_rate: 0.25,
                },
            )),
            bulkhead: Some((shared, 50, Duration::from_millis(5))),
            rate_limit: Some((
                shared,
                PackedRateLimit {
                    rate: 100,
                    per: Duration::from_secs(1),
                    burst: 20,
                    max_wait: Duration::ZERO,
                    store: RateStore::Redis,
                },
            )),
            concurrency: Some((
                "c",
                PackedConcurrency {
                    initial: 16,
                    min: 1,
                    max: 256,
                    latency: Duration::from_millis(250),
                    backoff: 0.9,
                    max_wait: Duration::from_millis(1),
                },
            )),
            hedge: Some((Duration::from_millis(50), 2)),
            unseen: Method::Other,
            sends_seen: true,
            connect_timeout: Some(Duration::from_millis(750)),
        }
    }

    #[test]
    fn every_field_comes_back_as_written() {
        // Names with the format's own separators and non-ASCII text in them.
        for (name, shared) in [("payments", "pg"), ("a,b:c", "1:x,"), ("ü", ""), ("", ",")] {
            let p = every_part(name, shared);
            let text = p.pack();
            assert_eq!(Packed::unpack(&text), Ok(p.clone()), "{text}");
        }
        // And a policy with no optional part at all, every method in turn.
        for m in Method::NAMED.iter().copied().chain([Method::Other]) {
            let p = Packed {
                method: m,
                unseen: m,
                sends_seen: false,
                retry_statuses: vec![],
                budget: None,
                breaker: None,
                bulkhead: None,
                rate_limit: None,
                concurrency: None,
                hedge: None,
                connect_timeout: None,
                key: PackedKey::None,
                jitter: PackedJitter::None,
                ..every_part("", "")
            };
            assert_eq!(Packed::unpack(&p.pack()), Ok(p.clone()));
        }
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let text = every_part("payments", "pg").pack();
        // Every prefix, and the text with one byte changed at each place, is refused or
        // read, never a panic; a prefix is always refused.
        for end in 0..text.len() {
            if text.is_char_boundary(end) {
                assert!(Packed::unpack(&text[..end]).is_err(), "prefix {end}");
            }
        }
        for i in 0..text.len() {
            for b in [b'9', b',', b':', b'x'] {
                let mut bytes = text.clone().into_bytes();
                bytes[i] = b;
                if let Ok(s) = String::from_utf8(bytes) {
                    let _ = Packed::unpack(&s);
                }
            }
        }
        // A length past `usize`'s end once overflowed (a panic in a debug build).
        let colon = text.find(':').expect("a string in the text");
        let digits = text[..colon]
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        let huge = format!("{}18446744073709551615{}", &text[..digits], &text[colon..]);
        assert!(Packed::unpack(&huge).is_err());
        let err = Packed::unpack("rp0,").unwrap_err();
        assert_eq!(err.expected, "the version tag");
        assert!(err.to_string().contains("same release"), "{err}");
        assert!(
            Packed::unpack(&format!("{text}1,")).is_err(),
            "trailing bytes"
        );
    }
}
