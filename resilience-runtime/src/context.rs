//! The ambient context of a call: what one attempt knows (reachable from the request builder
//! through a task-local), and what an inbound request or an enclosing call hands down to the
//! calls made inside it.

use std::cell::Cell;
use std::time::Duration;

use std::sync::Arc;

use reqwest::header::HeaderValue;
use tokio::time::Instant;

use crate::policy::Method;

tokio::task_local! {
    /// Set by the server-side [`ContextLayer`](crate::server::ContextLayer) (or
    /// [`with_inbound`]) around the handling of one inbound request.
    pub(crate) static INBOUND: Inbound;
    /// Set by [`measure`](crate::measure): where the outermost call reports what it cost.
    /// With the reporting call's depth (0: outside any other call).
    pub(crate) static REPORT: Cell<Option<(crate::report::CallReport, u8)>>;
}

scoped_tls::scoped_thread_local! {
    /// The attempt whose body this thread is polling (or dropping), if any: set by [`Scoped`]
    /// around each poll of an attempt's body, so only while the body runs on this thread.
    static CURRENT: AttemptCtx
}

scoped_tls::scoped_thread_local! {
    /// The fallback this thread is polling, if any, under a handler whose keys are derived: its
    /// registration ([`ParentKey::enter`]), and the attempt current where it is polled (its
    /// address; 0: none), set by [`InFallback`] around each poll.
    static FALLBACK: (u64, usize)
}

thread_local! {
    /// The place of the call this thread's last refusal by an open breaker at a call's start
    /// refused ([`refused_place`]; `None` outside a handler whose keys are derived): what its
    /// fallback, called next without an `await` between, takes its own place under.
    static REFUSED_PLACE: Cell<Option<uuid::Uuid>> = const { Cell::new(None) };
}

/// Runs `f` with the attempt whose body is being polled on this thread, if any.
///
/// What a task-local gives, for the price of one thread-local pointer (a task-local moves
/// the whole context in and out on every poll): the context is set only during the
/// synchronous poll (and drop) of the attempt's body, and the body can reach it only from
/// inside that poll, so it is the body's own attempt (or that of the innermost attempt
/// nested in it).
#[inline]
pub(crate) fn with_attempt<R>(f: impl FnOnce(&AttemptCtx) -> R) -> Option<R> {
    CURRENT.is_set().then(|| CURRENT.with(f))
}

/// Runs `f` with `ctx` as the current attempt. Not generic (`f` is a `dyn`): the thread-local
/// code is compiled once, not once per annotated function's body.
#[inline(never)]
pub(crate) fn in_attempt(ctx: &AttemptCtx, f: &mut dyn FnMut()) {
    CURRENT.set(ctx, f)
}

/// Polls an attempt's body (`body(Some(cx))`) with `ctx` as the current attempt. Not
/// generic: the body is a `dyn`, so this is compiled once.
#[inline]
pub(crate) fn poll_in_attempt(
    ctx: &AttemptCtx,
    body: &mut dyn FnMut(Option<&mut std::task::Context<'_>>) -> crate::attempt::Polled,
    cx: &mut std::task::Context<'_>,
) -> crate::attempt::Polled {
    CURRENT.set(ctx, || body(Some(cx)))
}

pin_project_lite::pin_project! {
    /// An attempt's body with its context: the context is reachable ([`with_attempt`]) while
    /// the body is polled or dropped.
    pub(crate) struct Scoped<F> {
        ctx: AttemptCtx,
        #[pin]
        fut: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped mid-way (its timeout, a lost hedge) may still look at its
            // attempt while it unwinds its own state.
            let mut fut = this.fut;
            in_attempt(this.ctx, &mut || fut.set(None));
        }
    }
}

impl<F> Scoped<F> {
    /// `fut` run with `ctx` as its attempt.
    pub(crate) fn new(ctx: AttemptCtx, fut: F) -> Scoped<F> {
        Scoped {
            ctx,
            fut: Some(fut),
        }
    }

    /// Drops the body (in its context, as when the whole is dropped); the context stays, with
    /// what the body's requests recorded. Polled afterwards, it stays pending.
    pub(crate) fn stop(self: std::pin::Pin<&mut Self>) {
        let this = self.project();
        let mut fut = this.fut;
        in_attempt(this.ctx, &mut || fut.set(None));
    }

    /// What the attempt's requests recorded so far.
    pub(crate) fn ctx(self: std::pin::Pin<&mut Self>) -> &AttemptCtx {
        self.project().ctx
    }
}

impl<F: std::future::Future> std::future::Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        match this.fut.as_pin_mut() {
            Some(mut fut) => {
                let mut out = std::task::Poll::Pending;
                in_attempt(this.ctx, &mut || out = fut.as_mut().poll(cx));
                out
            }
            None => std::task::Poll::Pending,
        }
    }
}

/// The idempotency key of one logical call.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    /// Drawn for the call, written in the format in use when the call began: the same bytes
    /// on every attempt, whatever `KeyFormat::set` does meanwhile (a server comparing keys as
    /// strings would take `uuid` and `"uuid"` for two).
    Auto(uuid::Uuid, crate::client::KeyFormat),
    Given(HeaderValue),
}

/// A status by which the server refused a request before acting on it: a 4xx, but a 409
/// (still in progress: being carried out).
pub(crate) fn refused_before_acting(status: http::StatusCode) -> bool {
    status.is_client_error() && status != http::StatusCode::CONFLICT
}

/// A key's text without the quotes of a Structured Field string (`"order-7"`), when it is one
/// with no escape in it; as it is otherwise.
pub(crate) fn unquoted(text: &[u8]) -> &[u8] {
    match text {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') && !inner.contains(&b'"') => inner,
        _ => text,
    }
}

/// The key as sent (an automatic one in the call's `KeyFormat`, quoted under `Quoted`): what
/// an error and a log name is what a request asking again must send, byte for byte.
impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Auto(u, format) => {
                let d = format.delimiter();
                write!(f, "{d}{}{d}", u.hyphenated())
            }
            Key::Given(h) => f.write_str(&String::from_utf8_lossy(h.as_bytes())),
        }
    }
}

impl Key {
    /// Whether the key, as [`Display`](std::fmt::Display) writes it, is `text`: without
    /// allocating. Either written bare or as a Structured Field string (`"order-7"`, the form
    /// `KeyFormat::Quoted` sends and `current_attempt()` shows): one key, as the server layer
    /// takes them.
    pub(crate) fn is_text(&self, text: &[u8]) -> bool {
        let text = unquoted(text);
        match self {
            Key::Auto(u, _) => {
                let mut buf = uuid::Uuid::encode_buffer();
                u.hyphenated().encode_lower(&mut buf).as_bytes() == text
            }
            Key::Given(h) => unquoted(h.as_bytes()) == text,
        }
    }

    pub(crate) fn header(&self) -> HeaderValue {
        match self {
            Key::Auto(u, format) => {
                let mut buf = uuid::Uuid::encode_buffer();
                let s = u.hyphenated().encode_lower(&mut buf);
                format.header(s)
            }
            Key::Given(h) => h.clone(),
        }
    }
}

/// What an inbound request, or an enclosing call, hands down: the time left, and the trace.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// When the caller stops waiting.
    pub(crate) deadline: Option<Instant>,
    /// The caller's trace: (trace id, its span id, trace flags).
    pub(crate) trace: Option<(u128, u64, u8)>,
    /// The caller's request id, when it is in the form the library draws (32 lower-case hex
    /// digits).
    pub(crate) request_id: Option<u128>,
    /// The caller's request id in any other form (a UUID, `req-42`), sent on as it came.
    pub(crate) request_id_text: Option<Arc<HeaderValue>>,
    /// The caller's W3C `tracestate`, sent on with the calls' `traceparent` in its trace.
    pub(crate) tracestate: Option<Arc<HeaderValue>>,
    /// The key of the request an `IdempotencyLayer` claimed and runs the handler of: the
    /// handler's `idempotency_key = auto` calls derive theirs from it.
    pub(crate) parent_key: Option<Arc<ParentKey>>,
}

/// What the handler of a request an `IdempotencyLayer` runs derives its `idempotency_key =
/// auto` keys from, with
/// [`derive_call_keys`](crate::server::IdempotencyLayer::derive_call_keys): the service's name,
/// the request's record key (scope, method, path and key) and its body's fingerprint. A call
/// gets the same key every time the handler runs for the same request (again after a 5xx the
/// layer released, or on another instance after one was killed mid-handler), so the service
/// called applies it once.
///
/// A call's key is its place: the `n`th call of its function made by the handler itself, or
/// the `n`th made in one attempt of another call, under that call's place, up to the handler.
/// Every call running under the handler has a place (keyed or not: the calls nested in it
/// derive theirs from it), and takes it when it begins, refused or not, so that the calls
/// after it keep theirs whatever was refused. An attempt counts its calls from the first: a
/// call made again by its enclosing call's retry or hedge (refused in the failed attempt, or
/// sending nothing that stops the retry) is the same call in the same place, with the same key
/// in every run, however many attempts each run made; and two calls in one attempt, or in
/// two places, never share one.
pub(crate) struct ParentKey {
    /// Service, record key and fingerprint, each ended by a NUL.
    seed: Vec<u8>,
    /// The places taken so far.
    places: std::sync::Mutex<Places>,
}

impl std::fmt::Debug for ParentKey {
    // The record key holds the client's key and the scope (a tenant): not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParentKey { .. }")
    }
}

/// A function, and the place of its last call counted (from 0) where it is kept.
type Count = (&'static str, u32);

/// The places taken under a handler: of its own calls, and in each attempt of the calls
/// running under it.
#[derive(Default)]
struct Places {
    /// The handler's own calls (made outside any attempt).
    handler: Vec<Count>,
    /// The calls running under the handler, by registration ([`AttemptCtx::call`]).
    calls: std::collections::HashMap<u64, CallPlaces>,
}

impl Places {
    /// A call (or a fallback) at `place` is registered: its registration, never 0.
    fn register(&mut self, place: uuid::Uuid) -> u64 {
        let id = REGISTRATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.calls.insert(
            id,
            CallPlaces {
                place,
                attempts: Vec::new(),
            },
        );
        id
    }
}

/// What one call running under a handler knows of its place and the calls nested in it.
struct CallPlaces {
    /// Its place: what the places of the calls nested in it derive from.
    place: uuid::Uuid,
    /// The calls made in each of its attempts and hedges (by the attempt's number).
    attempts: Vec<(u32, Vec<Count>)>,
}

/// The last registration handed out ([`ParentKey::enter`]): unique in the process (it does
/// not wrap), so a call never takes another's registration for its enclosing call's.
static REGISTRATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The namespace of derived keys (UUID version 5). A new one whenever the places change what
/// they count: a handler run again across an upgrade then sends its calls under fresh keys,
/// never under a key the earlier version gave another call (the places before nested calls
/// counted their own, counted with the handler's: `…0e83`).
const DERIVED_KEYS: uuid::Uuid = uuid::Uuid::from_u128(0x8d41_7c3a_2f96_4e0b_b5d8_61a7_c93e_2f14);

/// The next place of `function` among `counts`.
fn count(counts: &mut Vec<Count>, function: &'static str) -> u32 {
    match counts.iter_mut().find(|(f, _)| *f == function) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            counts.push((function, 0));
            0
        }
    }
}

