//! Config files (`.env`, Java properties, INI, YAML that is not a manifest): the value on
//! a finding's line moves to keyhaven and is replaced by the reference the user chose.
//!
//! Only the value on the line changes; every other byte of the file is kept. A line whose
//! value cannot be rewritten safely (it spans lines, is a YAML anchor, alias, block or
//! flow value, a list item, or does not hold the finding) is left alone with a note.

use std::path::Path;

use crate::Finding;

use super::plan::{Ctx, Plan, env_var, policy_name};

/// The config formats `--fix` rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `KEY=value`, `export KEY="value"`.
    Env,
    /// Java `.properties`: `key=value`, `key: value`, `key value`.
    Properties,
    /// `[section]` and `key = value`.
    Ini,
    /// YAML mappings, `key: value`.
    Yaml,
}

/// The format of a file from its name.
pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if name == ".env" || name.starts_with(".env.") || name.ends_with(".env") {
        Some(Format::Env)
    } else if name.ends_with(".properties") {
        Some(Format::Properties)
    } else if name.ends_with(".ini") || name.ends_with(".cfg") {
        Some(Format::Ini)
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        Some(Format::Yaml)
    } else {
        None
    }
}

/// A `key = value` line: the KV key, the variable name and the byte span of the value as
/// written (quotes included) with its unquoted text.
struct Assignment {
    key: String,
    var: String,
    span: (usize, usize),
    value: String,
    yaml: bool,
}

/// Plan the rewrite of one config file.
pub fn fix(
    ctx: &Ctx,
    plan: &mut Plan,
    path: &Path,
    display: &str,
    text: &str,
    format: Format,
    findings: &[&Finding],
) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let namespace = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("default");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let kv_path = ctx.kv_path(namespace, name);
    let mut new_lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let mut moved: Vec<usize> = Vec::new();
    let mut pending = Vec::new();
    for f in findings {
        let Some(secret) = f.secret.as_ref() else {
            continue;
        };
        let where_ = format!("{display}:{}", f.line);
        let idx = usize::try_from(f.line).unwrap_or(0).saturating_sub(1);
        if moved.contains(&idx) {
            // Another finding on the same line: the value already moves.
            plan.leaked.push((where_, f.description.clone()));
            continue;
        }
        let Some(line) = lines.get(idx) else {
            plan.notes
                .push(format!("{where_}: no such line; left alone"));
            continue;
        };
        let parsed = match format {
            Format::Env => parse_env(line),
            Format::Properties => parse_properties(line),
            Format::Ini => parse_ini(line, section_of(&lines, idx)),
            Format::Yaml => parse_yaml(&lines, idx),
        };
        let a = match parsed {
            Ok(a) => a,
            Err(why) => {
                plan.notes.push(format!(
                    "{where_}: {} left alone: {why}; move it by hand",
                    f.description
                ));
                continue;
            }
        };
        let secret_text = String::from_utf8_lossy(secret.expose());
        if !a.value.contains(secret_text.as_ref()) {
            plan.notes.push(format!(
                "{where_}: {} left alone: the value on this line is not the whole credential (it may span lines); move it by hand",
                f.description
            ));
            continue;
        }
        if is_reference(&a.value) {
            continue;
        }
        let reference = ctx.reference(&a.var, &kv_path, &a.key);
        let written = if a.yaml {
            yaml_scalar(&reference)
        } else {
            reference
        };
        let Some(line_text) = lines.get(idx) else {
            continue;
        };
        let new_line = format!(
            "{}{}{}",
            line_text.get(..a.span.0).unwrap_or_default(),
            written,
            line_text.get(a.span.1..).unwrap_or_default()
        );
        pending.push((idx, a.key, a.value, new_line, where_, f.description.clone()));
        moved.push(idx);
    }
    if pending.is_empty() {
        return;
    }
    let mut keys = Vec::new();
    for (idx, key, value, new_line, where_, description) in pending {
        if let Err(e) = plan.add_kv(&kv_path, &key, &value, &where_) {
            plan.notes.push(format!("{e}; left alone"));
            continue;
        }
        if let Some(slot) = new_lines.get_mut(idx) {
            *slot = new_line;
        }
        keys.push(key);
        plan.leaked.push((where_, description));
    }
    if keys.is_empty() {
        return;
    }
    let after: String = new_lines.concat();
    if format == Format::Yaml {
        let docs = |t: &str| serde_saphyr::from_multiple::<serde_json::Value>(t).map(|d| d.len());
        match (docs(text), docs(&after)) {
            (Ok(a), Ok(b)) if a == b => {}
            _ => {
                // Undo: the values stay where they were, and so do the keyhaven writes.
                if let Some(w) = plan.kv.get_mut(&kv_path) {
                    w.data.retain(|k, _| !keys.contains(k));
                    w.sources.retain(|s| !s.starts_with(&format!("{display}:")));
                    if w.data.is_empty() {
                        plan.kv.remove(&kv_path);
                    }
                }
                plan.leaked
                    .retain(|(w, _)| !w.starts_with(&format!("{display}:")));
                plan.notes.push(format!(
                    "{display}: left alone: the file does not parse as YAML the same way after the rewrite; move its values by hand"
                ));
                return;
            }
        }
    }
    plan.files.push(super::plan::FileChange {
        path: path.to_owned(),
        display: display.to_owned(),
        before: text.to_owned(),
        after,
    });
    let policy = policy_name(namespace, name);
    plan.add_policy(&policy, &ctx.mount, &[kv_path]);
}

