//! What fingerprinting a keyed request's body takes in memory at its peak, counted by the
//! counting allocator (alone in its test binary: the peak is the process's). The README's
//! Known limits gives the figure for a JSON body of many small nested values; this test keeps
//! it from growing, and keeps the other readings near the body's own size.

#![cfg(feature = "server")]

use resilience_fault_server::counting::{Counting, live_bytes, peak_bytes, reset_peak};
use resilience_runtime::server::Fingerprint;

#[global_allocator]
static A: Counting = Counting;

/// The peak bytes, above what was live before, that fingerprinting `body` took.
fn peak_of(content_type: &str, body: &[u8]) -> i64 {
    let before = live_bytes();
    reset_peak();
    let f = Fingerprint::of_request(None, Some(content_type), body);
    let peak = peak_bytes() - before;
    std::hint::black_box(f);
    peak
}

#[test]
fn fingerprinting_a_keyed_body_stays_within_known_bounds() {
    const MIB: usize = 1 << 20;
    // 2 MiB of `[0],` inside one array: a tree node and a vector per element.
    let mut nested = Vec::with_capacity(2 * MIB + 8);
    nested.push(b'[');
    while nested.len() < 2 * MIB - 4 {
        nested.extend_from_slice(b"[0],");
    }
    nested.extend_from_slice(b"[0]]");
    let json = peak_of("application/json", &nested) as f64 / nested.len() as f64;
    eprintln!("nested JSON: {json:.1}× the body at its peak");
    assert!(json < 64.0, "nested JSON took {json:.1}× its body");
    // A form body and a raw one are hashed as they are read.
    let form: Vec<u8> = (0..MIB / 8)
        .flat_map(|i| format!("k{}=v&", i % 1000).into_bytes())
        .collect();
    let form_x = peak_of("application/x-www-form-urlencoded", &form) as f64 / form.len() as f64;
    eprintln!("form: {form_x:.1}× the body at its peak");
    assert!(form_x < 8.0, "a form body took {form_x:.1}× its size");
    let raw = vec![b'x'; 2 * MIB];
    let raw_x = peak_of("application/octet-stream", &raw);
    eprintln!("raw: {raw_x} bytes at its peak");
    assert!(raw_x < 64 * 1024, "a raw body took {raw_x} bytes");
}
