//! Rules as data: the TOML rule format, offline validators and the compiled rule set.
//!
//! Invariant: a rule only ever runs its regex inside windows around a keyword hit (rules
//! without keywords run over the whole chunk), so the cost of a scan is one Aho-Corasick
//! pass plus work proportional to the number of keyword hits.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use rayon::prelude::*;
use regex::bytes::Regex;
use serde::Deserialize;

use crate::Error;
use crate::validate::Validator;

/// The built-in rules, embedded at compile time: the core formats and generic detectors
/// (`default.toml`), then credential formats of hosted services by family (`services.toml`).
pub const DEFAULT_RULES: &str = concat!(
    include_str!("../rules/default.toml"),
    "\n",
    include_str!("../rules/services.toml")
);

/// Largest window a rule may ask for on either side of a keyword hit, in bytes. The
/// streaming reader keeps at least twice this much overlap between chunks.
pub const MAX_SPAN: usize = 16 * 1024;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational hygiene.
    Low,
    /// Worth fixing.
    Medium,
    /// A credential or a serious misconfiguration.
    #[default]
    High,
    /// A live-looking credential with broad reach.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parse a lower-case name.
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_lowercase().as_str() {
            "low" | "any" | "info" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule as written in a rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable identifier, e.g. `github-token`.
    pub id: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Severity of a match.
    #[serde(default)]
    pub severity: Severity,
    /// Prefilter keywords; at least one must occur near a match.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Match keywords case-sensitively (default: ASCII case-insensitive).
    #[serde(default)]
    pub case_sensitive_keywords: bool,
    /// The confirming regex (Rust `regex` syntax). Absent for path-only rules.
    #[serde(default)]
    pub regex: Option<String>,
    /// Capture group that holds the secret.
    #[serde(default)]
    pub secret_group: Option<usize>,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    #[serde(default)]
    pub entropy: Option<f64>,
    /// Offline validators, all of which must accept the secret.
    #[serde(default)]
    pub validators: Vec<Validator>,
    /// A regex that must also match in the same window (pairing).
    #[serde(default)]
    pub requires: Option<String>,
    /// Lines of context on each side of the keyword's line.
    #[serde(default)]
    pub context_lines: usize,
    /// Window size in bytes on each side of a keyword hit (capped at [`MAX_SPAN`]).
    #[serde(default)]
    pub max_span: Option<usize>,
    /// Only files whose path matches this regex.
    #[serde(default)]
    pub path: Option<String>,
    /// Secrets equal to, or containing as a token, one of these words are ignored.
    #[serde(default)]
    pub stopwords: Vec<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Texts the rule must match (checked by a test).
    #[serde(default)]
    pub examples: Vec<String>,
    /// Texts the rule must not match (checked by a test).
    #[serde(default)]
    pub negative_examples: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// Parse a keyhaven rules file (TOML).
pub fn parse_rules(origin: &str, text: &str) -> Result<Vec<RuleSpec>, Error> {
    let file: RuleFile = toml::from_str(text).map_err(|source| Error::RulesToml {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    Ok(file.rules)
}

/// What an allowlist regex is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegexTarget {
    /// The secret itself.
    #[default]
    Secret,
    /// The whole regex match.
    Match,
    /// The line holding the match.
    Line,
}

/// A gitleaks-style allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    /// All conditions must hold (AND) rather than any (OR).
    pub require_all: bool,
    /// Path regexes.
    pub paths: Vec<Regex>,
    /// Content regexes.
    pub regexes: Vec<Regex>,
    /// What the content regexes are matched against.
    pub regex_target: RegexTarget,
    /// Stopwords (substrings of the secret, as gitleaks does).
    pub stopwords: Vec<String>,
    /// Commit ids.
    pub commits: Vec<String>,
    /// Rule ids this global allowlist is limited to (empty: all).
    pub target_rules: Vec<String>,
}

/// Inputs an allowlist is checked against.
pub struct AllowInput<'a> {
    /// Path of the file.
    pub path: &'a str,
    /// The secret.
    pub secret: &'a [u8],
    /// The whole match.
    pub matched: &'a [u8],
    /// The line around the match.
    pub line: &'a [u8],
    /// The commit, in history scans.
    pub commit: Option<&'a str>,
}

