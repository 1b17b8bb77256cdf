//! The PKCS#11 seal: the root key is encrypted by a key that never leaves the HSM.
//!
//! AES-GCM (preferred): the HSM encrypts and decrypts; the 96-bit IV is drawn here and
//! kept in the blob, the AAD is the storage path of the sealed record. RSA-OAEP: the
//! HSM's public key encrypts, its private key decrypts.
//!
//! The module is loaded and the token found (by label, as slot ids may change) on first
//! use, and again after a failure, so a server whose HSM is missing at start stays sealed
//! and retries. A `Session` is not `Sync`: sessions are kept in a small pool, one taken
//! per operation, and every call runs on a blocking thread.

use std::sync::Arc;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyhaven_engine::seal::{AutoSeal, SealError, SealedValue};
use parking_lot::Mutex;
use secrecy::ExposeSecret as _;
use zeroize::Zeroizing;

use crate::seal_config::{OaepHash, Pkcs11Mechanism, Pkcs11Settings};

/// Sessions kept open for reuse.
const POOL_SIZE: usize = 4;
const GCM_IV_LEN: usize = 12;

/// The PKCS#11 seal.
pub struct Pkcs11Seal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pkcs11Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Seal")
            .field("lib", &self.inner.settings.lib)
            .field("key_label", &self.inner.settings.key_label)
            .finish_non_exhaustive()
    }
}

struct Connected {
    ctx: Pkcs11,
    slot: Slot,
}

struct Inner {
    settings: Pkcs11Settings,
    conn: Mutex<Option<Arc<Connected>>>,
    pool: Mutex<Vec<Session>>,
}

/// Which key a blob was sealed with, as written into its `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRef {
    label: String,
    id: Option<Vec<u8>>,
    mechanism: Pkcs11Mechanism,
    hash: OaepHash,
}

impl KeyRef {
    fn encode(&self) -> String {
        let mut out = format!("label={}", hex::encode(self.label.as_bytes()));
        if let Some(id) = &self.id {
            out.push_str(";id=");
            out.push_str(&hex::encode(id));
        }
        out.push_str(match self.mechanism {
            Pkcs11Mechanism::AesGcm => ";mech=aes-gcm",
            Pkcs11Mechanism::RsaOaep => ";mech=rsa-oaep",
        });
        if self.mechanism == Pkcs11Mechanism::RsaOaep {
            out.push_str(";hash=");
            out.push_str(hash_name(self.hash));
        }
        out
    }

    fn decode(text: &str) -> Result<KeyRef, SealError> {
        let bad = || {
            SealError::new(format!(
                "the sealed value names an unknown PKCS#11 key {text:?}"
            ))
        };
        let mut label = None;
        let mut id = None;
        let mut mechanism = None;
        let mut hash = OaepHash::Sha256;
        for part in text.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "label" => {
                    label = Some(
                        String::from_utf8(hex::decode(v).map_err(|_| bad())?).map_err(|_| bad())?,
                    )
                }
                "id" => id = Some(hex::decode(v).map_err(|_| bad())?),
                "mech" => {
                    mechanism = Some(match v {
                        "aes-gcm" => Pkcs11Mechanism::AesGcm,
                        "rsa-oaep" => Pkcs11Mechanism::RsaOaep,
                        _ => return Err(bad()),
                    })
                }
                "hash" => {
                    hash = match v {
                        "sha1" => OaepHash::Sha1,
                        "sha224" => OaepHash::Sha224,
                        "sha256" => OaepHash::Sha256,
                        "sha384" => OaepHash::Sha384,
                        "sha512" => OaepHash::Sha512,
                        _ => return Err(bad()),
                    }
                }
                _ => return Err(bad()),
            }
        }
        Ok(KeyRef {
            label: label.ok_or_else(bad)?,
            id,
            mechanism: mechanism.ok_or_else(bad)?,
            hash,
        })
    }

    fn describe(&self) -> String {
        match &self.id {
            Some(id) => format!("label {:?}, id 0x{}", self.label, hex::encode(id)),
            None => format!("label {:?}", self.label),
        }
    }
}

fn hash_name(h: OaepHash) -> &'static str {
    match h {
        OaepHash::Sha1 => "sha1",
        OaepHash::Sha224 => "sha224",
        OaepHash::Sha256 => "sha256",
        OaepHash::Sha384 => "sha384",
        OaepHash::Sha512 => "sha512",
    }
}

fn oaep(hash: OaepHash) -> Mechanism<'static> {
    let (alg, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        OaepHash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        OaepHash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(alg, mgf, PkcsOaepSource::empty()))
}

