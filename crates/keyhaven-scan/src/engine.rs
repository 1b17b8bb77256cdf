//! The matching engine: keyword prefilter → per-rule regex in candidate windows → filters.
//!
//! Invariant: memory per scan is bounded by the chunk size plus the overlap, whatever the
//! input; lines are never materialised, and the only allocations per chunk are the
//! keyword-hit list and the accepted matches.

use std::io::Read;

use memchr::{memchr, memchr_iter, memrchr};

use regex::bytes::Regex;

use crate::rules::{AllowInput, Rule, RuleSet};
use crate::validate::{is_placeholder, shannon_entropy};

/// Bytes read per chunk when streaming.
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Overlap kept between consecutive chunks; at least twice the largest rule window.
pub const OVERLAP: usize = 2 * crate::rules::MAX_SPAN + 8 * 1024;
/// How far line boundaries are searched for (inline ignores, columns of short lines).
const LINE_LIMIT: usize = 4096;
/// How much of the start of a file is sniffed for NUL bytes.
const SNIFF: usize = 8192;

/// Inline markers that suppress a finding on their line.
pub const INLINE_MARKERS: &[&[u8]] = &[
    b"keyhaven:allow",
    b"gitleaks:allow",
    b"pragma: allowlist secret",
    b"kingfisher:ignore",
    b"trufflehog:ignore",
];
const NEXTLINE_MARKER: &[u8] = b"pragma: allowlist nextline secret";

/// Options of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Honour inline ignore markers.
    pub inline_ignore: bool,
    /// Scan files that look binary (NUL bytes in their first 8 KiB).
    pub include_binary: bool,
    /// Chunk size for streaming (tests use smaller chunks).
    pub chunk: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            inline_ignore: true,
            include_binary: false,
            chunk: CHUNK,
        }
    }
}

/// The compiled engine.
#[derive(Debug)]
pub struct Engine {
    /// The rules.
    pub rules: RuleSet,
    /// Options.
    pub options: EngineOptions,
}

/// A match in a scanned input. The secret is kept in memory only for hashing and for
/// explicit display with `--show-secrets`.
#[derive(Clone)]
pub struct Match {
    /// Index into [`RuleSet::rules`].
    pub rule: usize,
    /// Absolute byte offset of the secret.
    pub offset: u64,
    /// 1-based line.
    pub line: u64,
    /// 1-based column (bytes).
    pub column: u64,
    /// The secret bytes.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Match")
            .field("rule", &self.rule)
            .field("line", &self.line)
            .field("column", &self.column)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A hit relative to one buffer.
#[derive(Debug, Clone, Copy)]
struct Hit {
    rule: usize,
    start: usize,
    end: usize,
}

/// Reusable per-thread buffers.
///
/// A `Scratch` also holds this thread's own copies of the rule regexes, made on first use.
/// A `regex::bytes::Regex` keeps its search caches in a pool that fast-paths only the
/// thread that used it first; every other thread takes a cache from the pool's locked
/// stacks on each search. A clone per thread has its own pool, owned by that thread, so
/// the tens of thousands of short window searches of a scan never take a lock.
#[derive(Debug, Default)]
pub struct Scratch {
    kw: Vec<(usize, usize)>,
    hits: Vec<Hit>,
    regexes: ThreadRegexes,
    /// The streaming buffer.
    pub buf: Vec<u8>,
}

impl Scratch {
    /// Scratch for a long-lived worker thread: it keeps its own copies of the regexes
    /// (see above). `Scratch::default()` uses the rule set's shared ones, which is cheaper
    /// for a one-off scan.
    pub fn per_thread() -> Scratch {
        Scratch {
            regexes: ThreadRegexes {
                own: true,
                slots: Vec::new(),
            },
            ..Scratch::default()
        }
    }
}

/// Per rule: this thread's copies of the confirming and pairing regexes.
#[derive(Debug, Default)]
struct ThreadRegexes {
    own: bool,
    slots: Vec<Option<(Option<Regex>, Option<Regex>)>>,
}

impl ThreadRegexes {
    fn get<'a>(&'a mut self, idx: usize, rule: &'a Rule) -> (Option<&'a Regex>, Option<&'a Regex>) {
        if !self.own {
            return (rule.regex.as_ref(), rule.requires.as_ref());
        }
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, || None);
        }
        match self.slots.get_mut(idx) {
            Some(slot) => {
                let (re, req) =
                    slot.get_or_insert_with(|| (rule.regex.clone(), rule.requires.clone()));
                (re.as_ref(), req.as_ref())
            }
            None => (rule.regex.as_ref(), rule.requires.as_ref()),
        }
    }
}

