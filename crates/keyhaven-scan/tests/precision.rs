//! Where findings point and what inventories yield: a literal Secret is reported at the
//! line of each value, Ansible and key=value inventories are scanned, and a parallel scan
//! reports exactly what a one-thread scan does.

use base64::Engine as _;

use crate::common::{Fake, run};

/// (rule, line) of every finding of a scan of `dir` with extra `args`.
fn findings(dir: &std::path::Path, args: &[&str]) -> Vec<(String, String, u64)> {
    let root = dir.to_str().unwrap();
    let mut argv = vec![
        root,
        "--format",
        "json",
        "--no-posture",
        "--fail-on",
        "never",
    ];
    argv.extend_from_slice(args);
    let (code, out, err) = run(&argv, b"");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p = f["path"].as_str().unwrap();
            let name = std::path::Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                f["rule"].as_str().unwrap().to_owned(),
                name,
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn lines_of(found: &[(String, String, u64)], rule: &str, file: &str) -> Vec<u64> {
    let mut l: Vec<u64> = found
        .iter()
        .filter(|(r, f, _)| r == rule && f == file)
        .map(|(_, _, l)| *l)
        .collect();
    l.sort_unstable();
    l
}

#[test]
fn secret_manifest_findings_point_at_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fake::new(31);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // Two documents; comments, a key whose name also appears in metadata, data and
    // stringData, and a templated value that is not a finding.
    let yaml = format!(
        "apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: settings\n\
         data:\n  password: not-in-a-secret\n\
         ---\n\
         apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: shop-db\n  namespace: shop\n  labels:\n    password: label\n\
         type: Opaque\n\
         data:\n\
         \x20 # the database login\n\
         \x20 username: {}\n\
         \x20 password: {}\n\
         stringData:\n\
         \x20 api-url: https://api.internal\n\
         \x20 token: \"{{{{ .Values.token }}}}\"\n\
         \x20 password: {}\n",
        b64("shop"),
        b64(&f.credential("password")),
        f.credential("password"),
    );
    std::fs::write(dir.path().join("secret.yaml"), &yaml).unwrap();
    let found = findings(dir.path(), &[]);
    let text_line = |needle: &str, nth: usize| {
        yaml.lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(needle))
            .nth(nth)
            .map(|(i, _)| i as u64 + 1)
            .unwrap()
    };
    let expected = vec![
        text_line("username:", 0),
        text_line("password:", 2),
        text_line("api-url:", 0),
        text_line("password:", 3),
    ];
    assert_eq!(
        lines_of(&found, "k8s-secret-manifest", "secret.yaml"),
        expected,
        "{found:?}"
    );
    // The ConfigMap's and the label's `password:` lines are not Secret values.
    assert!(!expected.contains(&text_line("password:", 0)));

    // JSON manifests too.
    let json = format!(
        "{{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Secret\",\n  \"metadata\": {{\"name\": \"x\"}},\n  \"data\": {{\n    \"a\": \"{}\",\n    \"b\": \"{}\"\n  }}\n}}\n",
        b64("one-value"),
        b64("two-value"),
    );
    std::fs::write(dir.path().join("secret.json"), json).unwrap();
    let found = findings(dir.path(), &[]);
    assert_eq!(
        lines_of(&found, "k8s-secret-manifest", "secret.json"),
        vec![6, 7]
    );
}

#[test]
fn ansible_and_key_value_inventories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.ini"),
        "[web]\n\
         web1 ansible_host=10.0.0.5 ansible_user=deploy ansible_password=winter2024\n\
         web2 ansible_host=10.0.0.6 ansible_ssh_pass=vagrant\n\
         web3 ansible_host=10.0.0.7 ansible_password=\"{{ vault_web3 }}\"\n\
         \n\
         [web:vars]\n\
         ansible_become_pass=Summer77\n\
         ansible_become_password=$BECOME\n\
         \n\
         [switches]\n\
         sw1 host=10.1.2.3 username=netops password=Cisco4ever\n\
         sw2 host=10.1.2.4 username=netops password={{ sw_pw }}\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("group_vars")).unwrap();
    std::fs::write(
        dir.path().join("group_vars").join("all.yml"),
        "ansible_user: deploy\n\
         ansible_become_password: \"Kx8-lm2Vt\"\n\
         ansible_password: !vault |\n\
         \x20         $ANSIBLE_VAULT;1.1;AES256\n\
         \x20         6162636465666768696a6b6c6d6e6f70\n\
         ansible_ssh_pass: \"{{ lookup('env', 'SSH_PASS') }}\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "all:\n  hosts:\n    db1:\n      ansible_host: 10.0.0.9\n      ansible_password: hunter2x\n",
    )
    .unwrap();
    let found = findings(dir.path(), &[]);
    let at = |file: &str| {
        let mut l: Vec<u64> = found
            .iter()
            .filter(|(_, f, _)| f == file)
            .map(|(_, _, l)| *l)
            .collect();
        l.sort_unstable();
        l
    };
    assert_eq!(at("hosts.ini"), vec![2, 3, 7, 11], "{found:?}");
    assert_eq!(at("all.yml"), vec![2], "{found:?}");
    assert_eq!(at("inventory.yaml"), vec![5], "{found:?}");
    assert_eq!(
        lines_of(&found, "ansible-inventory-password", "hosts.ini"),
        vec![2, 3, 7]
    );
    assert_eq!(
        lines_of(&found, "inventory-host-password", "hosts.ini"),
        vec![11]
    );
}

#[test]
fn parallel_scan_reports_what_one_thread_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fake::new(41);
    for i in 0..40 {
        let body = match i % 4 {
            0 => format!("GITHUB_TOKEN={}\n", f.credential("github")),
            1 => format!("db_password = \"{}\"\n", f.credential("password")),
            2 => format!("x = 1\nslack = {}\n", f.credential("slack")),
            _ => "nothing to see\n".repeat(50),
        };
        std::fs::write(dir.path().join(format!("f{i:02}.txt")), body).unwrap();
    }
    // Files of many sizes, so the largest-first order of the workers is not the path
    // order, and one larger than a streaming chunk, with a credential in its last chunk.
    for i in 0..8 {
        let body = format!(
            "{}db_password = \"{}\"\n",
            "filler line\n".repeat(1 << (i + 6)),
            f.credential("password")
        );
        std::fs::write(dir.path().join(format!("g{i}.txt")), body).unwrap();
    }
    let big = format!(
        "{}slack = {}\n",
        "filler line\n".repeat(keyhaven_scan::engine::CHUNK / 12 + 1000),
        f.credential("slack")
    );
    std::fs::write(dir.path().join("big.txt"), big).unwrap();
    let one = findings(dir.path(), &["--threads", "1"]);
    let two = findings(dir.path(), &["--threads", "2"]);
    assert_eq!(one.len(), 39, "{one:?}");
    assert!(one.iter().any(|(_, path, _)| path.ends_with("big.txt")));
    assert_eq!(one, two);
}
