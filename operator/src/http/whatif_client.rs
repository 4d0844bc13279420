//! The client side of `kilowatt whatif`: one `POST /api/v1/whatif` to a running operator over HTTP/1.1
//! (HTTPS with a CA file), with a bearer token when one is given. Does network IO.

use std::path::Path;
use std::time::Duration;

use crate::http::whatif::{WhatIfAnswer, WhatIfRequest};
use kilowatt_plumbing::json_http::{self, RequestError};

/// How long the operator may take to solve both problems and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{url} is not a valid URL: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the operator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the CA file")]
    Tls(#[from] kilowatt_plumbing::tls::TlsError),
    #[error("the operator rejected the question ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error(
        "the operator is answering another what-if question; try again in a moment ({message})"
    )]
    Busy { message: String },
    #[error("the operator failed ({status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the operator's answer does not decode")]
    Decode(#[from] serde_json::Error),
}

/// How the question is sent.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// A bearer token, for an operator that authorizes what-if callers.
    pub token: Option<&'a str>,
    /// The CA of the operator's certificate, for an https:// URL.
    pub ca_file: Option<&'a Path>,
}

/// Sends `request` to the operator at `base_url` and waits (at most a minute) for its answer.
pub async fn ask(
    base_url: &str,
    request: &WhatIfRequest,
    credentials: &Credentials<'_>,
) -> Result<WhatIfAnswer, AskError> {
    let url = format!("{}/api/v1/whatif", base_url.trim_end_matches('/'));
    let bad_url = |message: &str| AskError::Url {
        url: url.clone(),
        message: message.to_owned(),
    };
    match (
        url.split_once("://").map(|(scheme, _)| scheme),
        credentials.ca_file,
    ) {
        (Some("http"), None) | (Some("https"), Some(_)) => {}
        (Some("https"), None) => return Err(bad_url("https:// needs --ca-file")),
        (Some("http"), Some(_)) => {
            return Err(bad_url("--ca-file is given but the URL is http://"));
        }
        _ => return Err(bad_url("it must start with http:// or https://")),
    }
    let body = serde_json::to_vec(request)?;
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(token) = credentials.token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    let answer = json_http::post(&url, &headers, body, credentials.ca_file, ANSWER_TIMEOUT)
        .await
        .map_err(|e| match e {
            RequestError::Url { url, message } => AskError::Url { url, message },
            RequestError::Unreachable { url, message } => AskError::Unreachable { url, message },
            RequestError::Tls(e) => AskError::Tls(e),
        })?;
    if answer.status.is_success() {
        return Ok(serde_json::from_slice(&answer.body)?);
    }
    let (status, message) = (answer.status.as_u16(), answer.error_message());
    if status == 429 {
        Err(AskError::Busy { message })
    } else if answer.status.is_client_error() {
        Err(AskError::Rejected { status, message })
    } else {
        Err(AskError::Failed { status, message })
    }
}