impl ParentKey {
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn new(service: &str, record: &str, fingerprint: &[u8]) -> Arc<ParentKey> {
        let mut seed = Vec::with_capacity(service.len() + record.len() + fingerprint.len() + 3);
        for part in [service.as_bytes(), record.as_bytes(), fingerprint] {
            seed.extend_from_slice(part);
            seed.push(0);
        }
        Arc::new(ParentKey {
            seed,
            places: std::sync::Mutex::new(Places::default()),
        })
    }

    /// A call of `function` begins, in attempt `enclosing.1` of the call registered as
    /// `enclosing.0` (none: the handler's own): its place, the key it sends under when its
    /// key is `auto`; and, when `register`, its registration (never 0; 0 otherwise), which
    /// [`leave`](Self::leave) ends.
    pub(crate) fn enter(
        &self,
        function: &'static str,
        enclosing: Option<(u64, u32)>,
        register: bool,
    ) -> (u64, uuid::Uuid) {
        let mut guard = self.places.lock().unwrap_or_else(|e| e.into_inner());
        let places = &mut *guard;
        let around = enclosing.and_then(|(id, attempt)| {
            let call = places.calls.get_mut(&id)?;
            let at = match call.attempts.iter().position(|(a, _)| *a == attempt) {
                Some(at) => at,
                None => {
                    call.attempts.push((attempt, Vec::new()));
                    call.attempts.len() - 1
                }
            };
            Some((call.place, count(&mut call.attempts[at].1, function)))
        });
        // The `n`th call of `function` after `prefix`, in `namespace`.
        let named = |namespace: &uuid::Uuid, prefix: &[u8], n: u32| {
            let mut name = Vec::with_capacity(prefix.len() + function.len() + 5);
            name.extend_from_slice(prefix);
            name.extend_from_slice(function.as_bytes());
            name.push(0);
            name.extend_from_slice(&n.to_le_bytes());
            uuid::Uuid::new_v5(namespace, &name)
        };
        let place = match around {
            Some((outer, n)) => named(&outer, &[], n),
            // The handler's own call (or one whose enclosing call is not registered here).
            None => named(
                &DERIVED_KEYS,
                &self.seed,
                count(&mut places.handler, function),
            ),
        };
        let id = if register { places.register(place) } else { 0 };
        (id, place)
    }

    /// The place of the call registered as `id`, while it runs.
    fn place_of(&self, id: u64) -> Option<uuid::Uuid> {
        let places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        places.calls.get(&id).map(|c| c.place)
    }

    /// A fallback of the call at `place` begins: registered (its registration returned) at a
    /// place under that call's, where the calls it makes take theirs, never among the calls
    /// made after the failed one.
    fn enter_fallback(&self, place: uuid::Uuid) -> u64 {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        places.register(uuid::Uuid::new_v5(&place, b"fallback"))
    }

    /// The call registered as `id` ended.
    pub(crate) fn leave(&self, id: u64) {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        places.calls.remove(&id);
    }
}

impl Inbound {
    /// Nothing handed down.
    pub const NONE: Inbound = Inbound {
        deadline: None,
        trace: None,
        request_id: None,
        request_id_text: None,
        tracestate: None,
        parent_key: None,
    };

    /// The calls made under this context finish by `deadline`.
    pub fn deadline(mut self, deadline: Instant) -> Inbound {
        self.deadline = Some(deadline);
        self
    }

    /// The same context without its deadline: for work that outlives the request (an audit
    /// sent after the response, in a task handed the trace and request id with
    /// `with_inbound(current_inbound().without_deadline(), …)`), whose calls would otherwise
    /// fail `DeadlineExceeded` once the caller's time is up. Its calls plan within their own
    /// policy's deadline.
    pub fn without_deadline(mut self) -> Inbound {
        self.deadline = None;
        self
    }

    /// The calls made under this context finish within `left` from now (no deadline when
    /// `left` is beyond what the clock can count, e.g. `Duration::MAX`).
    pub fn time_left(self, left: Duration) -> Inbound {
        match Instant::now().checked_add(left) {
            Some(deadline) => self.deadline(deadline),
            None => self,
        }
    }

    /// The calls made under this context join the trace of this W3C `traceparent` (ignored
    /// when it is not valid: version 00 as written, a later one by its first four fields).
    /// Another trace than the context's drops the `tracestate` it had (that trace's): give a
    /// `tracestate` of the new trace after it.
    pub fn traceparent(mut self, value: &str) -> Inbound {
        match parse_traceparent(value) {
            Some(t) => {
                // Another trace than the one this context was in: its `tracestate` was that
                // trace's, not this one's (vendors' entries of the caller's trace would go out
                // under a fresh, unrelated one). One set before any trace stays.
                if self.trace.is_some_and(|old| old.0 != t.0) {
                    self.tracestate = None;
                }
                self.trace = Some(t);
            }
            None => tracing::debug!(
                value = %value.escape_debug().to_string().chars().take(64).collect::<String>(),
                "traceparent ignored: not W3C Trace Context's (a new trace)"
            ),
        }
        self
    }

    /// The calls made under this context send this W3C `tracestate` on with the `traceparent`
    /// they write in the trace of [`traceparent`](Self::traceparent) (vendors' entries reach
    /// the next service as the spec asks). Read as W3C Trace Context says: a list of at most
    /// 32 `key=value` members of the spec's form, empty members and a key's repeats dropped;
    /// ignored whole when it is not one. Over 512 characters it is cut as the spec asks:
    /// members over 128 characters first, then from the end.
    pub fn tracestate(mut self, value: &str) -> Inbound {
        match valid_tracestate(value) {
            Some(list) => self.tracestate = HeaderValue::from_str(&list).ok().map(Arc::new),
            None => {
                let mut end = value.len().min(64);
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                let shown = &value[..end];
                tracing::debug!(
                    value = shown,
                    "inbound tracestate ignored: not a W3C tracestate"
                );
            }
        }
        self
    }

    /// The calls made under this context send this `X-Request-Id`, as it is: any form (a
    /// UUID, `req-42`, the library's 32 hex digits) of 1 to 128 visible ASCII characters
    /// (ignored otherwise, and the calls draw their own, or a `ContextLayer`'s).
    pub fn request_id(mut self, value: &str) -> Inbound {
        let value = value.trim();
        if value.is_empty()
            || value.len() > MAX_REQUEST_ID_LEN
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            tracing::debug!(
                value,
                "inbound request id ignored: not 1 to 128 visible ASCII characters"
            );
            return self;
        }
        let ours = value.len() == 32
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match u128::from_str_radix(value, 16) {
            Ok(n) if ours && n != 0 => {
                self.request_id = Some(n);
                self.request_id_text = None;
            }
            _ => {
                self.request_id = None;
                self.request_id_text = HeaderValue::from_str(value).ok().map(Arc::new);
            }
        }
        self
    }

    /// The deadline handed down, if any.
    pub fn get_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The request id the calls made under this context send (`X-Request-Id`), if any: the
    /// caller's, as it came, or the one a `ContextLayer` gave a request that came without one
    /// (32 lower-case hex digits). For a handler's own log lines, to match the next
    /// services' (`current_inbound().get_request_id()`).
    pub fn get_request_id(&self) -> Option<String> {
        match (&self.request_id_text, self.request_id) {
            (Some(text), _) => text.to_str().ok().map(str::to_owned),
            (None, Some(id)) => Some(hex32(id).as_str().to_owned()),
            (None, None) => None,
        }
    }
}

/// The longest `tracestate` handed down that calls send on (W3C: at least 512 must pass).
const MAX_TRACESTATE_LEN: usize = 512;

