//! Unit tests of parsing and evaluation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Map, Value, json};

use super::*;
use crate::request::Operation::{self, Create, Delete, List, Patch, Read, Update};

fn acl(policies: &[(&str, &str)]) -> Acl {
    let parsed: Vec<(String, Policy)> = policies
        .iter()
        .map(|(n, t)| ((*n).to_owned(), Policy::parse(t).unwrap()))
        .collect();
    Acl::compile(parsed.iter().map(|(n, p)| (n.as_str(), p)))
}

fn data(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn allowed(a: &Acl, op: Operation, path: &str) -> bool {
    let sudo = sudo_of(op, path);
    let allowed = a.authorize(op, path, &Map::new(), sudo).allowed;
    assert_eq!(
        a.allows_wrapped(op, path, &Map::new(), sudo, None),
        allowed,
        "{op} {path}: the request path's answer and the explained decision differ"
    );
    allowed
}

/// The request path asks `allows_wrapped`; `sys/policies/explain`-style callers get
/// `authorize_wrapped`'s decision. Both must answer the same for every kind of rule,
/// operation, parameter, wrapping TTL and sudo requirement.
#[test]
fn the_request_path_answer_is_the_decisions_answer() {
    let a = acl(&[
        (
            "app",
            r#"
            path "kv/data/*" { capabilities = ["read", "list", "update"] }
            path "kv/data/secret" { capabilities = ["deny"] }
            path "transit/encrypt/*" {
              capabilities = ["update"]
              allowed_parameters = { "plaintext" = [], "context" = ["a", "b*"] }
              denied_parameters = { key_version = [1, 2] }
            }
            path "wrapped/*" {
              capabilities = ["read", "update"]
              min_wrapping_ttl = "1m"
              max_wrapping_ttl = "1h"
            }
            path "sys/rotate" { capabilities = ["update", "sudo"] }
            path "sys/seal" { capabilities = ["update"] }
            "#,
        ),
        (
            "other",
            r#"path "kv/data/shared" { capabilities = ["create"] }"#,
        ),
    ]);
    let paths = [
        "kv/data/a",
        "kv/data/secret",
        "kv/data/shared",
        "kv/data",
        "transit/encrypt/k",
        "wrapped/x",
        "sys/rotate",
        "sys/seal",
        "nothing/here",
        "/kv/data/a",
    ];
    let ops = [Read, List, Create, Update, Patch, Delete];
    let bodies = [
        json!({}),
        json!({"plaintext": "aGk="}),
        json!({"plaintext": "aGk=", "context": "b1"}),
        json!({"plaintext": "aGk=", "context": "c"}),
        json!({"plaintext": "aGk=", "key_version": 1}),
        json!({"other": true}),
    ];
    let mut seen = [0usize; 2];
    for root in [a.clone(), Acl::root()] {
        for path in paths {
            for op in ops {
                for body in &bodies {
                    let body = data(body.clone());
                    for sudo in [false, true] {
                        for wrap in [None, Some(30), Some(600), Some(7_200)] {
                            let decision = root.authorize_wrapped(op, path, &body, sudo, wrap);
                            assert_eq!(
                                root.allows_wrapped(op, path, &body, sudo, wrap),
                                decision.allowed,
                                "{op} {path} {body:?} sudo={sudo} wrap={wrap:?}: {}",
                                decision.reason
                            );
                            seen[usize::from(decision.allowed)] += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        seen[0] > 100 && seen[1] > 100,
        "both answers are exercised: {seen:?}"
    );
    let root = Acl::root().authorize(Read, "anything", &Map::new(), true);
    assert_eq!(root.reason, "allowed by policy \"root\"");
    assert_eq!(root.policy.as_deref(), Some("root"));
    assert_eq!(root.rule, None);
}

/// Whether the built-in mounts' route tables mark `op` on `path` root-protected (the
/// core asks the mounted table the same way).
fn sudo_of(op: Operation, path: &str) -> bool {
    let (table, rel) = if let Some(rel) = path.strip_prefix("sys/") {
        (crate::sys::ROUTES, rel)
    } else if let Some(rel) = path.strip_prefix("auth/token/") {
        (crate::token::ROUTES, rel)
    } else {
        return false;
    };
    crate::route::match_route(table, op, rel).is_some_and(|m| m.route.sudo)
}

fn err(text: &str) -> PolicyParseError {
    Policy::parse(text).unwrap_err()
}

// ---- parsing ----

#[test]
fn parses_hcl_blocks_with_every_supported_key() {
    let p = Policy::parse(
        r#"
        name = "ignored"
        # comment
        path "/secret/data/team-a/*" {
          capabilities = ["read", "list", "scan"]
          comment = "team a"
        }
        path "transit/encrypt/+" {
          capabilities = ["update"]
          allowed_parameters = { "plaintext" = [], "Context" = ["a", "b*"] }
          denied_parameters = { key_version = [1, 2] }
          required_parameters = ["plaintext"]
        }
        "#,
    )
    .unwrap();
    let rules = p.rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].path, "secret/data/team-a/*");
    assert_eq!(
        rules[0].caps,
        Caps::READ.union(Caps::LIST).union(Caps::SCAN)
    );
    assert_eq!(rules[0].line, Some(4));
    assert_eq!(
        rules[1].allowed_parameters["context"],
        vec![json!("a"), json!("b*")]
    );
    assert!(rules[1].allowed_parameters["plaintext"].is_empty());
    assert_eq!(
        rules[1].denied_parameters["key_version"],
        vec![json!(1), json!(2)]
    );
    assert_eq!(rules[1].required_parameters, vec!["plaintext".to_owned()]);
}

#[test]
fn parses_the_json_form_like_the_hcl_form() {
    let hcl = Policy::parse(
        r#"path "secret/*" { capabilities = ["read"] }
           path "sys/audit" { capabilities = ["deny"] }"#,
    )
    .unwrap();
    let json = Policy::parse(
        r#"{"path": {"secret/*": {"capabilities": ["read"]},
                     "sys/audit": {"capabilities": ["deny"]}}}"#,
    )
    .unwrap();
    let strip = |p: &Policy| {
        p.rules()
            .iter()
            .map(|r| (r.path.clone(), r.caps))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&hcl), strip(&json));
    // A list of path objects is accepted too.
    let list = Policy::parse(r#"{"path": [{"a/*": {"capabilities": ["list"]}}]}"#).unwrap();
    assert_eq!(list.rules()[0].caps, Caps::LIST);
}

#[test]
fn old_policy_shorthand_maps_to_capabilities() {
    let p = Policy::parse(r#"path "a" { policy = "write" }"#).unwrap();
    assert_eq!(
        p.rules()[0].caps.names(),
        ["create", "delete", "list", "read", "update"]
    );
    let p = Policy::parse(r#"path "a" { policy = "sudo" }"#).unwrap();
    assert!(p.rules()[0].caps.contains(Caps::SUDO));
}

#[test]
fn deny_in_a_rule_drops_everything_else_in_it() {
    let p = Policy::parse(
        r#"path "a" {
             capabilities = ["read", "deny"]
             required_parameters = ["x"]
           }"#,
    )
    .unwrap();
    assert_eq!(p.rules()[0].caps, Caps::DENY);
    assert!(p.rules()[0].required_parameters.is_empty());
}

#[test]
fn unknown_capability_is_named_with_its_line() {
    let e = err(
        "path \"a\" {\n  capabilities = [\"read\"]\n}\npath \"b\" {\n  capabilities = [\"raed\"]\n}\n",
    );
    assert_eq!(e.line(), Some(5));
    assert!(e.message().contains("invalid capability \"raed\""), "{e}");
    assert!(e.message().contains("path \"b\""), "{e}");
    assert!(
        err(r#"path "a" { capabilities = ["root"] }"#)
            .message()
            .contains("invalid capability \"root\"")
    );
}

#[test]
fn unknown_and_unsupported_keys_are_refused_by_name() {
    let e = err("path \"a\" {\n  capabilities = [\"read\"]\n  capabilites = []\n}");
    assert!(e.message().contains("unknown key \"capabilites\""), "{e}");
    assert_eq!(e.line(), Some(3));
    let e = err(r#"path "a" { expiration = "2030-01-01T00:00:00Z" }"#);
    assert!(
        e.message().contains("\"expiration\" is not supported"),
        "{e}"
    );
    let e = err("\n\nfoo = 1");
    assert!(e.message().contains("unknown key \"foo\""), "{e}");
    assert_eq!(e.line(), Some(3));
    let e = err(r#"resource "a" { }"#);
    assert!(e.message().contains("unknown block \"resource\""), "{e}");
    let e = err(r#"{"path": {"a": {"capabilities": ["read"], "allowed": {}}}}"#);
    assert!(e.message().contains("unknown key \"allowed\""), "{e}");
    let e = err(r#"{"paths": {}}"#);
    assert!(e.message().contains("unknown key \"paths\""), "{e}");
    let e = err("path \"a\" {\n capabilities = [\"read\"]\n capabilities = [\"list\"]\n}");
    assert!(e.message().contains("redefined attribute"), "{e}");
    assert_eq!(e.line(), Some(3));
}

#[test]
fn bad_globs_and_computed_values_are_refused() {
    for (text, want) in [
        (
            r#"path "a/*/b" { }"#,
            "'*' is only allowed once, at the end",
        ),
        (r#"path "a/**" { }"#, "'*' is only allowed once, at the end"),
        (r#"path "a/+*" { }"#, "'+*' is forbidden"),
        (r#"path "" { }"#, "the path is empty"),
        (r#"path "secret/{{identity.entity.id}}/*" { }"#, "templated"),
        (r#"path "a" { capabilities = var.caps }"#, "only literal"),
        (r#"path "a" { capabilities = ["${x}"] }"#, "templates"),
        (r#"path "a" "b" { }"#, "exactly one label"),
        (r#"path "a" { capabilities = [1] }"#, "list of strings"),
        (
            r#"path "a" { allowed_parameters = ["x"] }"#,
            "must be an object",
        ),
    ] {
        let e = err(text);
        assert!(e.message().contains(want), "{text}: {e}");
    }
}

#[test]
fn syntax_errors_carry_the_line_and_do_not_echo_the_input() {
    let secretish = "x".repeat(5000);
    let text = format!("path \"a\" {{\n  capabilities = [\"read\"\n}}\n# {secretish}");
    let e = err(&text);
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.to_string().len() < 400, "{e}");
    let e = err(&format!("{{\"path\": {{\"{secretish}\": 3}}}}"));
    assert!(e.to_string().len() < 400, "{e}");
    assert!(
        err(&" ".repeat(MAX_POLICY_BYTES + 1))
            .message()
            .contains("larger")
    );
}

#[test]
fn the_default_policy_parses() {
    let p = Policy::parse(DEFAULT_POLICY).unwrap();
    assert!(p.rules().iter().any(|r| r.path == "auth/token/lookup-self"));
}

// ---- globs and precedence ----

#[test]
fn deny_by_default_and_exact_paths() {
    let a = acl(&[("p", r#"path "secret/data/app" { capabilities = ["read"] }"#)]);
    assert!(allowed(&a, Read, "secret/data/app"));
    assert!(allowed(&a, Read, "/secret/data/app"));
    assert!(!allowed(&a, Read, "secret/data/app2"));
    assert!(!allowed(&a, Read, "secret/data"));
    assert!(!allowed(&a, Update, "secret/data/app"));
    assert!(!allowed(&Acl::default(), Read, "anything"));
}

#[test]
fn trailing_star_is_a_prefix_match() {
    let a = acl(&[(
        "p",
        r#"path "secret/data/team-a*" { capabilities = ["read"] }"#,
    )]);
    assert!(allowed(&a, Read, "secret/data/team-a"));
    assert!(allowed(&a, Read, "secret/data/team-a/x/y"));
    assert!(allowed(&a, Read, "secret/data/team-ab"));
    assert!(!allowed(&a, Read, "secret/data/team-"));
}

#[test]
fn plus_matches_exactly_one_segment() {
    let a = acl(&[("p", r#"path "secret/+/config" { capabilities = ["read"] }"#)]);
    assert!(allowed(&a, Read, "secret/a/config"));
    assert!(!allowed(&a, Read, "secret/a/b/config"));
    assert!(!allowed(&a, Read, "secret/config"));
    assert!(!allowed(&a, Read, "secret/a/config/x"));
    let a = acl(&[("p", r#"path "secret/+/app*" { capabilities = ["read"] }"#)]);
    assert!(allowed(&a, Read, "secret/a/app"));
    assert!(allowed(&a, Read, "secret/a/app2/x"));
    assert!(!allowed(&a, Read, "secret/a/b/app"));
    let a = acl(&[("p", r#"path "+/data/*" { capabilities = ["read"] }"#)]);
    assert!(allowed(&a, Read, "kv/data/x"));
    assert!(!allowed(&a, Read, "kv/metadata/x"));
}

#[test]
fn the_most_specific_rule_wins_in_vaults_order() {
    // (more specific, less specific, a path both match)
    for (hi, lo, path) in [
        ("secret/data/app", "secret/data/*", "secret/data/app"),
        ("secret/data/app*", "secret/data/*", "secret/data/app1"),
        ("foo/a*", "foo/+", "foo/ab"),
        ("foo/+", "foo/*", "foo/x"),
        ("foo/bar/+/baz", "foo/+/bar/baz", "foo/bar/bar/baz"),
        ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),
        ("foo/bar/+/baz", "foo/+/+/baz", "foo/bar/x/baz"),
        ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),
    ] {
        let text = format!(
            "path \"{hi}\" {{ capabilities = [\"read\"] }}\n\
             path \"{lo}\" {{ capabilities = [\"deny\"] }}"
        );
        let a = acl(&[("p", &text)]);
        let d = a.authorize(Read, path, &Map::new(), sudo_of(Read, path));
        assert!(d.allowed, "{hi} should beat {lo} on {path}: {}", d.reason);
        assert_eq!(d.rule.as_deref(), Some(hi));
        // And the other way round, across two policies.
        let a = acl(&[
            (
                "a",
                &format!("path \"{hi}\" {{ capabilities = [\"deny\"] }}"),
            ),
            (
                "b",
                &format!("path \"{lo}\" {{ capabilities = [\"read\"] }}"),
            ),
        ]);
        assert!(!allowed(&a, Read, path), "{hi} should beat {lo} on {path}");
    }
}

#[test]
fn capabilities_merge_across_policies_and_deny_wins_on_the_same_path() {
    let a = acl(&[
        ("r", r#"path "kv/*" { capabilities = ["read"] }"#),
        ("w", r#"path "kv/*" { capabilities = ["update"] }"#),
    ]);
    assert!(allowed(&a, Read, "kv/x"));
    assert!(allowed(&a, Update, "kv/x"));
    assert_eq!(a.capabilities("kv/x"), ["read", "update"]);

    let a = acl(&[
        ("a", r#"path "kv/*" { capabilities = ["read", "sudo"] }"#),
        ("b", r#"path "kv/*" { capabilities = ["deny"] }"#),
        ("c", r#"path "kv/*" { capabilities = ["update"] }"#),
    ]);
    let d = a.authorize(Read, "kv/x", &Map::new(), sudo_of(Read, "kv/x"));
    assert!(!d.allowed);
    assert_eq!(d.reason, r#"denied by policy "b", rule path "kv/*" (deny)"#);
    assert_eq!(d.policy.as_deref(), Some("b"));
    assert_eq!(a.capabilities("kv/x"), ["deny"]);
}

#[test]
fn list_uses_the_folder_and_the_rule_without_its_slash() {
    let a = acl(&[(
        "p",
        r#"path "kv/metadata/team" { capabilities = ["list"] }"#,
    )]);
    assert!(allowed(&a, List, "kv/metadata/team/"));
    assert!(allowed(&a, List, "kv/metadata/team"));
    assert!(!allowed(&a, Read, "kv/metadata/team/"));
    let a = acl(&[(
        "p",
        r#"path "kv/metadata/team/*" { capabilities = ["list"] }"#,
    )]);
    // A list of `team` is a list of the folder `team/`.
    assert!(allowed(&a, List, "kv/metadata/team"));
    assert!(!allowed(&a, Read, "kv/metadata/team"));
    let a = acl(&[("p", r#"path "kv/metadata/+" { capabilities = ["list"] }"#)]);
    assert!(allowed(&a, List, "kv/metadata/team/"));
}

#[test]
fn operations_map_to_their_capabilities() {
    for (cap, op) in [
        ("read", Read),
        ("create", Create),
        ("update", Update),
        ("patch", Patch),
        ("delete", Delete),
        ("list", List),
    ] {
        let a = acl(&[(
            "p",
            &format!("path \"x/*\" {{ capabilities = [\"{cap}\"] }}"),
        )]);
        for other in [Read, Create, Update, Patch, Delete, List] {
            assert_eq!(allowed(&a, other, "x/y"), other == op, "{cap} vs {other}");
        }
    }
    let a = acl(&[("p", r#"path "x/*" { capabilities = ["scan"] }"#)]);
    for op in [Read, Create, Update, Patch, Delete, List] {
        assert!(!allowed(&a, op, "x/y"));
    }
}

// ---- parameters ----

#[test]
fn allowed_parameters_limit_names_and_values() {
    let a = acl(&[(
        "p",
        r#"path "auth/token/create" {
             capabilities = ["update"]
             allowed_parameters = { "ttl" = [], "policies" = ["team-*", "default"] }
           }"#,
    )]);
    let ok = |v: Value| {
        a.authorize(
            Update,
            "auth/token/create",
            &data(v),
            sudo_of(Update, "auth/token/create"),
        )
    };
    assert!(ok(json!({})).allowed);
    assert!(ok(json!({"ttl": "1h"})).allowed);
    assert!(
        ok(json!({"TTL": "1h"})).allowed,
        "names are case-insensitive"
    );
    assert!(ok(json!({"policies": "team-a"})).allowed);
    assert!(ok(json!({"policies": ["team-a", "default"]})).allowed);
    let d = ok(json!({"policies": ["team-a", "root"]}));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        r#"denied by policy "p", rule path "auth/token/create": parameter "policies" has a value that is not allowed"#
    );
    let d = ok(json!({"num_uses": 1}));
    assert_eq!(
        d.reason,
        r#"denied by policy "p", rule path "auth/token/create": parameter "num_uses" is not allowed"#
    );
    // `*` lets every other name through, with any value.
    let a = acl(&[(
        "p",
        r#"path "x" {
             capabilities = ["update"]
             allowed_parameters = { "*" = [], "mode" = ["a"] }
           }"#,
    )]);
    assert!(
        a.authorize(
            Update,
            "x",
            &data(json!({"other": 1})),
            sudo_of(Update, "x")
        )
        .allowed
    );
    assert!(
        !a.authorize(Update, "x", &data(json!({"mode": "b"})), false)
            .allowed
    );
}

#[test]
fn denied_parameters_refuse_names_or_values() {
    let a = acl(&[(
        "p",
        r#"path "x" {
             capabilities = ["create", "update", "patch"]
             denied_parameters = { "force" = [], "mode" = ["*-unsafe", 3] }
           }"#,
    )]);
    let check = |v: Value| {
        a.authorize(Update, "x", &data(v), sudo_of(Update, "x"))
            .allowed
    };
    assert!(check(json!({"mode": "safe"})));
    assert!(!check(json!({"force": false})));
    assert!(!check(json!({"mode": "very-unsafe"})));
    assert!(!check(json!({"mode": 3})));
    assert!(!check(json!({"mode": 3.0})));
    assert!(!check(json!({"mode": ["safe", "x-unsafe"]})));
    assert!(
        !a.authorize(Patch, "x", &data(json!({"force": 1})), sudo_of(Patch, "x"))
            .allowed
    );
    // Delete and list carry no body constraints.
    let a = acl(&[(
        "p",
        r#"path "x" {
             capabilities = ["delete"]
             denied_parameters = { "*" = [] }
           }"#,
    )]);
    assert!(
        a.authorize(Delete, "x", &data(json!({"a": 1})), sudo_of(Delete, "x"))
            .allowed
    );
}

/// Regression: `"p1,admin2"` and `" admin2"` passed a `denied_parameters` rule on
/// `policies`, because the token store splits the string at commas and trims the parts
/// after the check. Values are now judged as what they become.
#[test]
fn denied_parameters_bypass_through_comma_lists_and_padding() {
    let a = acl(&[(
        "p",
        r#"path "auth/token/create" {
             capabilities = ["update"]
             denied_parameters = { "policies" = ["admin2", "root-*"] }
           }"#,
    )]);
    let check = |v: Value| {
        a.authorize(
            Update,
            "auth/token/create",
            &data(v),
            sudo_of(Update, "auth/token/create"),
        )
        .allowed
    };
    assert!(check(json!({"policies": "p1,p2"})));
    assert!(check(json!({"policies": ["p1", "p2"]})));
    for bad in [
        json!("admin2"),
        json!("p1,admin2"),
        json!("p1, admin2 ,p3"),
        json!(" admin2"),
        json!("admin2 "),
        json!("p1,root-x"),
        json!([" admin2"]),
        json!(["p1", "p2,admin2"]),
    ] {
        let d = a.authorize(
            Update,
            "auth/token/create",
            &data(json!({ "policies": bad })),
            false,
        );
        assert!(!d.allowed, "{bad} passed the denied_parameters rule");
        assert!(
            d.reason.contains("parameter \"policies\" is denied"),
            "{}",
            d.reason
        );
    }
}

/// The allowed side of the same normalization: a string that the handler splits or trims
/// passes only if every part is allowed; a glob never admits a comma-separated value as a
/// whole.
#[test]
fn allowed_parameters_judge_comma_lists_part_by_part() {
    let a = acl(&[(
        "p",
        r#"path "auth/token/create" {
             capabilities = ["update"]
             allowed_parameters = { "policies" = ["team-*", "default", "a,b"] }
           }"#,
    )]);
    let check = |v: Value| {
        a.authorize(
            Update,
            "auth/token/create",
            &data(v),
            sudo_of(Update, "auth/token/create"),
        )
        .allowed
    };
    assert!(check(json!({"policies": "team-a"})));
    assert!(check(json!({"policies": "team-a, default"})));
    assert!(check(json!({"policies": " team-a "})));
    assert!(check(json!({"policies": [" team-a", "default"]})));
    // Listed exactly as written.
    assert!(check(json!({"policies": "a,b"})));
    assert!(!check(json!({"policies": "team-a,root"})));
    assert!(!check(json!({"policies": "team-x, admin"})));
    assert!(!check(json!({"policies": ["team-a", "default,root"]})));
    assert!(!check(json!({"policies": ","})));
}

#[test]
fn required_parameters_must_be_present() {
    let a = acl(&[(
        "kv",
        r#"path "kv/data/*" {
             capabilities = ["update"]
             required_parameters = ["options"]
           }"#,
    )]);
    let d = a.authorize(
        Update,
        "kv/data/a",
        &data(json!({"data": {}})),
        sudo_of(Update, "kv/data/a"),
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        r#"denied by policy "kv", rule path "kv/data/*": missing required parameter "options""#
    );
    assert!(
        a.authorize(
            Update,
            "kv/data/a",
            &data(json!({"data": {}, "options": {"cas": 0}})),
            false
        )
        .allowed
    );
}

#[test]
fn parameter_constraints_merge_across_policies() {
    let a = acl(&[
        (
            "a",
            "path \"x\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"a\" = [\"1\"] }\n}",
        ),
        (
            "b",
            "path \"x\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"a\" = [\"2\"], \"b\" = [] }\n}",
        ),
    ]);
    let check = |v: Value| {
        a.authorize(Update, "x", &data(v), sudo_of(Update, "x"))
            .allowed
    };
    assert!(check(json!({"a": "1"})));
    assert!(check(json!({"a": "2", "b": "anything"})));
    assert!(!check(json!({"a": "3"})));
}

#[test]
fn glob_values_follow_vault() {
    use super::acl::glob_match;
    assert!(glob_match("abc*", "abcdef"));
    assert!(glob_match("*def", "abcdef"));
    assert!(glob_match("*cd*", "abcdef"));
    assert!(!glob_match("*xy*", "abcdef"));
    // A lone `*` is literal, as in Vault.
    assert!(glob_match("*", "*"));
    assert!(!glob_match("*", "a"));
}

// ---- sudo ----

#[test]
fn root_protected_paths_need_sudo_too() {
    let plain = acl(&[(
        "ops",
        r#"path "sys/*" { capabilities = ["read", "update"] }"#,
    )]);
    let d = plain.authorize(Read, "sys/audit", &Map::new(), sudo_of(Read, "sys/audit"));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        r#""sys/audit" is root-protected and needs sudo, which rule path "sys/*" does not grant"#
    );
    assert!(!allowed(&plain, Update, "sys/seal"));
    assert!(!allowed(&plain, Update, "sys/auth/kubernetes"));
    assert!(!allowed(&plain, Update, "sys/rotate"));
    assert!(allowed(&plain, Read, "sys/mounts"));
    let sudo = acl(&[(
        "ops",
        r#"path "sys/*" { capabilities = ["read", "update", "sudo"] }"#,
    )]);
    for p in [
        "sys/audit",
        "sys/seal",
        "sys/auth/kubernetes",
        "sys/rotate",
        "sys/raw/x",
    ] {
        assert!(allowed(&sudo, Update, p), "{p}");
    }
    let tok = acl(&[(
        "t",
        r#"path "auth/token/*" { capabilities = ["update", "list"] }"#,
    )]);
    assert!(allowed(&tok, Update, "auth/token/create"));
    assert!(!allowed(&tok, Update, "auth/token/create-orphan"));
    assert!(!allowed(&tok, Update, "auth/token/revoke-orphan"));
    assert!(sudo_of(Update, "sys/auth/x"));
    assert!(!sudo_of(Read, "sys/auth"));
    assert!(!sudo_of(Update, "sys/policies/acl/x"));
}

// ---- reasons and capabilities ----

#[test]
fn reasons_name_the_policy_and_rule() {
    let a = acl(&[
        (
            "team-a-ro",
            r#"path "secret/data/team-a/*" { capabilities = ["read"] }"#,
        ),
        (
            "x",
            r#"path "secret/data/team-a/admin" { capabilities = ["deny"] }"#,
        ),
    ]);
    let d = a.authorize(
        Read,
        "secret/data/team-a/app",
        &Map::new(),
        sudo_of(Read, "secret/data/team-a/app"),
    );
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: r#"allowed by policy "team-a-ro", rule path "secret/data/team-a/*" (read)"#
                .to_owned(),
            policy: Some("team-a-ro".to_owned()),
            rule: Some("secret/data/team-a/*".to_owned()),
        }
    );
    let d = a.authorize(
        Read,
        "secret/data/team-a/admin",
        &Map::new(),
        sudo_of(Read, "secret/data/team-a/admin"),
    );
    assert_eq!(
        d.reason,
        r#"denied by policy "x", rule path "secret/data/team-a/admin" (deny)"#
    );
    let d = a.authorize(
        Update,
        "secret/data/team-a/app",
        &Map::new(),
        sudo_of(Update, "secret/data/team-a/app"),
    );
    assert_eq!(
        d.reason,
        r#"no policy grants update on "secret/data/team-a/app" (the most specific rule path, "secret/data/team-a/*", grants read)"#
    );
    assert_eq!(d.policy, None);
    let d = a.authorize(
        Read,
        "secret/data/team-b/app",
        &Map::new(),
        sudo_of(Read, "secret/data/team-b/app"),
    );
    assert_eq!(
        d.reason,
        r#"no policy grants read on "secret/data/team-b/app""#
    );
    assert_eq!((d.policy, d.rule), (None, None));
    let d = Acl::root().authorize(
        Delete,
        "sys/raw/x",
        &Map::new(),
        sudo_of(Delete, "sys/raw/x"),
    );
    assert!(d.allowed);
    assert_eq!(d.reason, r#"allowed by policy "root""#);
}

#[test]
fn capabilities_are_sorted_or_deny_or_root() {
    let a = acl(&[(
        "p",
        r#"path "kv/*" { capabilities = ["update", "read", "sudo", "list"] }
           path "kv/none" { capabilities = [] }"#,
    )]);
    assert_eq!(a.capabilities("kv/x"), ["list", "read", "sudo", "update"]);
    assert_eq!(a.capabilities("kv/none"), ["deny"]);
    assert_eq!(a.capabilities("other"), ["deny"]);
    assert_eq!(Acl::root().capabilities("x"), ["root"]);
}

#[test]
fn policy_names_are_lowercased_and_checked() {
    assert_eq!(normalize_name(" Team-A ").unwrap(), "team-a");
    for bad in ["", "a/b", "a b", "ü", &"a".repeat(129)] {
        assert!(normalize_name(bad).is_err(), "{bad:?}");
    }
}

// ---- the store ----

fn store() -> Arc<dyn Store> {
    Arc::new(keyhaven_storage::MemStore::new())
}

#[tokio::test]
async fn load_creates_default_once_and_keeps_edits() {
    let s = store();
    let ps = PolicyStore::load(s.clone()).await.unwrap();
    assert_eq!(ps.list().await.unwrap(), ["default"]);
    ps.write("default", r#"path "x" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    let again = PolicyStore::load(s).await.unwrap();
    assert!(
        again
            .read("default")
            .await
            .unwrap()
            .unwrap()
            .contains("path \"x\"")
    );
    assert!(again.delete("default").await.is_err());
    assert!(again.delete("root").await.is_err());
    assert!(again.write("root", r#"path "x" {}"#).await.is_err());
}

#[tokio::test]
async fn acls_are_cached_and_dropped_on_change() {
    let ps = PolicyStore::load(store()).await.unwrap();
    ps.write("a", r#"path "kv/*" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    let names = vec!["default".to_owned(), "a".to_owned()];
    let first = ps.acl_for(&names).await.unwrap();
    assert!(allowed(&first, Read, "kv/x"));
    let second = ps.acl_for(&names).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second), "served from the cache");
    let sorted = ps
        .acl_for(&["a".to_owned(), "default".to_owned()])
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&first, &sorted), "same set, other order");
    ps.write("a", r#"path "kv/*" { capabilities = ["list"] }"#)
        .await
        .unwrap();
    let third = ps.acl_for(&names).await.unwrap();
    assert!(!allowed(&third, Read, "kv/x"));
    ps.delete("a").await.unwrap();
    let fourth = ps.acl_for(&names).await.unwrap();
    assert!(!allowed(&fourth, List, "kv/"));
    assert!(allowed(&fourth, Read, "auth/token/lookup-self"));
    assert!(ps.acl_for(&["root".to_owned()]).await.unwrap().is_root());
}

#[tokio::test]
async fn decisions_in_place_follow_policy_changes() {
    // `with_acl` borrows a compiled ACL from the cache: it must decide on what the
    // policies say now, on a miss, on a hit and after each change.
    let ps = PolicyStore::load(store()).await.unwrap();
    ps.write("a", r#"path "kv/*" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    let names = vec!["default".to_owned(), "a".to_owned()];
    let reads = |acl: &Acl| allowed(acl, Read, "kv/x");
    assert!(
        ps.with_acl(&names, reads).await.unwrap(),
        "compiled on a miss"
    );
    assert!(
        ps.with_acl(&names, reads).await.unwrap(),
        "borrowed on a hit"
    );
    ps.write("a", r#"path "kv/*" { capabilities = ["list"] }"#)
        .await
        .unwrap();
    assert!(!ps.with_acl(&names, reads).await.unwrap(), "after a write");
    ps.write("a", r#"path "kv/*" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    assert!(ps.with_acl(&names, reads).await.unwrap());
    ps.delete("a").await.unwrap();
    assert!(!ps.with_acl(&names, reads).await.unwrap(), "after a delete");
    assert!(
        ps.with_acl(&["root".to_owned()], |acl| acl.is_root())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn sys_endpoints_have_vaults_shapes() {
    let ps = PolicyStore::load(store()).await.unwrap();
    let text = r#"path "secret/*" { capabilities = ["read"] }"#;
    let mut body = Map::new();
    body.insert("policy".into(), json!(text));
    let r = ps.one(Update, "Team-A", &body, false).await.unwrap();
    assert_eq!(r.warnings, ["policy name was converted to team-a"]);
    let r = ps.one(Read, "team-a", &Map::new(), false).await.unwrap();
    assert_eq!(
        Value::Object(r.data.unwrap()),
        json!({"name": "team-a", "policy": text})
    );
    let r = ps.one(Read, "team-a", &Map::new(), true).await.unwrap();
    assert_eq!(
        Value::Object(r.data.unwrap()),
        json!({"name": "team-a", "rules": text})
    );
    let r = ps.list_response(false).await.unwrap();
    assert_eq!(
        Value::Object(r.data.unwrap()),
        json!({"keys": ["default", "team-a", "root"]})
    );
    let r = ps.list_response(true).await.unwrap();
    assert_eq!(
        Value::Object(r.data.unwrap()),
        json!({"keys": ["default", "team-a", "root"], "policies": ["default", "team-a", "root"]})
    );
    // Legacy `rules`, and base64 as Vault accepts.
    let mut body = Map::new();
    body.insert(
        "rules".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(text)),
    );
    ps.one(Update, "b64", &body, true).await.unwrap();
    assert_eq!(ps.read("b64").await.unwrap().unwrap(), text);
    // Errors.
    let mut bad = Map::new();
    bad.insert(
        "policy".into(),
        json!(r#"path "a" { capabilities = ["raed"] }"#),
    );
    let e = ps.one(Update, "x", &bad, false).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::InvalidRequest(m) if m.contains("\"raed\"")),
        "{e}"
    );
    let e = ps.one(Update, "x", &Map::new(), false).await.unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)));
    let e = ps
        .one(Read, "missing", &Map::new(), false)
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::NotFound(_)));
    let e = ps.one(Update, "a%2fb", &body, false).await.unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)));
    let r = ps.one(Read, "root", &Map::new(), false).await.unwrap();
    assert_eq!(r.data.unwrap()["policy"], json!(""));
    ps.one(Delete, "team-a", &Map::new(), false).await.unwrap();
    ps.one(Delete, "team-a", &Map::new(), false).await.unwrap();
    assert_eq!(ps.list().await.unwrap(), ["b64", "default"]);
}

/// Rough cost of a check on a policy set of realistic size; run with
/// `cargo test --release -p keyhaven-engine --lib policy::tests::authorize_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn authorize_cost() {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "path \"kv/data/team-{i}/*\" {{\n capabilities = [\"read\"]\n}}\n\
             path \"kv/data/team-{i}/+/config\" {{\n capabilities = [\"update\"]\n}}\n\
             path \"kv/metadata/team-{i}\" {{\n capabilities = [\"list\"]\n}}\n"
        ));
    }
    let a = acl(&[("big", &text), ("default", DEFAULT_POLICY)]);
    let empty = Map::new();
    let n = 200_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        assert!(
            a.authorize(Read, "kv/data/team-150/app/db", &empty, false)
                .allowed
        );
    }
    let per = start.elapsed() / n;
    println!("authorize: {per:?} per check over 600 + default rules");
}

#[test]
fn segment_rules_are_found_through_their_literal_prefix() {
    let a = acl(&[(
        "p",
        "path \"+\" {\n capabilities = [\"read\"]\n}\n\
         path \"+/x/*\" {\n capabilities = [\"list\"]\n}\n\
         path \"a/+b/c\" {\n capabilities = [\"update\"]\n}\n\
         path \"a/b/+/d*\" {\n capabilities = [\"delete\"]\n}\n",
    )]);
    assert!(allowed(&a, Read, "anything"));
    assert!(!allowed(&a, Read, "two/segments"));
    assert!(allowed(&a, List, "m/x/y/"));
    // `+b` is a literal segment, not a wildcard.
    assert!(allowed(&a, Update, "a/+b/c"));
    assert!(!allowed(&a, Update, "a/zb/c"));
    assert!(allowed(&a, Delete, "a/b/z/d"));
    assert!(allowed(&a, Delete, "a/b/z/dd/e"));
    assert!(!allowed(&a, Delete, "a/b/z"));
    assert!(!allowed(&a, Delete, "a/c/z/d"));
}

#[test]
fn mount_access_is_any_grant_at_or_below_the_mount() {
    let a = acl(&[(
        "p",
        r#"path "kv/data/team/*" { capabilities = ["read"] }
           path "other/+/x" { capabilities = ["list"] }
           path "denied/*" { capabilities = ["deny"] }
           path "tr*" { capabilities = ["update"] }"#,
    )]);
    assert!(a.has_mount_access("kv/"), "a rule below the mount");
    assert!(a.has_mount_access("other/"), "a + rule below the mount");
    assert!(
        a.has_mount_access("transit/"),
        "a prefix rule covering the mount"
    );
    assert!(!a.has_mount_access("denied/"), "deny grants nothing");
    assert!(!a.has_mount_access("secret/"), "no rule at all");
    assert!(!a.has_mount_access("k/"), "kv/... is not below k/");
    assert!(Acl::root().has_mount_access("anything/"));
}

// ---- wrapping bounds ----

#[test]
fn wrapping_bounds_parse_as_durations_and_must_be_ordered() {
    let p = Policy::parse(
        r#"path "a" {
          capabilities = ["read"]
          min_wrapping_ttl = "30s"
          max_wrapping_ttl = 600
        }"#,
    )
    .unwrap();
    assert_eq!(p.rules()[0].min_wrapping_ttl, 30);
    assert_eq!(p.rules()[0].max_wrapping_ttl, 600);
    let e = err(r#"path "a" {
  min_wrapping_ttl = "5m"
  max_wrapping_ttl = "1m"
}"#);
    assert!(
        e.message()
            .contains("max_wrapping_ttl cannot be less than min_wrapping_ttl"),
        "{e}"
    );
    let e = err(r#"path "a" { min_wrapping_ttl = "soon" }"#);
    assert!(
        e.message().contains("min_wrapping_ttl must be a duration"),
        "{e}"
    );
    let e = err(r#"path "a" { max_wrapping_ttl = true }"#);
    assert!(
        e.message().contains("max_wrapping_ttl must be a duration"),
        "{e}"
    );
}

#[test]
fn a_rule_with_wrapping_bounds_allows_only_wrapped_requests_within_them() {
    let a = acl(&[(
        "p",
        r#"path "secret/*" {
          capabilities = ["read"]
          min_wrapping_ttl = "30s"
          max_wrapping_ttl = "5m"
        }
        path "other/*" { capabilities = ["read"] }"#,
    )]);
    let at =
        |path: &str, ttl: Option<u64>| a.authorize_wrapped(Read, path, &Map::new(), false, ttl);
    let d = at("secret/x", None);
    assert!(!d.allowed);
    assert!(d.reason.contains("must be wrapped"), "{}", d.reason);
    assert!(at("secret/x", Some(30)).allowed);
    assert!(at("secret/x", Some(300)).allowed);
    let d = at("secret/x", Some(29));
    assert!(
        !d.allowed && d.reason.contains("below min_wrapping_ttl 30s"),
        "{}",
        d.reason
    );
    let d = at("secret/x", Some(301));
    assert!(
        !d.allowed && d.reason.contains("above max_wrapping_ttl 300s"),
        "{}",
        d.reason
    );
    // Other paths are not constrained; a wrapped request there is fine too.
    assert!(at("other/x", None).allowed);
    assert!(at("other/x", Some(5)).allowed);
    // A maximum alone requires wrapping too (as Vault).
    let max_only = acl(&[(
        "p",
        r#"path "s/*" {
  capabilities = ["read"]
  max_wrapping_ttl = 60
}"#,
    )]);
    assert!(
        !max_only
            .authorize_wrapped(Read, "s/x", &Map::new(), false, None)
            .allowed
    );
    assert!(
        max_only
            .authorize_wrapped(Read, "s/x", &Map::new(), false, Some(60))
            .allowed
    );
    // Root is never constrained.
    assert!(
        Acl::root()
            .authorize_wrapped(Read, "secret/x", &Map::new(), false, None)
            .allowed
    );
}

#[test]
fn merged_wrapping_bounds_take_the_smallest_of_each_and_can_contradict() {
    let a = acl(&[
        (
            "a",
            r#"path "s/*" {
  capabilities = ["read"]
  min_wrapping_ttl = 60
  max_wrapping_ttl = 600
}"#,
        ),
        (
            "b",
            r#"path "s/*" {
  capabilities = ["read"]
  min_wrapping_ttl = 10
  max_wrapping_ttl = 120
}"#,
        ),
    ]);
    let at = |ttl| {
        a.authorize_wrapped(Read, "s/x", &Map::new(), false, Some(ttl))
            .allowed
    };
    assert!(at(10) && at(120));
    assert!(!at(9) && !at(121));
    let c = acl(&[
        (
            "a",
            r#"path "s/*" {
  capabilities = ["read"]
  min_wrapping_ttl = 300
}"#,
        ),
        (
            "b",
            r#"path "s/*" {
  capabilities = ["read"]
  max_wrapping_ttl = 60
}"#,
        ),
    ]);
    let d = c.authorize_wrapped(Read, "s/x", &Map::new(), false, Some(60));
    assert!(
        !d.allowed && d.reason.contains("contradictory"),
        "{}",
        d.reason
    );
}
