//! A TCP proxy on 127.0.0.1 that a test can freeze: bytes stop moving in one direction or both while
//! every connection stays open, the way a hung network path or a wedged peer looks to the processes on
//! either end (no reset, no error, only silence). Network IO on loopback.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which directions are held back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Frozen {
    /// Client to server: the client's requests (an agent's writes, a leader's lease renewal).
    upstream: bool,
    /// Server to client: answers and watch events.
    downstream: bool,
}

/// A listening proxy to `target`; stops accepting and drops its connections when dropped.
pub struct FreezableProxy {
    /// Where clients connect instead of the target.
    pub address: SocketAddr,
    frozen: watch::Sender<Frozen>,
    acceptor: JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<FreezableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (frozen, _) = watch::channel(Frozen::default());
        let watcher = frozen.clone();
        let acceptor = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, watcher.subscribe(), |f| {
                    f.upstream
                }));
                pumps.spawn(pump(server_read, client_write, watcher.subscribe(), |f| {
                    f.downstream
                }));
            }
        });
        Ok(FreezableProxy {
            address,
            frozen,
            acceptor,
        })
    }

    /// The endpoint in the `http://host:port` form etcd clients take.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Holds back what clients send; answers already on their way still arrive.
    pub fn freeze_upstream(&self) {
        self.frozen.send_modify(|f| f.upstream = true);
    }

    /// Holds back both directions: the peer looks hung.
    pub fn freeze(&self) {
        self.frozen.send_replace(Frozen {
            upstream: true,
            downstream: true,
        });
    }

    /// Everything held back moves on, in order.
    pub fn thaw(&self) {
        self.frozen.send_replace(Frozen::default());
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        // NB: aborting the acceptor drops its JoinSet, which aborts every pump and closes the sockets.
        self.acceptor.abort();
    }
}

/// Copies `from` to `to`, waiting before each write while `held` says this direction is frozen. A
/// chunk read while frozen waits in the buffer, and nothing more is read until it is written, so the
/// kernel's buffers fill and the sender blocks as behind a hung path.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<Frozen>,
    held: fn(&Frozen) -> bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if frozen.wait_for(|f| !held(f)).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