impl Allowlist {
    /// Whether this allowlist suppresses the input.
    pub fn allows(&self, input: &AllowInput<'_>) -> bool {
        let mut conds: Vec<bool> = Vec::with_capacity(4);
        if !self.paths.is_empty() {
            conds.push(self.paths.iter().any(|r| r.is_match(input.path.as_bytes())));
        }
        if !self.regexes.is_empty() {
            let target = match self.regex_target {
                RegexTarget::Secret => input.secret,
                RegexTarget::Match => input.matched,
                RegexTarget::Line => input.line,
            };
            conds.push(self.regexes.iter().any(|r| r.is_match(target)));
        }
        if !self.stopwords.is_empty() {
            let lower = input.secret.to_ascii_lowercase();
            conds.push(self.stopwords.iter().any(|w| {
                memchr::memmem::find(&lower, w.to_ascii_lowercase().as_bytes()).is_some()
            }));
        }
        if !self.commits.is_empty() {
            conds.push(
                input
                    .commit
                    .is_some_and(|c| self.commits.iter().any(|x| c.starts_with(x.as_str()))),
            );
        }
        if conds.is_empty() {
            return false;
        }
        if self.require_all {
            conds.iter().all(|c| *c)
        } else {
            conds.iter().any(|c| *c)
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule as written.
    pub spec: RuleSpec,
    /// Compiled confirming regex (None for path-only rules).
    pub regex: Option<Regex>,
    /// Compiled pairing regex.
    pub requires: Option<Regex>,
    /// Compiled path filter.
    pub path: Option<Regex>,
    /// Rule-local allowlists.
    pub allowlists: Vec<Allowlist>,
    /// Effective secret group.
    pub secret_group: usize,
    /// Effective window span in bytes.
    pub span: usize,
    lower_stopwords: Vec<String>,
}

impl Rule {
    /// Compile a spec.
    pub fn compile(spec: RuleSpec, allowlists: Vec<Allowlist>) -> Result<Rule, Error> {
        let regex = match &spec.regex {
            Some(r) => Some(build_regex(&spec.id, r)?),
            None => None,
        };
        if regex.is_none() && spec.path.is_none() {
            return Err(Error::RuleInvalid {
                rule: spec.id.clone(),
                reason: "a rule needs a regex or a path",
            });
        }
        let requires = match &spec.requires {
            Some(r) => Some(build_regex(&spec.id, r)?),
            None => None,
        };
        let path = match &spec.path {
            Some(r) => Some(build_regex(&spec.id, r)?),
            None => None,
        };
        let groups = regex
            .as_ref()
            .map_or(0, |r| r.captures_len().saturating_sub(1));
        let secret_group = match spec.secret_group {
            Some(g) if g > groups => {
                return Err(Error::RuleInvalid {
                    rule: spec.id.clone(),
                    reason: "secret_group is larger than the number of capture groups",
                });
            }
            Some(g) => g,
            None => usize::from(groups >= 1),
        };
        let span = spec.max_span.unwrap_or(4096).clamp(64, MAX_SPAN);
        let lower_stopwords = spec
            .stopwords
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        Ok(Rule {
            spec,
            regex,
            requires,
            path,
            allowlists,
            secret_group,
            span,
            lower_stopwords,
        })
    }

    /// Whether `secret` is one of this rule's stopwords, or contains one as a whole token
    /// (split on non-alphanumerics). Never a substring test inside a random-looking run.
    pub fn is_stopword(&self, secret: &[u8]) -> bool {
        if self.lower_stopwords.is_empty() {
            return false;
        }
        let lower = secret.to_ascii_lowercase();
        self.lower_stopwords.iter().any(|w| {
            lower == w.as_bytes()
                || lower
                    .split(|b| !b.is_ascii_alphanumeric())
                    .any(|tok| tok == w.as_bytes())
        })
    }
}

/// Compile a rule regex in ASCII mode (`\b`, `\w`, `\s` and `(?i)` on ASCII only, as in
/// gitleaks' Go RE2), which keeps the lazy DFA usable on non-ASCII input: a Unicode word
/// boundary makes it give up and fall back to a slower engine. Patterns that need Unicode
/// (`\p{…}` classes) are compiled with it.
pub(crate) fn build_regex(rule: &str, pattern: &str) -> Result<Regex, Error> {
    let build = |unicode: bool| {
        regex::bytes::RegexBuilder::new(pattern)
            .unicode(unicode)
            .size_limit(16 * 1024 * 1024)
            .dfa_size_limit(16 * 1024 * 1024)
            .build()
    };
    build(false)
        .or_else(|_| build(true))
        .map_err(|source| Error::RuleRegex {
            rule: rule.to_owned(),
            source: Box::new(source),
        })
}

/// A rule triggered by a keyword of the automaton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeywordRule {
    /// Index into [`RuleSet::rules`].
    pub(crate) rule: usize,
    /// For a case-sensitive keyword, the bytes the hit must equal.
    pub(crate) exact: Option<Box<[u8]>>,
}

/// A compiled set of rules with its keyword prefilter.
#[derive(Debug)]
pub struct RuleSet {
    /// The rules, in priority order.
    pub rules: Vec<Rule>,
    /// Global allowlists.
    pub allowlists: Vec<Allowlist>,
    /// One ASCII case-insensitive automaton over every keyword: case-sensitive keywords
    /// are in it too and checked byte for byte at each hit, so the input is walked once
    /// (a second, case-sensitive pass cost a third of the scan with the built-in rules).
    pub(crate) ac: Option<AhoCorasick>,
    /// Keyword pattern index → the rules it triggers, each with the exact bytes a
    /// case-sensitive keyword must have.
    pub(crate) kw: Vec<Vec<KeywordRule>>,
    /// Rules without keywords (run on every chunk).
    pub(crate) always: Vec<usize>,
    /// Path-only rules.
    pub(crate) path_only: Vec<usize>,
}

impl RuleSet {
    /// The built-in rules.
    pub fn builtin() -> Result<RuleSet, Error> {
        let specs = parse_rules("built-in rules", DEFAULT_RULES)?;
        RuleSet::compile(specs, Vec::new(), Vec::new())
    }

