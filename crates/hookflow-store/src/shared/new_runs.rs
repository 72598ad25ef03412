//! A new run that needs no check first (no idempotency key, no concurrency limit), as the
//! backends' batch writers of new runs take it (see [`crate::shared::Backend::create_unchecked`]).

use crate::{NewEvent, NewRun, NewStep, RunStatus};

/// A new run as a batch writes it, its texts ready to bind, with its first steps and its event.
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) deployment_id: String,
    pub(crate) deployment_name: String,
    pub(crate) variant: String,
    pub(crate) workflow: String,
    pub(crate) version: i64,
    pub(crate) status: &'static str,
    pub(crate) source: &'static str,
    pub(crate) delivery: &'static str,
    pub(crate) callback_url: Option<String>,
    pub(crate) inputs: String,
    pub(crate) user: Option<String>,
    pub(crate) metadata: String,
    pub(crate) settings: String,
    pub(crate) created_at: i64,
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) finished_at: Option<i64>,
    /// Resolved pure steps: (step, status, output).
    pub(crate) inline: Vec<(String, &'static str, Option<String>)>,
    pub(crate) start: Vec<NewStep>,
    pub(crate) event: Option<NewEvent>,
}

impl Row {
    /// The run as it starts (or ends) at once, its free text as the backend stores it
    /// (`clean`).
    pub(crate) fn new(
        run: &NewRun,
        clean: fn(Option<&str>) -> Option<String>,
    ) -> (Self, RunStatus) {
        let terminal = run.plan.terminal.as_ref();
        let status = terminal.map_or(run.plan.status, |t| t.status);
        let row = Self {
            id: run.id.clone(),
            workspace_id: run.workspace_id.clone(),
            deployment_id: run.deployment_id.clone(),
            deployment_name: run.deployment_name.clone(),
            variant: run.variant.clone(),
            workflow: run.workflow.clone(),
            version: run.version,
            status: status.as_str(),
            source: run.source.as_str(),
            delivery: run.delivery.as_str(),
            callback_url: run.callback_url.clone(),
            inputs: run.inputs.to_string(),
            user: run.user.clone(),
            metadata: run.metadata.to_string(),
            settings: run.settings.to_string(),
            created_at: run.created_at,
            output: terminal
                .and_then(|t| t.output.as_ref())
                .map(|v| v.to_string()),
            error: clean(terminal.and_then(|t| t.error.as_deref())),
            finished_at: terminal.map(|_| run.created_at),
            inline: (run.plan.inline_rows().into_iter())
                .map(|(step, status, output)| (step.to_string(), status, output))
                .collect(),
            start: run.plan.start.clone(),
            event: terminal.and_then(|t| t.event.clone()),
        };
        (row, status)
    }

    /// The size of its larger texts (what may make a statement large).
    pub(crate) fn bytes(&self) -> usize {
        let optional = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        self.inputs.len()
            + self.metadata.len()
            + self.settings.len()
            + optional(&self.output)
            + optional(&self.error)
            + (self.inline.iter())
                .map(|(_, _, o)| optional(o))
                .sum::<usize>()
            + self.event.as_ref().map_or(0, |e| e.payload.len())
    }
}
