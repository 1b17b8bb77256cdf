//! The verifier behind `keyhaven audit verify`.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};

use super::GENESIS;
use super::chain::{LineHead, line_seq};

/// What a verified file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file.
    pub path: PathBuf,
    /// Lines (records) in the file.
    pub lines: u64,
    /// `seq` of the first record.
    pub first_seq: u64,
    /// `seq` of the last record.
    pub last_seq: u64,
    /// `prev_hash` of the first record when it is not [`GENESIS`]: the hash of the last
    /// record of the previous file of the chain.
    pub continues_from: Option<String>,
    /// Hash of the last line: compare it with the head the server logged.
    pub last_hash: String,
    /// Whether the last record is a close record. If not, records may be missing at the
    /// end (or the file is still being written, or the server stopped uncleanly).
    pub closed: bool,
    /// Lines where the writer reopened the file after an unclean stop (no close record
    /// before): records written just before may have been lost.
    pub unclean_restarts: Vec<u64>,
}

/// What is wrong at a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Not a JSON record of this device.
    Malformed,
    /// The last line is incomplete: the file was cut inside a record.
    Truncated,
    /// The line was changed after it was written.
    Edited,
    /// Records are missing before this line.
    Missing,
    /// A record that does not belong there.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// Two files do not link.
    BrokenLink,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::Malformed => "malformed record",
            ProblemKind::Truncated => "truncated record",
            ProblemKind::Edited => "edited record",
            ProblemKind::Missing => "missing records",
            ProblemKind::Inserted => "inserted record",
            ProblemKind::Reordered => "reordered records",
            ProblemKind::BrokenLink => "broken link between files",
        })
    }
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken.
    #[error("{path}: line {line}: {kind}: {detail}")]
    Broken {
        /// File.
        path: PathBuf,
        /// First bad line (1-based).
        line: u64,
        /// What is wrong.
        kind: ProblemKind,
        /// Explanation.
        detail: String,
    },
}

impl VerifyError {
    /// The line and kind, for a broken chain.
    pub fn problem(&self) -> Option<(u64, ProblemKind)> {
        match self {
            VerifyError::Broken { line, kind, .. } => Some((*line, *kind)),
            VerifyError::Io { .. } => None,
        }
    }
}

fn hash_text(line: &[u8]) -> String {
    format!("sha256:{}", hex::encode(keyhaven_crypto::sha256(line)))
}

