use serde_json::json;

use super::*;

/// The example of SPEC section 2, verbatim.
const SPEC_EXAMPLE: &str = r#"
name: triage
description: Classify a ticket, enrich it, and ask a human when unsure
inputs:                     # optional JSON Schema; invalid inputs are rejected before a run starts
  type: object
  required: [text]
steps:
  - id: classify
    kind: http              # synchronous call to the user's service; output = parsed response body
    request:
      method: POST
      url: "https://classifier.example.com/v1/classify"
      headers: { Authorization: "Bearer {{ secrets.CLASSIFIER_KEY }}" }
      body: { text: "{{ inputs.text }}", model: "{{ settings.model }}" }
    timeout: 10s
    retry: { max_attempts: 3, initial_interval: 1s, backoff: 2.0, max_interval: 30s }
  - id: enrich
    kind: async_http        # answers at once, completes later through its webhook URL
    needs: [classify]
    url: "https://worker.example.com/enrich"
    arguments: { label: "{{ steps.classify.output.label }}" }
    timeout: 15m            # how long to wait for the completion
  - id: review
    kind: human
    needs: [enrich]
    when: "{{ steps.classify.output.score < 0.8 }}"   # skipped when false
    prompt: "Approve label {{ steps.classify.output.label }}?"
    assignee: "ops@example.com"
    timeout: 24h
  - id: pause
    kind: delay
    duration: 5s
  - id: result
    kind: transform         # pure computation, no I/O
    needs: [enrich, review]
    value: { label: "{{ steps.classify.output.label }}", extra: "{{ steps.enrich.output }}" }
output: "{{ steps.result.output }}"
"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn spec_example_parses() {
    let (def, stored) = parse_definition(SPEC_EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(def.name, "triage");
    assert_eq!(stored["steps"][0]["id"], "classify");
    assert!(def.requires_callback());
    let ids: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["classify", "enrich", "review", "pause", "result"]);

    let classify = def.step("classify").unwrap();
    assert_eq!(classify.timeout, Some(secs(10)));
    assert_eq!(
        classify.retry,
        RetryPolicy {
            max_attempts: 3,
            initial_interval: secs(1),
            backoff: 2.0,
            max_interval: secs(30)
        }
    );
    let StepKind::Http(http) = &classify.kind else {
        panic!("{:?}", classify.kind)
    };
    assert_eq!(http.method, "POST");
    assert_eq!(
        http.headers["Authorization"],
        "Bearer {{ secrets.CLASSIFIER_KEY }}"
    );
    assert_eq!(http.body.as_ref().unwrap()["model"], "{{ settings.model }}");

    let enrich = def.step("enrich").unwrap();
    assert_eq!(enrich.needs, ["classify"]);
    assert_eq!(enrich.timeout, Some(secs(15 * 60)));
    assert!(
        matches!(&enrich.kind, StepKind::AsyncHttp(a) if a.url == "https://worker.example.com/enrich")
    );

    let review = def.step("review").unwrap();
    assert_eq!(
        review.when.as_deref(),
        Some("{{ steps.classify.output.score < 0.8 }}")
    );
    let StepKind::Human(human) = &review.kind else {
        panic!("{:?}", review.kind)
    };
    assert_eq!(human.assignee.as_deref(), Some("ops@example.com"));
    assert_eq!(human.on_timeout, OnTimeout::Fail);
    assert_eq!(review.timeout, Some(secs(86400)));

    assert_eq!(
        def.step("pause").unwrap().kind,
        StepKind::Delay { duration: secs(5) }
    );
    assert_eq!(def.step("result").unwrap().on_error, OnError::Fail);
    assert_eq!(def.output, Some(json!("{{ steps.result.output }}")));
    assert!(def.step("nope").is_none());

    assert_eq!(def.check_inputs(&json!({"text": "hi"})), Ok(()));
    let e = def.check_inputs(&json!({"txt": "hi"})).unwrap_err();
    assert!(e.contains("\"text\" is a required property"), "{e}");
}

