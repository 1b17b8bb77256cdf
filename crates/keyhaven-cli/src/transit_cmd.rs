//! `keyhaven transit …`: the transit engine's keys and cryptography, as Vault's
//! `transit/*` API paths.
//!
//! Inputs are taken as given (a TEXT argument, `--file F`, or `-` for stdin) and
//! base64-encoded for the server; `--context` and `--aad` are text too and encoded the
//! same way. `decrypt` decodes the plaintext and writes the raw bytes to stdout or
//! `--output F`. Plaintexts and data keys are shown only by `decrypt` and
//! `datakey --plaintext`, whose purpose is to show them; errors never quote them.
//!
//! Exit codes: 0 ok, 1 usage or local error, 2 API error; `verify` exits 2 when the
//! signature is not valid.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyhaven_client::{Client, envelope_warnings};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven transit`.
#[derive(Debug, clap::Args)]
pub struct TransitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The path the transit engine is mounted at.
    #[arg(long, global = true, value_name = "MOUNT", default_value = "transit")]
    mount: String,
    #[command(subcommand)]
    command: TransitCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TransitCommand {
    /// Create a named key.
    Create(CreateArgs),
    /// List the keys.
    List,
    /// Show a key's settings and versions (never its material).
    Read(KeyArg),
    /// Add a new version of a key; new ciphertexts use it.
    Rotate(KeyArg),
    /// Change a key's settings: `config KEY deletion_allowed=true min_decryption_version=2`.
    Config(ConfigArgs),
    /// Encrypt TEXT, a file or stdin; print the ciphertext.
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext; write the plaintext's raw bytes to stdout or --output.
    Decrypt(DecryptArgs),
    /// Re-encrypt a ciphertext with the key's latest version, without revealing it.
    Rewrap(RewrapArgs),
    /// Generate a data key: its ciphertext, and with --plaintext the key itself.
    Datakey(DatakeyArgs),
    /// Sign TEXT, a file or stdin.
    Sign(SignArgs),
    /// Verify a signature of TEXT, a file or stdin (exit 0 valid, 2 invalid).
    Verify(VerifyArgs),
    /// Compute the HMAC of TEXT, a file or stdin with the key's HMAC key.
    Hmac(HmacArgs),
}

#[derive(Debug, clap::Args)]
struct KeyArg {
    /// The key name.
    #[arg(value_name = "KEY")]
    key: String,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The key type: aes128-gcm96, aes256-gcm96, chacha20-poly1305, ed25519,
    /// ecdsa-p256, ecdsa-p384, ecdsa-p521, rsa-2048, rsa-3072, rsa-4096, hmac.
    #[arg(long = "type", value_name = "TYPE", default_value = "aes256-gcm96")]
    kind: String,
    /// Derive a key per request from a --context.
    #[arg(long)]
    derived: bool,
    /// Allow the key material to be exported (cannot be undone).
    #[arg(long)]
    exportable: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Settings as `key=value`.
    #[arg(value_name = "K=V", required = true)]
    settings: Vec<String>,
}

/// Where the input of encrypt, sign, verify and hmac comes from.
#[derive(Debug, clap::Args)]
struct InputArgs {
    /// The input text, or `-` to read stdin.
    #[arg(value_name = "TEXT", conflicts_with = "file")]
    text: Option<String>,
    /// Read the input from this file (any bytes).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Derivation context and associated data, given as text.
#[derive(Debug, clap::Args)]
struct ContextArgs {
    /// The derivation context (for derived keys), as text.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
    /// Associated data authenticated with the ciphertext (AEAD keys), as text.
    #[arg(long, value_name = "TEXT")]
    aad: Option<String>,
}

#[derive(Debug, clap::Args)]
struct EncryptArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    ctx: ContextArgs,
    /// Print only this field of the answer (e.g. `ciphertext`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DecryptArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The ciphertext, `vault:vN:…`.
    #[arg(value_name = "CIPHERTEXT")]
    ciphertext: String,
    #[command(flatten)]
    ctx: ContextArgs,
    /// Write the plaintext to this file (created with mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RewrapArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The ciphertext, `vault:vN:…`.
    #[arg(value_name = "CIPHERTEXT")]
    ciphertext: String,
    #[command(flatten)]
    ctx: ContextArgs,
    /// Print only this field of the answer (e.g. `ciphertext`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DatakeyArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Return the data key itself along with its ciphertext.
    #[arg(long, conflicts_with = "wrapped")]
    plaintext: bool,
    /// Return only the data key's ciphertext (the default).
    #[arg(long)]
    wrapped: bool,
    /// The data key's size in bits: 128, 256 or 512.
    #[arg(long, value_name = "BITS", default_value_t = 256)]
    bits: u32,
    #[command(flatten)]
    ctx: ContextArgs,
    /// Print only this field of the answer (e.g. `ciphertext`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SignArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    alg: SignatureAlgArgs,
    /// Print only this field of the answer (e.g. `signature`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SignatureAlgArgs {
    /// The hash algorithm, e.g. sha2-256 (ignored by ed25519).
    #[arg(long = "hash", value_name = "ALG")]
    hash: Option<String>,
    /// The RSA signature algorithm: pss or pkcs1v15.
    #[arg(long, value_name = "ALG")]
    signature_algorithm: Option<String>,
    /// The derivation context (for derived keys), as text.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The signature, `vault:vN:…`.
    #[arg(value_name = "SIGNATURE")]
    signature: String,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    alg: SignatureAlgArgs,
}