/// A PKCS#11 error in few words: the function and the return value's name.
fn p11(what: &str, e: &P11Error) -> SealError {
    match e {
        P11Error::Pkcs11(rv, function) => {
            let hint = match rv {
                RvError::PinIncorrect => " (the PIN is wrong)",
                RvError::PinLocked => " (the PIN is locked)",
                RvError::TokenNotPresent | RvError::DeviceRemoved => " (the token is gone)",
                _ => "",
            };
            SealError::new(format!("{what}: {function:?} returned {rv:?}{hint}"))
        }
        P11Error::LibraryLoading(err) => SealError::new(format!("{what}: {err}")),
        other => SealError::new(format!("{what}: {other}")),
    }
}

/// Whether after this error the module should be loaded and the token found again.
fn needs_reconnect(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::TokenNotPresent
                | RvError::DeviceRemoved
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized
                | RvError::DeviceError,
            _
        )
    )
}

impl Pkcs11Seal {
    /// A seal over `settings`; nothing is loaded until first use.
    pub fn new(settings: Pkcs11Settings) -> Self {
        Pkcs11Seal {
            inner: Arc::new(Inner {
                settings,
                conn: Mutex::new(None),
                pool: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Inner {
    fn current_key(&self) -> KeyRef {
        KeyRef {
            label: self.settings.key_label.clone(),
            id: self.settings.key_id.clone(),
            mechanism: self.settings.mechanism,
            hash: self.settings.rsa_oaep_hash,
        }
    }

    fn connect(&self) -> Result<Arc<Connected>, SealError> {
        if let Some(c) = self.conn.lock().as_ref() {
            return Ok(c.clone());
        }
        let lib = &self.settings.lib;
        let ctx = Pkcs11::new(lib).map_err(|e| {
            p11(
                &format!("cannot load the PKCS#11 module {}", lib.display()),
                &e,
            )
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(p11("cannot initialize the PKCS#11 module", &e)),
        }
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| p11("cannot list the PKCS#11 slots", &e))?;
        let slot = match (&self.settings.token_label, self.settings.slot) {
            (Some(label), _) => slots
                .into_iter()
                .find(|s| {
                    ctx.get_token_info(*s)
                        .map(|t| t.label().trim_end() == label.as_str())
                        .unwrap_or(false)
                })
                .ok_or_else(|| {
                    SealError::new(format!("no PKCS#11 token labelled {label:?} is present"))
                })?,
            (None, Some(id)) => slots
                .into_iter()
                .find(|s| s.id() == id)
                .ok_or_else(|| SealError::new(format!("PKCS#11 slot {id} has no token")))?,
            (None, None) => {
                return Err(SealError::new(
                    "neither a token label nor a slot is configured",
                ));
            }
        };
        let conn = Arc::new(Connected { ctx, slot });
        *self.conn.lock() = Some(conn.clone());
        self.pool.lock().clear();
        Ok(conn)
    }

    fn session(&self, conn: &Connected) -> Result<Session, SealError> {
        if let Some(s) = self.pool.lock().pop() {
            return Ok(s);
        }
        let session = conn
            .ctx
            .open_rw_session(conn.slot)
            .map_err(|e| p11("cannot open a PKCS#11 session", &e))?;
        let pin = AuthPin::from(self.settings.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(p11("cannot log in to the PKCS#11 token", &e)),
        }
    }

    /// Run `op` on a pooled session; on a failure that suggests the token or module went
    /// away, forget the connection so the next call starts over.
    fn with_session<T>(
        &self,
        what: &str,
        op: impl FnOnce(&Session) -> Result<T, P11Error>,
    ) -> Result<T, SealError> {
        let conn = self.connect()?;
        let session = match self.session(&conn) {
            Ok(s) => s,
            Err(e) => {
                *self.conn.lock() = None;
                return Err(e);
            }
        };
        match op(&session) {
            Ok(v) => {
                let mut pool = self.pool.lock();
                if pool.len() < POOL_SIZE {
                    pool.push(session);
                }
                Ok(v)
            }
            Err(e) => {
                if needs_reconnect(&e) {
                    *self.conn.lock() = None;
                    self.pool.lock().clear();
                }
                Err(p11(what, &e))
            }
        }
    }

    fn find_key(
        session: &Session,
        key: &KeyRef,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, P11Error> {
        let mut template = vec![
            Attribute::Class(class),
            Attribute::Label(key.label.as_bytes().to_vec()),
        ];
        if let Some(id) = &key.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session.find_objects(&template)?;
        Ok(found.first().copied())
    }

    fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedValue, SealError> {
        let key = self.current_key();
        let mut iv = Vec::new();
        let ciphertext = match key.mechanism {
            Pkcs11Mechanism::AesGcm => {
                let mut nonce = [0u8; GCM_IV_LEN];
                keyhaven_crypto::fill_random(&mut nonce)
                    .map_err(|_| SealError::new("the random number generator failed"))?;
                iv = nonce.to_vec();
                self.with_session("the HSM could not encrypt", |s| {
                    let Some(handle) = Self::find_key(s, &key, ObjectClass::SECRET_KEY)? else {
                        return Ok(None);
                    };
                    let params = GcmParams::new(&mut nonce, aad, 128.into())?;
                    s.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                        .map(Some)
                })?
            }
            Pkcs11Mechanism::RsaOaep => self.with_session("the HSM could not encrypt", |s| {
                let Some(handle) = Self::find_key(s, &key, ObjectClass::PUBLIC_KEY)? else {
                    return Ok(None);
                };
                s.encrypt(&oaep(key.hash), handle, plaintext).map(Some)
            })?,
        };
        let ciphertext = ciphertext.ok_or_else(|| self.missing(&key))?;
        Ok(SealedValue {
            seal_type: "pkcs11".to_owned(),
            key_id: key.encode(),
            iv,
            ciphertext,
        })
    }

    fn decrypt(&self, value: &SealedValue, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let key = KeyRef::decode(&value.key_id)?;
        let plain = match key.mechanism {
            Pkcs11Mechanism::AesGcm => {
                let mut iv = value.iv.clone();
                if iv.len() != GCM_IV_LEN {
                    return Err(SealError::new(
                        "the sealed value has an IV of the wrong length",
                    ));
                }
                self.with_session("the HSM could not decrypt the sealed value", |s| {
                    let Some(handle) = Self::find_key(s, &key, ObjectClass::SECRET_KEY)? else {
                        return Ok(None);
                    };
                    let params = GcmParams::new(&mut iv, aad, 128.into())?;
                    s.decrypt(&Mechanism::AesGcm(params), handle, &value.ciphertext)
                        .map(|p| Some(Zeroizing::new(p)))
                })?
            }
            Pkcs11Mechanism::RsaOaep => {
                self.with_session("the HSM could not decrypt the sealed value", |s| {
                    let Some(handle) = Self::find_key(s, &key, ObjectClass::PRIVATE_KEY)? else {
                        return Ok(None);
                    };
                    s.decrypt(&oaep(key.hash), handle, &value.ciphertext)
                        .map(|p| Some(Zeroizing::new(p)))
                })?
            }
        };
        plain.ok_or_else(|| self.missing(&key))
    }

    fn missing(&self, key: &KeyRef) -> SealError {
        let token = match (&self.settings.token_label, self.settings.slot) {
            (Some(label), _) => format!("token {label:?}"),
            (None, Some(slot)) => format!("slot {slot}"),
            (None, None) => "the token".to_owned(),
        };
        SealError::new(format!(
            "the HSM key ({}) was not found on {token}",
            key.describe()
        ))
    }
}

#[async_trait]
impl AutoSeal for Pkcs11Seal {
    fn seal_type(&self) -> &'static str {
        "pkcs11"
    }

    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedValue, SealError> {
        let inner = self.inner.clone();
        let plaintext = Zeroizing::new(plaintext.to_vec());
        let aad = aad.to_vec();
        tokio::task::spawn_blocking(move || inner.encrypt(&plaintext, &aad))
            .await
            .map_err(|_| SealError::new("the HSM call was interrupted"))?
    }

    async fn decrypt(
        &self,
        value: &SealedValue,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let inner = self.inner.clone();
        let value = value.clone();
        let aad = aad.to_vec();
        tokio::task::spawn_blocking(move || inner.decrypt(&value, &aad))
            .await
            .map_err(|_| SealError::new("the HSM call was interrupted"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reference_round_trips_and_refuses_strangers() {
        let k = KeyRef {
            label: "kek;2".to_owned(),
            id: Some(vec![1, 2]),
            mechanism: Pkcs11Mechanism::RsaOaep,
            hash: OaepHash::Sha384,
        };
        assert_eq!(KeyRef::decode(&k.encode()).unwrap(), k);
        for bad in [
            "",
            "label=zz;mech=aes-gcm",
            "label=6b;mech=des",
            "label=6b",
            "x=1",
        ] {
            assert!(KeyRef::decode(bad).is_err(), "{bad}");
        }
    }
}
