//! Sources and the scan pipeline: files and directories (gitignore-aware, parallel),
//! stdin and git blobs, turned into findings.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use globset::GlobSet;
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::engine::{Engine, Match, Scratch, line_bounds};
use crate::finding::{Category, Finding, Secret, fingerprint};
use crate::git::{self, GitMode};
use crate::k8s::{self, Object};
use crate::report::Stats;
use crate::{Error, posture};

/// Pipeline configuration.
#[derive(Debug)]
pub struct Pipeline {
    /// The matching engine.
    pub engine: Engine,
    /// Run secret detection.
    pub secrets: bool,
    /// Run posture checks on manifests.
    pub posture: bool,
    /// Depth of nested base64 decoding in manifests.
    pub max_decode_depth: usize,
    /// Honour `.gitignore` and similar files.
    pub respect_gitignore: bool,
    /// Paths to skip.
    pub excludes: Option<GlobSet>,
    /// Skip files larger than this.
    pub max_file_size: Option<u64>,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Findings, sorted by path, line and rule.
    pub findings: Vec<Finding>,
    /// Totals.
    pub stats: Stats,
    /// Inputs that could not be read (path and error kind only).
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Partial {
    findings: Vec<Finding>,
    objects: Vec<Object>,
    bytes: u64,
    binary: bool,
    error: Option<String>,
}

/// Files at least this large are scanned before the others (see [`Pipeline::scan_files`]).
const LARGE_FILE: u64 = 1 << 20;

const FIX_SECRET: &str = "remove the credential from the source, rotate it, and load it at run time (for example from keyhaven)";

fn to_findings(
    engine: &Engine,
    matches: Vec<Match>,
    path: &str,
    commit: Option<&str>,
) -> Vec<Finding> {
    matches
        .into_iter()
        .filter_map(|m| {
            let rule = engine.rules.rules.get(m.rule)?;
            let id = rule.spec.id.as_str();
            Some(Finding {
                rule_id: id.to_owned(),
                description: rule.spec.description.clone(),
                severity: rule.spec.severity,
                category: Category::Secret,
                path: path.to_owned(),
                line: m.line,
                column: m.column,
                commit: commit.map(str::to_owned),
                message: rule.spec.description.clone(),
                fix: Some(FIX_SECRET.to_owned()),
                references: Vec::new(),
                decoded_from: None,
                field: None,
                fingerprint: fingerprint(id, path, &m.secret),
                secret: Some(Secret::new(m.secret)),
            })
        })
        .collect()
}

fn path_rule_findings(engine: &Engine, path: &str, commit: Option<&str>) -> Vec<Finding> {
    engine
        .path_rules(path)
        .into_iter()
        .filter_map(|i| engine.rules.rules.get(i))
        .map(|rule| Finding {
            rule_id: rule.spec.id.clone(),
            description: rule.spec.description.clone(),
            severity: rule.spec.severity,
            category: Category::Secret,
            path: path.to_owned(),
            line: 1,
            column: 1,
            commit: commit.map(str::to_owned),
            message: format!("{} (file name)", rule.spec.description),
            fix: Some(FIX_SECRET.to_owned()),
            references: Vec::new(),
            decoded_from: None,
            field: None,
            secret: None,
            fingerprint: fingerprint(&rule.spec.id, path, path.as_bytes()),
        })
        .collect()
}

impl Pipeline {
    /// Scan an in-memory input (a small file, a blob, stdin).
    fn scan_data(
        &self,
        data: &[u8],
        path: &str,
        commit: Option<&str>,
        scratch: &mut Scratch,
    ) -> Partial {
        let mut p = Partial {
            bytes: data.len() as u64,
            ..Partial::default()
        };
        if !self.engine.options.include_binary
            && memchr::memchr(0, data.get(..8192).unwrap_or(data)).is_some()
        {
            p.binary = true;
            return p;
        }
        if self.secrets {
            let matches = self.engine.scan_bytes_with(data, path, commit, scratch);
            p.findings = to_findings(&self.engine, matches, path, commit);
            p.findings
                .extend(path_rule_findings(&self.engine, path, commit));
        }
        if k8s::looks_like_manifest(path, data) {
            let m = k8s::scan_manifest(&self.engine, path, data, commit, self.max_decode_depth);
            if self.secrets {
                let lines: HashSet<u64> = p.findings.iter().map(|f| f.line).collect();
                p.findings.extend(
                    m.findings
                        .into_iter()
                        .filter(|f| f.decoded_from.is_none() || !lines.contains(&f.line)),
                );
            }
            if self.posture {
                p.objects = m.objects;
            }
        }
        p
    }

