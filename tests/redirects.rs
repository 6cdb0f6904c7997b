//! A server that carries out an unkeyed POST and answers with a redirect whose target cannot
//! be reached (`303 See Other` to a host mid-deploy): reqwest follows the redirect inside one
//! send, and the connect failure of the second hop comes back as the POST's own. A connect
//! failure proves only that its own request was never sent; this one followed a request a
//! server answered, and the POST must not go out again.

use resilience_fault_server::{Action, FaultServer, Script, refused_addr};
use resilience_runtime::{ClientSettings, Error, ErrorKind, resilient};

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    retry_on = [connect]
)]
async fn create_order(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.post(url).body("amount=100").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

fn redirected_to_nowhere(status: u16) -> Script {
    Script::always(
        Action::status(status).header("location", format!("http://{}/orders/1", refused_addr())),
    )
}

/// Through the runtime's own client settings (and so `client!`): sent once, for every
/// redirect status (a 303 turns the POST into a GET; a 307 or 308 sends the POST again to the
/// target, which refuses it).
#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_redirected_to_a_refusing_host_is_sent_once() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    for status in [301, 302, 303, 307, 308] {
        let server = FaultServer::start(redirected_to_nowhere(status)).await;
        let e = create_order(&c, &server.url("/orders")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Call, "{status}: {e}");
        assert_eq!(e.attempts(), 1, "{status}: {e}");
        assert_eq!(server.count(), 1, "{status}: the POST went out again");
    }
}

/// A client built by hand with the runtime's redirect policy, as the README says to.
#[tokio::test(start_paused = true)]
async fn a_client_of_ones_own_with_the_redirect_policy_sends_it_once() {
    let c = reqwest::Client::builder()
        .redirect(resilience_runtime::redirect_policy())
        .build()
        .unwrap();
    let server = FaultServer::start(redirected_to_nowhere(303)).await;
    create_order(&c, &server.url("/orders")).await.unwrap_err();
    assert_eq!(server.count(), 1);
}

/// The control: a connect failure of the request itself (nothing answered) is retried, as
/// `retry_on = [connect]` asks.
#[tokio::test(start_paused = true)]
async fn a_post_that_never_connected_is_retried() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let e = create_order(&c, &format!("http://{}/orders", refused_addr()))
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
}

/// A redirect followed to a target that answers: one request to each, the answer returned.
#[tokio::test(start_paused = true)]
async fn a_redirect_to_a_live_target_is_followed() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let target = FaultServer::start(Script::always(Action::ok())).await;
    let server = FaultServer::start(Script::always(
        Action::status(303).header("location", target.url("/orders/1")),
    ))
    .await;
    assert_eq!(create_order(&c, &server.url("/orders")).await.unwrap(), 200);
    assert_eq!((server.count(), target.count()), (1, 1));
}

