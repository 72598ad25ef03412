use serde_json::json;

use super::*;

fn ctx() -> Value {
    json!({
        "inputs": {"text": "hello", "n": 3, "big": 18446744073709551615u64},
        "steps": {
            "classify": {"output": {"score": 0.5, "label": "bug"}},
            "enrich": {"output": {"tags": ["a", "b"], "ok": true}},
            "skipped": {"output": null}
        },
        "settings": {"model": "small"},
        "secrets": {"KEY": "s3cr3t-value"},
        "run": {"request_id": "req_1", "user": "u", "metadata": {}}
    })
}

fn render(t: Value) -> Result<Value, TemplateError> {
    Templates::new().render(&t, &ctx())
}

#[test]
fn single_expression_yields_the_value() {
    assert_eq!(
        render(json!("{{ steps.classify.output.score < 0.8 }}")),
        Ok(json!(true))
    );
    assert_eq!(
        render(json!("{{ steps.enrich.output }}")),
        Ok(json!({"tags": ["a", "b"], "ok": true}))
    );
    assert_eq!(render(json!("  {{inputs.n}} ")), Ok(json!(3)));
    assert_eq!(render(json!("{{- inputs.n + 1 -}}")), Ok(json!(4)));
    assert_eq!(render(json!("{{ inputs.big }}")), Ok(json!(u64::MAX)));
    assert_eq!(render(json!("{{ steps.skipped.output }}")), Ok(json!(null)));
    assert_eq!(
        render(json!("{{ [1, 2.5, 'x'] }}")),
        Ok(json!([1, 2.5, "x"]))
    );
}

#[test]
fn other_strings_are_interpolated() {
    assert_eq!(
        render(json!("Approve {{ steps.classify.output.label }}?")),
        Ok(json!("Approve bug?"))
    );
    assert_eq!(
        render(json!("{{ inputs.n }}{{ inputs.n }}")),
        Ok(json!("33"))
    );
    assert_eq!(
        render(json!("{% if inputs.n > 2 %}big{% endif %}")),
        Ok(json!("big"))
    );
    assert_eq!(render(json!("no template")), Ok(json!("no template")));
    // Not a single expression although it starts and ends with braces.
    assert_eq!(render(json!("{{ 1 }} and {{ 2 }}")), Ok(json!("1 and 2")));
}

#[test]
fn renders_leaves_not_keys() {
    assert_eq!(
        render(json!({
            "label": "{{ inputs.text | upper }}",
            "{{ key }}": [1, "{{ inputs.n }}", null, false],
        })),
        Ok(json!({"label": "HELLO", "{{ key }}": [1, 3, null, false]}))
    );
}

#[test]
fn undefined_is_an_error() {
    let e = render(json!("{{ inputs.nope }}")).unwrap_err().to_string();
    assert!(e.contains("inputs.nope"), "{e}");
    let e = render(json!("x {{ inputs.nope }}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("undefined"), "{e}");
    assert!(render(json!("{{ nothing.here }}")).is_err());
    assert_eq!(
        render(json!("{{ inputs.nope is defined }}")),
        Ok(json!(false))
    );
    assert_eq!(
        render(json!("{{ inputs.nope | default('d') }}")),
        Ok(json!("d"))
    );
}

#[test]
fn errors_never_show_context_values() {
    let t = Templates::new();
    for src in [
        "{{ secrets.KEY - 10 }}",
        "{{ secrets.KEY * 1000000000 }}",
        "{{ secrets.KEY / 2 }}",
        "{{ secrets.KEY + 1 }}",
        "{{ secrets.KEY | int }}",
        "{{ secrets.KEY.missing }}",
        "{{ secrets.KEY() }}",
        "{{ inputs.big * inputs.big * inputs.big * inputs.big * secrets.KEY | length }}",
        "{{ (secrets.KEY | length) * inputs.big * inputs.big * inputs.big * inputs.big }}",
        "{% for x in secrets.KEY | int %}{% endfor %}",
    ] {
        let e = t.render(&json!(src), &ctx()).unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{src}: {e}");
    }
}

#[test]
fn runaway_templates_run_out_of_fuel() {
    let t = Templates::new();
    let e = t
        .render_str(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &ctx(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("fuel"), "{e}");
}

#[test]
fn render_str_interpolates() {
    let t = Templates::new();
    assert_eq!(
        t.render_str("Bearer {{ secrets.KEY }}", &ctx()).unwrap(),
        "Bearer s3cr3t-value"
    );
    assert_eq!(t.render_str("{{ inputs.n }}", &ctx()).unwrap(), "3");
    assert_eq!(t.render_str("plain {x}", &ctx()).unwrap(), "plain {x}");
}

#[test]
fn truthiness() {
    let t = Templates::new();
    let c = ctx();
    assert!(
        t.truthy("{{ steps.classify.output.score < 0.8 }}", &c)
            .unwrap()
    );
    assert!(
        !t.truthy("{{ steps.classify.output.score > 0.8 }}", &c)
            .unwrap()
    );
    assert!(!t.truthy("{{ steps.skipped.output }}", &c).unwrap());
    assert!(!t.truthy("{{ [] }}", &c).unwrap());
    assert!(t.truthy("{{ steps.enrich.output.tags }}", &c).unwrap());
    assert!(!t.truthy("{{ inputs.n > 5 }} ", &c).unwrap());
    assert!(t.truthy("{{ inputs.n }} items", &c).unwrap());
    assert!(!t.truthy("{{ 'none' }}{{ '' }}", &c).unwrap());
    assert!(t.truthy("yes", &c).unwrap());
    assert!(!t.truthy("False", &c).unwrap());
    assert!(t.truthy("{{ inputs.nope }}", &c).is_err());
}

#[test]
fn check_reports_syntax_errors_naming_the_template() {
    let t = Templates::new();
    assert!(t.check("{{ steps.a.output }}").is_ok());
    assert!(t.check("plain").is_ok());
    assert!(t.check("{% if x %}y{% endif %}").is_ok());
    let e = t.check("{{ steps.a.output ").unwrap_err().to_string();
    assert!(
        e.contains("steps.a.output") && e.contains("syntax error"),
        "{e}"
    );
    let e = t.check("{{ a + }}").unwrap_err().to_string();
    assert!(e.contains("syntax error"), "{e}");
    assert!(t.check("{% if x %}").is_err());
}

#[test]
fn variables_lists_context_paths() {
    let t = Templates::new();
    let vars = t
        .variables("{{ steps.a.output.x }} {% for i in range(3) %}{{ loop.index }}{{ i }}{% endfor %}{{ inputs.t | upper }}")
        .unwrap();
    assert_eq!(
        vars.into_iter().collect::<Vec<_>>(),
        ["inputs.t", "steps.a.output.x"]
    );
    let vars = t.variables("{{ steps.b.output + settings.x }}").unwrap();
    assert_eq!(
        vars.into_iter().collect::<Vec<_>>(),
        ["settings.x", "steps.b.output"]
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let t = Templates::new();
    for (open, close) in [("(", ")"), ("[", "]"), ("{'a': ", "}")] {
        let src = format!("{{{{ {}1{} }}}}", open.repeat(5000), close.repeat(5000));
        let e = t.render(&json!(src), &ctx()).unwrap_err().to_string();
        assert!(e.contains("recursion"), "{e}");
        assert!(t.check(&src).is_err());
    }
    let minus = format!("{{{{ {}1 }}}}", "-".repeat(5000));
    assert_eq!(t.render(&json!(minus), &ctx()), Ok(json!(1)));
    assert!(t.check(&"{% if true %}".repeat(5000)).is_err());
}