/// Outcome of scanning one input.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Matches.
    pub matches: Vec<Match>,
    /// Bytes read.
    pub bytes: u64,
    /// Skipped as binary.
    pub binary: bool,
}

fn sub(b: &[u8], s: usize, e: usize) -> &[u8] {
    b.get(s..e.min(b.len())).unwrap_or_default()
}

/// Start and end (exclusive) of the line around `pos`, each searched at most
/// [`LINE_LIMIT`] bytes away.
pub fn line_bounds(buf: &[u8], pos: usize) -> (usize, usize) {
    let lo = pos.saturating_sub(LINE_LIMIT);
    let start = memrchr(b'\n', sub(buf, lo, pos)).map_or(lo, |p| lo + p + 1);
    let hi = pos.saturating_add(LINE_LIMIT).min(buf.len());
    let end = memchr(b'\n', sub(buf, pos, hi)).map_or(hi, |p| pos + p);
    (start, end)
}

impl Engine {
    /// An engine over `rules`.
    pub fn new(rules: RuleSet, options: EngineOptions) -> Engine {
        Engine { rules, options }
    }

    fn window(&self, rule: &Rule, buf: &[u8], pos: usize) -> (usize, usize) {
        let span = rule.span;
        let lo = pos.saturating_sub(span);
        let hi = pos.saturating_add(span).min(buf.len());
        let mut start = pos;
        let mut at_limit = false;
        for _ in 0..=rule.spec.context_lines {
            match memrchr(b'\n', sub(buf, lo, start)) {
                Some(p) => start = lo + p,
                None => {
                    start = lo;
                    at_limit = true;
                    break;
                }
            }
        }
        if !at_limit {
            start += 1;
        }
        let end = if rule.spec.max_span.is_some() {
            hi
        } else {
            let mut end = pos;
            let mut found_all = true;
            for _ in 0..=rule.spec.context_lines {
                match memchr(b'\n', sub(buf, end, hi)) {
                    Some(p) => end = end + p + 1,
                    None => {
                        found_all = false;
                        break;
                    }
                }
            }
            if found_all { end } else { hi }
        };
        (start, end)
    }

