//! A scriptable HTTP/1.1 server on loopback that misbehaves on purpose, for tests, the tour
//! and benchmarks.
//!
//! It speaks HTTP/1.1 by hand on raw tokio TCP, so connection-level faults are exact: a
//! [reset](Action::reset) is a real RST after the request was read, a [close](Action::close)
//! a real FIN, a [stall](Action::stall) a socket that never answers. Each request gets an
//! [`Action`] from a [`Script`]; the server records every request ([`Seen`]) and, separately, which
//! requests had their *effect* applied, so a test can tell "never arrived" from "arrived,
//! done, answer lost".
//!
//! Everything runs as tasks on the caller's runtime and waits with `tokio::time`, so it
//! works with `#[tokio::test(start_paused = true)]`.
//!
//! ```no_run
//! use std::time::Duration;
//! use resilience_fault_server::{Action, FaultServer, Script};
//!
//! # async fn demo() {
//! // First request: processed, then the connection is reset. Then two 503s, then 200s.
//! let server = FaultServer::start(vec![
//!     Action::reset().after_processing(),
//!     Action::unavailable(1),
//!     Action::unavailable(1),
//! ])
//! .await;
//! let url = server.url("/pay");
//! // ... call `url` with the client under test ...
//! assert_eq!(server.count_path("/pay"), 4);
//! assert_eq!(server.effects(), 2);
//!
//! // Decide per request: every 20th request gets a 503.
//! let flaky = FaultServer::start(Script::dynamic(|seen| {
//!     if seen.index % 20 == 19 { Action::unavailable(1) } else { Action::ok() }
//! }))
//! .await;
//! # }
//! ```
//!
//! Addresses that fail before HTTP: [`refused_addr`] (connect refused) and [`Blackhole`]
//! (connect times out). [`free_port`]: a port for a server a test starts as a process of its
//! own, which no socket of a test beside it is given.

mod action;
pub mod counting;
mod http;
mod net;
mod server;

pub use action::{Action, Reply, Script};
pub use net::{Blackhole, free_port, refused_addr};
pub use server::{FaultServer, Seen};
