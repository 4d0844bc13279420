//! Plumbing that the `kilowatt` and `kilowatt-agent` binaries share: TLS material from PEM files
//! ([`tls`]), logging set-up ([`logging`]), termination signals ([`signals`]) and the one-request
//! JSON-over-HTTP client both use to talk to the operator ([`json_http`]). Every module does IO.

pub mod json_http;
pub mod logging;
pub mod signals;
pub mod tls;
