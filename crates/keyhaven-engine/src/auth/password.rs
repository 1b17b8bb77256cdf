//! Password hashes for the `userpass` method: argon2id for every password set through
//! the API, bcrypt for hashes imported with `password_hash` (as OpenBao accepts them).
//!
//! Hashing is CPU- and memory-bound, so it runs on the blocking pool, never on the async
//! workers, and at most [`max_parallel`] hashes run at once in the whole process, with at
//! most [`MAX_WAITING`] more waiting: past that a login is refused at once with a 503
//! rather than queued, so a flood of logins costs a bounded amount of CPU and memory
//! (at most `max_parallel() × ARGON2_M_COST_KIB` KiB of argon2 memory).

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::error::EngineError;

/// argon2id memory cost in KiB (19 MiB: OWASP's recommended minimum configuration).
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// argon2id passes over memory.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;
/// Length of the salt, in bytes.
const SALT_LEN: usize = 16;
/// Length of the stored hash, in bytes.
const HASH_LEN: usize = 32;
/// The lowest bcrypt cost accepted for an imported hash (OpenBao's minimum).
pub const BCRYPT_MIN_COST: u32 = 5;
/// The highest bcrypt cost accepted for an imported hash: cost 16 already takes seconds
/// per login, and each step doubles it.
pub const BCRYPT_MAX_COST: u32 = 16;
/// The most hashes that may wait for a free slot; more are refused with a 503.
pub const MAX_WAITING: usize = 64;
/// The longest password accepted, in bytes (a longer one is never hashed).
pub const MAX_PASSWORD_LEN: usize = 4096;

/// How many hashes may run at once: the machine's parallelism, from 1 to 4.
pub fn max_parallel() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// A stored password hash. Never holds the password.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "alg", rename_all = "lowercase")]
pub(crate) enum PasswordHash {
    /// argon2id (version 0x13), base64 salt and hash without padding.
    Argon2id {
        m: u32,
        t: u32,
        p: u32,
        salt: String,
        hash: String,
    },
    /// An imported bcrypt hash (`$2a$`, `$2b$`, `$2y$`).
    Bcrypt { hash: String },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Argon2id { m, t, p, .. } => f
                .debug_struct("Argon2id")
                .field("m", m)
                .field("t", t)
                .field("p", p)
                .finish_non_exhaustive(),
            PasswordHash::Bcrypt { .. } => f.write_str("Bcrypt(<redacted>)"),
        }
    }
}

/// A password as a client sent it, kept out of `Debug` output.
pub(crate) struct Password(SecretString);

impl Password {
    /// Take a password parameter: present, not empty, not over [`MAX_PASSWORD_LEN`].
    pub(crate) fn new(text: &str) -> Result<Password, EngineError> {
        if text.len() > MAX_PASSWORD_LEN {
            return Err(EngineError::invalid(format!(
                "password is longer than {MAX_PASSWORD_LEN} bytes"
            )));
        }
        Ok(Password(SecretString::from(text.to_owned())))
    }

