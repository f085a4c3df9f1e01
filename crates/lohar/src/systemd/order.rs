//! Boot order: which enabled units start together, and after which.
//!
//! `After=`/`Before=` between the units being started give edges; Kahn's
//! algorithm peels them into groups whose members have nothing left to wait
//! for, so each group starts in parallel once the previous one is up. Units
//! caught in a cycle cannot be ordered: they are reported with the cycle
//! (each unit's status shows it) and started best-effort after everything
//! else, so one bad unit never keeps the others down.

use std::collections::{BTreeMap, BTreeSet};

/// The groups, in start order, and the cycles found (each as the units on
/// it, in edge order, first unit repeated at the end).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Units that can start together, group by group.
    pub groups: Vec<Vec<String>>,
    /// Units that could not be ordered, started last.
    pub cyclic: Vec<String>,
    /// One cycle per strongly tangled set, for the statuses.
    pub cycles: Vec<Vec<String>>,
}

/// Orders `units`; `after` and `before` give each unit's own lists (edges to
/// units outside `units` are ignored: they are not being started).
pub fn plan(units: &BTreeMap<String, (Vec<String>, Vec<String>)>) -> Plan {
    // edges: a → b means a must be up before b starts.
    let mut succ: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut indeg: BTreeMap<&str, usize> = units.keys().map(|k| (k.as_str(), 0)).collect();
    fn add<'a>(
        from: &'a str,
        to: &'a str,
        succ: &mut BTreeMap<&'a str, BTreeSet<&'a str>>,
    ) -> bool {
        from != to && succ.entry(from).or_default().insert(to)
    }
    for (name, (after, before)) in units {
        for a in after {
            if let Some((k, _)) = units.get_key_value(a) {
                if add(k, name, &mut succ) {
                    if let Some(d) = indeg.get_mut(name.as_str()) {
                        *d = d.saturating_add(1);
                    }
                }
            }
        }
        for b in before {
            if let Some((k, _)) = units.get_key_value(b) {
                if add(name, k, &mut succ) {
                    if let Some(d) = indeg.get_mut(k.as_str()) {
                        *d = d.saturating_add(1);
                    }
                }
            }
        }
    }
    let mut out = Plan::default();
    let mut ready: Vec<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    while !ready.is_empty() {
        let mut next = Vec::new();
        for u in &ready {
            for s in succ.get(u).into_iter().flatten() {
                if let Some(d) = indeg.get_mut(s) {
                    *d = d.saturating_sub(1);
                    if *d == 0 {
                        next.push(*s);
                    }
                }
            }
            indeg.remove(u);
        }
        out.groups
            .push(ready.iter().map(|s| s.to_string()).collect());
        next.sort_unstable();
        next.dedup();
        ready = next;
    }
    out.cyclic = indeg.keys().map(|s| s.to_string()).collect();
    // Name a cycle for every leftover unit: walk successors that are
    // themselves left over until a unit repeats.
    let left: BTreeSet<&str> = indeg.keys().copied().collect();
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for start in &left {
        if covered.contains(start) {
            continue;
        }
        let mut path: Vec<&str> = vec![start];
        let mut cur = *start;
        // Every step visits a new unit or closes a cycle, so this ends.
        while let Some(n) = succ
            .get(cur)
            .and_then(|s| s.iter().find(|n| left.contains(*n)))
        {
            if let Some(pos) = path.iter().position(|p| p == n) {
                let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                covered.extend(path[pos..].iter().copied());
                if !out.cycles.contains(&cycle) {
                    out.cycles.push(cycle);
                }
                break;
            }
            path.push(n);
            cur = n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(spec: &[(&str, &[&str], &[&str])]) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        spec.iter()
            .map(|(n, a, b)| {
                (
                    n.to_string(),
                    (
                        a.iter().map(|s| s.to_string()).collect(),
                        b.iter().map(|s| s.to_string()).collect(),
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn groups_follow_after_and_before() {
        let p = plan(&units(&[
            ("db", &["network.target"], &[]),
            ("web", &["db"], &[]),
            ("cache", &[], &["web"]),
            ("log", &[], &[]),
        ]));
        assert_eq!(p.groups, vec![vec!["cache", "db", "log"], vec!["web"]]);
        assert!(p.cyclic.is_empty() && p.cycles.is_empty());
    }

    #[test]
    fn chains_make_one_group_each() {
        let p = plan(&units(&[
            ("c", &["b"], &[]),
            ("b", &["a"], &[]),
            ("a", &[], &[]),
        ]));
        assert_eq!(p.groups, vec![vec!["a"], vec!["b"], vec!["c"]]);
    }

    #[test]
    fn cycles_are_reported_and_left_for_last() {
        let p = plan(&units(&[
            ("a", &["b"], &[]),
            ("b", &["a"], &[]),
            ("c", &["a"], &[]),
            ("ok", &[], &[]),
        ]));
        assert_eq!(p.groups, vec![vec!["ok"]]);
        assert_eq!(p.cyclic, ["a", "b", "c"]);
        assert_eq!(
            p.cycles,
            vec![vec!["a".to_string(), "b".into(), "a".into()]]
        );
    }
}
