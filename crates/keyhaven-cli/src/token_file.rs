//! The token file `keyhaven login` stores and the other commands read when no token is
//! given by flag or environment: `$KEYHAVEN_TOKEN_FILE`, else `~/.keyhaven-token`.
//!
//! The file holds the token and nothing else, and is written with mode 0600 through a
//! temporary file in the same directory that replaces it at once, so a reader never sees
//! a half-written token and no other user can read it at any moment. Reading a file that
//! others can read works but warns.

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroize as _;

use crate::output;
use crate::remote::Failure;

/// The variable that names the token file.
pub const ENV: &str = "KEYHAVEN_TOKEN_FILE";

/// The file name under the home directory.
const DEFAULT_NAME: &str = ".keyhaven-token";

/// The token file's path, or `None` when neither `KEYHAVEN_TOKEN_FILE` nor `HOME` is set.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(DEFAULT_NAME))
}

/// The stored token, or `None` when there is no token file (or it is empty).
pub fn read() -> Result<Option<SecretString>, Failure> {
    match path() {
        None => Ok(None),
        Some(p) => read_from(&p),
    }
}

fn read_from(path: &Path) -> Result<Option<SecretString>, Failure> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::Local(
                anyhow::Error::new(e)
                    .context(format!("cannot read the token file {}", path.display())),
            ));
        }
    };
    if let Ok(meta) = file.metadata()
        && meta.mode() & 0o077 != 0
    {
        output::warn(&format!(
            "the token file {} can be read by other users; run `chmod 600` on it or log in again",
            path.display()
        ));
    }
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    let token = SecretString::from(text.trim());
    text.zeroize();
    read.map_err(|e| {
        Failure::Local(
            anyhow::Error::new(e).context(format!("cannot read the token file {}", path.display())),
        )
    })?;
    Ok((!token.expose_secret().is_empty()).then_some(token))
}

/// Store `token` in the token file (mode 0600), replacing what was there; returns the
/// file's path.
pub fn store(token: &SecretString) -> Result<PathBuf, Failure> {
    let path = path().ok_or_else(|| {
        Failure::local(format!(
            "cannot store the token: neither {ENV} nor HOME is set (use --no-store to print it instead)"
        ))
    })?;
    store_at(&path, token)?;
    Ok(path)
}

fn store_at(path: &Path, token: &SecretString) -> Result<(), Failure> {
    let fail = |e: std::io::Error, what: &str| {
        Failure::Local(anyhow::Error::new(e).context(format!("{what} {}", path.display())))
    };
    let name = path
        .file_name()
        .ok_or_else(|| Failure::local(format!("invalid token file path {}", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.expose_secret().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e, "cannot write the token file")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_token_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        store_at(&path, &SecretString::from("kh.first")).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "mode"
        );
        store_at(&path, &SecretString::from("kh.second")).unwrap();
        let t = read_from(&path).unwrap().unwrap();
        assert_eq!(t.expose_secret(), "kh.second");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_or_empty_file_is_no_token() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_from(&dir.path().join("absent")).unwrap().is_none());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read_from(&empty).unwrap().is_none());
    }
}
