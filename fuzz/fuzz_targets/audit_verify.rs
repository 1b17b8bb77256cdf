//! Audit files are read back long after they were written, by whoever holds them: the
//! verifier must never panic, whatever the bytes, and must name a line the file has. An
//! edit to a valid chain (flipped, set, inserted or deleted bytes, deleted, copied,
//! swapped or moved lines, a cut) is always caught unless it gives back the same bytes:
//! the verifier fails, naming the first changed line or the one before it (whose hash the
//! changed link no longer matches); or the file verifies with a different chain head
//! (the last line changed, or lines were cut off the end); or, with the same head, the
//! file was cut at its start back to an open record, and the report shows a segment that
//! continues an earlier one (`continues_from`, a later `first_seq`).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use keyhaven_server::audit_file::{VerifyError, VerifyReport};
use keyhaven_server::internal::{audit_chain, audit_verify_bytes};
use libfuzzer_sys::fuzz_target;

/// Edits applied to the valid log, at most.
const MAX_EDITS: usize = 16;

/// A valid log that reaches every state of the verifier: records with nested and escaped
/// JSON, a close followed by an open in the same file (a reopen), and an open record
/// without a close before it (an unclean restart).
fn base() -> &'static (Vec<u8>, VerifyReport) {
    static BASE: OnceLock<(Vec<u8>, VerifyReport)> = OnceLock::new();
    BASE.get_or_init(|| {
        let records: [&[u8]; 10] = [
            br#"{"time":"2026-12-01T10:00:00Z","type":"audit_file","event":"open","reason":"start","device":"file"}"#,
            br#"{"time":"2026-12-01T10:00:01Z","type":"request","auth":{"accessor":"hmac-sha256:9f0c","policies":["default","ops"]},"request":{"id":"1","operation":"read","path":"secret/data/app"}}"#,
            br#"{"time":"2026-12-01T10:00:01Z","type":"response","request":{"id":"1","path":"secret/data/app"},"response":{"data":{"password":"hmac-sha256:41d2","note":"caf\u00e9 \"quoted\" \\ \n"}}}"#,
            br#"{"time":"2026-12-01T10:00:02Z","type":"request","request":{"id":"2","operation":"update","path":"transit/encrypt/k","data":{"plaintext":"hmac-sha256:77aa"}},"error":"permission denied"}"#,
            br#"{"time":"2026-12-01T10:00:03Z","type":"audit_file","event":"close","reason":"reopen","device":"file"}"#,
            br#"{"time":"2026-12-01T10:00:03Z","type":"audit_file","event":"open","reason":"reopen","device":"file"}"#,
            br#"{"time":"2026-12-01T10:00:04Z","type":"request","request":{"id":"3","operation":"list","path":"sys/audit"}}"#,
            br#"{"time":"2026-12-01T10:05:00Z","type":"audit_file","event":"open","reason":"start","device":"file","repaired_tail_bytes":23}"#,
            br#"{"type":"response","request":{"id":"4"},"response":{}}"#,
            br#"{"time":"2026-12-01T10:06:00Z","type":"audit_file","event":"close","reason":"shutdown","device":"file"}"#,
        ];
        let log = audit_chain(&records);
        let report = audit_verify_bytes(Path::new("audit.log"), &log).unwrap();
        assert_eq!(report.lines, 10);
        assert!(report.closed);
        assert_eq!(report.unclean_restarts, vec![8]);
        (log, report)
    })
}

