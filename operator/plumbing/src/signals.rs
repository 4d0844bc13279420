//! Termination signals: how Kubernetes (SIGTERM) or a person (Ctrl-C) stops a process. Waits on signals.

/// Waits for SIGTERM or Ctrl-C; with no SIGTERM handler to be had, for Ctrl-C alone.
pub async fn termination() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
