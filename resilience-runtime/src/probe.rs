//! Compile-time dispatch on the function's error type (autoref specialization).
//!
//! The generated code calls `(&&&&&Probe::after(&mut err, n)).__resilience_class()`; method
//! resolution picks the most specific impl that applies to the concrete error type:
//! the runtime's own `Error`, then an explicit [`Classify`](crate::Classify) (falling back to
//! the source chain when the type is a `std::error::Error`), then any
//! `std::error::Error`, then boxed, `anyhow` and `eyre` errors, then nothing (the recorded response
//! decides). Each impl also writes the attempt count and the call's key into the error when it
//! can hold them.

#![allow(missing_docs)] // Not public API: what generated code names, hidden in `__private`.

use std::cell::Cell;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::classify::{Class, Classify, classify_error, runtime_kind};
use crate::context::Key;
use crate::error::{Error, ErrorKind};
use crate::session::Session;

pub struct Probe<'a, E>(
    Cell<Option<&'a mut E>>,
    u32,
    Option<&'a Key>,
    /// The last response's status, when the attempt got one.
    Option<u16>,
    /// The call's session (none in unit tests): its token, and what its nested calls gave up.
    Option<&'a Session>,
);

impl<E> std::fmt::Debug for Probe<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

impl<'a, E> Probe<'a, E> {
    pub fn new(err: &'a mut E, session: &'a Session) -> Self {
        Probe(
            Cell::new(Some(err)),
            session.attempts(),
            session.ctx.named_key(),
            session.last.status.get(),
            Some(session),
        )
    }

    #[cfg(test)]
    fn after(err: &'a mut E, attempts: u32) -> Self {
        Probe(Cell::new(Some(err)), attempts, None, None, None)
    }

    /// An error that a nested call of this attempt returned after retrying as far as its own
    /// policy allowed (it carries that call's token) is not retried again here: the session
    /// is told.
    fn came_back(&self, origin: u16) {
        if let Some(s) = self.4
            && origin != 0
            && origin != s.token.get()
        {
            // A nested call's failure: not the body's own response returned later.
            s.failure_nested.set(true);
            if s.last.gave_up.contains(&origin) {
                s.returned_inside.set(true);
            }
        }
    }

