//! JSON bodies of the HTTP API that the server writes and the client reads: one
//! definition each, so the two cannot drift apart.
//!
//! Serde names are the wire names. The Rust field names are the same, except `type`, a
//! keyword, which is `kind`.
//!
//! The server writes JSON objects with their keys in sorted order (a `serde_json::Map` is
//! ordered by key). Except for [`Envelope`], the fields here are declared in that order,
//! so a struct serialises to the same bytes as the JSON tree it replaces. Do not reorder
//! them.
//!
//! Deserializing is lenient, because the client also talks to Vault and OpenBao: fields
//! keyhaven always sends but those servers may leave out default to empty, and fields
//! this crate does not know are ignored. Serializing is exact: what keyhaven sends, and
//! nothing else.
//!
//! The types have public fields and no `#[non_exhaustive]`: the engine and the server
//! build them. Adding a field is a change of the wire format and of these types together.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `sys/seal-status`, also the answer of `sys/unseal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealStatus {
    /// Build date of the server, when known (keyhaven sends an empty string).
    #[serde(default)]
    pub build_date: String,
    /// Cluster id; empty before `sys/init` (Vault leaves it out when empty).
    #[serde(default)]
    pub cluster_id: String,
    /// Cluster name; empty before `sys/init` (Vault leaves it out when empty).
    #[serde(default)]
    pub cluster_name: String,
    /// Whether `sys/init` has run.
    pub initialized: bool,
    /// Whether a seal migration is in progress (never, for keyhaven).
    #[serde(default)]
    pub migration: bool,
    /// Number of unseal key shares.
    #[serde(default)]
    pub n: u8,
    /// Identifies the unseal attempt in progress; empty when there is none.
    #[serde(default)]
    pub nonce: String,
    /// Shares entered so far in the current attempt.
    #[serde(default)]
    pub progress: u8,
    /// Whether the seal uses recovery keys (auto-unseal).
    #[serde(default)]
    pub recovery_seal: bool,
    /// The type of the recovery seal (`shamir`) under auto-unseal; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_seal_type: Option<String>,
    /// Whether the server is sealed.
    pub sealed: bool,
    /// Storage backend type (`sqlite`, `inmem`, …). `None` when the one reporting does
    /// not know it: the engine leaves it to the server, which always sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_type: Option<String>,
    /// Threshold: shares needed to unseal.
    #[serde(default)]
    pub t: u8,
    /// Seal type, `shamir` for unseal key shares (`type` on the wire).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Server version.
    #[serde(default)]
    pub version: String,
}

/// The body of `sys/health`. The status code carries the verdict (200 active, 501
/// uninitialized, 503 sealed, or the codes the query asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Cluster id; empty before `sys/init` (Vault leaves it out when empty).
    #[serde(default)]
    pub cluster_id: String,
    /// Cluster name; empty before `sys/init` (Vault leaves it out when empty).
    #[serde(default)]
    pub cluster_name: String,
    /// Whether `sys/init` has run.
    pub initialized: bool,
    /// Whether this node is a performance standby (never, for keyhaven).
    #[serde(default)]
    pub performance_standby: bool,
    /// Disaster-recovery replication mode (`disabled`).
    #[serde(default)]
    pub replication_dr_mode: String,
    /// Performance replication mode (`disabled`).
    #[serde(default)]
    pub replication_performance_mode: String,
    /// Whether the server is sealed.
    pub sealed: bool,
    /// Server time, Unix seconds.
    #[serde(default)]
    pub server_time_utc: i64,
    /// Whether this node is a standby (never, for keyhaven).
    #[serde(default)]
    pub standby: bool,
    /// Server version.
    #[serde(default)]
    pub version: String,
}

