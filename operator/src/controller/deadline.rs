//! A time limit on every Kubernetes API request but watches: a status patch, a TokenReview or a Lease
//! update that hangs on a half-dead connection must fail and be retried, not stall the loop. Watches
//! are left alone because they are meant to stay open and idle (kube's own `read_timeout` would cut
//! them; its watcher has an idle timeout of its own). No IO of its own: it wraps the client's stack.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::ClientBuilder;

/// Builds a client for `config` whose non-watch requests fail after `limit` without response headers.
pub fn client_with_deadline(
    config: kube::Config,
    limit: Duration,
) -> Result<kube::Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&RequestDeadline { limit })
        .build())
}

/// Whether a request is a watch (`?watch=true`, as kube and client-go send it).
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

/// The request that ran out of time, as the error the client reports.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API did not answer {method} {path} within {limit:?}")]
pub struct DeadlineExceeded {
    method: http::Method,
    path: String,
    limit: Duration,
}

/// The layer: [`Deadlined`] around the client's service.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline {
    pub limit: Duration,
}

impl<S> tower::Layer<S> for RequestDeadline {
    type Service = Deadlined<S>;

    fn layer(&self, inner: S) -> Deadlined<S> {
        Deadlined {
            inner,
            limit: self.limit,
        }
    }
}

/// A service whose non-watch calls fail with [`DeadlineExceeded`] after the limit.
#[derive(Debug, Clone)]
pub struct Deadlined<S> {
    inner: S,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Deadlined<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watch = is_watch(request.uri());
        let exceeded = DeadlineExceeded {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            limit: self.limit,
        };
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            if watch {
                return response.await.map_err(Into::into);
            }
            match tokio::time::timeout(limit, response).await {
                Ok(answered) => answered.map_err(Into::into),
                Err(_) => Err(Box::new(exceeded) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn only_watch_requests_are_watches() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert!(is_watch(&uri(
            "/api/v1/nodes?resourceVersion=5&watch=true&timeoutSeconds=290"
        )));
        assert!(is_watch(&uri("/api/v1/pods?watch=1")));
        for not in [
            "/api/v1/nodes",
            "/api/v1/nodes?watch=false",
            "/apis/kilowatt.dev/v1/powerbudgets/watch=true/status",
            "/api/v1/nodes?allowWatchBookmarks=true",
        ] {
            assert!(!is_watch(&uri(not)), "{not}");
        }
    }

    /// A service that never answers.
    fn hanging() -> impl Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = BoxError,
        Future = impl Future<Output = Result<http::Response<()>, BoxError>> + Send + 'static,
    > + Clone {
        tower::service_fn(|_: http::Request<()>| async {
            std::future::pending::<Result<http::Response<()>, BoxError>>().await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_fails_after_the_limit_and_a_watch_waits() {
        let layer = RequestDeadline {
            limit: Duration::from_secs(10),
        };
        let request = |uri: &str| http::Request::get(uri).body(()).expect("request");
        let patch = layer
            .layer(hanging())
            .oneshot(request("/apis/kilowatt.dev/v1/powerbudgets/rack/status"));
        let error = patch.await.expect_err("cut off");
        assert!(error.to_string().contains("within 10s"), "{error}");
        let watch = layer
            .layer(hanging())
            .oneshot(request("/api/v1/nodes?watch=true"));
        let waited = tokio::time::timeout(Duration::from_secs(3600), watch).await;
        assert!(waited.is_err(), "a watch is not cut off");
    }
}
