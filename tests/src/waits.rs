//! Waits: every await in a test bounded, and polling for a condition instead of sleeping. No IO of its own.

use std::time::{Duration, Instant};

/// Bounds an await in a test, so a hang fails the test instead of stalling CI.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`; panics naming `what`
/// and the last value seen otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::from("not checked yet");
    while started.elapsed() < timeout {
        match tokio::time::timeout(Duration::from_secs(30), check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => last = seen,
            Err(_) => last = "check timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within {timeout:?}: {what}; last seen: {last}")
}