#[test]
fn json_and_yaml_give_the_same_definition() {
    let (_, yaml) = parse_definition(SPEC_EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    let json = serde_json::to_vec(&yaml).unwrap();
    let (def, again) = parse_definition(&json, Format::Json).unwrap();
    assert_eq!(yaml, again);
    assert_eq!(def.steps.len(), 5);
}

fn minimal(steps: Value) -> Value {
    json!({"name": "wf", "steps": steps})
}

fn err(v: Value) -> String {
    WorkflowDef::from_json(&v).unwrap_err().to_string()
}

fn step_err(step: Value) -> String {
    err(minimal(json!([step])))
}

fn t(id: &str, needs: &[&str]) -> Value {
    json!({"id": id, "kind": "transform", "value": 1, "needs": needs})
}

#[test]
fn defaults() {
    let def = WorkflowDef::from_json(&minimal(json!([
        {"id": "get", "kind": "http", "request": {"url": "https://x.test/{{ inputs.id }}"}},
        {"id": "post", "kind": "http", "request": {"url": "https://x.test", "body": {"a": 1}}},
        {"id": "put", "kind": "http", "request": {"method": "put", "url": "https://x.test"}},
        {"id": "wait", "kind": "async_http", "url": "https://x.test"},
        {"id": "ask", "kind": "human", "prompt": "ok?", "on_timeout": "approve"},
        {"id": "n", "kind": "transform", "value": null, "on_error": "continue"},
    ])))
    .unwrap();
    let method = |id| match &def.step(id).unwrap().kind {
        StepKind::Http(h) => h.method.clone(),
        k => panic!("{k:?}"),
    };
    assert_eq!(
        [method("get"), method("post"), method("put")],
        ["GET", "POST", "PUT"]
    );
    let wait = def.step("wait").unwrap();
    assert_eq!(wait.retry, RetryPolicy::default());
    assert_eq!(wait.timeout, None);
    assert!(matches!(&wait.kind, StepKind::AsyncHttp(a) if a.arguments == json!({})));
    let StepKind::Human(h) = &def.step("ask").unwrap().kind else {
        panic!()
    };
    assert_eq!(
        (h.on_timeout, &h.default_data, &h.notify_url),
        (OnTimeout::Approve, &json!({}), &None)
    );
    let n = def.step("n").unwrap();
    assert_eq!(n.kind, StepKind::Transform { value: json!(null) });
    assert_eq!(n.on_error, OnError::Continue);
    assert!(def.requires_callback());
    assert_eq!(def.check_inputs(&json!("anything")), Ok(()));
    let no_human = WorkflowDef::from_json(&minimal(json!([t("a", &[])]))).unwrap();
    assert!(!no_human.requires_callback());
}

#[test]
fn retry_fields() {
    let retry = |r: Value| {
        let mut s = t("a", &[]);
        s["retry"] = r;
        WorkflowDef::from_json(&minimal(json!([s])))
            .map(|d| d.steps[0].retry.clone())
            .map_err(|e| e.0)
    };
    let r = retry(json!({"max_attempts": 5, "initial_interval": "2m"})).unwrap();
    assert_eq!(
        (
            r.max_attempts,
            r.initial_interval,
            r.backoff,
            r.max_interval
        ),
        (5, secs(120), 2.0, secs(120))
    );
    for (bad, msg) in [
        (
            json!({"max_attempts": 0}),
            "retry.max_attempts must be between 1 and 100",
        ),
        (json!({"max_attempts": 101}), "between 1 and 100"),
        (
            json!({"max_attempts": 2.5}),
            "retry.max_attempts must be a whole number",
        ),
        (
            json!({"backoff": 0.5}),
            "retry.backoff must be at least 1.0",
        ),
        (
            json!({"initial_interval": "0s"}),
            "retry.initial_interval must be greater than 0",
        ),
        (
            json!({"max_interval": "0s"}),
            "retry.max_interval must be greater than 0",
        ),
        (
            json!({"initial_interval": "10s", "max_interval": "5s"}),
            "must not exceed",
        ),
        (
            json!({"max_attemps": 3}),
            "unknown field \"retry.max_attemps\"",
        ),
        (
            json!({"initial_interval": 5}),
            "retry.initial_interval must be a duration",
        ),
        (json!(3), "retry must be an object"),
    ] {
        let e = retry(bad.clone()).unwrap_err();
        assert!(
            e.starts_with("step \"a\": ") && e.contains(msg),
            "{bad}: {e}"
        );
    }
}

#[test]
fn graph_errors_name_the_step() {
    let cases = [
        (
            json!([t("classify", &[]), t("enrich", &["clasify"])]),
            "step \"enrich\": needs unknown step \"clasify\"",
        ),
        (json!([t("a", &[]), t("a", &[])]), "duplicate step id \"a\""),
        (
            json!([t("a", &["b"]), t("b", &["a"])]),
            "cycle between steps: a -> b -> a",
        ),
        (
            json!([
                t("x", &["c"]),
                t("a", &["c"]),
                t("b", &["a"]),
                t("c", &["b"])
            ]),
            "cycle between steps: c -> b -> a -> c",
        ),
        (json!([t("a", &["a"])]), "step \"a\": cannot need itself"),
        (
            json!([t("a", &[]), t("b", &["a", "a"])]),
            "step \"b\": needs \"a\" twice",
        ),
    ];
    for (steps, msg) in cases {
        assert_eq!(err(minimal(steps)), msg);
    }
}

#[test]
fn step_errors_name_the_step() {
    let cases = [
        (
            json!({"id": "x", "kind": "htp"}),
            "step \"x\": unknown kind \"htp\"",
        ),
        (
            json!({"id": "x", "kind": "http", "reqest": {}}),
            "step \"x\": unknown field \"reqest\"",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "methd": "GET"}}),
            "step \"x\": unknown field \"request.methd\"",
        ),
        (
            json!({"id": "x", "kind": "delay", "duration": "1s", "timeout": "10 parsecs"}),
            "step \"x\": invalid duration \"10 parsecs\" in timeout",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "{{ inputs.a "}}),
            "step \"x\": template error in request.url: ",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "body": {"a": ["{% if %}"]}}}),
            "step \"x\": template error in request.body.a[0]: ",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "headers": {"A": "{{"}}}),
            "step \"x\": template error in request.headers.A: ",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "headers": {"A B": "v"}}}),
            "step \"x\": invalid header name \"A B\"",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "headers": {"A": 1}}}),
            "step \"x\": request.headers must be an object of strings",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {"url": "u", "method": "FETCH"}}),
            "step \"x\": request.method \"FETCH\" is not one of",
        ),
        (
            json!({"id": "x", "kind": "http"}),
            "step \"x\": missing field \"request\"",
        ),
        (
            json!({"id": "x", "kind": "http", "request": {}}),
            "step \"x\": missing field \"request.url\"",
        ),
        (
            json!({"id": "x", "kind": "async_http"}),
            "step \"x\": missing field \"url\"",
        ),
        (
            json!({"id": "x", "kind": "async_http", "url": "u", "arguments": {"a": "{{ }}"}}),
            "step \"x\": template error in arguments.a: ",
        ),
        (
            json!({"id": "x", "kind": "delay"}),
            "step \"x\": missing field \"duration\"",
        ),
        (
            json!({"id": "x", "kind": "transform"}),
            "step \"x\": missing field \"value\"",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": "{{ x"}),
            "step \"x\": template error in value: ",
        ),
        (
            json!({"id": "x", "kind": "human"}),
            "step \"x\": missing field \"prompt\"",
        ),
        (
            json!({"id": "x", "kind": "human", "prompt": "{% for %}"}),
            "step \"x\": template error in prompt: ",
        ),
        (
            json!({"id": "x", "kind": "human", "prompt": "p", "on_timeout": "ignore"}),
            "step \"x\": on_timeout must be \"fail\" or \"approve\", not \"ignore\"",
        ),
        (
            json!({"id": "x", "kind": "human", "prompt": "p", "notify_url": "ftp://x"}),
            "step \"x\": notify_url must be an http(s) URL",
        ),
        (
            json!({"id": "x", "kind": "human", "prompt": "p", "duration": "1s"}),
            "step \"x\": unknown field \"duration\"",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": 1, "when": "{{ a ==}}"}),
            "step \"x\": template error in when: ",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": 1, "when": true}),
            "step \"x\": when must be a string",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": 1, "on_error": "ignore"}),
            "step \"x\": on_error must be \"fail\" or \"continue\", not \"ignore\"",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": 1, "timeout": "0s"}),
            "step \"x\": timeout must be greater than 0",
        ),
        (
            json!({"id": "x", "kind": "transform", "value": 1, "needs": "a"}),
            "step \"x\": needs must be a list of strings",
        ),
        (json!({"id": "x"}), "step \"x\": missing field \"kind\""),
        (json!({"kind": "delay"}), "step #1: missing field \"id\""),
        (
            json!({"id": "a b", "kind": "delay"}),
            "step #1: invalid id \"a b\"",
        ),
        (
            json!({"id": "", "kind": "delay"}),
            "step #1: invalid id \"\"",
        ),
        (
            json!({"id": "x".repeat(65), "kind": "delay"}),
            "step #1: invalid id",
        ),
        (json!("x"), "step #1 must be an object"),
    ];
    for (step, msg) in cases {
        let e = step_err(step.clone());
        assert!(e.starts_with(msg), "{step}\n  got:  {e}\n  want: {msg}");
    }
}

