//! The client side of `kilowatt whatif`: one `POST /api/v1/whatif` to a running operator over plain
//! HTTP/1.1. Does network IO.

use std::time::Duration;

use crate::http::whatif::{WhatIfAnswer, WhatIfRequest};
use kilowatt_plumbing::json_http::{self, RequestError};

/// How long the operator may take to solve both problems and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error("the operator's answer does not decode")]
    Decode(#[from] serde_json::Error),
}

/// Sends `request` to the operator at `base_url` and waits (at most a minute) for its answer.
pub async fn ask(base_url: &str, request: &WhatIfRequest) -> Result<WhatIfAnswer, AskError> {
    let url = format!("{}/api/v1/whatif", base_url.trim_end_matches('/'));
    if !url.starts_with("http://") {
        return Err(AskError::Url {
            url,
            message: "only http:// is supported".to_owned(),
        });
    }
    let body = serde_json::to_vec(request)?;
    let headers = [("content-type", "application/json".to_owned())];
    let answer = json_http::post(&url, &headers, body, None, ANSWER_TIMEOUT)
        .await
        .map_err(|e| match e {
            RequestError::Url { url, message } => AskError::Url { url, message },
            RequestError::Unreachable { url, message } => AskError::Unreachable { url, message },
            // NB: no CA file is given, so no TLS material is ever read.
            RequestError::Tls(e) => AskError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            },
        })?;
    if answer.status.is_success() {
        return Ok(serde_json::from_slice(&answer.body)?);
    }
    let (status, message) = (answer.status.as_u16(), answer.error_message());
    if answer.status.is_client_error() {
        Err(AskError::Rejected { status, message })
    } else {
        Err(AskError::Failed { status, message })
    }
}
