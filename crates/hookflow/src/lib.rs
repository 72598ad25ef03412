//! hookflow: runs workflows asynchronously and delivers their results by signed webhooks.
//!
//! `api` turns requests into store transactions, `engine` executes due steps, `delivery`
//! sends signed callbacks from the outbox; the store (`hookflow-store`) is the only truth.
//! `client` is the command-line client of a running server's API.

pub mod api;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod events;
pub mod ids;
pub mod lookups;
pub mod metrics;
pub mod net;
pub mod server;
pub mod tokens;
