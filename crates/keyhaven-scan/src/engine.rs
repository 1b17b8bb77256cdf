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
    line_bounds_in(buf, pos, (0, buf.len()))
}

/// [`line_bounds`] inside the segment `seg` (start, end) of `buf`: the line never
/// reaches past the segment's ends.
fn line_bounds_in(buf: &[u8], pos: usize, (seg_start, seg_end): (usize, usize)) -> (usize, usize) {
    let lo = pos.saturating_sub(LINE_LIMIT).max(seg_start);
    let start = memrchr(b'\n', sub(buf, lo, pos)).map_or(lo, |p| lo + p + 1);
    let hi = pos.saturating_add(LINE_LIMIT).min(seg_end).min(buf.len());
    let end = memchr(b'\n', sub(buf, pos, hi)).map_or(hi, |p| pos + p);
    (start, end)
}

/// The index of the segment holding `[start, end)`, if one holds all of it. `segs` are
/// ascending and disjoint.
fn segment_of(segs: &[(usize, usize)], start: usize, end: usize) -> Option<usize> {
    let i = segs.partition_point(|&(_, e)| e <= start);
    segs.get(i)
        .filter(|&&(s, e)| s <= start && end <= e)
        .map(|_| i)
}

impl Engine {
    /// An engine over `rules`.
    pub fn new(rules: RuleSet, options: EngineOptions) -> Engine {
        Engine { rules, options }
    }

