//! `keyhaven envelope …` end to end: local keys without a server, and transit KEKs on a
//! dev server (two KEKs with one disabled, rotation and rewrap, a token that may not
//! decrypt, an unreachable server), with the exit codes and the no-partial-output rule.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{TestServer, call, contains, keyhaven_bin};

const CLIENT_ENV: &[&str] = &[
    "KEYHAVEN_ADDR",
    "VAULT_ADDR",
    "KEYHAVEN_TOKEN",
    "VAULT_TOKEN",
    "KEYHAVEN_TOKEN_FILE",
    "KEYHAVEN_CACERT",
    "VAULT_CACERT",
    "KEYHAVEN_FORMAT",
    "VAULT_FORMAT",
    "KEYHAVEN_SKIP_VERIFY",
    "VAULT_SKIP_VERIFY",
];

const MARKER: &[u8] = b"ENVELOPE-MARKER-SECRET-5d1c";

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

fn run(addr: &str, token: &str, home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = Command::new(keyhaven_bin());
    cmd.arg("envelope").args(args);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    cmd.env("KEYHAVEN_ADDR", addr)
        .env("KEYHAVEN_TOKEN", token)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(d) = data {
            let _ = input.write_all(&d);
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plaintext of 3 default frames (64 KiB) and one byte, with a marker inside.
fn plaintext() -> Vec<u8> {
    let mut p: Vec<u8> = (0..3 * 65536 + 1).map(|i| (i % 253) as u8).collect();
    p[1000..1000 + MARKER.len()].copy_from_slice(MARKER);
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// No file but `keep` in `dir`: no temporary or partial output was left behind.
fn only_files(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn local_keys_encrypt_decrypt_inspect_and_refuse_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = tempfile::tempdir().unwrap();
    let r = |args: &[&str], stdin: Option<&[u8]>| {
        run("http://127.0.0.1:9", "", home.path(), args, stdin)
    };
    let key = d.join("k.key");
    let o = r(&["new-local-key", "-o", s(&key)], None);
    assert_eq!(o.code, 0, "{o:?}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pt = plaintext();
    std::fs::write(d.join("in"), &pt).unwrap();

    // File to file, and stdin to stdout.
    let o = r(
        &[
            "encrypt",
            "--local-key",
            s(&key),
            "--context",
            "app=billing",
            "-o",
            s(&d.join("enc")),
            s(&d.join("in")),
        ],
        None,
    );
    assert_eq!(o.code, 0, "{o:?}");
    let enc = std::fs::read(d.join("enc")).unwrap();
    assert!(!contains(&enc, MARKER));
    let o = r(
        &["decrypt", "--local-key", s(&key), s(&d.join("enc"))],
        None,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, pt);
    let o = r(&["encrypt", "--local-key", s(&key)], Some(&pt));
    assert_eq!(o.code, 0, "{o:?}");
    let o2 = r(&["decrypt", "--local-key", s(&key), "-"], Some(&o.stdout));
    assert_eq!(o2.code, 0, "{o2:?}");
    assert_eq!(o2.stdout, pt);
    let o = r(&["encrypt", "--local-key", s(&key)], Some(b""));
    let o2 = r(&["decrypt", "--local-key", s(&key)], Some(&o.stdout));
    assert_eq!((o2.code, o2.stdout.len()), (0, 0), "{o2:?}");

    // inspect needs no key and says the header is not verified.
    let o = r(&["inspect", "--format", "json", s(&d.join("enc"))], None);
    assert_eq!(o.code, 0, "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["context"], json!({"app": "billing"}));
    assert_eq!(v["keys"][0]["kind"], "local");
    assert_eq!(v["frame_size"], 65536);
    assert_eq!(v["verified"], false);

    // Without the key: a local error that says what to pass.
    let o = r(&["decrypt", s(&d.join("enc"))], None);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("--local-key"), "{}", o.stderr);

    // A corrupted last frame: exit 3, nothing on stdout, no output file, no leftovers.
    let mut bad = enc.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x10;
    std::fs::write(d.join("bad"), &bad).unwrap();
    let o = r(
        &["decrypt", "--local-key", s(&key), s(&d.join("bad"))],
        None,
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stdout.is_empty(), "plaintext written to stdout");
    assert!(
        o.stderr.contains("corrupt message: frame 4"),
        "{}",
        o.stderr
    );
    let o = r(
        &[
            "decrypt",
            "--local-key",
            s(&key),
            "-o",
            s(&d.join("out")),
            s(&d.join("bad")),
        ],
        None,
    );
    assert_eq!(o.code, 3, "{o:?}");
    // A truncated message and a message that is not an envelope.
    std::fs::write(d.join("short"), &enc[..enc.len() - 40]).unwrap();
    let o = r(
        &[
            "decrypt",
            "--local-key",
            s(&key),
            "-o",
            s(&d.join("out")),
            s(&d.join("short")),
        ],
        None,
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("truncated"), "{}", o.stderr);
    let o = r(
        &[
            "decrypt",
            "--local-key",
            s(&key),
            "-o",
            s(&d.join("out")),
            s(&d.join("in")),
        ],
        None,
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("not a keyhaven envelope"), "{}", o.stderr);
    only_files(d, &["k.key", "in", "enc", "bad", "short"]);
    assert!(!o.stderr.contains("ENVELOPE-MARKER"));

    // Usage errors.
    let o = r(&["encrypt", "-o", s(&d.join("x"))], Some(b"x"));
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("--key"), "{}", o.stderr);
    let help = r(&["encrypt", "--help"], None);
    assert!(String::from_utf8_lossy(&help.stdout).contains("3  the message is corrupt"));
}

#[test]
fn an_output_that_is_a_fifo_is_written_in_place_not_replaced() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = tempfile::tempdir().unwrap();
    let r = |args: &[&str], stdin: Option<&[u8]>| {
        run("http://127.0.0.1:9", "", home.path(), args, stdin)
    };
    let key = d.join("k.key");
    assert_eq!(r(&["new-local-key", "-o", s(&key)], None).code, 0);
    let pt = plaintext();
    std::fs::write(d.join("in"), &pt).unwrap();
    let fifo = d.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // A reader drains the FIFO while the command writes to it.
    let drain = |path: std::path::PathBuf| std::thread::spawn(move || std::fs::read(path).unwrap());
    let reader = drain(fifo.clone());
    let o = r(
        &[
            "encrypt",
            "--local-key",
            s(&key),
            "-o",
            s(&fifo),
            s(&d.join("in")),
        ],
        None,
    );
    assert_eq!(o.code, 0, "{o:?}");
    let message = reader.join().unwrap();
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let reader = drain(fifo.clone());
    let o = r(
        &["decrypt", "--local-key", s(&key), "-o", s(&fifo), "-"],
        Some(&message),
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(reader.join().unwrap() == pt);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    only_files(d, &["k.key", "in", "fifo"]);
}

fn post(server: &TestServer, token: &str, path: &str, body: Value) -> Value {
    let (status, v) = call(
        "POST",
        &format!("{}/v1/{path}", server.addr()),
        Some(token),
        Some(&body),
    );
    assert!(status < 300, "{path}: {status} {v}");
    v
}

#[test]
fn transit_keks_two_keys_disable_rotate_rewrap_and_authorization() {
    let server = TestServer::dev();
    let root = server.root_token();
    let addr = server.addr();
    post(
        &server,
        &root,
        "sys/mounts/transit",
        json!({"type": "transit"}),
    );
    post(&server, &root, "transit/keys/a", json!({}));
    post(&server, &root, "transit/keys/b", json!({}));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = tempfile::tempdir().unwrap();
    let r = |token: &str, args: &[&str]| run(&addr, token, home.path(), args, None);
    let pt = plaintext();
    std::fs::write(d.join("in"), &pt).unwrap();

    let o = r(
        &root,
        &[
            "encrypt",
            "--key",
            "transit/a",
            "--key",
            "transit/b",
            "--context",
            "tenant=acme",
            "-o",
            s(&d.join("enc")),
            s(&d.join("in")),
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let o = r(&root, &["inspect", "--format", "json", s(&d.join("enc"))]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["keys"],
        json!([{"kind": "transit", "key": "transit/a", "version": 1}, {"kind": "transit", "key": "transit/b", "version": 1}])
    );

    // Disable a: b opens the message.
    post(&server, &root, "transit/keys/a/disable", json!({}));
    let o = r(
        &root,
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("enc"))],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(std::fs::read(d.join("out")).unwrap(), pt);
    std::fs::remove_file(d.join("out")).unwrap();

    // Rotate a, rewrap: a's entry moves to version 2, the body is copied unchanged.
    post(&server, &root, "transit/keys/a/enable", json!({}));
    post(&server, &root, "transit/keys/a/rotate", json!({}));
    let o = r(
        &root,
        &["rewrap", "-o", s(&d.join("enc2")), s(&d.join("enc"))],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let enc = std::fs::read(d.join("enc")).unwrap();
    let enc2 = std::fs::read(d.join("enc2")).unwrap();
    let body = pt.len() + 3 * 4 + 12 + 4 * 16;
    assert_eq!(enc[enc.len() - body..], enc2[enc2.len() - body..]);
    let o = r(&root, &["inspect", "--format", "json", s(&d.join("enc2"))]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["keys"][0]["version"], 2);
    assert_eq!(v["keys"][1]["version"], 1);
    // Only a's version 2 is usable now: b disabled, a's version 1 retired.
    post(
        &server,
        &root,
        "transit/keys/a/config",
        json!({"min_decryption_version": 2}),
    );
    post(&server, &root, "transit/keys/b/disable", json!({}));
    let o = r(
        &root,
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("enc2"))],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(std::fs::read(d.join("out")).unwrap(), pt);
    std::fs::remove_file(d.join("out")).unwrap();
    // The old message has no usable key any more: a server error, nothing written.
    let o = r(
        &root,
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("enc"))],
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("transit:transit/a v1") && o.stderr.contains("disabled"),
        "{}",
        o.stderr
    );
    post(&server, &root, "transit/keys/b/enable", json!({}));

    // A token that may encrypt but not decrypt: "not authorized", exit 4, nothing written.
    post(
        &server,
        &root,
        "sys/policies/acl/enc-only",
        json!({"policy": "path \"transit/datakey/*\" { capabilities = [\"update\"] }\npath \"transit/encrypt/*\" { capabilities = [\"update\"] }"}),
    );
    let t = post(
        &server,
        &root,
        "auth/token/create",
        json!({"policies": ["enc-only"]}),
    );
    let limited = t["auth"]["client_token"].as_str().unwrap().to_owned();
    let o = r(
        &limited,
        &[
            "encrypt",
            "--key",
            "transit/a",
            "--key",
            "transit/b",
            "-o",
            s(&d.join("enc3")),
            s(&d.join("in")),
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let o = r(
        &limited,
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("enc3"))],
    );
    assert_eq!(o.code, 4, "{o:?}");
    assert!(o.stderr.contains("not authorized"), "{}", o.stderr);
    let o = r(&limited, &["decrypt", s(&d.join("enc3"))]);
    assert_eq!(o.code, 4, "{o:?}");
    assert!(o.stdout.is_empty());
    let o = r(&root, &["decrypt", s(&d.join("enc3"))]);
    assert_eq!((o.code, o.stdout == pt), (0, true), "{}", o.stderr);

    // Replace the keys by transit/b and an offline recovery key: the recovery key alone
    // opens the message with no server at all; the body is unchanged.
    let recovery = d.join("recovery.key");
    std::fs::write(&recovery, format!("{}\n", "5a".repeat(32))).unwrap();
    let o = r(
        &root,
        &[
            "rewrap",
            "--key",
            "transit/b",
            "--local-key",
            s(&recovery),
            "-o",
            s(&d.join("enc4")),
            s(&d.join("enc3")),
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let o = r(&root, &["inspect", "--format", "json", s(&d.join("enc4"))]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["keys"][0],
        json!({"kind": "transit", "key": "transit/b", "version": 1})
    );
    assert_eq!(v["keys"][1]["kind"], "local");
    let enc3 = std::fs::read(d.join("enc3")).unwrap();
    let enc4 = std::fs::read(d.join("enc4")).unwrap();
    assert_eq!(enc3[enc3.len() - body..], enc4[enc4.len() - body..]);
    let o = run(
        "http://127.0.0.1:9",
        "",
        home.path(),
        &["decrypt", "--local-key", s(&recovery), s(&d.join("enc4"))],
        None,
    );
    assert_eq!((o.code, o.stdout == pt), (0, true), "{}", o.stderr);
    let o = r(&root, &["decrypt", s(&d.join("enc4"))]);
    assert_eq!((o.code, o.stdout == pt), (0, true), "{}", o.stderr);
    std::fs::remove_file(&recovery).unwrap();
    std::fs::remove_file(d.join("enc4")).unwrap();

    // A server that cannot be reached: exit 5.
    let o = run(
        "http://127.0.0.1:9",
        &root,
        home.path(),
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("enc3"))],
        None,
    );
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("server unreachable"), "{}", o.stderr);

    // A changed context: the wrapped keys no longer open (corrupt, exit 3).
    let o = r(
        &root,
        &[
            "encrypt",
            "--key",
            "transit/b",
            "--context",
            "tenant=acme",
            "-o",
            s(&d.join("ctx")),
            s(&d.join("in")),
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let mut ctx = std::fs::read(d.join("ctx")).unwrap();
    let at = ctx.windows(4).position(|w| w == b"acme").unwrap();
    ctx[at..at + 4].copy_from_slice(b"evil");
    std::fs::write(d.join("ctx"), &ctx).unwrap();
    let o = r(
        &root,
        &["decrypt", "-o", s(&d.join("out")), s(&d.join("ctx"))],
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("encryption context"), "{}", o.stderr);

    only_files(d, &["in", "enc", "enc2", "enc3", "ctx"]);
    // The plaintext and the data keys never reach the server's logs.
    assert!(!server.logs().contains("ENVELOPE-MARKER"));
}
