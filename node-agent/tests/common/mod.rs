//! What the agent's kubelet-facing tests share: a directory of their own for the unix sockets of one
//! test, removed when dropped, and a fake kubelet's gRPC server on a socket in it. File and socket IO.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("kilowatt-{test}-{}", std::process::id()));
        // A leftover from an earlier run with the same pid would make bind fail.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

/// The directory's path: `dir.join(name)` is a file in it.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// gRPC services served on a unix socket until stopped.
pub struct Served {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    pub fn start(socket: &Path, routes: tonic::service::Routes) -> anyhow::Result<Self> {
        let listener =
            UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self { stop, task })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        // The receiver is gone only if the server already ended; the join below reports why.
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("fake kubelet did not shut down")???;
        Ok(())
    }
}