/// A `307` back to itself (a loop): reqwest's own policy counts hops only, and sent the POST
/// eleven times within one attempt. The runtime's stops at the first URL seen again: sent once.
#[tokio::test(start_paused = true)]
async fn a_post_redirected_in_a_loop_is_sent_once() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    for status in [307, 308] {
        let server = FaultServer::start(Script::always(
            Action::status(status).header("location", "/orders"),
        ))
        .await;
        let e = create_order(&c, &server.url("/orders")).await.unwrap_err();
        assert_eq!(e.attempts(), 1, "{status}: {e}");
        assert_eq!(server.count(), 1, "{status}: the POST went round the loop");
    }
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    retry_on = [connect]
)]
async fn update_cart(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.patch(url).body("qty=2").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// The runtime's client, and one built by hand with the runtime's redirect policy, as the
/// README says to (it reports no method of its own).
fn settings_and_own_clients() -> [(&'static str, reqwest::Client); 2] {
    let own = reqwest::Client::builder()
        .redirect(resilience_runtime::redirect_policy())
        .build()
        .unwrap();
    [
        ("settings", ClientSettings::DEFAULT.build().unwrap()),
        ("own", own),
    ]
}

/// A client of the runtime's settings that follows no redirect (an SDK's: it reports each
/// completion, a 3xx among them), and one built by hand with the runtime's redirect policy.
fn reporting_without_following_and_own() -> (reqwest::Client, reqwest::Client) {
    let sdk = ClientSettings::DEFAULT
        .builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (_, own) = settings_and_own_clients()
        .into_iter()
        .find(|(which, _)| *which == "own")
        .unwrap();
    (sdk, own)
}

/// How many PATCHes reached `server`.
fn patches_sent(server: &FaultServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count()
}

/// A 301 or 302 sends a PATCH (a PUT, a DELETE) on as it was, its method and body kept (only
/// a POST becomes a GET): back to its own URL (after an update, the page of the thing
/// updated), it is a loop, stopped before the PATCH goes out again; it was once followed, and
/// the unkeyed PATCH applied twice within one send. The same through a client built by hand
/// with the runtime's redirect policy, as the README says to, which reports no method: the
/// stamped request being sent tells it, sent with `.send()` or with `execute`.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_patch_answered_302_to_its_own_url_is_sent_once() {
    for (which, c) in settings_and_own_clients() {
        for (status, executed) in [(301, false), (302, false), (302, true)] {
            let server = FaultServer::start(Script::always(
                Action::status(status).header("location", "/carts/7"),
            ))
            .await;
            let url = server.url("/carts/7");
            let e = if executed {
                update_cart_by_execute(&c, &url).await
            } else {
                update_cart(&c, &url).await
            }
            .unwrap_err();
            let which = format!("{which}, executed: {executed}");
            assert_eq!(e.attempts(), 1, "{which} {status}: {e}");
            let patches = patches_sent(&server);
            assert_eq!(patches, 1, "{which} {status}: the PATCH went out again");
        }
    }
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    retry_on = [connect]
)]
async fn update_cart_by_execute(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let req = c.patch(url).body("qty=2").build()?;
    Ok(c.execute(req).await?.error_for_status()?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    idempotency_key = auto,
    retry_on = [503]
)]
async fn look_then_pay(c: &reqwest::Client, look: &str, pay: &str) -> Result<u16, Error> {
    c.get(look).send().await?.error_for_status()?;
    let req = c.post(pay).body("amount=1").build()?;
    Ok(c.execute(req).await?.error_for_status()?.status().as_u16())
}

