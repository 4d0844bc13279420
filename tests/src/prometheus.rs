//! A real Prometheus server (Debian's `prometheus`) on a fresh loopback port, scraping what a test
//! names, with its data and log in the test's directory; stopped when dropped. Process and file IO.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::processes::free_port;

/// A Prometheus process; killed on drop.
pub struct PrometheusServer {
    child: Child,
    pub address: SocketAddr,
    /// Its stderr, for a failing test's message.
    pub log: PathBuf,
}

impl PrometheusServer {
    /// Starts Prometheus in `dir`, scraping and evaluating every second, with `scrape_configs` (the
    /// YAML list under `scrape_configs:`, each line indented by two spaces) as its jobs.
    pub fn start(dir: &Path, scrape_configs: &str) -> PrometheusServer {
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape_configs}"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus config");
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect(
                "prometheus starts (Debian package `prometheus`; scripts/setup.sh installs it)",
            );
        PrometheusServer {
            child,
            address,
            log,
        }
    }

    /// `http://<address>`, the base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
