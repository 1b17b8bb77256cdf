//! Output formats: human (redacted, optional colour), JSON (stable fingerprints),
//! SARIF 2.1.0 and JUnit XML.

use std::collections::BTreeMap;
use std::io::Write;

use owo_colors::OwoColorize;
use serde_json::{Value, json};

use crate::{Finding, Severity};

/// Tool name in reports.
pub const TOOL: &str = "keyhaven-scan";
/// Tool version in reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Totals of a scan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Inputs scanned (files, blobs, stdin).
    pub inputs: u64,
    /// Bytes scanned.
    pub bytes: u64,
    /// Inputs skipped as binary.
    pub binary: u64,
    /// Findings suppressed by the baseline.
    pub baselined: u64,
}

/// Rendering options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Render {
    /// Print secret values instead of redacting them.
    pub show_secrets: bool,
    /// Use ANSI colour (human format).
    pub color: bool,
}

fn secret_text(f: &Finding, r: Render) -> Option<String> {
    f.secret.as_ref().map(|s| {
        if r.show_secrets {
            String::from_utf8_lossy(s.expose()).into_owned()
        } else {
            s.redacted()
        }
    })
}

fn sev_label(s: Severity, color: bool) -> String {
    let t = format!("{:<8}", s.as_str().to_ascii_uppercase());
    if !color {
        return t;
    }
    match s {
        Severity::Critical => t.red().bold().to_string(),
        Severity::High => t.red().to_string(),
        Severity::Medium => t.yellow().to_string(),
        Severity::Low => t.cyan().to_string(),
    }
}

/// Human-readable report.
pub fn human(
    w: &mut dyn Write,
    findings: &[Finding],
    stats: &Stats,
    r: Render,
) -> std::io::Result<()> {
    for f in findings {
        let loc = format!("{}:{}:{}", f.path, f.line, f.column);
        let loc = if r.color { loc.bold().to_string() } else { loc };
        writeln!(
            w,
            "{} {} {}  {}",
            sev_label(f.severity, r.color),
            f.rule_id,
            loc,
            f.message
        )?;
        if let Some(s) = secret_text(f, r) {
            writeln!(w, "         secret: {s}")?;
        }
        if let Some(d) = &f.decoded_from {
            writeln!(w, "         decoded from: {d}")?;
        }
        if let Some(c) = &f.commit {
            writeln!(w, "         commit: {c}")?;
        }
        if let Some(fix) = &f.fix {
            writeln!(w, "         fix: {fix}")?;
        }
        if !f.references.is_empty() {
            let refs: Vec<String> = f
                .references
                .iter()
                .filter(|(_, id)| *id != "-")
                .map(|(t, id)| format!("{t} {id}"))
                .collect();
            writeln!(w, "         see: {}", refs.join(", "))?;
        }
    }
    let mut by: BTreeMap<Severity, usize> = BTreeMap::new();
    for f in findings {
        *by.entry(f.severity).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().rev().map(|(s, n)| format!("{n} {s}")).collect();
    writeln!(
        w,
        "{} finding(s){} in {} input(s), {:.1} MB scanned{}{}",
        findings.len(),
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        },
        stats.inputs,
        stats.bytes as f64 / 1e6,
        if stats.binary > 0 {
            format!(", {} binary skipped", stats.binary)
        } else {
            String::new()
        },
        if stats.baselined > 0 {
            format!(", {} in baseline", stats.baselined)
        } else {
            String::new()
        },
    )
}

fn finding_json(f: &Finding, r: Render) -> Value {
    let refs: serde_json::Map<String, Value> = f
        .references
        .iter()
        .map(|(t, id)| ((*t).to_owned(), Value::String((*id).to_owned())))
        .collect();
    json!({
        "rule": f.rule_id,
        "description": f.description,
        "severity": f.severity.as_str(),
        "category": f.category.as_str(),
        "path": f.path,
        "line": f.line,
        "column": f.column,
        "commit": f.commit,
        "message": f.message,
        "fix": f.fix,
        "decoded_from": f.decoded_from,
        "secret": secret_text(f, r),
        "fingerprint": f.fingerprint,
        "references": refs,
    })
}