/// A W3C `tracestate` list (Trace Context, level 2), its members trimmed and joined by `,`,
/// empty ones dropped, a key's later repeats dropped (its first kept, as the spec's test suite
/// asks), cut to [`MAX_TRACESTATE_LEN`] as the spec asks; `None` when it is not one (a member
/// of the wrong form, more than 32 members) or has no member.
fn valid_tracestate(value: &str) -> Option<String> {
    // key = ( lcalpha / DIGIT ) 0*255 ( keychar )
    fn valid_key(key: &str) -> bool {
        let k = key.as_bytes();
        (1..=256).contains(&k.len())
            && matches!(k[0], b'a'..=b'z' | b'0'..=b'9')
            && k.iter()
                .all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
    }
    // value = 0*255( chr ) nblk-chr: printable ASCII but `,` and `=`, not ending in a space.
    fn valid_value(value: &str) -> bool {
        let v = value.as_bytes();
        (1..=256).contains(&v.len())
            && v.iter()
                .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && v[v.len() - 1] != b' '
    }
    let mut members: Vec<&str> = Vec::new();
    let mut count = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, val) = member.split_once('=')?;
        count += 1;
        if !valid_key(key) || !valid_value(val) || count > 32 {
            return None;
        }
        if !members
            .iter()
            .any(|m| m.split_once('=').is_some_and(|(k, _)| k == key))
        {
            members.push(member);
        }
    }
    let len = |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len().saturating_sub(1);
    while len(&members) > MAX_TRACESTATE_LEN {
        match members.iter().position(|m| m.len() > 128) {
            Some(i) => members.remove(i),
            None => members.pop()?,
        };
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// The longest request id handed down that calls send on.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Runs `fut` with `inbound` as the context of every `#[resilient]` call made inside it: the
/// calls plan within its deadline and join its trace. What [`ContextLayer`] does per request,
/// for code that is not a tower service. Inside another call's attempt (in a `#[resilient]`
/// body), a call is nested in that attempt: it plans within the nearer of the two deadlines
/// and stays in the attempt's trace (with the `tracestate` handed down with it) and under the
/// handler's request (a key derived for it stays derived): what `inbound` does not say there
/// is the context's it runs in. So it is awaited in a handler's own task, under the context
/// a [`ContextLayer`] (or an `IdempotencyLayer`) set: the trace, request id and derived keys'
/// parent `inbound` does not say are the handler's (even from [`current_inbound`], which
/// leaves the parent out for a task spawned with it). Not the deadline: `inbound`'s is the
/// calls' (none, for [`Inbound::without_deadline`]), so a part given
/// [`Inbound::time_left`] longer than the caller's time left outlasts it. Not in a task
/// spawned with it, whose calls run beside the handler's. A deadline set with [`Inbound::time_left`] is a moment:
/// an `Inbound` made once and used by each attempt gives later attempts what is left of it.
///
/// [`ContextLayer`]: crate::server::ContextLayer
pub async fn with_inbound<F: std::future::Future>(mut inbound: Inbound, fut: F) -> F::Output {
    inbound_in_use();
    // Polled inside an attempt, or in the handler's own task under its context (not in a
    // spawned task, whose first poll is elsewhere, outside both): the calls it wraps are
    // part of that. `Inbound::NONE.time_left(d)` (or `current_inbound().time_left(d)`) gives
    // them a part worth `d`, not another trace, nor fresh keys where the handler's derive
    // theirs.
    if with_attempt(|_| ()).is_some() || INBOUND.try_with(|_| ()).is_ok() {
        inbound.inherit(self::inbound());
    }
    INBOUND.scope(inbound, fut).await
}

impl Inbound {
    /// Takes from `around` what this context does not say: its trace (and `tracestate`, with
    /// the trace it came with), request id and derived keys' parent. Not its deadline: the
    /// attempt's binds anyway.
    fn inherit(&mut self, around: Inbound) {
        if self.trace.is_none() {
            self.trace = around.trace;
            if self.tracestate.is_none() {
                self.tracestate = around.tracestate;
            }
        }
        if self.request_id.is_none() && self.request_id_text.is_none() {
            self.request_id = around.request_id;
            self.request_id_text = around.request_id_text;
        }
        if self.parent_key.is_none() {
            self.parent_key = around.parent_key;
        }
    }
}

/// The context the current task runs under ([`ContextLayer`] or [`with_inbound`] set it), or
/// [`Inbound::NONE`]. A handler that spawns a task hands it on:
///
/// ```no_run
/// # async fn notify() {}
/// use resilience_runtime::{current_inbound, with_inbound};
/// # async fn handler() {
/// tokio::spawn(with_inbound(current_inbound(), async move { notify().await }));
/// # }
/// ```
///
/// [`ContextLayer`]: crate::server::ContextLayer
pub fn current_inbound() -> Inbound {
    // Not the handler's derived keys: a task handed the context runs beside the handler, and
    // the order of its calls among the handler's is not the same from one run to the next.
    let mut inbound = inbound();
    inbound.parent_key = None;
    inbound
}

/// Whether any inbound context was ever set in this process: until one is, a call does not
/// look for it (a task-local lookup saved on every call of a process that never uses it).
static INBOUND_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn inbound_in_use() {
    if !INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed) {
        INBOUND_USED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The inbound context of the current task, if any was set.
#[inline]
/// The trace id handed down (a caller's `traceparent` read by `ContextLayer`, or
/// `with_inbound`), if any.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inbound_trace_id() -> Option<u128> {
    if !INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    INBOUND
        .try_with(|i| i.trace.map(|(t, _, _)| t))
        .ok()
        .flatten()
}

/// The `tracestate` handed down with the trace `trace_id`, if any: what a call of that trace
/// sends on with its own `traceparent`.
pub(crate) fn inbound_tracestate(trace_id: u128) -> Option<Arc<HeaderValue>> {
    if !INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    INBOUND
        .try_with(|i| match (&i.trace, &i.tracestate) {
            (Some((t, _, _)), Some(state)) if *t == trace_id => Some(Arc::clone(state)),
            _ => None,
        })
        .ok()
        .flatten()
}

/// Whether any inbound context was ever set in this process.
#[inline]
pub(crate) fn inbound_in_use_yet() -> bool {
    INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the handler's `idempotency_key = auto` calls derive their keys from, when an
/// `IdempotencyLayer` with [`derive_call_keys`](crate::server::IdempotencyLayer::derive_call_keys)
/// runs the current task's handler.
pub(crate) fn parent_key() -> Option<Arc<ParentKey>> {
    if INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed) {
        INBOUND.try_with(|i| i.parent_key.clone()).ok().flatten()
    } else {
        None
    }
}

/// A call of `function` begins where a handler's keys are derived (`derive_call_keys`): its
/// registration with the handler's [`ParentKey`] and its place there (the key it sends under
/// when its key is `auto`); none elsewhere. See [`ParentKey::enter`].
#[inline(never)]
pub(crate) fn enter_call(function: &'static str, register: bool) -> (u64, Option<uuid::Uuid>) {
    match parent_key() {
        Some(p) => {
            let current = with_attempt(|o| (o.call, o.attempt, std::ptr::from_ref(o) as usize));
            // Made by a fallback polled in this attempt (or outside any): under the fallback's
            // place. Inside an attempt of a call the fallback made, that attempt's.
            let at = current.map_or(0, |(_, _, at)| at);
            let fallback = FALLBACK
                .is_set()
                .then(|| FALLBACK.with(|&(id, outer)| (outer == at).then_some(id)))
                .flatten();
            let enclosing = match fallback {
                Some(id) => Some((id, 0)),
                None => current.map(|(c, a, _)| (c, a)).filter(|(c, _)| *c != 0),
            };
            let (id, place) = p.enter(function, enclosing, register);
            (id, Some(place))
        }
        None => (0, None),
    }
}

/// A call of `function` refused at its start by its open breaker takes its place (see
/// [`enter_call`]), kept for its fallback ([`FallbackScope::refused`]). Once an inbound
/// context was set in the process (before, there is no place to take, and none was kept).
#[inline(never)]
pub(crate) fn refused_place(function: &'static str) {
    REFUSED_PLACE.set(enter_call(function, false).1);
}

/// Where a fallback's calls take their places under a handler whose keys are derived: under
/// the failed call's own place, so that whether it ran moves no key of the calls made after
/// the failed one (the fallback's charge took the next place of its function, the handler's
/// later charge of it the one after: a key no run without the fallback sends it under). Ends
/// (its registration given up) when dropped.
#[derive(Debug)]
pub struct FallbackScope(u64);

impl FallbackScope {
    /// For the fallback of the call the last refusal by an open breaker on this thread refused
    /// at its start ([`Session::refused_compiled`](crate::session::Session::refused_compiled)).
    pub fn refused() -> FallbackScope {
        match (REFUSED_PLACE.take(), parent_key()) {
            (Some(place), Some(p)) => FallbackScope(p.enter_fallback(place)),
            _ => FallbackScope(0),
        }
    }

    /// For the fallback of the call of `session`, which failed (before the session is
    /// dropped).
    pub fn after(session: &crate::session::Session) -> FallbackScope {
        let call = session.ctx.call;
        if call == 0 {
            return FallbackScope(0);
        }
        FallbackScope::after_call(call)
    }

    #[cold]
    #[inline(never)]
    fn after_call(call: u64) -> FallbackScope {
        match parent_key() {
            Some(p) => match p.place_of(call) {
                Some(place) => FallbackScope(p.enter_fallback(place)),
                None => FallbackScope(0),
            },
            None => FallbackScope(0),
        }
    }

    /// Runs the fallback `f` in this scope.
    pub fn run<F: std::future::IntoFuture>(self, f: F) -> InFallback<F::IntoFuture> {
        InFallback {
            scope: self,
            fallback: f.into_future(),
        }
    }
}

impl Drop for FallbackScope {
    fn drop(&mut self) {
        if self.0 != 0 {
            call_left(self.0);
        }
    }
}

pin_project_lite::pin_project! {
    /// A fallback polled in its [`FallbackScope`].
    #[derive(Debug)]
    pub struct InFallback<F> {
        scope: FallbackScope,
        #[pin]
        fallback: F,
    }
}

impl<F: std::future::Future> std::future::Future for InFallback<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let id = this.scope.0;
        if id == 0 {
            return this.fallback.poll(cx);
        }
        let at = with_attempt(|o| std::ptr::from_ref(o) as usize).unwrap_or(0);
        let mut fallback = this.fallback;
        FALLBACK.set(&(id, at), || fallback.as_mut().poll(cx))
    }
}

/// The call registered as `id` ended (see [`ParentKey::leave`]). Where the handler's context
/// is no longer reachable (the call's future was moved to a task of its own), its record
/// stays until the handler's [`ParentKey`] is dropped.
#[inline(never)]
pub(crate) fn call_left(id: u64) {
    if let Some(p) = parent_key() {
        p.leave(id);
    }
}

/// The context handed down, if any. Inlined where nothing was ever handed down (the constant
/// folds away); read out of line otherwise.
#[inline]
pub(crate) fn inbound() -> Inbound {
    if INBOUND_USED.load(std::sync::atomic::Ordering::Relaxed) {
        inbound_handed_down()
    } else {
        Inbound::NONE
    }
}

/// The deadline of the context handed down, if any (read out of line: see [`inbound`]).
#[inline(never)]
pub(crate) fn inbound_deadline() -> Option<Instant> {
    INBOUND.try_with(|i| i.deadline).ok().flatten()
}

#[inline(never)]
fn inbound_handed_down() -> Inbound {
    INBOUND.try_with(Inbound::clone).unwrap_or_default()
}

/// [`AttemptCtx::unsafe_carried`]: a request that needs a key may have been carried out.
pub(crate) const CARRIED: u8 = 1;
/// [`AttemptCtx::unsafe_carried`]: one of those was the call's own.
pub(crate) const CARRIED_OWN: u8 = 2;
/// [`AttemptCtx::unsafe_carried`], kept across the call's attempts: an earlier attempt may have
/// carried out a request that needs a key (a nested call's, under a key the body gave it,
/// which the next attempt gives it again: that nested call's fallback must not answer for it).
pub(crate) const CARRIED_BEFORE: u8 = 4;

