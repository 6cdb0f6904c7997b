//! The retry decision table of the design, cell by cell: every method column × every failure row,
//! plus the limits (attempts, Retry-After cap, deadline, retry_on).

use std::time::Duration;

use resilience_runtime::decision::{Decision, Facts, GiveUp, decide};
use resilience_runtime::{Class, Method, RetryOn};

const ALL_TRANSIENT: RetryOn = RetryOn {
    connect: true,
    reset: true,
    timeout: true,
    statuses: &[408, 429, 500, 502, 503, 504],
};
const BACKOFF: Duration = Duration::from_millis(100);

/// The columns: (label, methods, keyed, declared idempotent).
fn columns() -> Vec<(&'static str, Vec<Method>, bool, bool)> {
    vec![
        (
            "GET HEAD OPTIONS",
            vec![Method::Get, Method::Head, Method::Options],
            false,
            false,
        ),
        (
            "PUT DELETE, idempotent",
            vec![Method::Put, Method::Delete],
            false,
            true,
        ),
        (
            "PUT DELETE, not declared",
            vec![Method::Put, Method::Delete],
            false,
            false,
        ),
        (
            "POST PATCH with key",
            vec![Method::Post, Method::Patch],
            true,
            false,
        ),
        (
            "POST PATCH, no key",
            vec![Method::Post, Method::Patch],
            false,
            false,
        ),
        // `idempotent` does not make a POST safe: only the key does.
        (
            "POST PATCH, idempotent but no key",
            vec![Method::Post, Method::Patch],
            false,
            true,
        ),
    ]
}

fn facts(
    method: Method,
    keyed: bool,
    idempotent: bool,
    class: Class,
    retry_after: Option<Duration>,
) -> Facts<'static> {
    Facts {
        method,
        keyed,
        idempotent,
        class,
        attempt: 1,
        max_attempts: 3,
        retry_on: &ALL_TRANSIENT,
        backoff: BACKOFF,
        retry_after,
        max_retry_after: Duration::from_secs(30),
        time_left: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        reached: None,
        unseen: None,
        replayed: false,
    }
}

#[test]
fn every_cell_of_the_table() {
    // (row label, class, Retry-After, expected per column: Some(delay) = retry after, None = give up)
    let never_sent = Some(BACKOFF);
    let ambiguous = |d: Duration| [Some(d), Some(d), None, Some(d), None, None];
    type Row = (&'static str, Class, Option<Duration>, [Option<Duration>; 6]);
    let rows: Vec<Row> = vec![
        ("connect", Class::Connect, None, [never_sent; 6]),
        ("reset", Class::Reset, None, ambiguous(BACKOFF)),
        ("timeout", Class::Timeout, None, ambiguous(BACKOFF)),
        ("408", Class::Status(408), None, ambiguous(BACKOFF)),
        ("502", Class::Status(502), None, ambiguous(BACKOFF)),
        ("503", Class::Status(503), None, ambiguous(BACKOFF)),
        ("504", Class::Status(504), None, ambiguous(BACKOFF)),
        (
            "429 + Retry-After 2s",
            Class::Status(429),
            Some(Duration::from_secs(2)),
            ambiguous(Duration::from_secs(2)),
        ),
        (
            "503 + Retry-After 2s",
            Class::Status(503),
            Some(Duration::from_secs(2)),
            ambiguous(Duration::from_secs(2)),
        ),
        // Retry-After shorter than the backoff: the backoff wins (max of the two).
        (
            "429 + Retry-After 0",
            Class::Status(429),
            Some(Duration::ZERO),
            ambiguous(BACKOFF),
        ),
        ("400", Class::Status(400), None, [None; 6]),
        ("401", Class::Status(401), None, [None; 6]),
        ("403", Class::Status(403), None, [None; 6]),
        ("404", Class::Status(404), None, [None; 6]),
        ("409", Class::Status(409), None, [None; 6]),
        ("422", Class::Status(422), None, [None; 6]),
        ("decode / own logic", Class::Permanent, None, [None; 6]),
        ("breaker/bulkhead/budget", Class::Rejected, None, [None; 6]),
    ];
    let mut cells = 0;
    for (label, class, ra, expected) in &rows {
        for ((col, methods, keyed, idem), want) in columns().iter().zip(expected) {
            for m in methods {
                let got = decide(&facts(*m, *keyed, *idem, *class, *ra));
                match want {
                    Some(d) => assert_eq!(got, Decision::RetryAfter(*d), "{label} × {col} ({m})"),
                    None => assert!(
                        matches!(got, Decision::GiveUp(_)),
                        "{label} × {col} ({m}): {got:?}"
                    ),
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, rows.len() * 13);
}

#[test]
fn give_up_reasons() {
    let f = facts(Method::Post, false, false, Class::Reset, None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::UnsafeToResend));
    let f = facts(Method::Get, false, false, Class::Status(404), None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::Permanent));
    let f = facts(Method::Get, false, false, Class::Permanent, None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::Permanent));
    let f = facts(Method::Get, false, false, Class::Rejected, None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::Rejected));
}