/// JSON report.
pub fn json(
    w: &mut dyn Write,
    findings: &[Finding],
    stats: &Stats,
    r: Render,
) -> std::io::Result<()> {
    let doc = json!({
        "tool": TOOL,
        "version": 1,
        "findings": findings.iter().map(|f| finding_json(f, r)).collect::<Vec<_>>(),
        "summary": {
            "findings": findings.len(),
            "inputs": stats.inputs,
            "bytes": stats.bytes,
            "binary_skipped": stats.binary,
            "baselined": stats.baselined,
        }
    });
    serde_json::to_writer_pretty(&mut *w, &doc).map_err(std::io::Error::other)?;
    writeln!(w)
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
    }
}

/// SARIF 2.1.0 report.
pub fn sarif(w: &mut dyn Write, findings: &[Finding], r: Render) -> std::io::Result<()> {
    let mut rules: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in findings {
        rules.entry(f.rule_id.as_str()).or_insert(f);
    }
    let index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    let rule_objs: Vec<Value> = rules
        .values()
        .map(|f| {
            let mut help = f.fix.clone().unwrap_or_default();
            let refs: Vec<String> = f
                .references
                .iter()
                .filter(|(_, id)| *id != "-")
                .map(|(t, id)| format!("{t} {id}"))
                .collect();
            if !refs.is_empty() {
                help.push_str(&format!(" (see {})", refs.join(", ")));
            }
            json!({
                "id": f.rule_id,
                "name": f.rule_id,
                "shortDescription": {"text": f.description},
                "fullDescription": {"text": f.description},
                "help": {"text": help},
                "defaultConfiguration": {"level": sarif_level(f.severity)},
                "properties": {
                    "tags": ["security", f.category.as_str()],
                    "security-severity": security_severity(f.severity),
                },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut msg = f.message.clone();
            if let Some(s) = secret_text(f, r) {
                msg.push_str(&format!(" (secret {s})"));
            }
            let mut res = json!({
                "ruleId": f.rule_id,
                "ruleIndex": index.get(f.rule_id.as_str()).copied().unwrap_or(0),
                "level": sarif_level(f.severity),
                "message": {"text": msg},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.path.trim_start_matches("./")},
                        "region": {"startLine": f.line.max(1), "startColumn": f.column.max(1)},
                    }
                }],
                "partialFingerprints": {"keyhavenFingerprint/v1": f.fingerprint},
            });
            if let (Some(c), Some(obj)) = (&f.commit, res.as_object_mut()) {
                obj.insert("properties".to_owned(), json!({"commit": c}));
            }
            res
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": TOOL,
                "version": VERSION,
                "informationUri": "https://example.invalid/keyhaven",
                "rules": rule_objs,
            }},
            "results": results,
        }]
    });
    serde_json::to_writer_pretty(&mut *w, &doc).map_err(std::io::Error::other)?;
    writeln!(w)
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML report: one failing test case per finding.
pub fn junit(
    w: &mut dyn Write,
    findings: &[Finding],
    stats: &Stats,
    r: Render,
) -> std::io::Result<()> {
    writeln!(w, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    let n = findings.len().max(1);
    writeln!(
        w,
        r#"<testsuites name="{TOOL}" tests="{n}" failures="{}">"#,
        findings.len()
    )?;
    writeln!(
        w,
        r#"  <testsuite name="{TOOL}" tests="{n}" failures="{}" errors="0">"#,
        findings.len()
    )?;
    if findings.is_empty() {
        writeln!(
            w,
            r#"    <testcase classname="{TOOL}" name="no findings in {} input(s)"/>"#,
            stats.inputs
        )?;
    }
    for f in findings {
        let mut body = format!("{}:{}:{} {}", f.path, f.line, f.column, f.message);
        if let Some(s) = secret_text(f, r) {
            body.push_str(&format!("\nsecret: {s}"));
        }
        if let Some(c) = &f.commit {
            body.push_str(&format!("\ncommit: {c}"));
        }
        if let Some(fix) = &f.fix {
            body.push_str(&format!("\nfix: {fix}"));
        }
        writeln!(
            w,
            r#"    <testcase classname="{}" name="{}:{}">"#,
            xml_escape(&f.path),
            xml_escape(&f.rule_id),
            f.line
        )?;
        writeln!(
            w,
            r#"      <failure type="{}" message="{}">{}</failure>"#,
            f.severity.as_str(),
            xml_escape(&f.description),
            xml_escape(&body)
        )?;
        writeln!(w, "    </testcase>")?;
    }
    writeln!(w, "  </testsuite>")?;
    writeln!(w, "</testsuites>")
}
