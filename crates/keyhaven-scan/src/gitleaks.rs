//! Reading users' `.gitleaks.toml`: rules, rule and global allowlists, and `[extend]`
//! (`useDefault` extends keyhaven's built-in rules; `path` another gitleaks file;
//! `disabledRules`). Unknown keys are ignored so newer gitleaks files still load.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;
use crate::rules::{
    Allowlist, DEFAULT_RULES, RegexTarget, RuleSet, RuleSpec, Severity, parse_rules,
};

const MAX_EXTEND_DEPTH: usize = 4;

#[derive(Debug, Default, Deserialize)]
struct GlConfig {
    #[serde(default)]
    extend: Option<GlExtend>,
    #[serde(default)]
    rules: Vec<GlRule>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
}

#[derive(Debug, Default, Deserialize)]
struct GlExtend {
    #[serde(default, rename = "useDefault")]
    use_default: bool,
    #[serde(default)]
    path: Option<String>,
    #[serde(default, rename = "disabledRules")]
    disabled_rules: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct GlRule {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default, rename = "secretGroup")]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
}

#[derive(Debug, Default, Deserialize)]
struct GlAllow {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    commits: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default, rename = "regexTarget")]
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default, rename = "targetRules")]
    target_rules: Vec<String>,
}

/// A loaded gitleaks configuration, ready to compile.
#[derive(Debug, Default)]
pub struct GitleaksConfig {
    /// Rules (after `[extend]` resolution).
    pub specs: Vec<RuleSpec>,
    /// Rule-local allowlists, by rule id.
    pub rule_allowlists: Vec<(String, Allowlist)>,
    /// Global allowlists.
    pub allowlists: Vec<Allowlist>,
}

impl GitleaksConfig {
    /// Compile into a rule set, with `extra` keyhaven-format rules appended.
    pub fn compile(self, extra: Vec<RuleSpec>) -> Result<RuleSet, Error> {
        let mut specs = self.specs;
        for e in extra {
            specs.retain(|s| s.id != e.id);
            specs.push(e);
        }
        RuleSet::compile(specs, self.rule_allowlists, self.allowlists)
    }
}

fn compile_allow(owner: &str, a: GlAllow) -> Result<Allowlist, Error> {
    let re = |p: &String| {
        regex::bytes::Regex::new(p).map_err(|source| Error::RuleRegex {
            rule: format!("{owner} allowlist"),
            source: Box::new(source),
        })
    };
    Ok(Allowlist {
        require_all: a
            .condition
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("and")),
        paths: a.paths.iter().map(re).collect::<Result<_, _>>()?,
        regexes: a.regexes.iter().map(re).collect::<Result<_, _>>()?,
        regex_target: match a.regex_target.as_deref() {
            Some("match") => RegexTarget::Match,
            Some("line") => RegexTarget::Line,
            _ => RegexTarget::Secret,
        },
        stopwords: a.stopwords,
        commits: a.commits,
        target_rules: a.target_rules,
    })
}

fn convert(rule: GlRule) -> RuleSpec {
    RuleSpec {
        id: rule.id,
        description: rule.description,
        severity: Severity::High,
        keywords: rule
            .keywords
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect(),
        case_sensitive_keywords: false,
        regex: rule.regex,
        secret_group: rule.secret_group.filter(|g| *g > 0),
        entropy: rule.entropy.filter(|e| *e > 0.0),
        validators: Vec::new(),
        requires: None,
        context_lines: 0,
        max_span: None,
        path: rule.path,
        stopwords: Vec::new(),
        tags: rule.tags,
        examples: Vec::new(),
        negative_examples: Vec::new(),
    }
}

/// Parse gitleaks TOML. `base` is the directory `[extend] path` is resolved against;
/// without it, `path` extension is ignored.
pub fn parse_str(text: &str, base: Option<&Path>) -> Result<GitleaksConfig, Error> {
    parse_depth(text, base, "gitleaks config", 0)
}

fn parse_depth(
    text: &str,
    base: Option<&Path>,
    origin: &str,
    depth: usize,
) -> Result<GitleaksConfig, Error> {
    let cfg: GlConfig = toml::from_str(text).map_err(|source| Error::RulesToml {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    let mut out = GitleaksConfig::default();
    let mut disabled: Vec<String> = Vec::new();
    if let Some(ext) = cfg.extend {
        disabled = ext.disabled_rules;
        if ext.use_default {
            out.specs = parse_rules("built-in rules", DEFAULT_RULES)?;
        }
        if let (Some(p), Some(base)) = (ext.path, base) {
            let full: PathBuf = base.join(p);
            if depth >= MAX_EXTEND_DEPTH {
                return Err(Error::ExtendDepth {
                    path: full,
                    max: MAX_EXTEND_DEPTH,
                });
            }
            let inner_text = std::fs::read_to_string(&full).map_err(|source| Error::Io {
                path: full.clone(),
                source,
            })?;
            let inner_base = full.parent().map(Path::to_path_buf);
            let inner = parse_depth(
                &inner_text,
                inner_base.as_deref(),
                &full.display().to_string(),
                depth + 1,
            )?;
            for s in inner.specs {
                out.specs.retain(|x| x.id != s.id);
                out.specs.push(s);
            }
            out.rule_allowlists.extend(inner.rule_allowlists);
            out.allowlists.extend(inner.allowlists);
        }
    }
    for mut rule in cfg.rules {
        let id = rule.id.clone();
        let mut allows = std::mem::take(&mut rule.allowlists);
        if let Some(a) = rule.allowlist.take() {
            allows.push(a);
        }
        let spec = convert(rule);
        // A user rule with the same id replaces the inherited one.
        out.specs.retain(|s| s.id != id);
        out.specs.push(spec);
        for a in allows.drain(..) {
            out.rule_allowlists
                .push((id.clone(), compile_allow(&id, a)?));
        }
    }
    if let Some(a) = cfg.allowlist {
        out.allowlists.push(compile_allow("global", a)?);
    }
    for a in cfg.allowlists {
        out.allowlists.push(compile_allow("global", a)?);
    }
    out.specs.retain(|s| !disabled.contains(&s.id));
    Ok(out)
}

/// Load a gitleaks file from disk.
pub fn load(path: &Path) -> Result<GitleaksConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_depth(&text, path.parent(), &path.display().to_string(), 0)
}
