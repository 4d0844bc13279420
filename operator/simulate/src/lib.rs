//! `kilowatt simulate`: the operator's real planning pass over an in-memory plan store and one real
//! agent core per node over simulated GPUs, on simulated time, side by side with uniform,
//! proportional and no capping. [`scenario`] reads and checks a scenario (pure), [`simulation`] steps
//! the runs and checks every cap independently (pure, time passed in), [`run`] paces it, serves the
//! page and writes the report and chart (network and file IO); [`faults`] are the faults a scenario
//! injects (pure).

pub mod faults;
pub mod run;
pub mod scenario;
pub mod simulation;
