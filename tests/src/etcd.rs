//! A real etcd on 127.0.0.1, stoppable and restartable on the same ports and data. Runs a process.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{pki::*, processes::*, waits::*};

/// The PEM files of an etcd's serving certificate and its key.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A single-member etcd on 127.0.0.1 with its own data directory; it can be stopped and started
/// again on the same ports and data (for partition and restart tests).
pub struct Etcd {
    pub child: Option<Child>,
    pub dir: PathBuf,
    /// Removed on drop when the directory was made for this etcd alone.
    pub owns_dir: bool,
    pub client_port: u16,
    pub peer_port: u16,
    /// Serving certificate, key and client CA when it serves TLS and requires client certificates.
    pub tls: Option<TestPki>,
    /// Serving certificate and key when it serves TLS to any client (who then log in by password).
    pub server_tls: Option<ServerTls>,
    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub endpoint: String,
}
impl Etcd {
    /// Starts an etcd in a fresh temporary directory and waits until it answers.
    pub async fn start() -> anyhow::Result<Etcd> {
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-etcd-{}-{}",
            std::process::id(),
            try_free_port()?
        ));
        let mut etcd = Etcd::start_in(dir, None)?;
        etcd.owns_dir = true;
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// Starts an etcd (as [`Etcd::start`]) with authentication enabled: user `root`, holding the root
    /// role, logs in with the returned password; a client without a user may do nothing.
    pub async fn start_with_auth() -> anyhow::Result<(Etcd, String)> {
        let etcd = Etcd::start().await?;
        Etcd::enable_auth(etcd, None).await
    }

    /// Starts an etcd serving TLS with `pki`'s server certificate and requiring client certificates
    /// signed by its CA, with authentication enabled as [`Etcd::start_with_auth`].
    pub async fn start_with_tls_and_auth(pki: &TestPki) -> anyhow::Result<(Etcd, String)> {
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-etcd-{}-{}",
            std::process::id(),
            try_free_port()?
        ));
        let mut etcd = Etcd::start_in(dir, Some(pki.clone()))?;
        etcd.owns_dir = true;
        etcd.wait_healthy().await?;
        let tls = pki.etcd_client_tls()?;
        Etcd::enable_auth(etcd, Some(tls)).await
    }

    /// Starts an etcd in a fresh temporary directory serving https:// only, with `server`'s
    /// certificate and key and no client certificates asked for, with authentication off; waits until
    /// it listens.
    pub async fn start_with_server_tls(server: ServerTls) -> anyhow::Result<Etcd> {
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-etcd-{}-{}",
            std::process::id(),
            try_free_port()?
        ));
        let mut etcd = Etcd::start_serving(dir, None, Some(server))?;
        etcd.owns_dir = true;
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    async fn enable_auth(
        etcd: Etcd,
        tls: Option<etcd_client::TlsOptions>,
    ) -> anyhow::Result<(Etcd, String)> {
        // A test etcd on the loopback: the password only has to differ between runs.
        let password = format!("root-{}-{}", std::process::id(), try_free_port()?);
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let mut client = within(
            "etcd client",
            etcd_client::Client::connect([etcd.endpoint.as_str()], Some(options)),
        )
        .await
        .context("connecting to the new etcd")?;
        within("add root", client.user_add("root", password.as_str(), None))
            .await
            .context("adding etcd user root")?;
        // NB: etcd has the root role built in; enabling auth requires a root user holding it.
        within("grant root", client.user_grant_role("root", "root"))
            .await
            .context("granting root the root role")?;
        within("enable auth", client.auth_enable())
            .await
            .context("enabling etcd authentication")?;
        Ok((etcd, password))
    }

    pub(crate) fn start_in(dir: PathBuf, tls: Option<TestPki>) -> anyhow::Result<Etcd> {
        Etcd::start_serving(dir, tls, None)
    }

    fn start_serving(
        dir: PathBuf,
        tls: Option<TestPki>,
        server_tls: Option<ServerTls>,
    ) -> anyhow::Result<Etcd> {
        fs::create_dir_all(&dir)?;
        let (client_port, peer_port) = (try_free_port()?, try_free_port()?);
        let scheme = if tls.is_some() || server_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut etcd = Etcd {
            child: None,
            dir,
            owns_dir: false,
            client_port,
            peer_port,
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            tls,
            server_tls,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let peer_port = self.peer_port;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let mut command = Command::new("etcd");
        if let Some(pki) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        // The chart's etcd setting: passwords here are random (192 bits for agents), so key
        // stretching buys nothing, and at etcd's default cost 10 every agent that authenticates again
        // after an etcd restart costs etcd a bcrypt hash (200 of them delayed a cap cut by 25 s).
        command.arg(format!("--bcrypt-cost={ETCD_BCRYPT_COST}"));
        if let Some(server) = &self.server_tls {
            command
                .arg("--cert-file")
                .arg(&server.cert)
                .arg("--key-file")
                .arg(&server.key);
        }
        let child = command
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg(format!("--listen-client-urls={}", self.endpoint))
            .arg(format!("--advertise-client-urls={}", self.endpoint))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills etcd (as a crash or a cut link would look to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_healthy().await
    }

    pub(crate) fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail_of(&self.dir, "etcd.log")
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.exited()? {
                bail!("etcd exited ({status}):\n{}", self.log_tail());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("etcd did not listen within 30 s:\n{}", self.log_tail())
    }
}
/// The bcrypt cost of the harness's etcd and the chart's (`helm/kilowatt/templates/etcd.yaml`).
pub const ETCD_BCRYPT_COST: u32 = 4;

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
