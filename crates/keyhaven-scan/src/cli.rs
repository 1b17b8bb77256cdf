//! The `keyhaven scan` command line.
//!
//! Exit status: 0 when no finding reaches `--fail-on`, 1 when one does, 2 on a usage or
//! I/O error.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::baseline::Baseline;
use crate::engine::{Engine, EngineOptions};
use crate::files::{self, Pipeline, ScanResult};
use crate::git::GitMode;
use crate::gitleaks::GitleaksConfig;
use crate::report::{self, Render};
use crate::rules::{DEFAULT_RULES, RuleSet, RuleSpec, parse_rules};
use crate::{Error, Severity, gitleaks, posture};

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable, values redacted.
    Human,
    /// JSON with a stable fingerprint per finding.
    Json,
    /// SARIF 2.1.0.
    Sarif,
    /// JUnit XML.
    Junit,
}

/// When to colour human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Arguments of `keyhaven scan`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// Files or directories to scan (`-` reads stdin). Default: the current directory.
    pub paths: Vec<PathBuf>,
    /// Read the input from stdin.
    #[arg(long)]
    pub stdin: bool,
    /// Scan the git history of the repository at the first path (every blob once).
    #[arg(long)]
    pub git: bool,
    /// Scan only lines added in the index compared with HEAD (pre-commit gate).
    #[arg(long, conflicts_with = "since")]
    pub staged: bool,
    /// Scan only lines added in HEAD since REV (pull-request gate).
    #[arg(long, value_name = "REV")]
    pub since: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Fail on findings at or above this severity: any, low, medium, high, critical, never.
    #[arg(long, default_value = "any", value_name = "SEVERITY")]
    pub fail_on: String,
    /// A gitleaks-format config (`.gitleaks.toml`). Default: `.gitleaks.toml` in the
    /// scanned directory, if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not look for `.gitleaks.toml` automatically.
    #[arg(long)]
    pub no_gitleaks_config: bool,
    /// Extra keyhaven-format rules files (added to the built-in rules).
    #[arg(long, value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Suppress findings listed in this baseline file.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Write all current findings to this baseline file.
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,
    /// Ignore inline markers (`keyhaven:allow`, `gitleaks:allow`, `pragma: allowlist secret`).
    #[arg(long)]
    pub no_inline_ignore: bool,
    /// Print secret values instead of redacting them.
    #[arg(long)]
    pub show_secrets: bool,
    /// Also scan files excluded by `.gitignore` and `.ignore`.
    #[arg(long)]
    pub no_ignore: bool,
    /// Skip paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Scan files that look binary.
    #[arg(long)]
    pub include_binary: bool,
    /// Skip files larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Only run Kubernetes posture checks (no secret detection).
    #[arg(long, conflicts_with = "no_posture")]
    pub posture: bool,
    /// Do not run posture checks on manifests.
    #[arg(long)]
    pub no_posture: bool,
    /// Nested base64 decoding depth for manifest values.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_decode_depth: usize,
    /// Colour in human output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// List the rules and posture checks, then exit.
    #[arg(long)]
    pub list_rules: bool,
}

#[derive(Parser, Debug)]
#[command(
    name = "keyhaven-scan",
    about = "Find hardcoded secrets and risky Kubernetes manifests"
)]
struct Cmd {
    #[command(flatten)]
    args: ScanArgs,
}

/// Terminal facts the caller knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tty {
    /// stdout is a terminal.
    pub stdout: bool,
    /// stderr is a terminal.
    pub stderr: bool,
}

/// Run a scan and return the process exit code.
pub fn run(args: ScanArgs) -> ExitCode {
    let tty = Tty {
        stdout: std::io::stdout().is_terminal(),
        stderr: std::io::stderr().is_terminal(),
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    ExitCode::from(execute(args, &mut stdin, &mut stdout, &mut stderr, tty))
}

/// Parse `argv` (without the program name) and run, with explicit streams. For tests and
/// embedding.
pub fn run_with_args<I, S>(
    argv: I,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let full = std::iter::once(std::ffi::OsString::from("keyhaven-scan"))
        .chain(argv.into_iter().map(Into::into));
    match Cmd::try_parse_from(full) {
        Ok(cmd) => execute(cmd.args, stdin, stdout, stderr, Tty::default()),
        Err(e) => {
            let _ = write!(stderr, "{e}");
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                0
            } else {
                2
            }
        }
    }
}

