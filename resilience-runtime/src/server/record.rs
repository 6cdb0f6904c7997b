//! What a store keeps under one key, and its compact binary form.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

/// `a=1&b=2` and `b=2&a=1` alike: the pairs sorted by name, each length-prefixed. Pairs of one
/// name keep their order (`tag=a&tag=b` is another request than `tag=b&tag=a`): a map cannot
/// hold one name twice, so only a list wrote them, and a list keeps its order on every attempt.
/// One name is one name as a parser reads it: `a`, `a=` and `%61=` are all `a` (a reader
/// keeping the last of them sees `?a=1&%61=2` and `?%61=2&a=1` differently).
fn hash_pairs(hash: &mut Sha256, pairs: &[u8]) {
    let mut all: Vec<&[u8]> = pairs
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .collect();
    // By the name as read, and its `=` (a pair without one has it too): for pairs of
    // different names, the order of the whole pairs. A stable sort: one name keeps its order.
    // Compared as read, byte by byte: nothing allocated per pair.
    all.sort_by(|a, b| pair_name(a).cmp(pair_name(b)));
    hash.update((all.len() as u64).to_be_bytes());
    for p in all {
        hash.update((p.len() as u64).to_be_bytes());
        hash.update(p);
    }
}

/// The name of a query or form pair as a parser reads it (`+` a space, `%XX` its byte), with
/// an `=` after it, for sorting: its bytes, decoded as they are read.
fn pair_name(pair: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let raw = pair.split(|b| *b == b'=').next().unwrap_or_default();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        i += 1;
        Some(match b {
            b'+' => b' ',
            b'%' if let (Some(hi), Some(lo)) = (
                raw.get(i).copied().and_then(hex),
                raw.get(i + 1).copied().and_then(hex),
            ) =>
            {
                i += 2;
                (hi * 16 + lo) as u8
            }
            b => b,
        })
    })
    .chain(std::iter::once(b'='))
}

/// A JSON document read for its fingerprint: numbers keep the text they were written in (an
/// amount past what a float holds exactly is not taken for its neighbour), strings are decoded,
/// and an object keeps every member, duplicates included.
enum Json<'a> {
    /// `true`, `false`, `null` or a number, as written.
    Literal(&'a [u8]),
    String(std::borrow::Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(std::borrow::Cow<'a, str>, Json<'a>)>),
}

/// How deep a document may nest before it is fingerprinted by its bytes instead.
const JSON_DEPTH: u32 = 128;

impl<'a> Json<'a> {
    /// The document in `body`, or `None` if it is not one JSON value (then its bytes count).
    fn read(body: &'a [u8]) -> Option<Json<'a>> {
        let mut r = JsonReader { b: body, i: 0 };
        let v = r.value(0)?;
        r.space();
        (r.i == body.len()).then_some(v)
    }

    /// Objects' members in name order (members of one name in their order), no whitespace.
    fn hash(&self, hash: &mut Sha256) {
        match self {
            Json::Literal(b"null") => hash.update(b"n"),
            Json::Literal(b"true") => hash.update(b"t"),
            Json::Literal(b"false") => hash.update(b"f"),
            Json::Literal(n) => {
                hash.update(b"#");
                hash.update((n.len() as u64).to_be_bytes());
                hash.update(n);
            }
            Json::String(s) => {
                hash.update(b"s");
                hash.update((s.len() as u64).to_be_bytes());
                hash.update(s.as_bytes());
            }
            Json::Array(items) => {
                hash.update(b"[");
                hash.update((items.len() as u64).to_be_bytes());
                for i in items {
                    i.hash(hash);
                }
            }
            Json::Object(members) => {
                let mut members: Vec<&(std::borrow::Cow<'a, str>, Json<'a>)> =
                    members.iter().collect();
                members.sort_by(|a, b| a.0.cmp(&b.0));
                hash.update(b"{");
                hash.update((members.len() as u64).to_be_bytes());
                for (k, v) in members {
                    hash.update((k.len() as u64).to_be_bytes());
                    hash.update(k.as_bytes());
                    v.hash(hash);
                }
            }
        }
    }
}

struct JsonReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> JsonReader<'a> {
    fn space(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.space();
        let here = self.b.get(self.i) == Some(&c);
        self.i += usize::from(here);
        here
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn value(&mut self, depth: u32) -> Option<Json<'a>> {
        if depth > JSON_DEPTH {
            return None;
        }
        self.space();
        let start = self.i;
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                if self.eat(b'}') {
                    return Some(Json::Object(members));
                }
                loop {
                    self.space();
                    let name = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    members.push((name, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Some(Json::Object(members));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Json::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Json::String),
            b't' | b'f' | b'n' => {
                let word: &[u8] = [&b"true"[..], b"false", b"null"]
                    .into_iter()
                    .find(|w| self.b[start..].starts_with(w))?;
                self.i += word.len();
                Some(Json::Literal(word))
            }
            b'-' | b'0'..=b'9' => {
                // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
                self.i += usize::from(self.b[self.i] == b'-');
                match self.b.get(self.i) {
                    Some(b'0') => self.i += 1,
                    Some(b'1'..=b'9') => {
                        self.digits();
                    }
                    _ => return None,
                }
                if self.b.get(self.i) == Some(&b'.') {
                    self.i += 1;
                    if self.digits() == 0 {
                        return None;
                    }
                }
                if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
                    self.i += 1;
                    if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                        self.i += 1;
                    }
                    if self.digits() == 0 {
                        return None;
                    }
                }
                Some(Json::Literal(&self.b[start..self.i]))
            }
            _ => None,
        }
    }

    /// A string at the reader, decoded (escapes, and the bytes checked as UTF-8).
    fn string(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        let start = self.i;
        if self.b.get(start) != Some(&b'"') {
            return None;
        }
        let mut j = start + 1;
        let mut escaped = false;
        loop {
            match *self.b.get(j)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                c if c < 0x20 => return None,
                _ => j += 1,
            }
        }
        self.i = j + 1;
        if escaped {
            serde_json::from_slice::<String>(&self.b[start..self.i])
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            std::str::from_utf8(&self.b[start + 1..j])
                .ok()
                .map(std::borrow::Cow::Borrowed)
        }
    }
}