/// Whether a value is already a reference (placeholder or template), not a credential.
fn is_reference(v: &str) -> bool {
    let v = v.trim();
    (v.starts_with("${") && v.ends_with('}'))
        || v.starts_with("vault:")
        || v.starts_with("keyhaven:")
        || (v.starts_with("{{") && v.ends_with("}}"))
}

/// A YAML double-quoted scalar, unless the text is a safe plain scalar.
fn yaml_scalar(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && !s.is_empty()
    {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Offset of the first non-blank byte.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

/// The value after `start`: quoted (to its closing quote, which must be on the line) or
/// bare (to the end, or to ` #` when `hash_comments`). Returns (span, unquoted text).
fn value_at(
    line: &str,
    start: usize,
    hash_comments: bool,
) -> Result<((usize, usize), String), &'static str> {
    let body = line.trim_end_matches(['\n', '\r']);
    let rest = body.get(start..).unwrap_or_default();
    let lead = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let vstart = start + lead;
    let v = body.get(vstart..).unwrap_or_default();
    match v.chars().next() {
        None => Err("the value is not on this line"),
        Some(q @ ('"' | '\'')) => {
            let mut escaped = false;
            for (i, c) in v.char_indices().skip(1) {
                if q == '"' && c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if c == q && !escaped {
                    let inner = v.get(1..i).unwrap_or_default().to_owned();
                    return Ok(((vstart, vstart + i + 1), inner));
                }
                escaped = false;
            }
            Err("the quoted value continues on the next line")
        }
        Some(_) => {
            let mut end = v.len();
            if hash_comments && let Some(i) = v.find(" #").or_else(|| v.find("\t#")) {
                end = i;
            }
            let text = v.get(..end).unwrap_or_default().trim_end();
            Ok(((vstart, vstart + text.len()), text.to_owned()))
        }
    }
}

fn is_comment(line: &str, marks: &[char]) -> bool {
    line.trim_start().starts_with(marks)
}

fn parse_env(line: &str) -> Result<Assignment, &'static str> {
    if is_comment(line, &['#']) {
        return Err("it is in a comment");
    }
    let i = indent(line);
    let mut pos = i;
    let rest = line.get(i..).unwrap_or_default();
    if let Some(r) = rest.strip_prefix("export ") {
        pos += rest.len() - r.len();
    }
    let body = line.get(pos..).unwrap_or_default();
    let key_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(body.len());
    let key = body.get(..key_len).unwrap_or_default();
    if key.is_empty() {
        return Err("not a KEY=value line");
    }
    let after = body.get(key_len..).unwrap_or_default();
    let sep = after.len() - after.trim_start_matches([' ', '\t']).len();
    if !after.get(sep..).unwrap_or_default().starts_with('=') {
        return Err("not a KEY=value line");
    }
    let (span, value) = value_at(line, pos + key_len + sep + 1, true)?;
    if value.contains('\n') {
        return Err("the value spans lines");
    }
    Ok(Assignment {
        key: key.to_owned(),
        var: key.to_owned(),
        span,
        value,
        yaml: false,
    })
}