    /// Scan one buffer; keep only hits whose secret starts before `report_below`.
    fn scan_buf(
        &self,
        buf: &[u8],
        path: &str,
        commit: Option<&str>,
        report_below: usize,
        scratch: &mut Scratch,
    ) {
        let set = &self.rules;
        scratch.kw.clear();
        scratch.hits.clear();
        if let Some(ac) = &set.ac {
            for m in ac.find_overlapping_iter(buf) {
                let Some(rules) = set.kw.get(m.pattern().as_usize()) else {
                    continue;
                };
                for k in rules {
                    if k.exact
                        .as_deref()
                        .is_none_or(|exact| buf.get(m.start()..m.end()) == Some(exact))
                    {
                        scratch.kw.push((k.rule, m.start()));
                    }
                }
            }
        }
        for &r in &set.always {
            scratch.kw.push((r, usize::MAX));
        }
        if scratch.kw.is_empty() {
            return;
        }
        scratch.kw.sort_unstable();
        scratch.kw.dedup();
        let kw = std::mem::take(&mut scratch.kw);
        let mut i = 0;
        while let Some(&(rule_idx, _)) = kw.get(i) {
            let mut j = i;
            while kw.get(j).is_some_and(|(r, _)| *r == rule_idx) {
                j += 1;
            }
            if let Some(rule) = set.rules.get(rule_idx) {
                let path_ok = rule
                    .path
                    .as_ref()
                    .is_none_or(|p| p.is_match(path.as_bytes()));
                if path_ok {
                    let mut cur: Option<(usize, usize)> = None;
                    for &(_, pos) in kw.get(i..j).unwrap_or_default() {
                        let (ws, we) = if pos == usize::MAX {
                            (0, buf.len())
                        } else {
                            self.window(rule, buf, pos)
                        };
                        cur = match cur {
                            Some((s, e)) if ws <= e => Some((s, e.max(we))),
                            Some(w) => {
                                self.run_window(
                                    rule_idx,
                                    rule,
                                    buf,
                                    w,
                                    path,
                                    commit,
                                    report_below,
                                    scratch,
                                );
                                Some((ws, we))
                            }
                            None => Some((ws, we)),
                        };
                    }
                    if let Some(w) = cur {
                        self.run_window(
                            rule_idx,
                            rule,
                            buf,
                            w,
                            path,
                            commit,
                            report_below,
                            scratch,
                        );
                    }
                }
            }
            i = j;
        }
        scratch.kw = kw;
        // Keep one finding per secret span: the most severe, then the earliest rule.
        scratch.hits.sort_unstable_by(|a, b| {
            let sa = set.rules.get(a.rule).map(|r| r.spec.severity);
            let sb = set.rules.get(b.rule).map(|r| r.spec.severity);
            a.start
                .cmp(&b.start)
                .then(sb.cmp(&sa))
                .then(a.rule.cmp(&b.rule))
        });
        let mut kept: Vec<Hit> = Vec::with_capacity(scratch.hits.len());
        for h in scratch.hits.drain(..) {
            match kept.last_mut() {
                Some(last) if h.start < last.end => {
                    let sl = set.rules.get(last.rule).map(|r| r.spec.severity);
                    let sh = set.rules.get(h.rule).map(|r| r.spec.severity);
                    if sh > sl {
                        *last = h;
                    }
                }
                _ => kept.push(h),
            }
        }
        scratch.hits = kept;
    }

    #[allow(clippy::too_many_arguments, reason = "internal helper of scan_buf")]
    fn run_window(
        &self,
        rule_idx: usize,
        rule: &Rule,
        buf: &[u8],
        (ws, we): (usize, usize),
        path: &str,
        commit: Option<&str>,
        report_below: usize,
        scratch: &mut Scratch,
    ) {
        let Scratch { regexes, hits, .. } = scratch;
        let (Some(re), requires) = regexes.get(rule_idx, rule) else {
            return;
        };
        let window = sub(buf, ws, we);
        let mut required: Option<bool> = None;
        for caps in re.captures_iter(window) {
            let m = caps
                .get(rule.secret_group)
                .or_else(|| (1..caps.len()).find_map(|g| caps.get(g)))
                .or_else(|| caps.get(0));
            let (Some(m), Some(whole)) = (m, caps.get(0)) else {
                continue;
            };
            let start = ws + m.start();
            if start >= report_below {
                continue;
            }
            let secret = m.as_bytes();
            if !self.accept(rule, secret, whole.as_bytes(), buf, start, path, commit) {
                continue;
            }
            if let Some(req) = requires {
                let ok = *required.get_or_insert_with(|| {
                    // The pairing regex must match somewhere other than the secret itself.
                    req.find_iter(window).any(|r| {
                        (r.end() <= m.start() || r.start() >= m.end())
                            && !is_placeholder(r.as_bytes())
                    })
                });
                if !ok {
                    continue;
                }
            }
            hits.push(Hit {
                rule: rule_idx,
                start,
                end: ws + m.end(),
            });
        }
    }

    #[allow(clippy::too_many_arguments, reason = "internal helper of run_window")]
    fn accept(
        &self,
        rule: &Rule,
        secret: &[u8],
        matched: &[u8],
        buf: &[u8],
        pos: usize,
        path: &str,
        commit: Option<&str>,
    ) -> bool {
        if is_placeholder(secret) || rule.is_stopword(secret) {
            return false;
        }
        if rule
            .spec
            .entropy
            .is_some_and(|min| shannon_entropy(secret) < min)
        {
            return false;
        }
        if !rule.spec.validators.iter().all(|v| v.check(secret)) {
            return false;
        }
        let (ls, le) = line_bounds(buf, pos);
        let line = sub(buf, ls, le);
        if self.options.inline_ignore {
            if INLINE_MARKERS
                .iter()
                .any(|mk| memchr::memmem::find(line, mk).is_some())
            {
                return false;
            }
            if ls > 0 {
                let (ps, pe) = line_bounds(buf, ls - 1);
                if memchr::memmem::find(sub(buf, ps, pe), NEXTLINE_MARKER).is_some() {
                    return false;
                }
            }
        }
        let input = AllowInput {
            path,
            secret,
            matched,
            line,
            commit,
        };
        if rule.allowlists.iter().any(|a| a.allows(&input)) {
            return false;
        }
        !self.rules.allowlists.iter().any(|a| {
            (a.target_rules.is_empty() || a.target_rules.contains(&rule.spec.id))
                && a.allows(&input)
        })
    }

