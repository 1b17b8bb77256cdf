//! `keyhaven audit …`: list the server's audit devices, and verify the hash chain of audit
//! files offline.
//!
//! `verify` exits 0 when every file verifies, 1 when a record was edited, removed,
//! inserted or moved, a file was cut, files do not link, or (without `--allow-open`) the
//! last file does not end with the writer's close record, so records at its end may be
//! missing.

use std::path::PathBuf;
use std::process::ExitCode;

use keyhaven_server::audit_file::{self, VerifyReport};
use serde_json::{Value, json};

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// List the enabled audit devices (`GET /v1/sys/audit`).
    List(ListArgs),
    /// Check the hash chain of audit files written by the `file` device. Give rotated
    /// files oldest first to also check that each continues the previous one.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Show the device options too.
    #[arg(long)]
    detailed: bool,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Audit files, oldest first.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Accept a last file that does not end with a close record (the server is still
    /// writing it). Records cut off its end are then not detected, unless --head is given.
    #[arg(long)]
    allow_open: bool,
    /// The chain head the server logged (`sha256:…`, "audit file closed; chain head"):
    /// the last file must end with exactly this record.
    #[arg(long, value_name = "HASH")]
    head: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Run `keyhaven audit`.
pub fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::List(a) => list(a),
        AuditCommand::Verify(a) => verify(&a),
    }
}

fn list(args: ListArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        let body = client
            .read("sys/audit", &[])
            .await
            .map_err(|e| Failure::remote("listing audit devices", e))?
            .unwrap_or(Value::Null);
        let devices = body
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match format {
            Format::Json => output::json(&devices)?,
            Format::Table => {
                if devices.is_empty() {
                    output::line("No audit devices are enabled.");
                    return Ok(ExitCode::SUCCESS);
                }
                let mut rows = vec![if args.detailed {
                    "Path\tType\tDescription\tOptions".to_owned()
                } else {
                    "Path\tType\tDescription".to_owned()
                }];
                for (path, d) in &devices {
                    let kind = d.get("type").and_then(Value::as_str).unwrap_or("");
                    let desc = d.get("description").and_then(Value::as_str).unwrap_or("");
                    let desc = if desc.is_empty() { "n/a" } else { desc };
                    let mut row = format!("{path}\t{kind}\t{desc}");
                    if args.detailed {
                        let opts = d.get("options").cloned().unwrap_or(Value::Null);
                        row.push('\t');
                        row.push_str(&output::value_text(&opts));
                    }
                    rows.push(row);
                }
                output::line(&columns(&rows));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Tab-separated rows as aligned columns.
fn columns(rows: &[String]) -> String {
    let cells: Vec<Vec<&str>> = rows.iter().map(|r| r.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(c.chars().count()),
                None => widths.push(c.chars().count()),
            }
        }
    }
    let mut out = Vec::with_capacity(cells.len());
    for row in &cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{c:<w$}    "));
            }
        }
        out.push(line.trim_end().to_owned());
    }
    out.join("\n")
}

fn report_json(r: &VerifyReport) -> Value {
    json!({
        "path": r.path.display().to_string(),
        "lines": r.lines,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "continues_from": r.continues_from,
        "last_hash": r.last_hash,
        "closed": r.closed,
        "unclean_restarts": r.unclean_restarts,
    })
}

#[allow(
    clippy::print_stderr,
    reason = "verification failures are reported on stderr"
)]
fn verify(args: &VerifyArgs) -> ExitCode {
    let fail = |message: String, json_out: Option<Value>| {
        if let Some(v) = json_out {
            let _ = output::json(&v);
        }
        eprintln!("Error: {message}");
        ExitCode::from(1)
    };
    let reports = match audit_file::verify_files(&args.files) {
        Ok(r) => r,
        Err(e) => {
            let json_out = args.json.then(|| {
                let (line, kind) = e.problem().map_or((Value::Null, Value::Null), |(l, k)| {
                    (json!(l), json!(k.to_string()))
                });
                json!({"ok": false, "error": e.to_string(), "line": line, "kind": kind})
            });
            return fail(format!("audit verification failed: {e}"), json_out);
        }
    };
    let Some(last) = reports.last() else {
        return fail("no files given".to_owned(), None);
    };
    let mut problem = None;
    if let Some(head) = &args.head {
        if head.trim() != last.last_hash {
            problem = Some(format!(
                "{}: the last record (line {}, seq {}) has hash {}, not the expected head {}: records at the end are missing or the last record was changed",
                last.path.display(),
                last.lines,
                last.last_seq,
                last.last_hash,
                head.trim()
            ));
        }
    } else if !last.closed && !args.allow_open {
        problem = Some(format!(
            "{}: the file ends at line {} (seq {}) without the writer's close record: records after it may have been removed (truncated), or the server is still writing it or stopped uncleanly. Use --allow-open for a live file, or --head with the chain head the server logged",
            last.path.display(),
            last.lines,
            last.last_seq
        ));
    }
    if args.json {
        let v = json!({
            "ok": problem.is_none(),
            "error": problem,
            "files": reports.iter().map(report_json).collect::<Vec<_>>(),
        });
        if output::json(&v).is_err() {
            return ExitCode::from(1);
        }
    } else {
        for r in &reports {
            let mut text = format!(
                "{}: {} records (seq {}..{}), {}, last hash {}",
                r.path.display(),
                r.lines,
                r.first_seq,
                r.last_seq,
                if r.closed { "closed" } else { "open" },
                r.last_hash
            );
            if let Some(prev) = &r.continues_from {
                text.push_str(&format!(", continues the segment ending in {prev}"));
            }
            if !r.unclean_restarts.is_empty() {
                text.push_str(&format!(
                    ", reopened after an unclean stop at lines {:?}",
                    r.unclean_restarts
                ));
            }
            output::line(&text);
        }
    }
    match problem {
        Some(p) => {
            eprintln!("Error: audit verification failed: {p}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}
