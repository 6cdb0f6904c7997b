//! What the server does with a request, and the script that picks it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::Seen;

/// What the server does with one request, once it has read it in full.
///
/// Build actions with the constructors ([`Action::ok`], [`Action::status`],
/// [`Action::unavailable`], [`Action::stall`], [`Action::reset`], [`Action::close`]) and
/// adjust them with the chained methods:
///
/// ```
/// use std::time::Duration;
/// use resilience_fault_server::Action;
///
/// // 503 with `Retry-After: 2`.
/// let busy = Action::unavailable(2);
/// // 200 with a JSON body, after 100 ms.
/// let slow = Action::ok()
///     .header("content-type", "application/json")
///     .body(r#"{"id":1}"#)
///     .after(Duration::from_millis(100));
/// // The server did the work, then the connection was reset: the answer is lost.
/// let lost = Action::reset().after_processing();
/// ```
///
/// Chained methods read right to left in time: `a.after_processing().after(d)` waits `d`,
/// then applies the effect, then does `a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with this reply. The connection stays open for the next request unless the
    /// request or the reply carries `Connection: close`.
    ///
    /// The request's effect counts as applied when the reply is about to be written
    /// (after any [`Action::Delay`]), whether or not the client is still there, if the status
    /// is below 400. A 4xx or 5xx answer means "not done"; wrap it in
    /// [`Action::after_processing`] to model a server that did the work and then failed.
    Respond(Reply),
    /// Never answer: hold the socket open until the client goes away or the server stops.
    Stall,
    /// Reset the connection (`SO_LINGER` 0, then close: the client sees `ECONNRESET`).
    Reset,
    /// Close the connection (FIN) without answering.
    Close,
    /// Write these bytes as the answer, as they are (a malformed status line, a head cut
    /// short), then close: what a broken proxy or a crashed server leaves on the wire.
    Raw(Vec<u8>),
    /// Wait this long (`tokio::time::sleep`), then carry out the inner action.
    Delay(Duration, Box<Action>),
    /// Apply the request's effect, then carry out the inner action.
    Effect(Box<Action>),
    /// Forward the request to a real server at this address (the handler runs there), read its
    /// whole answer, then carry out the inner action: [`Action::Relay`] passes the answer on;
    /// any other action replaces it (a reset, a close, a stall, a 503: the work was done, the
    /// answer is lost).
    Forward(std::net::SocketAddr, Box<Action>),
    /// Forward the request like [`Action::Forward`] and relay the answer, unless it is not
    /// complete within this time: then close the upstream connection and answer 504, as a
    /// proxy's read timeout does (nginx `proxy_read_timeout`).
    ForwardWithin(std::net::SocketAddr, Duration),
    /// Pass on the answer of the preceding [`Action::Forward`] (a 502 if there was none).
    Relay,
}

/// A complete HTTP/1.1 response, framed with `Content-Length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status code, written as is.
    pub status: u16,
    /// Headers written in order after the status line. `Content-Length` is added unless
    /// present here (a wrong one is sent as is, which breaks the framing on purpose).
    pub headers: Vec<(String, String)>,
    /// The body (not written for `HEAD` requests and for 1xx, 204 and 304 statuses).
    pub body: Vec<u8>,
}

impl Action {
    /// Forward the request to `upstream` and relay its answer, or answer 504 if it takes
    /// longer than `limit` (see [`Action::ForwardWithin`]).
    pub fn forward_within(upstream: std::net::SocketAddr, limit: Duration) -> Action {
        Action::ForwardWithin(upstream, limit)
    }

    /// Forward the request to `upstream` and relay its answer.
    pub fn forward(upstream: std::net::SocketAddr) -> Action {
        Action::Forward(upstream, Box::new(Action::Relay))
    }

    /// Forward the request to `upstream`, then do `instead` rather than relay the answer.
    pub fn forward_then(upstream: std::net::SocketAddr, instead: Action) -> Action {
        Action::Forward(upstream, Box::new(instead))
    }

    /// `200 OK` with the body `ok`.
    pub fn ok() -> Action {
        Action::status(200).body("ok")
    }

    /// A response with this status and an empty body.
    ///
    /// # Panics
    /// If `status` is not in `100..=999`.
    #[track_caller]
    pub fn status(status: u16) -> Action {
        assert!(
            (100..=999).contains(&status),
            "an HTTP status has three digits, got {status}"
        );
        Action::Respond(Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    /// `503 Service Unavailable` with `Retry-After: <seconds>`.
    pub fn unavailable(retry_after_secs: u64) -> Action {
        Action::status(503).retry_after(retry_after_secs)
    }

    /// Read the request and never answer (see [`Action::Stall`]).
    pub fn stall() -> Action {
        Action::Stall
    }

    /// Read the request, then reset the connection (see [`Action::Reset`]).
    pub fn reset() -> Action {
        Action::Reset
    }

    /// Read the request, then write `bytes` as the answer, unframed, and close (see
    /// [`Action::Raw`]).
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Action {
        Action::Raw(bytes.into())
    }

    /// Read the request, then close the connection without answering (see [`Action::Close`]).
    pub fn close() -> Action {
        Action::Close
    }

    /// Adds a header to the reply.
    ///
    /// # Panics
    /// If the action does not end in a response.
    #[track_caller]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Action {
        self.reply_mut().headers.push((name.into(), value.into()));
        self
    }

    /// Sets the reply body.
    ///
    /// # Panics
    /// If the action does not end in a response.
    #[track_caller]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Action {
        self.reply_mut().body = body.into();
        self
    }

