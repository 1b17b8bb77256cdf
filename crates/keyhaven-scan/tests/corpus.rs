//! Recall and precision on a corpus of realistic files: fake credentials (format-valid,
//! generated at run time from `@FAKE:kind@` markers, never committed) and decoys
//! (UUIDs, hashes, lockfile checksums, base64 images, public keys and certificates,
//! placeholders, documented example keys). The figures are printed and asserted; they are
//! quoted in docs/scan.md.

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine as _;

use crate::common::{Fake, run};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

fn fake(f: &mut Fake, kind: &str) -> String {
    match kind {
        "urlpass" => f.alnum(14),
        "kubetoken" => f.alnum(48),
        "twilio-token" => f.hex(32),
        // A human password without symbols: the generic rule needs symbols, so this is an
        // expected miss that keeps the recall figure honest.
        "plainpass" => format!("winter{}", f.from(b"0123456789", 4)),
        "pem" => format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}-----END OPENSSH PRIVATE KEY-----",
            f.credential("pem-body")
        ),
        "pem-json" => format!(
            "-----BEGIN PRIVATE KEY-----\\n{}-----END PRIVATE KEY-----\\n",
            f.credential("pem-body").replace('\n', "\\n")
        ),
        other => f.credential(other),
    }
}

/// Expand markers; returns the text and the 1-based lines that hold a planted secret.
fn expand(text: &str, f: &mut Fake) -> (String, Vec<u64>) {
    let mut out = String::new();
    let mut planted = Vec::new();
    let mut line_no = 1u64;
    for line in text.split_inclusive('\n') {
        let mut l = line.to_owned();
        let mut plant = l.contains("@PLANTED@");
        while let Some(start) = l.find("@FAKE:").or_else(|| l.find("@B64:")) {
            let b64 = l[start..].starts_with("@B64:");
            let kind_start = start + if b64 { 5 } else { 6 };
            let end = kind_start + l[kind_start..].find('@').unwrap();
            let kind = l[kind_start..end].to_owned();
            let value = match (b64, kind.as_str()) {
                (true, "docker") => base64::engine::general_purpose::STANDARD
                    .encode(format!("deploy:{}", fake(f, "password"))),
                (true, k) => base64::engine::general_purpose::STANDARD.encode(fake(f, k)),
                (false, k) => fake(f, k),
            };
            l.replace_range(start..=end, &value);
            plant = true;
        }
        if plant {
            planted.push(line_no);
        }
        line_no += l.matches('\n').count() as u64;
        out.push_str(&l);
    }
    (out, planted)
}

fn copy(src: &Path, dst: &Path, rel: &str, f: &mut Fake, planted: &mut BTreeSet<(String, u64)>) {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(dst.join(&name)).unwrap();
            copy(&e.path(), &dst.join(&name), &rel_path, f, planted);
        } else {
            let (text, lines) = expand(&std::fs::read_to_string(e.path()).unwrap(), f);
            std::fs::write(dst.join(&name), text).unwrap();
            planted.extend(lines.into_iter().map(|l| (rel_path.clone(), l)));
        }
    }
}

#[test]
fn recall_and_precision_on_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fake::new(2024);
    let mut planted = BTreeSet::new();
    copy(Path::new(CORPUS), dir.path(), "", &mut f, &mut planted);
    let root = dir.path().to_str().unwrap();
    let (_, out, err) = run(
        &[
            root,
            "--format",
            "json",
            "--no-posture",
            "--fail-on",
            "never",
        ],
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let found: Vec<(String, u64, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let p = x["path"].as_str().unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .trim_start_matches('/')
                .to_owned();
            (
                rel,
                x["line"].as_u64().unwrap(),
                x["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // A finding is a true positive when it sits on (or next to, for env name/value pairs)
    // a planted line.
    let near = |p: &str, l: u64| {
        planted
            .iter()
            .any(|(pp, pl)| pp == p && l + 1 >= *pl && l <= pl + 1)
    };
    let false_pos: Vec<_> = found.iter().filter(|(p, l, _)| !near(p, *l)).collect();
    let missed: Vec<_> = planted
        .iter()
        .filter(|(p, l)| {
            !found
                .iter()
                .any(|(fp, fl, _)| fp == p && fl + 1 >= *l && *fl <= l + 1)
        })
        .collect();
    let tp_findings = found.len() - false_pos.len();
    let recall = (planted.len() - missed.len()) as f64 / planted.len() as f64;
    let precision = tp_findings as f64 / found.len().max(1) as f64;
    eprintln!(
        "corpus: {} planted, {} findings, recall {:.3}, precision {:.3}\nmissed: {missed:?}\nfalse positives: {false_pos:?}",
        planted.len(),
        found.len(),
        recall,
        precision
    );
    assert!(planted.len() >= 30, "corpus too small: {}", planted.len());
    assert!(recall >= 0.95, "recall {recall:.3}; missed {missed:?}");
    assert!(
        precision >= 0.95,
        "precision {precision:.3}; false positives {false_pos:?}"
    );
}

#[test]
fn committed_corpus_scans_clean() {
    // The corpus as committed holds only markers and decoys: the repository's own scan
    // must not fire on it.
    let (code, out, _) = run(&[CORPUS, "--no-posture"], b"");
    assert_eq!(code, 0, "{out}");
}
