//! Property tests of definition validation and the run state machine on random DAGs.

use std::collections::{BTreeSet, HashMap};

use hookflow_core::{Outcome, StepState, WorkflowDef, decide};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

/// A random DAG: `needs[i]` holds steps with smaller numbers; `order` is the listing order.
#[derive(Debug, Clone)]
struct Dag {
    needs: Vec<BTreeSet<usize>>,
    order: Vec<usize>,
}

fn dag(max: usize) -> impl Strategy<Value = Dag> {
    (1..=max).prop_flat_map(|n| {
        (
            proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        )
            .prop_map(|(matrix, order)| Dag {
                needs: matrix
                    .iter()
                    .enumerate()
                    .map(|(i, row)| (0..i).filter(|&j| row[j]).collect())
                    .collect(),
                order,
            })
    })
}

fn id(i: usize) -> String {
    format!("s{i}")
}

/// The definition of a DAG; steps read their needs' outputs, as real ones do.
fn definition(d: &Dag) -> Value {
    let steps: Vec<Value> = d
        .order
        .iter()
        .map(|&i| {
            let needs: Vec<String> = d.needs[i].iter().map(|&j| id(j)).collect();
            let reads: Vec<String> = needs
                .iter()
                .map(|n| format!("{{{{ steps.{n}.output }}}}"))
                .collect();
            if i % 3 == 2 {
                json!({"id": id(i), "kind": "delay", "duration": "1s", "needs": needs,
                       "when": format!("{{{{ inputs.go and {} }}}}", needs.len())})
            } else {
                json!({"id": id(i), "kind": "transform", "needs": needs, "value": {"read": reads}})
            }
        })
        .collect();
    json!({"name": "dag", "steps": steps, "output": "{{ steps }}"})
}

proptest! {
    #[test]
    fn every_dag_is_accepted(d in dag(40)) {
        let def = WorkflowDef::from_json(&definition(&d));
        prop_assert!(def.is_ok(), "{:?}", def.err());
        prop_assert_eq!(def.unwrap().steps.len(), d.order.len());
    }

    #[test]
    fn cycles_are_rejected_naming_a_real_cycle(
        d in dag(30).prop_filter("two steps or more", |d| d.needs.len() >= 2),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 2..6),
    ) {
        let mut d = d;
        let n = d.needs.len();
        let mut cycle: BTreeSet<usize> = picks.iter().map(|p| p.index(n)).collect();
        if cycle.len() < 2 {
            cycle.extend([0, n - 1]);
        }
        let cycle: Vec<usize> = cycle.into_iter().collect();
        // A chain along the cycle plus one back edge: every cycle uses that back edge.
        for w in cycle.windows(2) {
            d.needs[w[1]].insert(w[0]);
        }
        d.needs[cycle[0]].insert(cycle[cycle.len() - 1]);
        let e = WorkflowDef::from_json(&definition(&d)).unwrap_err().0;
        let path = e.strip_prefix("cycle between steps: ").unwrap_or_else(|| panic!("{e}"));
        let path: Vec<usize> = path.split(" -> ").map(|s| s[1..].parse().unwrap()).collect();
        prop_assert!(path.len() >= 3 && path.first() == path.last(), "{}", e);
        for w in path.windows(2) {
            prop_assert!(d.needs[w[0]].contains(&w[1]), "{} is not a cycle", e);
        }
        prop_assert!(path.contains(&cycle[0]), "{}", e);
    }

    #[test]
    fn a_self_need_is_rejected(d in dag(10), pick in 0usize..10) {
        let mut d = d;
        let i = pick % d.needs.len();
        d.needs[i].insert(i);
        let e = WorkflowDef::from_json(&definition(&d)).unwrap_err().0;
        prop_assert_eq!(e, format!("step \"s{i}\": cannot need itself"));
    }

    #[test]
    fn runs_complete_running_every_step_once(d in dag(30), seed in any::<u64>()) {
        let def = WorkflowDef::from_json(&definition(&d)).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut states: HashMap<String, StepState> = HashMap::new();
        let mut starts: HashMap<String, u32> = HashMap::new();
        for _ in 0..=2 * def.steps.len() + 1 {
            let decision = decide(&def, &states);
            for r in &decision.ready {
                let state = states.get(r).unwrap_or(&StepState::Waiting);
                prop_assert_eq!(state, &StepState::Waiting);
                for n in &def.step(r).unwrap().needs {
                    let resolved = matches!(states.get(n), Some(StepState::Completed(_) | StepState::Skipped));
                    prop_assert!(resolved, "{} ready before {}", r, n);
                }
            }
            if let Some(outcome) = decision.outcome {
                prop_assert_eq!(outcome, Outcome::Completed);
                prop_assert!(decision.ready.is_empty());
                break;
            }
            for r in decision.ready {
                *starts.entry(r.clone()).or_default() += 1;
                states.insert(r, StepState::Open);
            }
            let mut open: Vec<String> = states
                .iter()
                .filter(|(_, s)| **s == StepState::Open)
                .map(|(id, _)| id.clone())
                .collect();
            open.sort();
            prop_assert!(!open.is_empty(), "stuck: {:?}", states);
            let first = rng.random_range(0..open.len());
            for (k, id) in open.into_iter().enumerate() {
                if k == first || rng.random_bool(0.5) {
                    let done = if rng.random_bool(0.2) { StepState::Skipped } else { StepState::Completed(json!(k)) };
                    states.insert(id, done);
                }
            }
        }
        prop_assert_eq!(decide(&def, &states).outcome, Some(Outcome::Completed));
        for step in &def.steps {
            prop_assert_eq!(starts.get(&step.id), Some(&1), "{}", step.id);
        }
    }

    #[test]
    fn any_failure_fails_the_run(d in dag(20), picks in proptest::collection::vec(any::<bool>(), 20), open in any::<bool>()) {
        let def = WorkflowDef::from_json(&definition(&d)).unwrap();
        let mut states = HashMap::new();
        let mut first = None;
        for (step, &fail) in def.steps.iter().zip(&picks) {
            let state = if fail {
                first.get_or_insert_with(|| step.id.clone());
                StepState::Failed(format!("error of {}", step.id))
            } else if open { StepState::Open } else { StepState::Waiting };
            states.insert(step.id.clone(), state);
        }
        let decision = decide(&def, &states);
        match first {
            Some(id) => {
                prop_assert!(decision.ready.is_empty());
                prop_assert_eq!(decision.outcome, Some(Outcome::Failed {
                    error: format!("step \"{id}\" failed: error of {id}"),
                }));
            }
            None => prop_assert_eq!(decision.outcome, None),
        }
    }
}
