//! The client side of `kilowatt whatif`: one `POST /api/v1/whatif` to a running operator over plain
//! HTTP/1.1. Does network IO.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::whatif::{WhatIfAnswer, WhatIfRequest};

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{url} is not a valid http:// URL: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the operator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the operator rejected the question ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the operator failed ({status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the operator's answer does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends `request` to the operator at `base_url` and waits (at most a minute) for its answer.
pub async fn ask(base_url: &str, request: &WhatIfRequest) -> Result<WhatIfAnswer, AskError> {
    let url = format!("{}/api/v1/whatif", base_url.trim_end_matches('/'));
    let bad_url = |message: String| AskError::Url {
        url: url.clone(),
        message,
    };
    if !url.starts_with("http://") {
        return Err(bad_url("only http:// is supported".to_owned()));
    }
    let body = serde_json::to_vec(request)?;
    let http_request = hyper::Request::post(url.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| bad_url(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let unreachable = |message: String| AskError::Unreachable {
        url: url.clone(),
        message,
    };
    let exchange = async {
        let response = client
            .request(http_request)
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, AskError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| unreachable("no answer within 60 s".to_owned()))??;
    if status.is_success() {
        return Ok(serde_json::from_slice(&bytes)?);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    if status.is_client_error() {
        Err(AskError::Rejected {
            status: status.as_u16(),
            message,
        })
    } else {
        Err(AskError::Failed {
            status: status.as_u16(),
            message,
        })
    }
}
