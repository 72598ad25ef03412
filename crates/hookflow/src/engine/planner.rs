//! The engine's [`Planner`]: turns a run's stored step executions into the next plan, using the
//! pure state machine of `hookflow_core::run`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookflow_core::run::{Outcome, StepState, context, decide};
use hookflow_core::{OnError, StepDef, StepKind, Templates, WorkflowDef};
use hookflow_store::{
    Delivery, Millis, NewStep, Plan, Planner, RunRecord, RunStatus, StepExecution, StepResult,
    StepStatus, Terminal,
};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::app::App;
use crate::delivery;
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
    let (run_at, running) = match &step.kind {
        StepKind::Delay { duration } => (run_at + duration.as_millis() as Millis, true),
        _ => (run_at, false),
    };
    NewStep {
        step_id: step.id.clone(),
        attempt,
        run_at,
        lease_ms: call_timeout(step).as_millis() as i64 + LEASE_MARGIN_MS,
        running,
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

/// A [`RunPlanner`] that owns what it reads, so that the store's batch writer can keep it
/// until the batch holding the job is written.
pub(super) struct OwnedPlanner {
    pub app: Arc<App>,
    pub def: Arc<WorkflowDef>,
    pub secrets: Value,
    /// The delivery slot taken for the run's end event, when the write leases it to this node.
    pub event_slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl OwnedPlanner {
    /// The delivery slot taken by [`Planner::lease_event`], if any.
    pub fn take_event_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.event_slot.lock().expect("slot lock").take()
    }
}

impl Planner for OwnedPlanner {
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan {
        let planner = RunPlanner {
            def: &self.def,
            templates: &self.app.templates,
            secrets: &self.secrets,
        };
        planner.plan(run, steps, now)
    }

    /// Leases the event while this node has a free delivery slot (taken once, even when a
    /// failed batch plans the run again).
    fn lease_event(&self) -> Option<i64> {
        let mut slot = self.event_slot.lock().expect("slot lock");
        if slot.is_none() {
            *slot = self.app.delivery_slots.clone().try_acquire_owned().ok();
        }
        slot.as_ref()
            .map(|_| delivery::lease_ms(&self.app.settings))
    }
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

impl RunPlanner<'_> {
    /// Resolves a ready step without a job when that needs no I/O: a `when` that is false
    /// skips it; a `transform` renders its value. None when the step needs a job (any other
    /// kind, or an error, which the job then reports with the step's retry policy).
    fn resolve_inline(
        &self,
        run: &RunRecord,
        step: &StepDef,
        outputs: &BTreeMap<String, Value>,
    ) -> Option<StepResult> {
        let ctx = run_context(run, outputs, self.secrets);
        if let Some(when) = &step.when
            && !self.templates.truthy(when, &ctx).ok()?
        {
            return Some(StepResult::Skipped);
        }
        match &step.kind {
            StepKind::Transform { value } => self
                .templates
                .render(value, &ctx)
                .ok()
                .map(StepResult::Completed),
            _ => None,
        }
    }
}

impl Planner for RunPlanner<'_> {
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan {
        let (mut states, mut outputs) = step_states(self.def, steps);
        let mut inline = Vec::new();
        let mut start = Vec::new();
        // Pure steps that become ready are resolved here, which may make more steps ready.
        let decision = loop {
            let decision = decide(self.def, &states);
            if decision.outcome.is_some() {
                break decision;
            }
            let mut resolved = false;
            for id in &decision.ready {
                let Some(step) = self.def.step(id) else {
                    continue;
                };
                match self.resolve_inline(run, step, &outputs) {
                    Some(result) => {
                        let (state, output) = match &result {
                            StepResult::Completed(v) => {
                                (StepState::Completed(v.clone()), v.clone())
                            }
                            _ => (StepState::Skipped, Value::Null),
                        };
                        states.insert(id.clone(), state);
                        outputs.insert(id.clone(), output);
                        inline.push((id.clone(), result));
                        resolved = true;
                    }
                    None => {
                        start.push(new_step(step, 1, now));
                        states.insert(id.clone(), StepState::Open);
                    }
                }
            }
            if !resolved {
                break decision;
            }
        };
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
        let open = states
            .iter()
            .filter(|(_, s)| matches!(s, StepState::Open))
            .map(|(id, _)| id.as_str());
        let status = live_status(self.def, open);
        Plan {
            inline,
            start,
            status,
            terminal,
        }
    }
}

