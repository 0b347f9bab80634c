//! mcp-raspi: an MCP server that lets AI assistants and operators inspect and safely
//! control Raspberry Pis.
//!
//! The binaries are thin; everything lives here so that tests can reach it. See the
//! README's design notes for how the modules fit together.

pub mod agent;
pub mod agent_client;
pub mod audit;
pub mod auth;
pub mod auto_update;
pub mod base;
pub mod cli;
pub mod config;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod ipc;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod platform;
pub mod selfcheck;
pub mod server;
pub mod telemetry;
pub mod tools;
pub mod update;