/// Per-attempt context: identities to stamp, and what the attempt's requests recorded.
#[derive(Debug)]
// Laid out in this order (widest first, the key on a 16-byte boundary): built in place in
// every call's session, a key copied across a field's padding stalled on its own stores.
#[repr(C)]
pub(crate) struct AttemptCtx {
    // The call's request and trace ids and the attempt's span id (below): 0 until first asked
    // for (see `request_id()`), so a call that never sends, logs or nests draws none of them.
    request_id: Cell<u128>,
    trace_id: Cell<u128>,
    pub key: Option<Key>,
    /// The breaker and bulkhead this call, or one it is nested in, holds a permit of.
    pub held: Held,
    /// The call's registration with the handler whose keys it and the calls nested in it
    /// derive theirs under ([`ParentKey::enter`]); 0: none.
    pub call: u64,
    /// When this attempt ends: its timeout or the call's deadline, whichever comes first.
    pub until: Instant,
    pub retry_after: Cell<Option<Duration>>,
    /// The caller's request id, when it is not in the form the library draws: sent instead.
    pub request_id_text: Option<Arc<HeaderValue>>,
    span_id: Cell<u64>,
    /// The tokens of the nested calls that failed in this attempt after they could retry on
    /// their own (the last four; 0: none): an error the body returns that carries one of them
    /// is that call's failure, whatever the body did after it.
    pub gave_up: Cell<[u16; 4]>,
    /// The errors that left nested calls into this attempt (their records' ids, the last
    /// four; 0: none): a failure of the attempt with an error of a type the runtime cannot
    /// write into writes this call's attempts and key into those records
    /// ([`crate::error::enclosing`]).
    pub returned: Cell<[u32; 4]>,
    /// The URLs (hashed, [`url_hash`]; 0: none) of this attempt's stamped requests of an
    /// unsafe method not completed yet, the newest first, each with how many of them
    /// (`unsafe_left`); a 307 or 308 followed adds its target. A completion of an unsafe
    /// request that a client of [`ClientSettings`](crate::ClientSettings) reports takes one of
    /// its URL's; at a URL with none left, the request was sent unstamped
    /// ([`AttemptCtx::completed`]).
    pub unsafe_urls: Cell<[u32; 8]>,
    pub unsafe_left: Cell<[u8; 8]>,
    /// The URL (hashed; 0: none) of the last completion reported if it was a stamped unsafe
    /// request's 307 or 308: the redirect that follows from that URL sends that request on
    /// (reqwest's redirect policy does not say the method).
    pub unsafe_hop: Cell<u32>,
    /// The target (hashed) of the 307 or 308 the redirect policy last expected a stamped
    /// request at (see `InFlight` in `http.rs`).
    pub redirect_target: Cell<u32>,
    /// The method and URL (hashed) of the request last reported completed with a redirect
    /// status (`unsafe_hop`'s, when it names one), for the redirect policy that follows and
    /// takes it, from that URL only, and cleared as each poll of a stamped unsafe request
    /// begins (a redirect the policy was never asked about, `Location` missing or a
    /// client that follows none, leaves it for no other request); none when no client
    /// reported one (see `polling`).
    pub hop_method: HopCell,
    /// How many reported completions were matched to stamped requests: a stamped request
    /// whose own poll saw none ended without its completion reported.
    pub matched: Cell<u32>,
    pub attempt: u32,
    pub status: StatusCell,
    /// How the last request the runtime saw failed before any response (a reset, a refused
    /// connect, reqwest's own timeout); `None` once a response arrives. What the retry
    /// decision takes when the body's error says nothing it can read (a type it cannot look
    /// into, an error that dropped its source).
    pub failure: ClassCell,
    /// Requests the body made (stamped) in this attempt that were not sent from it (yet): a
    /// `tokio::spawn`ed `.send()`, one stored and never awaited. Their outcome never comes
    /// back here, so they count as having reached the server, the least safe method first.
    /// Two counts apart (see [`UNPOLLED_SENDS`]): the `.send()`s, and the requests stamped
    /// for `execute`; and a mark for the `execute` future about to be made.
    pub unpolled: Cell<u32>,
    /// The URL (hashed with the method, as expected) of the last request stamped by hand
    /// (`stamp_request`) in this attempt: `execute` in the body does not stamp it again. In
    /// the attempt's context, not the thread's: a helper that stamps, then awaits, may resume
    /// on another thread, or another task may stamp on this one meanwhile.
    pub hand_stamped: Cell<u32>,
    /// How many sends the runtime saw in this attempt so far (stamped, declared, or a nested
    /// call begun): a helper the body awaited that moved it not at all sent nothing the
    /// runtime saw, or what it sent went unseen.
    pub seen: Cell<u32>,
    /// Watched helpers started and not ended: what they send is not known yet (a hedge must
    /// not start beside one, and an attempt ended while one runs counts it as unseen).
    pub helpers_running: Cell<u32>,
    pub trace_flags: u8,
    /// 0 for a call made outside any other; 1 for a call made inside an attempt of another, …
    pub depth: u8,
    /// At least one request of this attempt was stamped (or a nested call sent one).
    pub stamped: Cell<bool>,
    /// Every stamped request carried the key.
    pub all_keyed: Cell<bool>,
    /// The least safe method sent in this attempt.
    pub sent_method: Cell<Option<Method>>,
    /// The least safe method among this attempt's requests that reached the server, or may
    /// have: answered, or failed other than by a refused or timed-out connect. A connect
    /// failure proves only that its own request was never sent; these go out again with the
    /// body.
    pub reached: Cell<Option<Method>>,
    /// How many redirects requests of this attempt followed ([`crate::redirect_policy`]): a
    /// server answered each, so a connect failure after one (the redirect's target refused)
    /// does not prove its request was never sent. A stamped request reads whether the count
    /// moved while it was in flight (another request's redirect during it counts too: the safe
    /// side); one the runtime did not stamp, whether any was followed in the attempt.
    pub redirects: Cell<u32>,
    /// The last response was marked `Idempotent-Replayed: true`.
    pub replayed: Cell<bool>,
    /// The last response was a 409 to a read (GET, HEAD, OPTIONS): a plain conflict, never a
    /// keyed request's "still in progress", whatever its `Retry-After`.
    pub conflict_on_read: Cell<bool>,
    pub unpolled_method: Cell<Option<Method>>,
    /// A nested `#[resilient]` call inside this attempt failed after it could retry itself,
    /// and the body has not gone on since (no request of its own, no other nested call): a
    /// failure of the attempt now is taken for that call's, which the outer call does not
    /// retry again.
    pub nested_gave_up: Cell<bool>,
    /// How the last nested `#[resilient]` call of this attempt failed (its last attempt's
    /// class, `Rejected` when none ran) and the status its handler answered, if any; cleared
    /// as the body goes on. A nested call's responses are its own attempt's, never this one's:
    /// a hedged round reads this to tell whether the handler answered an attempt whose only
    /// request was a nested call's (a 404 there stops the hedging; a refusal does not).
    pub nested_failure: ClassCell,
    pub nested_status: StatusCell,
    /// That nested call gave up once this attempt's time was up (its last attempt cut by this
    /// attempt's end, both ending in the same instant): a failure of the attempt then is that
    /// call's, not this attempt's timeout (see `attempt.rs`). Not one that gave up earlier,
    /// whatever the body did after it: a timeout then is the attempt's own.
    pub nested_gave_up_at_end: Cell<bool>,
    /// A helper the body awaited, handed the client, ran without the runtime seeing a send
    /// (see [`crate::__private::helper`]): it may have sent any method, without the key.
    pub unseen_helper: Cell<bool>,
    /// A `.send()` or `.execute(…)` of another type than reqwest's ran in this attempt (a
    /// service client's own builder): what it sent, if anything, went unseen, so the body's
    /// tokens no longer prove that the policy's method went out only where seen
    /// ([`Policy::sends_seen`](crate::policy::Policy)). [`UNPROVEN`], and
    /// [`UNPROVEN_UNSAFE`] where the send's receiver did not show a safe method
    /// (`tokens.get(u).send()` does; `ledger.post(u).send()`, `sdk.put_object().send()` and
    /// `rb.send()` do not): in a keyed call, that one went without the key.
    pub unproven: Cell<u8>,
    /// The attempt's span has its request's method, server and URL: those of the first
    /// request the attempt sent (an OpenTelemetry span keeps every value recorded, so they are
    /// recorded once).
    pub described: Cell<bool>,
    /// A request of this call carried the call's key (stamped with it, or bringing a header of
    /// the same value). Kept across attempts.
    pub key_sent: Cell<bool>,
    /// A request of this call brought an `Idempotency-Key` of another value (kept as it came).
    /// Kept across attempts.
    pub foreign_key: Cell<bool>,
    /// A request of this attempt that needs a key may have been carried out: answered 2xx,
    /// 3xx, 5xx or 409, lost without an answer after it may have reached the server, or given
    /// up on in flight (a call's fallback is not called after it: `Session::fallback_allowed`).
    /// [`CARRIED`], and [`CARRIED_OWN`] where one of those the runtime stamped for this call
    /// (under its key, in a keyed call): not a nested call's, nor one sent unseen. What the
    /// call's own key may have had carried out. One byte of two marks, as `unproven` is.
    pub unsafe_carried: Cell<u8>,
    /// `retry_after` is what a nested call that gave up passed up (see [`AttemptCtx::went_on`]).
    pub retry_after_nested: Cell<bool>,
    /// The `Retry-After` of an earlier response of the body's own, which the body went on
    /// past (a nested call, a declared send, another type's send after it:
    /// [`AttemptCtx::went_on_to_another`]), moved out of `retry_after`: it governs only a
    /// failure that is that response's own status (returned later), not a later failure (a
    /// nested call's timeout or 503).
    pub retry_after_handled: Cell<Option<Duration>>,
    /// The method of the stamped unsafe request being polled now, as its redirects so far
    /// left it (a POST's when none is, or it is a POST): what the redirect policy reads
    /// where no client reported the hop's method (a client built by hand given
    /// `redirect_policy()`), so that a PATCH's 302 back to its own URL is a loop there too.
    /// Set and taken back around each poll of such a request (`InFlight`, `Observed`).
    pub polling: MethodCell,
    /// The method of the request last stamped for `execute` (see `take_execute_mark`).
    pub execute_method: MethodCell,
}

/// The id in `cell`; while it is 0 (not drawn yet), one drawn by `draw` and kept. The draws
/// never give 0: `.max(1)` on the full range, not a range from 1, which would cost a division
/// on the hot path.
#[inline]
fn drawn<T: Copy + PartialEq + Default>(cell: &Cell<T>, draw: impl FnOnce() -> T) -> T {
    let v = cell.get();
    if v != T::default() {
        return v;
    }
    let v = draw();
    cell.set(v);
    v
}

/// What a call takes from the attempt it runs inside.
/// A request or trace id: the one in `cell`, or one drawn now and kept there (never 0).
#[inline]
pub(crate) fn draw_id(cell: &Cell<u128>) -> u128 {
    drawn(cell, || fastrand::u128(..).max(1))
}

/// [`AttemptCtx::unproven`]: a send of another type ran.
pub(crate) const UNPROVEN: u8 = 1;
/// [`AttemptCtx::unproven`]: ... one whose receiver showed no safe method.
pub(crate) const UNPROVEN_UNSAFE: u8 = 2;

#[derive(Debug, Clone)]
pub(crate) struct Outer {
    pub until: Instant,
    pub trace_id: u128,
    pub trace_flags: u8,
    pub request_id: u128,
    pub request_id_text: Option<Arc<HeaderValue>>,
    pub depth: u8,
    pub held: Held,
    /// An earlier attempt of the enclosing call may have carried out a request that needs a
    /// key ([`CARRIED_BEFORE`]).
    pub carried_before: bool,
}

/// The breakers, bulkheads and adaptive concurrency limits (by address; 0: none) whose probe
/// or slot the enclosing calls hold, the innermost first: a call nested in them with the same
/// named state runs under that permit instead of taking a second one (two probes of one
/// operation would leave a half-open breaker waiting for a probe its own nested call holds;
/// nested calls would wait for slots their callers hold), however many calls with states of
/// their own are between them. The last [`Held::MAX`] kept: a deeper chain of distinct states
/// forgets its outermost ones. A breaker's address with its lowest bit set (addresses of
/// breakers are aligned) is held by an attempt that is one of its half-open probes: a nested
/// call runs under a breaker that is no longer closed only then (see [`Held::holds_probe`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held(pub [usize; Held::MAX]);

// The attempt context's small cells below are kept in bytes and words every byte of which is
// written as it is built (the context keeps some padding elsewhere, away from these). An `Option<u16>`, `Option<Class>` or `Option<(Method, u32)>` that is
// `None` leaves bytes undefined, as does the padding after a pair of method bytes: with
// undefined bytes among the constants the context is built of, LLVM copied runs of its fields
// in through a stack temporary, a 16-byte load that could not be forwarded from the stores
// before it, on every call (BENCHMARKS.md, the thirty-second session).

/// An `Option<Class>` in a word (0: none).
pub(crate) struct ClassCell(Cell<u32>);

impl ClassCell {
    pub(crate) const fn none() -> ClassCell {
        ClassCell(Cell::new(0))
    }
    const STATUS: u32 = 1 << 16;

    pub(crate) fn get(&self) -> Option<crate::classify::Class> {
        use crate::classify::Class;
        Some(match self.0.get() {
            0 => return None,
            1 => Class::Connect,
            2 => Class::Reset,
            3 => Class::Timeout,
            4 => Class::Permanent,
            5 => Class::Rejected,
            s if s & Self::STATUS != 0 => Class::Status(s as u16),
            // No code `set` writes (a class added to it and not here): read as none, and
            // failed loudly in tests.
            _ => {
                debug_assert!(false, "a class code ClassCell::get does not know");
                return None;
            }
        })
    }

    pub(crate) fn set(&self, class: Option<crate::classify::Class>) {
        use crate::classify::Class;
        self.0.set(match class {
            None => 0,
            Some(Class::Connect) => 1,
            Some(Class::Reset) => 2,
            Some(Class::Timeout) => 3,
            Some(Class::Permanent) => 4,
            Some(Class::Rejected) => 5,
            Some(Class::Status(s)) => Self::STATUS | u32::from(s),
        });
    }