/// Read lines with their 1-based number; the bool says whether the line ended with `\n`.
fn lines<R: Read>(
    path: &Path,
    open: &impl Fn() -> std::io::Result<R>,
) -> Result<impl Iterator<Item = std::io::Result<(u64, Vec<u8>, bool)>>, VerifyError> {
    let file = open().map_err(|source| VerifyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut n = 0u64;
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                n += 1;
                let complete = buf.last() == Some(&b'\n');
                if complete {
                    buf.pop();
                }
                Some(Ok((n, buf, complete)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Where `seq` occurs after line `after`, if anywhere (used only to explain a failure).
fn find_seq<R: Read>(
    path: &Path,
    open: &impl Fn() -> std::io::Result<R>,
    seq: u64,
    after: u64,
) -> Option<u64> {
    let iter = lines(path, open).ok()?;
    for item in iter {
        let (n, line, _) = item.ok()?;
        if n > after && line_seq(&line) == Some(seq) {
            return Some(n);
        }
    }
    None
}

/// Verify one file: the first line that breaks the chain, or what the file holds.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_from(path, || File::open(path))
}

/// [`verify`] of what `open` reads, reported as the file `path`. `open` is called again
/// only to explain a gap in `seq`.
pub(crate) fn verify_from<R: Read>(
    path: &Path,
    open: impl Fn() -> std::io::Result<R>,
) -> Result<VerifyReport, VerifyError> {
    let broken = |line: u64, kind: ProblemKind, detail: String| VerifyError::Broken {
        path: path.to_owned(),
        line,
        kind,
        detail,
    };
    let mut report = VerifyReport {
        path: path.to_owned(),
        lines: 0,
        first_seq: 0,
        last_seq: 0,
        continues_from: None,
        last_hash: GENESIS.to_owned(),
        closed: false,
        unclean_restarts: Vec::new(),
    };
    let mut prev: Option<(String, u64, bool)> = None; // hash, seq, was a close record
    for item in lines(path, &open)? {
        let (n, line, complete) = item.map_err(|source| VerifyError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !complete {
            return Err(broken(
                n,
                ProblemKind::Truncated,
                "the last line is incomplete: the file was cut inside this record".to_owned(),
            ));
        }
        let Ok(head) = serde_json::from_slice::<LineHead>(&line) else {
            return Err(broken(
                n,
                ProblemKind::Malformed,
                "not a JSON audit record with prev_hash and seq: the line was edited or does not belong".to_owned(),
            ));
        };
        let hash = hash_text(&line);
        match &prev {
            None => {
                if !head.is_device_event("open") {
                    return Err(broken(
                        n,
                        ProblemKind::Missing,
                        "the file does not start with the writer's open record: lines before this one were removed".to_owned(),
                    ));
                }
                if head.prev_hash != GENESIS {
                    report.continues_from = Some(head.prev_hash.clone());
                }
                report.first_seq = head.seq;
            }
            Some((prev_hash, prev_seq, prev_closed)) => {
                let expected = prev_seq.saturating_add(1);
                if head.seq > expected {
                    return Err(match find_seq(path, &open, expected, n) {
                        Some(at) => broken(
                            n,
                            ProblemKind::Reordered,
                            format!(
                                "this line holds record {} but record {expected} comes later, at line {at}",
                                head.seq
                            ),
                        ),
                        None => broken(
                            n,
                            ProblemKind::Missing,
                            format!(
                                "records {expected}..{} are missing before this line (deleted)",
                                head.seq - 1
                            ),
                        ),
                    });
                }
                if head.seq < expected {
                    return Err(broken(
                        n,
                        ProblemKind::Inserted,
                        format!(
                            "this line holds record {} where record {expected} belongs: it was inserted, copied or moved here",
                            head.seq
                        ),
                    ));
                }
                if head.prev_hash != *prev_hash {
                    return Err(broken(
                        n - 1,
                        ProblemKind::Edited,
                        format!(
                            "its hash no longer matches the prev_hash recorded in line {n}: line {} (or the link in line {n}) was changed",
                            n - 1
                        ),
                    ));
                }
                if *prev_closed && !head.is_device_event("open") {
                    return Err(broken(
                        n,
                        ProblemKind::Inserted,
                        "a record after a close record that is not an open record".to_owned(),
                    ));
                }
                if head.is_device_event("open") && !*prev_closed {
                    report.unclean_restarts.push(n);
                }
            }
        }
        report.lines = n;
        report.last_seq = head.seq;
        report.last_hash.clone_from(&hash);
        prev = Some((hash, head.seq, head.is_device_event("close")));
    }
    let Some((_, _, closed)) = prev else {
        return Err(broken(
            1,
            ProblemKind::Missing,
            "the file is empty: every record was removed".to_owned(),
        ));
    };
    report.closed = closed;
    Ok(report)
}

/// Verify files that form one chain, oldest first: each file, and that each file starts
/// where the previous one ended.
pub fn verify_files(paths: &[PathBuf]) -> Result<Vec<VerifyReport>, VerifyError> {
    let mut reports: Vec<VerifyReport> = Vec::with_capacity(paths.len());
    for path in paths {
        let report = verify(path)?;
        if let Some(before) = reports.last() {
            let links = report.continues_from.as_deref() == Some(before.last_hash.as_str())
                && report.first_seq == before.last_seq.saturating_add(1);
            if !links {
                return Err(VerifyError::Broken {
                    path: path.clone(),
                    line: 1,
                    kind: ProblemKind::BrokenLink,
                    detail: format!(
                        "this file does not continue {} (which ends with record {}, {}): records between the files are missing, or a file was edited, truncated or is out of order",
                        before.path.display(),
                        before.last_seq,
                        before.last_hash
                    ),
                });
            }
        }
        reports.push(report);
    }
    Ok(reports)
}