    fn bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl PasswordHash {
    /// Check an imported bcrypt hash: its form, and a cost within bounds.
    pub(crate) fn import_bcrypt(hash: &str) -> Result<PasswordHash, EngineError> {
        let parts: bcrypt::HashParts = hash
            .parse()
            .map_err(|_| EngineError::invalid("password_hash is not a valid bcrypt hash"))?;
        let cost = parts.get_cost();
        if cost < BCRYPT_MIN_COST {
            return Err(EngineError::invalid(format!(
                "bcrypt cost of {cost} is too low, want {BCRYPT_MIN_COST} at minimum"
            )));
        }
        if cost > BCRYPT_MAX_COST {
            return Err(EngineError::invalid(format!(
                "bcrypt cost of {cost} is too high, want {BCRYPT_MAX_COST} at most"
            )));
        }
        Ok(PasswordHash::Bcrypt {
            hash: hash.to_owned(),
        })
    }
}

/// Hash a new password with argon2id and a fresh salt.
pub(crate) async fn hash(password: Password) -> Result<PasswordHash, EngineError> {
    let mut salt = [0u8; SALT_LEN];
    keyhaven_crypto::fill_random(&mut salt)
        .map_err(|_| EngineError::Crypto(crate::error::CryptoOp::Random))?;
    let digest = run(move || {
        argon2id(
            password.bytes(),
            &salt,
            ARGON2_M_COST_KIB,
            ARGON2_T_COST,
            ARGON2_P_COST,
        )
    })
    .await??;
    Ok(PasswordHash::Argon2id {
        m: ARGON2_M_COST_KIB,
        t: ARGON2_T_COST,
        p: ARGON2_P_COST,
        salt: B64.encode(salt),
        hash: B64.encode(digest.as_slice()),
    })
}

/// Whether `password` matches `stored`. With no stored hash (an unknown user) the same
/// argon2id work is done on a fixed salt and the answer is `false`, so that the time
/// taken does not tell whether the user exists.
pub(crate) async fn verify(
    password: Password,
    stored: Option<PasswordHash>,
) -> Result<bool, EngineError> {
    run(move || match stored {
        None => {
            let _ = argon2id(
                password.bytes(),
                &[0u8; SALT_LEN],
                ARGON2_M_COST_KIB,
                ARGON2_T_COST,
                ARGON2_P_COST,
            )?;
            Ok(false)
        }
        Some(PasswordHash::Argon2id {
            m,
            t,
            p,
            salt,
            hash,
        }) => {
            let salt = B64
                .decode(salt)
                .map_err(|_| EngineError::Corrupt("a stored password salt".into()))?;
            let expected = B64
                .decode(hash)
                .map_err(|_| EngineError::Corrupt("a stored password hash".into()))?;
            let digest = argon2id(password.bytes(), &salt, m, t, p)?;
            Ok(keyhaven_crypto::ct_eq(digest.as_slice(), &expected))
        }
        Some(PasswordHash::Bcrypt { hash }) => Ok(bcrypt::verify(password.bytes(), &hash)
            .map_err(|_| EngineError::Corrupt("a stored bcrypt hash".into()))?),
    })
    .await?
}

fn argon2id(
    password: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; HASH_LEN]>, EngineError> {
    // Stored parameters are bounded so a corrupt record cannot ask for unbounded memory.
    if m > 4 * ARGON2_M_COST_KIB || t > 16 || p > 8 {
        return Err(EngineError::Corrupt(
            "a stored password hash has out-of-range parameters".into(),
        ));
    }
    let params = argon2::Params::new(m, t, p, Some(HASH_LEN))
        .map_err(|_| EngineError::Internal("argon2 parameters"))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    hasher
        .hash_password_into(password, salt, out.as_mut_slice())
        .map_err(|_| EngineError::Internal("argon2 hashing"))?;
    Ok(out)
}

/// Hashes running or waiting, process-wide.
struct Pool {
    running: Semaphore,
    waiting: AtomicUsize,
}

static POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    running: Semaphore::new(max_parallel()),
    waiting: AtomicUsize::new(0),
});

/// Decrements the waiting count when the hash is done (or its request dropped).
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        POOL.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Run `work` on the blocking pool within the process-wide bounds.
async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let pool = &*POOL;
    let slots = max_parallel() + MAX_WAITING;
    if pool.waiting.fetch_add(1, Ordering::AcqRel) >= slots {
        pool.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(EngineError::Unavailable(
            "too many password checks in progress; retry later".into(),
        ));
    }
    let _slot = Slot;
    let _permit = pool
        .running
        .acquire()
        .await
        .map_err(|_| EngineError::Internal("password hashing pool closed"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| EngineError::Internal("password hashing task failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_round_trip_and_mismatch() {
        let stored = hash(Password::new("correct horse").unwrap()).await.unwrap();
        assert!(
            verify(
                Password::new("correct horse").unwrap(),
                Some(stored.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !verify(
                Password::new("correct horsf").unwrap(),
                Some(stored.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !verify(Password::new("correct horse").unwrap(), None)
                .await
                .unwrap()
        );
        // Two hashes of one password differ (fresh salts).
        let again = hash(Password::new("correct horse").unwrap()).await.unwrap();
        assert_ne!(stored, again);
    }

    #[tokio::test]
    async fn bcrypt_import_checks_form_and_cost() {
        let h = bcrypt::hash_with_salt("pw3", 5, [7u8; 16])
            .unwrap()
            .to_string();
        let stored = PasswordHash::import_bcrypt(&h).unwrap();
        assert!(
            verify(Password::new("pw3").unwrap(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify(Password::new("pw4").unwrap(), Some(stored))
                .await
                .unwrap()
        );
        let low = bcrypt::hash_with_salt("pw3", 4, [7u8; 16])
            .unwrap()
            .to_string();
        let err = PasswordHash::import_bcrypt(&low).unwrap_err().to_string();
        assert!(err.contains("bcrypt cost of 4 is too low"), "{err}");
        let err = PasswordHash::import_bcrypt("$argon2id$v=19$m=1,t=1,p=1$abc$def")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid bcrypt hash"), "{err}");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let p = Password::new("hunter2-secret").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let h = PasswordHash::Bcrypt {
            hash: "$2b$05$abcdefghijklmnopqrstuuSECRETSECRETSECRETSECRETSECRETS".into(),
        };
        assert!(!format!("{h:?}").contains("SECRET"));
        let a = PasswordHash::Argon2id {
            m: 1,
            t: 1,
            p: 1,
            salt: "SALTSALT".into(),
            hash: "HASHHASH".into(),
        };
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("SALT") && !shown.contains("HASH"),
            "{shown}"
        );
    }
}
