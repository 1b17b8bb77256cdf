//! The `sys/` mount: the system backend's routes and the one place each of its paths is
//! served. (`sys/init`, `sys/unseal`, `sys/seal-status`, `sys/health` and `sys/leader`
//! answer before unseal and without a token; the server serves those, as Vault's HTTP
//! layer does.)

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::backend::BackendRequest;
use crate::clock::rfc3339;
use crate::core::{Core, Unsealed};
use crate::error::EngineError;
use crate::mounts::Table;
use crate::params;
use crate::request::{Operation, Request, Response};
use crate::route::{Field, Ops, Route};
use crate::token::TokenEntry;

const MOUNT_FIELDS: &[Field] = &[
    Field::str("type", "The backend type (enable).").required(),
    Field::str("description", "Free text (enable)."),
    Field::map(
        "config",
        "Tuning: default_lease_ttl, max_lease_ttl (enable).",
    ),
    Field::map(
        "options",
        "Backend options, e.g. version=2 for kv (enable).",
    ),
    Field::bool(
        "local",
        "Accepted for compatibility; mounts are never replicated.",
    ),
    Field::bool("seal_wrap", "Accepted for compatibility."),
    Field::bool("external_entropy_access", "Accepted for compatibility."),
    Field::str("plugin_name", "Accepted for compatibility."),
    Field::str("plugin_version", "Accepted for compatibility."),
];

const TUNE_FIELDS: &[Field] = &[
    Field::duration("default_lease_ttl", "Default lease TTL."),
    Field::duration("max_lease_ttl", "Maximum lease TTL."),
    Field::str("description", "Free text."),
    Field::map(
        "options",
        "Backend options (kept as strings; a KV mount keeps its version).",
    ),
    Field::str(
        "listing_visibility",
        "unauth: listed by the unauthenticated sys/internal/ui/mounts; hidden or empty: not.",
    ),
    Field::str_list(
        "audit_non_hmac_request_keys",
        "Request data keys audit records keep in clear.",
    ),
    Field::str_list(
        "audit_non_hmac_response_keys",
        "Response data keys audit records keep in clear.",
    ),
    Field::str(
        "token_type",
        "Auth mounts: the type of tokens issued (default-service or service).",
    ),
    Field::str_list(
        "passthrough_request_headers",
        "Not supported: refused unless empty.",
    ),
    Field::str_list(
        "allowed_response_headers",
        "Not supported: refused unless empty.",
    ),
    Field::str("plugin_version", "Not supported: refused unless empty."),
    Field::map(
        "user_lockout_config",
        "Not supported: refused unless empty.",
    ),
    Field::str_list(
        "allowed_managed_keys",
        "Not supported: refused unless empty.",
    ),
    Field::str("identity_token_key", "Not supported: refused unless empty."),
    Field::str_list(
        "delegated_auth_accessors",
        "Not supported: refused unless empty.",
    ),
];

const CAPABILITY_FIELDS: &[Field] = &[
    Field::str_list("paths", "The paths to ask about.").required(),
    Field::str("path", "Deprecated: one path."),
    Field::str("token", "The token to ask about (sys/capabilities)."),
    Field::str(
        "accessor",
        "The accessor of the token to ask about (sys/capabilities-accessor).",
    ),
];

const REKEY_INIT_FIELDS: &[Field] = &[
    Field::uint("secret_shares", "Number of new unseal key shares.").required(),
    Field::uint(
        "secret_threshold",
        "Shares needed to unseal with the new key.",
    )
    .required(),
    Field::str_list("pgp_keys", "Not supported: refused when given."),
    Field::bool("backup", "Not supported: refused when true."),
    Field::bool(
        "require_verification",
        "Enter the new shares back before they replace the old ones.",
    ),
];

const SHARE_FIELDS: &[Field] = &[
    Field::str("key", "One unseal key share, hex or base64.").required(),
    Field::str("nonce", "The nonce of the attempt.").required(),
];

const GENERATE_ROOT_FIELDS: &[Field] = &[
    Field::str(
        "otp",
        "One-time password the new root token is XORed with; generated when empty.",
    ),
    Field::str("pgp_key", "Not supported: refused when given."),
];

const POLICY_FIELDS: &[Field] = &[
    Field::str("policy", "The policy text (HCL or JSON)."),
    Field::str("rules", "Legacy name of policy (sys/policy)."),
];

const WRAPPING_FIELDS: &[Field] = &[Field::str(
    "token",
    "The wrapping token (or give it as the request's token).",
)];

