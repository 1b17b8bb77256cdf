//! `keyhaven token …`: create, look up, renew and revoke tokens, and show a token's
//! capabilities on a path, with Vault's flags and output.
//!
//! A token is printed only by `token create`, whose purpose is to hand one out. Lookups
//! and renewals show the accessor, policies and lifetimes, never the token.

use std::process::ExitCode;

use keyhaven_client::{AuthResponse, CreateToken, TokenParent, TokenRef};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

use crate::args::parse_pairs;
use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token: a child of the current one, an orphan, or through a role.
    Create(CreateArgs),
    /// Show a token's properties (the current token without TOKEN).
    Lookup(LookupArgs),
    /// Extend a token's lease (the current token without TOKEN).
    Renew(RenewArgs),
    /// Revoke a token and its children.
    Revoke(RevokeArgs),
    /// Show the capabilities of a token (the current one without TOKEN) on a path.
    Capabilities(CapabilitiesArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// A policy to attach; repeat or separate with commas. Without any, the token gets
    /// the current token's policies.
    #[arg(long = "policy", value_name = "POLICY", value_delimiter = ',')]
    policies: Vec<String>,
    /// Time to live, e.g. `1h` or `30m`.
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Hard limit of the token's lifetime, renewals included.
    #[arg(long, value_name = "DURATION")]
    explicit_max_ttl: Option<String>,
    /// Make a periodic token: each renewal extends it by this much.
    #[arg(long, value_name = "DURATION")]
    period: Option<String>,
    /// Number of uses (0: unlimited).
    #[arg(long, value_name = "N")]
    num_uses: Option<u64>,
    /// Whether the token can be renewed [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    renewable: Option<bool>,
    /// Create a token without a parent: it outlives the current token (needs sudo).
    #[arg(long, conflicts_with = "role")]
    orphan: bool,
    /// Do not attach the `default` policy.
    #[arg(long)]
    no_default_policy: bool,
    /// A name shown in lookups and audit logs.
    #[arg(long, value_name = "NAME")]
    display_name: Option<String>,
    /// Metadata `key=value`; repeat for several.
    #[arg(long, value_name = "K=V")]
    metadata: Vec<String>,
    /// Create the token through this token role.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// Print only this field (`token`, `token_accessor`, `token_duration`, …).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

#[derive(Debug, clap::Args)]
struct LookupArgs {
    /// The token to look up (`-`: read it from stdin); the current token without it.
    #[arg(id = "target", value_name = "TOKEN", value_parser = parse_secret)]
    token: Option<SecretString>,
    /// TOKEN is an accessor.
    #[arg(long, requires = "target")]
    accessor: bool,
}

#[derive(Debug, clap::Args)]
struct RenewArgs {
    /// The token to renew (`-`: read it from stdin); the current token without it.
    #[arg(id = "target", value_name = "TOKEN", value_parser = parse_secret)]
    token: Option<SecretString>,
    /// TOKEN is an accessor.
    #[arg(long, requires = "target")]
    accessor: bool,
    /// Ask for this much more time, e.g. `1h` (the server may grant less).
    #[arg(long, value_name = "DURATION")]
    increment: Option<String>,
}

/// How `token revoke` treats the children of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RevokeMode {
    /// Revoke the token only; its children become orphans (needs sudo).
    Orphan,
}

#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// The token to revoke (`-`: read it from stdin).
    #[arg(id = "target", value_name = "TOKEN", value_parser = parse_secret, required_unless_present = "self_")]
    token: Option<SecretString>,
    /// TOKEN is an accessor.
    #[arg(long, requires = "target")]
    accessor: bool,
    /// Revoke the current token.
    #[arg(long = "self", id = "self_", conflicts_with_all = ["target", "accessor", "mode"])]
    self_: bool,
    /// `orphan`: keep the token's children, as orphans.
    #[arg(long, value_enum, value_name = "MODE", conflicts_with = "accessor")]
    mode: Option<RevokeMode>,
}

#[derive(Debug, clap::Args)]
struct CapabilitiesArgs {
    /// `[TOKEN] PATH`: the token (`-`: read it from stdin; the current token when only
    /// PATH is given) and the API path.
    #[arg(value_name = "[TOKEN] PATH", num_args = 1..=2, required = true)]
    args: Vec<String>,
}

/// A value parser for positional tokens: kept secret from the start.
pub fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// A token argument, with `-` read from stdin (one line; on a terminal, a prompt without
/// echo).
pub fn token_arg(token: SecretString, what: &str) -> Result<SecretString, Failure> {
    if token.expose_secret() != "-" {
        return Ok(token);
    }
    output::read_secret(what, what)
}

/// Run `keyhaven token …`.
pub fn run(args: TokenArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        match args.command {
            TokenCommand::Create(a) => create(&args.client, a, format).await,
            TokenCommand::Lookup(a) => lookup(&args.client, a, format).await,
            TokenCommand::Renew(a) => renew(&args.client, a, format).await,
            TokenCommand::Revoke(a) => revoke(&args.client, a).await,
            TokenCommand::Capabilities(a) => capabilities(&args.client, a, format).await,
        }
    })
}