#[test]
fn templates_read_only_known_context() {
    let transform = |id: &str, needs: &[&str], value: &str| json!({"id": id, "kind": "transform", "needs": needs, "value": value});
    let ok = minimal(json!([
        transform(
            "a",
            &[],
            "{{ inputs.x ~ settings.y ~ secrets.Z ~ run.request_id }}"
        ),
        transform("b", &["a"], "{{ steps.a.output }}"),
        transform(
            "c",
            &["b"],
            "{% for i in range(2) %}{{ steps.a.output[i] }}{% endfor %}"
        ),
        transform("d-1", &["c"], "{{ steps['a'].output }}"),
    ]));
    assert!(WorkflowDef::from_json(&ok).is_ok());
    let cases = [
        (
            json!([transform("a", &[], "{{ inptus.x }}")]),
            "step \"a\": template in value uses unknown variable \"inptus\"",
        ),
        (
            json!([transform("a", &[], "{{ steps.clasify.output }}")]),
            "step \"a\": template in value refers to unknown step \"clasify\"",
        ),
        (
            json!([
                transform("a", &[], "x"),
                transform("b", &[], "{{ steps.a.output }}")
            ]),
            "step \"b\": template in value refers to step \"a\", which is not among its needs",
        ),
        (
            json!([transform("a", &[], "{{ steps.a.output }}")]),
            "step \"a\": template in value refers to step \"a\"",
        ),
    ];
    for (steps, msg) in cases {
        let e = err(minimal(steps));
        assert!(e.starts_with(msg), "got: {e}\nwant: {msg}");
    }
    let dashed = minimal(json!([
        transform("my-step", &[], "x"),
        transform("b", &["my-step"], "{{ steps.my-step.output }}"),
    ]));
    assert!(err(dashed).ends_with(r#"(ids with '-' are written steps["my-step"])"#));
    let mut bad_output = minimal(json!([transform("a", &[], "x")]));
    bad_output["output"] = json!({"r": ["{{ steps.b.output }}"]});
    assert_eq!(
        err(bad_output),
        "template in output.r[0] refers to unknown step \"b\""
    );
}

#[test]
fn top_level_errors() {
    let cases = [
        (json!([]), "a workflow definition must be an object"),
        (json!({"steps": [t("a", &[])]}), "missing field \"name\""),
        (
            json!({"name": "a b", "steps": [t("a", &[])]}),
            "invalid name \"a b\"",
        ),
        (
            json!({"name": "x".repeat(101), "steps": [t("a", &[])]}),
            "invalid name",
        ),
        (
            json!({"name": 5, "steps": [t("a", &[])]}),
            "name must be a string",
        ),
        (json!({"name": "wf"}), "missing field \"steps\""),
        (json!({"name": "wf", "steps": {}}), "steps must be a list"),
        (
            json!({"name": "wf", "steps": []}),
            "a workflow has 1 to 200 steps, not 0",
        ),
        (
            json!({"name": "wf", "stpes": []}),
            "unknown field \"stpes\"",
        ),
        (
            json!({"name": "wf", "steps": [t("a", &[])], "inputs": {"type": "objekt"}}),
            "inputs is not a valid JSON Schema",
        ),
        (
            json!({"name": "wf", "steps": [t("a", &[])], "inputs": {"$ref": "https://example.com/s.json"}}),
            "inputs is not a valid JSON Schema",
        ),
        (
            json!({"name": "wf", "steps": [t("a", &[])], "output": "{{ x"}),
            "template error in output: ",
        ),
    ];
    for (v, msg) in cases {
        let e = err(v.clone());
        assert!(e.starts_with(msg), "{v}\n  got:  {e}\n  want: {msg}");
    }
    let many: Vec<Value> = (0..201).map(|i| t(&format!("s{i}"), &[])).collect();
    assert_eq!(
        err(minimal(json!(many))),
        "a workflow has 1 to 200 steps, not 201"
    );
    let max: Vec<Value> = (0..200).map(|i| t(&format!("s{i}"), &[])).collect();
    assert!(WorkflowDef::from_json(&minimal(json!(max))).is_ok());
}

#[test]
fn parse_errors() {
    let e = parse_definition(b"{", Format::Json)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid JSON: "), "{e}");
    let e = parse_definition(b"a: [", Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid YAML: "), "{e}");
    for doc in [
        "name: a\nname: b\n",
        "name: a\nsteps:\n  - {id: x, id: y}\n",
    ] {
        let e = parse_definition(doc.as_bytes(), Format::Yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid YAML: ") && e.contains("duplicate key"),
            "{e}"
        );
    }
    let e = parse_definition(br#"{"name": "a", "name": "b"}"#, Format::Json).unwrap_err();
    assert!(
        e.0.starts_with("invalid JSON: duplicate key \"name\""),
        "{e}"
    );
    let e = parse_definition(b"- 1", Format::Yaml)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "a workflow definition must be an object");
}

#[test]
fn inputs_violations_are_listed_briefly() {
    let def = WorkflowDef::from_json(&json!({
        "name": "wf",
        "steps": [t("a", &[])],
        "inputs": {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 3}},
            "required": ["n"]
        }
    }))
    .unwrap();
    assert_eq!(def.check_inputs(&json!({"n": 1, "s": "abc"})), Ok(()));
    let e = def
        .check_inputs(&json!({"n": "one", "s": "secret-ish"}))
        .unwrap_err();
    assert!(e.contains("/n: ") && e.contains("/s: "), "{e}");
    assert!(!e.contains("secret-ish"), "{e}");
    let list = WorkflowDef::from_json(&json!({
        "name": "wf",
        "steps": [t("a", &[])],
        "inputs": {"type": "array", "items": {"type": "integer"}},
    }))
    .unwrap();
    let many: Vec<Value> = (0..100).map(|_| json!("x")).collect();
    let e = list.check_inputs(&json!(many)).unwrap_err();
    assert!(
        e.starts_with("/0: value is not of type \"integer\"; /1: "),
        "{e}"
    );
    assert!(
        e.ends_with("/4: value is not of type \"integer\"; and more"),
        "{e}"
    );
    let e = def
        .check_inputs(&json!({"n": 1, "s": "long", "a": 1, "b": 2}))
        .unwrap_err();
    assert!(!e.contains("and more"), "{e}");
    let e = def.check_inputs(&json!([1])).unwrap_err();
    assert!(e.contains("not of type \"object\""), "{e}");
}

#[test]
fn knows_whether_templates_read_secrets() {
    let uses = |steps: Value, output: Option<&str>| {
        let mut def = minimal(steps);
        if let Some(o) = output {
            def["output"] = json!(o);
        }
        WorkflowDef::from_json(&def).unwrap().uses_secrets
    };
    let transform = |value: &str| json!([{"id": "a", "kind": "transform", "value": value}]);
    assert!(!uses(transform("{{ inputs.x ~ settings.secrets }}"), None));
    assert!(uses(transform("{{ secrets.KEY }}"), None));
    assert!(uses(transform("{{ secrets['KEY'] }}"), None));
    assert!(uses(transform("1"), Some("{{ secrets.KEY }}")));
    let header = json!([{"id": "a", "kind": "http", "request": {
        "url": "http://svc.example/", "headers": {"Authorization": "Bearer {{ secrets.T }}"}}}]);
    assert!(uses(header, None));
}
