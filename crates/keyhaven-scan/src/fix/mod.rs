//! The planning half of `keyhaven scan --fix`: from the findings of a scan to a [`Plan`]
//! of KV v2 writes, file rewrites, policies and `auth/kubernetes` roles. Nothing here
//! writes a file or touches the network; `keyhaven-cli` carries the plan out.
//!
//! Every reader here takes untrusted bytes: a file it cannot rewrite safely is left alone
//! with a note, never written in part.

pub mod config;
pub mod diff;
pub mod k8s;
pub mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::ScanArgs;
use crate::engine::{Engine, EngineOptions};
use crate::files::Pipeline;
use crate::rules::RuleSet;
use crate::{Category, Error, Finding};

pub use plan::{Ctx, FileChange, KvWrite, Plan, Role};

/// What replaces a literal Kubernetes Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A SecretProviderClass for the keyhaven CSI provider.
    Csi,
    /// An ExternalSecret and a SecretStore of the External Secrets Operator.
    ExternalSecrets,
}

/// Scan `PATHS` and plan the fix of every secret finding.
pub fn plan(scan: &ScanArgs, ctx: &Ctx, target: Target) -> Result<Plan, Error> {
    let rules = RuleSet::builtin()?;
    let excludes = if scan.exclude.is_empty() {
        None
    } else {
        let mut b = globset::GlobSetBuilder::new();
        for g in &scan.exclude {
            b.add(globset::Glob::new(g).map_err(Error::Glob)?);
        }
        Some(b.build().map_err(Error::Glob)?)
    };
    let pipeline = Pipeline {
        engine: Engine::new(
            rules,
            EngineOptions {
                inline_ignore: !scan.no_inline_ignore,
                include_binary: scan.include_binary,
                ..EngineOptions::default()
            },
        ),
        secrets: true,
        posture: false,
        max_decode_depth: scan.max_decode_depth,
        respect_gitignore: !scan.no_ignore,
        excludes,
        max_file_size: scan.max_file_size,
        threads: scan.threads,
    };
    let paths = if scan.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        scan.paths.clone()
    };
    let files = pipeline.walk(&paths)?;
    let result = pipeline.scan_files(&files, None);
    let mut plan = Plan::default();
    for e in &result.errors {
        plan.notes.push(format!("could not read {e}"));
    }
    let mut by_file: BTreeMap<String, Vec<&Finding>> = BTreeMap::new();
    for f in &result.findings {
        if f.category == Category::Secret && f.secret.is_some() {
            by_file.entry(f.path.clone()).or_default().push(f);
        }
    }
    // Manifests are handled together, found or not by a rule: a literal Secret is one.
    let mut candidates: Vec<(PathBuf, String, Vec<&Finding>)> = Vec::new();
    for (path, _) in &files {
        let display = path.display().to_string();
        match by_file.remove(&display) {
            Some(f) => candidates.push((path.clone(), display, f)),
            None => {
                if config::format_of(path) == Some(config::Format::Yaml)
                    && let Ok(data) = std::fs::read(path)
                    && crate::k8s::looks_like_manifest(&display, &data)
                    && k8s::has_literal_secret(&data)
                {
                    candidates.push((path.clone(), display, Vec::new()));
                }
            }
        }
    }
    for (display, f) in by_file {
        candidates.push((PathBuf::from(&display), display, f));
    }
    let mut manifests = Vec::new();
    for (path, display, findings) in candidates {
        if let Some(text) = fix_file(ctx, &mut plan, &path, &display, &findings) {
            manifests.push(k8s::Manifest {
                path,
                display,
                text,
                findings,
            });
        }
    }
    if !manifests.is_empty() {
        k8s::fix(ctx, target, &mut plan, &manifests);
    }
    plan.files.sort_by(|a, b| a.display.cmp(&b.display));
    Ok(plan)
}

/// Plan the fix of a config file; a manifest's text is returned to be fixed with the
/// others.
fn fix_file(
    ctx: &Ctx,
    plan: &mut Plan,
    path: &Path,
    display: &str,
    findings: &[&Finding],
) -> Option<String> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            plan.notes
                .push(format!("{display}: cannot read: {}", e.kind()));
            return None;
        }
    };
    if data.contains(&0) {
        plan.notes.push(format!(
            "{display}: left alone: a binary file; remove the credential by hand"
        ));
        return None;
    }
    let Ok(text) = String::from_utf8(data) else {
        plan.notes.push(format!(
            "{display}: left alone: not UTF-8 text; remove the credential by hand"
        ));
        return None;
    };
    if text.contains("{{") && (text.contains("}}") || text.contains("{{-")) {
        plan.notes.push(format!(
            "{display}: left alone: a Helm or Go template; move the value out of the chart's values and run --fix on the rendered manifests"
        ));
        return None;
    }
    if crate::k8s::looks_like_manifest(display, text.as_bytes()) {
        return Some(text);
    }
    match config::format_of(path) {
        Some(format) => config::fix(ctx, plan, path, display, &text, format, findings),
        None => {
            for f in findings {
                plan.notes.push(format!(
                    "{display}:{}: {} left alone: --fix rewrites .env, properties, INI, YAML and Kubernetes manifests; move it by hand",
                    f.line, f.description
                ));
            }
        }
    }
    None
}