/// A GET's 303 earlier in the attempt tells nothing of a later request's redirects: a keyed
/// POST sent with `execute` and sent on by a 307 is still the keyed POST at its target, and its
/// 503 there is retried under the key (a 303 once left a GET's method for the attempt, and the
/// POST's completion at the target was taken for an unkeyed one's: not retried).
#[tokio::test(start_paused = true)]
async fn a_gets_303_leaves_nothing_for_a_keyed_posts_307() {
    let pays = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_pays = pays.clone();
    let server = FaultServer::start(Script::dynamic(move |seen| match seen.path.as_str() {
        "/look" => Action::status(303).header("location", "/look/done"),
        "/pay" => Action::status(307).header("location", "/pay/there"),
        "/pay/there" if seen_pays.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            Action::status(503)
        }
        _ => Action::ok(),
    }))
    .await;
    let c = ClientSettings::DEFAULT.build().unwrap();
    let (got, report) =
        resilience_runtime::measure(look_then_pay(&c, &server.url("/look"), &server.url("/pay")))
            .await;
    assert_eq!(got.expect("retried under its key"), 200);
    assert_eq!(report.expect("measured").attempts, 2);
    assert_eq!(pays.load(std::sync::atomic::Ordering::SeqCst), 2);
    let keys: Vec<_> = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.idempotency_key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "{keys:?}"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    retry_on = [connect]
)]
async fn notify_then_update(
    sdk: &reqwest::Client,
    own: &reqwest::Client,
    notify: &str,
    cart: &str,
) -> Result<u16, Error> {
    sdk.post(notify).body("event=1").send().await?;
    Ok(own
        .patch(cart)
        .body("qty=2")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A redirect a client reported and did not follow (its policy follows none) leaves nothing
/// for another request's: the PATCH's 302 back to its own URL, through a client that reports
/// nothing, is still a loop (the POST's 303 once left a POST's method for it, and the PATCH
/// was applied twice).
#[tokio::test(start_paused = true)]
async fn a_redirect_not_followed_leaves_nothing_for_the_next_request() {
    let (sdk, own) = reporting_without_following_and_own();
    let server = FaultServer::start(Script::dynamic(|seen| match seen.path.as_str() {
        "/notify" => Action::status(303).header("location", "/notified"),
        _ => Action::status(302).header("location", "/carts/7"),
    }))
    .await;
    let e = notify_then_update(&sdk, &own, &server.url("/notify"), &server.url("/carts/7"))
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let patches = patches_sent(&server);
    assert_eq!(patches, 1, "the PATCH went out again");

    // The same from the URL the PATCH goes to: the POST's 302 there, not followed, leaves
    // nothing for the PATCH's 302 from it.
    let server = FaultServer::start(Script::always(
        Action::status(302).header("location", "/carts/7"),
    ))
    .await;
    let cart = server.url("/carts/7");
    let e = notify_then_update(&sdk, &own, &cart, &cart)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let patches = patches_sent(&server);
    assert_eq!(patches, 1, "the PATCH went out again, from the POST's URL");
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    retry_on = [connect]
)]
async fn update_then_post(
    sdk: &reqwest::Client,
    own: &reqwest::Client,
    url: &str,
) -> Result<u16, Error> {
    sdk.patch(url).body("qty=2").send().await?;
    let req = own.post(url).body("event=1").build()?;
    Ok(own
        .execute(req)
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A POST sent with `execute` is not taken for the PATCH whose 302 from the same URL a client
/// reported and did not follow: its own 302 there is read with a GET and followed (it was
/// once refused as a loop, the PATCH's method read for it).
#[tokio::test(start_paused = true)]
async fn an_executed_post_is_not_taken_for_an_earlier_patch() {
    let (sdk, own) = reporting_without_following_and_own();
    let server = FaultServer::start(Script::dynamic(|seen| match seen.method.as_str() {
        "GET" => Action::ok(),
        _ => Action::status(302).header("location", "/carts/7"),
    }))
    .await;
    let got = update_then_post(&sdk, &own, &server.url("/carts/7")).await;
    assert_eq!(got.expect("the POST's 302 followed with a GET"), 200);
}

/// A PATCH answered 303 is read with a GET, and that GET's 302 back to the PATCH's URL is
/// no resend: followed, through the client built by hand too (the method it reads is the
/// GET's after the 303).
#[tokio::test(start_paused = true)]
async fn a_patchs_303_then_a_302_back_is_followed() {
    for (which, c) in settings_and_own_clients() {
        let server = FaultServer::start(Script::dynamic(|seen| match seen.path.as_str() {
            _ if seen.index == 0 => Action::status(303).header("location", "/carts/7/view"),
            "/carts/7/view" => Action::status(302).header("location", "/carts/7"),
            _ => Action::ok(),
        }))
        .await;
        assert_eq!(
            update_cart(&c, &server.url("/carts/7")).await.unwrap(),
            200,
            "{which}"
        );
        let methods: Vec<_> = server.requests().iter().map(|r| r.method.clone()).collect();
        assert_eq!(methods, ["PATCH", "GET", "GET"], "{which}");
    }
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms", jitter = none),
    budget = false,
    method = PATCH,
    idempotency_key = auto
)]
async fn update_cart_keyed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.patch(url).body("qty=2").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A keyed PATCH sent on by a 301 (a trailing slash added) to a target that answers 503: the
/// same request at the target, with its key; its completion there is the stamped request's,
/// and the 503 is retried under the key (it was taken for an unkeyed PATCH, and not retried).
#[tokio::test(start_paused = true)]
async fn a_keyed_patch_sent_on_by_a_301_keeps_its_key_and_is_retried() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/carts/7" {
            Action::status(301).header("location", "/carts/7/")
        } else if seen.index < 2 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    assert_eq!(
        update_cart_keyed(&c, &server.url("/carts/7"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    let keys: Vec<_> = seen.iter().map(|r| r.idempotency_key()).collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "{keys:?}"
    );
    assert!(seen.iter().all(|r| r.method == "PATCH"), "{seen:?}");
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    retry_on = [connect]
)]
async fn read_then_order(c: &reqwest::Client, config: &str, orders: &str) -> Result<u16, Error> {
    c.get(config).send().await?.error_for_status()?;
    Ok(c.post(orders).body("qty=1").send().await?.status().as_u16())
}

/// A GET that followed a redirect, then a POST whose connection is refused: the POST was never
/// sent, and is retried (a redirect anywhere in the attempt once made every later connect
/// failure in it count as reached). A redirect followed while the POST is in flight still
/// counts for it (`an_unkeyed_post_redirected_to_a_refusing_host_is_sent_once`).
#[tokio::test(start_paused = true)]
async fn a_redirect_of_an_earlier_request_does_not_make_a_refused_post_reached() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let target = FaultServer::start(Script::always(Action::ok())).await;
    let config = FaultServer::start(Script::always(
        Action::status(301).header("location", target.url("/config")),
    ))
    .await;
    let e = read_then_order(
        &c,
        &config.url("/config"),
        &format!("http://{}/orders", refused_addr()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(config.count(), 3, "the GET read again with each attempt");
}

/// A redirect to another host carries no `Referer` (the URL it came from, its query's token
/// with it).
#[tokio::test(start_paused = true)]
async fn a_redirect_sends_no_referer() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let target = FaultServer::start(Script::always(Action::ok())).await;
    let server = FaultServer::start(Script::always(
        Action::status(303).header("location", target.url("/receipt")),
    ))
    .await;
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
    assert_eq!(
        fetch(&c, &server.url("/order?token=s3cret")).await.unwrap(),
        200
    );
    // Nor `reqwest::get(url)` in an annotated body (the one-off client it becomes).
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn fetch_once(url: &str) -> Result<u16, Error> {
        Ok(reqwest::get(url).await?.status().as_u16())
    }
    assert_eq!(
        fetch_once(&server.url("/order?token=s3cret"))
            .await
            .unwrap(),
        200
    );
    let seen = target.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("referer"), None, "{s:?}");
    }
}

