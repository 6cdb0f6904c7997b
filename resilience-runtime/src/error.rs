//! The ready-made error type: works with `?` on reqwest calls and tells every failure apart by kind.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::class::Class;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, without parsing strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The function's own failure (a transport error, an error status, a decode error, its own
    /// logic), returned after the last attempt it was allowed.
    Call,
    /// The last attempt ran out of its per-attempt `timeout`.
    AttemptTimeout,
    /// The call's total `deadline` ran out during an attempt, or before one could begin with
    /// time to send: while it waited for a bulkhead or concurrency slot or a rate-limit permit
    /// (class `Rejected`, 0 attempts: [`Error::is_rejected`]), or handed no time at all (class
    /// `Timeout`, 0 attempts: nothing sent, but not counted as a refusal, nor `is_rejected`).
    DeadlineExceeded,
    /// The circuit breaker is open: the call failed fast without sending (or, when it opened
    /// between attempts, without sending again: [`Error::attempts`] says how many ran).
    CircuitOpen,
    /// A retry was due but the retry budget was exhausted.
    BudgetExhausted,
    /// The bulkhead had no free slot: the call failed fast without sending.
    BulkheadFull,
    /// The client-side rate limit had no permit within `max_wait`: the call failed fast
    /// without sending.
    RateLimited,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Call => "call failed",
            ErrorKind::AttemptTimeout => "attempt timed out",
            ErrorKind::DeadlineExceeded => "deadline exceeded",
            ErrorKind::CircuitOpen => "circuit breaker open",
            ErrorKind::BudgetExhausted => "retry budget exhausted",
            ErrorKind::BulkheadFull => "bulkhead full",
            ErrorKind::RateLimited => "rate limited",
        }
    }
}

/// The error of a resilient call.
///
/// `?` converts `reqwest::Error` (and any `std::error::Error + Send + Sync`, through
/// [`Error::call`]) into it. After the call, [`Error::kind`] says what happened and
/// [`Error::attempts`] how many attempts ran.
pub struct Error {
    kind: ErrorKind,
    class: Option<Class>,
    /// The call that last returned this error, when one did (0: none): see
    /// [`Error::set_origin`].
    origin: u16,
    /// Everything else (the attempts, the status, the time, the cause and the key), when there
    /// is any, behind one pointer: every `Result` that holds an error (on the happy path too,
    /// in every layer that moves it) is two words, returned in two registers, not copied
    /// through memory. An error the runtime returns after attempts ran has one allocation
    /// more; a refusal before any attempt (an open breaker) has none.
    detail: Option<Box<Detail>>,
}

/// What an error holds off the happy path's `Result`s.
struct Detail {
    attempts: u32,
    status: Option<u16>,
    /// Nanoseconds, `u64::MAX` when not measured: a plain word.
    elapsed_ns: u64,
    /// The call's `Idempotency-Key`, set on the error path only.
    key: Option<String>,
    /// The last attempt sent a request that needs the key and reached a server (answered,
    /// or failed after it may have arrived): where the failure sent nothing itself (a
    /// connect failure), it was another request's.
    reached: bool,
    /// An attempt before the last may have been carried out under the key (it timed out,
    /// lost its connection, was answered): whatever the last one's failure says.
    carried: bool,
    /// Every request of the last attempt that needs the key was answered with a refusal (a
    /// 4xx), or none was sent: whatever the attempt then failed on (a timeout on other work, a
    /// GET's 503), nothing was carried out under the key.
    settled: bool,
    /// The wait the last answer's `Retry-After` asked for.
    retry_after: Option<Duration>,
    /// The attempts of the call whose fallback returned this error (it failed too), beside
    /// the fallback's own (`attempts`): 0 for any other error.
    fallback_after: u32,
    /// The attempts of the calls this error came back through (a nested call's error returned
    /// by the enclosing function), the largest: they ran too. `attempts` stays the count of
    /// the call that made it, which alone says whether a request of its own went out.
    enclosing: u32,
    /// What the calls this error came back through wrote of themselves where they could not
    /// reach the error (see [`enclosing`]): made when the error leaves a nested call.
    around: Option<std::sync::Arc<enclosing::Around>>,
    /// `source` marked as a nested call's (see [`carried`]): unmarked when dropped, before
    /// `source` is (fields drop in order).
    mark: carried::Mark,
    source: Option<BoxError>,
}

