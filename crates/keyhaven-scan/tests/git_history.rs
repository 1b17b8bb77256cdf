//! Git history: a secret added and removed in a later commit is still found, with the
//! commit that introduced it; staged and since-REV modes report added lines only.

use std::path::Path;
use std::process::Command;

use crate::common::{Fake, run};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("README.md"), "demo\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    dir
}

fn json(args: &[&str]) -> serde_json::Value {
    let (_, out, err) = run(args, b"");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"))
}

#[test]
fn removed_secret_is_found_with_its_commit() {
    let dir = repo();
    let d = dir.path();
    let tok = Fake::new(31).credential("github");
    std::fs::write(d.join("deploy.env"), format!("GITHUB_TOKEN={tok}\n")).unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "add token"]);
    let introduced = git(d, &["rev-parse", "HEAD"]);
    std::fs::remove_file(d.join("deploy.env")).unwrap();
    git(d, &["add", "-A"]);
    git(d, &["commit", "-q", "-m", "remove token"]);
    // The working tree is clean...
    assert_eq!(run(&[d.to_str().unwrap()], b"").0, 0);
    // ...but history is not.
    let v = json(&[d.to_str().unwrap(), "--git", "--format", "json"]);
    let f = &v["findings"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0]["rule"], "github-token");
    assert_eq!(f[0]["path"], "deploy.env");
    assert_eq!(f[0]["commit"], introduced.as_str());
}

#[test]
fn staged_and_since_report_added_lines_only() {
    let dir = repo();
    let d = dir.path();
    let mut fake = Fake::new(32);
    let old = fake.credential("npm");
    std::fs::write(d.join("a.env"), format!("OLD={old}\n")).unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "old secret"]);
    let base = git(d, &["rev-parse", "HEAD"]);
    let new = fake.credential("github");
    std::fs::write(d.join("a.env"), format!("OLD={old}\nNEW={new}\n")).unwrap();
    git(d, &["add", "."]);
    let v = json(&[d.to_str().unwrap(), "--staged", "--format", "json"]);
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, vec!["github-token"], "{v}");
    git(d, &["commit", "-q", "-m", "new secret"]);
    let v = json(&[d.to_str().unwrap(), "--since", &base, "--format", "json"]);
    let f = v["findings"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0]["rule"], "github-token");
    assert_eq!(f[0]["line"], 2);
}
