//! The agent's etcd credentials: asks the operator (`POST /api/v1/agent-credentials`) with this pod's
//! projected ServiceAccount token, read afresh for every request because the kubelet rotates it; the
//! user it gets may write only the keys of the node the token is bound to. Does file and network IO.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kilowatt_crds::plan::AgentCredentials;

/// Where the agent gets its etcd credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsSource {
    /// The operator's endpoint, `http://HOST:PORT/api/v1/agent-credentials`.
    pub url: String,
    /// The pod's projected ServiceAccount token, issued for audience `kilowatt`.
    pub token_file: PathBuf,
}

/// Why no credentials came back.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading the ServiceAccount token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ServiceAccount token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("{url} is not a valid http:// URL: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the operator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the operator refused credentials ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the operator could not issue credentials ({status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the operator's answer does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error(
        "the operator issued credentials for node {issued}, but this agent runs for node {node}: its \
         token is bound to a pod on {issued}"
    )]
    WrongNode { issued: String, node: String },
}

impl CredentialsError {
    /// Whether asking again at once cannot help: the token or the agent's configuration is wrong, and
    /// every retry costs the API server a TokenReview.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CredentialsError::Refused { .. }
                | CredentialsError::WrongNode { .. }
                | CredentialsError::Url { .. }
        )
    }
}

/// Checks that `url` is one the agent can ask (plain `http://`), for the command line.
pub fn check_url(url: &str) -> Result<(), CredentialsError> {
    let bad = |message: &str| CredentialsError::Url {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    if !url.starts_with("http://") {
        return Err(bad("only http:// is supported"));
    }
    url.parse::<hyper::Uri>()
        .map(|_| ())
        .map_err(|e| bad(&e.to_string()))
}

/// The error text of an operator answer (`{"error": ...}`), or the body as it came.
fn answer_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Asks the operator for `node`'s credentials, waiting at most `timeout`. Credentials issued for
/// another node are refused here too (etcd would refuse every write with them anyway), so a
/// misconfigured agent says so instead of failing on permissions.
pub async fn fetch(
    source: &CredentialsSource,
    node: &str,
    timeout: Duration,
) -> Result<AgentCredentials, CredentialsError> {
    check_url(&source.url)?;
    // NB: a projected token is a small file on a tmpfs: reading it does not block the runtime long.
    let token =
        std::fs::read_to_string(&source.token_file).map_err(|e| CredentialsError::Token {
            path: source.token_file.clone(),
            source: e,
        })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(CredentialsError::EmptyToken {
            path: source.token_file.clone(),
        });
    }
    let url = source.url.as_str();
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| CredentialsError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let unreachable = |message: String| CredentialsError::Unreachable {
        url: url.to_owned(),
        message,
    };
    let client = Client::builder(TokioExecutor::new()).build_http();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, CredentialsError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
    if status.is_client_error() {
        return Err(CredentialsError::Refused {
            status: status.as_u16(),
            message: answer_message(&bytes),
        });
    }
    if !status.is_success() {
        return Err(CredentialsError::Failed {
            status: status.as_u16(),
            message: answer_message(&bytes),
        });
    }
    let credentials: AgentCredentials = serde_json::from_slice(&bytes)?;
    if credentials.node != node {
        return Err(CredentialsError::WrongNode {
            issued: credentials.node,
            node: node.to_owned(),
        });
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(
            check_url("http://kilowatt-operator.kilowatt-system:8080/api/v1/agent-credentials")
                .is_ok()
        );
        for bad in ["https://op/api", "op:8080/api", "", "http://bad host/"] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_operators_error_text_is_shown_when_it_sends_one() {
        assert_eq!(
            answer_message(br#"{"error": "the token belongs to someone else"}"#),
            "the token belongs to someone else"
        );
        assert_eq!(answer_message(b"bad gateway"), "bad gateway");
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_is_reported_before_asking() {
        let dir = std::env::temp_dir().join(format!("kilowatt-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let empty = dir.join("empty-token");
        std::fs::write(&empty, "\n").expect("token file");
        let source = |token_file: PathBuf| CredentialsSource {
            // Nothing listens there: the token is checked before any request.
            url: "http://127.0.0.1:9/api/v1/agent-credentials".to_owned(),
            token_file,
        };
        let missing = fetch(&source(dir.join("absent")), "n1", Duration::from_secs(1)).await;
        assert!(
            matches!(missing, Err(CredentialsError::Token { .. })),
            "{missing:?}"
        );
        let blank = fetch(&source(empty), "n1", Duration::from_secs(1)).await;
        assert!(
            matches!(blank, Err(CredentialsError::EmptyToken { .. })),
            "{blank:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