/// One mount as `sys/mounts`, `sys/auth`, `sys/mounts/<path>` and
/// `sys/internal/ui/mounts/<path>` show it.
///
/// The built-in mounts (`sys/`, and `token/` in the auth table) have no
/// `deprecation_status`, as in OpenBao; every other mount has `"supported"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Public identifier, e.g. `kv_1a2b3c4d`.
    #[serde(default)]
    pub accessor: String,
    /// Tuning.
    #[serde(default)]
    pub config: MountConfig,
    /// `supported` for plugin mounts; absent for the built-in ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_status: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Whether the backend may use the seal's entropy source (never, for keyhaven).
    #[serde(default)]
    pub external_entropy_access: bool,
    /// Whether the mount is local to this cluster.
    #[serde(default)]
    pub local: bool,
    /// Engine options, e.g. `{"version": "2"}` for KV version 2; `null` when there are
    /// none.
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    /// The mount path with its trailing `/`; only `sys/internal/ui/mounts/<path>` sends
    /// it (the listings key entries by path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Plugin version requested (empty: built in).
    #[serde(default)]
    pub plugin_version: String,
    /// Plugin version running (empty: built in).
    #[serde(default)]
    pub running_plugin_version: String,
    /// SHA-256 of the running plugin binary (empty: built in).
    #[serde(default)]
    pub running_sha256: String,
    /// Whether seal wrapping is on (OpenBao reports it for `sys/`).
    #[serde(default)]
    pub seal_wrap: bool,
    /// Engine type, e.g. `kv`, `transit`, `kubernetes` (`type` on the wire).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Mount UUID.
    #[serde(default)]
    pub uuid: String,
}

/// The `config` of a [`MountEntry`].
///
/// The built-in mounts carry one key more each, as in OpenBao:
/// `passthrough_request_headers` for `sys/` and `token_type` for `token/`. Other keys Vault
/// may send here (set by tuning options keyhaven does not have) are not kept. Fields are in
/// name order, as Vault writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    /// Request data keys audit records keep in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_non_hmac_request_keys: Option<Vec<String>>,
    /// Response data keys audit records keep in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_non_hmac_response_keys: Option<Vec<String>>,
    /// Default lease TTL in seconds (0: the system default).
    #[serde(default)]
    pub default_lease_ttl: u64,
    /// Whether caching is off for this mount (never, for keyhaven).
    #[serde(default)]
    pub force_no_cache: bool,
    /// `unauth` when the unauthenticated `sys/internal/ui/mounts` lists the mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_visibility: Option<String>,
    /// Maximum lease TTL in seconds (0: the system default).
    #[serde(default)]
    pub max_lease_ttl: u64,
    /// Request headers passed to the backend (`sys/` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough_request_headers: Option<Vec<String>>,
    /// Type of the tokens the mount issues (`token/` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
}

/// The `data` of `auth/token/lookup`, `lookup-self` and `lookup-accessor`.
///
/// `id` is the token looked up, a secret: `Debug` does not show it, and the client drops
/// it (sets `None`) so a lookup can be printed or logged as it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLookup {
    /// Public handle for lookup and revocation without the token.
    #[serde(default)]
    pub accessor: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub creation_time: i64,
    /// TTL at creation, seconds (0: none).
    #[serde(default)]
    pub creation_ttl: u64,
    /// Human-readable name.
    #[serde(default)]
    pub display_name: String,
    /// Identity entity (keyhaven has none: empty).
    #[serde(default)]
    pub entity_id: String,
    /// Expiry, RFC 3339; `null` for tokens that never expire.
    #[serde(default)]
    pub expire_time: Option<String>,
    /// Hard limit that renewal cannot pass, seconds (0: none).
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// The token itself (empty for a lookup by accessor). Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Last issue or renewal time, RFC 3339.
    #[serde(default)]
    pub issue_time: String,
    /// Metadata; `null` when there is none.
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    /// Uses left (0: unlimited).
    #[serde(default)]
    pub num_uses: u64,
    /// Whether the token has no parent.
    #[serde(default)]
    pub orphan: bool,
    /// The path that created the token.
    #[serde(default)]
    pub path: String,
    /// Renewal period of a periodic token, seconds; absent for other tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    /// Policies attached to the token.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Whether the token can be renewed.
    #[serde(default)]
    pub renewable: bool,
    /// Seconds left to live (0: no expiry).
    #[serde(default)]
    pub ttl: u64,
    /// Token type, `service` (`type` on the wire).
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl fmt::Debug for TokenLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLookup")
            .field("accessor", &self.accessor)
            .field("creation_time", &self.creation_time)
            .field("creation_ttl", &self.creation_ttl)
            .field("display_name", &self.display_name)
            .field("entity_id", &self.entity_id)
            .field("expire_time", &self.expire_time)
            .field("explicit_max_ttl", &self.explicit_max_ttl)
            .field("id", &self.id.as_ref().map(|_| "[REDACTED]"))
            .field("issue_time", &self.issue_time)
            .field("meta", &self.meta)
            .field("num_uses", &self.num_uses)
            .field("orphan", &self.orphan)
            .field("path", &self.path)
            .field("period", &self.period)
            .field("policies", &self.policies)
            .field("renewable", &self.renewable)
            .field("ttl", &self.ttl)
            .field("kind", &self.kind)
            .finish()
    }
}

