//! `keyhaven scan --fix`: move the credentials a scan finds into keyhaven and rewrite what
//! used them.
//!
//! The scan and every decision happen first and produce a [`Plan`] (made by
//! [`keyhaven_scan::fix`], which never touches the network): the KV v2
//! writes, the files' new contents, the read policy and the `auth/kubernetes` roles.
//! `--dry-run` prints it (diffs, values redacted) and stops. A real run checks every
//! target, stops on any conflict before changing anything, writes to keyhaven with
//! check-and-set, and only then replaces the files atomically. A second run finds nothing
//! left to move and changes nothing.

mod apply;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use keyhaven_scan::cli::ScanArgs;
use keyhaven_scan::fix::{Ctx, Plan, Target, diff};
use secrecy::{ExposeSecret as _, SecretString};

use crate::remote::ClientArgs;

/// The `--fix` options of `keyhaven scan`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Fix")]
pub struct FixArgs {
    /// Move the credentials found into keyhaven (KV v2) and rewrite the files that held
    /// them; prints the follow-ups no tool can do.
    #[arg(long)]
    pub fix: bool,
    /// With --fix: print the diff and the keyhaven writes (values redacted); change nothing.
    #[arg(long, requires = "fix")]
    pub dry_run: bool,
    /// With --fix: what replaces a literal Kubernetes Secret.
    #[arg(long, value_enum, default_value_t = Target::Csi, requires = "fix")]
    pub target: Target,
    /// With --fix: the KV v2 mount the values go to.
    #[arg(long, default_value = "secret", value_name = "MOUNT", requires = "fix")]
    pub kv_mount: String,
    /// With --fix: the KV path of each Secret or file, below the mount; `<namespace>` and
    /// `<name>` are the object's (for a config file: its directory and file name).
    #[arg(
        long,
        default_value = "<namespace>/<name>",
        value_name = "TEMPLATE",
        requires = "fix"
    )]
    pub path_template: String,
    /// With --fix: what replaces a value in a config file; `<var>` (the key as an
    /// environment variable name), `<mount>`, `<path>` and `<key>` are filled in, e.g.
    /// `vault:<mount>/data/<path>#<key>`.
    #[arg(
        long,
        default_value = "${<var>}",
        value_name = "TEMPLATE",
        requires = "fix"
    )]
    pub reference: String,
    /// With --fix: the server [env: KEYHAVEN_ADDR, then VAULT_ADDR].
    #[arg(long, value_name = "URL", requires = "fix")]
    pub address: Option<String>,
    /// With --fix: the token [env: KEYHAVEN_TOKEN, then VAULT_TOKEN, then the token file].
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret, requires = "fix")]
    pub token: Option<SecretString>,
    /// With --fix: PEM file of the CA certificates to trust [env: KEYHAVEN_CACERT].
    #[arg(long, value_name = "FILE", requires = "fix")]
    pub ca_cert: Option<PathBuf>,
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// Run `keyhaven scan --fix`. Exit status: 0 done (or nothing to do), 2 on any error; on
/// a conflict nothing was changed.
pub fn run(scan: &ScanArgs, fix: &FixArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    ExitCode::from(execute(scan, fix, &mut stdout, &mut stderr))
}

fn execute(scan: &ScanArgs, fix: &FixArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if scan.stdin || scan.git || scan.staged || scan.since.is_some() {
        let _ = writeln!(
            err,
            "keyhaven scan --fix: works on files only (not --stdin, --git, --staged or --since)"
        );
        return 2;
    }
    let ctx = Ctx {
        mount: fix.kv_mount.trim_matches('/').to_owned(),
        path_template: fix.path_template.clone(),
        reference: fix.reference.clone(),
    };
    if ctx.mount.is_empty() || ctx.kv_path("ns", "name").is_empty() {
        let _ = writeln!(
            err,
            "keyhaven scan --fix: empty --kv-mount or --path-template"
        );
        return 2;
    }
    if !ctx.reference.contains('<') {
        let _ = writeln!(
            err,
            "keyhaven scan --fix: --reference must name the value, e.g. with <var> or <path> and <key>"
        );
        return 2;
    }
    let plan = match keyhaven_scan::fix::plan(scan, &ctx, fix.target) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "keyhaven scan --fix: {e}");
            return 2;
        }
    };
    if fix.dry_run {
        let _ = print_plan(&ctx, &plan, out);
        return 0;
    }
    if plan.is_empty() {
        let _ = print_notes(&plan, out);
        let _ = writeln!(out, "Nothing to move: no file or keyhaven path changed.");
        return 0;
    }
    let client_args = ClientArgs {
        address: fix.address.clone(),
        token: fix.token.clone(),
        ca_cert: fix.ca_cert.clone(),
        tls_skip_verify: false,
        format: None,
    };
    let client = match client_args.client() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "keyhaven scan --fix: {}", describe_failure(&e));
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "keyhaven scan --fix: cannot start the runtime: {e}");
            return 2;
        }
    };
    match runtime.block_on(apply::apply(&client, &ctx, &plan)) {
        Ok(done) => {
            for d in done {
                let _ = writeln!(out, "{d}");
            }
            let _ = print_notes(&plan, out);
            let _ = print_follow_ups(&ctx, &plan, out);
            0
        }
        Err(apply::ApplyError::Conflict(list)) => {
            let _ = writeln!(
                err,
                "keyhaven scan --fix: stopped before changing anything:"
            );
            for c in list {
                let _ = writeln!(err, "  {c}");
            }
            2
        }
        Err(apply::ApplyError::Failed(e)) => {
            let _ = writeln!(err, "keyhaven scan --fix: {e}");
            2
        }
    }
}

