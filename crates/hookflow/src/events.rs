//! The terminal event of a run: its envelope and the structured output it carries.

use hookflow_store::{NewEvent, RunRecord, RunStatus};
use serde_json::{Value, json};

use crate::ids::new_id;

/// The structured output of a completed run (`data.output` of its callback).
pub fn structured_output(result: Value, settings: &Value) -> Value {
    json!({ "result": result, "settings": settings, "assets": [] })
}

/// The event type of a terminal status.
fn event_type(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Completed => "workflow.completed",
        RunStatus::Cancelled => "workflow.cancelled",
        _ => "workflow.failed",
    }
}

/// The terminal event of `run` ending with `status`, to be sent to `url`.
pub fn terminal_event(
    run: &RunRecord,
    status: RunStatus,
    output: Option<&Value>,
    error: Option<&str>,
    url: String,
) -> NewEvent {
    let mut data = json!({ "metadata": run.metadata, "user": run.user });
    match status {
        RunStatus::Completed => data["output"] = output.cloned().unwrap_or(Value::Null),
        RunStatus::Cancelled => {
            data["error"] = error.into();
            data["reason"] = "cancelled".into();
        }
        _ => data["error"] = error.into(),
    }
    let envelope = json!({
        "event_type": event_type(status),
        "request_id": run.id,
        "data": data,
    });
    NewEvent {
        id: new_id("evt"),
        event_type: event_type(status).to_string(),
        payload: envelope.to_string(),
        url,
    }
}

/// The `approval.requested` event of a human step with a `notify_url`: the approval's fields
/// (`approval`) plus the run's metadata and user.
pub fn approval_requested(run: &RunRecord, mut approval: Value, url: String) -> NewEvent {
    approval["metadata"] = run.metadata.clone();
    approval["user"] = run.user.clone().into();
    let envelope = json!({
        "event_type": "approval.requested",
        "request_id": run.id,
        "data": approval,
    });
    NewEvent {
        id: new_id("evt"),
        event_type: "approval.requested".to_string(),
        payload: envelope.to_string(),
        url,
    }
}
