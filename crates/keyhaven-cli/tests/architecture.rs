//! The crate graph obeys the invariants in ARCHITECTURE.md, checked with `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Our crates and the only crates of ours each may depend on (normal and build deps).
const ALLOWED: &[(&str, &[&str])] = &[
    ("keyhaven-crypto", &[]),
    ("keyhaven-types", &[]),
    ("keyhaven-storage", &[]),
    ("keyhaven-storage-sql", &["keyhaven-storage"]),
    (
        "keyhaven-engine",
        &["keyhaven-crypto", "keyhaven-storage", "keyhaven-types"],
    ),
    (
        "keyhaven-server",
        &[
            "keyhaven-engine",
            "keyhaven-storage",
            "keyhaven-storage-sql",
            "keyhaven-crypto",
            "keyhaven-types",
        ],
    ),
    ("keyhaven-client", &["keyhaven-types", "keyhaven-crypto"]),
    (
        "keyhaven-k8s",
        &["keyhaven-client", "keyhaven-types", "keyhaven-scan"],
    ),
    (
        "keyhaven-envelope",
        &["keyhaven-crypto", "keyhaven-client", "keyhaven-types"],
    ),
    ("keyhaven-scan", &["keyhaven-types"]),
    (
        "keyhaven-cli",
        &[
            "keyhaven-server",
            "keyhaven-client",
            "keyhaven-types",
            "keyhaven-scan",
            "keyhaven-k8s",
            "keyhaven-envelope",
            "keyhaven-crypto",
            "keyhaven-engine",
            "keyhaven-storage",
        ],
    ),
];

/// External crates that mark a layer: only the listed crates of ours may use them.
const LAYER_CRATES: &[(&str, &[&str])] = &[
    ("axum", &["keyhaven-server"]),
    // The admission webhook serves HTTPS with hyper directly (design note 0013).
    ("hyper", &["keyhaven-server", "keyhaven-k8s"]),
    ("tonic", &["keyhaven-k8s"]),
    ("rusqlite", &["keyhaven-storage-sql"]),
    // The server holds the PostgreSQL plugin of the `database/` secrets engine.
    (
        "tokio-postgres",
        &["keyhaven-storage-sql", "keyhaven-server"],
    ),
    (
        "reqwest",
        &["keyhaven-client", "keyhaven-k8s", "keyhaven-server"],
    ),
];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// crate → (our deps, external deps), normal and build kinds only.
fn graph() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let meta = metadata();
    let mut g = BTreeMap::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap().to_owned();
        let mut ours = BTreeSet::new();
        let mut external = BTreeSet::new();
        for dep in pkg["dependencies"].as_array().unwrap() {
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            let dname = dep["name"].as_str().unwrap().to_owned();
            if dname.starts_with("keyhaven-") {
                ours.insert(dname)
            } else {
                external.insert(dname)
            };
        }
        g.insert(name, (ours, external));
    }
    g
}

#[test]
fn every_crate_depends_only_on_what_the_architecture_allows() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (name, (ours, _)) in graph() {
        let permitted = allowed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} is not in ARCHITECTURE.md's table"));
        for dep in &ours {
            assert!(
                permitted.contains(&dep.as_str()),
                "{name} must not depend on {dep}"
            );
        }
    }
}

#[test]
fn nothing_depends_on_the_binary_and_only_it_uses_server_or_k8s() {
    for (name, (ours, _)) in graph() {
        assert!(
            !ours.contains("keyhaven-cli"),
            "{name} depends on keyhaven-cli"
        );
        if name != "keyhaven-cli" {
            assert!(
                !ours.contains("keyhaven-server") && !ours.contains("keyhaven-k8s"),
                "{name} depends on server or k8s"
            );
        }
    }
}

#[test]
fn protocol_and_driver_crates_stay_in_their_layer() {
    for (name, (_, external)) in graph() {
        for (layer_crate, owners) in LAYER_CRATES {
            if external.contains(*layer_crate) {
                assert!(
                    owners.contains(&name.as_str()),
                    "{name} uses {layer_crate}, reserved for {owners:?}"
                );
            }
        }
    }
}
