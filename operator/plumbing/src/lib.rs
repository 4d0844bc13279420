//! Plumbing that the `kilowatt` and `kilowatt-agent` binaries share: TLS material from PEM files
//! ([`tls`]), logging set-up ([`logging`]), termination signals ([`signals`]), the one-request
//! JSON-over-HTTP client both use to talk to the operator ([`json_http`]) and errors on one line
//! ([`errors`]). Every module but `errors` does IO.

pub mod errors;
pub mod json_http;
pub mod logging;
pub mod signals;
pub mod tls;