    /// Compile specs (with per-rule allowlists given by rule id) and global allowlists.
    ///
    /// Called on a worker of a rayon pool, the rules compile in parallel on that pool,
    /// beside the keyword automaton; anywhere else, one after the other on the calling
    /// thread (no pool is started for it). The result, and the error for a set with several
    /// bad rules (the first in order), are the same either way.
    pub fn compile(
        specs: Vec<RuleSpec>,
        rule_allowlists: Vec<(String, Allowlist)>,
        allowlists: Vec<Allowlist>,
    ) -> Result<RuleSet, Error> {
        let mut seen = HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !seen.insert(s.id.as_str())) {
            return Err(Error::RuleInvalid {
                rule: dup.id.clone(),
                reason: "duplicate rule id",
            });
        }
        let mut pats: Vec<String> = Vec::new();
        let mut kw: Vec<Vec<KeywordRule>> = Vec::new();
        let mut always = Vec::new();
        let mut path_only = Vec::new();
        for (idx, spec) in specs.iter().enumerate() {
            if spec.regex.is_none() {
                path_only.push(idx);
                continue;
            }
            let kws: Vec<&String> = spec.keywords.iter().filter(|k| !k.is_empty()).collect();
            if kws.is_empty() {
                always.push(idx);
                continue;
            }
            for k in kws {
                let entry = KeywordRule {
                    rule: idx,
                    exact: spec.case_sensitive_keywords.then(|| k.as_bytes().into()),
                };
                let key = k.to_ascii_lowercase();
                match pats.iter().position(|p| *p == key) {
                    Some(pos) => {
                        if let Some(list) = kw.get_mut(pos).filter(|l| !l.contains(&entry)) {
                            list.push(entry);
                        }
                    }
                    None => {
                        pats.push(key);
                        kw.push(vec![entry]);
                    }
                }
            }
        }
        let compile_one = |spec: RuleSpec| {
            let own: Vec<Allowlist> = rule_allowlists
                .iter()
                .filter(|(id, _)| *id == spec.id)
                .map(|(_, a)| a.clone())
                .collect();
            Rule::compile(spec, own)
        };
        let (compiled, ac) = if rayon::current_thread_index().is_some() {
            rayon::join(
                || specs.into_par_iter().map(compile_one).collect::<Vec<_>>(),
                || build_ac(&pats, true),
            )
        } else {
            let compiled: Vec<_> = specs.into_iter().map(compile_one).collect();
            (compiled, build_ac(&pats, true))
        };
        let rules = compiled.into_iter().collect::<Result<Vec<Rule>, Error>>()?;
        let ac = ac?;
        Ok(RuleSet {
            rules,
            allowlists,
            ac,
            kw,
            always,
            path_only,
        })
    }

