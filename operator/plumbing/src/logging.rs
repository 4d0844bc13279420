//! Logging set-up: `tracing` to stderr, as text or JSON lines. Writes to stderr.

/// Logs to stderr at `RUST_LOG`'s level, else at `default_level`; `format` is `text` or `json`.
pub fn init(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
