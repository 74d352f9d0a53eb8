//! Execution order: dependencies first (across hosts), ties by host then
//! name, prunes last.

use super::{Action, ActionKind};
use crate::instance::InstanceId;
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn order(actions: Vec<Action>) -> Vec<Action> {
    let (mut prunes, rest): (Vec<Action>, Vec<Action>) = actions
        .into_iter()
        .partition(|a| a.kind == ActionKind::Prune);

    // An instance has at most one action.
    let by_id: BTreeMap<InstanceId, usize> =
        rest.iter().enumerate().map(|(i, a)| (a.id(), i)).collect();
    let mut pending: Vec<usize> = vec![0; rest.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); rest.len()];
    for (i, a) in rest.iter().enumerate() {
        let deps: BTreeSet<usize> = a
            .after
            .iter()
            .filter_map(|d| by_id.get(d).copied())
            .filter(|&j| j != i)
            .collect();
        pending[i] = deps.len();
        for j in deps {
            dependents[j].push(i);
        }
    }
    let key = |i: usize| (rest[i].host.clone(), rest[i].service.clone(), i);
    let mut ready: BTreeSet<(String, String, usize)> = (0..rest.len())
        .filter(|&i| pending[i] == 0)
        .map(key)
        .collect();
    let mut out: Vec<usize> = Vec::with_capacity(rest.len());
    let mut done = vec![false; rest.len()];
    while let Some(first) = ready.pop_first() {
        let i = first.2;
        done[i] = true;
        out.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(key(d));
            }
        }
    }
    // A cycle (validation rejects them) must still give a total, stable order.
    let mut left: Vec<usize> = (0..rest.len()).filter(|&i| !done[i]).collect();
    left.sort_by_key(|&i| key(i));
    out.extend(left);

    let mut slots: Vec<Option<Action>> = rest.into_iter().map(Some).collect();
    let mut ordered: Vec<Action> = out.into_iter().filter_map(|i| slots[i].take()).collect();
    prunes.sort_by(|a, b| (&a.host, &a.service).cmp(&(&b.host, &b.service)));
    ordered.extend(prunes);
    ordered
}