    fn scan_file(&self, path: &Path, scratch: &mut Scratch) -> Partial {
        let display = path.to_string_lossy().into_owned();
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                return Partial {
                    error: Some(format!("{display}: {}", e.kind())),
                    ..Partial::default()
                };
            }
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if self.max_file_size.is_some_and(|max| len > max) {
            return Partial::default();
        }
        let small = len <= self.engine.options.chunk as u64;
        let manifest_size = len <= k8s::MAX_MANIFEST_BYTES as u64;
        if small || (manifest_size && k8s::looks_like_manifest(&display, b"apiVersion")) {
            let mut data = std::mem::take(&mut scratch.buf);
            data.clear();
            let r = file.read_to_end(&mut data);
            let p = match r {
                Ok(_) => self.scan_data(&data, &display, None, scratch),
                Err(e) => Partial {
                    error: Some(format!("{display}: {}", e.kind())),
                    ..Partial::default()
                },
            };
            data.clear();
            if data.capacity() > self.engine.options.chunk * 2 {
                data.shrink_to(self.engine.options.chunk);
            }
            scratch.buf = data;
            return p;
        }
        if !self.secrets {
            return Partial::default();
        }
        match self
            .engine
            .scan_reader(&mut file, &display, None, false, scratch)
        {
            Ok(o) => Partial {
                findings: to_findings(&self.engine, o.matches, &display, None)
                    .into_iter()
                    .chain(path_rule_findings(&self.engine, &display, None))
                    .collect(),
                bytes: o.bytes,
                binary: o.binary,
                ..Partial::default()
            },
            Err(e) => Partial {
                error: Some(format!("{display}: {}", e.kind())),
                ..Partial::default()
            },
        }
    }

    /// List the files under `paths`.
    pub fn walk(&self, paths: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>, Error> {
        walk(paths, self.respect_gitignore, self.excludes.as_ref())
    }

    fn finish(&self, parts: Vec<Partial>) -> ScanResult {
        let mut res = ScanResult::default();
        let mut objects = Vec::new();
        for p in parts {
            res.stats.inputs += 1;
            res.stats.bytes += p.bytes;
            res.stats.binary += u64::from(p.binary);
            res.findings.extend(p.findings);
            objects.extend(p.objects);
            if let Some(e) = p.error {
                res.errors.push(e);
            }
        }
        if self.posture {
            res.findings.extend(posture::check(&objects));
        }
        res.findings.sort_by(|a, b| {
            (&a.path, a.line, a.column, &a.rule_id, &a.fingerprint).cmp(&(
                &b.path,
                b.line,
                b.column,
                &b.rule_id,
                &b.fingerprint,
            ))
        });
        res.findings.dedup_by(|a, b| {
            a.fingerprint == b.fingerprint && a.line == b.line && a.path == b.path
        });
        res
    }

    /// Scan files (already listed by [`Pipeline::walk`]).
    ///
    /// Each worker takes the next file as it becomes free, files of [`LARGE_FILE`] bytes or
    /// more first (largest first), then the rest in path order: no worker is left alone
    /// with a large file at the end, and small files are opened directory by directory,
    /// which costs the kernel less than jumping between directories.
    pub fn scan_files(
        &self,
        files: &[(PathBuf, u64)],
        progress: Option<&ProgressBar>,
    ) -> ScanResult {
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| {
            let len = files.get(i).map_or(0, |f| f.1);
            std::cmp::Reverse(if len >= LARGE_FILE { len } else { 0 })
        });
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut scratch = Scratch::per_thread();
            let mut done = Vec::new();
            while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                let Some((path, len)) = files.get(i) else {
                    continue;
                };
                done.push((i, self.scan_file(path, &mut scratch)));
                if let Some(pb) = progress {
                    pb.inc(*len);
                }
            }
            done
        };
        let mut parts: Vec<(usize, Partial)> = match thread_pool(self.threads) {
            Some(pool) => pool.broadcast(|_| worker()).into_iter().flatten().collect(),
            None => worker(),
        };
        // Back in path order, so errors are reported in a stable order.
        parts.sort_unstable_by_key(|(i, _)| *i);
        self.finish(parts.into_iter().map(|(_, p)| p).collect())
    }

    /// Scan a reader (stdin) under a display name.
    pub fn scan_stream(&self, reader: &mut dyn Read, name: &str) -> ScanResult {
        let mut head = Vec::new();
        let cap = k8s::MAX_MANIFEST_BYTES as u64;
        let part = match reader.take(cap).read_to_end(&mut head) {
            Ok(n) if (n as u64) < cap => self.scan_data(&head, name, None, &mut Scratch::default()),
            Ok(_) => {
                // Larger than any manifest: stream the rest with the head in front.
                let mut chained = std::io::Cursor::new(head).chain(reader);
                let mut scratch = Scratch::default();
                match self
                    .engine
                    .scan_reader(&mut chained, name, None, false, &mut scratch)
                {
                    Ok(o) => Partial {
                        findings: to_findings(&self.engine, o.matches, name, None),
                        bytes: o.bytes,
                        binary: o.binary,
                        ..Partial::default()
                    },
                    Err(e) => Partial {
                        error: Some(format!("{name}: {}", e.kind())),
                        ..Partial::default()
                    },
                }
            }
            Err(e) => Partial {
                error: Some(format!("{name}: {}", e.kind())),
                ..Partial::default()
            },
        };
        self.finish(vec![part])
    }

    /// Scan a git repository in `mode`. Posture checks do not run on history (they would
    /// report every past version of a manifest).
    pub fn scan_git(
        &self,
        repo_path: &Path,
        mode: &GitMode,
        progress: Option<&ProgressBar>,
    ) -> Result<ScanResult, Error> {
        let sync = git::open(repo_path)?;
        let repo = sync.to_thread_local();
        let blobs = git::blobs(&repo, mode, repo_path)?;
        if let Some(pb) = progress {
            pb.set_length(blobs.len() as u64);
        }
        let job = || {
            let slots = WorkerScratch::new();
            blobs
                .par_iter()
                .map_init(
                    || sync.to_thread_local(),
                    |repo, b| {
                        let p = slots.with(|scratch| self.scan_blob(repo, b, repo_path, scratch));
                        if let Some(pb) = progress {
                            pb.inc(1);
                        }
                        p
                    },
                )
                .collect::<Vec<_>>()
        };
        let parts = on_pool(self.threads, job);
        let saved = self.posture;
        let mut res = Pipeline::finish_no_posture(self, parts);
        res.stats.inputs = blobs.len() as u64;
        let _ = saved;
        Ok(res)
    }

    fn finish_no_posture(&self, parts: Vec<Partial>) -> ScanResult {
        let parts = parts
            .into_iter()
            .map(|mut p| {
                p.objects.clear();
                p
            })
            .collect();
        self.finish(parts)
    }

    fn scan_blob(
        &self,
        repo: &gix::Repository,
        b: &git::BlobRef,
        repo_path: &Path,
        scratch: &mut Scratch,
    ) -> Partial {
        let data = match git::read_blob(repo, b.id, repo_path) {
            Ok(d) => d,
            Err(e) => {
                return Partial {
                    error: Some(format!("{}: {e}", b.path)),
                    ..Partial::default()
                };
            }
        };
        let mut p = self.scan_data(&data, &b.path, b.commit.as_deref(), scratch);
        p.objects.clear();
        if let Some(old_id) = b.old {
            let Ok(old) = git::read_blob(repo, old_id, repo_path) else {
                return p;
            };
            let old_lines = git::line_set(&old);
            let lines: Vec<&[u8]> = data.split(|c| *c == b'\n').collect();
            p.findings.retain(|f| {
                let idx = usize::try_from(f.line.saturating_sub(1)).unwrap_or(usize::MAX);
                lines
                    .get(idx)
                    .is_none_or(|l| !old_lines.contains(l.trim_ascii_end()))
            });
        }
        p
    }
}

