use serde_json::json;

use super::*;
use crate::template::Templates;

/// a → b, a → c, (b, c) → d; e alone.
fn def() -> WorkflowDef {
    let t = |id: &str, needs: &[&str]| json!({"id": id, "kind": "transform", "value": 1, "needs": needs});
    WorkflowDef::from_json(&json!({
        "name": "wf",
        "steps": [t("a", &[]), t("b", &["a"]), t("c", &["a"]), t("d", &["c", "b"]), t("e", &[])],
    }))
    .unwrap()
}

fn states(pairs: &[(&str, StepState)]) -> HashMap<String, StepState> {
    pairs
        .iter()
        .map(|(id, s)| ((*id).to_owned(), s.clone()))
        .collect()
}

fn done() -> StepState {
    StepState::Completed(json!(1))
}

#[test]
fn a_new_run_starts_the_roots() {
    assert_eq!(
        decide(&def(), &HashMap::new()),
        Decision {
            ready: vec!["a".into(), "e".into()],
            outcome: None
        }
    );
}

#[test]
fn steps_start_when_needs_are_completed_or_skipped() {
    let d = decide(
        &def(),
        &states(&[
            ("a", done()),
            ("b", StepState::Open),
            ("e", StepState::Open),
        ]),
    );
    assert_eq!(d.ready, ["c"]);
    let d = decide(
        &def(),
        &states(&[
            ("a", done()),
            ("b", StepState::Skipped),
            ("c", done()),
            ("e", StepState::Open),
        ]),
    );
    assert_eq!(d.ready, ["d"]);
    assert_eq!(d.outcome, None);
}

#[test]
fn open_steps_keep_the_run_going() {
    let d = decide(
        &def(),
        &states(&[
            ("a", done()),
            ("b", done()),
            ("c", done()),
            ("d", done()),
            ("e", StepState::Open),
        ]),
    );
    assert_eq!(d, Decision::default());
}

#[test]
fn completes_when_nothing_is_left() {
    let d = decide(
        &def(),
        &states(&[
            ("a", done()),
            ("b", StepState::Skipped),
            ("c", done()),
            ("d", StepState::Completed(json!({"error": "boom"}))),
            ("e", done()),
        ]),
    );
    assert_eq!(d.ready, Vec::<String>::new());
    assert_eq!(d.outcome, Some(Outcome::Completed));
}

#[test]
fn the_first_failed_step_fails_the_run() {
    let d = decide(
        &def(),
        &states(&[
            ("a", done()),
            ("c", StepState::Failed("timed out".into())),
            ("b", StepState::Failed("HTTP 500".into())),
        ]),
    );
    assert_eq!(
        d,
        Decision {
            ready: vec![],
            outcome: Some(Outcome::Failed {
                error: "step \"b\" failed: HTTP 500".into()
            })
        }
    );
}

#[test]
fn context_feeds_templates() {
    let outputs = BTreeMap::from([
        ("a".to_owned(), json!({"label": "bug"})),
        ("b".to_owned(), Value::Null),
    ]);
    let ctx = context(
        &json!({"text": "hi"}),
        &outputs,
        &json!({"model": "small"}),
        &json!({"KEY": "k"}),
        "req_1",
        &json!("u-1"),
        &json!({"ticket": 9}),
    );
    assert_eq!(
        ctx,
        json!({
            "inputs": {"text": "hi"},
            "steps": {"a": {"output": {"label": "bug"}}, "b": {"output": null}},
            "settings": {"model": "small"},
            "secrets": {"KEY": "k"},
            "run": {"request_id": "req_1", "user": "u-1", "metadata": {"ticket": 9}},
        })
    );
    let rendered = Templates::new()
        .render(
            &json!("{{ run.request_id }}/{{ steps.a.output.label }}/{{ steps.b.output }}"),
            &ctx,
        )
        .unwrap();
    assert_eq!(rendered, json!("req_1/bug/None"));
}
