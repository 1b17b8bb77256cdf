//! `keyhaven login`: authenticate with a token or a Kubernetes ServiceAccount token and
//! store the resulting token in the token file the other commands read.
//!
//! The token is printed only with `--no-store`, whose purpose is to hand it out.

use std::path::PathBuf;
use std::process::ExitCode;

use keyhaven_client::TokenLookup;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use zeroize::Zeroize as _;

use crate::remote::{self, ClientArgs, Failure, Format};
use crate::token_cmd::{self, parse_secret};
use crate::{output, token_file};

/// Where pods find their ServiceAccount token.
const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    /// An existing token, checked with `auth/token/lookup-self`.
    Token,
    /// A Kubernetes ServiceAccount token, exchanged at `auth/<mount>/login`.
    Kubernetes,
}

/// Arguments of `keyhaven login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The auth method.
    #[arg(long, value_enum, default_value = "token")]
    method: Method,
    /// The token (`--method token`); `-` reads it from stdin. Without it, a terminal is
    /// prompted (without echo) and anything else is read from stdin.
    #[arg(id = "target", value_name = "TOKEN", value_parser = parse_secret)]
    token: Option<SecretString>,
    /// The role to log in as (`--method kubernetes`).
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The ServiceAccount token file (`--method kubernetes`).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_JWT_FILE)]
    jwt_file: PathBuf,
    /// The path of the auth method (`--method kubernetes`).
    #[arg(long, value_name = "PATH", default_value = "kubernetes")]
    mount: String,
    /// Print the token instead of storing it in the token file.
    #[arg(long)]
    no_store: bool,
}

/// Run `keyhaven login`.
pub fn run(args: LoginArgs) -> ExitCode {
    remote::block_on(login(args))
}

async fn login(args: LoginArgs) -> Result<ExitCode, Failure> {
    let format = args.client.format()?;
    let (token, auth, request_id, warnings) = match args.method {
        Method::Token => {
            if args.role.is_some() {
                return Err(Failure::local("--role applies to --method kubernetes only"));
            }
            let token = match args.token {
                Some(t) => token_cmd::token_arg(t, "token")?,
                None => output::read_secret("Token", "token")?,
            };
            let client = args.client.client_with_token(Some(token.clone()))?;
            let secret = client
                .lookup_token(keyhaven_client::TokenRef::Caller)
                .await
                .map_err(|e| Failure::remote("verifying the token", e))?;
            let auth = auth_from_lookup(&secret.data);
            (
                token,
                auth,
                secret.request_id.clone(),
                secret.warnings().to_vec(),
            )
        }
        Method::Kubernetes => {
            if args.token.is_some() {
                return Err(Failure::local(
                    "a TOKEN argument applies to --method token only; use --jwt-file",
                ));
            }
            let role = args
                .role
                .as_deref()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| Failure::local("--method kubernetes needs --role"))?;
            let jwt = read_jwt(&args.jwt_file)?;
            let mount = args.mount.trim_matches('/');
            if mount.is_empty() {
                return Err(Failure::local("--mount must not be empty"));
            }
            let client = args.client.client_with_token(None)?;
            let resp = client
                .login_kubernetes(mount, role, &jwt)
                .await
                .map_err(|e| Failure::remote(format!("logging in at auth/{mount}/login"), e))?;
            if resp.auth.client_token.expose_secret().is_empty() {
                return Err(Failure::local(format!(
                    "auth/{mount}/login answered without a token"
                )));
            }
            let auth = resp.auth.to_api(false);
            (
                resp.auth.client_token.clone(),
                auth,
                resp.request_id,
                resp.warnings,
            )
        }
    };
    output::warnings(&warnings);
    let stored = if args.no_store {
        None
    } else {
        Some(token_file::store(&token)?)
    };
    // The token is shown only when it was not stored: then showing it is the point.
    let mut shown = auth;
    if args.no_store
        && let Value::Object(map) = &mut shown
    {
        map.insert("client_token".into(), json!(token.expose_secret()));
    }
    match format {
        Format::Json => output::json(&json!({
            "request_id": request_id,
            "lease_id": "",
            "lease_duration": 0,
            "renewable": false,
            "data": null,
            "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
            "auth": shown,
        }))?,
        Format::Table => {
            let intro = match &stored {
                Some(path) => format!(
                    "Success! You are now authenticated. The token information displayed below\n\
                     is already stored in {}. You do NOT need to run \"keyhaven login\"\n\
                     again. Future keyhaven requests will automatically use this token.\n",
                    path.display()
                ),
                None => "Success! You are now authenticated. The token was NOT stored: pass it\n\
                         with --token or KEYHAVEN_TOKEN to use it.\n"
                    .to_owned(),
            };
            output::line(&intro);
            output::line(&output::table(&token_cmd::auth_rows(&shown)));
        }
    }
    if stored.is_some() && args.client.token_overrides_file() {
        output::warn(
            "a token is set by --token or KEYHAVEN_TOKEN/VAULT_TOKEN; it takes precedence over the stored token.",
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `auth` object of a token login, built from the token's lookup (which has no
/// `client_token`: the caller knows it).
fn auth_from_lookup(lookup: &TokenLookup) -> Value {
    json!({
        "accessor": lookup.accessor,
        "policies": lookup.policies,
        "token_policies": lookup.policies,
        "identity_policies": [],
        "metadata": lookup.meta,
        "lease_duration": lookup.ttl,
        "renewable": lookup.renewable,
        "orphan": lookup.orphan,
        "num_uses": lookup.num_uses,
        "token_type": if lookup.kind.is_empty() { "service" } else { lookup.kind.as_str() },
    })
}

/// The ServiceAccount token from its file, trimmed.
fn read_jwt(path: &std::path::Path) -> Result<SecretString, Failure> {
    let mut text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Local(anyhow::Error::new(e).context(format!(
            "cannot read the ServiceAccount token {}",
            path.display()
        )))
    })?;
    let jwt = SecretString::from(text.trim());
    text.zeroize();
    if jwt.expose_secret().is_empty() {
        return Err(Failure::local(format!(
            "the ServiceAccount token file {} is empty",
            path.display()
        )));
    }
    Ok(jwt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_login_reports_the_lookup_without_the_token() {
        let lookup: TokenLookup = serde_json::from_value(json!({
            "accessor": "acc", "policies": ["root"], "ttl": 0, "id": "kh.s3cr3t"
        }))
        .unwrap();
        let auth = auth_from_lookup(&lookup);
        assert!(!auth.to_string().contains("s3cr3t"), "{auth}");
        let rows = token_cmd::auth_rows(&auth);
        assert!(rows.contains(&("token_accessor".into(), "acc".into())));
        assert!(rows.contains(&("token_duration".into(), "∞".into())));
        assert!(rows.iter().all(|(k, _)| k != "token"));
    }
}