    /// [`came_back`](Self::came_back) for an error read through its source chain.
    fn came_back_in(&self, e: &(dyn StdError + 'static)) {
        if let Some(own) = crate::classify::runtime_error(e) {
            self.came_back(own.origin());
        } else if self.4.is_some()
            && let Some(origin) = crate::error::carried::find(e)
        {
            // The runtime's error hidden (an `#[error(transparent)]` variant): its cause,
            // marked as a nested call's.
            self.came_back(origin);
        }
    }

    /// An error of a type the runtime cannot write into, read through its source chain for a
    /// nested call's error ([`came_back_in`](Self::came_back_in)); what the call knows goes
    /// where it can ([`note_inside`](Self::note_inside)).
    fn note_within(&self, e: &(dyn StdError + 'static)) {
        self.came_back_in(e);
        self.note_inside();
    }

    /// What the call knows and its own error can hold: the attempts that ran, the key, the
    /// class the retry decision takes (the one found; else the recorded error status; else
    /// permanent, as for a body that did not decode), when an attempt ran.
    fn note(&self, own: &mut Error, class: Option<Class>) {
        // A nested call's error (it left that call, which wrote its token) keeps that call's
        // count as its own; this call's attempts ran too, the larger count said.
        let nested = self
            .4
            .is_some_and(|s| own.origin() != 0 && own.origin() != s.token.get());
        if nested {
            own.set_enclosing_attempts(self.1);
        } else {
            own.set_attempts(self.1);
        }
        // A nested call's error (it left that call, which wrote its token and made its
        // record): what this call's keyed requests did goes into its record, with the key,
        // and its message decides by that alone (its own failure, a nested GET's 503, says
        // nothing of this call's POST).
        let record = own.record().filter(|_| {
            self.4
                .is_some_and(|s| own.origin() != 0 && own.origin() != s.token.get())
        });
        // A nested call's error keeps its own key: what reached a server under this call's
        // key says nothing of it. An error holding this call's key (its own, made in an
        // earlier attempt and returned again; a nested call given this key) is this call's.
        let own_key = own
            .held_key()
            .is_none_or(|k| self.2.is_some_and(|c| c.is_text(k.as_bytes())));
        if record.is_none() {
            own.set_key(self.2);
        }
        let taken = class
            .or(self.4.and_then(|s| s.last.failure))
            .or_else(|| self.3.filter(|s| *s >= 400).map(Class::Status))
            .or((self.1 > 0).then_some(Class::Permanent));
        // The runtime's own refusals and limits keep the class they were given (a breaker
        // that opened between attempts: the last attempt's that ran).
        if own.kind() == ErrorKind::Call || own.class().is_none() {
            own.set_class(taken);
        }
        // A response the function refused (a body that did not decode, its own check): the
        // request was answered, so carried out; the error says with which status.
        // Not a nested call's error (it carries that call's token): the status this attempt
        // recorded last is another request's (the body's own GET before the nested call),
        // not the answer that call got or did not get.
        match taken {
            _ if own.origin() != 0 => {}
            Some(Class::Permanent) => own.set_answered(self.3.filter(|s| *s < 400)),
            // An error status the retry decision took from the recorded response (the body
            // failed on its answer without checking it): the error says it.
            Some(Class::Status(s)) => own.set_answered(Some(s)),
            _ => {}
        }
        if let Some(s) = self.4 {
            if let Some(id) = record {
                write_record(s, id, self.1, self.2);
            } else {
                // The error's key is this call's: a failure after its keyed requests were
                // refused (a 422, then a GET's 503) carried nothing out under it.
                // Of an attempt that ran: a refusal before the next began (the breaker, the
                // deadline) was written from the one before it (`Session::name_key`).
                if own_key && self.2.is_some() && s.last.began {
                    own.set_settled(s.last_settled());
                }
                if own_key && s.last.keyed_request_reached() {
                    own.set_reached();
                }
                if own_key && s.any_carried_out() {
                    own.set_carried();
                }
            }
            // A nested call's error (it carries that call's token) keeps the `Retry-After` its
            // own answer gave, or none.
            if own.origin() == 0 {
                own.set_retry_after(s.last.retry_after_for(taken));
            }
            self.came_back(own.origin());
            // Only a nested call's errors reach a call that reads their token.
            if s.nested {
                own.set_origin(token(s));
                own.leaving();
            }
        }
    }

    /// [`note`](Self::note) where the runtime's own error is reached (`own`), else
    /// [`note_inside`](Self::note_inside).
    fn note_or_inside(&self, own: Option<&mut Error>, class: Option<Class>) {
        match own {
            Some(own) => self.note(own, class),
            None => self.note_inside(),
        }
    }

    /// The error is of a type the runtime cannot write into (the function's own, or one a box
    /// or report holds): what the call knows goes into the records of the errors nested calls
    /// returned into this attempt (see [`crate::error::enclosing`]), one of which it may
    /// hold, and on up to the attempt this call is nested in.
    #[inline]
    fn note_inside(&self) {
        if let Some(s) = self.4
            && s.last.returned != [0; 4]
        {
            note_returned_errors(s, self.1, self.2);
        }
    }
}

#[cold]
#[inline(never)]
fn note_returned_errors(s: &Session, attempts: u32, key: Option<&Key>) {
    for id in s.last.returned {
        if id != 0 && write_record(s, id, attempts, key) && s.nested {
            let _ = crate::context::with_attempt(|outer| outer.note_returned(id));
        }
    }
}

/// What the call of session `s` knows, written into the record `id` of an error that left a
/// call nested in it ([`crate::error::enclosing::write`]); false when that error is gone.
fn write_record(s: &Session, id: u32, attempts: u32, key: Option<&Key>) -> bool {
    crate::error::enclosing::write(id, attempts, key, s.last.own_carried(), s.any_carried_out())
}

/// The session's token, drawn the first time its error path needs one. Never 0. Sixteen bits
/// fit inline in the error (two words); two calls of one attempt share a token only if 65,535
/// others drew one between them, and then the error of the one is taken for the other's: not
/// retried (the safe side).
pub(crate) fn token(s: &Session) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if s.token.get() == 0 {
        let t = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1);
        s.token.set(t);
    }
    s.token.get()
}

