//! Network namespaces with a veth link to the host and a relay to the plan etcd: taking the link down
//! partitions what runs inside. Runs `ip`; needs root.

use std::process::{Command, Stdio};

/// A network namespace with a veth link to the host, and a relay on the host side of the link to
/// the plan etcd on loopback; taking the link down cuts everything inside off, as a partition would.
pub struct Partitionable {
    pub name: String,
    pub host_link: String,
    /// `http://<host side>:<relay port>`, the etcd endpoint as seen from inside.
    pub endpoint: String,
    pub relay: tokio::task::JoinHandle<()>,
}
impl Partitionable {
    pub async fn create(etcd_endpoint: &str) -> Partitionable {
        let id = std::process::id() % 10_000;
        let (name, host_link, inner_link) =
            (format!("kwf{id}"), format!("kwh{id}"), format!("kwn{id}"));
        let subnet = std::process::id() % 250;
        let (host_ip, inner_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        quietly(&["netns", "del", &name]);
        quietly(&["link", "del", &host_link]);
        ip(&["netns", "add", &name]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        for args in [
            vec!["addr", "add", &format!("{inner_ip}/30"), "dev", &inner_link],
            vec!["link", "set", &inner_link, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend(args);
            ip(&full);
        }
        let listener = tokio::net::TcpListener::bind((host_ip.as_str(), 0))
            .await
            .expect("relay binds on the host side of the link");
        let port = listener.local_addr().expect("relay address").port();
        let target = etcd_endpoint.trim_start_matches("http://").to_owned();
        let relay = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Partitionable {
            name,
            host_link,
            endpoint: format!("http://{host_ip}:{port}"),
            relay,
        }
    }

    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }
}
impl Drop for Partitionable {
    fn drop(&mut self) {
        self.relay.abort();
        quietly(&["link", "del", &self.host_link]);
        quietly(&["netns", "del", &self.name]);
    }
}
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {} (the fault suite needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
/// `ip` for clean-up, where what is being removed may not exist.
pub fn quietly(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