/// The `boundary` parameter of a multipart content type, unquoted.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// A body read as its bytes. Hashed as they are (the fingerprint of most bodies is what it
/// always was), but for a body whose first byte is one of the tags the structured readings
/// begin with (2 JSON, 3 form, 4 multipart) or the tag of this rule (5): tagged 5, so that no
/// raw body's bytes can be crafted to equal a JSON, form or multipart body's reading (a
/// replay instead of the 422 a key reused with another payload gets).
fn hash_raw(hash: &mut Sha256, body: &[u8]) {
    if matches!(body.first(), Some(2..=5)) {
        hash.update([5]);
    }
    hash.update(body);
}

/// `body` cut at every occurrence of `sep`.
fn split_on<'a>(body: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memmem::find(r, sep) {
            Some(i) => {
                rest = Some(&r[i + sep.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// SHA-256 of what makes two requests with one key "the same request": the query string and
/// the body. A repeat with another fingerprint is a reused key, answered with 422.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request with this query string (without the `?`) and body: as
    /// [`of_request`](Self::of_request) with no content type (the body's bytes as they are).
    pub fn of(query: Option<&str>, body: &[u8]) -> Fingerprint {
        Fingerprint::of_request(query, None, body)
    }

    /// The fingerprint of a request as the layer takes it: like [`of`](Self::of), but what a
    /// client that builds its request again on each attempt may write differently each time,
    /// for the same request, does not count: the order of query and form pairs (a `HashMap`
    /// passed to `.query(…)` or `.form(…)`), the order of a JSON object's members and the
    /// whitespace between tokens (a `HashMap` passed to `.json(…)`), and a multipart body's
    /// boundary (reqwest draws a new one per form). `content_type` is the request's.
    pub fn of_request(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Fingerprint {
        let mut hash = Sha256::new();
        match query {
            Some(q) => {
                hash.update([1]);
                hash_pairs(&mut hash, q.as_bytes());
            }
            None => hash.update([0]),
        }
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let json = media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"));
        match media.as_str() {
            _ if json => match Json::read(body) {
                Some(v) => {
                    hash.update([2]);
                    v.hash(&mut hash);
                }
                None => hash_raw(&mut hash, body),
            },
            "application/x-www-form-urlencoded" => {
                hash.update([3]);
                hash_pairs(&mut hash, body);
            }
            "multipart/form-data" => match content_type.and_then(boundary) {
                Some(b) if !b.is_empty() => {
                    hash.update([4]);
                    // Each part between delimiters, the boundary itself left out: a delimiter
                    // is `--boundary` at the body's start or after a CRLF (RFC 2046), never the
                    // boundary's text elsewhere (a body `amount=100` under `boundary=1`).
                    let open = [b"--".as_slice(), b.as_bytes()].concat();
                    let delimiter = [b"\r\n--".as_slice(), b.as_bytes()].concat();
                    let rest = match body.strip_prefix(open.as_slice()) {
                        Some(rest) => {
                            hash.update(0u64.to_be_bytes());
                            rest
                        }
                        None => body,
                    };
                    for part in split_on(rest, &delimiter) {
                        hash.update((part.len() as u64).to_be_bytes());
                        hash.update(part);
                    }
                }
                _ => hash_raw(&mut hash, body),
            },
            _ => hash_raw(&mut hash, body),
        }
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
    /// The [token](InFlight::token) of the claim whose request produced it, so that the layer
    /// tells its own completion (a command carried out although its reply was lost) from
    /// another request's; `0` in a record written before tokens were kept.
    pub token: u128,
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
/// A completed response without the token of its claim: what records were before tokens were
/// kept. Still read.
const COMPLETED: u8 = 1;
/// A completed response with the token of its claim.
const COMPLETED_BY: u8 = 2;

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
    /// fingerprint (32) for a claim; or `2`, token (16), fingerprint (32), status (2), header
    /// count (4), each header as name length (2), name, value length (4), value; then the body
    /// to the end. A completed record of kind `1` (no token) is read as token `0`.
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
                let mut out = Vec::with_capacity(2 + 16 + 32 + 2 + 4 + headers + r.body.len());
                out.extend_from_slice(&[VERSION, COMPLETED_BY]);
                out.extend_from_slice(&r.token.to_be_bytes());
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
            kind @ (COMPLETED | COMPLETED_BY) => {
                let token = if kind == COMPLETED_BY {
                    u128::from_be_bytes(r.array()?)
                } else {
                    0
                };
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
                    token,
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

    /// A raw body crafted to be a JSON body's reading (its tag, then the value's own
    /// hashing) is not that body: the key reused with it gets 422, not the JSON body's replay.
    #[test]
    fn a_raw_body_cannot_pass_for_a_json_ones_reading() {
        let json = Fingerprint::of_request(None, Some("application/json"), b"1");
        let crafted = Fingerprint::of_request(
            None,
            Some("application/octet-stream"),
            b"\x02#\0\0\0\0\0\0\0\x011",
        );
        assert_ne!(json, crafted);
        // Other raw bodies keep the fingerprint they always had.
        let mut plain = Sha256::new();
        plain.update([0]);
        plain.update(b"amount=100");
        assert_eq!(
            Fingerprint::of_request(None, Some("text/plain"), b"amount=100"),
            Fingerprint(plain.finalize().into())
        );
    }

    fn completed() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        Record::Completed(StoredResponse {
            token: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
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

    /// A record written before tokens were kept (kind `1`) is still read, as token `0`: an
    /// instance of this release replays what an older one stored.
    #[test]
    fn reads_completed_records_without_a_token() {
        let Record::Completed(with) = completed() else {
            unreachable!()
        };
        let mut old = vec![VERSION, COMPLETED];
        old.extend_from_slice(&completed().encode()[2 + 16..]);
        assert_eq!(
            Record::decode(&old),
            Ok(Record::Completed(StoredResponse { token: 0, ..with }))
        );
    }

    #[test]
    fn rejects_unknown_versions_and_kinds() {
        assert!(Record::decode(&[2, 0]).is_err());
        assert!(Record::decode(&[1, 9]).is_err());
    }

    #[test]
    fn a_request_built_again_has_the_same_fingerprint() {
        let of = Fingerprint::of_request;
        let json = Some("application/json; charset=utf-8");
        // A map's member order, whitespace: the same request.
        assert_eq!(
            of(None, json, br#"{"a":1,"b":[1,2],"c":{"x":"y","z":null}}"#),
            of(
                None,
                json,
                br#"{ "c": {"z": null, "x": "y"}, "b": [1, 2], "a": 1 }"#
            )
        );
        // Values, array order, nesting: another request.
        assert_ne!(of(None, json, br#"{"a":1}"#), of(None, json, br#"{"a":2}"#));
        assert_ne!(of(None, json, br#"[1,2]"#), of(None, json, br#"[2,1]"#));
        assert_ne!(
            of(None, json, br#"{"a":"1"}"#),
            of(None, json, br#"{"a":1}"#)
        );
        assert_ne!(
            of(None, json, br#"{"a":{"b":1}}"#),
            of(None, json, br#"{"a":{},"b":1}"#)
        );
        // Numbers as written: two amounts past what a float holds exactly are two requests.
        assert_ne!(
            of(None, json, br#"{"amount":12345678901234567890123}"#),
            of(None, json, br#"{"amount":12345678901234567890124}"#)
        );
        assert_ne!(
            of(None, json, br#"{"p":0.10000000000000000001}"#),
            of(None, json, br#"{"p":0.1}"#)
        );
        assert_ne!(of(None, json, b"[true]"), of(None, json, b"[null]"));
        // A string's escapes are read: the same text.
        assert_eq!(
            of(None, json, br#"{"n":"caf\u00e9 \"x\""}"#),
            of(None, json, "{\"n\":\"café \\\"x\\\"\"}".as_bytes())
        );
        // Members of one name keep their order.
        assert_ne!(
            of(None, json, br#"{"a":1,"a":2}"#),
            of(None, json, br#"{"a":2,"a":1}"#)
        );
        assert_ne!(
            of(None, json, br#"{"a":1,"a":2}"#),
            of(None, json, br#"{"a":2}"#)
        );
        // Nested past the reader's depth, or not one value: the bytes, and no panic.
        let deep = "[".repeat(100_000);
        assert_ne!(
            of(None, json, deep.as_bytes()),
            of(None, json, &deep.as_bytes()[1..])
        );
        assert_ne!(
            of(None, json, br#"{"a":1} x"#),
            of(None, json, br#"{"a":1}"#)
        );
        for bad in [
            &br#"{"a":01}"#[..],
            b"[1.]",
            b"[-]",
            b"[1e]",
            b"[tru]",
            b"{\"a\"}",
            b"\"\\",
        ] {
            assert_ne!(of(None, json, bad), of(None, json, br#"{"a":1}"#));
        }
        // Not JSON after all: the bytes.
        assert_ne!(of(None, json, b"{oops"), of(None, json, b"{oops "));
        // Query and form pairs in any order.
        assert_eq!(
            of(Some("a=1&b=2"), None, b""),
            of(Some("b=2&a=1"), None, b"")
        );
        assert_ne!(
            of(Some("a=1&b=2"), None, b""),
            of(Some("a=2&b=1"), None, b"")
        );
        // Pairs of one name keep their order: a list wrote them, the same on every attempt.
        assert_ne!(
            of(Some("tag=a&tag=b"), None, b""),
            of(Some("tag=b&tag=a"), None, b"")
        );
        assert_eq!(
            of(Some("a=1&tag=x&tag=y&b"), None, b""),
            of(Some("tag=x&b&a=1&tag=y"), None, b"")
        );
        // One name as a parser reads it, however written: its pairs keep their order.
        assert_ne!(
            of(Some("a=1&%61=2"), None, b""),
            of(Some("%61=2&a=1"), None, b"")
        );
        assert_ne!(of(Some("a&a=1"), None, b""), of(Some("a=1&a"), None, b""));
        assert_ne!(
            of(Some("x+y=1&x%20y=2"), None, b""),
            of(Some("x%20y=2&x+y=1"), None, b"")
        );
        // Names that differ still sort, escapes or not.
        assert_eq!(
            of(Some("%62=2&a=1"), None, b""),
            of(Some("a=1&%62=2"), None, b"")
        );
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(of(None, form, b"x=1&y=2"), of(None, form, b"y=2&x=1"));
        assert_ne!(of(None, form, b"x=1&y=2"), of(None, form, b"x=1&y=3"));
        // A multipart body whose boundary changed.
        let part = |b: &str, v: &str| {
            format!("--{b}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n{v}\r\n--{b}--\r\n")
        };
        let (one, two) = ("a1b2c3", "zz9988");
        assert_eq!(
            of(
                None,
                Some(&format!("multipart/form-data; boundary={one}")),
                part(one, "v").as_bytes()
            ),
            of(
                None,
                Some(&format!("multipart/form-data; boundary=\"{two}\"")),
                part(two, "v").as_bytes()
            )
        );
        assert_ne!(
            of(
                None,
                Some(&format!("multipart/form-data; boundary={one}")),
                part(one, "v").as_bytes()
            ),
            of(
                None,
                Some(&format!("multipart/form-data; boundary={two}")),
                part(two, "w").as_bytes()
            )
        );
        // The boundary's text inside a part is not a delimiter: two amounts stay two.
        assert_ne!(
            of(None, Some("multipart/form-data; boundary=1"), b"amount=100"),
            of(None, Some("multipart/form-data; boundary=2"), b"amount=200")
        );
        // A JSON media type of its own (`+json`) is read as JSON.
        let patch = Some("application/merge-patch+json");
        assert_eq!(
            of(None, patch, br#"{"a":1,"b":2}"#),
            of(None, patch, br#"{ "b": 2, "a": 1 }"#)
        );
        assert_ne!(
            of(None, patch, br#"{"a":1,"b":2}"#),
            of(None, patch, br#"{"a":1,"b":3}"#)
        );
        // Other bodies: their bytes.
        assert_ne!(
            of(None, Some("text/plain"), b"a b"),
            of(None, Some("text/plain"), b"b a")
        );
        // A body is not taken for a query.
        assert_ne!(of(Some("a=1"), None, b""), of(None, form, b"a=1"));
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
