//! The generated code names only absolute paths (`::core::…`, `::resilience_runtime::__private::…`,
//! or the `crate = "…"` path), so annotated functions compile next to local items and modules that
//! shadow every name it could otherwise pick up, and behave the same.

use resilience_fault_server::{Action, FaultServer};

/// Every name an expansion could reach for unqualified, declared here as something else.
#[allow(dead_code, non_camel_case_types, unused_macros)]
mod shadowed {
    mod core {}
    mod std {}
    mod alloc {}
    mod resilience_runtime {}
    mod reqwest {}
    mod tokio {}
    mod tracing {}

    struct Result;
    struct Ok;
    struct Err;
    struct Option;
    struct Some;
    struct None;
    struct Duration;
    struct Session;
    struct Policy;
    struct Error;
    struct Clone;
    struct From;
    struct Box;
    struct String;
    trait Future {}
    trait Into {}
    fn drop() {}

    macro_rules! concat {
        ($($t:tt)*) => {
            compile_error!("the expansion used an unqualified concat!")
        };
    }
    macro_rules! stringify {
        ($($t:tt)*) => {
            compile_error!("the expansion used an unqualified stringify!")
        };
    }
    macro_rules! module_path {
        () => {
            compile_error!("the expansion used an unqualified module_path!")
        };
    }
    macro_rules! include_str {
        ($($t:tt)*) => {
            compile_error!("the expansion used an unqualified include_str!")
        };
    }

    /// An alias counts as a `Result` when its name ends with `Result`.
    type ApiResult<T> = ::core::result::Result<T, ::resilience_runtime::Error>;

    /// Retries, a generated key, a by-value argument cloned per attempt, shared state.
    #[::resilience_runtime::resilient(
        timeout = "1s",
        backoff(initial = "1ms", max = "1ms"),
        idempotency_key = auto,
        breaker = { failure_rate = 0.5, min_calls = 5, window = 10 },
        bulkhead = { max_concurrent = 4 },
    )]
    pub async fn create(
        http: &::reqwest::Client,
        url: &str,
        body: ::std::string::String,
    ) -> ApiResult<::std::string::String> {
        use ::resilience_runtime::RequestBuilderExt as _;
        let response = http.post(url).body(body).resilient().send().await?;
        ::core::result::Result::Ok(response.error_for_status()?.text().await?)
    }

    /// A key taken from a parameter.
    #[::resilience_runtime::resilient(
        timeout = "1s",
        backoff(initial = "1ms", max = "1ms"),
        idempotency_key = key,
    )]
    pub async fn update(
        http: &::reqwest::Client,
        url: &str,
        key: &str,
    ) -> ::core::result::Result<u16, ::resilience_runtime::Error> {
        use ::resilience_runtime::RequestBuilderExt as _;
        let response = http.patch(url).resilient().send().await?;
        ::core::result::Result::Ok(response.error_for_status()?.status().as_u16())
    }

    /// No retry: the other shape of the expansion, moving a by-value argument.
    #[::resilience_runtime::resilient(max_attempts = 1, timeout = "1s")]
    pub async fn once(http: &::reqwest::Client, url: ::std::string::String) -> ApiResult<u16> {
        use ::resilience_runtime::RequestBuilderExt as _;
        let response = http.post(url).resilient().send().await?;
        ::core::result::Result::Ok(response.status().as_u16())
    }
}

/// A crate that vendors the runtime under its own path and points the attribute at it.
mod vendored {
    pub mod rt {
        pub use ::resilience_runtime as inner;
    }
}

#[allow(dead_code)]
mod through_reexport {
    mod resilience_runtime {}

    use crate::vendored::rt::inner::{Error, RequestBuilderExt as _, resilient};

    #[resilient(
        crate = "crate::vendored::rt::inner",
        timeout = "1s",
        backoff(initial = "1ms", max = "1ms")
    )]
    pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<String, Error> {
        Ok(http
            .get(url)
            .resilient()
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Nothing to send: the body returns at once.
    #[resilient(crate = "crate::vendored::rt::inner", method = GET)]
    pub async fn immediate() -> Result<u8, Error> {
        Ok(7)
    }
}

#[tokio::test]
async fn shadowed_names_expand_and_run() {
    let server = FaultServer::start(vec![Action::status(503)]).await;
    let http = reqwest::Client::new();
    let url = server.url("/items");
    let body = shadowed::create(&http, &url, "x".to_owned()).await.unwrap();
    assert_eq!(body, "ok");
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "one 503, then 200");
    let key = seen[0].idempotency_key().expect("keyed POST");
    assert_eq!(
        seen[1].idempotency_key(),
        Some(key),
        "same key on the retry"
    );

    // `clear` also starts the script again: a 503 first.
    server.clear();
    let status = shadowed::update(&http, &url, "key-1").await.unwrap();
    assert_eq!(status, 200);
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().map(str::to_owned))
        .collect();
    assert_eq!(keys, [Some("key-1".to_owned()), Some("key-1".to_owned())]);

    server.clear();
    assert_eq!(shadowed::once(&http, url).await.unwrap(), 503);
    assert_eq!(server.count(), 1, "no retry");
}

#[tokio::test]
async fn crate_path_points_at_a_reexport() {
    let server = FaultServer::start(vec![Action::reset()]).await;
    let http = reqwest::Client::new();
    let body = through_reexport::fetch(&http, &server.url("/r"))
        .await
        .unwrap();
    assert_eq!(body, "ok");
    assert_eq!(server.count(), 2, "a reset, then 200");
    assert_eq!(through_reexport::immediate().await.unwrap(), 7);
}