#[derive(Debug, clap::Args)]
struct HmacArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    input: InputArgs,
    /// The hash algorithm, e.g. sha2-256.
    #[arg(long, value_name = "ALG")]
    algorithm: Option<String>,
    /// Print only this field of the answer (e.g. `hmac`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
}

/// Run `keyhaven transit …`.
pub fn run(args: TransitArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let mount = args.mount.trim_matches('/').to_owned();
        if mount.is_empty() {
            return Err(Failure::local("--mount must not be empty"));
        }
        let t = Transit {
            client: args.client.client()?,
            mount,
            format,
        };
        match args.command {
            TransitCommand::Create(a) => t.create(a).await,
            TransitCommand::List => t.list().await,
            TransitCommand::Read(a) => t.read(&a).await,
            TransitCommand::Rotate(a) => t.rotate(&a).await,
            TransitCommand::Config(a) => t.config(a).await,
            TransitCommand::Encrypt(a) => t.encrypt(a).await,
            TransitCommand::Decrypt(a) => t.decrypt(a).await,
            TransitCommand::Rewrap(a) => t.rewrap(a).await,
            TransitCommand::Datakey(a) => t.datakey(a).await,
            TransitCommand::Sign(a) => t.sign(a).await,
            TransitCommand::Verify(a) => t.verify(a).await,
            TransitCommand::Hmac(a) => t.hmac(a).await,
        }
    })
}

struct Transit {
    client: Client,
    mount: String,
    format: Format,
}

impl Transit {
    /// `<mount>/<endpoint>/<key>[/<suffix>]`, with the key name checked.
    fn path(&self, endpoint: &str, key: &str, suffix: Option<&str>) -> Result<String, Failure> {
        check_key(key)?;
        Ok(match suffix {
            Some(s) => format!("{}/{endpoint}/{key}/{s}", self.mount),
            None => format!("{}/{endpoint}/{key}", self.mount),
        })
    }

    async fn post(&self, path: &str, body: Map<String, Value>) -> Result<Option<Value>, Failure> {
        self.client
            .write(path, Some(&Value::Object(body)))
            .await
            .map_err(|e| Failure::remote(format!("writing data to {path}"), e))
    }

