//! How the idempotency layer answered each request it covers, counted through the `metrics`
//! facade (feature `metrics`): `resilience.idempotency.requests` by `outcome` and
//! `http.route`, and
//! `resilience.idempotency.pending`, the responses kept in memory until the store takes them.

use std::sync::atomic::{AtomicI64, Ordering};

/// How the layer answered a covered request (one of the methods it covers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// No key on a route where the key is optional: the handler ran unprotected.
    Unprotected,
    /// 400: no key where one is required.
    KeyMissing,
    /// 400: a malformed key.
    KeyInvalid,
    /// 400: keys are scoped by caller, and the request named none.
    ScopeMissing,
    /// 500: a layer with a scope inside one that claimed the request under another (or none).
    ScopeConflict,
    /// 413: a body over the layer's limit.
    BodyTooLarge,
    /// 400: a body that could not be read to its end.
    BodyUnreadable,
    /// 503: the store was down, slow, or refused the claim.
    StoreUnavailable,
    /// 422: the key was used for another request.
    KeyReused,
    /// 409: the first request with this key still runs.
    InProgress,
    /// The stored answer, replayed; the handler did not run.
    Replayed,
    /// The handler ran and its answer was kept for replay.
    Handled,
    /// The handler ran and answered a status that is not kept (by default 5xx, 408, 429), or
    /// failed as a service: the key was given back.
    Released,
    /// 500: the handler panicked (or its task did not finish).
    HandlerFailed,
    /// 500: the handler outlived the layer's limit and was cancelled.
    HandlerTimedOut,
    /// The handler ran; its response was too large to keep, a problem was kept in its place.
    ResponseNotKept,
    /// The handler ran; its response body failed, a problem was kept in its place.
    ResponseFailed,
    /// The handler ran and answered, but its claim had expired and another request took the
    /// key meanwhile (a store that lost the claim, a lease shorter than the handler): its
    /// answer is not kept, and the handler may have run twice.
    ClaimLost,
}

impl Served {
    /// Every outcome, in the order of the enum.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Served; 18] = [
        Served::Unprotected,
        Served::KeyMissing,
        Served::KeyInvalid,
        Served::ScopeMissing,
        Served::ScopeConflict,
        Served::BodyTooLarge,
        Served::BodyUnreadable,
        Served::StoreUnavailable,
        Served::KeyReused,
        Served::InProgress,
        Served::Replayed,
        Served::Handled,
        Served::Released,
        Served::HandlerFailed,
        Served::HandlerTimedOut,
        Served::ResponseNotKept,
        Served::ResponseFailed,
        Served::ClaimLost,
    ];

    /// The `outcome` label's value.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Served::Unprotected => "unprotected",
            Served::KeyMissing => "key_missing",
            Served::KeyInvalid => "key_invalid",
            Served::ScopeMissing => "scope_missing",
            Served::ScopeConflict => "scope_conflict",
            Served::BodyTooLarge => "body_too_large",
            Served::BodyUnreadable => "body_unreadable",
            Served::StoreUnavailable => "store_unavailable",
            Served::KeyReused => "key_reused",
            Served::InProgress => "in_progress",
            Served::Replayed => "replayed",
            Served::Handled => "handled",
            Served::Released => "released",
            Served::HandlerFailed => "handler_failed",
            Served::HandlerTimedOut => "handler_timed_out",
            Served::ResponseNotKept => "response_not_kept",
            Served::ResponseFailed => "response_failed",
            Served::ClaimLost => "claim_lost",
        }
    }
}

/// Where one request's answer is counted: its route, when a router matched one (axum's
/// `MatchedPath`, the route's template: `/tenants/{tenant}/charges`, a bounded set of values).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally(Option<axum::extract::MatchedPath>);

impl Tally {
    pub(crate) fn of(extensions: &http::Extensions) -> Tally {
        // Without a recorder to tell, no lookup: nothing reads the route.
        if cfg!(feature = "metrics") {
            Tally(extensions.get::<axum::extract::MatchedPath>().cloned())
        } else {
            Tally(None)
        }
    }

    /// Counts one answer.
    #[inline]
    pub(crate) fn count(&self, served: Served) {
        #[cfg(feature = "metrics")]
        recorded::count(served, self.0.as_ref().map_or("", |m| m.as_str()));
        #[cfg(not(feature = "metrics"))]
        let _ = (served, &self.0);
    }
}

/// Responses kept in memory until the store takes them, in every layer of the process.
static PENDING: AtomicI64 = AtomicI64::new(0);

/// One response more (`1`) or fewer (`-1`) kept in memory until the store takes it.
pub(crate) fn pending(change: i64) {
    let now = PENDING.fetch_add(change, Ordering::Relaxed) + change;
    // Set, then read again and set again while it changed: two changes at once on two
    // threads could otherwise leave the older count last (as `set_settled` does).
    #[cfg(feature = "metrics")]
    {
        let mut now = now;
        for _ in 0..8 {
            recorded::pending(now);
            let again = PENDING.load(Ordering::Relaxed);
            if again == now {
                break;
            }
            now = again;
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = now;
}

#[cfg(feature = "metrics")]
mod recorded {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use metrics::{Key, Label};

    use super::Served;
    use crate::telemetry::names;

    static PENDING_KEY: Key = Key::from_static_name(names::IDEMPOTENCY_PENDING);

    type Keys = [Key; Served::ALL.len()];

    thread_local! {
        /// The keys of the routes this thread has answered: the process's table behind a
        /// lock, looked up once per route and thread, not on every request.
        static SEEN: RefCell<HashMap<&'static str, &'static Keys>> = RefCell::new(HashMap::new());
    }

    /// One key per route and outcome, made at the route's first answer and kept: routes are
    /// a router's templates, a bounded set.
    fn keys(route: &str) -> &'static Keys {
        if let Ok(Some(keys)) = SEEN.try_with(|s| s.try_borrow().ok()?.get(route).copied()) {
            return keys;
        }
        let (route, keys) = shared_keys(route);
        let _ = SEEN.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.insert(route, keys);
            }
        });
        keys
    }

    /// The process's keys of `route` (made the first time), with the route as leaked for them.
    fn shared_keys(route: &str) -> (&'static str, &'static Keys) {
        static KEYS: OnceLock<Mutex<HashMap<&'static str, &'static Keys>>> = OnceLock::new();
        let mut by_route = KEYS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((route, keys)) = by_route.get_key_value(route) {
            return (route, keys);
        }
        let route: &'static str = Box::leak(route.into());
        let keys: &'static Keys = Box::leak(Box::new(Served::ALL.map(|s| {
            let labels: &'static [Label] = Box::leak(Box::new([
                Label::from_static_parts("outcome", s.as_str()),
                Label::from_static_parts("http.route", route),
            ]));
            Key::from_static_labels(names::IDEMPOTENCY_REQUESTS, labels)
        })));
        by_route.insert(route, keys);
        (route, keys)
    }

    pub(super) fn count(served: Served, route: &str) {
        crate::telemetry::increment_static(&keys(route)[served as usize]);
    }

    pub(super) fn pending(n: i64) {
        crate::telemetry::set_static(&PENDING_KEY, n as f64);
    }
}
