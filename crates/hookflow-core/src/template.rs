//! Templates over JSON values: minijinja with strict undefined values and a fuel limit.
//!
//! A string that is exactly one `{{ expr }}` (whitespace around allowed) yields the
//! expression's JSON value; any other string containing template syntax is interpolated to a
//! string; a string without template syntax is returned as is.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Fuel (roughly: VM instructions) one template evaluation may burn.
const FUEL: u64 = 100_000;
/// How many characters of a template an error message quotes.
const SNIPPET_CHARS: usize = 60;

/// The template engine shared by definitions and the engine.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

/// A template that does not compile or render. The message quotes the template but never
/// the values it was rendered with (they may be secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// How a string is treated.
enum Form<'a> {
    /// No template syntax at all.
    Plain,
    /// Exactly one `{{ expr }}`: the inner expression.
    Expr(&'a str),
    /// Anything else: interpolated.
    Text,
}

fn form(s: &str) -> Form<'_> {
    if !["{{", "{%", "{#"].iter().any(|d| s.contains(d)) {
        return Form::Plain;
    }
    let Some(inner) = s
        .trim()
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
    else {
        return Form::Text;
    };
    // Whitespace control markers (`{{- x -}}`) are not part of the expression.
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    if ["{{", "}}", "{%", "%}", "{#", "#}"]
        .iter()
        .any(|d| inner.contains(d))
    {
        Form::Text
    } else {
        Form::Expr(inner)
    }
}

/// Truthiness of interpolated text: empty, `false`, `0`, `none` and `null` are false.
fn text_truthy(s: &str) -> bool {
    let t = s.trim();
    !(t.is_empty()
        || ["false", "0", "none", "null"]
            .iter()
            .any(|w| t.eq_ignore_ascii_case(w)))
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An engine with the builtin filters, strict undefined values and a fuel limit.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        Self { env }
    }

    /// Renders every string leaf of a JSON template (object keys are not rendered). A string
    /// that is exactly one `{{ expr }}` (whitespace around allowed) yields the expression's JSON
    /// value itself (object, number, bool, null…); any other string is interpolated to a string.
    pub fn render(&self, template: &Value, ctx: &Value) -> Result<Value, TemplateError> {
        self.render_json(template, &jinja(ctx))
    }

    /// Renders a string template to a string (interpolation).
    pub fn render_str(&self, s: &str, ctx: &Value) -> Result<String, TemplateError> {
        match form(s) {
            Form::Plain => Ok(s.to_owned()),
            _ => self.interpolate(s, jinja(ctx)),
        }
    }

    /// For `when`: evaluates the string (usually `"{{ expr }}"`) and returns its truthiness.
    /// An expression is true or false as in Jinja; interpolated or plain text is false when it
    /// is empty or one of `false`, `0`, `none`, `null` (any case).
    pub fn truthy(&self, s: &str, ctx: &Value) -> Result<bool, TemplateError> {
        let ctx = jinja(ctx);
        match form(s) {
            Form::Plain => Ok(text_truthy(s)),
            Form::Expr(expr) => Ok(self.eval(s, expr, ctx)?.is_true()),
            Form::Text => Ok(text_truthy(&self.interpolate(s, ctx)?)),
        }
    }

    /// Syntax check only.
    pub fn check(&self, s: &str) -> Result<(), TemplateError> {
        self.variables(s).map(drop)
    }

    /// Checks the syntax of `s` and returns the context paths it reads (`steps.a.output`),
    /// leaving out the engine's own globals (`range`, `namespace`…).
    pub(crate) fn variables(&self, s: &str) -> Result<BTreeSet<String>, TemplateError> {
        let env: &Environment<'_> = &self.env;
        let vars = match form(s) {
            Form::Plain => return Ok(BTreeSet::new()),
            Form::Expr(expr) => env
                .compile_expression(expr)
                .map_err(|e| error(s, &e))?
                .undeclared_variables(true),
            Form::Text => env
                .template_from_str(s)
                .map_err(|e| error(s, &e))?
                .undeclared_variables(true),
        };
        let is_global = |v: &str| {
            let root = v.split('.').next().unwrap_or(v);
            self.env.globals().any(|(name, _)| name == root)
        };
        Ok(vars.into_iter().filter(|v| !is_global(v)).collect())
    }

    fn render_json(&self, t: &Value, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
        Ok(match t {
            Value::String(s) => match form(s) {
                Form::Plain => t.clone(),
                Form::Expr(expr) => {
                    let v = self.eval(s, expr, ctx.clone())?;
                    serde_json::to_value(&v)
                        .map_err(|e| TemplateError(format!("{}: {e}", snippet(s))))?
                }
                Form::Text => Value::String(self.interpolate(s, ctx.clone())?),
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|x| self.render_json(x, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, x)| Ok((k.clone(), self.render_json(x, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            _ => t.clone(),
        })
    }

    /// Evaluates the expression `expr` of the template `src`; undefined is an error.
    fn eval(
        &self,
        src: &str,
        expr: &str,
        ctx: minijinja::Value,
    ) -> Result<minijinja::Value, TemplateError> {
        let env: &Environment<'_> = &self.env;
        let v = env
            .compile_expression(expr)
            .and_then(|e| e.eval(ctx))
            .map_err(|e| error(src, &e))?;
        if v.is_undefined() {
            return Err(TemplateError(format!(
                "{}: undefined value: `{}` is undefined",
                snippet(src),
                expr.trim()
            )));
        }
        Ok(v)
    }

    fn interpolate(&self, s: &str, ctx: minijinja::Value) -> Result<String, TemplateError> {
        let env: &Environment<'_> = &self.env;
        env.render_str(s, ctx).map_err(|e| error(s, &e))
    }
}

/// A JSON value as a template value.
fn jinja(v: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

/// The template, quoted and shortened for messages.
fn snippet(src: &str) -> String {
    let mut s: String = src.chars().take(SNIPPET_CHARS).collect();
    if s.len() < src.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// A message for a minijinja error: kind and detail, without values from the context.
fn error(src: &str, e: &minijinja::Error) -> TemplateError {
    let mut msg = format!("{}: {}", snippet(src), e.kind());
    // Arithmetic failures quote their operands, which may come from the context.
    if let Some(detail) = e.detail().filter(|d| !d.starts_with("unable to calculate")) {
        msg = format!("{msg}: {detail}");
    }
    if let Some(line) = e.line().filter(|_| src.contains('\n')) {
        msg = format!("{msg} (line {line})");
    }
    TemplateError(msg)
}

#[cfg(test)]
mod tests;