impl Default for Detail {
    fn default() -> Detail {
        Detail {
            attempts: 0,
            status: None,
            elapsed_ns: u64::MAX,
            key: None,
            reached: false,
            carried: false,
            settled: false,
            retry_after: None,
            fallback_after: 0,
            enclosing: 0,
            around: None,
            source: None,
            mark: carried::Mark::NONE,
        }
    }
}

impl Error {
    /// An error of the given kind, with no cause.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind,
            class: None,
            origin: 0,
            detail: None,
        }
    }

    /// The function's own failure, wrapping its cause.
    pub fn call(source: impl Into<BoxError>) -> Error {
        let mut source = source.into();
        // reqwest's error shows its URL ("for url (…)"): shown as a span's is, no
        // credentials, no signatures or tokens of its query.
        let status = source
            .downcast_mut::<reqwest::Error>()
            .and_then(|e| {
                redact_url(e);
                e.status()
            })
            .map(|s| s.as_u16());
        Error {
            detail: Some(Box::new(Detail {
                status,
                source: Some(source),
                ..Detail::default()
            })),
            ..Error::new(ErrorKind::Call)
        }
    }

    /// The function's own failure on an HTTP status (for a response the body chose not to accept).
    pub fn status(status: reqwest::StatusCode) -> Error {
        Error {
            class: Some(Class::Status(status.as_u16())),
            detail: Some(Box::new(Detail {
                status: Some(status.as_u16()),
                ..Detail::default()
            })),
            ..Error::new(ErrorKind::Call)
        }
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// How many attempts ran before this error was returned (0: none was allowed to start).
    /// An error that came back through a call around the one that made it (a nested call's,
    /// returned by the enclosing function) says the larger count: the enclosing call's
    /// attempts ran too.
    pub fn attempts(&self) -> u32 {
        self.detail.as_ref().map_or(0, |d| {
            let made = d.attempts.saturating_add(d.fallback_after).max(d.enclosing);
            d.around.as_ref().map_or(made, |a| made.max(a.attempts()))
        })
    }

    /// The attempts of the call that made this error alone (not of the calls around it, nor
    /// of a call that failed before its fallback made it): whether a request of its own went
    /// out.
    fn made_attempts(&self) -> u32 {
        self.detail.as_ref().map_or(0, |d| d.attempts)
    }

    /// What the calls around the one that made this error wrote of themselves, where it
    /// applies: to an error with no key of its own (see [`enclosing`]).
    fn around_keyed(&self) -> Option<&enclosing::Around> {
        let d = self.detail.as_ref()?;
        d.key.is_none().then_some(())?;
        d.around.as_deref()
    }

    /// The id of the record the calls around the one that made this error write into, once
    /// it left a nested call (see [`enclosing`]).
    pub(crate) fn record(&self) -> Option<u32> {
        Some(self.detail.as_ref()?.around.as_ref()?.id())
    }

    /// The error leaves a nested call for the attempt around it: the enclosing call can write
    /// its attempts and key into it even where its function's own error type holds it out of
    /// reach (see [`enclosing`]). Nothing outside an attempt.
    #[cold]
    #[inline(never)]
    pub(crate) fn leaving(&mut self) {
        let _ = crate::context::with_attempt(|outer| {
            let d = self.detail_mut();
            outer.note_returned(enclosing::register(&mut d.around));
        });
    }

    /// The failure class of the last attempt, when one ran.
    pub fn class(&self) -> Option<Class> {
        self.class
    }

    /// The HTTP status of the last response the last attempt that ran got, when there was
    /// one: an error status, or a 2xx or 3xx the function could not read or refused. None when
    /// that attempt's last request got no answer (it timed out, lost its connection).
    pub fn http_status(&self) -> Option<u16> {
        self.detail.as_ref()?.status
    }

    /// Time from the start of the call to this error, when the runtime measured it.
    pub fn elapsed(&self) -> Option<Duration> {
        let ns = self.detail.as_ref()?.elapsed_ns;
        (ns != u64::MAX).then(|| Duration::from_nanos(ns))
    }

    /// The wait the last attempt's answer asked for in its `Retry-After` (a 429 or 503 "come
    /// back in 120 s"), when it had one: a call that gave up because the wait was longer than
    /// its `max_retry_after` or its time left tells its caller when the dependency will take
    /// the request again (to pass on in its own answer's `Retry-After`, say).
    pub fn retry_after(&self) -> Option<Duration> {
        self.detail.as_ref()?.retry_after
    }

    pub(crate) fn set_retry_after(&mut self, wait: Option<Duration>) {
        if wait.is_some() {
            self.detail_mut().retry_after = wait;
        }
    }

    /// The `Idempotency-Key` the call sent on every attempt, when it was keyed (`auto` or a
    /// parameter): what a call that failed after a request may have been carried out leaves
    /// the caller to look the outcome up with, or to ask again with (a server that replays by
    /// key answers a request with this key with that outcome). A keyed call refused before
    /// any attempt (its bulkhead, rate limit or deadline) names the key it would have sent:
    /// no request carried it, and the message says no attempt ran.
    pub fn idempotency_key(&self) -> Option<&str> {
        let d = self.detail.as_ref()?;
        d.key
            .as_deref()
            .or_else(|| d.around.as_ref()?.key.get().map(String::as_str))
    }

    /// The key of the call this error came back through, where the error holds a key of its
    /// own: a nested keyed call's error (`send_receipt(…).await?` after the call's own keyed
    /// charge) names the receipt's key in [`idempotency_key`](Self::idempotency_key), and the
    /// charge's here. The message names it too when the charge may have been carried out.
    pub fn enclosing_idempotency_key(&self) -> Option<&str> {
        let d = self.detail.as_ref()?;
        d.key.as_deref()?;
        let theirs = d.around.as_ref()?.key.get()?;
        self.same_key_around().is_none().then_some(theirs.as_str())
    }

    /// What the calls around the one that made this error wrote of themselves, where they
    /// were keyed with this error's own key: one key, bare or quoted (`KeyFormat::Quoted`), as
    /// the server layer takes them.
    fn same_key_around(&self) -> Option<&enclosing::Around> {
        let d = self.detail.as_ref()?;
        let own = d.key.as_deref()?;
        let a = d.around.as_deref()?;
        let theirs = a.key.get()?;
        (crate::context::unquoted(theirs.as_bytes()) == crate::context::unquoted(own.as_bytes()))
            .then_some(a)
    }

    /// An attempt timeout or the deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::AttemptTimeout | ErrorKind::DeadlineExceeded
        )
    }

    /// True when the call was refused before any attempt ran (breaker, bulkhead, rate
    /// limit, or the deadline reached while it waited for a bulkhead slot, a concurrency slot
    /// or a permit: `DeadlineExceeded` of class `Rejected`): nothing was sent. A breaker that
    /// opens between attempts ends the call `CircuitOpen` after attempts that ran, which may
    /// have been carried out: not rejected, and its class (and the key's note in the message)
    /// is the last attempt's.
    pub fn is_rejected(&self) -> bool {
        self.attempts() == 0
            && (matches!(
                self.kind,
                ErrorKind::CircuitOpen | ErrorKind::BulkheadFull | ErrorKind::RateLimited
            ) || self.kind == ErrorKind::DeadlineExceeded
                && self.class() == Some(Class::Rejected))
    }

    /// The wrapped cause, as its concrete type.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.source_box().and_then(|s| s.downcast_ref::<T>())
    }

    /// The last attempt's request that needs the key reached a server (see [`Detail`]).
    pub(crate) fn set_reached(&mut self) {
        self.detail_mut().reached = true;
    }

    /// An attempt of the call may have been carried out under its key (see [`Detail`]).
    pub(crate) fn set_carried(&mut self) {
        self.detail_mut().carried = true;
    }

    /// Whether the last attempt carried out nothing under the key (see [`Detail`]), as the
    /// call that returns this error last found it.
    pub(crate) fn set_settled(&mut self, settled: bool) {
        if settled || self.detail.is_some() {
            self.detail_mut().settled = settled;
        }
    }

    /// The key this error holds of its own (not one a call around it wrote in its record).
    pub(crate) fn held_key(&self) -> Option<&str> {
        self.detail.as_ref()?.key.as_deref()
    }

    /// The status of the answer the function refused (see `Probe::note`), unless the error
    /// already has one.
    pub(crate) fn set_answered(&mut self, status: Option<u16>) {
        if let Some(s) = status
            && self.http_status().is_none()
        {
            self.detail_mut().status = Some(s);
        }
    }

    /// What the error holds besides its kind, class and origin, made when first written.
    fn detail_mut(&mut self) -> &mut Detail {
        self.detail.get_or_insert_with(Box::default)
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Error {
        if attempts != self.attempts() {
            self.detail_mut().attempts = attempts;
        }
        self
    }

    pub(crate) fn with_class(mut self, class: Option<Class>, status: Option<u16>) -> Error {
        self.class = class.or(self.class);
        if let Some(s) = status {
            self.detail_mut().status = Some(s);
        }
        self
    }

    pub(crate) fn with_elapsed(mut self, elapsed: Duration) -> Error {
        self.detail_mut().elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX - 1);
        self
    }

    /// Records the attempts of the call that made this error (or returned it again).
    pub(crate) fn set_attempts(&mut self, attempts: u32) {
        if attempts > self.made_attempts() {
            self.detail_mut().attempts = attempts;
        }
    }

    /// Records the attempts of a call this error came back through (a nested call's error
    /// returned by the enclosing function): [`attempts`](Self::attempts) says the larger count.
    pub(crate) fn set_enclosing_attempts(&mut self, attempts: u32) {
        if attempts > self.detail.as_ref().map_or(0, |d| d.enclosing) {
            self.detail_mut().enclosing = attempts;
        }
    }

    /// The error a fallback returned after its call failed with `attempts` (see
    /// [`crate::fallback::FallbackFailed`]): those attempts ran too, counted in
    /// [`attempts`](Self::attempts) beside the fallback's own, and the message says the call
    /// failed first. What the fallback's error says of its own requests (none sent, none
    /// carried out under its key) stays its own.
    pub(crate) fn fallback_failed_after(&mut self, attempts: u32) {
        if attempts == 0 {
            return;
        }
        let d = self.detail_mut();
        d.fallback_after = d.fallback_after.saturating_add(attempts);
    }

    /// Records the call's key, unless the error already holds one: an error out of a nested
    /// call keeps that call's key, the one its request carried.
    pub(crate) fn set_key(&mut self, key: Option<&crate::context::Key>) {
        if self.idempotency_key().is_none()
            && let Some(key) = key
        {
            self.detail_mut().key = Some(key.to_string());
        }
    }

    /// The token of the call returning this error (its session's, drawn on its error path):
    /// an enclosing call tells by it whether the error it gets is one a nested call already
    /// retried as far as its policy allowed.
    pub(crate) fn set_origin(&mut self, token: u16) {
        self.origin = token;
        // Its cause marked too: an enclosing call whose error holds this one's cause but not
        // this one (a `#[error(transparent)]` variant) still finds it came back.
        if let Some(d) = self.detail.as_deref_mut()
            && let Some(source) = d.source.as_deref()
        {
            d.mark.set(source, token);
        }
    }

    pub(crate) fn origin(&self) -> u16 {
        self.origin
    }

    fn source_box(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.detail.as_ref()?.source.as_deref()
    }

    pub(crate) fn set_class(&mut self, class: Option<Class>) {
        if class.is_some() {
            self.class = class;
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("attempts", &self.attempts());
        if let Some(c) = self.class {
            d.field("class", &c);
        }
        if let Some(s) = self.http_status() {
            d.field("status", &s);
        }
        if let Some(k) = self.idempotency_key() {
            d.field("idempotency_key", &k);
        }
        if let Some(s) = self.source_box() {
            d.field("source", &s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A fallback's error: the call failed first, its attempts said; then the fallback's
        // own.
        let fallen = self.detail.as_ref().map_or(0, |d| d.fallback_after);
        match fallen {
            0 => {}
            1 => f.write_str("1 attempt failed, then its fallback: ")?,
            n => write!(f, "{n} attempts failed, then its fallback: ")?,
        }
        f.write_str(self.kind.describe())?;
        let own = if fallen == 0 {
            self.attempts()
        } else {
            self.made_attempts()
        };
        // A refusal before any attempt (a breaker, a bulkhead, a rate limit, no time left):
        // it says so, and names no failure that never happened.
        let before_any = own == 0
            && matches!(
                self.kind,
                ErrorKind::CircuitOpen
                    | ErrorKind::BulkheadFull
                    | ErrorKind::RateLimited
                    | ErrorKind::DeadlineExceeded
            );
        match own {
            0 if before_any => f.write_str(" before any attempt")?,
            0 => {}
            1 => f.write_str(" after 1 attempt")?,
            n => write!(f, " after {n} attempts")?,
        }
        if let Some(s) = self.http_status() {
            match self.retry_after() {
                Some(wait) => write!(
                    f,
                    " (last status {s}, Retry-After {}s)",
                    wait.as_secs_f64().ceil()
                )?,
                None => write!(f, " (last status {s})")?,
            }
        } else if let Some(c) = self
            .class
            .filter(|_| self.kind != ErrorKind::Call && !before_any)
        {
            write!(f, " (last failure: {c})")?;
        }
        if let Some(key) = self.idempotency_key()
            && self.may_have_been_carried_out()
        {
            write!(
                f,
                " [Idempotency-Key {key}: the request may have been carried out; a request with this key gets its outcome]"
            )?;
        }
        if let Some(key) = self.enclosing_idempotency_key()
            && self
                .detail
                .as_ref()
                .and_then(|d| d.around.as_deref())
                .is_some_and(|a| a.carried_last() || a.carried())
        {
            write!(
                f,
                " [the enclosing call's Idempotency-Key {key}: its request may have been carried out]"
            )?;
        }
        if let Some(src) = self.source_box() {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl Error {
    /// Whether an attempt may have been carried out: an earlier one (see [`Detail`]), or the
    /// last: it timed out, lost its connection, or was answered 5xx or 409 (still in
    /// progress), or answered 2xx or 3xx and the function refused the answer (a body that
    /// did not decode). Not a 408 or 429: the server refused the request before acting on it.
    fn may_have_been_carried_out(&self) -> bool {
        // No attempt ran anywhere (refused, no time left): nothing was sent.
        if self.attempts() == 0 {
            return false;
        }
        // The call this error came back through, for its own key (see [`enclosing`]): what it
        // knew of its attempts.
        let around = self.around_keyed();
        if self.detail.as_ref().is_some_and(|d| d.carried) || around.is_some_and(|a| a.carried()) {
            return true;
        }
        // A timeout after the attempt's keyed requests were refused: nothing of the last
        // attempt's was carried out.
        if self
            .detail
            .as_ref()
            .is_some_and(|d| d.settled && d.key.is_some())
        {
            return false;
        }
        // The key is the call's around it (a nested call's unkeyed error): this error's own
        // failure says nothing of that call's request, only what the call knew does.
        if let Some(a) = around
            && a.key.get().is_some()
        {
            return a.carried_last();
        }
        // The call that made this error ran no attempt (refused, no time left), whatever the
        // calls around it ran: its own failure says nothing was carried out under its key;
        // a call around it under the same key (a nested call given its enclosing call's key)
        // says what it knew of its own requests under it.
        if self.made_attempts() == 0 {
            return self
                .same_key_around()
                .is_some_and(|a| a.carried() || a.carried_last());
        }
        match self.class {
            Some(class) => class.may_have_carried_out(
                self.http_status(),
                self.detail.as_ref().is_some_and(|d| d.reached),
            ),
            None => self.is_timeout(),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source_box().map(|s| s as &(dyn StdError + 'static))
    }
}

/// The causes of errors that nested calls returned, by address, with the returning call's
/// token. A service's error type that holds the runtime's [`Error`] in an
/// `#[error(transparent)]` variant forwards `source()` to that error's own cause, skipping the
/// error: an enclosing call reading it finds the cause, and through it that a nested call
/// already retried it as far as its policy allowed (not to be retried again around it). An
/// error without a cause (a refusal, a timeout) leaves nothing to find: its kind is hidden
/// from `fallback_on` there. Marked when the error leaves a nested call, unmarked when it is
/// dropped; a cause of no size (all at one address) is not marked.
pub(crate) mod carried {
    use std::collections::HashMap;
    use std::error::Error as StdError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{LazyLock, Mutex, MutexGuard};

    /// The marks, by address, in shards (a failing dependency marks an error on every nested
    /// call that gives up, from every thread at once).
    static MARKS: LazyLock<[Mutex<HashMap<usize, u16>>; 16]> =
        LazyLock::new(|| std::array::from_fn(|_| Mutex::new(HashMap::new())));
    /// How many are marked: none, no lock taken to look.
    static COUNT: AtomicUsize = AtomicUsize::new(0);

    fn shard(at: usize) -> MutexGuard<'static, HashMap<usize, u16>> {
        MARKS[(at >> 4) % 16]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn address(e: &(dyn StdError + 'static)) -> usize {
        std::ptr::from_ref(e).cast::<()>() as usize
    }

    /// A cause's mark, held by the error that holds the cause, before the cause (so that it is
    /// dropped first: the cause's memory is not freed, and taken by another, while marked).
    #[derive(Debug, Default)]
    pub(crate) struct Mark(usize);

    impl Mark {
        pub(crate) const NONE: Mark = Mark(0);

        #[cold]
        pub(crate) fn set(&mut self, cause: &(dyn StdError + Send + Sync + 'static), token: u16) {
            if std::mem::size_of_val(cause) == 0 {
                return;
            }
            let at = address(cause);
            if self.0 != 0 && self.0 != at {
                self.unmark();
            }
            if shard(at).insert(at, token).is_none() {
                COUNT.fetch_add(1, Ordering::Relaxed);
            }
            self.0 = at;
        }

        fn unmark(&mut self) {
            if shard(self.0).remove(&self.0).is_some() {
                COUNT.fetch_sub(1, Ordering::Relaxed);
            }
            self.0 = 0;
        }
    }

    impl Drop for Mark {
        fn drop(&mut self) {
            if self.0 != 0 {
                self.unmark();
            }
        }
    }

    /// The token of the nested call's error whose cause is in `err`'s source chain (`err`
    /// included), if one is marked.
    pub(crate) fn find(err: &(dyn StdError + 'static)) -> Option<u16> {
        if COUNT.load(Ordering::Relaxed) == 0 {
            return None;
        }
        find_in(err)
    }

    #[cold]
    fn find_in(err: &(dyn StdError + 'static)) -> Option<u16> {
        // The chain's addresses first, no lock held while its `source()`s run (bounded: a
        // chain that loops on itself is not walked for ever).
        let mut chain = [0usize; 64];
        let mut cur = Some(err);
        let mut n = 0;
        while let Some(e) = cur
            && n < chain.len()
        {
            chain[n] = address(e);
            n += 1;
            cur = e.source();
        }
        chain[..n].iter().find_map(|at| shard(*at).get(at).copied())
    }
}

/// What the calls a nested call's error comes back through know of themselves, written where
/// the error cannot be reached. A function whose error type is its own (a `thiserror` enum
/// holding the runtime's [`Error`] in a variant) returns a nested call's error inside it: the
/// enclosing call cannot write its attempts and key into that error as it does into its own
/// (an open breaker refusing the nested call after the enclosing call's keyed POST was charged
/// would say "nothing was sent", no key). So an error leaving a nested call holds a shared
/// record, registered by an id in the enclosing attempt ([`Error::leaving`]); the enclosing
/// call writes into the record when its attempt fails with an error of a type it cannot note,
/// and passes the id on to the attempt it is nested in. Off the happy path: made only as an
/// error leaves a nested call.
pub(crate) mod enclosing {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, Weak};

    /// The record, shared by the error and the registry (weakly: dropped with the error).
    #[derive(Debug)]
    pub(crate) struct Around {
        id: u32,
        attempts: AtomicU32,
        /// The key of the innermost call around the error that was keyed: the one the
        /// flags below speak of.
        pub(crate) key: OnceLock<String>,
        /// That call's own request under the key, in the attempt the error came back into,
        /// may have been carried out.
        carried_last: AtomicBool,
        /// One of that call's earlier attempts may have been carried out under the key.
        carried: AtomicBool,
    }

    impl Around {
        pub(crate) fn id(&self) -> u32 {
            self.id
        }
        pub(crate) fn attempts(&self) -> u32 {
            self.attempts.load(Ordering::Relaxed)
        }
        pub(crate) fn carried_last(&self) -> bool {
            self.carried_last.load(Ordering::Relaxed)
        }
        pub(crate) fn carried(&self) -> bool {
            self.carried.load(Ordering::Relaxed)
        }
    }

    impl Drop for Around {
        fn drop(&mut self) {
            // Its own entry only: after the ids wrapped, a newer record may hold this id.
            let me: *const Around = self;
            let mut shard = shard(self.id);
            if shard.get(&self.id).is_some_and(|w| w.as_ptr() == me) {
                shard.remove(&self.id);
            }
        }
    }

    /// Whether the record `id` names is still held by an error.
    pub(crate) fn alive(id: u32) -> bool {
        shard(id).get(&id).is_some_and(|w| w.strong_count() > 0)
    }

    /// The records by id, in shards (a failing dependency fails nested calls on every thread
    /// at once).
    type Shard = Mutex<HashMap<u32, Weak<Around>>>;
    static SHARDS: LazyLock<[Shard; 16]> =
        LazyLock::new(|| std::array::from_fn(|_| Mutex::new(HashMap::new())));
    static NEXT: AtomicU32 = AtomicU32::new(0);

    fn shard(id: u32) -> MutexGuard<'static, HashMap<u32, Weak<Around>>> {
        SHARDS[(id % 16) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The record's id, made and registered the first time (never 0).
    pub(crate) fn register(around: &mut Option<Arc<Around>>) -> u32 {
        if let Some(a) = around {
            return a.id;
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1);
        let a = Arc::new(Around {
            id,
            attempts: AtomicU32::new(0),
            key: OnceLock::new(),
            carried_last: AtomicBool::new(false),
            carried: AtomicBool::new(false),
        });
        shard(id).insert(id, Arc::downgrade(&a));
        *around = Some(a);
        id
    }

    /// What the call around the error knows: its attempts (the larger count kept), its key
    /// (the first written kept: the innermost keyed call's), and, for that key, whether its
    /// own request in this attempt (`carried_last`) or an earlier attempt (`carried`) may have
    /// been carried out. False when the error is gone.
    pub(crate) fn write(
        id: u32,
        attempts: u32,
        key: Option<&crate::context::Key>,
        carried_last: bool,
        carried: bool,
    ) -> bool {
        let Some(a) = shard(id).get(&id).and_then(Weak::upgrade) else {
            return false;
        };
        a.attempts.fetch_max(attempts, Ordering::Relaxed);
        if let Some(key) = key
            && key.is_text(a.key.get_or_init(|| key.to_string()).as_bytes())
        {
            if carried_last {
                a.carried_last.store(true, Ordering::Relaxed);
            }
            if carried {
                a.carried.store(true, Ordering::Relaxed);
            }
        }
        true
    }
}

/// `e`'s URL as [`crate::telemetry`] shows it on a span.
#[cold]
fn redact_url(e: &mut reqwest::Error) {
    if let Some(url) = e.url_mut()
        && let std::borrow::Cow::Owned(shown) = crate::telemetry::span::redacted(url)
        && let Ok(shown) = reqwest::Url::parse(&shown)
    {
        *url = shown;
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        Error::call(e)
    }
}

/// An `io::Error` that carries the runtime's own (a nested `io::Result` function's refusal or
/// timeout, `?`'d into a function returning [`Error`]) gives it back, its kind kept (a
/// `fallback_on = [circuit_open]`, `is_rejected()`, `is_timeout()` read it); any other is the
/// function's own error.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::call(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(own)) => *own,
            // Not reached: the inner error was the runtime's.
            Some(Err(other)) => Error::call(std::io::Error::new(kind, other)),
            None => Error::call(std::io::Error::from(kind)),
        }
    }
}

impl From<reqwest::header::InvalidHeaderValue> for Error {
    fn from(e: reqwest::header::InvalidHeaderValue) -> Error {
        Error::call(e)
    }
}

/// So that a function returning `std::io::Result<T>` can use `#[resilient]`: timeouts and the
/// deadline become [`TimedOut`](std::io::ErrorKind::TimedOut), everything else
/// [`Other`](std::io::ErrorKind::Other); the [`Error`] itself stays inside, reachable with
/// `get_ref()` and `downcast`.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        let kind = match e.kind {
            ErrorKind::AttemptTimeout | ErrorKind::DeadlineExceeded => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// So that a function returning `reqwest_middleware::Result<T>` can use `#[resilient]`: the
/// [`Error`] travels as the middleware error, reachable with `downcast_ref` on it.
#[cfg(feature = "reqwest-middleware")]
impl From<Error> for reqwest_middleware::Error {
    fn from(e: Error) -> reqwest_middleware::Error {
        reqwest_middleware::Error::Middleware(anyhow::Error::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_stays_two_words() {
        // Every `Result<T, Error>` of every call carries this much on the happy path too; at
        // two words, with `T` a word, it is returned in registers.
        assert!(
            std::mem::size_of::<Error>() <= 16,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn the_runtimes_error_comes_back_out_of_an_io_error() {
        let refused = Error::new(ErrorKind::CircuitOpen);
        let back = Error::from(std::io::Error::from(refused));
        assert_eq!(back.kind(), ErrorKind::CircuitOpen, "{back}");
        let other = Error::from(std::io::Error::other("disk full"));
        assert_eq!(other.kind(), ErrorKind::Call, "{other}");
    }

    /// A keyed fallback handed no time (its deadline before any attempt of its own) after
    /// its call failed three times: its error counts those attempts, and says the call failed
    /// first, but not that a request under its own key may have been carried out (none was
    /// sent); nor "before any attempt" of an attempt timeout, which a refusal never is.
    #[test]
    fn a_fallbacks_error_counts_the_calls_attempts_but_speaks_of_its_own_requests() {
        let mut e = Error::new(ErrorKind::DeadlineExceeded);
        e.set_class(Some(Class::Timeout));
        e.detail_mut().key = Some("k2".into());
        assert_eq!(e.to_string(), "deadline exceeded before any attempt");
        e.fallback_failed_after(3);
        assert_eq!(e.attempts(), 3);
        assert!(!e.is_rejected());
        assert_eq!(
            e.to_string(),
            "3 attempts failed, then its fallback: deadline exceeded before any attempt"
        );
        // Leaving through an enclosing call of 5 attempts (the larger count) or of 1 (the
        // fallen call's 3 stay): the counts are not mixed.
        let mut around = Error::new(ErrorKind::CircuitOpen);
        around.fallback_failed_after(3);
        around.set_enclosing_attempts(5);
        assert_eq!((around.attempts(), around.made_attempts()), (5, 0));
        assert_eq!(
            around.to_string(),
            "3 attempts failed, then its fallback: circuit breaker open before any attempt"
        );
        let mut around = Error::new(ErrorKind::CircuitOpen);
        around.fallback_failed_after(3);
        around.set_enclosing_attempts(1);
        assert_eq!((around.attempts(), around.made_attempts()), (3, 0));
        // A keyed call handed no time, its error leaving through a call whose attempt ran:
        // still nothing of its own carried out under its key.
        let mut keyed = Error::new(ErrorKind::DeadlineExceeded);
        keyed.set_class(Some(Class::Timeout));
        keyed.detail_mut().key = Some("k3".into());
        keyed.set_enclosing_attempts(2);
        assert_eq!(keyed.attempts(), 2);
        assert_eq!(
            keyed.to_string(),
            "deadline exceeded after 2 attempts (last failure: timeout)"
        );
        let mut e = Error::new(ErrorKind::AttemptTimeout);
        assert_eq!(e.to_string(), "attempt timed out");
        e.fallback_failed_after(1);
        assert_eq!(
            e.to_string(),
            "1 attempt failed, then its fallback: attempt timed out"
        );
    }

    #[test]
    fn elapsed_round_trips() {
        let e = Error::new(ErrorKind::Call);
        assert_eq!(e.elapsed(), None);
        let e = e.with_elapsed(Duration::from_millis(1500));
        assert_eq!(e.elapsed(), Some(Duration::from_millis(1500)));
    }
}
