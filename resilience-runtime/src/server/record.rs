//! What a store keeps under one key, and its compact binary form.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

/// SHA-256 of what makes two requests with one key "the same request": the query string and
/// the body. A repeat with another fingerprint is a reused key, answered with 422.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request with this query string (without the `?`) and body.
    pub fn of(query: Option<&str>, body: &[u8]) -> Fingerprint {
        let mut hash = Sha256::new();
        match query {
            // Length-prefixed, so that no query/body split can collide with another.
            Some(q) => {
                hash.update([1]);
                hash.update((q.len() as u64).to_be_bytes());
                hash.update(q.as_bytes());
            }
            None => hash.update([0]),
        }
        hash.update(body);
        Fingerprint(hash.finalize().into())
    }

    /// A fingerprint from its 32 bytes, as a store read them back.
    pub const fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A claim on a key: the handler is running somewhere for the request with this fingerprint.
///
/// The token is random per request, so that only the request that took the claim can complete,
/// renew or release it, even after its lease ran out and another request claimed the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Random, unique per claiming request.
    pub token: u128,
    /// The fingerprint of the claiming request.
    pub fingerprint: Fingerprint,
}

/// A completed response, kept to be replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The fingerprint of the request that produced it.
    pub fingerprint: Fingerprint,
    /// The status the handler answered.
    pub status: StatusCode,
    /// The headers the handler answered, without hop-by-hop headers and `Content-Length`.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What a store holds under one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The handler is running (or ran and vanished; the lease bounds how long that can last).
    InFlight(InFlight),
    /// The handler finished; replay this.
    Completed(StoredResponse),
}

/// The byte form of a [`Record`] could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed idempotency record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const VERSION: u8 = 1;
const IN_FLIGHT: u8 = 0;
const COMPLETED: u8 = 1;