fn parse_properties(line: &str) -> Result<Assignment, &'static str> {
    if is_comment(line, &['#', '!']) {
        return Err("it is in a comment");
    }
    let body = line.trim_end_matches(['\n', '\r']);
    if body.ends_with('\\') {
        return Err("the value continues on the next line");
    }
    let i = indent(body);
    let rest = body.get(i..).unwrap_or_default();
    let mut key_end = rest.len();
    let mut escaped = false;
    for (n, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if c == '=' || c == ':' || c == ' ' || c == '\t' {
            key_end = n;
            break;
        }
    }
    let key = rest.get(..key_end).unwrap_or_default();
    if key.is_empty() || key.contains('\\') {
        return Err("not a key=value line");
    }
    let mut vpos = i + key_end;
    let after = body.get(vpos..).unwrap_or_default();
    let trimmed = after.trim_start_matches([' ', '\t']);
    vpos += after.len() - trimmed.len();
    if trimmed.starts_with(['=', ':']) {
        vpos += 1;
    }
    let (span, value) = value_at(line, vpos, false)?;
    // Properties have no quoting: the quotes are part of the value.
    let (span, value) = if value.len() + 2 == span.1 - span.0 {
        (
            span,
            line.get(span.0..span.1).unwrap_or_default().to_owned(),
        )
    } else {
        (span, value)
    };
    Ok(Assignment {
        key: key.to_owned(),
        var: env_var(key),
        span,
        value,
        yaml: false,
    })
}

/// The `[section]` above line `idx` of an INI file.
fn section_of<'a>(lines: &[&'a str], idx: usize) -> Option<&'a str> {
    lines.get(..idx)?.iter().rev().find_map(|l| {
        let t = l.trim();
        t.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .map(str::trim)
    })
}

fn parse_ini(line: &str, section: Option<&str>) -> Result<Assignment, &'static str> {
    if is_comment(line, &['#', ';']) {
        return Err("it is in a comment");
    }
    let body = line.trim_end_matches(['\n', '\r']);
    let sep = body.find(['=', ':']).ok_or("not a key = value line")?;
    let key = body.get(..sep).unwrap_or_default().trim();
    if key.is_empty() || key.starts_with('[') {
        return Err("not a key = value line");
    }
    let (span, value) = value_at(line, sep + 1, false)?;
    let full = match section {
        Some(s) if !s.is_empty() => format!("{s}.{key}"),
        _ => key.to_owned(),
    };
    Ok(Assignment {
        var: env_var(&full),
        key: full,
        span,
        value,
        yaml: false,
    })
}

/// A plain or quoted YAML key at the start of `s`: (key, length including quotes).
fn yaml_key(s: &str) -> Option<(String, usize)> {
    if let Some(q @ ('"' | '\'')) = s.chars().next() {
        let end = s.get(1..)?.find(q)? + 1;
        return Some((s.get(1..end)?.to_owned(), end + 1));
    }
    let end = s.find(": ").or_else(|| {
        s.trim_end_matches(['\n', '\r'])
            .ends_with(':')
            .then(|| s.trim_end_matches(['\n', '\r']).len() - 1)
    })?;
    let key = s.get(..end)?;
    if key.is_empty() || key.contains(" #") {
        return None;
    }
    Some((key.to_owned(), end))
}

