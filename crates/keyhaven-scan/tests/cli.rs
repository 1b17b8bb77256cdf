//! The command line end to end, in process: exit codes, formats, baseline, inline ignores.

use crate::common::{Fake, run};

fn tree_with_secret() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let tok = Fake::new(11).credential("github");
    std::fs::write(
        dir.path().join("app.env"),
        format!("LOG=debug\nGITHUB_TOKEN={tok}\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "nothing here\n").unwrap();
    (dir, tok)
}

#[test]
fn clean_tree_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
    let (code, out, _) = run(&[dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 finding(s)"));
}

#[test]
fn finding_exits_one_and_is_redacted() {
    let (dir, tok) = tree_with_secret();
    let (code, out, _) = run(&[dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 1);
    assert!(out.contains("github-token"));
    assert!(out.contains(":2:14"), "{out}");
    assert!(!out.contains(&tok), "secret leaked into output");
    let (_, shown, _) = run(&[dir.path().to_str().unwrap(), "--show-secrets"], b"");
    assert!(shown.contains(&tok));
}

#[test]
fn fail_on_threshold() {
    let (dir, _) = tree_with_secret();
    let p = dir.path().to_str().unwrap();
    assert_eq!(run(&[p, "--fail-on", "critical"], b"").0, 1);
    assert_eq!(run(&[p, "--fail-on", "never"], b"").0, 0);
    assert_eq!(run(&[p, "--fail-on", "bogus"], b"").0, 2);
}

#[test]
fn stdin_is_scanned() {
    let tok = Fake::new(12).credential("npm");
    let (code, out, _) = run(
        &["--stdin", "--format", "json"],
        format!("//r/:_authToken={tok}\n").as_bytes(),
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["findings"][0]["rule"], "npm-token");
    assert_eq!(v["findings"][0]["path"], "-");
}

#[test]
fn baseline_suppresses_and_survives_moved_lines() {
    let (dir, tok) = tree_with_secret();
    let p = dir.path().to_str().unwrap();
    let base = tempfile::NamedTempFile::new().unwrap();
    let bp = base.path().to_str().unwrap();
    assert_eq!(run(&[p, "--write-baseline", bp], b"").0, 1);
    assert_eq!(run(&[p, "--baseline", bp], b"").0, 0);
    // Move the secret down: still suppressed.
    std::fs::write(
        dir.path().join("app.env"),
        format!("A=1\nB=2\nC=3\nGITHUB_TOKEN={tok}\n"),
    )
    .unwrap();
    let (code, out, _) = run(&[p, "--baseline", bp], b"");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 in baseline"));
    let text = std::fs::read_to_string(base.path()).unwrap();
    assert!(!text.contains(&tok));
}

#[test]
fn inline_ignore_and_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Fake::new(13).credential("github");
    std::fs::write(
        dir.path().join("t.py"),
        format!("TOKEN = '{tok}'  # gitleaks:allow\n"),
    )
    .unwrap();
    let p = dir.path().to_str().unwrap();
    assert_eq!(run(&[p], b"").0, 0);
    assert_eq!(run(&[p, "--no-inline-ignore"], b"").0, 1);
}

#[test]
fn gitignore_is_honoured_unless_no_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Fake::new(14).credential("github");
    std::fs::write(dir.path().join(".gitignore"), "local.env\n").unwrap();
    std::fs::write(dir.path().join("local.env"), format!("T={tok}\n")).unwrap();
    let p = dir.path().to_str().unwrap();
    assert_eq!(run(&[p], b"").0, 0);
    assert_eq!(run(&[p, "--no-ignore"], b"").0, 1);
}

#[test]
fn formats_are_well_formed() {
    let (dir, tok) = tree_with_secret();
    let p = dir.path().to_str().unwrap();
    let (_, sarif, _) = run(&[p, "--format", "sarif"], b"");
    let v: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"][0]["ruleId"], "github-token");
    assert_eq!(
        v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"],
        2
    );
    assert!(!sarif.contains(&tok));
    let (_, junit, _) = run(&[p, "--format", "junit"], b"");
    assert!(junit.starts_with("<?xml"));
    assert!(junit.contains(r#"failures="1""#));
    assert!(!junit.contains(&tok));
}

#[test]
fn gitleaks_config_rules_and_allowlists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".gitleaks.toml"),
        r#"
title = "custom"
[extend]
useDefault = true
disabledRules = ["jwt"]

[[rules]]
id = "acme-key"
description = "ACME internal key"
regex = '''acme_[a-z0-9]{24}'''
keywords = ["acme_"]

[[allowlists]]
description = "fixtures"
paths = ['''fixtures/''']
"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    let acme = "acme_q8w7e6r5t4y3u2i1o9p8a7s6";
    std::fs::write(dir.path().join("a.cfg"), format!("key={acme}\n")).unwrap();
    std::fs::write(dir.path().join("fixtures/b.cfg"), format!("key={acme}\n")).unwrap();
    let (code, out, _) = run(&[dir.path().to_str().unwrap(), "--format", "json"], b"");
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules: Vec<(&str, &str)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["rule"].as_str().unwrap(), f["path"].as_str().unwrap()))
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].0, "acme-key");
    assert!(rules[0].1.ends_with("a.cfg"));
}

#[test]
fn list_rules() {
    let (code, out, _) = run(&["--list-rules"], b"");
    assert_eq!(code, 0);
    assert!(out.contains("keyhaven-token"));
    assert!(out.contains("rbac-cluster-wide-secrets"));
}