#[test]
fn limits() {
    let base = facts(Method::Get, false, false, Class::Status(503), None);
    // The last attempt ran.
    assert_eq!(
        decide(&Facts { attempt: 3, ..base }),
        Decision::GiveUp(GiveUp::AttemptsExhausted)
    );
    assert_eq!(
        decide(&Facts { attempt: 2, ..base }),
        Decision::RetryAfter(BACKOFF)
    );
    // A server asking for more than max_retry_after ends the call at once.
    let ra = Facts {
        retry_after: Some(Duration::from_secs(31)),
        ..base
    };
    assert_eq!(decide(&ra), Decision::GiveUp(GiveUp::RetryAfterTooLong));
    let ra = Facts {
        retry_after: Some(Duration::from_secs(30)),
        time_left: Duration::from_secs(60),
        ..base
    };
    assert_eq!(decide(&ra), Decision::RetryAfter(Duration::from_secs(30)));
    // Retry-After beyond the deadline: no sleep in vain.
    let ra = Facts {
        retry_after: Some(Duration::from_secs(5)),
        time_left: Duration::from_secs(4),
        ..base
    };
    assert_eq!(decide(&ra), Decision::GiveUp(GiveUp::DeadlineTooClose));
    // Backoff reaching the deadline.
    let late = Facts {
        time_left: BACKOFF,
        ..base
    };
    assert_eq!(decide(&late), Decision::GiveUp(GiveUp::DeadlineTooClose));
    // Or leaving the retry less than a tenth of its timeout: it could only time out.
    let short = Facts {
        time_left: BACKOFF + Duration::from_millis(99),
        ..base
    };
    assert_eq!(decide(&short), Decision::GiveUp(GiveUp::DeadlineTooClose));
    let enough = Facts {
        time_left: BACKOFF + Duration::from_millis(100),
        ..base
    };
    assert_eq!(decide(&enough), Decision::RetryAfter(BACKOFF));
    // Not listed in retry_on.
    let only_connect = RetryOn {
        connect: true,
        reset: false,
        timeout: false,
        statuses: &[],
    };
    let f = Facts {
        retry_on: &only_connect,
        ..base
    };
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::NotInRetryOn));
    let f = Facts {
        retry_on: &only_connect,
        class: Class::Connect,
        ..base
    };
    assert_eq!(decide(&f), Decision::RetryAfter(BACKOFF));
    // A 500 is retried only when listed.
    let default_on = RetryOn::DEFAULT;
    let f = Facts {
        retry_on: &default_on,
        class: Class::Status(500),
        ..base
    };
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::NotInRetryOn));
}

#[test]
fn a_keyed_request_whose_key_is_still_in_flight_waits_for_the_replay() {
    let ra = Some(Duration::from_secs(1));
    let f = facts(Method::Post, true, false, Class::Status(409), ra);
    assert_eq!(decide(&f), Decision::RetryAfter(Duration::from_secs(1)));
    // Without the key, or without Retry-After, a 409 is an ordinary conflict: permanent.
    let f = facts(Method::Post, false, false, Class::Status(409), ra);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::Permanent));
    let f = facts(Method::Post, true, false, Class::Status(409), None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::Permanent));
    // Asking again runs nothing again: past max_attempts (here 3), bounded by the deadline.
    let f = Facts {
        attempt: 3,
        ..facts(Method::Post, true, false, Class::Status(409), ra)
    };
    assert_eq!(decide(&f), Decision::RetryAfter(Duration::from_secs(1)));
    let f = Facts {
        attempt: 7,
        time_left: Duration::from_millis(900),
        ..facts(Method::Post, true, false, Class::Status(409), ra)
    };
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::DeadlineTooClose));
    // An ask needs no tenth of the timeout: the replay comes at once.
    let f = Facts {
        time_left: Duration::from_millis(1001),
        ..facts(Method::Post, true, false, Class::Status(409), ra)
    };
    assert_eq!(decide(&f), Decision::RetryAfter(Duration::from_secs(1)));
    // Any other failure still stops at max_attempts.
    let f = Facts {
        attempt: 3,
        ..facts(Method::Post, true, false, Class::Status(503), ra)
    };
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::AttemptsExhausted));
}

