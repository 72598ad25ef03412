//! hookflow's pure core: workflow definitions, templates, the run state machine and retry
//! policies. No I/O.

#![warn(missing_docs)]

pub mod definition;
pub mod retry;
pub mod run;
pub mod template;

pub use definition::{
    AsyncHttpStep, DefinitionError, Format, HttpStep, HumanStep, OnError, OnTimeout, StepDef,
    StepKind, WorkflowDef, parse_definition,
};
pub use retry::{
    AttemptOutcome, DeliverySchedule, RetryPolicy, RetryRules, parse_duration, parse_retry_after,
};
pub use run::{Decision, Outcome, StepState, context, decide};
pub use template::{TemplateError, Templates};