async fn create(client: &ClientArgs, a: CreateArgs, format: Format) -> Result<ExitCode, Failure> {
    let mut request = CreateToken::default();
    request.policies = a
        .policies
        .iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    request.meta = parse_pairs(&a.metadata, "--metadata")?;
    request.no_default_policy = a.no_default_policy;
    request.ttl = a.ttl;
    request.explicit_max_ttl = a.explicit_max_ttl;
    request.period = a.period;
    request.renewable = a.renewable;
    request.num_uses = a.num_uses;
    request.display_name = a.display_name;
    let parent = match (&a.role, a.orphan) {
        (Some(role), _) => TokenParent::Role(role),
        (None, true) => TokenParent::Orphan,
        (None, false) => TokenParent::Caller,
    };
    let api = match parent {
        TokenParent::Caller => "auth/token/create".to_owned(),
        TokenParent::Orphan => "auth/token/create-orphan".to_owned(),
        TokenParent::Role(r) => format!("auth/token/create/{r}"),
    };
    let resp = client
        .client()?
        .create_token(parent, &request)
        .await
        .map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    // The purpose of this command is to hand out the new token: it is shown.
    print_auth(&resp, true, a.field.as_deref(), format)?;
    Ok(ExitCode::SUCCESS)
}

/// Print an answer that carries a token: the `auth` rows (the token itself only when
/// `with_token`), one `field`, or the envelope as JSON.
pub fn print_auth(
    resp: &AuthResponse,
    with_token: bool,
    field: Option<&str>,
    format: Format,
) -> Result<(), Failure> {
    output::warnings(&resp.warnings);
    let auth = resp.auth.to_api(with_token);
    if let Some(field) = field {
        let rows = auth_rows(&auth);
        let (_, value) = rows
            .iter()
            .find(|(k, _)| k == field)
            .ok_or_else(|| Failure::local(format!("Field \"{field}\" not present in secret")))?;
        return match format {
            Format::Json => output::json(value),
            Format::Table => output::raw(value),
        };
    }
    match format {
        Format::Json => output::json(&resp.to_api(with_token)),
        Format::Table => {
            output::line(&output::table(&auth_rows(&auth)));
            Ok(())
        }
    }
}

/// The rows Vault's CLI prints for an `auth` object: `token` (when the object has a
/// `client_token`), `token_accessor`, `token_duration`, `token_renewable`, the policy
/// lists and `token_meta_<key>`.
pub fn auth_rows(auth: &Value) -> Vec<(String, String)> {
    let text = |k: &str| auth.get(k).and_then(Value::as_str).unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        auth.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    if let Some(t) = auth.get("client_token").and_then(Value::as_str)
        && !t.is_empty()
    {
        rows.push(("token".to_owned(), t.to_owned()));
    }
    rows.push(("token_accessor".to_owned(), text("accessor").to_owned()));
    let secs = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    rows.push(("token_duration".to_owned(), human_duration(secs)));
    rows.push((
        "token_renewable".to_owned(),
        auth.get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
    ));
    rows.push((
        "token_policies".to_owned(),
        quoted_list(&list("token_policies")),
    ));
    rows.push((
        "identity_policies".to_owned(),
        quoted_list(&list("identity_policies")),
    ));
    rows.push(("policies".to_owned(), quoted_list(&list("policies"))));
    if let Some(Value::Object(meta)) = auth.get("metadata") {
        for (k, v) in meta {
            rows.push((format!("token_meta_{k}"), output::value_text(v)));
        }
    }
    rows
}

/// A list as Go's `%q` prints it, as Vault's token tables show policies: `["a" "b"]`.
pub fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Seconds as Vault's CLI shows a token duration: `∞` for 0, else Go's duration text
/// without zero minutes and seconds (`768h`, `1h30m`, `45s`).
pub fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "∞".to_owned();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || (h > 0 && s > 0) {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    // Go prints `1h0m5s`; Vault drops the `0m` only when nothing follows but seconds
    // ("1h5s"), so match that.
    out.replace("h0m", "h")
}

/// The token an argument names, as a [`TokenRef`]: the caller, an accessor or a token.
enum Which {
    Caller,
    Accessor(String),
    Token(SecretString),
}

impl Which {
    fn from_args(token: Option<SecretString>, accessor: bool) -> Result<Which, Failure> {
        match token {
            None => Ok(Which::Caller),
            Some(t) if accessor => Ok(Which::Accessor(
                token_arg(t, "accessor")?.expose_secret().to_owned(),
            )),
            Some(t) => Ok(Which::Token(token_arg(t, "token")?)),
        }
    }