    /// The window of `rule` around a keyword hit at `pos`, inside the segment `seg`.
    fn window(
        &self,
        rule: &Rule,
        buf: &[u8],
        pos: usize,
        (seg_start, seg_end): (usize, usize),
    ) -> (usize, usize) {
        let span = rule.span;
        let lo = pos.saturating_sub(span).max(seg_start);
        let hi = pos.saturating_add(span).min(seg_end).min(buf.len());
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

    /// Scan one buffer made of the segments `segs` (ascending, disjoint (start, end)
    /// ranges; one segment over the whole buffer for an ordinary scan), each judged as if
    /// it were scanned alone; keep only hits whose secret starts before `report_below`.
    fn scan_buf(
        &self,
        buf: &[u8],
        segs: &[(usize, usize)],
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
                // A keyword across two segments (or on the bytes between them) is no hit.
                if segs.len() > 1 && segment_of(segs, m.start(), m.end()).is_none() {
                    continue;
                }
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
                    // The window being grown, and its segment: windows of two segments are
                    // never merged.
                    let mut cur: Option<((usize, usize), (usize, usize))> = None;
                    for &(_, pos) in kw.get(i..j).unwrap_or_default() {
                        if pos == usize::MAX {
                            // A rule without keywords: the only entry of its rule, run over
                            // each segment whole.
                            for &seg in segs {
                                self.run_window(
                                    rule_idx,
                                    rule,
                                    buf,
                                    seg,
                                    seg,
                                    path,
                                    commit,
                                    report_below,
                                    scratch,
                                );
                            }
                            continue;
                        }
                        let seg = segment_of(segs, pos, pos)
                            .and_then(|k| segs.get(k).copied())
                            .unwrap_or((0, buf.len()));
                        let (ws, we) = self.window(rule, buf, pos, seg);
                        cur = match cur {
                            Some(((s, e), cs)) if cs == seg && ws <= e => {
                                Some(((s, e.max(we)), cs))
                            }
                            Some((w, cs)) => {
                                self.run_window(
                                    rule_idx,
                                    rule,
                                    buf,
                                    w,
                                    cs,
                                    path,
                                    commit,
                                    report_below,
                                    scratch,
                                );
                                Some(((ws, we), seg))
                            }
                            None => Some(((ws, we), seg)),
                        };
                    }
                    if let Some((w, cs)) = cur {
                        self.run_window(
                            rule_idx,
                            rule,
                            buf,
                            w,
                            cs,
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
        seg: (usize, usize),
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
            if !self.accept(
                rule,
                secret,
                whole.as_bytes(),
                buf,
                start,
                seg,
                path,
                commit,
            ) {
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
        seg: (usize, usize),
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
        let (ls, le) = line_bounds_in(buf, pos, seg);
        let line = sub(buf, ls, le);
        if self.options.inline_ignore {
            if INLINE_MARKERS
                .iter()
                .any(|mk| memchr::memmem::find(line, mk).is_some())
            {
                return false;
            }
            if ls > seg.0 {
                let (ps, pe) = line_bounds_in(buf, ls - 1, seg);
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

    /// Scan many texts in one pass, each judged as [`Engine::scan_bytes`] judges it alone.
    ///
    /// `buf` holds the texts back to back and `segments` their (start, end) byte ranges,
    /// ascending and disjoint; the bytes between them are never scanned. No keyword hit,
    /// rule window, line or inline ignore marker reaches across a segment's ends, so no
    /// match can span two texts and rules anchored to a line or to the start of the text
    /// see what they would see alone. This is for many short texts (the string fields of
    /// one object) whose per-scan cost would dominate; `buf` is scanned in memory as one
    /// chunk, whatever its size.
    ///
    /// Returns, in segment order, (segment index, match); offsets, lines and columns are
    /// relative to the segment. Segments out of order or out of `buf` are each scanned
    /// apart.
    pub fn scan_segments_with(
        &self,
        buf: &[u8],
        segments: &[(usize, usize)],
        path: &str,
        commit: Option<&str>,
        scratch: &mut Scratch,
    ) -> Vec<(usize, Match)> {
        let ordered = segments.iter().all(|&(s, e)| s <= e && e <= buf.len())
            && segments.windows(2).all(|w| match w {
                [(_, e), (s, _)] => e <= s,
                _ => true,
            });
        if !ordered {
            let mut out = Vec::new();
            for (i, &(s, e)) in segments.iter().enumerate() {
                let text = buf.get(s..e).unwrap_or_default();
                for m in self.scan_bytes_with(text, path, commit, scratch) {
                    out.push((i, m));
                }
            }
            return out;
        }
        self.scan_buf(buf, segments, path, commit, buf.len(), scratch);
        let mut out = Vec::with_capacity(scratch.hits.len());
        for h in &scratch.hits {
            let Some(i) = segment_of(segments, h.start, h.end) else {
                continue;
            };
            let seg_start = segments.get(i).map_or(0, |s| s.0);
            let before = sub(buf, seg_start, h.start);
            let line = memchr_iter(b'\n', before).count() as u64;
            let line_start = memrchr(b'\n', before).map_or(0, |p| p + 1);
            out.push((
                i,
                Match {
                    rule: h.rule,
                    offset: (h.start - seg_start) as u64,
                    line: line + 1,
                    column: (h.start - seg_start - line_start + 1) as u64,
                    secret: sub(buf, h.start, h.end).to_vec(),
                },
            ));
        }
        out
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
        self.scan_buf(buf, &[(0, buf.len())], path, commit, report_below, scratch);
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

    /// (segment, rule id, secret, line, column) of each match.
    fn summary(e: &Engine, ms: &[(usize, Match)]) -> Vec<(usize, String, Vec<u8>, u64, u64)> {
        ms.iter()
            .map(|(i, m)| {
                (
                    *i,
                    e.rules.rules[m.rule].spec.id.clone(),
                    m.secret.clone(),
                    m.line,
                    m.column,
                )
            })
            .collect()
    }

    /// `texts` with `AK@` made an AWS key id prefix (assembled
    /// here so that scanning this repository does not flag this file).
    fn planted(texts: &[&str]) -> Vec<Vec<u8>> {
        let ak = format!("AK{}", "IA");
        texts
            .iter()
            .map(|t| t.replace("AK@", &ak).into_bytes())
            .collect()
    }

    fn joined(texts: &[Vec<u8>], between: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut buf = Vec::new();
        let mut segs = Vec::new();
        for t in texts {
            let s = buf.len();
            buf.extend_from_slice(t);
            segs.push((s, buf.len()));
            buf.extend_from_slice(between);
        }
        (buf, segs)
    }

    #[test]
    fn segments_are_judged_as_if_scanned_alone() {
        let e = Engine::new(RuleSet::builtin().unwrap(), EngineOptions::default());
        let texts = planted(&[
            "registry.example.org/shop/component-1:1.1.0",
            "x = AK@QYLPMN5HHHFPZAM2 y",
            "db_password = ",
            "Tr0ub4dor&3xk!Q7",
            "users:\n- name: ci\n  user:\n    token: Zk3Xq9Lm2Vt8Rw5Yn1Pb7Hc4Jd6Fg0Sa\n",
            "# pragma: allowlist nextline secret",
            "AK@QYLPMN5HHHFPZAM2",
            "db_password = Tr0ub4dor&3xk!Q7 # keyhaven:allow",
            "",
            "password: Tr0ub4dor&3xk!Q7",
            "users:\n- name: ci\n  user:",
            "    token: Zk3Xq9Lm2Vt8Rw5Yn1Pb7Hc4Jd6Fg0Sa",
        ]);
        let mut alone = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            for m in e.scan_bytes(t, "f", None) {
                alone.push((i, m));
            }
        }
        let alone = summary(&e, &alone);
        let rules: Vec<&str> = alone.iter().map(|m| m.1.as_str()).collect();
        assert_eq!(
            rules,
            [
                "aws-access-key-id",
                "kubeconfig-token",
                "aws-access-key-id",
                "generic-password"
            ],
            "{alone:?}"
        );
        for between in [&b""[..], b"\n", b"=", b" "] {
            let (buf, segs) = joined(&texts, between);
            let mut scratch = Scratch::per_thread();
            let together = e.scan_segments_with(&buf, &segs, "f", None, &mut scratch);
            assert_eq!(summary(&e, &together), alone, "between {between:?}");
            // Scratch reuse gives the same answer.
            let again = e.scan_segments_with(&buf, &segs, "f", None, &mut scratch);
            assert_eq!(summary(&e, &again), alone);
        }
    }

    #[test]
    fn no_match_spans_two_segments() {
        let e = Engine::new(RuleSet::builtin().unwrap(), EngineOptions::default());
        // Each pair, written as one text, is a finding; as two texts it is none.
        let pairs = planted(&[
            "db_password = ",
            "Tr0ub4dor&3xk!Q7",
            "AK@QYLPMN",
            "5HHHFPZAM2",
            "xx AK",
            "IAQYLPMN5HHHFPZAM2",
            "users:\n- name: ci\n  user:\n",
            "    token: Zk3Xq9Lm2Vt8Rw5Yn1Pb7Hc4Jd6Fg0Sa",
        ]);
        for pair in pairs.chunks(2) {
            let whole = pair.concat();
            assert!(!e.scan_bytes(&whole, "f", None).is_empty(), "{whole:?}");
            for between in [&b""[..], b"\n"] {
                let (buf, segs) = joined(pair, between);
                let found = e.scan_segments_with(&buf, &segs, "f", None, &mut Scratch::default());
                assert!(found.is_empty(), "{:?}", summary(&e, &found));
            }
        }
    }

    #[test]
    fn rules_without_keywords_run_per_segment() {
        let e = engine(
            "[[rules]]\nid='a'\nregex='''^(tok_[A-Za-z0-9]{20})$'''\n",
            CHUNK,
        );
        let texts = planted(&["tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb", "x", "tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb"]);
        let (buf, segs) = joined(&texts, b" ");
        let found = e.scan_segments_with(&buf, &segs, "f", None, &mut Scratch::default());
        let at: Vec<(usize, u64)> = found.iter().map(|(i, m)| (*i, m.offset)).collect();
        assert_eq!(at, vec![(0, 0), (2, 0)]);
    }

    #[test]
    fn unordered_segments_are_scanned_apart() {
        let e = engine(RULE, CHUNK);
        let buf = b"tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb";
        let found = e.scan_segments_with(
            buf,
            &[(25, 49), (0, 24), (3, 99)],
            "f",
            None,
            &mut Scratch::default(),
        );
        let at: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![0, 1]);
    }

    #[test]
    fn match_debug_is_redacted() {
        let e = engine(RULE, CHUNK);
        let m = e.scan_bytes(b"tok_Zk3Xq9Lm2Vt8Rw5Yn1Pb", "f", None);
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("Zk3Xq9"));
    }
}