/// A POST answered `303 See Other` back to its own URL (the order read there with a GET) is no
/// loop: followed, and answered.
#[tokio::test(start_paused = true)]
async fn a_post_answered_303_to_its_own_url_is_followed() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let server = FaultServer::start(Script::dynamic(|s| match s.method.as_str() {
        "POST" => Action::status(303).header("location", "/orders"),
        _ => Action::ok(),
    }))
    .await;
    assert_eq!(create_order(&c, &server.url("/orders")).await.unwrap(), 200);
    assert_eq!(server.count(), 2);
}

/// A GET redirected in a loop (302 back to itself) is stopped on its second visit, not sent
/// eleven times.
#[tokio::test(start_paused = true)]
async fn a_get_redirected_in_a_loop_is_stopped() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let server = FaultServer::start(Script::always(
        Action::status(302).header("location", "/page"),
    ))
    .await;
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
    page(&c, &server.url("/page")).await.unwrap_err();
    assert_eq!(server.count(), 2);
}

/// A chain of redirects, each to a URL not visited yet (no loop): followed up to 10 hops, the
/// eleventh refused as an error (11 requests, one attempt), not followed on.
#[tokio::test(start_paused = true)]
async fn a_redirect_chain_is_followed_up_to_ten_hops() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    #[resilient(timeout = "1s", max_attempts = 1, budget = false)]
    async fn page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url).send().await?.status().as_u16())
    }
    let chain = |hops: u32| {
        Script::dynamic(move |seen| {
            let n: u32 = seen.path.trim_start_matches("/hop/").parse().unwrap_or(0);
            if n < hops {
                Action::status(302).header("location", format!("/hop/{}", n + 1))
            } else {
                Action::ok()
            }
        })
    };
    let ten = FaultServer::start(chain(10)).await;
    assert_eq!(page(&c, &ten.url("/hop/0")).await.unwrap(), 200);
    assert_eq!(ten.count(), 11, "ten hops followed");
    let eleven = FaultServer::start(chain(11)).await;
    let e = page(&c, &eleven.url("/hop/0")).await.unwrap_err();
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::Call, 1), "{e}");
    assert_eq!(eleven.count(), 11, "the eleventh hop is not followed: {e}");
}