    /// Keep only the rules for which `keep` holds (used by `disabledRules` and `--rule`).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.spec.id.as_str())
    }
}

/// Keyword sets up to this many patterns get a full DFA. With ASCII case-insensitive
/// keywords the automaton has no SIMD prefilter and walks every byte, and a DFA walks
/// about 2.5 times faster than the contiguous NFA chosen by default above 100 patterns
/// (0.40 vs 1.04 CPU-s for the 103 keywords of the first built-in rules over the 192 MB
/// benchmark corpus). The built-in rules have about 570 keywords (5 KB); their DFA takes
/// a few milliseconds and well under 2 MB to build. Larger sets (big `.gitleaks.toml`
/// files) keep the default choice to bound build time and memory.
const DFA_MAX_PATTERNS: usize = 1024;
/// And up to this many keyword bytes in total (an upper bound on the DFA's states).
const DFA_MAX_BYTES: usize = 16 * 1024;

fn build_ac(pats: &[String], ci: bool) -> Result<Option<AhoCorasick>, Error> {
    if pats.is_empty() {
        return Ok(None);
    }
    let small = pats.len() <= DFA_MAX_PATTERNS
        && pats.iter().map(String::len).sum::<usize>() <= DFA_MAX_BYTES;
    let mut builder = AhoCorasickBuilder::new();
    builder
        .ascii_case_insensitive(ci)
        .match_kind(MatchKind::Standard);
    if small && let Ok(ac) = builder.kind(Some(AhoCorasickKind::DFA)).build(pats) {
        return Ok(Some(ac));
    }
    builder
        .kind(None)
        .build(pats)
        .map(Some)
        .map_err(|e| Error::Keywords(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_compile() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.rules.len() >= 200, "{} rules", set.rules.len());
        assert!(set.always.is_empty(), "every built-in rule has keywords");
        for r in &set.rules {
            assert!(!r.spec.examples.is_empty(), "{} has no examples", r.spec.id);
            assert!(
                !r.spec.negative_examples.is_empty(),
                "{} has no negative examples",
                r.spec.id
            );
            assert!(!r.spec.description.is_empty());
        }
    }

    #[test]
    fn bad_secret_group_is_refused() {
        let specs = parse_rules(
            "t",
            "[[rules]]\nid='x'\nkeywords=['a']\nregex='a(b)'\nsecret_group=3\n",
        )
        .unwrap();
        assert!(RuleSet::compile(specs, vec![], vec![]).is_err());
    }

    #[test]
    fn compiling_on_a_pool_gives_the_set_and_the_error_of_compiling_alone() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let alone = RuleSet::builtin().unwrap();
        let pooled = pool.install(RuleSet::builtin).unwrap();
        let ids = |s: &RuleSet| s.rule_ids().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(ids(&alone), ids(&pooled));
        assert_eq!(alone.kw, pooled.kw);
        assert_eq!(alone.always, pooled.always);
        assert_eq!(alone.path_only, pooled.path_only);
        assert!(pooled.ac.is_some());

        // Several bad rules: the first in order is named, on the pool as alone.
        let mut text = String::new();
        for i in 0..64 {
            let regex = if i == 17 || i == 40 { "a(" } else { "a(b)" };
            text.push_str(&format!(
                "[[rules]]\nid='r{i}'\nkeywords=['k{i}']\nregex='{regex}'\n"
            ));
        }
        let specs = parse_rules("t", &text).unwrap();
        let alone = RuleSet::compile(specs.clone(), vec![], vec![]).unwrap_err();
        let pooled = pool
            .install(|| RuleSet::compile(specs, vec![], vec![]))
            .unwrap_err();
        assert!(
            alone.to_string().starts_with("rule r17: invalid regex"),
            "{alone}"
        );
        assert_eq!(alone.to_string(), pooled.to_string());
    }

    #[test]
    fn stopwords_are_tokens() {
        let specs = parse_rules(
            "t",
            "[[rules]]\nid='x'\nkeywords=['a']\nregex='a(.+)'\nstopwords=['pass']\n",
        )
        .unwrap();
        let set = RuleSet::compile(specs, vec![], vec![]).unwrap();
        let r = set.rules.first().unwrap();
        assert!(r.is_stopword(b"pass"));
        assert!(r.is_stopword(b"my-pass"));
        assert!(!r.is_stopword(b"Xpassq7Z"));
    }
}
