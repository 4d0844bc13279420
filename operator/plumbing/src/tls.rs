//! TLS material from PEM files: CA bundles, certificate chains and private keys, turned into the etcd
//! client's TLS options and rustls client and server configurations (ring). Used by the agent (etcd,
//! the operator's credentials endpoint) and the operator (etcd, its HTTPS listener). Reads files; no
//! network IO.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of an etcd client connection: the CA that signed etcd's serving certificate and,
/// when etcd asks for client certificates (`--client-cert-auth`), this client's certificate and key.
/// Also the command-line flags of both binaries (`--etcd-ca-file`, `--etcd-cert-file`,
/// `--etcd-key-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EtcdTlsFiles {
    /// The CA that signed etcd's serving certificate (PEM), for https:// endpoints.
    #[arg(long = "etcd-ca-file", id = "etcd_ca_file", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This client's certificate for etcd (PEM), when etcd requires client certificates.
    #[arg(
        long = "etcd-cert-file",
        id = "etcd_cert_file",
        value_name = "FILE",
        requires = "etcd_key_file"
    )]
    pub cert: Option<PathBuf>,
    /// The key of --etcd-cert-file (PEM).
    #[arg(
        long = "etcd-key-file",
        id = "etcd_key_file",
        value_name = "FILE",
        requires = "etcd_cert_file"
    )]
    pub key: Option<PathBuf>,
}

impl EtcdTlsFiles {
    /// Whether any TLS file was given (then the endpoints must be `https://`).
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {expected}", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {} is not valid PEM: {message}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0} needs both a certificate file and a key file")]
    HalfIdentity(&'static str),
    #[error("{what}: {message}")]
    Config { what: &'static str, message: String },
    #[error(
        "TLS files were given for etcd but endpoint {endpoint} is not https://; use https:// endpoints with --etcd-ca-file"
    )]
    PlainEndpoint { endpoint: String },
    #[error(
        "etcd endpoint {endpoint} is https:// but no --etcd-ca-file names the CA that signed etcd's certificate"
    )]
    NoCa { endpoint: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file (a CA bundle or a chain, leaf first).
pub fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certificates)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "private key",
        },
        other => TlsError::Pem {
            what,
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The etcd client's TLS options for `endpoints`, or `None` when they are all plain `http://` and no
/// file was given. Mixing is refused: TLS files with a plain endpoint, or an `https://` endpoint
/// without a CA.
pub fn etcd_tls(
    endpoints: &[String],
    files: &EtcdTlsFiles,
) -> Result<Option<etcd_client::TlsOptions>, TlsError> {
    let secure = endpoints.iter().any(|e| e.starts_with("https://"));
    if !files.any() && !secure {
        return Ok(None);
    }
    if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
        return Err(TlsError::PlainEndpoint {
            endpoint: plain.clone(),
        });
    }
    let Some(ca) = &files.ca else {
        return Err(TlsError::NoCa {
            endpoint: endpoints.first().cloned().unwrap_or_default(),
        });
    };
    // Parsed here so that a bad file is reported by name, not as a handshake failure later.
    certificates("the etcd CA file", ca)?;
    let mut options = etcd_client::TlsOptions::new().ca_certificate(
        etcd_client::Certificate::from_pem(read("the etcd CA file", ca)?),
    );
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            certificates("the etcd client certificate", cert)?;
            private_key("the etcd client key", key)?;
            options = options.identity(etcd_client::Identity::from_pem(
                read("the etcd client certificate", cert)?,
                read("the etcd client key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err(TlsError::HalfIdentity("an etcd client identity")),
    }
    Ok(Some(options))
}

/// A rustls client configuration trusting only the CAs in `ca` (no system roots: the operator's
/// certificate comes from the cluster's own CA or a Helm-generated one).
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates("the CA file", ca)? {
        roots.add(certificate).map_err(|e| TlsError::Config {
            what: "the CA file",
            message: e.to_string(),
        })?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            what: "TLS client",
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A rustls server configuration serving the chain in `cert` with the key in `key`, HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates("the TLS certificate file", cert)?;
    let key = private_key("the TLS key file", key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            what: "TLS server",
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config {
            what: "the TLS certificate and key",
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kilowatt-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir
    }

    #[test]
    fn plain_endpoints_without_files_need_no_tls_and_mixing_is_refused() {
        let plain = vec!["http://127.0.0.1:2379".to_owned()];
        let secure = vec!["https://etcd:2379".to_owned()];
        assert!(matches!(
            etcd_tls(&plain, &EtcdTlsFiles::default()),
            Ok(None)
        ));
        let with_ca = EtcdTlsFiles {
            ca: Some(PathBuf::from("/nonexistent/ca.crt")),
            ..EtcdTlsFiles::default()
        };
        assert!(matches!(
            etcd_tls(&plain, &with_ca),
            Err(TlsError::PlainEndpoint { .. })
        ));
        assert!(matches!(
            etcd_tls(&secure, &EtcdTlsFiles::default()),
            Err(TlsError::NoCa { .. })
        ));
        let error = etcd_tls(&secure, &with_ca).expect_err("the CA file is missing");
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");
    }

    #[test]
    fn files_without_pem_are_named_in_the_error() {
        let dir = dir();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("file");
        let error = certificates("the CA file", &garbage).expect_err("no certificate");
        assert!(matches!(error, TlsError::Empty { .. }), "{error}");
        assert!(error.to_string().contains("garbage.pem"), "{error}");
        let error = private_key("the key file", &garbage).expect_err("no key");
        assert!(error.to_string().contains("no PEM private key"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