const LEASE_ID_FIELDS: &[Field] = &[Field::str("lease_id", "The lease id.")];

const RENEW_FIELDS: &[Field] = &[
    Field::str("lease_id", "The lease id (wins over the one in the path)."),
    Field::duration(
        "increment",
        "The TTL asked for, from now (0: the lease's original TTL).",
    ),
];

const SYNC_FIELDS: &[Field] = &[Field::bool(
    "sync",
    "Revoke before answering (204); false: answer 202 and revoke in the background.",
)
.default("true")];

const REVOKE_FIELDS: &[Field] = &[
    Field::str("lease_id", "The lease id (wins over the one in the path)."),
    Field::bool(
        "sync",
        "Revoke before answering (204); false: answer 202 and revoke in the background.",
    )
    .default("true"),
];

const IRREVOCABLE_FIELDS: &[Field] = &[
    Field::str("type", "Must be irrevocable.").required(),
    Field::str(
        "limit",
        "The most leases listed (default 10000; none: all).",
    ),
    Field::bool("include_child_namespaces", "Accepted for compatibility."),
];

/// Every path of the `sys/` mount that the engine serves.
pub(crate) static ROUTES: &[Route] = &[
    Route::new("seal", "Seal: drop every key until unsealed again.")
        .ops(Ops::WRITE)
        .sudo(),
    Route::new("rotate", "Add a new keyring term for new writes.")
        .ops(Ops::WRITE)
        .sudo(),
    Route::new("key-status", "The keyring's current term.").pure(Ops::READ),
    // Operator recovery (see `crate::recovery`). `rekey/*` and `generate-root/*` take no
    // token (the shares authorize them) and answer only where enabled; the token-
    // authenticated `rotate/root/*` and `generate-root-token/*` are the same flows.
    Route::new("rotate/keyring", "Add a new keyring term for new writes.")
        .ops(Ops::WRITE)
        .sudo(),
    Route::new(
        "rotate/keyring/config",
        "When the keyring rotates by itself: encryptions or age of the active term.",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE)
    .fields(&[
        Field::bool("enabled", "Rotate automatically."),
        Field::uint(
            "max_operations",
            "Encryptions with one term before rotation (1000000 to 3865470566).",
        ),
        Field::duration(
            "interval",
            "Age of a term before rotation (0: never; at least 24h).",
        ),
    ]),
    Route::new(
        "rotate/root/init",
        "Start, read or cancel replacing the unseal key shares.",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(REKEY_INIT_FIELDS),
    Route::new("rotate/root/update", "Enter a current unseal key share.")
        .ops(Ops::WRITE)
        .fields(SHARE_FIELDS),
    Route::new("rotate/root/verify", "Enter a new unseal key share back.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(SHARE_FIELDS),
    Route::new("rotate/root/backup", "Backed-up shares: never kept.")
        .pure(Ops::READ)
        .ops(Ops::DELETE),
    Route::new("rekey/init", "Start, read or cancel a rekey (no token).")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(REKEY_INIT_FIELDS)
        .unauthenticated(),
    Route::new(
        "rekey/update",
        "Enter a current unseal key share (no token).",
    )
    .ops(Ops::WRITE)
    .fields(SHARE_FIELDS)
    .unauthenticated(),
    Route::new(
        "rekey/verify",
        "Enter a new unseal key share back (no token).",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(SHARE_FIELDS)
    .unauthenticated(),
    Route::new("rekey/backup", "Backed-up shares: never kept.")
        .pure(Ops::READ)
        .ops(Ops::DELETE),
    Route::new(
        "generate-root-token/attempt",
        "Start, read or cancel generating a root token from unseal key shares.",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(GENERATE_ROOT_FIELDS),
    Route::new("generate-root-token/update", "Enter an unseal key share.")
        .ops(Ops::WRITE)
        .fields(SHARE_FIELDS),
    Route::new(
        "generate-root/attempt",
        "Start, read or cancel root token generation (no token).",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(GENERATE_ROOT_FIELDS)
    .unauthenticated(),
    Route::new(
        "generate-root/update",
        "Enter an unseal key share (no token).",
    )
    .ops(Ops::WRITE)
    .fields(SHARE_FIELDS)
    .unauthenticated(),
    Route::new("host-info", "The machine the server runs on.").pure(Ops::READ),
    Route::new("ha-status", "The cluster's active node.").pure(Ops::READ),
    Route::new(
        "step-down",
        "Give up the leadership: a standby becomes active (high availability).",
    )
    .ops(Ops::WRITE)
    .sudo(),
    Route::new("audit", "The enabled audit devices.")
        .pure(Ops::READ)
        .sudo(),
    Route::new("audit-hash/{path}", "An audit device's HMAC of a string.")
        .ops(Ops::WRITE)
        .fields(&[Field::str("input", "The string to hash.").required()]),
    Route::new(
        "capabilities-self",
        "The calling token's capabilities on paths.",
    )
    .ops(Ops::WRITE)
    .fields(CAPABILITY_FIELDS),
    Route::new("capabilities", "A token's capabilities on paths.")
        .ops(Ops::WRITE)
        .fields(CAPABILITY_FIELDS),
    Route::new(
        "capabilities-accessor",
        "A token's capabilities on paths, by accessor.",
    )
    .ops(Ops::WRITE)
    .fields(CAPABILITY_FIELDS),
    Route::new("mounts", "The secret engines.").pure(Ops::READ),
    Route::new("mounts/{path+}/tune", "A secret engine's tuning.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(TUNE_FIELDS),
    Route::new("mounts/{path+}", "Enable, read or disable a secret engine.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(MOUNT_FIELDS),
    Route::new("auth", "The auth methods.").pure(Ops::READ),
    Route::new("auth/{path+}/tune", "An auth method's tuning.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(TUNE_FIELDS)
        .sudo(),
    Route::new("auth/{path+}", "Enable, read or disable an auth method.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(MOUNT_FIELDS)
        .sudo(),
    // The user-interface listings authenticate for themselves, without spending a use
    // of the token (the CLI and agent ask before every KV call).
    Route::new(
        "internal/ui/mounts",
        "The mounts: those listed as unauth without a token, those it may use with one.",
    )
    .pure(Ops::READ)
    .unauthenticated(),
    Route::new(
        "internal/ui/mounts/{path+}",
        "The mount serving a path, if the token may use it.",
    )
    .pure(Ops::READ)
    .unauthenticated(),
    Route::new(
        "internal/specs/openapi",
        "The OpenAPI document of every mounted path.",
    )
    .pure(Ops::READ)
    .fields(&[Field::str("context", "Accepted for compatibility.")]),
    Route::new(
        "policies/explain",
        "Which policy and rule decide a request (keyhaven).",
    )
    .ops(Ops::WRITE)
    .fields(&[
        Field::str("token", "The token to explain."),
        Field::str("accessor", "Or its accessor."),
        Field::str("path", "The request path.").required(),
        Field::str("operation", "read, create, update, patch, delete or list.").default("read"),
        Field::map("parameters", "The request's parameters."),
    ]),
    Route::new("policy", "The ACL policies (legacy shape).").pure(Ops::READ.and(Ops::LIST)),
    Route::new("policy/{name}", "An ACL policy (legacy shape).")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(POLICY_FIELDS),
    Route::new(
        "wrapping/wrap",
        "Wrap the request's data in a wrapping token.",
    )
    .ops(Ops::WRITE)
    .arbitrary_fields(),
    Route::new(
        "wrapping/unwrap",
        "The response a wrapping token holds; spends the token.",
    )
    .ops(Ops::WRITE)
    .fields(WRAPPING_FIELDS),
    Route::new(
        "wrapping/lookup",
        "A wrapping token's creation path, time and TTL.",
    )
    .pure(Ops::READ)
    .ops(Ops::WRITE)
    .fields(WRAPPING_FIELDS)
    .unauthenticated(),
    Route::new(
        "wrapping/rewrap",
        "Move a wrapped response to a new wrapping token.",
    )
    .ops(Ops::WRITE)
    .fields(WRAPPING_FIELDS),
    Route::new("policies/acl", "The ACL policies.").pure(Ops::READ.and(Ops::LIST)),
    Route::new("policies/acl/{name}", "An ACL policy.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(POLICY_FIELDS),
    Route::new("policies/password", "The password policies.").pure(Ops::LIST),
    Route::new("policies/password/{name}", "A password policy.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(&[Field::str(
            "policy",
            "The policy: HCL or JSON with `length` and `rule \"charset\"` blocks, optionally base64-encoded.",
        )]),
    Route::new(
        "policies/password/{name}/generate",
        "A password generated from a password policy.",
    )
    .pure(Ops::READ),
    // Leases (crate::lease).
    Route::new("leases/lookup", "A lease's issue and expiry times.")
        .ops(Ops::WRITE)
        .fields(LEASE_ID_FIELDS),
    Route::new(
        "leases/lookup/{prefix+}",
        "The lease ids and folders under a prefix.",
    )
    .pure(Ops::LIST)
    .sudo(),
    Route::new("leases/renew", "Extend a lease.")
        .ops(Ops::WRITE)
        .fields(RENEW_FIELDS),
    Route::new("leases/renew/{url_lease_id+}", "Extend a lease.")
        .ops(Ops::WRITE)
        .fields(RENEW_FIELDS),
    Route::new("renew", "Extend a lease (older path).")
        .ops(Ops::WRITE)
        .fields(RENEW_FIELDS),
    Route::new("renew/{url_lease_id+}", "Extend a lease (older path).")
        .ops(Ops::WRITE)
        .fields(RENEW_FIELDS),
    Route::new("leases/revoke", "Revoke a lease and its secret.")
        .ops(Ops::WRITE)
        .fields(REVOKE_FIELDS),
    Route::new("leases/revoke/{url_lease_id+}", "Revoke a lease and its secret.")
        .ops(Ops::WRITE)
        .fields(REVOKE_FIELDS),
    Route::new("revoke", "Revoke a lease and its secret (older path).")
        .ops(Ops::WRITE)
        .fields(REVOKE_FIELDS),
    Route::new(
        "revoke/{url_lease_id+}",
        "Revoke a lease and its secret (older path).",
    )
    .ops(Ops::WRITE)
    .fields(REVOKE_FIELDS),
    Route::new(
        "leases/revoke-prefix/{prefix+}",
        "Revoke every lease under a prefix.",
    )
    .ops(Ops::WRITE)
    .fields(SYNC_FIELDS)
    .sudo(),
    Route::new(
        "revoke-prefix/{prefix+}",
        "Revoke every lease under a prefix (older path).",
    )
    .ops(Ops::WRITE)
    .fields(SYNC_FIELDS)
    .sudo(),
    Route::new(
        "leases/revoke-force/{prefix+}",
        "Remove every lease under a prefix, even where the secret cannot be revoked.",
    )
    .ops(Ops::WRITE)
    .sudo(),
    Route::new(
        "revoke-force/{prefix+}",
        "Remove every lease under a prefix, even where the secret cannot be revoked (older path).",
    )
    .ops(Ops::WRITE)
    .sudo(),
    Route::new(
        "leases/tidy",
        "Repair the lease indexes; leases of revoked tokens become due.",
    )
    .ops(Ops::WRITE),
    Route::new("leases", "The irrevocable leases.")
        .pure(Ops::READ)
        .fields(IRREVOCABLE_FIELDS)
        .sudo(),
    Route::new("leases/count", "How many leases are irrevocable, by mount.")
        .pure(Ops::READ)
        .fields(IRREVOCABLE_FIELDS)
        .sudo(),
    // Tools and telemetry (crate::sys_tools, crate::metrics).
    Route::new(
        "tools/random/{source?}/{urlbytes?}",
        "Random bytes from the operating system's CSPRNG.",
    )
    .ops(Ops::WRITE)
    .fields(&[
        Field::int("bytes", "How many bytes, 1 to 131072.").default("32"),
        Field::str("format", "base64 or hex.").default("base64"),
        Field::str(
            "source",
            "platform, seal or all; every source is the platform's.",
        )
        .default("platform"),
    ]),
    Route::new("tools/hash/{urlalgorithm?}", "Hash the input.")
        .ops(Ops::WRITE)
        .fields(&[
            Field::str(
                "input",
                "The data to hash, base64 (none: the empty string).",
            ),
            Field::str(
                "algorithm",
                "sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384 or sha3-512.",
            )
            .default("sha2-256"),
            Field::str("format", "hex or base64.").default("hex"),
        ]),
    Route::new(
        "metrics",
        "Telemetry with Vault's metric names (JSON, or the Prometheus text format).",
    )
    .pure(Ops::READ)
    .fields(&[Field::str(
        "format",
        "prometheus for the Prometheus text format; none for JSON.",
    )]),
];

impl Core {
    /// Serve a request matched to one of [`ROUTES`].
    pub(crate) async fn handle_sys(
        &self,
        inner: &Arc<Unsealed>,
        br: &BackendRequest<'_>,
        entry: Option<&Arc<TokenEntry>>,
        req: &Request,
    ) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = br.operation;
        let path = br.capture("path");
        match (br.route.pattern, op) {
            ("seal", _) => {
                self.seal_from_request().await;
                Ok(Response::no_content())
            }
            ("rotate", _) => {
                let status = inner.barrier.rotate(self.clock.unix_seconds()).await?;
                tracing::info!(target: "keyhaven::seal", term = status.term, "keyring rotated");
                Ok(Response::no_content())
            }
            (
                "rotate/keyring"
                | "rotate/keyring/config"
                | "rotate/root/init"
                | "rotate/root/update"
                | "rotate/root/verify"
                | "rotate/root/backup"
                | "rekey/init"
                | "rekey/update"
                | "rekey/verify"
                | "rekey/backup"
                | "generate-root-token/attempt"
                | "generate-root-token/update"
                | "generate-root/attempt"
                | "generate-root/update"
                | "host-info"
                | "ha-status",
                _,
            ) => self.handle_recovery(inner, br.route.pattern, op, req).await,
            ("step-down", _) => {
                // Without high availability there is no one to hand over to: as in
                // OpenBao, the call succeeds and the server stays active.
                if let Some(ha) = &self.options.ha {
                    ha.step_down();
                }
                Ok(Response::no_content())
            }
            ("key-status", _) => {
                let s = inner.barrier.key_status()?;
                let mut data = Map::new();
                data.insert("term".to_owned(), json!(s.term));
                data.insert(
                    "install_time".to_owned(),
                    json!(rfc3339(unix_to_time(s.installed_unix))),
                );
                data.insert("encryptions".to_owned(), json!(s.encryptions));
                Ok(Response::data(data))
            }
            ("audit", _) => Ok(Response::data(self.options.audit.list())),
            ("audit-hash/{path}", _) => {
                let input = params::string(&req.data, "input")?
                    .ok_or_else(|| EngineError::invalid("missing parameter \"input\""))?;
                let hash = self.options.audit.hash(path, input)?;
                let mut data = Map::new();
                data.insert("hash".to_owned(), Value::String(hash));
                Ok(Response::data(data))
            }
            ("capabilities-self" | "capabilities" | "capabilities-accessor", _) => {
                self.capabilities(inner, br.route.pattern, entry, req).await
            }
            ("mounts", _) => self.list_table(inner, Table::Secrets),
            ("auth", _) => self.list_table(inner, Table::Auth),
            // `bao auth tune` tunes auth methods through `sys/mounts/auth/<path>/tune`
            // (which, as in OpenBao, needs no sudo, unlike `sys/auth/<path>/tune`).
            ("mounts/{path+}/tune", _) => match path.strip_prefix("auth/") {
                Some(auth_path) => self.tune_mount(inner, Table::Auth, auth_path, req).await,
                None => self.tune_mount(inner, Table::Secrets, path, req).await,
            },
            ("auth/{path+}/tune", _) => self.tune_mount(inner, Table::Auth, path, req).await,
            ("mounts/{path+}", Read) => self.read_mount(inner, Table::Secrets, path),
            ("auth/{path+}", Read) => self.read_mount(inner, Table::Auth, path),
            ("mounts/{path+}", Create | Update) => {
                self.enable_from_request(inner, Table::Secrets, path, req)
                    .await
            }
            ("auth/{path+}", Create | Update) => {
                self.enable_from_request(inner, Table::Auth, path, req)
                    .await
            }
            ("mounts/{path+}", Delete) => self.disable_mount(inner, Table::Secrets, path).await,
            ("auth/{path+}", Delete) => self.disable_mount(inner, Table::Auth, path).await,
            ("internal/ui/mounts", _) => self.ui_mounts(inner, req).await,
            ("internal/ui/mounts/{path+}", _) => self.ui_mount(inner, path, req).await,
            ("internal/specs/openapi", _) => Ok(Response::data(self.openapi(inner))),
            ("policies/explain", _) => self.explain(inner, req).await,
            ("policy" | "policy/{name}" | "policies/acl" | "policies/acl/{name}", _) => {
                let legacy = br.route.pattern.starts_with("policy");
                match br.captures.get("name") {
                    None if matches!(op, Read | List) => inner.policies.list_response(legacy).await,
                    None => Err(EngineError::UnsupportedOperation),
                    Some(name) => inner.policies.one(op, name, &req.data, legacy).await,
                }
            }
            ("policies/password", _) => self.list_password_policies(inner).await,
            ("policies/password/{name}" | "policies/password/{name}/generate", _) => {
                let name = br.captures.get("name").unwrap_or_default();
                let generate = br.route.pattern.ends_with("/generate");
                self.password_policy(inner, op, name, generate, req).await
            }
            ("tools/random/{source?}/{urlbytes?}", _) => crate::sys_tools::random(
                br.captures.get("source"),
                br.captures.get("urlbytes"),
                &req.data,
            ),
            ("tools/hash/{urlalgorithm?}", _) => {
                crate::sys_tools::hash(br.captures.get("urlalgorithm"), &req.data)
            }
            ("leases/lookup", _) => {
                let id = params::string(&req.data, "lease_id")?.unwrap_or_default();
                self.lease_lookup(inner, id).await
            }
            ("leases/lookup/{prefix+}", _) => {
                self.lease_list(inner, br.captures.get("prefix").unwrap_or_default())
                    .await
            }
            (
                "leases/renew" | "leases/renew/{url_lease_id+}" | "renew" | "renew/{url_lease_id+}",
                _,
            ) => {
                let id = lease_id_of(br, req)?;
                let increment = params::duration_secs(&req.data, "increment")?.unwrap_or(0);
                self.lease_renew(inner, &id, increment).await
            }
            (
                "leases/revoke"
                | "leases/revoke/{url_lease_id+}"
                | "revoke"
                | "revoke/{url_lease_id+}",
                _,
            ) => {
                let id = lease_id_of(br, req)?;
                let sync = params::boolean(&req.data, "sync")?.unwrap_or(true);
                self.lease_revoke(inner, &id, sync).await
            }
            ("leases/revoke-prefix/{prefix+}" | "revoke-prefix/{prefix+}", _) => {
                let sync = params::boolean(&req.data, "sync")?.unwrap_or(true);
                let prefix = br.captures.get("prefix").unwrap_or_default();
                self.lease_revoke_prefix(inner, prefix, sync, false).await
            }
            ("leases/revoke-force/{prefix+}" | "revoke-force/{prefix+}", _) => {
                let prefix = br.captures.get("prefix").unwrap_or_default();
                self.lease_revoke_prefix(inner, prefix, true, true).await
            }
            ("leases/tidy", _) => self.lease_tidy(inner).await,
            ("leases" | "leases/count", _) => {
                let kind = params::string(&req.data, "type")?.unwrap_or_default();
                let limit = params::string(&req.data, "limit")?.unwrap_or_default();
                let count = br.route.pattern == "leases/count";
                self.irrevocable_leases(inner, kind, limit, count).await
            }
            ("metrics", _) => self.metrics_response(&req.data),
            _ => Err(EngineError::UnsupportedOperation),
        }
    }

    /// `sys/policies/explain` (keyhaven extension): which policy and rule allow or deny
    /// `operation` on `path` for a token (given by value or accessor).
    ///
    /// The path is evaluated as written, without asking the backend for its canonical
    /// path: for a transit alias this explains the alias's path only, while a real request
    /// through the alias must also be allowed on the key's path (see
    /// [`crate::Backend::resolve_alias`]).
    async fn explain(&self, inner: &Arc<Unsealed>, req: &Request) -> Result<Response, EngineError> {
        let d = &req.data;
        let subject = if let Some(token) = params::string(d, "token")?.filter(|s| !s.is_empty()) {
            inner
                .tokens
                .lookup_accessor_or_token(None, Some(token))
                .await?
        } else if let Some(accessor) = params::string(d, "accessor")?.filter(|s| !s.is_empty()) {
            inner
                .tokens
                .lookup_accessor_or_token(Some(accessor), None)
                .await?
        } else {
            return Err(EngineError::invalid(
                "missing parameter \"token\" or \"accessor\"",
            ));
        };
        let subject =
            subject.ok_or_else(|| EngineError::invalid("unknown, expired or revoked token"))?;
        let path = params::string(d, "path")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing parameter \"path\""))?
            .trim_start_matches('/');
        let op = match params::string(d, "operation")?.unwrap_or("read") {
            "read" => Operation::Read,
            "create" => Operation::Create,
            "update" | "write" => Operation::Update,
            "patch" => Operation::Patch,
            "delete" => Operation::Delete,
            "list" => Operation::List,
            other => return Err(EngineError::invalid(format!("unknown operation {other:?}"))),
        };
        let params = match d.get("parameters") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let acl = inner.policies.acl_for(&subject.policies).await?;
        let sudo = self.route_of(inner, op, path).is_some_and(|r| r.sudo);
        let decision = acl.authorize(op, path, &params, sudo);
        let mut data = Map::new();
        data.insert("allowed".to_owned(), json!(decision.allowed));
        data.insert("reason".to_owned(), json!(decision.reason));
        data.insert("policy".to_owned(), json!(decision.policy));
        data.insert("rule".to_owned(), json!(decision.rule));
        data.insert("policies".to_owned(), json!(subject.policies));
        data.insert("path".to_owned(), json!(path));
        data.insert("operation".to_owned(), json!(op.as_str()));
        Ok(Response::data(data))
    }

    /// `sys/capabilities-self`, `sys/capabilities` (another token) and
    /// `sys/capabilities-accessor`.
    async fn capabilities(
        &self,
        inner: &Arc<Unsealed>,
        which: &str,
        entry: Option<&Arc<TokenEntry>>,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let subject = match which {
            "capabilities-self" => entry.cloned().ok_or(EngineError::PermissionDenied)?,
            "capabilities" => {
                let token = params::string(&req.data, "token")?
                    .ok_or_else(|| EngineError::invalid("missing parameter \"token\""))?;
                // Asking about a token does not spend one of its uses.
                inner
                    .tokens
                    .lookup_accessor_or_token(None, Some(token))
                    .await?
                    .ok_or_else(|| EngineError::invalid("invalid token"))?
            }
            _ => {
                let accessor = params::string(&req.data, "accessor")?
                    .ok_or_else(|| EngineError::invalid("missing parameter \"accessor\""))?;
                inner
                    .tokens
                    .lookup_accessor(accessor)
                    .await?
                    .ok_or_else(|| EngineError::invalid("invalid accessor"))?
            }
        };
        let paths = match params::string_list(&req.data, "paths")? {
            Some(p) if !p.is_empty() => p,
            _ => match params::string(&req.data, "path")? {
                Some(p) => vec![p.to_owned()],
                None => return Err(EngineError::invalid("missing parameter \"paths\"")),
            },
        };
        let acl = inner.policies.acl_for(&subject.policies).await?;
        let mut data = Map::new();
        let mut all = Vec::new();
        for p in &paths {
            let caps = acl.capabilities(p.trim_start_matches('/'));
            all.extend(caps.iter().cloned());
            data.insert(p.clone(), json!(caps));
        }
        if paths.len() == 1 {
            data.insert("capabilities".to_owned(), json!(all));
        }
        Ok(Response::data(data))
    }
}

fn unix_to_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Core {
    /// The OpenAPI 3 document of every path mounted now, generated from the route tables
    /// (`sys/internal/specs/openapi`, as Vault serves it).
    pub(crate) fn openapi(&self, inner: &Unsealed) -> Map<String, Value> {
        let mut paths = Map::new();
        let secrets = inner.secrets.read().clone();
        let auth = inner.auth.read().clone();
        let mounts = secrets
            .mounted()
            .iter()
            .map(|m| (String::new(), m))
            .chain(auth.mounted().iter().map(|m| ("auth/".to_owned(), m)));
        for (prefix, mounted) in mounts {
            let tag = if prefix.is_empty() {
                if mounted.entry.kind == "system" {
                    "system"
                } else {
                    "secrets"
                }
            } else {
                "auth"
            };
            for route in mounted.handler.routes() {
                let item = openapi_path(route, &mounted.entry.kind, tag);
                // One path per combination of optional segments, as Vault lists them
                // (`/sys/tools/hash` and `/sys/tools/hash/{urlalgorithm}`).
                for pattern in openapi_patterns(route.pattern) {
                    let path = format!("/{prefix}{}{pattern}", mounted.entry.path);
                    let path = path.trim_end_matches('/').to_owned();
                    let mut item = item.clone();
                    if let Some(Value::Array(params)) = item.get_mut("parameters") {
                        params.retain(|p| {
                            p["name"]
                                .as_str()
                                .is_some_and(|n| path.contains(&format!("{{{n}}}")))
                        });
                    }
                    paths.insert(path, item);
                }
            }
        }
        let mut doc = Map::new();
        doc.insert("openapi".to_owned(), json!("3.0.2"));
        doc.insert(
            "info".to_owned(),
            json!({
                "title": "keyhaven API",
                "description": "HTTP API of keyhaven, compatible with Vault's for what it implements. All API routes are prefixed with `/v1/`.",
                "version": env!("CARGO_PKG_VERSION"),
                "license": {"name": "Apache-2.0"},
            }),
        );
        doc.insert("paths".to_owned(), Value::Object(paths));
        doc.insert("components".to_owned(), json!({"schemas": {}}));
        doc
    }
}

/// A route pattern as OpenAPI path templates: `{path*}` becomes `{path}`, and each
/// optional segment (`{name?}`) is left out or kept, in every combination.
fn openapi_patterns(pattern: &str) -> Vec<String> {
    let segments: Vec<&str> = pattern.split('/').collect();
    let optional = segments.iter().filter(|s| s.ends_with("?}")).count();
    (0u32..1 << optional)
        .map(|mask| {
            let mut index = 0;
            segments
                .iter()
                .filter(|seg| {
                    if !seg.ends_with("?}") {
                        return true;
                    }
                    let keep = mask & (1 << index) != 0;
                    index += 1;
                    keep
                })
                .map(|seg| {
                    seg.strip_prefix('{')
                        .and_then(|s| s.strip_suffix('}'))
                        .map_or_else(
                            || (*seg).to_owned(),
                            |inner| format!("{{{}}}", inner.trim_end_matches(['?', '*', '+'])),
                        )
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// One path item: its captured segments as path parameters, and an operation per method.
fn openapi_path(route: &Route, kind: &str, tag: &str) -> Value {
    let parameters: Vec<Value> = route
        .captures()
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string"},
            })
        })
        .collect();
    let properties: Map<String, Value> = route
        .all_fields()
        .map(|f| {
            let mut schema = Map::new();
            schema.insert("type".to_owned(), json!(f.kind.openapi_type()));
            schema.insert("description".to_owned(), json!(f.description));
            if let Some(d) = f.default {
                schema.insert("default".to_owned(), json!(d));
            }
            (f.name.to_owned(), Value::Object(schema))
        })
        .collect();
    let required: Vec<&str> = route
        .all_fields()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let id = |verb: &str| {
        let slug: String = route
            .pattern
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let slug = slug
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        format!("{kind}-{verb}-{slug}")
    };
    let ok = json!({"200": {"description": "OK"}});
    let mut item = Map::new();
    item.insert("description".to_owned(), json!(route.summary));
    item.insert("parameters".to_owned(), Value::Array(parameters));
    if route.existence_check {
        item.insert("x-vault-createSupported".to_owned(), json!(true));
    }
    if route.unauthenticated {
        item.insert("x-vault-unauthenticated".to_owned(), json!(true));
    }
    if route.sudo {
        item.insert("x-vault-sudoRequired".to_owned(), json!(true));
    }
    if route.ops.contains(Operation::Read) || route.ops.contains(Operation::List) {
        let mut get = json!({"operationId": id("read"), "tags": [tag], "responses": ok});
        if route.ops.contains(Operation::List)
            && let Some(get) = get.as_object_mut()
        {
            get.insert(
                "parameters".to_owned(),
                json!([{
                    "name": "list",
                    "in": "query",
                    "description": "Must be set to `true`",
                    "required": !route.ops.contains(Operation::Read),
                    "schema": {"type": "string", "enum": ["true"]},
                }]),
            );
        }
        item.insert("get".to_owned(), get);
    }
    let body = json!({
        "required": true,
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": properties,
            "required": required,
        }}},
    });
    if route.ops.contains(Operation::Update) {
        item.insert(
            "post".to_owned(),
            json!({"operationId": id("write"), "tags": [tag], "requestBody": body, "responses": ok}),
        );
    }
    if route.ops.contains(Operation::Patch) {
        item.insert(
            "patch".to_owned(),
            json!({"operationId": id("patch"), "tags": [tag], "requestBody": body, "responses": ok}),
        );
    }
    if route.ops.contains(Operation::Delete) {
        item.insert(
            "delete".to_owned(),
            json!({"operationId": id("delete"), "tags": [tag], "responses": {"204": {"description": "empty body"}}}),
        );
    }
    Value::Object(item)
}

/// The lease id of a renew or revoke: the body's `lease_id`, else the one in the path.
fn lease_id_of(br: &BackendRequest<'_>, req: &Request) -> Result<String, EngineError> {
    match params::string(&req.data, "lease_id")?.filter(|s| !s.is_empty()) {
        Some(id) => Ok(id.to_owned()),
        None => Ok(br
            .captures
            .get("url_lease_id")
            .unwrap_or_default()
            .to_owned()),
    }
}