fn parse_yaml(lines: &[&str], idx: usize) -> Result<Assignment, &'static str> {
    let line = lines.get(idx).copied().unwrap_or_default();
    if is_comment(line, &['#']) {
        return Err("it is in a comment");
    }
    let i = indent(line);
    let rest = line.get(i..).unwrap_or_default();
    if rest.starts_with("- ") {
        return Err("it is a list item");
    }
    let (key, klen) = yaml_key(rest).ok_or("not a `key: value` line")?;
    let after = rest.get(klen..).unwrap_or_default();
    if !after.starts_with(':') {
        return Err("not a `key: value` line");
    }
    let vpos = i + klen + 1;
    let v = line.get(vpos..).unwrap_or_default().trim_start();
    if v.starts_with('&') || v.starts_with('*') {
        return Err("the value is a YAML anchor or alias");
    }
    if v.starts_with(['|', '>', '[', '{', '!']) {
        return Err("the value is a block, flow or tagged YAML value");
    }
    let (span, value) = value_at(line, vpos, true)?;
    // Parent keys: each line above with a smaller indent, up to the document start.
    let mut path = vec![key];
    let mut want = i;
    for l in lines.get(..idx).unwrap_or_default().iter().rev() {
        let t = l.trim_start();
        if t.starts_with("---") && indent(l) == 0 {
            break;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let li = indent(l);
        if li < want {
            if t.starts_with("- ") {
                return Err("it is inside a list");
            }
            let (k, _) = yaml_key(t).ok_or("its parent is not a mapping key")?;
            path.push(k);
            want = li;
            if li == 0 {
                break;
            }
        }
    }
    path.reverse();
    let key = path.join(".");
    Ok(Assignment {
        var: env_var(&key),
        key,
        span,
        value,
        yaml: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        f: fn(&str) -> Result<Assignment, &'static str>,
        line: &str,
    ) -> (String, String, String) {
        let a = f(line).unwrap();
        let rewritten = format!("{}REF{}", &line[..a.span.0], &line[a.span.1..]);
        (a.key, a.value, rewritten)
    }

    #[test]
    fn env_lines_keep_everything_but_the_value() {
        assert_eq!(
            one(parse_env, "export DB_PASSWORD=\"s3cr3t\" # db\n"),
            (
                "DB_PASSWORD".into(),
                "s3cr3t".into(),
                "export DB_PASSWORD=REF # db\n".into()
            )
        );
        assert_eq!(
            one(parse_env, "API_KEY = abc#def\n"),
            ("API_KEY".into(), "abc#def".into(), "API_KEY = REF\n".into())
        );
        assert!(parse_env("KEY=\"multi\n").is_err());
        assert!(parse_env("# KEY=value\n").is_err());
    }

    #[test]
    fn properties_and_ini_lines() {
        assert_eq!(
            one(parse_properties, "spring.datasource.password = p@ss:word\n"),
            (
                "spring.datasource.password".into(),
                "p@ss:word".into(),
                "spring.datasource.password = REF\n".into()
            )
        );
        assert!(parse_properties("a.b = start \\\n").is_err());
        let a = parse_ini("password = hunter2\n", Some("database")).unwrap();
        assert_eq!(
            (a.key.as_str(), a.var.as_str()),
            ("database.password", "DATABASE_PASSWORD")
        );
    }

    #[test]
    fn yaml_keys_get_their_parents_and_refuse_anchors_and_blocks() {
        let text = "app:\n  db:\n    user: app\n    password: \"x y\" # here\nother: &a v\n";
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let a = parse_yaml(&lines, 3).unwrap();
        assert_eq!(
            (a.key.as_str(), a.value.as_str()),
            ("app.db.password", "x y")
        );
        assert_eq!(&lines[3][a.span.0..a.span.1], "\"x y\"");
        assert!(parse_yaml(&lines, 4).err().unwrap().contains("anchor"));
        let block = ["key: |\n", "  secret\n"];
        assert!(parse_yaml(&block, 0).is_err());
        let list = ["items:\n", "  - password: x\n"];
        assert!(parse_yaml(&list, 1).is_err());
    }

    #[test]
    fn references_are_quoted_for_yaml() {
        assert_eq!(yaml_scalar("${DB}"), "\"${DB}\"");
        assert_eq!(yaml_scalar("plain"), "plain");
        assert!(is_reference("${DB_PASSWORD}") && !is_reference("hunter2"));
    }
}
