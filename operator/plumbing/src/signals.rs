//! Termination signals: how Kubernetes (SIGTERM) or a person (Ctrl-C) stops a process. Waits on signals.

/// Waits for SIGTERM or Ctrl-C; with no SIGTERM handler to be had, for Ctrl-C alone. The SIGTERM
/// handler is installed when this is called (inside a Tokio runtime), not when the future is first
/// polled, so that a process which announces itself (a device plugin registering with the kubelet)
/// before it starts waiting cannot be killed by SIGTERM's default action in between.
pub fn termination() -> impl std::future::Future<Output = ()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