    /// Path-only rules that fire for `path`.
    pub fn path_rules(&self, path: &str) -> Vec<usize> {
        self.rules
            .path_only
            .iter()
            .copied()
            .filter(|&i| {
                self.rules
                    .rules
                    .get(i)
                    .and_then(|r| r.path.as_ref())
                    .is_some_and(|p| p.is_match(path.as_bytes()))
            })
            .collect()
    }

    /// Scan an in-memory buffer as one input (no binary sniffing).
    pub fn scan_bytes(&self, data: &[u8], path: &str, commit: Option<&str>) -> Vec<Match> {
        self.scan_bytes_with(data, path, commit, &mut Scratch::default())
    }

    /// [`Engine::scan_bytes`] with a worker's scratch.
    pub fn scan_bytes_with(
        &self,
        data: &[u8],
        path: &str,
        commit: Option<&str>,
        scratch: &mut Scratch,
    ) -> Vec<Match> {
        let mut out = Vec::new();
        if data.len() <= self.options.chunk {
            self.collect(data, path, commit, data.len(), 0, 0, 0, scratch, &mut out);
            return out;
        }
        let mut reader = data;
        match self.scan_reader(&mut reader, path, commit, true, scratch) {
            Ok(o) => o.matches,
            Err(_) => out,
        }
    }

    #[allow(clippy::too_many_arguments, reason = "internal helper")]
    fn collect(
        &self,
        buf: &[u8],
        path: &str,
        commit: Option<&str>,
        report_below: usize,
        base: u64,
        lines_before: u64,
        line_start_abs: u64,
        scratch: &mut Scratch,
        out: &mut Vec<Match>,
    ) {
        self.scan_buf(buf, path, commit, report_below, scratch);
        let mut counted_to = 0usize;
        let mut line = lines_before;
        let mut last_nl_abs = line_start_abs;
        for h in &scratch.hits {
            let seg = sub(buf, counted_to, h.start);
            line += memchr_iter(b'\n', seg).count() as u64;
            if let Some(p) = memrchr(b'\n', seg) {
                last_nl_abs = base + (counted_to + p + 1) as u64;
            }
            counted_to = h.start;
            let abs = base + h.start as u64;
            out.push(Match {
                rule: h.rule,
                offset: abs,
                line: line + 1,
                column: abs - last_nl_abs + 1,
                secret: sub(buf, h.start, h.end).to_vec(),
            });
        }
    }

