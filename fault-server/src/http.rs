//! Just enough HTTP/1.1: parse a request head, frame a response.

use crate::Reply;

/// Largest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub content_length: usize,
    /// The client wants the connection closed after this exchange.
    pub close: bool,
}

/// Why a request head was refused: the status to answer with before closing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal(pub u16);

impl Refusal {
    pub fn response(&self) -> Vec<u8> {
        let reply = Reply {
            status: self.0,
            headers: Vec::new(),
            body: Vec::new(),
        };
        encode(&reply, false, true)
    }
}

/// Where the head ends (index just past `\r\n\r\n`), if it is complete.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete head (including the final empty line).
pub(crate) fn parse_head(raw: &[u8]) -> Result<Head, Refusal> {
    const BAD: Refusal = Refusal(400);
    let text = std::str::from_utf8(raw).map_err(|_| BAD)?;
    let mut lines = text.split("\r\n");

    let request_line = lines.next().ok_or(BAD)?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(BAD),
    };
    if method.is_empty() || !method.bytes().all(is_token) || target.is_empty() {
        return Err(BAD);
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Refusal(505)),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue; // the final empty line(s)
        }
        let (name, value) = line.split_once(':').ok_or(BAD)?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(BAD); // also rejects obsolete line folding
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }

    let mut content_length = None;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal(411)); // chunked bodies are not supported: ask for a length
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| BAD)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(BAD);
            }
            content_length = Some(n);
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(Refusal(413));
    }

    let connection = |token: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let close = connection("close") || (http10 && !connection("keep-alive"));

    Ok(Head {
        method: method.to_owned(),
        path,
        query,
        headers,
        content_length,
        close,
    })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the reply itself asks to close the connection.
pub(crate) fn reply_closes(reply: &Reply) -> bool {
    reply
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Frames a reply. `head_only` for `HEAD` requests; `close` adds `Connection: close`.
pub(crate) fn encode(reply: &Reply, head_only: bool, close: bool) -> Vec<u8> {
    let status = reply.status;
    let bodyless = status < 200 || status == 204 || status == 304;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let mut has_length = false;
    let mut has_connection = false;
    for (name, value) in &reply.headers {
        has_length |= name.eq_ignore_ascii_case("content-length");
        has_connection |= name.eq_ignore_ascii_case("connection");
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length && !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    if close && !has_connection {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only && !bodyless {
        bytes.extend_from_slice(&reply.body);
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Head, Refusal> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn parses_a_request_head() {
        let head = parse(
            "POST /pay?x=1 HTTP/1.1\r\nHost: a\r\nIdempotency-Key:  k1 \r\ncontent-length: 3\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/pay");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert_eq!(head.headers[1], ("Idempotency-Key".into(), "k1".into()));
        assert_eq!(head.content_length, 3);
        assert!(!head.close);
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(
            parse("GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(
            !parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
    }

    #[test]
    fn refuses_bad_heads() {
        for (raw, status) in [
            ("\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (
                "POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
                413,
            ),
        ] {
            assert_eq!(parse(raw), Err(Refusal(status)), "{raw:?}");
        }
        assert_eq!(parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(Refusal(400)));
    }

    #[test]
    fn frames_replies() {
        let reply = Reply {
            status: 503,
            headers: vec![("Retry-After".into(), "2".into())],
            body: b"busy".to_vec(),
        };
        assert_eq!(
            encode(&reply, false, false),
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nbusy"
        );
        assert_eq!(
            encode(&reply, true, true),
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        );
        let empty = Reply {
            status: 204,
            headers: vec![],
            body: b"ignored".to_vec(),
        };
        assert_eq!(
            encode(&empty, false, false),
            b"HTTP/1.1 204 No Content\r\n\r\n"
        );
    }
}