    pub(crate) fn clear_mut(&mut self) {
        *self.0.get_mut() = 0;
    }
}

/// An `Option<u16>` (a status) in a word (0: none): copied with one store and read back with
/// one load. An `Option<u16>` is written as two halves (its tag, its value), and reading it
/// back whole right after stalled on the two stores.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Status(u32);

impl Status {
    pub(crate) const NONE: Status = Status(0);
    const SOME: u32 = 1 << 16;

    pub(crate) const fn of(status: Option<u16>) -> Status {
        match status {
            Some(s) => Status(Self::SOME | s as u32),
            None => Status::NONE,
        }
    }

    pub(crate) fn get(self) -> Option<u16> {
        (self.0 & Self::SOME != 0).then_some(self.0 as u16)
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// A [`Status`] in a cell.
pub(crate) struct StatusCell(Cell<Status>);

impl StatusCell {
    pub(crate) const fn none() -> StatusCell {
        StatusCell(Cell::new(Status::NONE))
    }

    pub(crate) fn get(&self) -> Option<u16> {
        self.0.get().get()
    }

    /// The status as it is kept, to copy whole.
    pub(crate) fn packed(&self) -> Status {
        self.0.get()
    }

    pub(crate) fn set(&self, status: Option<u16>) {
        self.0.set(Status::of(status));
    }

    pub(crate) fn clear_mut(&mut self) {
        *self.0.get_mut() = Status::NONE;
    }
}

/// A method in a byte without a niche (laid out with the context's other bytes).
pub(crate) struct MethodCell(Cell<u8>);

impl MethodCell {
    pub(crate) const fn post() -> MethodCell {
        MethodCell(Cell::new(method_code(Method::Post)))
    }

    pub(crate) fn get(&self) -> Method {
        method_of_code(self.0.get())
    }

    pub(crate) fn set(&self, m: Method) {
        self.0.set(method_code(m));
    }

    pub(crate) fn replace(&self, m: Method) -> Method {
        method_of_code(self.0.replace(method_code(m)))
    }

    pub(crate) fn set_mut(&mut self, m: Method) {
        *self.0.get_mut() = method_code(m);
    }
}

/// An `Option<(Method, u32)>` (a method and a URL's hash) in a word (0: none).
pub(crate) struct HopCell(Cell<u64>);

impl HopCell {
    pub(crate) const fn none() -> HopCell {
        HopCell(Cell::new(0))
    }
    const SOME: u64 = 1 << 40;

    pub(crate) fn set(&self, hop: Option<(Method, u32)>) {
        self.0.set(hop.map_or(0, |(m, url)| {
            Self::SOME | u64::from(method_code(m)) << 32 | u64::from(url)
        }));
    }

    pub(crate) fn take(&self) -> Option<(Method, u32)> {
        let v = self.0.replace(0);
        (v & Self::SOME != 0).then(|| (method_of_code((v >> 32) as u8), v as u32))
    }

    pub(crate) fn clear_mut(&mut self) {
        *self.0.get_mut() = 0;
    }
}

const fn method_code(m: Method) -> u8 {
    match m {
        Method::Get => 0,
        Method::Head => 1,
        Method::Options => 2,
        Method::Trace => 3,
        Method::Put => 4,
        Method::Delete => 5,
        Method::Post => 6,
        Method::Patch => 7,
        _ => 8,
    }
}

fn method_of_code(code: u8) -> Method {
    match code {
        0 => Method::Get,
        1 => Method::Head,
        2 => Method::Options,
        3 => Method::Trace,
        4 => Method::Put,
        5 => Method::Delete,
        6 => Method::Post,
        7 => Method::Patch,
        _ => Method::Other,
    }
}

macro_rules! debug_as_get {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.get().fmt(f)
            }
        }
    )*};
}
debug_as_get!(ClassCell, StatusCell, MethodCell);

impl std::fmt::Debug for HopCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0.get();
        (v & Self::SOME != 0)
            .then(|| (method_of_code((v >> 32) as u8), v as u32))
            .fmt(f)
    }
}

impl Held {
    pub(crate) const MAX: usize = 6;

    /// Whether `state` (an address, 0: none) is held.
    #[inline]
    pub(crate) fn holds(&self, state: usize) -> bool {
        state != 0 && self.0.iter().any(|s| s & !1 == state)
    }

    /// Whether the breaker at `state` is held by an attempt that is its half-open probe.
    #[inline]
    pub(crate) fn holds_probe(&self, state: usize) -> bool {
        state != 0 && self.0.contains(&(state | 1))
    }

    /// Marks the breaker at `state` as held by a half-open probe, or not.
    #[cold]
    pub(crate) fn mark_probe(&mut self, state: usize, probe: bool) {
        if let Some(s) = self.0.iter_mut().find(|s| **s != 0 && **s & !1 == state) {
            *s = state | usize::from(probe);
        }
    }

    /// The states of a call nested in none (its own, 0 for none).
    #[inline]
    pub(crate) fn outermost(own: [usize; 3]) -> Held {
        let mut held = Held::default();
        held.0[..3].copy_from_slice(&own);
        held
    }

    /// The states of a call nested in these (its own, 0 for none), and which of its own are
    /// held already. The states held are first put in front (an outermost call's empty places
    /// removed), so that the ones pushed out past [`Held::MAX`] are states, not empty places.
    /// Out of line: a call nested in none (the common case) carries none of it.
    #[inline(never)]
    pub(crate) fn nested(self, own: [usize; 3]) -> (Held, [bool; 3]) {
        let already = own.map(|s| self.holds(s));
        let mut held = Held::default();
        let mut at = 0;
        for s in self.0 {
            held.0[at] = s;
            at += usize::from(s != 0);
        }
        for (s, already) in own.into_iter().zip(already) {
            if s != 0 && !already {
                held.0.copy_within(0..Held::MAX - 1, 1);
                held.0[0] = s;
            }
        }
        (held, already)
    }
}

