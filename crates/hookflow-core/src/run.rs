//! The run state machine as pure functions: from the state of every step, what starts next
//! and whether the run is over; and the template context of a run.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::definition::WorkflowDef;

/// The state of one step in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Not started.
    Waiting,
    /// Scheduled, running, or waiting for a completion.
    Open,
    /// Done, with its output (for `on_error: continue` failures: `{"error": "…"}`).
    Completed(Value),
    /// Not run because its `when` was false.
    Skipped,
    /// Final failure of an `on_error: fail` step, with the message.
    Failed(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step completed or was skipped.
    Completed,
    /// A step failed.
    Failed {
        /// `step "<id>" failed: <message>`.
        error: String,
    },
}

/// What happens next in a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Steps to start now, in definition order.
    pub ready: Vec<String>,
    /// Set when the run is over.
    pub outcome: Option<Outcome>,
}

/// Given every step's state, what happens next: any Failed step → `Outcome::Failed` with error
/// `step "<id>" failed: <message>` (first in definition order); else the Waiting steps whose
/// needs are all Completed or Skipped become ready; when no step is Waiting or Open →
/// `Outcome::Completed`. A step missing from the map counts as Waiting.
pub fn decide(def: &WorkflowDef, states: &HashMap<String, StepState>) -> Decision {
    let state = |id: &str| states.get(id).unwrap_or(&StepState::Waiting);
    let mut ready = Vec::new();
    let mut pending = false;
    for step in &def.steps {
        match state(&step.id) {
            StepState::Failed(message) => {
                return Decision {
                    ready: Vec::new(),
                    outcome: Some(Outcome::Failed {
                        error: format!("step {:?} failed: {message}", step.id),
                    }),
                };
            }
            StepState::Waiting => {
                pending = true;
                let resolved = step
                    .needs
                    .iter()
                    .all(|n| matches!(state(n), StepState::Completed(_) | StepState::Skipped));
                if resolved {
                    ready.push(step.id.clone());
                }
            }
            StepState::Open => pending = true,
            StepState::Completed(_) | StepState::Skipped => {}
        }
    }
    Decision {
        ready,
        outcome: (!pending).then_some(Outcome::Completed),
    }
}

/// Template context for a run: `{inputs, steps: {<id>: {output}}, settings, secrets,
/// run: {request_id, user, metadata}}`. `outputs` holds the outputs of completed steps and
/// null for skipped ones.
pub fn context(
    inputs: &Value,
    outputs: &BTreeMap<String, Value>,
    settings: &Value,
    secrets: &Value,
    request_id: &str,
    user: &Value,
    metadata: &Value,
) -> Value {
    let steps: Map<String, Value> = outputs
        .iter()
        .map(|(id, output)| (id.clone(), json!({ "output": output })))
        .collect();
    json!({
        "inputs": inputs,
        "steps": steps,
        "settings": settings,
        "secrets": secrets,
        "run": {"request_id": request_id, "user": user, "metadata": metadata},
    })
}

#[cfg(test)]
mod tests;
