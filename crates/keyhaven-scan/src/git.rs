//! Git sources through `gix`: full history (every blob once, with the commit that
//! introduced it), the staged index, and changes since a revision (added lines only).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use gix::ObjectId;

use crate::Error;

/// What to read from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitMode {
    /// Every blob reachable from any reference, once.
    History,
    /// Blobs in the index that differ from HEAD (added lines only).
    Staged,
    /// Blobs in HEAD that differ from the revision (added lines only).
    Since(String),
}

/// A blob to scan.
#[derive(Debug, Clone)]
pub struct BlobRef {
    /// The blob.
    pub id: ObjectId,
    /// Path of its first occurrence.
    pub path: String,
    /// Commit that introduced it (history mode).
    pub commit: Option<String>,
    /// The previous version at the same path, to keep added lines only.
    pub old: Option<ObjectId>,
}

fn gerr<'a, E>(path: &'a Path, what: &'static str) -> impl FnOnce(E) -> Error + 'a
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::Git {
        path: path.to_path_buf(),
        what,
        source: Box::new(e),
    }
}

/// Open a repository (discovering upwards from `path`).
pub fn open(path: &Path) -> Result<gix::ThreadSafeRepository, Error> {
    gix::discover(path)
        .map(gix::Repository::into_sync)
        .map_err(gerr(path, "open"))
}

/// The repository's work tree (or git dir for bare repositories).
pub fn root(repo: &gix::Repository) -> PathBuf {
    repo.workdir()
        .map_or_else(|| repo.git_dir().to_path_buf(), Path::to_path_buf)
}

fn walk_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    prefix: &str,
    seen_trees: &mut HashSet<ObjectId>,
    visit: &mut dyn FnMut(ObjectId, String),
    path: &Path,
) -> Result<(), Error> {
    if !seen_trees.insert(tree) {
        return Ok(());
    }
    let obj = repo.find_object(tree).map_err(gerr(path, "read tree"))?;
    let data = obj.data.clone();
    drop(obj);
    for entry in gix::objs::TreeRefIter::from_bytes(&data, repo.object_hash()) {
        let entry = entry.map_err(gerr(path, "decode tree"))?;
        let name = String::from_utf8_lossy(entry.filename);
        let full = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}/{name}")
        };
        if entry.mode.is_tree() {
            walk_tree(repo, entry.oid.to_owned(), &full, seen_trees, visit, path)?;
        } else if entry.mode.is_blob() {
            visit(entry.oid.to_owned(), full);
        }
    }
    Ok(())
}

/// path → blob id of a whole tree.
fn tree_map(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &Path,
) -> Result<HashMap<String, ObjectId>, Error> {
    let mut map = HashMap::new();
    let mut seen = HashSet::new();
    walk_tree(
        repo,
        tree,
        "",
        &mut seen,
        &mut |id, p| {
            map.insert(p, id);
        },
        path,
    )?;
    Ok(map)
}

fn commit_tree(repo: &gix::Repository, id: ObjectId, path: &Path) -> Result<ObjectId, Error> {
    let c = repo.find_commit(id).map_err(gerr(path, "read commit"))?;
    c.tree_id()
        .map(gix::Id::detach)
        .map_err(gerr(path, "read commit tree"))
}

/// List the blobs to scan for `mode`.
pub fn blobs(repo: &gix::Repository, mode: &GitMode, path: &Path) -> Result<Vec<BlobRef>, Error> {
    match mode {
        GitMode::History => history(repo, path),
        GitMode::Staged => {
            let head = match repo.head_commit() {
                Ok(c) => tree_map(repo, commit_tree(repo, c.id, path)?, path)?,
                Err(_) => HashMap::new(),
            };
            let index = repo.index_or_empty().map_err(gerr(path, "read index"))?;
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            for e in index.entries() {
                if e.mode.is_submodule() {
                    continue;
                }
                let p = e.path(&index).to_string();
                if !seen.insert(p.clone()) {
                    continue;
                }
                let old = head.get(&p).copied();
                if old != Some(e.id) {
                    out.push(BlobRef {
                        id: e.id,
                        path: p,
                        commit: None,
                        old,
                    });
                }
            }
            Ok(out)
        }
        GitMode::Since(rev) => {
            let base = repo
                .rev_parse_single(rev.as_str())
                .map_err(gerr(path, "resolve revision"))?
                .object()
                .map_err(gerr(path, "read revision"))?
                .peel_to_commit()
                .map_err(gerr(path, "peel revision"))?;
            let head = repo.head_commit().map_err(gerr(path, "read HEAD"))?;
            let old = tree_map(repo, commit_tree(repo, base.id, path)?, path)?;
            let new = tree_map(repo, commit_tree(repo, head.id, path)?, path)?;
            let mut out: Vec<BlobRef> = new
                .into_iter()
                .filter(|(p, id)| old.get(p) != Some(id))
                .map(|(p, id)| BlobRef {
                    id,
                    old: old.get(&p).copied(),
                    path: p,
                    commit: Some(head.id.to_string()),
                })
                .collect();
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        }
    }
}

fn history(repo: &gix::Repository, path: &Path) -> Result<Vec<BlobRef>, Error> {
    let mut tips: Vec<ObjectId> = Vec::new();
    if let Ok(c) = repo.head_commit() {
        tips.push(c.id);
    }
    let platform = repo.references().map_err(gerr(path, "list references"))?;
    let refs = platform.all().map_err(gerr(path, "list references"))?;
    for r in refs.flatten() {
        let mut r = r;
        if let Ok(c) = r.peel_to_commit() {
            tips.push(c.id);
        }
    }
    tips.sort();
    tips.dedup();
    if tips.is_empty() {
        return Ok(Vec::new());
    }
    let walk = repo
        .rev_walk(tips)
        .all()
        .map_err(gerr(path, "walk history"))?;
    let mut commits: Vec<(i64, usize, ObjectId)> = Vec::new();
    for (i, info) in walk.enumerate() {
        let info = info.map_err(gerr(path, "walk history"))?;
        let time = repo
            .find_commit(info.id)
            .ok()
            .and_then(|c| c.time().ok())
            .map_or(0, |t| t.seconds);
        commits.push((time, i, info.id));
    }
    // Oldest first; for equal times, parents (found later in the walk) first.
    commits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut seen_trees = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut out = Vec::new();
    for (_, _, cid) in commits {
        let tree = commit_tree(repo, cid, path)?;
        let commit = cid.to_string();
        walk_tree(
            repo,
            tree,
            "",
            &mut seen_trees,
            &mut |id, p| {
                if seen_blobs.insert(id) {
                    out.push(BlobRef {
                        id,
                        path: p,
                        commit: Some(commit.clone()),
                        old: None,
                    });
                }
            },
            path,
        )?;
    }
    Ok(out)
}

/// Read a blob's bytes.
pub fn read_blob(repo: &gix::Repository, id: ObjectId, path: &Path) -> Result<Vec<u8>, Error> {
    let obj = repo.find_object(id).map_err(gerr(path, "read blob"))?;
    Ok(obj.detach().data)
}

/// Lines present in `old`, for keeping added lines only.
pub fn line_set(old: &[u8]) -> HashSet<&[u8]> {
    old.split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii_end)
        .collect()
}