impl Record {
    /// The fingerprint of the request that claimed or completed the key.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Record::InFlight(c) => &c.fingerprint,
            Record::Completed(r) => &r.fingerprint,
        }
    }

    /// A compact binary form, for stores that keep bytes.
    ///
    /// Layout (integers big-endian): format version `1`, then either `0`, token (16 bytes),
    /// fingerprint (32) for a claim; or `1`, fingerprint (32), status (2), header count (4), each
    /// header as name length (2), name, value length (4), value; then the body to the end.
    /// Equal records encode to equal bytes, so a store may compare claims byte for byte.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::InFlight(c) => {
                let mut out = Vec::with_capacity(2 + 16 + 32);
                out.extend_from_slice(&[VERSION, IN_FLIGHT]);
                out.extend_from_slice(&c.token.to_be_bytes());
                out.extend_from_slice(c.fingerprint.as_bytes());
                out
            }
            Record::Completed(r) => {
                let headers: usize = r
                    .headers
                    .iter()
                    .map(|(n, v)| 6 + n.as_str().len() + v.len())
                    .sum();
                let mut out = Vec::with_capacity(2 + 32 + 2 + 4 + headers + r.body.len());
                out.extend_from_slice(&[VERSION, COMPLETED]);
                out.extend_from_slice(r.fingerprint.as_bytes());
                out.extend_from_slice(&r.status.as_u16().to_be_bytes());
                out.extend_from_slice(&(r.headers.len() as u32).to_be_bytes());
                for (name, value) in &r.headers {
                    // `http` caps header names below 64 KiB, so the length fits in a u16.
                    out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(value.as_bytes());
                }
                out.extend_from_slice(&r.body);
                out
            }
        }
    }

    /// Reads back what [`encode`](Record::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown format version"));
        }
        match r.u8()? {
            IN_FLIGHT => {
                let token = u128::from_be_bytes(r.array()?);
                let fingerprint = Fingerprint(r.array()?);
                if !r.0.is_empty() {
                    return Err(DecodeError("trailing bytes after a claim"));
                }
                Ok(Record::InFlight(InFlight { token, fingerprint }))
            }
            COMPLETED => {
                let fingerprint = Fingerprint(r.array()?);
                let status = StatusCode::from_u16(u16::from_be_bytes(r.array()?))
                    .map_err(|_| DecodeError("invalid status"))?;
                let count = u32::from_be_bytes(r.array()?) as usize;
                // Each header takes at least 6 bytes: never trust the count for the allocation,
                // nor ask for more than a header map holds (it would panic).
                let mut headers = HeaderMap::with_capacity(count.min(r.0.len() / 6).min(1024));
                for _ in 0..count {
                    let len = u16::from_be_bytes(r.array()?) as usize;
                    let name = HeaderName::from_bytes(r.take(len)?)
                        .map_err(|_| DecodeError("invalid header name"))?;
                    let len = u32::from_be_bytes(r.array()?) as usize;
                    let value = HeaderValue::from_bytes(r.take(len)?)
                        .map_err(|_| DecodeError("invalid header value"))?;
                    headers
                        .try_append(name, value)
                        .map_err(|_| DecodeError("more headers than a response holds"))?;
                }
                Ok(Record::Completed(StoredResponse {
                    fingerprint,
                    status,
                    headers,
                    body: Bytes::copy_from_slice(r.0),
                }))
            }
            _ => Err(DecodeError("unknown record kind")),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        Record::Completed(StoredResponse {
            fingerprint: Fingerprint::of(Some("x=1"), b"{}"),
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":7}"),
        })
    }

    #[test]
    fn round_trips() {
        let claim = Record::InFlight(InFlight {
            token: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            fingerprint: Fingerprint::of(None, b"body"),
        });
        for record in [claim, completed()] {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn keeps_repeated_headers_in_order() {
        let Ok(Record::Completed(r)) = Record::decode(&completed().encode()) else {
            panic!("not a completed record");
        };
        let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn rejects_every_truncation() {
        for record in [
            completed(),
            Record::InFlight(InFlight {
                token: 1,
                fingerprint: Fingerprint::of(None, b""),
            }),
        ] {
            let bytes = record.encode();
            let body_len = match &record {
                Record::Completed(r) => r.body.len(),
                Record::InFlight(_) => 0,
            };
            // Cutting into the body yields a shorter body, which the format cannot tell apart.
            for cut in 0..bytes.len() - body_len {
                assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// A record claiming more headers than a header map holds (written by something else, or
    /// damaged) is an error, never a panic: with 1 MiB of body the old bound allowed a capacity
    /// above the map's maximum, and appending past it panics too.
    #[test]
    fn rejects_more_headers_than_a_map_holds() {
        for (count, present) in [(u32::MAX, 0usize), (40_000, 40_000)] {
            let mut bytes = vec![VERSION, COMPLETED];
            bytes.extend_from_slice(&[0; 32]);
            bytes.extend_from_slice(&200u16.to_be_bytes());
            bytes.extend_from_slice(&count.to_be_bytes());
            // Distinct names: a map's bound is on its distinct names.
            for i in 0..present {
                let name = format!("h{i}");
                bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
                bytes.extend_from_slice(name.as_bytes());
                bytes.extend_from_slice(&0u32.to_be_bytes());
            }
            bytes.resize(bytes.len() + (1 << 20), b'x');
            assert!(Record::decode(&bytes).is_err(), "{count} headers");
        }
    }

    #[test]
    fn rejects_unknown_versions_and_kinds() {
        assert!(Record::decode(&[2, 0]).is_err());
        assert!(Record::decode(&[1, 9]).is_err());
    }

    #[test]
    fn fingerprint_separates_query_from_body() {
        assert_ne!(
            Fingerprint::of(Some("a"), b"b"),
            Fingerprint::of(Some("ab"), b"")
        );
        assert_ne!(Fingerprint::of(None, b""), Fingerprint::of(Some(""), b""));
        assert_eq!(Fingerprint::of(None, b"x"), Fingerprint::of(None, b"x"));
    }
}