#[test]
fn the_least_safe_method_decides() {
    // Unknown methods are treated as POST.
    let f = facts(Method::Other, false, true, Class::Timeout, None);
    assert_eq!(decide(&f), Decision::GiveUp(GiveUp::UnsafeToResend));
    let f = facts(Method::Other, true, false, Class::Timeout, None);
    assert_eq!(decide(&f), Decision::RetryAfter(BACKOFF));
}

/// A connect failure proves only that its own request was never sent: an earlier request of
/// the attempt that reached the server goes out again with the body, and decides.
#[test]
fn requests_that_reached_the_server_decide_after_a_connect_failure() {
    for (reached, keyed, idempotent, retried) in [
        (None, false, false, true),
        (Some(Method::Get), false, false, true),
        (Some(Method::Post), false, false, false),
        (Some(Method::Post), true, false, true),
        (Some(Method::Patch), false, false, false),
        (Some(Method::Put), false, false, false),
        (Some(Method::Put), false, true, true),
        (Some(Method::Other), false, false, false),
    ] {
        let f = Facts {
            reached,
            ..facts(Method::Post, keyed, idempotent, Class::Connect, None)
        };
        let d = decide(&f);
        assert_eq!(
            matches!(d, Decision::RetryAfter(_)),
            retried,
            "reached {reached:?}, keyed {keyed}, idempotent {idempotent}: {d:?}"
        );
        if !retried {
            assert_eq!(d, Decision::GiveUp(GiveUp::UnsafeToResend));
        }
    }
}

/// The policy's unsafe method, not seen in the attempt, may have gone out unseen and unkeyed:
/// whatever the class, and however the seen requests were keyed, the body does not run again.
#[test]
fn an_unseen_unsafe_method_is_never_resent() {
    for class in [
        Class::Connect,
        Class::Reset,
        Class::Timeout,
        Class::Status(503),
    ] {
        for keyed in [false, true] {
            let f = Facts {
                unseen: Some(Method::Post),
                ..facts(Method::Get, keyed, false, class, None)
            };
            assert_eq!(
                decide(&f),
                Decision::GiveUp(GiveUp::UnsafeToResend),
                "{class:?}, keyed {keyed}"
            );
            // A safe method the policy names changes nothing.
            let f = Facts {
                unseen: Some(Method::Get),
                ..facts(Method::Get, keyed, false, class, None)
            };
            assert!(matches!(decide(&f), Decision::RetryAfter(_)), "{class:?}");
        }
    }
}

/// A response marked `Idempotent-Replayed: true` is the answer the server stored for the key:
/// every retry with the key gets it again, so none is sent, whatever its status, its
/// `Retry-After` (a 409 the handler answered is not "still in progress") or the method.
#[test]
fn a_replayed_answer_is_final() {
    for (status, retry_after) in [
        (503, None),
        (503, Some(Duration::from_secs(1))),
        (500, None),
        (429, Some(Duration::from_secs(1))),
        (409, Some(Duration::from_secs(1))),
    ] {
        for (method, idempotent) in [
            (Method::Post, false),
            (Method::Put, true),
            (Method::Get, false),
        ] {
            let base = facts(method, true, idempotent, Class::Status(status), retry_after);
            // Without the mark the same facts are retried: the mark alone decides.
            assert!(
                matches!(decide(&base), Decision::RetryAfter(_)),
                "{status} {method:?} unmarked: {:?}",
                decide(&base)
            );
            let f = Facts {
                replayed: true,
                ..base
            };
            assert_eq!(
                decide(&f),
                Decision::GiveUp(GiveUp::Replayed),
                "{status} {method:?}"
            );
            assert!(!resilience_runtime::decision::in_progress(&f));
        }
    }
}