impl AttemptCtx {
    /// A call's context before its first attempt (numbered 0, no span id yet), ending at
    /// `until`, nothing recorded, under the states `held` by it or its callers.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        request_id: u128,
        request_id_text: Option<Arc<HeaderValue>>,
        trace_id: u128,
        trace_flags: u8,
        key: Option<Key>,
        until: Instant,
        depth: u8,
        held: Held,
        call: u64,
        carried: u8,
    ) -> AttemptCtx {
        AttemptCtx {
            attempt: 0,
            call,
            request_id: Cell::new(request_id),
            request_id_text,
            trace_id: Cell::new(trace_id),
            span_id: Cell::new(0),
            trace_flags,
            key,
            until,
            depth,
            held,
            stamped: Cell::new(false),
            all_keyed: Cell::new(true),
            sent_method: Cell::new(None),
            reached: Cell::new(None),
            status: StatusCell::none(),
            failure: ClassCell::none(),
            redirects: Cell::new(0),
            retry_after: Cell::new(None),
            replayed: Cell::new(false),
            conflict_on_read: Cell::new(false),
            unpolled: Cell::new(0),
            hand_stamped: Cell::new(0),
            unpolled_method: Cell::new(None),
            nested_gave_up: Cell::new(false),
            nested_failure: ClassCell::none(),
            nested_status: StatusCell::none(),
            nested_gave_up_at_end: Cell::new(false),
            gave_up: Cell::new([0; 4]),
            returned: Cell::new([0; 4]),
            unsafe_urls: Cell::new([0; 8]),
            unsafe_left: Cell::new([0; 8]),
            unsafe_hop: Cell::new(0),
            redirect_target: Cell::new(0),
            hop_method: HopCell::none(),
            polling: MethodCell::post(),
            execute_method: MethodCell::post(),
            matched: Cell::new(0),
            seen: Cell::new(0),
            unseen_helper: Cell::new(false),
            unproven: Cell::new(0),
            helpers_running: Cell::new(0),
            described: Cell::new(false),
            key_sent: Cell::new(false),
            foreign_key: Cell::new(false),
            unsafe_carried: Cell::new(carried),
            retry_after_nested: Cell::new(false),
            retry_after_handled: Cell::new(None),
        }
    }

    /// The key an error of this call names: the call's, unless no request of the call carried
    /// it and one brought a key of its own (then the call's key reached no server, and naming
    /// it would send the caller looking for an outcome under a key the server never saw).
    pub(crate) fn named_key(&self) -> Option<&Key> {
        self.key
            .as_ref()
            .filter(|_| self.key_sent.get() || !self.foreign_key.get())
    }

    /// The call's request id, the same on every attempt: the caller's (inbound or enclosing
    /// call's), or drawn the first time it is asked for. Never zero.
    /// Where the request id is kept (0 until drawn).
    pub(crate) fn request_id_cell(&self) -> &Cell<u128> {
        &self.request_id
    }

    pub(crate) fn request_id(&self) -> u128 {
        draw_id(&self.request_id)
    }

    /// The call's request id as sent and logged: the caller's as it came, or 32 hex digits.
    pub(crate) fn request_id_shown(&self) -> RequestId<'_> {
        match &self.request_id_text {
            Some(v) => RequestId::Text(v),
            None => RequestId::Drawn(self.request_id()),
        }
    }

    /// The call's trace id, the same on every attempt: the caller's, or drawn the first time
    /// it is asked for. Never zero (W3C: an all-zero trace id is invalid).
    pub(crate) fn trace_id(&self) -> u128 {
        drawn(&self.trace_id, || fastrand::u128(..).max(1))
    }

    /// This attempt's span id, drawn the first time it is asked for. Never zero.
    pub(crate) fn span_id(&self) -> u64 {
        drawn(&self.span_id, || fastrand::u64(..).max(1))
    }

    /// The next attempt gets a span id of its own (drawn when asked for).
    pub(crate) fn new_span(&mut self) {
        *self.span_id.get_mut() = 0;
    }

    /// Nothing recorded yet: for the next attempt in the same context.
    pub(crate) fn reset(&mut self) {
        *self.stamped.get_mut() = false;
        *self.all_keyed.get_mut() = true;
        *self.sent_method.get_mut() = None;
        *self.reached.get_mut() = None;
        self.status.clear_mut();
        self.failure.clear_mut();
        *self.redirects.get_mut() = 0;
        *self.retry_after.get_mut() = None;
        *self.replayed.get_mut() = false;
        *self.conflict_on_read.get_mut() = false;
        *self.unpolled.get_mut() = 0;
        *self.hand_stamped.get_mut() = 0;
        *self.unpolled_method.get_mut() = None;
        *self.nested_gave_up.get_mut() = false;
        self.nested_failure.clear_mut();
        self.nested_status.clear_mut();
        *self.nested_gave_up_at_end.get_mut() = false;
        *self.gave_up.get_mut() = [0; 4];
        *self.returned.get_mut() = [0; 4];
        // The URLs stay: one with nothing outstanding expects nothing (`matched` is read as a
        // difference, `redirect_target` is cleared before each poll that reads it).
        *self.unsafe_left.get_mut() = [0; 8];
        *self.unsafe_hop.get_mut() = 0;
        // Taken back after each poll; a poll that unwound (a panic) left it set.
        self.polling.set_mut(Method::Post);
        self.hop_method.clear_mut();
        *self.seen.get_mut() = 0;
        *self.unseen_helper.get_mut() = false;
        *self.unproven.get_mut() = 0;
        *self.helpers_running.get_mut() = 0;
        *self.described.get_mut() = false;
        // Kept as `CARRIED_BEFORE` when this attempt (or one before it) may have carried out a
        // request that needs a key: not for a keyed PUT's own bit alone (none needs a key).
        let carried = *self.unsafe_carried.get_mut();
        *self.unsafe_carried.get_mut() = if carried & (CARRIED | CARRIED_BEFORE) != 0 {
            CARRIED_BEFORE
        } else {
            0
        };
        *self.retry_after_nested.get_mut() = false;
        *self.retry_after_handled.get_mut() = None;
    }

    /// A stamped request expected at the URL of hash `url` ended without its completion
    /// reported (sent through a client that reports none, or dropped before its outcome):
    /// it is no longer expected, so no other request's completion is taken for it.
    /// Whether one was outstanding (not: another request's completion was taken for it).
    pub(crate) fn unexpect(&self, url: u32) -> bool {
        let urls = self.unsafe_urls.get();
        let mut left = self.unsafe_left.get();
        match urls.iter().position(|u| *u == url) {
            Some(i) if left[i] > 0 => {
                left[i] -= 1;
                self.unsafe_left.set(left);
                true
            }
            // Pushed out of the eight kept: nothing to take back, nothing known taken.
            None => true,
            Some(_) => false,
        }
    }

    /// One more stamped unsafe request to the URL of hash `url` (stamped, or sent on there
    /// by a 307 or 308). The last eight URLs are kept (their requests completed or not): one
    /// pushed out that still has a request outstanding has that completion counted as
    /// unstamped (a retry lost, never a request resent).
    pub(crate) fn expect_at(&self, url: u32) {
        let mut urls = self.unsafe_urls.get();
        let mut left = self.unsafe_left.get();
        match urls.iter().position(|u| *u == url) {
            Some(i) => left[i] = left[i].saturating_add(1),
            // A place with nothing outstanding first (the last one, the oldest, of those);
            // only when all eight are in use is the oldest pushed out.
            None => match left.iter().rposition(|l| *l == 0) {
                Some(i) => {
                    urls[i] = url;
                    left[i] = 1;
                }
                None => {
                    urls.rotate_right(1);
                    left.rotate_right(1);
                    urls[0] = url;
                    left[0] = 1;
                }
            },
        }
        self.unsafe_urls.set(urls);
        self.unsafe_left.set(left);
    }

    /// A request of `m` to the URL of hash `url` completed (answered, `sent_on` if by a 307 or
    /// 308; or failed, `reached` if not by a connect failure) through a client built by
    /// [`ClientSettings`](crate::ClientSettings), as reqwest's classifier tells it in the task
    /// that sent it. An unsafe one the runtime did not stamp (none of its URL's outstanding)
    /// was sent by the body's code where the runtime does not stamp (an SDK's type holding the
    /// client): where it may have reached the server, the attempt counts its method among
    /// those it sent, without the key, so that an unkeyed POST is not sent again. Only that:
    /// one that could not connect changes nothing (it was never sent), none makes the attempt
    /// (or a watched helper) one seen sending, and a safe one changes nothing.
    #[cold]
    pub(crate) fn completed(
        &self,
        m: Method,
        url: u32,
        reached: bool,
        refused: bool,
        sent_on: bool,
        redirected: Option<u32>,
    ) {
        // Set below only by a stamped unsafe request's redirect that sends it on as it was:
        // any other completion (its redirect not followed, a 307 without `Location`) leaves
        // none for a later redirect. Its method when answered with a redirect, for the
        // redirect policy that follows (and only then: a PUT answered 204 leaves nothing for a
        // later GET's 302 through a client that reports nothing), with its URL (`redirected`).
        self.unsafe_hop.set(0);
        self.hop_method.set(redirected.map(|from| (m, from)));
        if m.is_safe() {
            return;
        }
        let hop = url;
        // Expected by URL and method: an SDK's POST is not taken for a stamped PUT there.
        let url = with_method(url, m);
        let urls = self.unsafe_urls.get();
        let mut left = self.unsafe_left.get();
        if let Some(i) = urls.iter().position(|u| *u == url)
            && left[i] > 0
        {
            left[i] -= 1;
            self.unsafe_left.set(left);
            self.unsafe_hop.set(if sent_on { hop } else { 0 });
            self.matched.set(self.matched.get().wrapping_add(1));
            // It reached the server (carried out, unless refused with a 4xx): known now, not
            // only from the outcome the send returns, which a middleware may make another
            // request's (its own resend that could not connect, an audit call after it).
            if reached {
                self.note_answered(m, refused);
            }
            return;
        }
        if reached || self.redirects.get() != 0 {
            // At a URL the attempt stamped a request of this method for, its expectation used:
            // that request sent again under the hood (a middleware's own retry), under the
            // call's key. What it carried out is the call's own.
            if urls.contains(&url) {
                self.unsafe_carried
                    .set(self.unsafe_carried.get() | CARRIED_OWN);
            }
            self.completed_unmatched(m);
        }
    }

    /// An unsafe request of `m` the runtime did not stamp may have reached the server: its
    /// method counts among those the attempt sent, without the key.
    pub(crate) fn completed_unmatched(&self, m: Method) {
        self.note_method(m);
        self.went_on();
        self.all_keyed.set(false);
        self.note_carried(m);
    }

    /// A poll of a stamped unsafe request of (what its redirects so far made) method `m`
    /// begins: a redirect it follows reads `m` where no client reports the hop's method; a
    /// method a client reported for a redirect never asked about (no `Location`, a client
    /// that follows none) is not this request's, and is cleared (its own is reported in this
    /// poll, before the policy reads it).
    pub(crate) fn polling_begins(&self, m: Method) {
        self.polling.set(m);
        self.hop_method.set(None);
    }

    /// That poll ended: its method as the redirects followed in it left it (a 303 makes it a
    /// GET's), and none for another request's poll.
    pub(crate) fn polling_ends(&self) -> Method {
        self.polling.replace(Method::Post)
    }

    /// The runtime saw a send (or a nested call) in this attempt.
    #[inline]
    pub(crate) fn saw(&self) {
        self.seen.set(self.seen.get().wrapping_add(1));
    }

    /// A nested call of this attempt ended failing so (`None`: it did not): see
    /// `nested_failure`.
    pub(crate) fn nested_ended(&self, failed: Option<(crate::classify::Class, Option<u16>)>) {
        self.nested_failure.set(failed.map(|f| f.0));
        self.nested_status.set(failed.and_then(|f| f.1));
    }

    /// A nested call of token `token` failed after it could retry on its own.
    pub(crate) fn note_gave_up(&self, token: u16) {
        let mut t = self.gave_up.get();
        t.rotate_right(1);
        t[0] = token;
        self.gave_up.set(t);
    }

    /// An error left a nested call into this attempt, its record `id` (see
    /// [`crate::error::enclosing`]).
    pub(crate) fn note_returned(&self, id: u32) {
        let r = self.returned.get();
        if r.contains(&id) {
            return;
        }
        // The newest first; the records of errors already gone (those of a nested call's
        // attempts it retried) make way before any other.
        let mut kept = [0; 4];
        kept[0] = id;
        let live = r
            .into_iter()
            .filter(|&x| x != 0 && crate::error::enclosing::alive(x));
        for (slot, x) in kept[1..].iter_mut().zip(live) {
            *slot = x;
        }
        self.returned.set(kept);
    }

    pub(crate) fn note_method(&self, m: Method) {
        let worst = self.sent_method.get().map_or(m, |prev| prev.least_safe(m));
        self.sent_method.set(Some(worst));
    }

    /// The body went on: it sent a request of its own (stamped or declared), or started
    /// another nested call. After a nested call that gave up, that means the body handled the
    /// failure (`unwrap_or_default`, a match): the attempt's failure from now on may be a
    /// later one, which no layer retried yet.
    ///
    /// The `Retry-After` a nested call that gave up passed up goes too: it was that failure's
    /// (its fallback may have answered it), not a later one's; one of the body's own requests
    /// stays until its next request.
    #[inline]
    pub(crate) fn went_on(&self) {
        self.nested_gave_up.set(false);
        self.nested_failure.set(None);
        self.nested_status.set(None);
        self.nested_gave_up_at_end.set(false);
        if self.retry_after_nested.replace(false) {
            self.retry_after.set(None);
        }
    }

    /// The body went on ([`went_on`](Self::went_on)) with a send of a kind whose outcome
    /// the attempt does not see as a response of its own (a nested call begun, a declared
    /// send, another type's send): the `Retry-After` of an earlier response (a 429 the body
    /// handled) does not govern a failure without a response after it (the nested call's
    /// timeout), as for a request of the body's own ([`request_started`](Self::request_started));
    /// it stays for that response's own status, should the body return it later.
    pub(crate) fn went_on_to_another(&self) {
        self.went_on();
        if let Some(handled) = self.retry_after.take() {
            let before = self.retry_after_handled.get();
            self.retry_after_handled
                .set(Some(before.map_or(handled, |b| b.max(handled))));
        }
    }

    /// This attempt, as a request made in it remembers it ([`AttemptId`]).
    #[inline]
    pub(crate) fn id(&self) -> AttemptId {
        AttemptId(std::ptr::from_ref(self) as usize, self.attempt)
    }

    /// A request of `m` was made (and stamped) in this attempt; [`AttemptCtx::polled`] when
    /// it is sent from it.
    pub(crate) fn made(&self, m: Method) {
        self.count_unpolled(1, UNPOLLED_SENDS);
        self.made_method(m);
    }

    /// A request of `m` was stamped for `execute` in this attempt: counted apart from the
    /// `.send()`s, and marked for the `execute` future made next, which
    /// [`AttemptCtx::take_execute_mark`]s it and alone takes the count back
    /// ([`AttemptCtx::polled_execute`]): the future of a wrapper's `execute` handed a builder
    /// takes none, neither a spawned `.send()`'s nor a spawned `execute`'s.
    pub(crate) fn made_for_execute(&self, m: Method) {
        self.count_unpolled(UNPOLLED_EXECUTE, UNPOLLED_EXECUTES);
        self.unpolled.set(self.unpolled.get() | EXECUTE_MARK);
        self.execute_method.set(m);
        self.made_method(m);
    }

    /// One more in `field` of `unpolled` (`unit` its one): saturating there.
    fn count_unpolled(&self, unit: u32, field: u32) {
        let u = self.unpolled.get();
        if u & field != field {
            self.unpolled.set(u + unit);
        }
    }

    /// One less in `field` of `unpolled`: not below none, and not once saturated (more were
    /// made than it counts, and some may be sent elsewhere).
    fn uncount_unpolled(&self, unit: u32, field: u32) {
        let u = self.unpolled.get();
        if u & field != 0 && u & field != field {
            self.unpolled.set(u - unit);
        }
    }

    fn made_method(&self, m: Method) {
        let worst = self
            .unpolled_method
            .get()
            .map_or(m, |prev| prev.least_safe(m));
        self.unpolled_method.set(Some(worst));
    }

    /// Whether the `execute` future just made is the one of a request stamped for it (see
    /// [`AttemptCtx::made_for_execute`]), and then that request's method; the mark taken.
    pub(crate) fn take_execute_mark(&self) -> Option<Method> {
        let u = self.unpolled.get();
        self.unpolled.set(u & !EXECUTE_MARK);
        (u & EXECUTE_MARK != 0).then(|| self.execute_method.get())
    }

    /// Whether requests made here were not sent from here (see [`AttemptCtx::unpolled`]).
    pub(crate) fn unpolled_outstanding(&self) -> bool {
        self.unpolled.get() & !EXECUTE_MARK != 0
    }

    /// A request [`made`](AttemptCtx::made) here is sent from here: its outcome is recorded
    /// when it ends here ([`AttemptCtx::ended_here`]), which takes its count back. Until then
    /// it counts as possibly sent: its future may yet be handed to another task (polled once
    /// under a `timeout`, then spawned), where its outcome never comes back here.
    pub(crate) fn polled(&self) {
        self.request_started();
    }

    /// A request [`polled`](AttemptCtx::polled) here, made in the attempt `made_in`, ended
    /// here (its outcome recorded, or its future dropped here): its count taken back if this
    /// is the attempt that made it (one made elsewhere, a nested call's caller's, leaves this
    /// attempt's count of its own requests alone, and stays counted in its own).
    pub(crate) fn ended_here(&self, made_in: AttemptId) {
        if made_in == self.id() {
            self.uncount_unpolled(1, UNPOLLED_SENDS);
        }
    }

    /// An `execute` future is sent from here: if it is a request's stamped for it, that
    /// request's count is taken back when it ends here ([`AttemptCtx::execute_ended_here`]).
    pub(crate) fn polled_execute(&self) {
        self.request_started();
    }

    /// An `execute` future [`polled`](AttemptCtx::polled_execute) here ended here: if it is a
    /// request's stamped for it in this attempt (`counted`: the attempt it was stamped in),
    /// that request's count taken back.
    pub(crate) fn execute_ended_here(&self, counted: Option<AttemptId>) {
        if counted == Some(self.id()) {
            self.uncount_unpolled(UNPOLLED_EXECUTE, UNPOLLED_EXECUTES);
        }
    }

    /// A request starts: what an earlier one recorded (a 429 the body handled, its
    /// `Retry-After`) says nothing of it, nor of a timeout or a drop that ends it.
    pub(crate) fn request_started(&self) {
        self.status.set(None);
        self.failure.set(None);
        self.retry_after.set(None);
        self.retry_after_nested.set(false);
        self.retry_after_handled.set(None);
        self.replayed.set(false);
    }

    /// A request of `m` reached the server, or may have, and may have been carried out there
    /// (see [`AttemptCtx::unsafe_carried`]).
    pub(crate) fn note_carried(&self, m: Method) {
        self.note_reached(m);
        if m.needs_key() {
            self.unsafe_carried.set(self.unsafe_carried.get() | CARRIED);
        }
    }

    /// [`note_carried`](Self::note_carried) for a request the runtime stamped for this call
    /// (see [`AttemptCtx::unsafe_carried`]).
    ///
    /// Its own bit for any method that is not safe: a keyed PUT or DELETE carried out is one
    /// under the call's key too, though only a POST or PATCH needs one.
    pub(crate) fn note_own_carried(&self, m: Method) {
        self.note_reached(m);
        let own = if m.is_safe() { 0 } else { CARRIED_OWN };
        let any = if m.needs_key() { CARRIED } else { 0 };
        self.unsafe_carried
            .set(self.unsafe_carried.get() | own | any);
    }

    /// A request of `m` the runtime stamped reached the server: carried out, or may have been,
    /// unless `refused` ([`refused_before_acting`]).
    pub(crate) fn note_answered(&self, m: Method, refused: bool) {
        if refused {
            self.note_reached(m);
        } else {
            self.note_own_carried(m);
        }
    }

    /// A request of `m` reached the server, or may have (see [`AttemptCtx::reached`]).
    pub(crate) fn note_reached(&self, m: Method) {
        let worst = self.reached.get().map_or(m, |prev| prev.least_safe(m));
        self.reached.set(Some(worst));
    }

    /// Whether an earlier run of this attempt's call may have carried out a request under a
    /// key ([`Outer::carried_before`]).
    pub(crate) fn carried_before(&self) -> bool {
        self.unsafe_carried.get() & CARRIED_BEFORE != 0
    }

    /// Whether this attempt, or an earlier run, may have carried out a request under a key.
    pub(crate) fn carried_any(&self) -> bool {
        self.unsafe_carried.get() & (CARRIED | CARRIED_BEFORE) != 0
    }

    /// Tells this attempt (a hedge) that another of its round may have carried out a request
    /// under a key: its nested calls given their keys again are told so.
    pub(crate) fn mark_carried_before(&self) {
        self.unsafe_carried
            .set(self.unsafe_carried.get() | CARRIED_BEFORE);
    }

    pub(crate) fn outer(&self) -> Outer {
        Outer {
            until: self.until,
            trace_id: self.trace_id(),
            trace_flags: self.trace_flags,
            request_id: self.request_id(),
            request_id_text: self.request_id_text.clone(),
            depth: self.depth,
            held: self.held,
            carried_before: self.carried_before(),
        }
    }
}