/// `wrap_info` of a wrapped response: where the response went instead of the body.
///
/// `token` is the single-use wrapping token, a secret: `Debug` does not show it. Fields
/// in the order the server writes them (sorted).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapInfo {
    /// The wrapping token's accessor.
    pub accessor: String,
    /// The path of the wrapped request.
    pub creation_path: String,
    /// When the response was wrapped, RFC 3339.
    pub creation_time: String,
    /// The wrapping token. Secret.
    pub token: String,
    /// Seconds the wrapping token lives.
    pub ttl: u64,
    /// The accessor of the token the wrapped response carries (logins and token
    /// creation); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_accessor: Option<String>,
}

impl fmt::Debug for WrapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrapInfo")
            .field("token", &"[REDACTED]")
            .field("accessor", &self.accessor)
            .field("ttl", &self.ttl)
            .field("creation_time", &self.creation_time)
            .field("creation_path", &self.creation_path)
            .field("wrapped_accessor", &self.wrapped_accessor)
            .finish()
    }
}

/// Vault's response envelope, with `data` typed.
///
/// The server streams its envelope without this type (it runs for every answered
/// request) and writes the keys sorted; a test in the server checks that what it writes
/// has exactly these fields and reads back as this type. This type keeps Vault's
/// documented field order, the order the CLI prints.
///
/// `Debug` delegates to `T`'s; types that carry secret values write theirs by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Request id, also in the server log.
    #[serde(default)]
    pub request_id: String,
    /// Lease id, empty when there is no lease.
    #[serde(default)]
    pub lease_id: String,
    /// Whether the lease is renewable.
    #[serde(default)]
    pub renewable: bool,
    /// Lease duration in seconds.
    #[serde(default)]
    pub lease_duration: u64,
    /// The payload.
    pub data: T,
    /// Response wrapping information ([`WrapInfo`]); `null` for a response that was not
    /// wrapped.
    #[serde(default)]
    pub wrap_info: Option<Value>,
    /// Warnings of the server; `null` when there are none.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    /// Authentication information, for logins and token creation.
    #[serde(default)]
    pub auth: Option<Value>,
}

