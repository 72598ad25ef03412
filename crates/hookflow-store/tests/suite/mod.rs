//! The conformance suite: every function takes a fresh [`TestDb`] and holds for each backend.

pub mod accounts;
pub mod definitions;
pub mod outbox;
pub mod queue;
pub mod runs;
pub mod waiting;