    async fn create(&self, a: CreateArgs) -> Result<ExitCode, Failure> {
        let path = self.path("keys", &a.key.key, None)?;
        let mut body = Map::new();
        body.insert("type".into(), Value::String(a.kind));
        if a.derived {
            body.insert("derived".into(), Value::Bool(true));
        }
        if a.exportable {
            body.insert("exportable".into(), Value::Bool(true));
        }
        let answer = self.post(&path, body).await?;
        self.show(answer, None, &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn list(&self) -> Result<ExitCode, Failure> {
        let path = format!("{}/keys", self.mount);
        let answer = self
            .client
            .list(&path, &[])
            .await
            .map_err(|e| Failure::remote(format!("listing {path}"), e))?;
        if let Some(a) = &answer {
            output::warnings(&envelope_warnings(Some(a)));
        }
        let keys: Vec<String> = answer
            .as_ref()
            .and_then(|a| a.pointer("/data/keys"))
            .and_then(Value::as_array)
            .map(|a| a.iter().map(output::value_text).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            return Err(Failure::NotFound(format!("No value found at {path}")));
        }
        match self.format {
            Format::Json => output::json(&keys)?,
            Format::Table => {
                let rows: Vec<Vec<String>> = keys.into_iter().map(|k| vec![k]).collect();
                output::line(&output::columns(&["Keys"], &rows));
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn read(&self, key: &KeyArg) -> Result<ExitCode, Failure> {
        let path = self.path("keys", &key.key, None)?;
        let answer = self
            .client
            .read(&path, &[])
            .await
            .map_err(|e| Failure::remote(format!("reading {path}"), e))?
            .ok_or_else(|| Failure::NotFound(format!("No value found at {path}")))?;
        self.show(Some(answer), None, &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn rotate(&self, key: &KeyArg) -> Result<ExitCode, Failure> {
        let path = self.path("keys", &key.key, Some("rotate"))?;
        let answer = self.post(&path, Map::new()).await?;
        self.show(answer, None, &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn config(&self, a: ConfigArgs) -> Result<ExitCode, Failure> {
        let path = self.path("keys", &a.key.key, Some("config"))?;
        let mut body = Map::new();
        for pair in &a.settings {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    Failure::local(format!(
                        "invalid setting <{} characters>: expected key=value",
                        pair.chars().count()
                    ))
                })?;
            body.insert(k.to_owned(), Value::String(v.to_owned()));
        }
        let answer = self.post(&path, body).await?;
        self.show(answer, None, &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn encrypt(&self, a: EncryptArgs) -> Result<ExitCode, Failure> {
        let path = self.path("encrypt", &a.key.key, None)?;
        let input = read_input(&a.input)?;
        let mut body = Map::new();
        body.insert(
            "plaintext".into(),
            Value::String(B64.encode(input.as_slice())),
        );
        add_context(&mut body, &a.ctx);
        let answer = self.post(&path, body).await?;
        self.show(answer, a.field.as_deref(), &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn decrypt(&self, a: DecryptArgs) -> Result<ExitCode, Failure> {
        let path = self.path("decrypt", &a.key.key, None)?;
        let mut body = Map::new();
        body.insert("ciphertext".into(), Value::String(a.ciphertext));
        add_context(&mut body, &a.ctx);
        let answer = self.post(&path, body).await?.unwrap_or(Value::Null);
        output::warnings(&envelope_warnings(Some(&answer)));
        if self.format == Format::Json && a.output.is_none() {
            output::json(&answer)?;
            return Ok(ExitCode::SUCCESS);
        }
        let encoded = answer
            .pointer("/data/plaintext")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::local(format!("the answer of {path} has no plaintext")))?;
        let bytes = Zeroizing::new(B64.decode(encoded).map_err(|_| {
            Failure::local(format!("the plaintext from {path} is not valid base64"))
        })?);
        match &a.output {
            Some(file) => write_private(file, &bytes)?,
            None => write_stdout(&bytes)?,
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn rewrap(&self, a: RewrapArgs) -> Result<ExitCode, Failure> {
        let path = self.path("rewrap", &a.key.key, None)?;
        let mut body = Map::new();
        body.insert("ciphertext".into(), Value::String(a.ciphertext));
        add_context(&mut body, &a.ctx);
        let answer = self.post(&path, body).await?;
        self.show(answer, a.field.as_deref(), &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn datakey(&self, a: DatakeyArgs) -> Result<ExitCode, Failure> {
        let kind = if a.plaintext && !a.wrapped {
            "plaintext"
        } else {
            "wrapped"
        };
        check_key(&a.key.key)?;
        let path = format!("{}/datakey/{kind}/{}", self.mount, a.key.key);
        let mut body = Map::new();
        body.insert("bits".into(), Value::from(a.bits));
        add_context(&mut body, &a.ctx);
        let answer = self.post(&path, body).await?;
        self.show(answer, a.field.as_deref(), &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn sign(&self, a: SignArgs) -> Result<ExitCode, Failure> {
        let path = self.path("sign", &a.key.key, None)?;
        let input = read_input(&a.input)?;
        let mut body = Map::new();
        body.insert("input".into(), Value::String(B64.encode(input.as_slice())));
        add_alg(&mut body, &a.alg);
        let answer = self.post(&path, body).await?;
        self.show(answer, a.field.as_deref(), &path)?;
        Ok(ExitCode::SUCCESS)
    }

    async fn verify(&self, a: VerifyArgs) -> Result<ExitCode, Failure> {
        let path = self.path("verify", &a.key.key, None)?;
        let input = read_input(&a.input)?;
        let mut body = Map::new();
        body.insert("input".into(), Value::String(B64.encode(input.as_slice())));
        body.insert("signature".into(), Value::String(a.signature));
        add_alg(&mut body, &a.alg);
        let answer = self.post(&path, body).await?;
        let valid = answer
            .as_ref()
            .and_then(|v| v.pointer("/data/valid"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.show(answer, None, &path)?;
        Ok(if valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    }

    async fn hmac(&self, a: HmacArgs) -> Result<ExitCode, Failure> {
        let path = self.path("hmac", &a.key.key, None)?;
        let input = read_input(&a.input)?;
        let mut body = Map::new();
        body.insert("input".into(), Value::String(B64.encode(input.as_slice())));
        if let Some(alg) = a.algorithm {
            body.insert("algorithm".into(), Value::String(alg));
        }
        let answer = self.post(&path, body).await?;
        self.show(answer, a.field.as_deref(), &path)?;
        Ok(ExitCode::SUCCESS)
    }

    /// Print an answer: one field of `data`, the `data` rows, or the JSON envelope.
    fn show(&self, answer: Option<Value>, field: Option<&str>, path: &str) -> Result<(), Failure> {
        let answer = answer.unwrap_or(Value::Null);
        output::warnings(&envelope_warnings(Some(&answer)));
        if let Some(field) = field {
            let value = answer
                .get("data")
                .and_then(|d| d.get(field))
                .ok_or_else(|| Failure::local(format!("Field \"{field}\" not present")))?;
            return match self.format {
                Format::Json => output::json(value),
                Format::Table => output::raw(&output::value_text(value)),
            };
        }
        let rows: Vec<(String, String)> = match answer.get("data") {
            Some(Value::Object(data)) => data
                .iter()
                .map(|(k, v)| (k.clone(), output::value_text(v)))
                .collect(),
            _ => Vec::new(),
        };
        match self.format {
            Format::Json if answer.is_null() => output::json(&Value::Object(Map::new())),
            Format::Json => output::json(&answer),
            Format::Table if rows.is_empty() => {
                output::line(&format!("Success! Data written to: {path}"));
                Ok(())
            }
            Format::Table => {
                output::line(&output::table(&rows));
                Ok(())
            }
        }
    }
}

/// A key name is one path segment.
fn check_key(key: &str) -> Result<(), Failure> {
    if key.is_empty() || key.contains('/') {
        return Err(Failure::local(
            "invalid KEY: it must be a non-empty name without '/'",
        ));
    }
    Ok(())
}

fn add_context(body: &mut Map<String, Value>, ctx: &ContextArgs) {
    if let Some(c) = &ctx.context {
        body.insert("context".into(), Value::String(B64.encode(c)));
    }
    if let Some(aad) = &ctx.aad {
        body.insert("associated_data".into(), Value::String(B64.encode(aad)));
    }
}

fn add_alg(body: &mut Map<String, Value>, alg: &SignatureAlgArgs) {
    if let Some(h) = &alg.hash {
        body.insert("hash_algorithm".into(), Value::String(h.clone()));
    }
    if let Some(s) = &alg.signature_algorithm {
        body.insert("signature_algorithm".into(), Value::String(s.clone()));
    }
    if let Some(c) = &alg.context {
        body.insert("context".into(), Value::String(B64.encode(c)));
    }
}

/// The input bytes: TEXT, `-` (stdin) or `--file`.
fn read_input(input: &InputArgs) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let local =
        |what: String| move |e: std::io::Error| Failure::Local(anyhow::Error::new(e).context(what));
    match (&input.text, &input.file) {
        (_, Some(file)) => std::fs::read(file)
            .map(Zeroizing::new)
            .map_err(local(format!("cannot read {}", file.display()))),
        (Some(t), None) if t == "-" => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(local("cannot read stdin".to_owned()))?;
            Ok(buf)
        }
        (Some(t), None) => Ok(Zeroizing::new(t.as_bytes().to_vec())),
        (None, None) => Err(Failure::local(
            "missing input: give TEXT, --file FILE, or - to read stdin",
        )),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Local(anyhow::Error::new(e).context("cannot write the output")))
}

/// Write a plaintext to a new or truncated file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()))
        .map_err(|e| {
            Failure::Local(
                anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_one_segment() {
        assert!(check_key("app").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a/b").is_err());
    }

    #[test]
    fn context_and_aad_are_base64_encoded() {
        let mut body = Map::new();
        add_context(
            &mut body,
            &ContextArgs {
                context: Some("tenant".into()),
                aad: Some("hdr".into()),
            },
        );
        assert_eq!(body.get("context"), Some(&Value::String("dGVuYW50".into())));
        assert_eq!(
            body.get("associated_data"),
            Some(&Value::String("aGRy".into()))
        );
    }
}