    /// Stream `reader` in chunks with overlap. `sniffed` skips the binary check.
    pub fn scan_reader(
        &self,
        reader: &mut dyn Read,
        path: &str,
        commit: Option<&str>,
        sniffed: bool,
        scratch: &mut Scratch,
    ) -> std::io::Result<ScanOutcome> {
        let chunk = self.options.chunk.max(OVERLAP * 2);
        let mut buf = std::mem::take(&mut scratch.buf);
        buf.clear();
        let mut outcome = ScanOutcome::default();
        let mut base = 0u64;
        let mut lines_before = 0u64;
        let mut line_start_abs = 0u64;
        let mut first = true;
        let result = loop {
            let want = chunk.saturating_sub(buf.len());
            let got = match reader.take(want as u64).read_to_end(&mut buf) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            outcome.bytes += got as u64;
            let eof = got < want;
            if first {
                first = false;
                if !sniffed
                    && !self.options.include_binary
                    && memchr(0, sub(&buf, 0, SNIFF)).is_some()
                {
                    outcome.binary = true;
                    break Ok(());
                }
            }
            let report_below = if eof {
                buf.len()
            } else {
                buf.len().saturating_sub(OVERLAP)
            };
            let mut out = Vec::new();
            self.collect(
                &buf,
                path,
                commit,
                report_below,
                base,
                lines_before,
                line_start_abs,
                scratch,
                &mut out,
            );
            outcome.matches.append(&mut out);
            if eof {
                break Ok(());
            }
            let consumed = sub(&buf, 0, report_below);
            lines_before += memchr_iter(b'\n', consumed).count() as u64;
            if let Some(p) = memrchr(b'\n', consumed) {
                line_start_abs = base + (p + 1) as u64;
            }
            base += report_below as u64;
            buf.drain(..report_below);
        };
        buf.clear();
        if buf.capacity() > chunk * 2 {
            buf.shrink_to(chunk);
        }
        scratch.buf = buf;
        result.map(|()| outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleSet, parse_rules};

    fn engine(toml: &str, chunk: usize) -> Engine {
        let rules = RuleSet::compile(parse_rules("t", toml).unwrap(), vec![], vec![]).unwrap();
        Engine::new(
            rules,
            EngineOptions {
                chunk,
                ..EngineOptions::default()
            },
        )
    }

    const RULE: &str =
        "[[rules]]\nid='t'\nkeywords=['tok_']\nregex='''\\b(tok_[A-Za-z0-9]{20})\\b'''\n";

    #[test]
    fn lines_and_columns() {
        let e = engine(RULE, CHUNK);
        let data = b"a\nbb\n  x = tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb\n";
        let m = e.scan_bytes(data, "f", None);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].line, m[0].column), (3, 7));
    }

    #[test]
    fn chunk_boundaries_find_each_match_once() {
        let e = engine(RULE, 1);
        let chunk = OVERLAP * 2;
        let mut data = Vec::new();
        let mut expected = Vec::new();
        let mut line = 1u64;
        while data.len() < chunk * 5 {
            if data.len() % 997 < 40 {
                expected.push(line);
                data.extend_from_slice(b"k=tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb\n");
            } else {
                data.extend_from_slice(b"filler text of some kind here\n");
            }
            line += 1;
        }
        let mut s = Scratch::default();
        let out = e
            .scan_reader(&mut &data[..], "f", None, false, &mut s)
            .unwrap();
        let lines: Vec<u64> = out.matches.iter().map(|m| m.line).collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn inline_ignores() {
        let e = engine(RULE, CHUNK);
        assert!(
            e.scan_bytes(b"x = tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb # keyhaven:allow", "f", None)
                .is_empty()
        );
        assert!(
            e.scan_bytes(
                b"# pragma: allowlist nextline secret\nx = tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb",
                "f",
                None
            )
            .is_empty()
        );
        let strict = Engine::new(
            engine(RULE, CHUNK).rules,
            EngineOptions {
                inline_ignore: false,
                ..EngineOptions::default()
            },
        );
        assert_eq!(
            strict
                .scan_bytes(b"x = tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb # gitleaks:allow", "f", None)
                .len(),
            1
        );
    }

    #[test]
    fn case_sensitive_keywords_share_the_automaton() {
        // One rule with a case-sensitive keyword, one with the same keyword in any case.
        let e = engine(
            "[[rules]]\nid='cs'\nkeywords=['TOK_']\ncase_sensitive_keywords=true\n\
             regex='(?i)\\b(tok_[A-Za-z0-9]{20})\\b'\n\
             [[rules]]\nid='ci'\nseverity='low'\nkeywords=['tok_']\n\
             regex='\\b(tok_[A-Za-z0-9]{20})\\b'\n",
            CHUNK,
        );
        let fired = |text: &[u8]| -> Vec<String> {
            e.scan_bytes(text, "f", None)
                .iter()
                .map(|m| e.rules.rules[m.rule].spec.id.clone())
                .collect()
        };
        assert_eq!(fired(b"x = TOK_Zk3Xq9Lm2Vt8Rw5Yn1Pb"), vec!["cs"]);
        assert_eq!(fired(b"x = tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb"), vec!["ci"]);
    }

    #[test]
    fn match_debug_is_redacted() {
        let e = engine(RULE, CHUNK);
        let m = e.scan_bytes(b"tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb", "f", None);
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("Zk3Xq9"));
    }
}
