//! The step graph: unique ids, known needs, no cycles.

use std::collections::{HashMap, HashSet};

use super::StepDef;

/// Checks the graph formed by `needs` and returns, for each step, the indexes of the steps it
/// needs directly or indirectly.
pub(super) fn check(steps: &[StepDef]) -> Result<Vec<HashSet<usize>>, String> {
    let mut index = HashMap::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        if index.insert(s.id.as_str(), i).is_some() {
            return Err(format!("duplicate step id {:?}", s.id));
        }
    }
    let mut edges = Vec::with_capacity(steps.len());
    for s in steps {
        let mut needs = Vec::with_capacity(s.needs.len());
        for n in &s.needs {
            if *n == s.id {
                return Err(format!("step {:?}: cannot need itself", s.id));
            }
            let &i = index
                .get(n.as_str())
                .ok_or_else(|| format!("step {:?}: needs unknown step {n:?}", s.id))?;
            needs.push(i);
        }
        edges.push(needs);
    }
    let mut walk = Walk {
        edges: &edges,
        mark: vec![Mark::New; steps.len()],
        path: Vec::new(),
        ancestors: vec![HashSet::new(); steps.len()],
    };
    for i in 0..steps.len() {
        if let Some(cycle) = walk.visit(i) {
            let ids: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
            return Err(format!("cycle between steps: {}", ids.join(" -> ")));
        }
    }
    Ok(walk.ancestors)
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    New,
    /// On the current path.
    Open,
    Done,
}

/// A depth-first walk along `needs` that finds cycles and collects ancestors.
struct Walk<'a> {
    edges: &'a [Vec<usize>],
    mark: Vec<Mark>,
    path: Vec<usize>,
    ancestors: Vec<HashSet<usize>>,
}

impl Walk<'_> {
    /// Visits step `i`; returns a cycle (first step repeated at the end) if one is reachable.
    fn visit(&mut self, i: usize) -> Option<Vec<usize>> {
        match self.mark[i] {
            Mark::Done => return None,
            Mark::Open => {
                let start = self.path.iter().position(|&p| p == i)?;
                let mut cycle = self.path[start..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            Mark::New => {}
        }
        self.mark[i] = Mark::Open;
        self.path.push(i);
        for &n in &self.edges[i] {
            if let Some(cycle) = self.visit(n) {
                return Some(cycle);
            }
        }
        self.path.pop();
        self.mark[i] = Mark::Done;
        let mut ancestors = HashSet::new();
        for &n in &self.edges[i] {
            ancestors.insert(n);
            ancestors.extend(self.ancestors[n].iter().copied());
        }
        self.ancestors[i] = ancestors;
        None
    }
}