/// Severity threshold from `--fail-on`; `None` means never fail.
fn fail_threshold(s: &str) -> Result<Option<Severity>, String> {
    match s.to_ascii_lowercase().as_str() {
        "never" | "none" | "off" => Ok(None),
        other => Severity::parse(other).map(Some).ok_or_else(|| {
            format!(
                "invalid --fail-on value {other:?}: use any, low, medium, high, critical or never"
            )
        }),
    }
}

/// Read and parse the rules (compiled later, on the scan's pool): a gitleaks config if one
/// is given or found, else the built-in rules, with `--rules` files as extras.
fn load_rules(
    args: &ScanArgs,
    scan_root: Option<&Path>,
    stderr: &mut dyn Write,
) -> Result<(GitleaksConfig, Vec<RuleSpec>), Error> {
    let mut extra: Vec<RuleSpec> = Vec::new();
    for p in &args.rules {
        let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        extra.extend(parse_rules(&p.display().to_string(), &text)?);
    }
    let config = match (&args.config, args.no_gitleaks_config) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => scan_root
            .map(|r| r.join(".gitleaks.toml"))
            .filter(|p| p.is_file()),
        (None, true) => None,
    };
    let config = match config {
        Some(p) => {
            let _ = writeln!(stderr, "keyhaven scan: using rules from {}", p.display());
            gitleaks::load(&p)?
        }
        None => GitleaksConfig {
            specs: parse_rules("built-in rules", DEFAULT_RULES)?,
            ..GitleaksConfig::default()
        },
    };
    Ok((config, extra))
}

fn list_rules(set: &RuleSet, w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, "Secret rules:")?;
    for r in &set.rules {
        writeln!(
            w,
            "  {:<36} {:<8} {}",
            r.spec.id,
            r.spec.severity.as_str(),
            r.spec.description
        )?;
    }
    writeln!(w, "Posture checks:")?;
    for c in posture::CHECKS {
        let refs: Vec<String> = c.refs.iter().map(|(t, id)| format!("{t} {id}")).collect();
        writeln!(
            w,
            "  {:<36} {:<8} {} [{}]",
            c.id,
            c.severity.as_str(),
            c.title,
            refs.join("; ")
        )?;
    }
    Ok(())
}

fn progress(enabled: bool, len: u64, bytes: bool) -> Option<ProgressBar> {
    if !enabled {
        return None;
    }
    let pb = ProgressBar::new(len);
    let tmpl = if bytes {
        "{spinner} scanning [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{spinner} scanning blobs [{bar:30}] {pos}/{len} ({eta})"
    };
    if let Ok(style) = ProgressStyle::with_template(tmpl) {
        pb.set_style(style.progress_chars("=> "));
    }
    Some(pb)
}

/// Run with explicit streams; returns the exit status.
pub fn execute(
    args: ScanArgs,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    tty: Tty,
) -> u8 {
    match execute_inner(&args, stdin, stdout, stderr, tty) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(stderr, "keyhaven scan: {e}");
            2
        }
    }
}

