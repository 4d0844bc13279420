//! The `kilowatt` command line: solving problem files and benchmarking the solver (later issues add
//! the operator itself). Command modules do IO at their edges; the solver they call is pure.

pub mod bench;
pub mod cli;
pub mod generate;
pub mod profiles;
pub mod solve;
