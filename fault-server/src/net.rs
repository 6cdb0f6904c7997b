//! Addresses that fail before any HTTP: refused and unanswered connects.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// A loopback address where nothing listens, so connecting is refused at once
/// (`ECONNREFUSED`; reqwest reports `is_connect()`).
///
/// Its port is held for the life of the process by a socket bound to it and never listening:
/// no other socket (a server a test starts beside, a client's connection) can be given it, so
/// the address stays refused however long it is used.
///
/// # Panics
/// If no loopback port can be bound.
pub fn refused_addr() -> SocketAddr {
    let held = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .and_then(|s| {
            s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
            Ok(s)
        })
        .expect("refused_addr: cannot bind 127.0.0.1:0");
    let addr = held
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("refused_addr: no local address");
    // Kept open (one descriptor per call) until the process ends.
    std::mem::forget(held);
    addr
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range (32768 and up by default), for a
/// server a test starts as a process of its own (a proxy, a Redis it kills and starts again
/// on the same port): the sockets of tests running beside it, which bind port 0 or connect
/// out, are never given it. Free when chosen; two servers choosing at once may still meet,
/// and the second then fails to bind.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000
            + (std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                % 12_000) as u16;
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A loopback address where connects hang until the client's connect timeout fires.
///
/// It is a listener with a backlog of 0 whose accept queue is filled by connections that
/// are never accepted; the kernel then drops further SYNs, so the client keeps retrying
/// the handshake. Keep the value alive for as long as the address is used.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

/// How long a filler connect may take before the queue counts as full. Handshakes on
/// loopback take microseconds; a timed-out one means the SYN was dropped.
const PROBE: Duration = Duration::from_millis(50);
/// Kernels that round a backlog of 0 up still fill within a few connections.
const MAX_FILLERS: usize = 16;

impl Blackhole {
    /// Creates the listener and fills its accept queue. Blocks the calling thread for
    /// about 50 ms (wall time) while it checks that the queue is full.
    ///
    /// # Panics
    /// If the socket cannot be set up or the queue does not fill up.
    pub fn new() -> Blackhole {
        Blackhole::try_new().unwrap_or_else(|e| panic!("Blackhole: {e}"))
    }

    fn try_new() -> io::Result<Blackhole> {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        listener.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        listener.listen(0)?;
        let addr = listener
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        let mut fillers = Vec::new();
        while fillers.len() < MAX_FILLERS {
            match TcpStream::connect_timeout(&addr, PROBE) {
                Ok(filler) => fillers.push(filler),
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !fillers.is_empty() => {
                    return Ok(Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "accept queue still open after {MAX_FILLERS} connections"
        )))
    }

    /// The address whose connects time out.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path` (a missing leading `/` is added).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.addr)
    }
}

impl Default for Blackhole {
    /// Same as [`Blackhole::new`].
    fn default() -> Blackhole {
        Blackhole::new()
    }
}

impl std::fmt::Debug for Blackhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blackhole")
            .field("addr", &self.addr)
            .field("fillers", &self._fillers.len())
            .finish()
    }
}
