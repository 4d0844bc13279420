//! The agent's etcd credentials: asks the operator (`POST /api/v1/agent-credentials`, over HTTPS when
//! a CA file is given) with this pod's projected ServiceAccount token, read afresh for every request
//! because the kubelet rotates it; the user it gets may write only the keys of the node the token is
//! bound to. Does file and network IO.

use std::path::PathBuf;
use std::time::Duration;

use kilowatt_crds::plan::AgentCredentials;
use kilowatt_plumbing::json_http::{self, RequestError};
use kilowatt_plumbing::tls::TlsError;

/// Where the agent gets its etcd credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsSource {
    /// The operator's endpoint, `https://HOST:PORT/api/v1/agent-credentials` (or `http://`).
    pub url: String,
    /// The pod's projected ServiceAccount token, issued for audience `kilowatt`.
    pub token_file: PathBuf,
    /// The CA that signed the operator's certificate; required for an `https://` URL, read again for
    /// every request (a rotated Secret is picked up).
    pub ca_file: Option<PathBuf>,
}

/// Why no credentials came back.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading the ServiceAccount token {}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ServiceAccount token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("{url} is not a valid URL for the credentials endpoint: {message}")]
    Url { url: String, message: String },
    #[error("the credentials endpoint's CA")]
    Tls(#[from] TlsError),
    #[error("cannot reach the operator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the operator refused credentials ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the operator could not issue credentials ({status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the operator's answer does not decode")]
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
                | CredentialsError::Tls(_)
        )
    }
}

/// Checks that `url` is one the agent can ask with or without a CA file, for the command line: `https://`
/// needs the CA of the operator's certificate, and a CA file with `http://` would protect nothing.
pub fn check_url(url: &str, has_ca: bool) -> Result<(), CredentialsError> {
    let bad = |message: &str| CredentialsError::Url {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    match (url.split_once("://").map(|(scheme, _)| scheme), has_ca) {
        (Some("https"), true) | (Some("http"), false) => {}
        (Some("https"), false) => {
            return Err(bad(
                "https:// needs --credentials-ca-file, the CA that signed the operator's certificate",
            ));
        }
        (Some("http"), true) => {
            return Err(bad(
                "--credentials-ca-file is given but the URL is http://; use the operator's https:// listener",
            ));
        }
        _ => return Err(bad("it must start with https:// or http://")),
    }
    url.parse::<hyper::Uri>()
        .map(|_| ())
        .map_err(|e| bad(&e.to_string()))
}

/// Asks the operator for `node`'s credentials, waiting at most `timeout`. Credentials issued for
/// another node are refused here too (etcd would refuse every write with them anyway), so a
/// misconfigured agent says so instead of failing on permissions.
pub async fn fetch(
    source: &CredentialsSource,
    node: &str,
    timeout: Duration,
) -> Result<AgentCredentials, CredentialsError> {
    check_url(&source.url, source.ca_file.is_some())?;
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
    let headers = [("authorization", format!("Bearer {token}"))];
    let answer = json_http::post(
        url,
        &headers,
        Vec::new(),
        source.ca_file.as_deref(),
        timeout,
    )
    .await
    .map_err(|e| match e {
        RequestError::Url { url, message } => CredentialsError::Url { url, message },
        RequestError::Tls(e) => CredentialsError::Tls(e),
        RequestError::Unreachable { url, message } => {
            CredentialsError::Unreachable { url, message }
        }
    })?;
    if answer.status.is_client_error() {
        return Err(CredentialsError::Refused {
            status: answer.status.as_u16(),
            message: answer.error_message(),
        });
    }
    if !answer.status.is_success() {
        return Err(CredentialsError::Failed {
            status: answer.status.as_u16(),
            message: answer.error_message(),
        });
    }
    let credentials: AgentCredentials = serde_json::from_slice(&answer.body)?;
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
    fn https_urls_need_a_ca_and_plain_ones_refuse_it() {
        let url = "kilowatt-operator.kilowatt-system:8443/api/v1/agent-credentials";
        assert!(check_url(&format!("https://{url}"), true).is_ok());
        assert!(check_url(&format!("http://{url}"), false).is_ok());
        let without_ca = check_url(&format!("https://{url}"), false).expect_err("needs a CA");
        assert!(
            without_ca.to_string().contains("--credentials-ca-file"),
            "{without_ca}"
        );
        assert!(check_url(&format!("http://{url}"), true).is_err());
        for bad in ["op:8080/api", "", "http://bad host/", "ftp://op/api"] {
            assert!(check_url(bad, false).is_err(), "{bad:?}");
        }
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
            ca_file: None,
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
