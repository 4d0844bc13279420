//! Deciding the watts: the planning pass ([`pass`]) turns cluster objects into the solver's problem
//! ([`translate`], [`gpu_models`], [`schedule`]), builds the plan it publishes ([`published`]), takes the
//! two-phase rollout step that keeps every cap during a change ([`rollout`]) and derives status and
//! events ([`status`]). Pure, except for the plan store the pass is given.

pub mod gpu_models;
pub mod learning;
pub mod pass;
pub mod published;
pub mod reasons;
pub mod rollout;
pub mod schedule;
pub mod status;
pub mod translate;