/// `AttemptCtx::unpolled`'s count of `.send()`s (its low 16 bits, saturating there).
const UNPOLLED_SENDS: u32 = 0xffff;
/// One request stamped for `execute`, counted in bits 16 to 30 (saturating there).
const UNPOLLED_EXECUTE: u32 = 1 << 16;
const UNPOLLED_EXECUTES: u32 = 0x7fff << 16;
/// The mark of a request stamped for `execute`, for the future made next (bit 31).
const EXECUTE_MARK: u32 = 1 << 31;

/// The attempt a request was made in: its context's address (fixed while its body runs) and
/// its number (a later attempt's context may take the same place). A request that ends in
/// another attempt (a nested call's it was handed to) takes back only its own attempt's count
/// of requests not ended there, never that other attempt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptId(usize, u32);

/// What the current attempt looks like from inside a `#[resilient]` function.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptInfo {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The `X-Request-Id` of the call, the same on every attempt.
    pub request_id: String,
    /// The `Idempotency-Key` of the call, the same on every attempt.
    pub idempotency_key: Option<String>,
    /// The attempt's trace context as a W3C `traceparent`: what its requests send (with the
    /// `opentelemetry` feature and an OpenTelemetry context current, the same context; the
    /// global propagator decides what goes on the wire, and one that writes another format,
    /// B3, sends it in that format and no `traceparent`). A `traceparent` set by hand on a
    /// request is not reflected here.
    pub traceparent: String,
    /// Time left before this attempt ends (its timeout or the call's deadline).
    pub time_left: Duration,
    /// 0 for a call made outside any other, 1 for a call nested in another's attempt, …
    pub depth: u8,
}

/// The current attempt, when called from inside a `#[resilient]` function.
pub fn current_attempt() -> Option<AttemptInfo> {
    with_attempt(|c| AttemptInfo {
        attempt: c.attempt,
        request_id: c.request_id_shown().to_string(),
        idempotency_key: c
            .key
            .as_ref()
            .and_then(|k| k.header().to_str().ok().map(str::to_owned)),
        // telemetry (issue 12): the OpenTelemetry trace context when there is one.
        traceparent: crate::telemetry::traceparent(c.trace_id(), c.span_id(), c.trace_flags),
        time_left: c.until.saturating_duration_since(Instant::now()),
        depth: c.depth,
    })
}

/// A call's request id as it appears in `X-Request-Id` and in the call's span: 32 hex digits,
/// or the caller's own as it came.
pub(crate) enum RequestId<'a> {
    Drawn(u128),
    Text(&'a HeaderValue),
}

impl std::fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Drawn(n) => f.write_str(hex32(*n).as_str()),
            // Checked visible ASCII when it was handed down.
            RequestId::Text(v) => f.write_str(v.to_str().unwrap_or_default()),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 32 lower-case hex digits, on the stack.
pub(crate) struct Hex32([u8; 32]);

