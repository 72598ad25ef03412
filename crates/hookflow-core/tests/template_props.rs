//! Property tests of template rendering: it never panics, and values survive the
//! exact-one-expression rule.

use hookflow_core::Templates;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Strings rich in template syntax, valid or not.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{%".to_owned()),
        Just("%}".to_owned()),
        Just("{#".to_owned()),
        Just("#}".to_owned()),
        Just(" inputs.a ".to_owned()),
        Just("steps.s.output".to_owned()),
        Just(" | upper".to_owned()),
        Just(" if ".to_owned()),
        Just(" for x in ".to_owned()),
        Just("endfor".to_owned()),
        Just("range(".to_owned()),
        Just(")".to_owned()),
        Just("-".to_owned()),
        Just(" ~ ".to_owned()),
        Just(" * ".to_owned()),
        Just("'".to_owned()),
        "[0-9]{1,25}",
        "\\PC{0,4}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn json_template() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        template_text().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z{}]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Arbitrary JSON data.
fn data() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ctx(a: Value) -> Value {
    json!({"inputs": {"a": a}, "steps": {"s": {"output": [1, "x"]}}, "settings": {}, "secrets": {}, "run": {}})
}

proptest! {
    #[test]
    fn rendering_never_panics(t in json_template(), s in template_text(), a in data()) {
        let templates = Templates::new();
        let c = ctx(a);
        let _ = templates.render(&t, &c);
        let _ = templates.render_str(&s, &c);
        let _ = templates.truthy(&s, &c);
        let _ = templates.check(&s);
    }

    #[test]
    fn a_single_expression_yields_the_value(a in data(), pad in "[ \\n]{0,2}") {
        let t = json!(format!("{pad}{{{{ inputs.a }}}}{pad}"));
        prop_assert_eq!(Templates::new().render(&t, &ctx(a.clone())), Ok(a));
    }

    #[test]
    fn plain_strings_are_kept(s in "[^{]{0,30}") {
        prop_assert_eq!(Templates::new().render(&json!(s), &ctx(json!(1))), Ok(json!(s)));
    }
}
