//! One HTTP/1.1 POST to the operator and its whole answer, over plain HTTP or over HTTPS trusting only
//! a given CA: the client of `kilowatt whatif` and of the agent's credentials request. Network IO.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::errors::error_chain;
use crate::tls::{self, TlsError};

/// The status and body of an answer, whatever the status.
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The error text of an operator answer (`{"error": ...}`), or the body as it came.
    pub fn error_message(&self) -> String {
        error_message(&self.body)
    }
}

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{url} is not a valid URL: {message}")]
    Url { url: String, message: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// Posts `body` to `url` with `headers`, over HTTPS trusting only `ca_file` when one is given (the URL
/// must then be `https://`), and waits at most `timeout` for the whole answer.
pub async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Answer, RequestError> {
    let mut request = hyper::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| RequestError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let unreachable = |message: String| RequestError::Unreachable {
        url: url.to_owned(),
        message,
    };
    let builder = Client::builder(TokioExecutor::new());
    let response = match ca_file {
        Some(ca) => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls::client_config(ca)?)
                .https_only()
                .enable_http1()
                .build();
            builder.build(connector).request(request)
        }
        None => builder.build_http().request(request),
    };
    let exchange = async {
        let response = response.await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, RequestError>(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs_f64())))?
}

/// The error text of an operator answer (`{"error": ...}`), or the body as it came.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_error_text_is_shown_when_it_sends_one() {
        assert_eq!(
            error_message(br#"{"error": "the token belongs to someone else"}"#),
            "the token belongs to someone else"
        );
        assert_eq!(error_message(b"bad gateway"), "bad gateway");
    }

    #[tokio::test]
    async fn a_port_where_nothing_listens_is_unreachable_and_named() {
        let url = "http://127.0.0.1:9/api";
        let error = post(url, &[], Vec::new(), None, Duration::from_secs(2))
            .await
            .expect_err("nothing listens on port 9");
        assert!(
            matches!(&error, RequestError::Unreachable { url: named, .. } if named == url),
            "{error:?}"
        );
    }
}