fn execute_inner(
    args: &ScanArgs,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    tty: Tty,
) -> Result<u8, Error> {
    let threshold = match fail_threshold(&args.fail_on) {
        Ok(t) => t,
        Err(msg) => {
            let _ = writeln!(stderr, "keyhaven scan: {msg}");
            return Ok(2);
        }
    };
    let use_stdin = args.stdin || args.paths.iter().any(|p| p.as_os_str() == "-");
    let paths: Vec<PathBuf> = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths
            .iter()
            .filter(|p| p.as_os_str() != "-")
            .cloned()
            .collect()
    };
    let scan_root = paths.first().filter(|p| p.is_dir()).cloned();
    let (config, extra) = load_rules(args, scan_root.as_deref(), stderr)?;
    let git_mode = if args.staged {
        Some(GitMode::Staged)
    } else if let Some(rev) = &args.since {
        Some(GitMode::Since(rev.clone()))
    } else if args.git {
        Some(GitMode::History)
    } else {
        None
    };
    let excludes = if args.exclude.is_empty() || args.list_rules {
        None
    } else {
        let mut b = globset::GlobSetBuilder::new();
        for g in &args.exclude {
            b.add(globset::Glob::new(g).map_err(Error::Glob)?);
        }
        Some(b.build().map_err(Error::Glob)?)
    };
    // The rules compile while the directories are walked, both on the scan's workers.
    let walk_files = !args.list_rules && !use_stdin && git_mode.is_none();
    let prepare = || {
        if walk_files {
            let (rules, files) = rayon::join(
                || config.compile(extra),
                || files::walk(&paths, !args.no_ignore, excludes.as_ref()),
            );
            (rules, Some(files))
        } else {
            (config.compile(extra), None)
        }
    };
    let (rules, files) = files::on_pool(args.threads, prepare);
    let rules = rules?;
    if args.list_rules {
        list_rules(&rules, stdout).map_err(Error::Output)?;
        return Ok(0);
    }
    let files = files.transpose()?;
    let engine = Engine::new(
        rules,
        EngineOptions {
            inline_ignore: !args.no_inline_ignore,
            include_binary: args.include_binary,
            ..EngineOptions::default()
        },
    );
    let pipeline = Pipeline {
        engine,
        secrets: !args.posture,
        posture: !args.no_posture,
        max_decode_depth: args.max_decode_depth,
        respect_gitignore: !args.no_ignore,
        excludes,
        max_file_size: args.max_file_size,
        threads: args.threads,
    };
    let show_progress = tty.stderr && !args.no_progress;
    let mut result: ScanResult = if use_stdin {
        pipeline.scan_stream(stdin, "-")
    } else if let Some(mode) = git_mode {
        let repo = paths.first().cloned().unwrap_or_else(|| PathBuf::from("."));
        let pb = progress(show_progress, 0, false);
        let r = pipeline.scan_git(&repo, &mode, pb.as_ref())?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        r
    } else {
        let files = files.unwrap_or_default();
        let total: u64 = files.iter().map(|(_, l)| *l).sum();
        let pb = progress(show_progress && total > 64 * 1024 * 1024, total, true);
        let r = pipeline.scan_files(&files, pb.as_ref());
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        r
    };
    for e in &result.errors {
        let _ = writeln!(stderr, "keyhaven scan: could not read {e}");
    }
    if let Some(p) = &args.write_baseline {
        Baseline::from_findings(&result.findings).save(p)?;
        let _ = writeln!(
            stderr,
            "keyhaven scan: wrote {} finding(s) to baseline {}",
            result.findings.len(),
            p.display()
        );
    }
    if let Some(p) = &args.baseline {
        let known = Baseline::load(p)?.fingerprints();
        let before = result.findings.len();
        result.findings.retain(|f| !known.contains(&f.fingerprint));
        result.stats.baselined = (before - result.findings.len()) as u64;
    }
    let render = Render {
        show_secrets: args.show_secrets,
        color: match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                tty.stdout && args.output.is_none() && std::env::var_os("NO_COLOR").is_none()
            }
        },
    };
    let mut buf: Vec<u8> = Vec::new();
    match args.format {
        Format::Human => report::human(&mut buf, &result.findings, &result.stats, render),
        Format::Json => report::json(&mut buf, &result.findings, &result.stats, render),
        Format::Sarif => report::sarif(&mut buf, &result.findings, render),
        Format::Junit => report::junit(&mut buf, &result.findings, &result.stats, render),
    }
    .map_err(Error::Output)?;
    match &args.output {
        Some(p) => std::fs::write(p, &buf).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?,
        None => stdout.write_all(&buf).map_err(Error::Output)?,
    }
    let failing = threshold.is_some_and(|t| result.findings.iter().any(|f| f.severity >= t));
    Ok(u8::from(failing))
}
