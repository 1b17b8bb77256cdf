//! Every built-in rule's examples fire, and its negative examples do not.

use crate::common::{engine, expand_example, fired};

#[test]
fn every_rule_example_fires_and_negatives_do_not() {
    let e = engine();
    let mut failures = Vec::new();
    for rule in &e.rules.rules {
        let id = &rule.spec.id;
        for ex in &rule.spec.examples {
            let text = expand_example(ex);
            let hits = fired(&e, &text);
            if !hits.contains(id) {
                failures.push(format!(
                    "{id}: example did not fire (fired: {hits:?}): {ex}"
                ));
            }
        }
        for neg in &rule.spec.negative_examples {
            let hits = fired(&e, &expand_example(neg));
            if hits.contains(id) {
                failures.push(format!("{id}: negative example fired: {neg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn context_rules_need_their_context() {
    // A rule tagged "context" matches a generic-looking value only next to one of the
    // service's names: each example fires (checked above), and the secret it yields,
    // assigned to a neutral name, does not fire that rule.
    let e = engine();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (idx, rule) in e.rules.rules.iter().enumerate() {
        if !rule.spec.tags.iter().any(|t| t == "context") {
            continue;
        }
        for ex in &rule.spec.examples {
            let text = expand_example(ex);
            for m in e.scan_bytes(text.as_bytes(), "example.txt", None) {
                if m.rule != idx {
                    continue;
                }
                let secret = String::from_utf8_lossy(&m.secret).into_owned();
                for bare in [format!("value = {secret}\n"), format!("{secret}\n")] {
                    if fired(&e, &bare).contains(&rule.spec.id) {
                        failures.push(format!("{}: fires without context: {bare}", rule.spec.id));
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 50, "only {checked} context examples checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn committed_examples_are_broken() {
    // The rules file itself must not trigger the scanner (so the repository scans clean).
    let e = engine();
    let text = keyhaven_scan::rules::DEFAULT_RULES;
    let hits: Vec<String> = e
        .scan_bytes(text.as_bytes(), "default.toml", None)
        .iter()
        .map(|m| format!("{} line {}", e.rules.rules[m.rule].spec.id, m.line))
        .collect();
    assert!(hits.is_empty(), "rules file fires: {hits:?}");
}

#[test]
fn github_checksum_matters() {
    let e = engine();
    let mut f = crate::common::Fake::new(7);
    let good = f.credential("github");
    assert_eq!(fired(&e, &format!("t = {good}")), vec!["github-token"]);
    let mut bad = good.clone();
    bad.replace_range(10..11, if &good[10..11] == "a" { "b" } else { "a" });
    assert!(fired(&e, &format!("t = {bad}")).is_empty());
}