pub trait ViaOwn {
    fn __resilience_class(self) -> Option<Class>;
    /// The kind of the runtime `Error` the error is or wraps (for `fallback_on`).
    fn __resilience_kind(self) -> Option<ErrorKind>;
}
impl ViaOwn for &&&&&Probe<'_, Error> {
    fn __resilience_class(self) -> Option<Class> {
        let e = self.0.take()?;
        let class = classify_error(e);
        self.note(e, class);
        class
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        Some(self.0.take()?.kind())
    }
}

/// An error that classifies itself and is a `std::error::Error`: its own verdict first, and
/// where it has none (`None`), its source chain, as [`Classify`] documents. Beside the
/// runtime's own errors (the same trait, so that an error type the compiler could not work out
/// finds one candidate here, not two): neither of those implements `Classify`.
impl<E: Classify + StdError + 'static> ViaOwn for &&&&&Probe<'_, E> {
    fn __resilience_class(self) -> Option<Class> {
        let e = self.0.take()?;
        self.note_within(e);
        e.class().or_else(|| classify_error(e))
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        runtime_kind(self.0.take()?)
    }
}

pub trait ViaClassify {
    fn __resilience_class(self) -> Option<Class>;
    /// The kind of the runtime `Error` the error is or wraps (for `fallback_on`).
    fn __resilience_kind(self) -> Option<ErrorKind>;
}
impl<E: Classify> ViaClassify for &&&&Probe<'_, E> {
    fn __resilience_class(self) -> Option<Class> {
        let class = self.0.take()?.class();
        self.note_inside();
        class
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        None
    }
}

pub trait ViaStdError {
    fn __resilience_class(self) -> Option<Class>;
    /// The kind of the runtime `Error` the error is or wraps (for `fallback_on`).
    fn __resilience_kind(self) -> Option<ErrorKind>;
}
impl<E: StdError + 'static> ViaStdError for &&&Probe<'_, E> {
    fn __resilience_class(self) -> Option<Class> {
        let e = self.0.take()?;
        self.note_within(e);
        classify_error(e)
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        runtime_kind(self.0.take()?)
    }
}

pub trait ViaBoxed {
    fn __resilience_class(self) -> Option<Class>;
    /// The kind of the runtime `Error` the error is or wraps (for `fallback_on`).
    fn __resilience_kind(self) -> Option<ErrorKind>;
}
macro_rules! boxed {
    ($($t:ty),*) => {$(
        impl ViaBoxed for &&Probe<'_, $t> {
            fn __resilience_class(self) -> Option<Class> {
                let e = self.0.take()?;
                let class = classify_error(&**e);
                if e.is::<Error>() {
                    self.note_or_inside(e.downcast_mut::<Error>(), class);
                } else {
                    // A nested call's error deeper in (the service's own type around it).
                    self.note_within(&**e);
                }
                class
            }
            fn __resilience_kind(self) -> Option<ErrorKind> {
                runtime_kind(&**self.0.take()?)
            }
        }
    )*};
}
boxed!(
    Box<dyn StdError + Send + Sync>,
    Box<dyn StdError + Send>,
    Box<dyn StdError>
);