fn describe_failure(f: &crate::remote::Failure) -> String {
    match f {
        crate::remote::Failure::Local(e) => format!("{e:#}"),
        crate::remote::Failure::NotFound(m) => m.clone(),
        crate::remote::Failure::Remote { context, error } => {
            format!("{context}: {}", crate::output::describe(error))
        }
    }
}

fn print_notes(plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    if plan.notes.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nLeft alone:")?;
    for n in &plan.notes {
        writeln!(out, "  {n}")?;
    }
    Ok(())
}

fn print_plan(ctx: &Ctx, plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "Dry run: nothing is written to keyhaven or to the files."
    )?;
    if plan.is_empty() {
        writeln!(out, "\nNothing to move.")?;
        return print_notes(plan, out);
    }
    writeln!(
        out,
        "\nkeyhaven writes (KV v2, check-and-set; values redacted):"
    )?;
    for (path, w) in &plan.kv {
        writeln!(out, "  {}/data/{path}", ctx.mount)?;
        for (k, v) in &w.data {
            let shown =
                keyhaven_scan::Secret::new(v.expose_secret().as_bytes().to_vec()).redacted();
            writeln!(out, "    {k} = {shown}")?;
        }
        writeln!(out, "    (from {})", w.sources.join(", "))?;
    }
    for (name, text) in &plan.policies {
        writeln!(out, "\nkeyhaven policy {name}:")?;
        for l in text.lines() {
            writeln!(out, "  {l}")?;
        }
    }
    for r in &plan.roles {
        writeln!(
            out,
            "\nauth/kubernetes role {}: service accounts [{}] in namespaces [{}], policies [{}], audience keyhaven",
            r.name,
            r.service_accounts.join(", "),
            r.namespaces.join(", "),
            r.policies.join(", ")
        )?;
    }
    writeln!(out, "\nFile changes:")?;
    for f in &plan.files {
        let d = diff::unified(&f.display, &f.before, &f.after);
        out.write_all(redact(&d, plan).as_bytes())?;
    }
    print_notes(plan, out)
}

/// `text` with every value the plan moves, and its base64 form, redacted. Values shorter
/// than 6 bytes (user names, ports) are left: they would match unrelated text.
fn redact(text: &str, plan: &Plan) -> String {
    use base64::Engine as _;
    let mut values: Vec<(String, String)> = Vec::new();
    for w in plan.kv.values() {
        for v in w.data.values() {
            let v = v.expose_secret();
            let shown = keyhaven_scan::Secret::new(v.as_bytes().to_vec()).redacted();
            if v.len() >= 6 {
                values.push((v.to_owned(), shown.clone()));
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(v);
            if b64.len() >= 8 {
                values.push((b64, format!("base64({shown})")));
            }
        }
    }
    values.sort_by_key(|v| std::cmp::Reverse(v.0.len()));
    let mut out = text.to_owned();
    for (v, shown) in values {
        out = out.replace(&v, &shown);
    }
    out
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn print_follow_ups(ctx: &Ctx, plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "\nFollow-ups no tool can do for you:")?;
    writeln!(
        out,
        "1. Rotate every moved credential at its issuer: the old values were exposed and stay valid until then."
    )?;
    for (where_, what) in &plan.leaked {
        writeln!(out, "     {where_}: {what}")?;
    }
    writeln!(
        out,
        "   Then store the new value with `keyhaven kv patch --mount {} PATH KEY=-`.",
        shell_quote(&ctx.mount)
    )?;
    writeln!(
        out,
        "2. If these files were ever committed, purge the old values from git history (git-filter-repo), then force-push and have every clone re-cloned:"
    )?;
    writeln!(out, "     umask 077; R=$(mktemp)")?;
    for (path, w) in &plan.kv {
        for k in w.data.keys() {
            writeln!(
                out,
                "     printf 'literal:%s==>***REMOVED***\\n' \"$(keyhaven kv get --mount {} --field {} {})\" >> \"$R\"",
                shell_quote(&ctx.mount),
                shell_quote(k),
                shell_quote(path)
            )?;
        }
    }
    writeln!(
        out,
        "     git filter-repo --sensitive-data-removal --replace-text \"$R\"\n     shred -u \"$R\"\n     git push --force --mirror origin"
    )?;
    writeln!(
        out,
        "   (values that span lines, such as private keys, need `git filter-repo --invert-paths --path FILE` instead)"
    )?;
    Ok(())
}
