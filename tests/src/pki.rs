//! A test PKI made with openssl: a CA, a serving and a client certificate. Runs openssl; writes files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// PEM files of a test PKI made with openssl: a CA, a serving certificate for 127.0.0.1 and
/// localhost, and a client certificate, all signed by the CA and valid for two days.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}
impl TestPki {
    /// Creates the files in `dir` (which must exist); `name` tells two PKIs apart in their CA's name.
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<TestPki> {
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_subject = format!("/CN=kilowatt test CA {name}");
        let mut ca = vec!["req", "-x509"];
        ca.extend(key);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &ca_subject,
        ]);
        openssl(&ca, dir)?;
        for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key_file, csr, cert, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
            );
            fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
            )?;
            let subject = format!("/CN=kilowatt test {who}");
            let mut request = vec!["req"];
            request.extend(key);
            request.extend(["-keyout", &key_file, "-out", &csr, "-subj", &subject]);
            openssl(&request, dir)?;
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &cert,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
                dir,
            )?;
        }
        Ok(TestPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }

    /// etcd client TLS options trusting this CA and presenting the client certificate.
    pub fn etcd_client_tls(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(fs::read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                fs::read(&self.client_cert)?,
                fs::read(&self.client_key)?,
            )))
    }
}
pub fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
