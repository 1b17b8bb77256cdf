//! `keyhaven kv …`: the KV version 2 commands, with Vault's flags and output.
//!
//! Every command first asks the mount preflight (`sys/internal/ui/mounts/<path>`) which
//! mount holds the path and which KV version it runs, as Vault's CLI does; `--mount`
//! names the mount instead of taking it from the path.

use std::collections::BTreeMap;
use std::process::ExitCode;

use keyhaven_client::{Client, KvData, MetadataUpdate, Secret, VersionMetadata};
use serde_json::{Map, Value};

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven kv`.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KvCommand {
    /// Write a new version of a secret: `put PATH k=v k2=@file k3=-`.
    Put(WriteArgs),
    /// Read a secret (the latest version, or --version N).
    #[command(disable_version_flag = true)]
    Get(GetArgs),
    /// Merge keys into the latest version, writing a new version.
    Patch(WriteArgs),
    /// Soft-delete the latest version, or --versions.
    Delete(DeleteArgs),
    /// Undo the soft-deletion of --versions.
    Undelete(VersionsArgs),
    /// Permanently remove the data of --versions.
    Destroy(VersionsArgs),
    /// List the keys under a path.
    List(ListArgs),
    /// Read and change a secret's metadata.
    #[command(subcommand)]
    Metadata(MetadataCommand),
}

#[derive(Debug, clap::Subcommand)]
enum MetadataCommand {
    /// Show a secret's metadata and its versions.
    Get(PathArgs),
    /// Change a secret's settings and custom metadata.
    Put(MetadataPutArgs),
    /// Delete a secret: its metadata and every version.
    Delete(PathArgs),
}

#[derive(Debug, clap::Args)]
struct PathArgs {
    /// The mount; PATH is then relative to it. Default: found from PATH.
    #[arg(long, value_name = "MOUNT")]
    mount: Option<String>,
    /// The secret path, e.g. `secret/app` (or `app` with --mount secret).
    #[arg(value_name = "PATH")]
    path: String,
}

#[derive(Debug, clap::Args)]
struct WriteArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Check-and-set: write only if the current version is N (0: only if absent).
    #[arg(long, value_name = "N")]
    cas: Option<u64>,
    /// Data as `key=value`; `key=@file` reads the value from a file, `key=-` from stdin. A
    /// single `-` reads a JSON object from stdin, `@file.json` from a file.
    #[arg(value_name = "K=V", required = true)]
    data: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Print only this field's value.
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
    /// The version to read (default: the latest).
    #[arg(long, value_name = "N")]
    version: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Versions to delete, e.g. `1,2` (default: the latest).
    #[arg(long, value_name = "N,…", value_delimiter = ',')]
    versions: Vec<u64>,
}

#[derive(Debug, clap::Args)]
struct VersionsArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Versions, e.g. `1,2`.
    #[arg(long, value_name = "N,…", value_delimiter = ',', required = true)]
    versions: Vec<u64>,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// The mount; PATH is then relative to it. Default: found from PATH.
    #[arg(long, value_name = "MOUNT")]
    mount: Option<String>,
    /// The folder to list, e.g. `secret/` or `secret/team`.
    #[arg(value_name = "PATH")]
    path: String,
    /// List only the names after this one.
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// At most this many names.
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct MetadataPutArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Versions to keep (0: the mount's setting).
    #[arg(long, value_name = "N")]
    max_versions: Option<u64>,
    /// Require check-and-set on every write.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    cas_required: Option<bool>,
    /// Delete versions this long after they are written, e.g. `3h25m` (`0s`: never).
    #[arg(long, value_name = "DURATION")]
    delete_version_after: Option<String>,
    /// Custom metadata `key=value`; repeat for several (replaces the whole map).
    #[arg(long, value_name = "K=V")]
    custom_metadata: Vec<String>,
}

/// Run `keyhaven kv …`.
pub fn run(args: KvArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        match args.command {
            KvCommand::Put(a) => put(&client, a, format, false).await,
            KvCommand::Patch(a) => put(&client, a, format, true).await,
            KvCommand::Get(a) => get(&client, a, format).await,
            KvCommand::Delete(a) => delete(&client, a).await,
            KvCommand::Undelete(a) => versions(&client, a, "undelete").await,
            KvCommand::Destroy(a) => versions(&client, a, "destroy").await,
            KvCommand::List(a) => list(&client, a, format).await,
            KvCommand::Metadata(MetadataCommand::Get(a)) => metadata_get(&client, a, format).await,
            KvCommand::Metadata(MetadataCommand::Put(a)) => metadata_put(&client, a).await,
            KvCommand::Metadata(MetadataCommand::Delete(a)) => metadata_delete(&client, a).await,
        }
    })
}

/// A secret path split into its KV v2 mount and the path inside it.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// The mount, without slashes around it.
    mount: String,
    /// The path inside the mount, without slashes around it (empty for the root).
    rel: String,
}

impl Target {
    /// `<mount>/<endpoint>/<rel>`, as shown to the user.
    fn api_path(&self, endpoint: &str) -> String {
        if self.rel.is_empty() {
            format!("{}/{endpoint}", self.mount)
        } else {
            format!("{}/{endpoint}/{}", self.mount, self.rel)
        }
    }
}

/// Find the mount of `path` (or take `--mount`) through the preflight, and check that it
/// is a KV version 2 mount.
async fn resolve(
    client: &Client,
    mount: Option<&str>,
    path: &str,
    allow_root: bool,
) -> Result<Target, Failure> {
    let path = path.trim_matches('/');
    let asked = match mount {
        Some(m) => {
            let m = m.trim_matches('/');
            if m.is_empty() {
                return Err(Failure::local("--mount must not be empty"));
            }
            m.to_owned()
        }
        None => {
            if path.is_empty() {
                return Err(Failure::local("missing PATH"));
            }
            path.to_owned()
        }
    };
    let preflight = match client.mount_preflight(&asked).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(Failure::NotFound(format!(
                "No secrets engine is mounted at the path \"{asked}/\""
            )));
        }
        // The server answers 403 both for a path no mount serves and for a mount the
        // token may not use (so that the answer does not reveal which mounts exist).
        Err(keyhaven_client::ClientError::Api {
            status: 403,
            ref errors,
            ..
        }) if errors
            .iter()
            .any(|m| m.starts_with("preflight capability check")) =>
        {
            return Err(Failure::NotFound(format!(
                "No secrets engine is mounted at the path \"{asked}/\", or the token's \
                 policies grant nothing under it"
            )));
        }
        Err(e) => return Err(Failure::remote("checking the mount", e)),
    };
    let mount_path = preflight.path.trim_matches('/').to_owned();
    if preflight.kind != "kv" {
        return Err(Failure::NotFound(format!(
            "\"{mount_path}/\" is a {} mount, not a KV mount",
            preflight.kind
        )));
    }
    if preflight.kv_version != 2 {
        return Err(Failure::NotFound(format!(
            "\"{mount_path}/\" is a KV version {} mount; keyhaven kv works with version 2 only",
            preflight.kv_version
        )));
    }
    let rel = match mount {
        Some(_) => path.to_owned(),
        None if path == mount_path => String::new(),
        None => match path
            .strip_prefix(&mount_path)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(rel) => rel.trim_matches('/').to_owned(),
            None => {
                return Err(Failure::local(format!(
                    "the server placed \"{path}\" under the mount \"{mount_path}/\", which is not a prefix of it"
                )));
            }
        },
    };
    if rel.is_empty() && !allow_root {
        return Err(Failure::local(format!(
            "missing secret path inside the mount \"{mount_path}/\""
        )));
    }
    Ok(Target {
        mount: mount_path,
        rel,
    })
}

async fn put(
    client: &Client,
    args: WriteArgs,
    format: Format,
    patch: bool,
) -> Result<ExitCode, Failure> {
    let data = parse_data(&args.data)?;
    let target = resolve(
        client,
        args.target.mount.as_deref(),
        &args.target.path,
        false,
    )
    .await?;
    let api = target.api_path("data");
    let kv = client.kv2(&target.mount);
    let result = if patch {
        kv.patch(&target.rel, &data, args.cas)
            .await
            .map_err(|e| match e.status() {
                Some(404) => Failure::NotFound(format!("No value found at {api}")),
                _ => Failure::remote(format!("writing data to {api}"), e),
            })?
    } else {
        kv.write(&target.rel, &data, args.cas)
            .await
            .map_err(|e| Failure::remote(format!("writing data to {api}"), e))?
    };
    output::warnings(result.warnings());
    match format {
        Format::Json => output::json(&result)?,
        Format::Table => {
            output::line(&format!(
                "{}\n{api}\n",
                output::header("Secret Path", api.len())
            ));
            output::line(&output::section("Metadata", &version_rows(&result.data)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &Client, args: GetArgs, format: Format) -> Result<ExitCode, Failure> {
    let target = resolve(
        client,
        args.target.mount.as_deref(),
        &args.target.path,
        false,
    )
    .await?;
    let api = target.api_path("data");
    let secret = client
        .kv2(&target.mount)
        .read(&target.rel, args.version)
        .await
        .map_err(|e| Failure::remote(format!("reading {api}"), e))?
        .ok_or_else(|| Failure::NotFound(format!("No value found at {api}")))?;
    output::warnings(secret.warnings());
    if let Some(field) = &args.field {
        let Some(data) = &secret.data.data else {
            return Err(Failure::NotFound(format!("No data found at {api}")));
        };
        let value = data
            .get(field)
            .ok_or_else(|| Failure::local(format!("Field \"{field}\" not present in secret")))?;
        match format {
            Format::Json => output::json(value)?,
            Format::Table => output::raw(&output::value_text(value))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    match format {
        Format::Json => output::json(&secret)?,
        Format::Table => print_secret(&api, &secret),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_secret(api: &str, secret: &Secret<KvData>) {
    let mut parts = vec![format!(
        "{}\n{api}",
        output::header("Secret Path", api.len())
    )];
    if let Some(meta) = &secret.data.metadata {
        parts.push(output::section("Metadata", &version_rows(meta)));
    }
    if let Some(data) = &secret.data.data {
        let rows: Vec<(String, String)> = data
            .iter()
            .map(|(k, v)| (k.clone(), output::value_text(v)))
            .collect();
        parts.push(output::section("Data", &rows));
    }
    output::line(&parts.join("\n\n"));
}

fn version_rows(m: &VersionMetadata) -> Vec<(String, String)> {
    vec![
        ("created_time".into(), m.created_time.clone()),
        (
            "custom_metadata".into(),
            custom_text(m.custom_metadata.as_ref()),
        ),
        (
            "deletion_time".into(),
            if m.deletion_time.is_empty() {
                "n/a".into()
            } else {
                m.deletion_time.clone()
            },
        ),
        ("destroyed".into(), m.destroyed.to_string()),
        ("version".into(), m.version.to_string()),
    ]
}

fn custom_text(m: Option<&BTreeMap<String, String>>) -> String {
    match m {
        None => "<nil>".into(),
        Some(m) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

async fn delete(client: &Client, args: DeleteArgs) -> Result<ExitCode, Failure> {
    let target = resolve(
        client,
        args.target.mount.as_deref(),
        &args.target.path,
        false,
    )
    .await?;
    let kv = client.kv2(&target.mount);
    let (api, result) = if args.versions.is_empty() {
        let api = target.api_path("data");
        (api, kv.delete_latest(&target.rel).await)
    } else {
        let api = target.api_path("delete");
        (api, kv.delete_versions(&target.rel, &args.versions).await)
    };
    let warnings = result.map_err(|e| Failure::remote(format!("deleting {api}"), e))?;
    output::warnings(&warnings);
    output::line(&format!("Success! Data deleted (if it existed) at: {api}"));
    Ok(ExitCode::SUCCESS)
}

async fn versions(
    client: &Client,
    args: VersionsArgs,
    endpoint: &'static str,
) -> Result<ExitCode, Failure> {
    if args.versions.is_empty() {
        return Err(Failure::local(
            "No versions provided, use the \"--versions\" flag",
        ));
    }
    let target = resolve(
        client,
        args.target.mount.as_deref(),
        &args.target.path,
        false,
    )
    .await?;
    let api = target.api_path(endpoint);
    let kv = client.kv2(&target.mount);
    let result = match endpoint {
        "undelete" => kv.undelete(&target.rel, &args.versions).await,
        _ => kv.destroy(&target.rel, &args.versions).await,
    };
    let warnings = result.map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    output::warnings(&warnings);
    output::line(&format!("Success! Data written to: {api}"));
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &Client, args: ListArgs, format: Format) -> Result<ExitCode, Failure> {
    let target = resolve(client, args.mount.as_deref(), &args.path, true).await?;
    let api = target.api_path("metadata");
    let listed = client
        .kv2(&target.mount)
        .list(&target.rel, args.after.as_deref(), args.limit)
        .await
        .map_err(|e| Failure::remote(format!("listing {api}"), e))?;
    let Some(listed) = listed.filter(|l| !l.data.keys.is_empty()) else {
        return Err(Failure::NotFound(format!("No value found at {api}")));
    };
    output::warnings(listed.warnings());
    match format {
        Format::Json => output::json(&listed.data.keys)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = listed.data.keys.iter().map(|k| vec![k.clone()]).collect();
            output::line(&output::columns(&["Keys"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn metadata_get(
    client: &Client,
    args: PathArgs,
    format: Format,
) -> Result<ExitCode, Failure> {
    let target = resolve(client, args.mount.as_deref(), &args.path, false).await?;
    let api = target.api_path("metadata");
    let meta = client
        .kv2(&target.mount)
        .read_metadata(&target.rel)
        .await
        .map_err(|e| Failure::remote(format!("reading {api}"), e))?
        .ok_or_else(|| Failure::NotFound(format!("No value found at {api}")))?;
    output::warnings(meta.warnings());
    if format == Format::Json {
        output::json(&meta)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = &meta.data;
    let mut rows: Vec<(String, String)> = vec![
        ("cas_required".into(), m.cas_required.to_string()),
        ("created_time".into(), m.created_time.clone()),
        ("current_version".into(), m.current_version.to_string()),
        (
            "custom_metadata".into(),
            custom_text(m.custom_metadata.as_ref()),
        ),
        (
            "delete_version_after".into(),
            m.delete_version_after.clone(),
        ),
        ("max_versions".into(), m.max_versions.to_string()),
        ("oldest_version".into(), m.oldest_version.to_string()),
        ("updated_time".into(), m.updated_time.clone()),
    ];
    for (k, v) in &m.extra {
        rows.push((k.clone(), output::value_text(v)));
    }
    rows.sort();
    let mut parts = vec![
        format!("{}\n{api}", output::header("Metadata Path", api.len())),
        output::section("Metadata", &rows),
    ];
    let mut versions: Vec<(u64, &keyhaven_client::VersionState)> = m
        .versions
        .iter()
        .filter_map(|(k, v)| k.parse::<u64>().ok().map(|n| (n, v)))
        .collect();
    versions.sort_by_key(|(n, _)| *n);
    for (n, v) in versions {
        parts.push(output::section(
            &format!("Version {n}"),
            &[
                ("created_time".into(), v.created_time.clone()),
                (
                    "deletion_time".into(),
                    if v.deletion_time.is_empty() {
                        "n/a".into()
                    } else {
                        v.deletion_time.clone()
                    },
                ),
                ("destroyed".into(), v.destroyed.to_string()),
            ],
        ));
    }
    output::line(&parts.join("\n\n"));
    Ok(ExitCode::SUCCESS)
}

async fn metadata_put(client: &Client, args: MetadataPutArgs) -> Result<ExitCode, Failure> {
    let mut update = MetadataUpdate::default();
    update.max_versions = args.max_versions;
    update.cas_required = args.cas_required;
    update.delete_version_after = args.delete_version_after.clone();
    if !args.custom_metadata.is_empty() {
        let mut custom = BTreeMap::new();
        for pair in &args.custom_metadata {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    Failure::local(format!(
                        "invalid --custom-metadata {pair:?}: expected key=value"
                    ))
                })?;
            custom.insert(k.to_owned(), v.to_owned());
        }
        update.custom_metadata = Some(custom);
    }
    let target = resolve(
        client,
        args.target.mount.as_deref(),
        &args.target.path,
        false,
    )
    .await?;
    let api = target.api_path("metadata");
    let warnings = client
        .kv2(&target.mount)
        .write_metadata(&target.rel, &update)
        .await
        .map_err(|e| Failure::remote(format!("writing data to {api}"), e))?;
    output::warnings(&warnings);
    output::line(&format!("Success! Data written to: {api}"));
    Ok(ExitCode::SUCCESS)
}

async fn metadata_delete(client: &Client, args: PathArgs) -> Result<ExitCode, Failure> {
    let target = resolve(client, args.mount.as_deref(), &args.path, false).await?;
    let api = target.api_path("metadata");
    let warnings = client
        .kv2(&target.mount)
        .delete_metadata(&target.rel)
        .await
        .map_err(|e| Failure::remote(format!("deleting {api}"), e))?;
    output::warnings(&warnings);
    output::line(&format!("Success! Data deleted (if it existed) at: {api}"));
    Ok(ExitCode::SUCCESS)
}

/// Parse `k=v` arguments (see [`crate::args::parse_data_with`]); KV writes need data.
fn parse_data(args: &[String]) -> Result<Map<String, Value>, Failure> {
    require_data(crate::args::parse_data(args)?)
}

fn require_data(data: Map<String, Value>) -> Result<Map<String, Value>, Failure> {
    if data.is_empty() {
        return Err(Failure::local("Must supply data"));
    }
    Ok(data)
}

#[cfg(test)]
fn parse_data_with(
    args: &[String],
    stdin: &mut dyn FnMut() -> Result<String, Failure>,
) -> Result<Map<String, Value>, Failure> {
    require_data(crate::args::parse_data_with(args, stdin)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn data_pairs_are_strings_with_file_and_stdin_values() {
        let dir = std::env::temp_dir().join(format!("keyhaven-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("v.txt");
        std::fs::write(&file, "from-file\n").unwrap();
        let file_arg = format!("f=@{}", file.display());
        let mut stdin = || Ok("from-stdin".to_owned());
        let m = parse_data_with(&args(&["a=1", "b=x=y", &file_arg, "s=-"]), &mut stdin).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": "1", "b": "x=y", "f": "from-file\n", "s": "from-stdin"})
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stdin_is_read_once_and_json_objects_merge() {
        let mut stdin = || Ok(r#"{"k": "v", "n": 1}"#.to_owned());
        let m = parse_data_with(&args(&["-", "x=y"]), &mut stdin).unwrap();
        assert_eq!(Value::Object(m), json!({"k": "v", "n": 1, "x": "y"}));
        let mut stdin = || Ok("v".to_owned());
        assert!(parse_data_with(&args(&["a=-", "b=-"]), &mut stdin).is_err());
    }

    #[test]
    fn bad_pairs_do_not_echo_their_text() {
        let mut stdin = || Ok(String::new());
        let Err(Failure::Local(e)) = parse_data_with(&args(&["hunter2"]), &mut stdin) else {
            panic!()
        };
        assert!(!e.to_string().contains("hunter2"));
        assert!(parse_data_with(&args(&["=v"]), &mut stdin).is_err());
        assert!(parse_data_with(&[], &mut stdin).is_err());
    }

    #[test]
    fn api_paths() {
        let t = Target {
            mount: "kv2".into(),
            rel: "a/b".into(),
        };
        assert_eq!(t.api_path("data"), "kv2/data/a/b");
        let t = Target {
            mount: "kv2".into(),
            rel: String::new(),
        };
        assert_eq!(t.api_path("metadata"), "kv2/metadata");
    }
}