    fn as_ref(&self) -> TokenRef<'_> {
        match self {
            Which::Caller => TokenRef::Caller,
            Which::Accessor(a) => TokenRef::Accessor(a),
            Which::Token(t) => TokenRef::Token(t),
        }
    }

    fn api(&self, op: &str) -> String {
        match self {
            Which::Caller => format!("auth/token/{op}-self"),
            Which::Accessor(_) => format!("auth/token/{op}-accessor"),
            Which::Token(_) => format!("auth/token/{op}"),
        }
    }
}

async fn lookup(client: &ClientArgs, a: LookupArgs, format: Format) -> Result<ExitCode, Failure> {
    let which = Which::from_args(a.token, a.accessor)?;
    let api = which.api("lookup");
    let secret = client
        .client()?
        .lookup_token(which.as_ref())
        .await
        .map_err(|e| Failure::remote(format!("reading {api}"), e))?;
    output::warnings(secret.warnings());
    match format {
        Format::Json => output::json(&secret)?,
        Format::Table => {
            let data = serde_json::to_value(&secret.data).map_err(|e| {
                Failure::Local(anyhow::Error::new(e).context("cannot encode the token properties"))
            })?;
            let rows: Vec<(String, String)> = data
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), output::value_text(v)))
                .collect();
            output::line(&output::table(&rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn renew(client: &ClientArgs, a: RenewArgs, format: Format) -> Result<ExitCode, Failure> {
    let which = Which::from_args(a.token, a.accessor)?;
    let api = which.api("renew");
    let resp = client
        .client()?
        .renew_token(which.as_ref(), a.increment.as_deref())
        .await
        .map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    // The token being renewed is already known to the caller: it is not shown.
    print_auth(&resp, false, None, format)?;
    Ok(ExitCode::SUCCESS)
}

async fn revoke(client: &ClientArgs, a: RevokeArgs) -> Result<ExitCode, Failure> {
    let which = if a.self_ {
        Which::Caller
    } else {
        match a.token {
            Some(t) => Which::from_args(Some(t), a.accessor)?,
            None => {
                return Err(Failure::local(
                    "Not enough arguments (expected TOKEN or --self)",
                ));
            }
        }
    };
    let c = client.client()?;
    let (api, result) = match (a.mode, &which) {
        (Some(RevokeMode::Orphan), Which::Token(t)) => (
            "auth/token/revoke-orphan".to_owned(),
            c.revoke_token_orphan(t).await,
        ),
        (Some(RevokeMode::Orphan), _) => {
            return Err(Failure::local(
                "--mode orphan needs a TOKEN (not an accessor or --self)",
            ));
        }
        (None, w) => (w.api("revoke"), c.revoke_token(w.as_ref()).await),
    };
    result.map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    output::line("Success! Revoked token (if it existed)");
    Ok(ExitCode::SUCCESS)
}

async fn capabilities(
    client: &ClientArgs,
    a: CapabilitiesArgs,
    format: Format,
) -> Result<ExitCode, Failure> {
    let (token, path) = match a.args.as_slice() {
        [path] => (None, path.clone()),
        [token, path] => (
            Some(token_arg(SecretString::from(token.clone()), "token")?),
            path.clone(),
        ),
        _ => return Err(Failure::local("expected [TOKEN] PATH")),
    };
    let api = if token.is_some() {
        "sys/capabilities"
    } else {
        "sys/capabilities-self"
    };
    let mut caps = client
        .client()?
        .capabilities(token.as_ref(), path.trim_start_matches('/'))
        .await
        .map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    caps.sort();
    match format {
        Format::Json => output::json(&caps)?,
        Format::Table if caps.is_empty() => output::line("deny"),
        Format::Table => output::line(&caps.join(", ")),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_look_like_vaults() {
        assert_eq!(human_duration(0), "∞");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(90), "1m30s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(2_764_800), "768h");
        assert_eq!(human_duration(5400), "1h30m");
        assert_eq!(human_duration(3605), "1h5s");
        assert_eq!(human_duration(3661), "1h1m1s");
    }

    #[test]
    fn auth_rows_show_the_token_only_when_present() {
        let mut auth = json!({"accessor": "a1", "policies": ["default", "p"],
            "token_policies": ["default", "p"], "identity_policies": null,
            "metadata": {"role": "app"}, "lease_duration": 3600, "renewable": true});
        let rows = auth_rows(&auth);
        assert!(rows.iter().all(|(k, _)| k != "token"));
        assert!(rows.contains(&("policies".into(), r#"["default" "p"]"#.into())));
        assert!(rows.contains(&("token_duration".into(), "1h".into())));
        assert!(rows.contains(&("token_meta_role".into(), "app".into())));
        auth["client_token"] = json!("kh.t");
        assert_eq!(
            auth_rows(&auth).first(),
            Some(&("token".into(), "kh.t".into()))
        );
    }

    #[test]
    fn bad_metadata_is_not_echoed() {
        let Err(Failure::Local(e)) = parse_pairs(&["hunter2".into()], "--metadata") else {
            panic!()
        };
        assert!(!e.to_string().contains("hunter2"));
        let m = parse_pairs(&["a=b=c".into()], "--metadata").unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("b=c"));
    }
}
