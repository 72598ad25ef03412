//! The engine's [`Planner`]: turns a run's stored step executions into the next plan, using the
//! pure state machine of `hookflow_core::run`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hookflow_core::run::{Decision, Outcome, StepState, context, decide};
use hookflow_core::{OnError, StepDef, StepKind, Templates, WorkflowDef};
use hookflow_store::{
    Delivery, Millis, NewStep, Plan, Planner, RunRecord, RunStatus, StepExecution, StepStatus,
    Terminal,
};
use serde_json::{Value, json};

use crate::events::{structured_output, terminal_event};

/// Per-attempt timeout of a step without its own `timeout`.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra lease time beyond a step's timeout before another node may take the job over.
const LEASE_MARGIN_MS: i64 = 30_000;

/// How long an async step waits for its completion without its own `timeout`.
pub const DEFAULT_ASYNC_TIMEOUT: Duration = Duration::from_secs(3600);

/// The timeout of one attempt of an `http` step.
pub fn step_timeout(step: &StepDef) -> Duration {
    step.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT)
}

/// How long executing one attempt may hold its job: the outbound call, if the kind makes one.
fn call_timeout(step: &StepDef) -> Duration {
    match step.kind {
        StepKind::Http(_) => step_timeout(step),
        StepKind::AsyncHttp(_) => DEFAULT_STEP_TIMEOUT,
        _ => Duration::ZERO,
    }
}

/// A new first attempt of `step`, due now (or after its duration, for a delay).
pub fn new_step(step: &StepDef, attempt: i64, run_at: Millis) -> NewStep {
    let (run_at, timer) = match &step.kind {
        StepKind::Delay { duration } => (run_at + duration.as_millis() as Millis, true),
        _ => (run_at, false),
    };
    NewStep {
        step_id: step.id.clone(),
        attempt,
        run_at,
        lease_ms: call_timeout(step).as_millis() as i64 + LEASE_MARGIN_MS,
        timer,
    }
}

/// The status of a live run whose open steps are `open`: `waiting` when every open step waits
/// on something outside hookflow (a delay, an async completion, a person).
fn live_status<'a>(def: &WorkflowDef, open: impl IntoIterator<Item = &'a str>) -> RunStatus {
    let busy = open.into_iter().any(|id| {
        def.step(id)
            .is_some_and(|s| matches!(s.kind, StepKind::Http(_) | StepKind::Transform { .. }))
    });
    if busy {
        RunStatus::Running
    } else {
        RunStatus::Waiting
    }
}

/// The first steps of a new run and the status it starts in.
pub fn first_steps(def: &WorkflowDef, now: Millis) -> (Vec<NewStep>, RunStatus) {
    let Decision { ready, .. } = decide(def, &HashMap::new());
    let steps: Vec<NewStep> = ready
        .iter()
        .filter_map(|id| def.step(id))
        .map(|s| new_step(s, 1, now))
        .collect();
    let status = live_status(def, ready.iter().map(String::as_str));
    (steps, status)
}

/// Each step's state (from its latest attempt) and the outputs templates can read.
pub fn step_states(
    def: &WorkflowDef,
    executions: &[StepExecution],
) -> (HashMap<String, StepState>, BTreeMap<String, Value>) {
    let mut latest: HashMap<&str, &StepExecution> = HashMap::new();
    for e in executions {
        let slot = latest.entry(e.step_id.as_str()).or_insert(e);
        if e.attempt > slot.attempt {
            *slot = e;
        }
    }
    let mut states = HashMap::new();
    let mut outputs = BTreeMap::new();
    for (id, e) in latest {
        let state = match e.status {
            StepStatus::Completed => StepState::Completed(e.output.clone().unwrap_or(Value::Null)),
            StepStatus::Skipped => StepState::Skipped,
            StepStatus::Scheduled | StepStatus::Running => StepState::Open,
            StepStatus::Failed | StepStatus::Abandoned => {
                let error = e.error.clone().unwrap_or_else(|| "step abandoned".into());
                match def.step(id).map(|s| s.on_error) {
                    Some(OnError::Continue) => StepState::Completed(json!({ "error": error })),
                    _ => StepState::Failed(error),
                }
            }
        };
        match &state {
            StepState::Completed(output) => {
                outputs.insert(id.to_string(), output.clone());
            }
            StepState::Skipped => {
                outputs.insert(id.to_string(), Value::Null);
            }
            _ => {}
        }
        states.insert(id.to_string(), state);
    }
    (states, outputs)
}

/// The template context of a run, given the outputs of its resolved steps.
pub fn run_context(run: &RunRecord, outputs: &BTreeMap<String, Value>, secrets: &Value) -> Value {
    let user = run.user.clone().map(Value::String).unwrap_or(Value::Null);
    context(
        &run.inputs,
        outputs,
        &run.settings,
        secrets,
        &run.id,
        &user,
        &run.metadata,
    )
}

/// Plans a run of one workflow definition.
pub struct RunPlanner<'a> {
    pub def: &'a WorkflowDef,
    pub templates: &'a Templates,
    pub secrets: &'a Value,
}

impl RunPlanner<'_> {
    /// The workflow's `output`, or every resolved step's output when it has none.
    fn result(&self, run: &RunRecord, outputs: &BTreeMap<String, Value>) -> Result<Value, String> {
        match &self.def.output {
            Some(template) => self
                .templates
                .render(template, &run_context(run, outputs, self.secrets))
                .map_err(|e| format!("output: {e}")),
            None => Ok(json!(outputs)),
        }
    }

    fn terminal(
        &self,
        run: &RunRecord,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Terminal {
        let event = (run.delivery == Delivery::Callback)
            .then(|| run.callback_url.clone())
            .flatten()
            .map(|url| terminal_event(run, status, output.as_ref(), error.as_deref(), url));
        Terminal {
            status,
            output,
            error,
            event,
        }
    }
}

impl Planner for RunPlanner<'_> {
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan {
        let (states, outputs) = step_states(self.def, steps);
        let decision = decide(self.def, &states);
        let terminal = match decision.outcome {
            Some(Outcome::Completed) => Some(match self.result(run, &outputs) {
                Ok(result) => {
                    let output = structured_output(result, &run.settings);
                    self.terminal(run, RunStatus::Completed, Some(output), None)
                }
                Err(error) => self.terminal(run, RunStatus::Failed, None, Some(error)),
            }),
            Some(Outcome::Failed { error }) => {
                Some(self.terminal(run, RunStatus::Failed, None, Some(error)))
            }
            None => None,
        };
        let start: Vec<NewStep> = decision
            .ready
            .iter()
            .filter_map(|id| self.def.step(id))
            .map(|s| new_step(s, 1, now))
            .collect();
        let open = states
            .iter()
            .filter(|(_, s)| matches!(s, StepState::Open))
            .map(|(id, _)| id.as_str())
            .chain(decision.ready.iter().map(String::as_str));
        let status = live_status(self.def, open);
        Plan {
            start,
            status,
            terminal,
        }
    }
}
