//! High availability on PostgreSQL (`[ha] enabled = true`): several replicas of the real
//! binary over one schema. One is active; standbys answer `sys/health` with 429, answer
//! requests without effects themselves (never from stale state) and forward everything
//! else; a killed active is replaced and no acknowledged write is lost; a paused active
//! is fenced. Run when `KEYHAVEN_TEST_PG` is set (see
//! `postgres.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::postgres::{Schema, pg_url, psql};
use crate::support::{TestServer, call, init_unseal, unseal};

/// A free loopback port (the API address must be known before the replica starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    server: TestServer,
    addr: String,
}

fn start_replica(dir: &Path, name: &str, url: &str, schema: &str, ttl: &str) -> Replica {
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[storage]\nbackend = \"postgresql\"\nconnection_url = \"{url}\"\nschema = \"{schema}\"\n\
             [listener]\naddress = \"127.0.0.1:{port}\"\ntls_disable = true\n\
             [log]\nformat = \"json\"\n\
             [ha]\nenabled = true\napi_address = \"{addr}\"\nlock_ttl = \"{ttl}\"\n"
        ),
    )
    .unwrap();
    let server = TestServer::with_config(&path);
    assert_eq!(server.addr(), addr);
    Replica { server, addr }
}

/// One call that may fail (a killed replica): `None` when nothing answered.
fn try_call(method: &str, url: &str, token: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut rb = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb.send().ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn health(addr: &str) -> Option<u16> {
    crate::support::call_status(&format!("{addr}/v1/sys/health"))
}

/// The active replica's address as `addr`'s `sys/leader` names it ("" while unknown).
fn leader_address(addr: &str) -> Option<String> {
    let (status, body) = try_call("GET", &format!("{addr}/v1/sys/leader"), "", None)?;
    (status == 200).then(|| body["leader_address"].as_str().unwrap_or("").to_owned())
}

/// Wait until exactly one of `addrs` is active, every other one a standby, and every
/// standby names the active one as its leader; its index. (A standby answers 429 as soon
/// as it is unsealed, before its election loop has read who holds the lock.)
fn one_active(addrs: &[&str]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let codes: Vec<Option<u16>> = addrs.iter().map(|a| health(a)).collect();
        let active: Vec<usize> = (0..codes.len())
            .filter(|&i| codes[i] == Some(200))
            .collect();
        if let [active] = active[..]
            && codes.iter().all(|c| matches!(c, Some(200 | 429)))
            && addrs
                .iter()
                .enumerate()
                .all(|(i, a)| i == active || leader_address(a).as_deref() == Some(addrs[active]))
        {
            return active;
        }
        assert!(
            Instant::now() < deadline,
            "no single active replica: {codes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kv_write(addr: &str, token: &str, key: &str, value: &str) -> Option<u16> {
    try_call(
        "POST",
        &format!("{addr}/v1/secret/data/{key}"),
        token,
        Some(&json!({"data": {"v": value}})),
    )
    .map(|(s, _)| s)
}

fn kv_read(addr: &str, token: &str, key: &str) -> (u16, Value) {
    call(
        "GET",
        &format!("{addr}/v1/secret/data/{key}"),
        Some(token),
        None,
    )
}

fn signal(server: &TestServer, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(server.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn replicas_share_one_database_one_active_and_fail_over_without_losing_a_write() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "ha3");
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Option<Replica>> = (0..3)
        .map(|i| {
            Some(start_replica(
                dir.path(),
                &format!("r{i}"),
                &url,
                &schema.name,
                "15s",
            ))
        })
        .collect();
    let addrs: Vec<String> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().addr.clone())
        .collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();

    // Initialized through one replica, unsealed on each.
    let (keys, root) = init_unseal(&addrs[0], 1, 1);
    for addr in &addrs[1..] {
        unseal(addr, &keys);
    }
    let active = one_active(&addr_refs);
    let standbys: Vec<usize> = (0..3).filter(|&i| i != active).collect();

    // Status: standbys say where the active is; health overrides work.
    let (s, leader) = call(
        "GET",
        &format!("{}/v1/sys/leader", addrs[standbys[0]]),
        None,
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(leader["ha_enabled"], true, "{leader}");
    assert_eq!(leader["is_self"], false, "{leader}");
    assert_eq!(leader["leader_address"], addrs[active], "{leader}");
    let (_, leader) = call(
        "GET",
        &format!("{}/v1/sys/leader", addrs[active]),
        None,
        None,
    );
    assert_eq!(leader["is_self"], true, "{leader}");
    assert_ne!(leader["active_time"], "0001-01-01T00:00:00Z", "{leader}");
    let (s, h) = call(
        "GET",
        &format!("{}/v1/sys/health", addrs[standbys[0]]),
        None,
        None,
    );
    assert_eq!(
        (s, &h["standby"], &h["sealed"]),
        (429, &json!(true), &json!(false)),
        "{h}"
    );
    assert_eq!(
        crate::support::call_status(&format!(
            "{}/v1/sys/health?standbyok=true",
            addrs[standbys[0]]
        )),
        Some(200)
    );
    assert_eq!(
        crate::support::call_status(&format!(
            "{}/v1/sys/health?standbycode=299",
            addrs[standbys[1]]
        )),
        Some(299)
    );

    // sys/ha-status (through a standby, answered by the active) lists the three
    // replicas, the active one marked.
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let (s, b) = call(
            "GET",
            &format!("{}/v1/sys/ha-status", addrs[standbys[0]]),
            Some(&root),
            None,
        );
        assert_eq!(s, 200, "{b}");
        let nodes = b["data"]["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "ha-status: {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed: std::collections::BTreeSet<&str> = nodes
        .iter()
        .map(|n| n["api_address"].as_str().unwrap())
        .collect();
    assert_eq!(listed, addrs.iter().map(String::as_str).collect());
    let active_nodes: Vec<&Value> = nodes.iter().filter(|n| n["active_node"] == true).collect();
    assert_eq!(active_nodes.len(), 1, "{nodes:?}");
    assert_eq!(active_nodes[0]["api_address"], addrs[active]);

    // A mount made through a standby; a write through each replica is read through
    // every other.
    let (s, b) = call(
        "POST",
        &format!("{}/v1/sys/mounts/secret", addrs[standbys[1]]),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert!(s == 204 || s == 200, "{s} {b}");
    for (i, addr) in addrs.iter().enumerate() {
        assert_eq!(
            kv_write(addr, &root, &format!("via-{i}"), &format!("value-{i}")),
            Some(200)
        );
    }
    for addr in &addrs {
        for i in 0..3 {
            let (s, b) = kv_read(addr, &root, &format!("via-{i}"));
            assert_eq!(s, 200, "{b}");
            assert_eq!(b["data"]["data"]["v"], format!("value-{i}"));
        }
    }

    // A standby asked not to forward redirects to the active.
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!(
            "{}/v1/secret/data/via-0?version=1",
            addrs[standbys[0]]
        ))
        .header("X-Vault-Token", &root)
        .header("X-Vault-No-Request-Forwarding", "true")
        .json(&json!({"data": {"v": "x"}}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        format!("{}/v1/secret/data/via-0?version=1", addrs[active])
    );

    // Invalidation: a token revoked or a policy changed through one replica is refused
    // through every replica as soon as the call returns.
    let (s, b) = call(
        "PUT",
        &format!("{}/v1/sys/policies/acl/reader", addrs[standbys[0]]),
        Some(&root),
        Some(&json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let (s, b) = call(
        "POST",
        &format!("{}/v1/auth/token/create", addrs[standbys[1]]),
        Some(&root),
        Some(&json!({"policies": ["reader"]})),
    );
    assert_eq!(s, 200, "{b}");
    let reader = b["auth"]["client_token"].as_str().unwrap().to_owned();
    let (s, b) = call(
        "POST",
        &format!("{}/v1/auth/token/create", addrs[active]),
        Some(&root),
        Some(&json!({"policies": ["reader"]})),
    );
    assert_eq!(s, 200, "{b}");
    let doomed = b["auth"]["client_token"].as_str().unwrap().to_owned();
    for addr in &addrs {
        assert_eq!(kv_read(addr, &reader, "via-0").0, 200);
        assert_eq!(kv_read(addr, &doomed, "via-0").0, 200);
    }
    let (s, b) = call(
        "POST",
        &format!("{}/v1/auth/token/revoke", addrs[standbys[0]]),
        Some(&root),
        Some(&json!({"token": doomed})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let (s, b) = call(
        "PUT",
        &format!("{}/v1/sys/policies/acl/reader", addrs[standbys[1]]),
        Some(&root),
        Some(&json!({"policy": "path \"secret/data/other\" { capabilities = [\"read\"] }"})),
    );
    assert!(s == 204 || s == 200, "{b}");
    for addr in &addrs {
        assert_eq!(
            kv_read(addr, &doomed, "via-0").0,
            403,
            "revoked token via {addr}"
        );
        assert_eq!(
            kv_read(addr, &reader, "via-0").0,
            403,
            "old policy via {addr}"
        );
    }

    // Fail-over under writes through all three replicas: kill -9 the active; every
    // acknowledged write is present afterwards.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(t, addr)| {
            let (addr, root, stop) = (addr.clone(), root.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                let mut failed = 0u32;
                let mut i = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let key = format!("w-{t}-{i}");
                    match kv_write(&addr, &root, &key, &key) {
                        Some(200) => acknowledged.push(key),
                        _ => {
                            failed += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    i += 1;
                }
                (acknowledged, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    replicas[active].take().unwrap().server.kill9();
    // The first write through a survivor after the kill.
    let survivor = &addrs[standbys[0]];
    let mut recovered = None;
    while killed_at.elapsed() < Duration::from_secs(20) {
        if kv_write(survivor, &root, "probe", "p") == Some(200) {
            recovered = Some(killed_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let recovered = recovered.expect("no write succeeded within 20 s of the kill");
    // Far below the lock TTL (15 s): a dead active's session frees the leadership at
    // once (about 0.3 s in a release build on an idle machine; slower here, debug and
    // beside other tests).
    assert!(
        recovered < Duration::from_secs(10),
        "fail-over took {recovered:?} (the lock TTL is 15 s: a dead active's session frees it)"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Release);
    let mut acknowledged = Vec::new();
    for w in writers {
        let (acked, _failed) = w.join().unwrap();
        acknowledged.extend(acked);
    }
    assert!(
        acknowledged.len() > 20,
        "too few writes: {}",
        acknowledged.len()
    );
    let survivors: Vec<&str> = standbys.iter().map(|&i| addrs[i].as_str()).collect();
    let new_active = standbys[one_active(&survivors)];
    for key in &acknowledged {
        let (s, b) = kv_read(&addrs[standbys[1]], &root, key);
        assert_eq!(s, 200, "acknowledged write {key} is missing: {b}");
        assert_eq!(b["data"]["data"]["v"], key.as_str());
    }
    // The term moved on exactly once per change of leader.
    let term: i64 = psql(&url, &format!("SELECT term FROM {}.ha_leader", schema.name))
        .parse()
        .unwrap();
    assert_eq!(term, 2, "one change of leader, not {}", term - 1);

    // The database ends every session of the active mid-run: it recovers (the same or
    // another replica leads) and writes work again.
    psql(
        &url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \
             (SELECT 'keyhaven/' || holder FROM {}.ha_leader)",
            schema.name
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while kv_write(&addrs[new_active], &root, "after-drop", "x") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no recovery after the sessions were ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    one_active(&survivors);
    for key in acknowledged.iter().take(50) {
        let (s, b) = kv_read(survivors[0], &root, key);
        assert_eq!(s, 200, "{key}: {b}");
    }
    drop(replicas);
}

#[test]
fn a_paused_active_is_fenced_and_a_standby_seals_itself() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "hafence");
    let dir = tempfile::tempdir().unwrap();
    let r0 = start_replica(dir.path(), "r0", &url, &schema.name, "2s");
    let (keys, root) = init_unseal(&r0.addr, 1, 1);
    assert_eq!(one_active(&[&r0.addr]), 0);
    let r1 = start_replica(dir.path(), "r1", &url, &schema.name, "2s");
    unseal(&r1.addr, &keys);
    assert_eq!(one_active(&[&r0.addr, &r1.addr]), 0);
    let (s, b) = call(
        "POST",
        &format!("{}/v1/sys/mounts/secret", r0.addr),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert!(s == 204 || s == 200, "{b}");

    // The active stops (SIGSTOP) past its TTL: the standby takes over.
    signal(&r0.server, rustix::process::Signal::STOP);
    let paused = Instant::now();
    while health(&r1.addr) != Some(200) {
        assert!(
            paused.elapsed() < Duration::from_secs(20),
            "the standby did not take over from a paused active"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not before the TTL (2 s) from the last renewal, which came at most about a second
    // (a third of the TTL, rounded up to the next 0.5 s poll) before the pause.
    assert!(
        paused.elapsed() >= Duration::from_millis(900),
        "taken over before the TTL: {:?}",
        paused.elapsed()
    );
    assert_eq!(kv_write(&r1.addr, &root, "new-leader", "x"), Some(200));

    // A write sent to the paused replica, answered after it resumes: refused, or
    // (once it knows it is a standby) forwarded. Committed exactly when acknowledged.
    let late = {
        let (addr, root) = (r0.addr.clone(), root.clone());
        std::thread::spawn(move || kv_write(&addr, &root, "late", "from-the-old-leader"))
    };
    std::thread::sleep(Duration::from_millis(300));
    signal(&r0.server, rustix::process::Signal::CONT);
    let answer = late.join().unwrap();
    let (s, b) = kv_read(&r1.addr, &root, "late");
    match answer {
        Some(200) => assert_eq!(s, 200, "acknowledged but missing: {b}"),
        other => assert_eq!(s, 404, "refused ({other:?}) but committed: {b}"),
    }
    // The old active learns it is a standby and forwards from then on.
    assert_eq!(one_active(&[&r0.addr, &r1.addr]), 1);
    assert_eq!(kv_write(&r0.addr, &root, "through-old", "y"), Some(200));
    assert_eq!(kv_read(&r1.addr, &root, "through-old").0, 200);
    let term: i64 = psql(&url, &format!("SELECT term FROM {}.ha_leader", schema.name))
        .parse()
        .unwrap();
    assert_eq!(term, 2);

    // sys/seal on a standby seals that replica only, after the active checked the token.
    let (s, _) = call(
        "PUT",
        &format!("{}/v1/sys/seal", r0.addr),
        Some("not-a-token"),
        None,
    );
    assert_eq!(s, 403);
    let (s, b) = call(
        "PUT",
        &format!("{}/v1/sys/seal", r0.addr),
        Some(&root),
        None,
    );
    assert_eq!(s, 204, "{b}");
    assert_eq!(health(&r0.addr), Some(503));
    assert_eq!(health(&r1.addr), Some(200));

    // The client's address crosses a standby, vouched for by an HMAC only replicas can
    // make: a token bound to 127.0.0.2 works from there through the standby (which
    // itself reaches the active from 127.0.0.1), not from 127.0.0.1, and a header forged
    // by a client is ignored.
    for (path, body) in [
        ("sys/auth/approle", json!({"type": "approle"})),
        (
            "auth/approle/role/bound",
            json!({"token_bound_cidrs": ["127.0.0.2/32"], "token_policies": ["default"]}),
        ),
    ] {
        let (s, b) = call(
            "POST",
            &format!("{}/v1/{path}", r1.addr),
            Some(&root),
            Some(&body),
        );
        assert!(s == 200 || s == 204, "{path}: {b}");
    }
    let (_, b) = call(
        "GET",
        &format!("{}/v1/auth/approle/role/bound/role-id", r1.addr),
        Some(&root),
        None,
    );
    let role_id = b["data"]["role_id"].as_str().unwrap().to_owned();
    let (_, b) = call(
        "POST",
        &format!("{}/v1/auth/approle/role/bound/secret-id", r1.addr),
        Some(&root),
        None,
    );
    let secret_id = b["data"]["secret_id"].as_str().unwrap().to_owned();
    let client_from = |from: &str| {
        reqwest::blocking::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    // r0 (sealed above) is unsealed again below; r1 is active here, so r0 is the standby
    // once unsealed.
    unseal(&r0.addr, &keys);
    assert_eq!(one_active(&[&r0.addr, &r1.addr]), 1);
    let login = client_from("127.0.0.2")
        .post(format!("{}/v1/auth/approle/login", r0.addr))
        .json(&json!({"role_id": role_id, "secret_id": secret_id}))
        .send()
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let login: Value = login.json().unwrap();
    let bound = login["auth"]["client_token"].as_str().unwrap().to_owned();
    let lookup_from = |from: &str, addr: &str, forged: Option<&str>| -> u16 {
        let mut rb = client_from(from)
            .get(format!("{addr}/v1/auth/token/lookup-self"))
            .header("X-Vault-Token", &bound);
        if let Some(value) = forged {
            rb = rb.header("X-Keyhaven-Forwarded-For", value);
        }
        rb.send().unwrap().status().as_u16()
    };
    assert_eq!(lookup_from("127.0.0.2", &r0.addr, None), 200);
    assert_eq!(lookup_from("127.0.0.1", &r0.addr, None), 403);
    assert_eq!(lookup_from("127.0.0.2", &r1.addr, None), 200);
    // A fresh time (the test plays a client forging the header; there is no engine here).
    #[allow(
        clippy::disallowed_methods,
        reason = "the wall clock of a forging client"
    )]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = format!("127.0.0.2 {now} {}", "ab".repeat(32));
    assert_eq!(lookup_from("127.0.0.1", &r1.addr, Some(&forged)), 403);
    assert_eq!(lookup_from("127.0.0.1", &r0.addr, Some(&forged)), 403);

    // sys/step-down hands over to the standby.
    let (s, b) = call(
        "PUT",
        &format!("{}/v1/sys/step-down", r0.addr),
        Some(&root),
        None,
    );
    assert_eq!(s, 204, "{b}");
    assert_eq!(one_active(&[&r0.addr, &r1.addr]), 0);
    assert_eq!(kv_read(&r1.addr, &root, "new-leader").0, 200);

    // A standby receives bodies within the listener's limits: past the unauthenticated
    // size only with a token (which the active then checks).
    let big = "x".repeat(100 * 1024);
    assert_eq!(kv_write(&r1.addr, &root, "big", &big), Some(200));
    let (s, b) = crate::support::call_raw(
        "POST",
        &format!("{}/v1/secret/data/big-anonymous", r1.addr),
        None,
        Some(serde_json::to_vec(&json!({"data": {"v": big}})).unwrap()),
    );
    assert_eq!(s, 413, "{b}");
    assert_eq!(kv_read(&r0.addr, &root, "big").0, 200);
}

#[test]
fn the_bao_cli_sessions_through_a_standby_match_openbao() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "habao");
    let dir = tempfile::tempdir().unwrap();
    let r0 = start_replica(dir.path(), "r0", &url, &schema.name, "15s");
    let (keys, root) = init_unseal(&r0.addr, 1, 1);
    let r1 = start_replica(dir.path(), "r1", &url, &schema.name, "15s");
    unseal(&r1.addr, &keys);
    assert_eq!(one_active(&[&r0.addr, &r1.addr]), 0);
    let openbao = crate::bao::OpenBaoDev::start();
    for session in [crate::bao::SESSION, crate::bao::SESSION_V1_TOOLS] {
        let ours = crate::bao::transcript_of(session, &r1.addr, &root);
        let theirs = crate::bao::transcript_of(session, &openbao.addr, "root");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "keyhaven's standby (left) and OpenBao (right) differ");
        }
        assert_eq!(ours.len(), session.len());
    }
    // Every call went through the standby.
    assert_eq!(health(&r1.addr), Some(429));
}

/// Probe every replica in `addrs` without pause (one kept-alive connection each) while
/// `change` runs; every probe *sent after `change` returned* must satisfy `fresh`. So a
/// replica answering from state older than an acknowledged change shows, however
/// short the window.
fn no_stale_answers(
    addrs: &[String],
    probe: &(dyn Fn(&reqwest::blocking::Client, &str) -> (u16, Value) + Sync),
    change: impl FnOnce(),
    fresh: &(dyn Fn(u16, &Value) -> bool + Sync),
    what: &str,
) {
    let stop = AtomicBool::new(false);
    let returned: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::thread::scope(|scope| {
        let probes: Vec<_> = addrs
            .iter()
            .map(|addr| {
                let (stop, returned) = (&stop, &returned);
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let (mut after, mut stale) = (0u32, Vec::new());
                    while !stop.load(Ordering::Acquire) {
                        let sent = Instant::now();
                        let (status, body) = probe(&client, addr);
                        if returned.get().is_some_and(|r| sent > *r) {
                            after += 1;
                            if !fresh(status, &body) {
                                stale.push(format!("{status} {body}"));
                            }
                        }
                    }
                    (addr.clone(), after, stale)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        change();
        returned.set(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Release);
        for p in probes {
            let (addr, after, stale) = p.join().unwrap();
            assert!(after > 0, "{what}: no probe of {addr} after the change");
            assert!(
                stale.is_empty(),
                "{what}: {addr} answered from stale state {} times of {after}: {:?}",
                stale.len(),
                stale.first()
            );
        }
    });
}

/// A probe of [`no_stale_answers`]: `secret/data/app` read with `token`.
fn app_read(token: &str) -> impl Fn(&reqwest::blocking::Client, &str) -> (u16, Value) + Sync + '_ {
    move |c, addr| probe_call(c, "GET", &format!("{addr}/v1/secret/data/app"), token, None)
}

fn probe_call(
    client: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut rb = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Wait until the standby `replica` answers requests without effects itself.
fn await_standby_reads(replica: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica
        .server
        .logs()
        .contains("standby reads: answering requests without effects")
    {
        assert!(
            Instant::now() < deadline,
            "{} never served reads: {}",
            replica.addr,
            replica.server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn encrypt(addr: &str, token: &str) -> Option<(u16, Value)> {
    try_call(
        "POST",
        &format!("{addr}/v1/transit/encrypt/k"),
        token,
        Some(&json!({"plaintext": "aGVsbG8="})),
    )
}

/// A token made through `addr` with `body` (`auth/token/create`).
fn create_token(addr: &str, root: &str, body: &Value) -> String {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/auth/token/create"),
        Some(root),
        Some(body),
    );
    assert_eq!(s, 200, "{b}");
    b["auth"]["client_token"].as_str().unwrap().to_owned()
}

/// Revoke `token` through `addr`.
fn revoke_token(addr: &str, root: &str, token: &str) {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/auth/token/revoke"),
        Some(root),
        Some(&json!({ "token": token })),
    );
    assert!(s == 200 || s == 204, "{b}");
}

#[test]
fn standbys_answer_reads_themselves_and_never_from_stale_state() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "hareads");
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Replica> = (0..3)
        .map(|i| start_replica(dir.path(), &format!("r{i}"), &url, &schema.name, "15s"))
        .collect();
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let (keys, root) = init_unseal(&addrs[0], 1, 1);
    for addr in &addrs[1..] {
        unseal(addr, &keys);
    }
    let active = one_active(&addr_refs);
    let standbys: Vec<usize> = (0..3).filter(|&i| i != active).collect();
    let at = |i: usize, path: &str| format!("{}/v1/{path}", addrs[i]);
    // A call with the root token through replica `i` that must succeed.
    let root_ok = |method: &str, i: usize, path: &str, body: Option<&Value>| {
        let (s, b) = call(method, &at(i, path), Some(&root), body);
        assert!(s == 200 || s == 204, "{method} {path}: {s} {b}");
    };
    let reader_policy = json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }\n\
                                         path \"transit/encrypt/k\" { capabilities = [\"update\"] }"});
    for (path, body) in [
        ("sys/mounts/secret", json!({"type": "kv-v2"})),
        ("sys/mounts/transit", json!({"type": "transit"})),
        ("transit/keys/k", json!({})),
        ("sys/policies/acl/reader", reader_policy.clone()),
        ("secret/data/app", json!({"data": {"v": "one"}})),
    ] {
        root_ok("POST", active, path, Some(&body));
    }
    // Enough mounts that a standby takes a while to reload its state after a mount or
    // key change: a standby answering before it applied a change would show.
    for m in 0..120 {
        root_ok(
            "POST",
            active,
            &format!("sys/mounts/extra-{m}"),
            Some(&json!({"type": "kv-v2"})),
        );
    }
    for &i in &standbys {
        await_standby_reads(&replicas[i]);
    }

    // Served by the standbys themselves: they answer while the active is paused.
    let reader = create_token(&addrs[active], &root, &json!({"policies": ["reader"]}));
    signal(&replicas[active].server, rustix::process::Signal::STOP);
    for &i in &standbys {
        let (s, b) = try_call("GET", &at(i, "secret/data/app"), &reader, None)
            .expect("a standby did not answer a read while the active was paused");
        assert_eq!((s, &b["data"]["data"]["v"]), (200, &json!("one")), "{b}");
        let (s, b) = encrypt(&addrs[i], &reader).expect("no answer to encrypt");
        assert_eq!(s, 200, "{b}");
        assert!(
            b["data"]["ciphertext"]
                .as_str()
                .unwrap()
                .starts_with("vault:v1:")
        );
        let (s, b) = try_call("GET", &at(i, "auth/token/lookup-self"), &reader, None)
            .expect("no answer to lookup-self");
        assert_eq!(s, 200, "{b}");
        // The standby's own audit device, metrics and logs are not involved: a request
        // with effects still goes to the (paused) active.
    }
    signal(&replicas[active].server, rustix::process::Signal::CONT);
    assert_eq!(one_active(&addr_refs), active);
    // Each replica's own metrics say which one is active.
    for (i, addr) in addrs.iter().enumerate() {
        let (s, b) = call("GET", &format!("{addr}/v1/sys/metrics"), Some(&root), None);
        assert_eq!(s, 200, "{b}");
        let gauge = b["Gauges"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["Name"] == "vault.core.active"))
            .unwrap_or_else(|| panic!("no vault.core.active via {addr}: {b}"));
        let want = if i == active { 1.0 } else { 0.0 };
        assert_eq!(
            gauge["Value"].as_f64(),
            Some(want),
            "vault.core.active via {addr}"
        );
    }

    // Changes made through each replica in turn are in force on every replica as
    // soon as the call returns, although the standbys had cached what they changed.
    for round in 0..3 {
        let via = round % 3;
        // A token, cached by every replica, revoked.
        let doomed = create_token(&addrs[active], &root, &json!({"policies": ["reader"]}));
        no_stale_answers(
            &addrs,
            &app_read(&doomed),
            || {
                revoke_token(&addrs[via], &root, &doomed);
            },
            &|s, _| s == 403,
            &format!("round {round}: a revoked token"),
        );
        // A transit key, cached by every replica, rotated: the next encryption anywhere
        // uses the new version.
        let version = format!("vault:v{}:", round + 2);
        no_stale_answers(
            &addrs,
            &|c, addr| {
                probe_call(
                    c,
                    "POST",
                    &format!("{addr}/v1/transit/encrypt/k"),
                    &reader,
                    Some(&json!({"plaintext": "aGVsbG8="})),
                )
            },
            || {
                root_ok("POST", via, "transit/keys/k/rotate", None);
            },
            &|s, b| {
                s == 200
                    && b["data"]["ciphertext"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&version))
            },
            &format!("round {round}: a rotated key"),
        );
        // The policy, cached compiled by every replica, narrowed, then restored.
        no_stale_answers(
            &addrs,
            &app_read(&reader),
            || {
                root_ok(
                    "PUT",
                    via,
                    "sys/policies/acl/reader",
                    Some(
                        &json!({"policy": "path \"secret/data/other\" { capabilities = [\"read\"] }"}),
                    ),
                );
            },
            &|s, _| s == 403,
            &format!("round {round}: a narrowed policy"),
        );
        root_ok("PUT", via, "sys/policies/acl/reader", Some(&reader_policy));
        // A secret overwritten: read back everywhere at once (KV is never cached).
        let value = format!("v{round}");
        no_stale_answers(
            &addrs,
            &app_read(&reader),
            || assert_eq!(kv_write(&addrs[via], &root, "app", &value), Some(200)),
            &|s, b| s == 200 && b["data"]["data"]["v"] == value.as_str(),
            &format!("round {round}: an overwritten secret"),
        );
    }

    // A paused standby (SIGSTOP) cannot acknowledge a change: the revocation returns
    // only once the standby's read lease, revoked by the active, has run out, and the
    // standby, resumed, answers nothing from its old state.
    let paused = standbys[0];
    let doomed = create_token(&addrs[active], &root, &json!({"policies": ["reader"]}));
    for addr in &addrs {
        assert_eq!(kv_read(addr, &doomed, "app").0, 200);
    }
    // Both standbys hold a read lease before one is paused (a slow reload may have cost
    // one its lease, and it takes a new one).
    let leases = || {
        psql(
            &url,
            &format!(
                "SELECT count(*) FROM {}.ha_readers WHERE valid_until > clock_timestamp() AND NOT revoked",
                schema.name
            ),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases() != "2" {
        assert!(
            Instant::now() < deadline,
            "the standbys never both held a lease"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answering = |i: usize| {
        replicas[i]
            .server
            .logs()
            .matches("standby reads: answering requests without effects")
            .count()
    };
    let leases_before = answering(paused);
    let mut took = Duration::ZERO;
    no_stale_answers(
        &addrs,
        &app_read(&doomed),
        || {
            signal(&replicas[paused].server, rustix::process::Signal::STOP);
            let started = Instant::now();
            revoke_token(&addrs[active], &root, &doomed);
            took = started.elapsed();
            signal(&replicas[paused].server, rustix::process::Signal::CONT);
        },
        &|s, _| s == 403,
        "a token revoked while a standby was paused",
    );
    assert!(
        took >= Duration::from_millis(500),
        "the revocation did not wait for the paused standby: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the revocation waited more than a read lease: {took:?}"
    );
    // The standby takes a new lease and answers reads itself again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answering(paused) <= leases_before {
        assert!(
            Instant::now() < deadline,
            "{} did not take a new read lease: {}",
            addrs[paused],
            replicas[paused].server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The connections carrying the announcements are cut: the standbys forward (or
    // reload their state) until they listen again; nothing stale is answered meanwhile.
    let nodes = format!("{}.ha_nodes", schema.name);
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql(&url, &format!("SELECT count(*) FROM {nodes}")) != "3" {
        assert!(Instant::now() < deadline, "the replicas never echoed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = || {
        psql(
            &url,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name IN (SELECT 'keyhaven/' || id FROM {nodes}) \
                 AND state = 'idle' \
                 AND (query LIKE '%LISTEN%' OR query LIKE 'NOTIFY %')"
            ),
        )
    };
    let doomed = create_token(&addrs[active], &root, &json!({"policies": ["reader"]}));
    for addr in &addrs {
        assert_eq!(kv_read(addr, &doomed, "app").0, 200);
    }
    let before: Vec<usize> = (0..3).map(&answering).collect();
    assert_eq!(
        cut(),
        "3",
        "one listener per standby, and the active's for acknowledgements"
    );
    no_stale_answers(
        &addrs,
        &app_read(&doomed),
        || {
            revoke_token(&addrs[active], &root, &doomed);
        },
        &|s, _| s == 403,
        "a token revoked while the standbys' listeners were cut",
    );
    // They listen again, reload, and answer reads themselves again.
    for &i in &standbys {
        let deadline = Instant::now() + Duration::from_secs(30);
        while answering(i) <= before[i] {
            assert!(
                Instant::now() < deadline,
                "{} did not listen again",
                addrs[i]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    signal(&replicas[active].server, rustix::process::Signal::STOP);
    for &i in &standbys {
        let (s, b) = try_call("GET", &at(i, "secret/data/app"), &reader, None)
            .expect("a standby did not answer a read after listening again");
        assert_eq!(s, 200, "{b}");
    }
    signal(&replicas[active].server, rustix::process::Signal::CONT);

    // A disabled key refuses on every replica at once.
    root_ok("POST", standbys[0], "transit/keys/k/disable", None);
    for addr in &addrs {
        let (s, b) = encrypt(addr, &reader).unwrap();
        assert_ne!(s, 200, "a disabled key encrypted via {addr}: {b}");
        assert!(b.to_string().contains("disabled"), "{b}");
    }

    // A limited-use token spends its use on the active: a standby forwards it.
    let once = create_token(
        &addrs[active],
        &root,
        &json!({"policies": ["reader"], "num_uses": 1}),
    );
    assert_eq!(kv_read(&addrs[standbys[0]], &once, "app").0, 200);
    assert_eq!(kv_read(&addrs[standbys[1]], &once, "app").0, 403);
    assert_eq!(kv_read(&addrs[active], &once, "app").0, 403);

    // A mount disabled through a standby is gone everywhere.
    root_ok("DELETE", standbys[1], "sys/mounts/secret", None);
    for addr in &addrs {
        let (s, b) = kv_read(addr, &root, "app");
        assert_eq!(s, 404, "a disabled mount answered via {addr}: {b}");
    }
    drop(replicas);
}
