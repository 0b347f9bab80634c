//! Integration tests: the real binaries on loopback, spoken to over HTTP and stdio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod agent;
mod checks;
mod cli;
mod config;
mod fixtures;
mod fleet;
mod fleet_config;
mod fleet_rollout;
mod golden;
mod hostile;
mod http;
mod identity;
mod malformed;
mod metrics;
mod operator;
mod ops;
mod prometheus;
mod self_update;
mod update;
