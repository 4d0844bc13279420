//! Processes and files of a test: free loopback ports, the workspace's binaries, logged children,
//! signals, per-test directories, and a process's CPU and memory from /proc. Process and file IO.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn try_free_port() -> anyhow::Result<u16> {
    // NB: the port is free when we look; another process could take it before the server binds, which
    // on a test machine's loopback is rare enough, and shows up as a clear start-up failure.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
pub fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = fs::File::create(log)?;
    Ok(command.stdout(Stdio::null()).stderr(file).spawn()?)
}
pub fn log_tail_of(dir: &Path, file: &str) -> String {
    let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}
/// A binary of this workspace, built next to this test's executable (`cargo test --workspace` builds
/// every member's binaries).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing; build it first (`cargo build --bins`; `cargo test --workspace` builds it)",
        binary.display()
    );
    binary
}
/// A port free on loopback now (a process started right after binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
pub fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {}", child.id());
}
/// A fresh directory for the settings files and the processes' logs; kept when the test fails.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kilowatt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    let _ = writeln!(
        std::io::stderr(),
        "{name}: agent, operator and other process logs in {}",
        dir.display()
    );
    dir
}
/// utime + stime (seconds) and RSS (MiB) of a process.
pub fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // After the command name: state is field 3 of the whole line, utime 14 and stime 15.
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    // NB: /proc counts in USER_HZ, which Linux fixes at 100 whatever the kernel's tick rate.
    (ticks / 100.0, rss_kib / 1024.0)
}