/// `io::Result<T>` functions: the runtime's own error travels inside the `io::Error`.
impl ViaOwn for &&&&&Probe<'_, std::io::Error> {
    fn __resilience_class(self) -> Option<Class> {
        let e = self.0.take()?;
        let class = classify_error(&*e);
        match e.get_ref() {
            Some(inner) if !inner.is::<Error>() => {
                // A nested call's error deeper in (its `source()` skips the error it holds).
                let inner: &(dyn StdError + 'static) = inner;
                self.note_within(inner);
            }
            _ => self.note_or_inside(e.get_mut().and_then(|i| i.downcast_mut::<Error>()), class),
        }
        class
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        runtime_kind(&*self.0.take()?)
    }
}

/// `reqwest_middleware::Result<T>` functions: reqwest's error, or a middleware's (the runtime's
/// own error travels as one), read from what it holds: its `source()` skips the error it wraps.
#[cfg(feature = "reqwest-middleware")]
impl ViaOwn for &&&&&Probe<'_, reqwest_middleware::Error> {
    fn __resilience_class(self) -> Option<Class> {
        match self.0.take()? {
            reqwest_middleware::Error::Reqwest(e) => classify_error(e),
            reqwest_middleware::Error::Middleware(e) => {
                let dynerr: &(dyn StdError + Send + Sync + 'static) = e.as_ref();
                let class = classify_error(dynerr);
                self.came_back_in(dynerr);
                self.note_or_inside(e.downcast_mut::<Error>(), class);
                class
            }
        }
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        match self.0.take()? {
            reqwest_middleware::Error::Reqwest(e) => runtime_kind(e),
            reqwest_middleware::Error::Middleware(e) => {
                let dynerr: &(dyn StdError + Send + Sync + 'static) = e.as_ref();
                runtime_kind(dynerr)
            }
        }
    }
}

/// Error reports that hold any error and say what they hold (`anyhow::Error`, `eyre::Report`):
/// read through the error they hold, the runtime's own found by downcasting.
macro_rules! report {
    ($($feature:literal => $t:ty),*) => {$(
        #[cfg(feature = $feature)]
        impl ViaBoxed for &&Probe<'_, $t> {
            fn __resilience_class(self) -> Option<Class> {
                let e = self.0.take()?;
                let dynerr: &(dyn StdError + Send + Sync + 'static) = e.as_ref();
                let class = classify_error(dynerr);
                if e.is::<Error>() {
                    self.note_or_inside(e.downcast_mut::<Error>(), class);
                } else {
                    // A nested call's error deeper in (the service's own type around it).
                    self.note_within(dynerr);
                }
                class
            }
            fn __resilience_kind(self) -> Option<ErrorKind> {
                let e = self.0.take()?;
                let dynerr: &(dyn StdError + Send + Sync + 'static) = e.as_ref();
                runtime_kind(dynerr)
            }
        }
    )*};
}
report!("anyhow" => anyhow::Error, "eyre" => eyre::Report);

pub trait ViaNothing {
    fn __resilience_class(self) -> Option<Class>;
    /// The kind of the runtime `Error` the error is or wraps (for `fallback_on`).
    fn __resilience_kind(self) -> Option<ErrorKind>;
}
impl<E> ViaNothing for &Probe<'_, E> {
    fn __resilience_class(self) -> Option<Class> {
        self.note_inside();
        None
    }
    fn __resilience_kind(self) -> Option<ErrorKind> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the extra borrows are the dispatch under test
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[derive(Debug)]
    struct Mine;
    impl Classify for Mine {
        fn class(&self) -> Option<Class> {
            Some(Class::Status(503))
        }
    }

    #[derive(Debug)]
    struct Opaque;

    #[test]
    fn picks_the_most_specific_impl() {
        let mut own = Error::new(ErrorKind::AttemptTimeout);
        assert_eq!(
            (&&&&&Probe::after(&mut own, 3)).__resilience_class(),
            Some(Class::Timeout)
        );
        assert_eq!(own.attempts(), 3);

        let mut mine = Mine;
        assert_eq!(
            (&&&&&Probe::after(&mut mine, 1)).__resilience_class(),
            Some(Class::Status(503))
        );

        // The operating system's reset (`ECONNRESET` on Linux) is one; the same kind made in
        // the function's own code says nothing of the network.
        #[cfg(target_os = "linux")]
        {
            let mut io = std::io::Error::from_raw_os_error(104);
            assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
            assert_eq!(
                (&&&&&Probe::after(&mut io, 1)).__resilience_class(),
                Some(Class::Reset)
            );
        }
        let mut own = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!((&&&&&Probe::after(&mut own, 1)).__resilience_class(), None);

        let mut boxed: Box<dyn StdError + Send + Sync> =
            Box::new(Error::new(ErrorKind::DeadlineExceeded));
        assert_eq!(
            (&&&&&Probe::after(&mut boxed, 2)).__resilience_class(),
            Some(Class::Timeout)
        );
        assert_eq!(boxed.downcast_ref::<Error>().unwrap().attempts(), 2);

        let mut opaque = Opaque;
        assert_eq!(
            (&&&&&Probe::after(&mut opaque, 1)).__resilience_class(),
            None
        );
    }

    #[cfg(feature = "anyhow")]
    #[test]
    fn anyhow_errors_are_classified_and_stamped() {
        let mut a = anyhow::Error::from(Error::new(ErrorKind::AttemptTimeout));
        assert_eq!(
            (&&&&&Probe::after(&mut a, 4)).__resilience_class(),
            Some(Class::Timeout)
        );
        assert_eq!(a.downcast_ref::<Error>().unwrap().attempts(), 4);
        let mut a = anyhow::anyhow!("refused").context("talking to the gateway");
        assert_eq!((&&&&&Probe::after(&mut a, 1)).__resilience_class(), None);
    }

    #[cfg(feature = "eyre")]
    #[test]
    fn eyre_reports_are_classified_and_stamped() {
        let mut r = eyre::Report::from(Error::new(ErrorKind::AttemptTimeout));
        assert_eq!(
            (&&&&&Probe::after(&mut r, 4)).__resilience_class(),
            Some(Class::Timeout)
        );
        assert_eq!(r.downcast_ref::<Error>().unwrap().attempts(), 4);
        let mut r = eyre::eyre!("refused").wrap_err("talking to the gateway");
        assert_eq!((&&&&&Probe::after(&mut r, 1)).__resilience_class(), None);
    }

    /// A user's error that wraps the runtime's (`#[error("…")] Resilience(#[from] Error)`).
    #[derive(Debug)]
    struct Wrapping(Error);
    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapping")
        }
    }
    impl StdError for Wrapping {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn finds_the_kind_of_the_runtime_error_inside() {
        let mut own = Error::new(ErrorKind::CircuitOpen);
        assert_eq!(
            (&&&&&Probe::after(&mut own, 0)).__resilience_kind(),
            Some(ErrorKind::CircuitOpen)
        );
        let mut wrapping = Wrapping(Error::new(ErrorKind::BulkheadFull));
        assert_eq!(
            (&&&&&Probe::after(&mut wrapping, 0)).__resilience_kind(),
            Some(ErrorKind::BulkheadFull)
        );
        let mut io = std::io::Error::other(Error::new(ErrorKind::DeadlineExceeded));
        assert_eq!(
            (&&&&&Probe::after(&mut io, 0)).__resilience_kind(),
            Some(ErrorKind::DeadlineExceeded)
        );
        let mut boxed: Box<dyn StdError + Send + Sync> =
            Box::new(Error::new(ErrorKind::RateLimited));
        assert_eq!(
            (&&&&&Probe::after(&mut boxed, 0)).__resilience_kind(),
            Some(ErrorKind::RateLimited)
        );
        let mut plain = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!((&&&&&Probe::after(&mut plain, 0)).__resilience_kind(), None);
        let mut mine = Mine;
        assert_eq!((&&&&&Probe::after(&mut mine, 0)).__resilience_kind(), None);
        let mut opaque = Opaque;
        assert_eq!(
            (&&&&&Probe::after(&mut opaque, 0)).__resilience_kind(),
            None
        );
    }
}
