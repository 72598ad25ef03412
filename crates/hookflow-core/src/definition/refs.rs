//! Templates of a definition: syntax, and the context they read. A template may read
//! `inputs`, `settings`, `secrets`, `run`, and `steps.<id>` of steps that run before it: a
//! step's templates read its (direct or indirect) needs, `output` reads any step.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::{StepDef, TEMPLATES};

/// Top-level names of the template context.
const ROOTS: &[&str] = &["inputs", "steps", "settings", "secrets", "run"];

/// The templates of one step (or of `output`): field path → context paths read.
#[derive(Default)]
pub(super) struct Uses(Vec<(String, BTreeSet<String>)>);

impl Uses {
    /// Checks the string template at `field` and records what it reads.
    pub(super) fn string(&mut self, field: &str, s: &str) -> Result<(), String> {
        let vars = TEMPLATES
            .variables(s)
            .map_err(|e| format!("template error in {field}: {e}"))?;
        if !vars.is_empty() {
            self.0.push((field.to_owned(), vars));
        }
        Ok(())
    }

    /// Whether any template reads the context's `root` (`secrets`, say).
    pub(super) fn reads(&self, root: &str) -> bool {
        self.0
            .iter()
            .flat_map(|(_, vars)| vars)
            .any(|v| v.split(['.', '[']).next() == Some(root))
    }

    /// Checks every string leaf of the JSON template at `field`.
    pub(super) fn json(&mut self, field: &str, v: &Value) -> Result<(), String> {
        match v {
            Value::String(s) => self.string(field, s),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| self.json(&format!("{field}[{i}]"), x)),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, x)| self.json(&format!("{field}.{k}"), x)),
            _ => Ok(()),
        }
    }
}

/// Checks what templates read: `step_uses[i]` belongs to `steps[i]`, whose ancestors are
/// `ancestors[i]` (indexes); `output` may read every step.
pub(super) fn check(
    steps: &[StepDef],
    ancestors: &[HashSet<usize>],
    step_uses: &[Uses],
    output: &Uses,
) -> Result<(), String> {
    for (i, uses) in step_uses.iter().enumerate() {
        let readable = |id: &str| ancestors[i].iter().any(|&a| steps[a].id == id);
        check_uses(steps, uses, readable).map_err(|e| format!("step {:?}: {e}", steps[i].id))?;
    }
    check_uses(steps, output, |_| true)
}

fn check_uses(
    steps: &[StepDef],
    uses: &Uses,
    readable: impl Fn(&str) -> bool,
) -> Result<(), String> {
    // `steps.my-step` parses as a subtraction: point at the right syntax.
    let hint = steps
        .iter()
        .find(|s| s.id.contains('-'))
        .map(|s| format!(" (ids with '-' are written steps[{:?}])", s.id))
        .unwrap_or_default();
    for (field, vars) in &uses.0 {
        for var in vars {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            if !ROOTS.contains(&root) {
                return Err(format!(
                    "template in {field} uses unknown variable {root:?} (expected one of {}){hint}",
                    ROOTS.join(", ")
                ));
            }
            let Some(id) = parts.next().filter(|_| root == "steps") else {
                continue;
            };
            if !steps.iter().any(|s| s.id == id) {
                return Err(format!(
                    "template in {field} refers to unknown step {id:?}{hint}"
                ));
            }
            if !readable(id) {
                return Err(format!(
                    "template in {field} refers to step {id:?}, which is not among its needs (direct or indirect)"
                ));
            }
        }
    }
    Ok(())
}
