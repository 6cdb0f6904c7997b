// `Result<impl Trait, E>` with an error type of the service's own, named once in the body
// (`Ok::<_, AppError>(…)`) so that it is inferred where the runtime reads it (README: without
// that, the build fails at the attribute).
use resilience_runtime::resilient;

#[derive(Debug)]
enum AppError {
    Http(reqwest::Error),
    Runtime(resilience_runtime::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Http(e) => e.fmt(f),
            AppError::Runtime(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AppError {}

impl From<reqwest::Error> for AppError {
    fn from(e: reqwest::Error) -> Self {
        AppError::Http(e)
    }
}

impl From<resilience_runtime::Error> for AppError {
    fn from(e: resilience_runtime::Error) -> Self {
        AppError::Runtime(e)
    }
}

#[resilient(timeout = "2s")]
async fn avatar(c: &reqwest::Client, u: &str) -> Result<impl AsRef<[u8]>, AppError> {
    Ok::<_, AppError>(c.get(u).send().await?.bytes().await?)
}

fn main() {
    let _ = avatar;
}