    /// Adds `Retry-After` as a number of seconds.
    ///
    /// # Panics
    /// If the action does not end in a response.
    #[track_caller]
    pub fn retry_after(self, secs: u64) -> Action {
        self.header("Retry-After", secs.to_string())
    }

    /// Adds `Retry-After` as an HTTP-date (e.g. `Sun, 06 Nov 1994 08:49:37 GMT`).
    ///
    /// # Panics
    /// If the action does not end in a response.
    #[track_caller]
    pub fn retry_after_date(self, when: SystemTime) -> Action {
        self.header("Retry-After", httpdate::fmt_http_date(when))
    }

    /// Waits `delay` (`tokio::time::sleep`) before doing this action.
    pub fn after(self, delay: Duration) -> Action {
        Action::Delay(delay, Box::new(self))
    }

    /// Applies the request's effect before doing this action: "the server processed it,
    /// but the answer was lost" (with [`Action::reset`], [`Action::close`],
    /// [`Action::stall`]) or "done, but reported as failed" (with a 5xx).
    pub fn after_processing(self) -> Action {
        Action::Effect(Box::new(self))
    }

    #[track_caller]
    fn reply_mut(&mut self) -> &mut Reply {
        let mut action = self;
        loop {
            match action {
                Action::Respond(reply) => return reply,
                Action::Delay(_, inner) | Action::Effect(inner) => action = inner,
                other => panic!("{other:?} sends no response: headers and body need one"),
            }
        }
    }
}

type Decide = dyn Fn(&Seen) -> Action + Send + Sync;

/// Which action each request gets, plus connection-level options.
///
/// A fixed script gives the n-th request (0-based, counted over all connections) the n-th
/// action, and every later request the fallback action (by default [`Action::ok`]).
/// A dynamic script asks a closure for each request.
///
/// `Vec<Action>`, arrays of actions and a single [`Action`] (used for every request) convert
/// into a `Script`, so `FaultServer::start(vec![Action::reset(), Action::ok()])` works.
#[derive(Clone)]
pub struct Script {
    plan: Plan,
    pub(crate) idle_timeout: Option<Duration>,
}

#[derive(Clone)]
enum Plan {
    Sequence { actions: Vec<Action>, then: Action },
    Dynamic(Arc<Decide>),
}

impl Script {
    /// The n-th request gets the n-th action; later ones get [`Action::ok`] unless
    /// [`Script::then`] says otherwise.
    pub fn sequence(actions: impl IntoIterator<Item = Action>) -> Script {
        Script {
            plan: Plan::Sequence {
                actions: actions.into_iter().collect(),
                then: Action::ok(),
            },
            idle_timeout: None,
        }
    }

    /// Every request gets this action.
    pub fn always(action: Action) -> Script {
        Script::sequence([]).then(action)
    }

    /// Each request gets whatever `decide` returns for it. The closure sees the request as
    /// recorded, including its 0-based [`Seen::index`], so it can choose by path, by header
    /// or by count (`if seen.index % 20 == 19 { Action::unavailable(1) } else { Action::ok() }`).
    pub fn dynamic(decide: impl Fn(&Seen) -> Action + Send + Sync + 'static) -> Script {
        Script {
            plan: Plan::Dynamic(Arc::new(decide)),
            idle_timeout: None,
        }
    }

    /// The action for every request after the sequence runs out.
    ///
    /// # Panics
    /// On a dynamic script, which has no sequence.
    #[track_caller]
    pub fn then(mut self, action: Action) -> Script {
        match &mut self.plan {
            Plan::Sequence { then, .. } => *then = action,
            Plan::Dynamic(_) => panic!("a dynamic script has no sequence to follow"),
        }
        self
    }

    /// Closes (FIN) any connection that stays idle this long while the server waits for a
    /// request on it, like a server whose keep-alive timeout is shorter than the client
    /// pool's. Off by default.
    pub fn idle_timeout(mut self, idle: Duration) -> Script {
        self.idle_timeout = Some(idle);
        self
    }

    pub(crate) fn action_for(&self, seen: &Seen) -> Action {
        match &self.plan {
            Plan::Sequence { actions, then } => actions.get(seen.index).unwrap_or(then).clone(),
            Plan::Dynamic(decide) => decide(seen),
        }
    }
}

impl Default for Script {
    /// Every request gets [`Action::ok`].
    fn default() -> Script {
        Script::always(Action::ok())
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Script");
        match &self.plan {
            Plan::Sequence { actions, then } => s.field("sequence", actions).field("then", then),
            Plan::Dynamic(_) => s.field("dynamic", &"<closure>"),
        };
        s.field("idle_timeout", &self.idle_timeout).finish()
    }
}

impl From<Action> for Script {
    fn from(action: Action) -> Script {
        Script::always(action)
    }
}

impl From<Vec<Action>> for Script {
    fn from(actions: Vec<Action>) -> Script {
        Script::sequence(actions)
    }
}

impl<const N: usize> From<[Action; N]> for Script {
    fn from(actions: [Action; N]) -> Script {
        Script::sequence(actions)
    }
}
