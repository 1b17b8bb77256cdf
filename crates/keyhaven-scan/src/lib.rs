//! keyhaven-scan: finds hardcoded secrets and risky Kubernetes manifests, as a CI gate.
//!
//! Purpose: detect credentials in files, stdin and git history with data-driven rules
//! (keyword prefilter, regex, entropy, offline validators), understand Kubernetes
//! manifests (Secrets, kubeconfigs, env values) and check RBAC and pod posture. Non-goals:
//! no live validation of credentials, no network access of any kind.
//!
//! Invariants:
//! - found secret values are held only in [`Secret`] (redacting `Debug`, no `Serialize`)
//!   and leave the process only through an explicit `--show-secrets`;
//! - memory per scanned input is bounded by the chunk size plus overlap, and decoding of
//!   nested base64 is bounded in depth and size;
//! - a finding's fingerprint depends on rule, path and value, never on line numbers, so
//!   baselines survive moved lines.

mod error;

pub mod baseline;
pub mod cli;
pub mod engine;
pub mod files;
pub mod finding;
pub mod fix;
pub mod git;
pub mod gitleaks;
pub mod json;
pub mod k8s;
pub mod posture;
pub mod report;
pub mod rules;
pub mod validate;

pub use error::Error;
pub use finding::{Category, Finding, Secret};
pub use rules::Severity;

/// Entry points for fuzz targets and benchmarks; not a stable API.
#[doc(hidden)]
pub mod internal {
    /// Compile a keyhaven rules file; errors are expected, panics are bugs.
    pub fn compile_rules(text: &str) -> bool {
        crate::rules::parse_rules("fuzz", text)
            .and_then(|specs| crate::rules::RuleSet::compile(specs, Vec::new(), Vec::new()))
            .is_ok()
    }

    /// Parse a gitleaks config.
    pub fn parse_gitleaks(text: &str) -> bool {
        crate::gitleaks::parse_str(text, None).is_ok()
    }

    /// Scan arbitrary bytes as a manifest (secrets and posture).
    pub fn scan_manifest_bytes(data: &[u8]) -> usize {
        // Compiled once: building the built-in rules per input would dominate the run.
        static ENGINE: std::sync::OnceLock<Option<crate::engine::Engine>> =
            std::sync::OnceLock::new();
        let Some(engine) = ENGINE.get_or_init(|| {
            crate::rules::RuleSet::builtin().ok().map(|rules| {
                crate::engine::Engine::new(rules, crate::engine::EngineOptions::default())
            })
        }) else {
            return 0;
        };
        let scanned = crate::k8s::scan_manifest(engine, "fuzz.yaml", data, None, 2);
        let posture = crate::posture::check(&scanned.objects);
        scanned.findings.len() + posture.len() + engine.scan_bytes(data, "fuzz.yaml", None).len()
    }

    /// Plan `--fix` on arbitrary bytes as each config format and as a manifest, with a
    /// finding on every line; the rewritten texts must parse where the input did.
    pub fn fix_plan_bytes(data: &[u8]) -> usize {
        use crate::fix::{Ctx, Plan, Target, config, diff, k8s};
        let Ok(text) = std::str::from_utf8(data) else {
            return 0;
        };
        let ctx = Ctx {
            mount: "secret".into(),
            path_template: "<namespace>/<name>".into(),
            reference: "${<var>}".into(),
        };
        let findings: Vec<crate::Finding> = (1u64..)
            .zip(text.lines())
            .map(|(line, l)| {
                let tail: String = l
                    .chars()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                crate::Finding {
                    rule_id: "fuzz".into(),
                    description: "fuzz".into(),
                    severity: crate::Severity::High,
                    category: crate::Category::Secret,
                    path: "dir/fuzz".into(),
                    line,
                    column: 1,
                    commit: None,
                    message: String::new(),
                    fix: None,
                    references: Vec::new(),
                    decoded_from: None,
                    field: None,
                    secret: Some(crate::Secret::new(tail.into_bytes())),
                    fingerprint: String::new(),
                }
            })
            .collect();
        let refs: Vec<&crate::Finding> = findings.iter().collect();
        let mut plan = Plan::default();
        for (name, format) in [
            ("dir/.env", config::Format::Env),
            ("dir/a.properties", config::Format::Properties),
            ("dir/a.ini", config::Format::Ini),
            ("dir/a.yaml", config::Format::Yaml),
        ] {
            config::fix(
                &ctx,
                &mut plan,
                std::path::Path::new(name),
                name,
                text,
                format,
                &refs,
            );
        }
        for target in [Target::Csi, Target::ExternalSecrets] {
            let m = k8s::Manifest {
                path: "dir/m.yaml".into(),
                display: "dir/m.yaml".into(),
                text: text.to_owned(),
                findings: refs.clone(),
            };
            k8s::fix(&ctx, target, &mut plan, std::slice::from_ref(&m));
        }
        plan.files
            .iter()
            .map(|f| diff::unified(&f.display, &f.before, &f.after).len())
            .sum()
    }
}
