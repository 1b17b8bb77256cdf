//! Pathological input finishes with bounded memory and no panic: a 1 GB (sparse) file, a
//! 10 MB single line, deeply nested YAML, invalid UTF-8 and a base64 bomb.

use std::io::{Seek, SeekFrom, Write};

use crate::common::{Fake, run};

#[test]
fn one_gigabyte_file_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.log");
    let mut f = std::fs::File::create(&path).unwrap();
    // A text head (so the file is not sniffed as binary), a sparse hole, a secret near the end.
    for i in 0..400 {
        writeln!(f, "2024-01-01T00:00:00Z INFO request {i} served in 3ms").unwrap();
    }
    let tok = Fake::new(41).credential("github");
    f.seek(SeekFrom::Start(1_000_000_000)).unwrap();
    writeln!(f, "\nleaked GITHUB_TOKEN={tok}").unwrap();
    drop(f);
    let (code, out, err) = run(&[path.to_str().unwrap(), "--format", "json"], b"");
    assert_eq!(code, 1, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["findings"][0]["rule"], "github-token");
    assert_eq!(v["findings"][0]["line"], 402);
    assert!(v["summary"]["bytes"].as_u64().unwrap() > 1_000_000_000);
}

#[test]
fn ten_megabyte_single_line() {
    let mut fake = Fake::new(42);
    let mut line = String::with_capacity(10_500_000);
    while line.len() < 10_000_000 {
        line.push_str("var a=\"password\";b.apiKey=c;");
        line.push_str(&fake.alnum(40));
    }
    let tok = fake.credential("stripe");
    line.push_str(&format!(";k=\"{tok}\""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bundle.min.js"), &line).unwrap();
    let (code, out, _) = run(&[dir.path().to_str().unwrap(), "--format", "json"], b"");
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"stripe-key"), "{rules:?}");
}

#[test]
fn deeply_nested_yaml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\ndata: {}1{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    std::fs::write(dir.path().join("nested.yaml"), yaml).unwrap();
    let mut block = String::from("apiVersion: v1\nkind: Pod\n");
    for i in 0..5000 {
        block.push_str(&" ".repeat(i % 200));
        block.push_str("a:\n");
    }
    std::fs::write(dir.path().join("indent.yaml"), block).unwrap();
    let json = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    std::fs::write(dir.path().join("nested.json"), json).unwrap();
    let (code, _, err) = run(&[dir.path().to_str().unwrap()], b"");
    assert!(code == 0 || code == 1, "{err}");
}

#[test]
fn invalid_utf8_is_scanned_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Fake::new(43).credential("github");
    let mut data = vec![0xff, 0xfe, 0xc3, 0x28, b'\n'];
    data.extend_from_slice(format!("t={tok}\n").as_bytes());
    data.extend_from_slice(&[0xe2, 0x82, b'\n']);
    std::fs::write(dir.path().join("weird.yaml"), &data).unwrap();
    let (code, out, _) = run(&[dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 1);
    assert!(out.contains("github-token"));
}

#[test]
fn base64_bomb_is_bounded() {
    use base64::Engine as _;
    // 12 nested encodings of 512 KiB of secrets: a few MB on disk, unbounded if followed.
    let mut fake = Fake::new(44);
    let mut payload = String::new();
    while payload.len() < 512 * 1024 {
        payload.push_str(&format!("token={}\n", fake.credential("github")));
    }
    let mut v = payload.into_bytes();
    for _ in 0..3 {
        v = base64::engine::general_purpose::STANDARD
            .encode(&v)
            .into_bytes();
    }
    let enc = String::from_utf8(v).unwrap();
    let mut yaml = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n  name: bomb\ndata:\n");
    for i in 0..8 {
        yaml.push_str(&format!("  k{i}: {enc}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bomb.yaml"), yaml).unwrap();
    let start = std::time::Instant::now();
    let (code, _, err) = run(&[dir.path().to_str().unwrap(), "--format", "json"], b"");
    assert_eq!(code, 1, "{err}");
    assert!(start.elapsed().as_secs() < 60);
}