impl Hex32 {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

pub(crate) fn hex32(v: u128) -> Hex32 {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    Hex32(out)
}

/// A W3C `traceparent` value, formatted on the stack: `00-{trace}-{span}-{flags}`.
pub(crate) struct Traceparent([u8; 55]);

impl Traceparent {
    pub(crate) fn new(trace: u128, span: u64, flags: u8) -> Traceparent {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        out[3..35].copy_from_slice(&hex32(trace).0);
        for i in 0..16 {
            out[36 + i] = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
        }
        out[53] = HEX[(flags >> 4) as usize];
        out[54] = HEX[(flags & 0xf) as usize];
        Traceparent(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Parses a W3C `traceparent`: (trace id, parent id, flags, the sampled bit only). Version 00 exactly as the spec
/// writes it; a higher version (not `ff`) by its first four fields, as the spec asks of a
/// parser that knows only 00, with anything after them behind a `-`. `None` for anything else,
/// including the all-zero ids the spec calls invalid.
pub(crate) fn parse_traceparent(v: &str) -> Option<(u128, u64, u8)> {
    let v = v.trim();
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let version = &v[..2];
    if !hex(version) || version == "ff" {
        return None;
    }
    let longer = b.len() > 55;
    if longer && (version == "00" || b[55] != b'-') {
        return None;
    }
    let (t, s, f) = (&v[3..35], &v[36..52], &v[53..55]);
    if !(hex(t) && hex(s) && hex(f)) {
        return None;
    }
    let trace = u128::from_str_radix(t, 16).ok()?;
    let span = u64::from_str_radix(s, 16).ok()?;
    // Only the sampled bit is defined: the others are sent on as zero, as the spec asks.
    let flags = u8::from_str_radix(f, 16).ok()? & 0x01;
    (trace != 0 && span != 0).then_some((trace, span, flags))
}

/// The URL (hashed; 0: none) at which a stamped request of `m` is expected to complete: an
/// unsafe one whose body reqwest can copy (it reports only what it could send again: a stream
/// or `multipart` body's completion never comes, and an expectation left would take another
/// request's for it).
pub(crate) fn expected_url(m: Method, req: &reqwest::Request) -> u32 {
    if m.is_safe() || req.body().is_some_and(|b| b.as_bytes().is_none()) {
        0
    } else {
        with_method(hash_of_url(req.url()), m)
    }
}

/// A URL's hash mixed with a method's: what a completion is expected by. Never 0.
pub(crate) fn with_method(url: u32, m: Method) -> u32 {
    // The method's byte (as `MethodCell` keeps it), from 1.
    let code = u32::from(method_code(m)) + 1;
    (url ^ code.wrapping_mul(0x9E37_79B9)).max(1)
}

/// [`url_hash`] of the URL a request was stamped with (or redirected to).
pub(crate) fn hash_of_url(url: &reqwest::Url) -> u32 {
    url_hash(
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0),
        url.path(),
        url.query(),
    )
}

/// [`url_hash`] of the URI a request went out with.
pub(crate) fn hash_of_uri(uri: &http::Uri) -> u32 {
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    url_hash(uri.host().unwrap_or(""), port, uri.path(), uri.query())
}

/// A request URL's hash (FNV-1a of host, port, path and query), the same for the `Url` a
/// request was stamped with and the `Uri` it went out with. Never 0 (the empty place).
fn url_hash(host: &str, port: u16, path: &str, query: Option<&str>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(host.as_bytes());
    eat(&port.to_le_bytes());
    eat(path.as_bytes());
    if let Some(q) = query {
        eat(b"?");
        eat(q.as_bytes());
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    /// What each of the context's packed cells is given, it gives back.
    #[test]
    fn the_packed_cells_keep_what_they_are_given() {
        use crate::classify::Class;
        let class = super::ClassCell::none();
        assert_eq!(class.get(), None);
        let classes = [
            Class::Connect,
            Class::Reset,
            Class::Timeout,
            Class::Permanent,
            Class::Rejected,
        ];
        // Every class is listed above: a class added fails to compile here until it is.
        for c in classes {
            match c {
                Class::Connect
                | Class::Reset
                | Class::Timeout
                | Class::Status(_)
                | Class::Permanent
                | Class::Rejected => {}
            }
        }
        for c in classes.into_iter().chain((0..=u16::MAX).map(Class::Status)) {
            class.set(Some(c));
            assert_eq!(class.get(), Some(c));
        }
        class.set(None);
        assert_eq!(class.get(), None);
        let status = super::StatusCell::none();
        assert_eq!(status.get(), None);
        for s in 0..=u16::MAX {
            status.set(Some(s));
            assert_eq!(status.get(), Some(s));
        }
        status.set(None);
        assert_eq!(status.get(), None);
        let methods = Method::NAMED.iter().copied().chain([Method::Other]);
        let method = super::MethodCell::post();
        assert_eq!(method.get(), Method::Post);
        let hop = super::HopCell::none();
        assert_eq!(hop.take(), None);
        for m in methods {
            let before = method.get();
            assert_eq!(method.replace(m), before);
            assert_eq!(method.get(), m);
            for url in [0, 1, u32::MAX] {
                hop.set(Some((m, url)));
                assert_eq!(hop.take(), Some((m, url)));
                assert_eq!(hop.take(), None, "taken");
            }
        }
    }

    /// A context moved to another trace drops the `tracestate` of the one it was in; one
    /// given before any trace (or for the same trace) stays.
    #[test]
    fn a_tracestate_stays_with_its_trace() {
        const T1: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        const T2: &str = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
        let joined = Inbound::NONE
            .traceparent(T1)
            .tracestate("congo=t61rcWkgMzE");
        assert!(joined.tracestate.is_some());
        assert!(joined.clone().traceparent(T1).tracestate.is_some());
        assert!(joined.traceparent(T2).tracestate.is_none());
        let before = Inbound::NONE
            .tracestate("congo=t61rcWkgMzE")
            .traceparent(T2);
        assert!(before.tracestate.is_some());
    }

    /// W3C Trace Context's `tracestate` rules, as its test suite checks them.
    #[test]
    fn tracestate_is_read_as_the_w3c_list_it_is() {
        use super::valid_tracestate as v;
        assert_eq!(v("congo=t61rcWkgMzE").as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(
            v(" congo=t61 , ,rojo=00f0,\tfw529a3039@dt=x ").as_deref(),
            Some("congo=t61,rojo=00f0,fw529a3039@dt=x")
        );
        // Keys: lower case or digits first, then the spec's characters; values without `,`
        // or `=`. A key repeated: its first kept.
        assert_eq!(v("foo=1,bar=2,foo=3").as_deref(), Some("foo=1,bar=2"));
        for good in ["foo@=1", "1foo=1", "foo@@bar=1", "t@vvvvvvvvvvvvvvv=1"] {
            assert_eq!(v(good).as_deref(), Some(good), "{good}");
        }
        for bad in [
            "FOO=1",
            "@foo=1",
            "_foo=1",
            "foo.bar=1",
            "foo=",
            "foo=a=b",
            "garbage",
            "foo=1,garbage",
            "foo=\u{7f}",
        ] {
            assert_eq!(v(bad), None, "{bad}");
        }
        assert_eq!(v("foo=1 2").as_deref(), Some("foo=1 2"));
        assert_eq!(v(""), None);
        assert_eq!(v(" , "), None);
        // 32 members at most.
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            v(&members[..32].join(",")).map(|l| l.matches('=').count()),
            Some(32)
        );
        assert_eq!(v(&members.join(",")), None);
        // Over 512: members over 128 characters go first, then from the end.
        let long = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..20)
            .map(|i| format!("k{i}={}", "y".repeat(14)))
            .collect();
        let list = format!("{},{long},{}", small[..10].join(","), small[10..].join(","));
        let cut = v(&list).unwrap();
        assert!(!cut.contains("big="), "{cut}");
        assert_eq!(cut, small.join(","));
        let many: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "z".repeat(20)))
            .collect();
        let cut = v(&many.join(",")).unwrap();
        assert!(
            cut.len() <= 512 && cut.starts_with("k00=") && !cut.contains("k29="),
            "{cut}"
        );
    }

    use super::*;

    /// The hash of a URL as stamped (`Url`) and as reqwest sends it (`Uri`, from the URL's
    /// text, fragment dropped) is one: a default port written or not, IPv6, a query, a path
    /// with escapes.
    #[test]
    fn a_url_hashes_alike_stamped_and_sent() {
        for u in [
            "http://127.0.0.1:8080/charge",
            "https://pay.example/v1/charges?expand=all",
            "http://[::1]:9000/a%20b",
            "https://pay.example:443/",
            "http://pay.example/x#part",
        ] {
            let url = reqwest::Url::parse(u).unwrap();
            let mut sent = url.clone();
            sent.set_fragment(None);
            let uri: http::Uri = sent.as_str().parse().unwrap();
            assert_eq!(hash_of_url(&url), hash_of_uri(&uri), "{u}");
        }
        assert_ne!(
            url_hash("a", 80, "/charge", None),
            url_hash("a", 80, "/refund", None)
        );
    }

    /// A chain of calls with states of their own: each finds the states its callers hold,
    /// however many are between them, the innermost first, the outermost forgotten past
    /// `Held::MAX`.
    #[test]
    fn held_states_follow_the_chain_of_calls() {
        // A holds breaker 80 and bulkhead 88; B breaker 160; C breaker 80 again (addresses of
        // states: aligned).
        let a = Held([80, 88, 0, 0, 0, 0]);
        let (b, b_held) = a.nested([160, 0, 0]);
        assert_eq!(b_held, [false; 3]);
        assert_eq!(b.0, [160, 80, 88, 0, 0, 0]);
        let (c, c_held) = b.nested([80, 88, 240]);
        assert_eq!(c_held, [true, true, false]);
        assert_eq!(c.0, [240, 160, 80, 88, 0, 0]);
        // Three more levels of new states: the outermost (80, 88) forgotten first.
        let (d, _) = c.nested([320, 328, 0]);
        assert_eq!(d.0, [328, 320, 240, 160, 80, 88]);
        let (e, e_held) = d.nested([400, 0, 0]);
        assert_eq!(e.0, [400, 328, 320, 240, 160, 80]);
        assert!(!e.holds(88) && e.holds(80) && !e.holds(0));
        assert_eq!(e_held, [false; 3]);
    }

    /// A call holding only some of its three states (a concurrency limit, no breaker or
    /// bulkhead): four states of nested calls later, its limit is still held (it sat behind
    /// two empty places, and was forgotten).
    #[test]
    fn an_outermost_calls_states_are_kept_in_front() {
        let a = Held::outermost([0, 0, 56]);
        let (b, _) = a.nested([160, 168, 0]);
        assert_eq!(b.0, [168, 160, 56, 0, 0, 0]);
        let (c, _) = b.nested([240, 248, 0]);
        assert!(c.holds(56), "{c:?}");
        assert_eq!(c.nested([0, 0, 56]).1, [false, false, true]);
    }

    /// More requests made than the count holds: saturated, it stays so as they are polled
    /// (once it counted back down to nothing, and a spawned POST among them was forgotten);
    /// below that, each poll takes one back.
    #[test]
    fn a_saturated_count_of_unpolled_requests_stays_outstanding() {
        let ctx = AttemptCtx::new(
            1,
            None,
            1,
            1,
            None,
            Instant::now(),
            0,
            Held::default(),
            0,
            0,
        );
        ctx.made(Method::Get);
        ctx.polled();
        assert!(ctx.unpolled_outstanding(), "sent from here, not ended here");
        ctx.ended_here(ctx.id());
        assert!(!ctx.unpolled_outstanding());
        for _ in 0..=UNPOLLED_SENDS {
            ctx.made(Method::Post);
        }
        for _ in 0..=UNPOLLED_SENDS {
            ctx.ended_here(ctx.id());
        }
        assert!(ctx.unpolled_outstanding());
        // Executes apart: a spawned execute's count is its own future's to take back.
        let ctx = AttemptCtx::new(
            1,
            None,
            1,
            1,
            None,
            Instant::now(),
            0,
            Held::default(),
            0,
            0,
        );
        ctx.made_for_execute(Method::Post);
        assert_eq!(ctx.take_execute_mark(), Some(Method::Post));
        ctx.ended_here(ctx.id());
        ctx.execute_ended_here(None);
        assert!(ctx.unpolled_outstanding(), "taken back by neither");
        ctx.execute_ended_here(Some(ctx.id()));
        assert!(!ctx.unpolled_outstanding());
    }

    /// A breaker held by a half-open probe is marked (its address's lowest bit): nested calls
    /// see it held and held by a probe, through the states of calls between; unmarked, held
    /// only.
    #[test]
    fn a_probe_is_marked_on_its_breaker() {
        let mut a = Held::outermost([80, 88, 0]);
        a.mark_probe(80, true);
        assert!(a.holds(80) && a.holds_probe(80) && !a.holds_probe(88));
        let (b, b_held) = a.nested([160, 0, 0]);
        assert_eq!(b_held, [false; 3]);
        assert!(b.holds(80) && b.holds_probe(80) && !b.holds_probe(160));
        assert_eq!(b.nested([80, 0, 0]).1, [true, false, false]);
        a.mark_probe(80, false);
        assert!(a.holds(80) && !a.holds_probe(80));
        // Not held: nothing marked.
        a.mark_probe(240, true);
        assert!(!a.holds(240) && !a.holds_probe(240));
    }

    #[test]
    fn traceparent_round_trips() {
        let tp = Traceparent::new(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1);
        assert_eq!(
            tp.as_str(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            parse_traceparent(tp.as_str()),
            Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1))
        );
        assert_eq!(
            RequestId::Drawn(0xabc).to_string(),
            format!("{:032x}", 0xabc)
        );
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            // Version 00 has exactly four fields; `ff` is no version.
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    /// A version the parser does not know is read by its first four fields (W3C: a newer
    /// version keeps them), with anything more behind a `-`.
    #[test]
    fn later_traceparent_versions_are_read_by_their_first_fields() {
        let want = Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1));
        for good in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next",
        ] {
            assert_eq!(parse_traceparent(good), want, "{good:?}");
        }
        // Flags the spec does not define are not passed on: only the sampled bit.
        for (flags, kept) in [("ff", 1), ("fe", 0), ("03", 1), ("02", 0)] {
            let tp = format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}");
            assert_eq!(parse_traceparent(&tp).map(|t| t.2), Some(kept), "{tp}");
        }
    }

    /// `Duration::MAX` ("no limit") is no deadline, not a panic of `Instant + Duration`.
    #[test]
    fn time_left_beyond_the_clock_is_no_deadline() {
        assert_eq!(Inbound::NONE.time_left(Duration::MAX).deadline, None);
        assert!(
            Inbound::NONE
                .time_left(Duration::from_secs(1))
                .deadline
                .is_some()
        );
    }
}
