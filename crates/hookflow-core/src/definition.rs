//! Workflow definitions (SPEC section 2): parsing from JSON or YAML and validation.
//!
//! Validation is strict: unknown fields are errors, and every error names the step at fault.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::Value;

use crate::retry::RetryPolicy;
use crate::template::Templates;

mod fields;
mod graph;
mod refs;
mod step;
mod strict;

/// The engine used to check templates when a definition is validated.
static TEMPLATES: LazyLock<Templates> = LazyLock::new(Templates::new);

/// The syntax of a definition document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// An invalid workflow definition; the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DefinitionError(pub String);

/// A validated workflow definition.
#[derive(Debug, Clone)]
pub struct WorkflowDef {
    /// Name: 1–100 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// JSON Schema the inputs of a run must satisfy.
    pub inputs_schema: Option<Value>,
    /// The steps, in definition order.
    pub steps: Vec<StepDef>,
    /// JSON template of the run's result.
    pub output: Option<Value>,
    /// Whether any template reads `secrets` (runs of other workflows never load them).
    pub uses_secrets: bool,
    validator: Option<Arc<jsonschema::Validator>>,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    /// Unique id: 1–64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Steps that must be completed or skipped before this one starts.
    pub needs: Vec<String>,
    /// Template; the step is skipped when it renders false.
    pub when: Option<String>,
    /// What a final failure of the step does to the run.
    pub on_error: OnError,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Time limit of one attempt (for `async_http`: until the completion; for `human`: until
    /// the answer).
    pub timeout: Option<Duration>,
    /// What the step does.
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A synchronous HTTP call; output = parsed response body.
    Http(HttpStep),
    /// An HTTP call that completes later through the step's webhook URL.
    AsyncHttp(AsyncHttpStep),
    /// Pure computation: output = the rendered JSON template `value`.
    Transform {
        /// JSON template.
        value: Value,
    },
    /// Waits for `duration`.
    Delay {
        /// How long to wait.
        duration: Duration,
    },
    /// Waits for a person's approval.
    Human(HumanStep),
}

/// The request of an `http` step.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStep {
    /// Uppercase method; default `POST` if a body is given, else `GET`.
    pub method: String,
    /// Template.
    pub url: String,
    /// Header name → template.
    pub headers: BTreeMap<String, String>,
    /// JSON template of the body.
    pub body: Option<Value>,
}

/// An `async_http` step.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncHttpStep {
    /// Template.
    pub url: String,
    /// Header name → template.
    pub headers: BTreeMap<String, String>,
    /// JSON template sent as `arguments` (default `{}`).
    pub arguments: Value,
}

/// A `human` step.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanStep {
    /// Template: the question asked.
    pub prompt: String,
    /// Who should answer.
    pub assignee: Option<String>,
    /// What happens when the step's timeout passes without an answer.
    pub on_timeout: OnTimeout,
    /// The approval's `data` on a timeout with `on_timeout: approve` (default `{}`).
    pub default_data: Value,
    /// Where an `approval.requested` event is sent when the approval opens.
    pub notify_url: Option<String>,
}

/// What a step's final failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The run fails (default).
    #[default]
    Fail,
    /// The step's output becomes `{"error": "…"}` and dependants run.
    Continue,
}

/// What a `human` step's timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// The step fails (default).
    #[default]
    Fail,
    /// The step is approved with `default_data`.
    Approve,
}

/// Parses and validates a definition document (duplicate keys are errors); also returns it as
/// the JSON value to store.
pub fn parse_definition(
    bytes: &[u8],
    format: Format,
) -> Result<(WorkflowDef, Value), DefinitionError> {
    let strict::Strict(value) = match format {
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| DefinitionError(format!("invalid JSON: {e}")))?,
        Format::Yaml => serde_norway::from_slice(bytes)
            .map_err(|e| DefinitionError(format!("invalid YAML: {e}")))?,
    };
    Ok((WorkflowDef::from_json(&value)?, value))
}

impl WorkflowDef {
    /// Parses and validates a definition given as JSON.
    pub fn from_json(v: &Value) -> Result<Self, DefinitionError> {
        parse(v).map_err(DefinitionError)
    }

    /// true if the workflow has a `human` step, which requires callback delivery.
    pub fn requires_callback(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Human(_)))
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Checks inputs against the `inputs` JSON Schema, if any; the message lists the first
    /// violations briefly (without quoting the offending values).
    pub fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        const SHOWN: usize = 5;
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let mut errors: Vec<String> = validator
            .iter_errors(inputs)
            .take(SHOWN + 1)
            .map(|e| match e.instance_path().as_str() {
                "" => e.masked().to_string(),
                at => format!("{at}: {}", e.masked()),
            })
            .collect();
        if errors.len() > SHOWN {
            errors[SHOWN] = "and more".to_owned();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Top-level fields of a definition.
const FIELDS: &[&str] = &["name", "description", "inputs", "steps", "output"];
/// Most steps a workflow may have.
const MAX_STEPS: usize = 200;

fn parse(v: &Value) -> Result<WorkflowDef, String> {
    let map = v
        .as_object()
        .ok_or("a workflow definition must be an object")?;
    let f = fields::Fields::new(map, "", FIELDS)?;
    let name = f.req_str("name")?;
    if !fields::is_name(name, 100, b"_.-") {
        return Err(format!(
            "invalid name {name:?}: use 1-100 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        ));
    }
    let description = f.str("description")?.map(str::to_owned);
    let inputs_schema = f.get("inputs").cloned();
    let validator = match &inputs_schema {
        Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
            |e| match e.instance_path().as_str() {
                "" => format!("inputs is not a valid JSON Schema: {e}"),
                at => format!("inputs is not a valid JSON Schema: at {at}: {e}"),
            },
        )?)),
        None => None,
    };
    let items = f
        .required("steps")?
        .as_array()
        .ok_or("steps must be a list")?;
    if items.is_empty() || items.len() > MAX_STEPS {
        return Err(format!(
            "a workflow has 1 to {MAX_STEPS} steps, not {}",
            items.len()
        ));
    }
    let mut steps = Vec::with_capacity(items.len());
    let mut uses = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (step, step_uses) = step::parse(item, i)?;
        steps.push(step);
        uses.push(step_uses);
    }
    let ancestors = graph::check(&steps)?;
    let output = f.get("output").cloned();
    let mut output_uses = refs::Uses::default();
    if let Some(o) = &output {
        output_uses.json("output", o)?;
    }
    refs::check(&steps, &ancestors, &uses, &output_uses)?;
    let uses_secrets = uses
        .iter()
        .chain([&output_uses])
        .any(|u| u.reads("secrets"));
    Ok(WorkflowDef {
        uses_secrets,
        name: name.to_owned(),
        description,
        inputs_schema,
        steps,
        output,
        validator,
    })
}

#[cfg(test)]
mod tests;
