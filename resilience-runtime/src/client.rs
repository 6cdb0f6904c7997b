//! Connection settings that belong to the client, not the call (`[clients.NAME]`).

use std::time::Duration;

/// How the `reqwest::Client` under a policy should treat connections.
///
/// Build it from `resilience.toml` with [`client!`](crate::client):
///
/// ```ignore
/// let http = resilience_runtime::client!("pg").build()?;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Time to establish a connection; shorter than any attempt timeout, so a connect failure is
    /// recognisable as "never sent" (and safe to retry for any method).
    pub connect_timeout: Duration,
    /// Pooled connections idle longer than this are closed, before common servers' keep-alive
    /// timeouts (5 s and up) close them under us: the `Connection reset by peer` of a stale
    /// pooled socket.
    pub pool_idle_timeout: Duration,
    /// TCP keep-alive probes on open connections.
    pub tcp_keepalive: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl ClientSettings {
    /// The defaults `client!` starts from.
    pub const DEFAULT: ClientSettings = ClientSettings {
        connect_timeout: Duration::from_secs(3),
        pool_idle_timeout: Duration::from_secs(4),
        tcp_keepalive: Duration::from_secs(30),
        pool_max_idle_per_host: 32,
    };

    /// A builder with these settings and reqwest's own retries off, so attempts never multiply.
    /// Add TLS, proxies or default headers to it as usual.
    pub fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .tcp_keepalive(self.tcp_keepalive)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .retry(reqwest::retry::never())
    }

    /// The client, ready to use.
    pub fn build(&self) -> Result<reqwest::Client, crate::Error> {
        Ok(self.builder().build()?)
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings::DEFAULT
    }
}