/// A rayon pool of `threads` workers (0: one per core).
pub fn thread_pool(threads: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .ok()
}

/// Run `job` on a pool of `threads` workers (0: one per core), or on this thread if the
/// pool cannot be built.
pub fn on_pool<R: Send>(threads: usize, job: impl FnOnce() -> R + Send) -> R {
    match thread_pool(threads) {
        Some(pool) => pool.install(job),
        None => job(),
    }
}

/// List the files under `paths`, sorted by path, each with its length: directories are
/// walked honouring ignore files when `respect_gitignore`, without following links and
/// never into `.git`; paths matching `excludes` are left out.
pub fn walk(
    paths: &[PathBuf],
    respect_gitignore: bool,
    excludes: Option<&GlobSet>,
) -> Result<Vec<(PathBuf, u64)>, Error> {
    let mut out = Vec::new();
    for root in paths {
        if root.is_file() {
            let len = root.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((root.clone(), len));
            continue;
        }
        let mut b = ignore::WalkBuilder::new(root);
        b.hidden(false)
            .parents(respect_gitignore)
            .git_ignore(respect_gitignore)
            .git_global(false)
            .git_exclude(respect_gitignore)
            .ignore(respect_gitignore)
            .require_git(false)
            .follow_links(false)
            .filter_entry(|e| e.file_name() != ".git");
        for entry in b.build() {
            let entry = entry.map_err(Error::Walk)?;
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let p = entry.path();
            if excludes.is_some_and(|g| g.is_match(p)) {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((p.to_path_buf(), len));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One [`Scratch`] per worker thread of the current rayon pool, kept for the whole scan
/// (rayon's `map_init` would make one per split of the work, each with cold regex caches).
struct WorkerScratch(Vec<Mutex<Scratch>>);

impl WorkerScratch {
    fn new() -> WorkerScratch {
        WorkerScratch(
            (0..rayon::current_num_threads().max(1))
                .map(|_| Mutex::new(Scratch::per_thread()))
                .collect(),
        )
    }

    /// Run `f` with the calling worker's scratch. Each worker only ever locks its own
    /// slot, so the lock is never contended; a thread outside the pool gets a fresh one.
    fn with<T>(&self, f: impl FnOnce(&mut Scratch) -> T) -> T {
        match rayon::current_thread_index().and_then(|i| self.0.get(i)) {
            Some(slot) => {
                let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut guard)
            }
            None => f(&mut Scratch::default()),
        }
    }
}

/// The line of `data` around byte `offset` (bounded).
pub fn line_at(data: &[u8], offset: usize) -> &[u8] {
    let (s, e) = line_bounds(data, offset);
    data.get(s..e).unwrap_or_default()
}