impl<T> Envelope<T> {
    /// The warnings, or an empty slice.
    pub fn warnings(&self) -> &[String] {
        self.warnings.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every key of the JSON object `text`, in the order it was written.
    fn keys_in_order(text: &str) -> Vec<String> {
        // serde_json's Map sorts, so read the text as a sequence of (key, value) pairs.
        struct Keys(Vec<String>);
        impl<'de> Deserialize<'de> for Keys {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Keys;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Keys, A::Error> {
                        let mut keys = Vec::new();
                        while let Some((k, _)) =
                            map.next_entry::<String, serde::de::IgnoredAny>()?
                        {
                            keys.push(k);
                        }
                        Ok(Keys(keys))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_str::<Keys>(text).unwrap().0
    }

    fn assert_sorted<T: Serialize>(value: &T) {
        let text = serde_json::to_string(value).unwrap();
        let keys = keys_in_order(&text);
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{text}");
    }

    fn seal_status() -> SealStatus {
        SealStatus {
            build_date: String::new(),
            cluster_id: "c-id".into(),
            cluster_name: "c-name".into(),
            initialized: true,
            migration: false,
            n: 5,
            nonce: "nonce".into(),
            progress: 2,
            recovery_seal: false,
            recovery_seal_type: None,
            sealed: true,
            storage_type: Some("sqlite".into()),
            t: 3,
            kind: "shamir".into(),
            version: "0.1.0".into(),
        }
    }

    fn mount(builtin: bool) -> MountEntry {
        MountEntry {
            accessor: "kv_1".into(),
            config: MountConfig {
                passthrough_request_headers: builtin.then(|| vec!["Accept".into()]),
                token_type: builtin.then(|| "default-service".into()),
                ..MountConfig::default()
            },
            deprecation_status: (!builtin).then(|| "supported".into()),
            description: "d".into(),
            external_entropy_access: false,
            local: false,
            options: Some(json!({"version": "2"}).as_object().unwrap().clone()),
            path: Some("secret/".into()),
            plugin_version: String::new(),
            running_plugin_version: String::new(),
            running_sha256: String::new(),
            seal_wrap: false,
            kind: "kv".into(),
            uuid: "u".into(),
        }
    }

    fn lookup() -> TokenLookup {
        TokenLookup {
            accessor: "acc".into(),
            creation_time: 1,
            creation_ttl: 2,
            display_name: "token".into(),
            entity_id: String::new(),
            expire_time: Some("2030-01-01T00:00:00Z".into()),
            explicit_max_ttl: 0,
            id: Some("khs.s3cr3t".into()),
            issue_time: "2029-01-01T00:00:00Z".into(),
            meta: Some(BTreeMap::from([("team".into(), "a".into())])),
            num_uses: 0,
            orphan: false,
            path: "auth/token/create".into(),
            period: Some(60),
            policies: vec!["default".into()],
            renewable: true,
            ttl: 30,
            kind: "service".into(),
        }
    }

    #[test]
    fn fields_are_written_in_sorted_order_as_the_server_always_did() {
        assert_sorted(&seal_status());
        assert_sorted(&Health {
            cluster_id: String::new(),
            cluster_name: String::new(),
            initialized: true,
            performance_standby: false,
            replication_dr_mode: "disabled".into(),
            replication_performance_mode: "disabled".into(),
            sealed: false,
            server_time_utc: 7,
            standby: false,
            version: "0.1.0".into(),
        });
        assert_sorted(&mount(true));
        assert_sorted(&mount(false));
        assert_sorted(&mount(true).config);
        assert_sorted(&lookup());
    }

    #[test]
    fn structs_serialise_like_the_json_tree_of_their_fields() {
        fn same<T: Serialize>(value: &T) {
            let direct = serde_json::to_string(value).unwrap();
            let tree = serde_json::to_string(&serde_json::to_value(value).unwrap()).unwrap();
            assert_eq!(direct, tree);
        }
        same(&seal_status());
        same(&mount(true));
        same(&mount(false));
        same(&lookup());
    }

    #[test]
    fn optional_keys_are_absent_not_null() {
        let mut m = mount(true);
        m.config = MountConfig::default();
        m.deprecation_status = None;
        m.path = None;
        m.options = None;
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v["config"],
            json!({"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0})
        );
        assert!(v.get("deprecation_status").is_none() && v.get("path").is_none());
        assert_eq!(v["options"], Value::Null);

        let mut s = seal_status();
        s.storage_type = None;
        assert!(
            serde_json::to_value(&s)
                .unwrap()
                .get("storage_type")
                .is_none()
        );

        let mut l = lookup();
        l.period = None;
        l.id = None;
        l.meta = None;
        l.expire_time = None;
        let v = serde_json::to_value(&l).unwrap();
        assert!(v.get("period").is_none() && v.get("id").is_none());
        assert_eq!(
            (&v["meta"], &v["expire_time"]),
            (&Value::Null, &Value::Null)
        );
    }

    #[test]
    fn values_round_trip() {
        let s = seal_status();
        assert_eq!(
            serde_json::from_value::<SealStatus>(serde_json::to_value(&s).unwrap()).unwrap(),
            s
        );
        for m in [mount(true), mount(false)] {
            assert_eq!(
                serde_json::from_value::<MountEntry>(serde_json::to_value(&m).unwrap()).unwrap(),
                m
            );
        }
        let l = lookup();
        assert_eq!(
            serde_json::from_value::<TokenLookup>(serde_json::to_value(&l).unwrap()).unwrap(),
            l
        );
    }

    #[test]
    fn openbao_answers_decode() {
        // Shapes of OpenBao 2.x: fields keyhaven does not send are ignored, fields it
        // leaves out default.
        let s: SealStatus = serde_json::from_value(json!({"type":"shamir","initialized":true,
            "sealed":false,"t":1,"n":1,"progress":0,"nonce":"","version":"2.7.2",
            "build_date":"2026-10-26T20:32:27Z","migration":false,"recovery_seal":false,
            "storage_type":"inmem"}))
        .unwrap();
        assert_eq!((s.t, s.n, s.cluster_name.as_str()), (1, 1, ""));
        let s: SealStatus = serde_json::from_value(
            json!({"sealed":true,"initialized":true,"t":3,"n":5,"progress":2}),
        )
        .unwrap();
        assert_eq!((s.progress, s.storage_type), (2, None));
        let h: Health = serde_json::from_value(json!({"initialized":true,"sealed":false,
            "standby":false,"server_time_utc":1700000000,"version":"2.7.2","enterprise":false}))
        .unwrap();
        assert_eq!(h.server_time_utc, 1_700_000_000);
        let m: MountEntry = serde_json::from_value(json!({"type":"system","accessor":"system_0",
            "options":null,"config":{"default_lease_ttl":0,"max_lease_ttl":0,
            "force_no_cache":false,"passthrough_request_headers":["Accept"]}}))
        .unwrap();
        assert_eq!(m.options, None);
        assert_eq!(
            m.config.passthrough_request_headers,
            Some(vec!["Accept".to_owned()])
        );
        let e: Envelope<Value> = serde_json::from_value(json!({"request_id":"r","lease_id":"",
            "renewable":false,"lease_duration":0,"data":{"a":1},"wrap_info":null,
            "warnings":null,"auth":null,"mount_type":"kv"}))
        .unwrap();
        assert_eq!(e.data, json!({"a": 1}));
        assert!(e.warnings().is_empty());
    }

    #[test]
    fn token_lookup_debug_hides_the_token() {
        let l = lookup();
        let shown = format!("{l:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("acc"), "{shown}");
    }

    #[test]
    fn wrap_info_debug_hides_the_wrapping_token() {
        let info = WrapInfo {
            accessor: "acc-1".into(),
            creation_path: "secret/data/x".into(),
            creation_time: "2026-01-01T00:00:00Z".into(),
            token: "khs.WRAPPINGsecretTOKEN000000000000000".into(),
            ttl: 60,
            wrapped_accessor: None,
        };
        let shown = format!("{info:?}");
        assert!(!shown.contains("WRAPPINGsecret"), "{shown}");
        assert!(
            shown.contains("acc-1") && shown.contains("[REDACTED]"),
            "{shown}"
        );
    }
}