#[cfg(test)]
mod tests {
    use hookflow_store::{Delivery, Source};

    use super::*;

    fn run() -> RunRecord {
        RunRecord {
            id: "req_1".into(),
            workspace_id: "ws".into(),
            deployment_id: "dep".into(),
            deployment_name: "d".into(),
            variant: "default".into(),
            workflow: "w".into(),
            version: 1,
            status: RunStatus::Running,
            source: Source::Api,
            delivery: Delivery::Callback,
            callback_url: Some("http://receiver.example/cb".into()),
            inputs: json!({ "n": 2 }),
            user: None,
            metadata: json!({}),
            settings: json!({}),
            output: None,
            error: None,
            created_at: 0,
            started_at: Some(0),
            finished_at: None,
        }
    }

    fn done(step_id: &str, output: Value) -> StepExecution {
        StepExecution {
            step_id: step_id.into(),
            attempt: 1,
            status: StepStatus::Completed,
            output: Some(output),
            error: None,
            created_at: 0,
            started_at: Some(0),
            finished_at: Some(1),
        }
    }

    fn plan(def: &Value, steps: &[StepExecution]) -> Plan {
        let def = WorkflowDef::from_json(def).unwrap();
        let templates = Templates::new();
        let planner = RunPlanner {
            def: &def,
            templates: &templates,
            secrets: &json!({}),
        };
        planner.plan(&run(), steps, 10)
    }

    #[test]
    fn pure_steps_after_a_finished_step_resolve_in_the_same_plan() {
        let def = json!({
            "name": "w",
            "steps": [
                { "id": "call", "kind": "http", "request": { "url": "http://svc.example/" } },
                { "id": "skip", "kind": "http", "needs": ["call"], "when": "{{ false }}",
                  "request": { "url": "http://svc.example/" } },
                { "id": "shape", "kind": "transform", "needs": ["call", "skip"],
                  "value": { "x": "{{ steps.call.output.x }}", "n": "{{ inputs.n }}" } },
            ],
            "output": "{{ steps.shape.output }}",
        });
        let plan = plan(&def, &[done("call", json!({ "x": 7 }))]);
        let inline: Vec<&str> = plan.inline.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(inline, ["skip", "shape"]);
        assert!(plan.start.is_empty());
        let terminal = plan.terminal.expect("the run ends in the same plan");
        assert_eq!(terminal.status, RunStatus::Completed);
        assert_eq!(
            terminal.output.unwrap()["result"],
            json!({ "x": 7, "n": 2 })
        );
        assert!(
            terminal.event.is_some(),
            "callback delivery writes the event"
        );
    }

    #[test]
    fn steps_that_need_io_or_fail_to_render_get_jobs() {
        let def = json!({
            "name": "w",
            "steps": [
                { "id": "a", "kind": "transform", "value": 1 },
                { "id": "call", "kind": "http", "needs": ["a"],
                  "request": { "url": "http://svc.example/" } },
                { "id": "broken", "kind": "transform", "needs": ["a"],
                  "value": "{{ inputs.missing }}" },
            ],
        });
        let plan = plan(&def, &[done("a", json!(1))]);
        assert!(plan.inline.is_empty());
        let started: Vec<&str> = plan.start.iter().map(|s| s.step_id.as_str()).collect();
        assert_eq!(started, ["call", "broken"]);
        assert_eq!(plan.status, RunStatus::Running);
        assert!(plan.terminal.is_none());
    }
}
