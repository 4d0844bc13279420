//! Tooling around the pure solver: `kilowatt solve` ([`solve`]), `kilowatt bench solver` ([`bench`]),
//! seeded fleet-shaped problems ([`fleet`]), curves from profile files and published measurements
//! ([`profiles`]) and the SVG line charts of the benchmark and of simulate ([`svg`]). File IO and the
//! clock where a module says so; generation and charts are pure.

pub mod bench;
pub mod fleet;
pub mod profiles;
pub mod solve;
pub mod svg;