/// A line's hash as the chain writes it.
fn hash(line: &[u8]) -> String {
    let digest = keyhaven_crypto::sha256(line);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Lines as the verifier counts them: a last line without its newline counts too.
fn line_count(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    let partial = usize::from(!bytes.is_empty() && bytes.last() != Some(&b'\n'));
    u64::try_from(newlines + partial).unwrap()
}

/// What holds for any input.
fn check_any(bytes: &[u8]) -> Result<VerifyReport, VerifyError> {
    let result = audit_verify_bytes(Path::new("audit.log"), bytes);
    match &result {
        Ok(report) => {
            // Only whole lines verify, and the report describes them.
            assert_eq!(bytes.last(), Some(&b'\n'));
            assert_eq!(report.lines, line_count(bytes));
            let body = bytes.strip_suffix(b"\n").unwrap();
            let last = body.rsplit(|&b| b == b'\n').next().unwrap();
            assert_eq!(report.last_hash, hash(last));
            assert!(report.first_seq <= report.last_seq);
            assert!(report.unclean_restarts.is_sorted());
            assert!(
                report
                    .unclean_restarts
                    .iter()
                    .all(|&n| 2 <= n && n <= report.lines)
            );
        }
        Err(e @ VerifyError::Broken { line, .. }) => {
            assert!(*line >= 1 && *line <= line_count(bytes).max(1), "{e}");
            assert!(!e.to_string().is_empty());
        }
        Err(e) => panic!("reading bytes in memory failed: {e}"),
    }
    result
}

/// Split into lines, each with its newline (the last may have none).
fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Apply one edit, chosen by `op`, with `a`, `b` and `c` as its arguments.
fn edit(log: &mut Vec<u8>, op: u8, a: u8, b: u8, c: u8) {
    let pos = usize::from(u16::from_le_bytes([a, b]));
    match op % 9 {
        0 if !log.is_empty() => {
            let at = pos % log.len();
            log[at] ^= c;
        }
        1 if !log.is_empty() => {
            let at = pos % log.len();
            log[at] = c;
        }
        2 => {
            let at = pos % (log.len() + 1);
            log.insert(at, c);
        }
        3 if !log.is_empty() => {
            let at = pos % log.len();
            log.remove(at);
        }
        4 => log.truncate(pos % (log.len() + 1)),
        op @ 5..=8 => {
            let mut lines = split_lines(log);
            if lines.is_empty() {
                return;
            }
            let from = usize::from(a) % lines.len();
            match op {
                // Delete a line.
                5 => {
                    lines.remove(from);
                }
                // Copy a line to another place.
                6 => {
                    let line = lines[from].clone();
                    let to = usize::from(b) % (lines.len() + 1);
                    lines.insert(to, line);
                }
                // Swap two lines.
                7 => {
                    let other = usize::from(b) % lines.len();
                    lines.swap(from, other);
                }
                // Move a line.
                _ => {
                    let line = lines.remove(from);
                    let to = usize::from(b) % (lines.len() + 1);
                    lines.insert(to, line);
                }
            }
            *log = lines.concat();
        }
        _ => {}
    }
}

/// The 1-based line of `original` where `edited` first differs from it.
fn first_changed_line(original: &[u8], edited: &[u8]) -> u64 {
    let at = original
        .iter()
        .zip(edited)
        .position(|(x, y)| x != y)
        .unwrap_or(original.len().min(edited.len()));
    line_count(&original[..at]) + u64::from(at == 0 || original[at - 1] == b'\n')
}

fn check_edits(ops: &[u8]) {
    let (original, report) = base();
    let mut log = original.clone();
    for op in ops.chunks_exact(4).take(MAX_EDITS) {
        edit(&mut log, op[0], op[1], op[2], op[3]);
    }
    let result = check_any(&log);
    if log == *original {
        assert_eq!(result.unwrap(), *report);
        return;
    }
    match result {
        Ok(edited) if edited.last_hash == report.last_hash => {
            // The same chain head: short of a SHA-256 collision every line is the
            // original's, so the edit cut the head of the file back to an open record.
            // Such a file reads as a later segment of the chain, and the report says so.
            let cut = original.len() - log.len();
            assert!(
                original.ends_with(&log),
                "an edit verified with the original chain head"
            );
            assert_eq!(original[cut - 1], b'\n');
            let before = original[..cut - 1].rsplit(|&b| b == b'\n').next().unwrap();
            assert_eq!(edited.continues_from, Some(hash(before)));
            assert!(edited.first_seq > report.first_seq);
        }
        // A different chain head: the head the writer logs no longer matches.
        Ok(_) => {}
        Err(e) => {
            let (line, _) = e.problem().unwrap();
            let first = first_changed_line(original, &log);
            assert!(
                line + 1 >= first,
                "the first change is in line {first}, but the verifier named line {line}: {e}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: odd edits the valid log, even verifies the rest as it is.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        check_edits(rest);
    } else {
        let _ = check_any(rest);
    }
});
