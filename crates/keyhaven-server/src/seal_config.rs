//! The `[seal]` table: how the root key is sealed.
//!
//! Field names are OpenBao's (`lib`, `slot`, `token_label`, `pin`, `key_label`,
//! `key_id`, `mechanism`, `rsa_oaep_hash`; `address`, `token`, `mount_path`, `key_name`,
//! `tls_ca_cert`; `disabled`). Each value can also come from a file named by its
//! `*_file` twin (`pin_file`, `token_file`, ...; the file's content with surrounding
//! whitespace removed), or, when neither is set, from the environment variable
//! `KEYHAVEN_SEAL_<FIELD>` (e.g. `KEYHAVEN_SEAL_PIN`). Files are preferred for secrets:
//! an environment variable stays readable in `/proc/<pid>/environ` to the same user and
//! root for the life of the process (SECURITY.md).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::config::ConfigError;

/// A string or an integer, as OpenBao accepts for `slot` and `disabled`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// The raw `[seal]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSeal {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    disabled: Option<Scalar>,
    #[serde(default)]
    lib: Option<String>,
    #[serde(default)]
    lib_file: Option<PathBuf>,
    #[serde(default)]
    slot: Option<Scalar>,
    #[serde(default)]
    slot_file: Option<PathBuf>,
    #[serde(default)]
    token_label: Option<String>,
    #[serde(default)]
    token_label_file: Option<PathBuf>,
    #[serde(default)]
    pin: Option<String>,
    #[serde(default)]
    pin_file: Option<PathBuf>,
    #[serde(default)]
    key_label: Option<String>,
    #[serde(default)]
    key_label_file: Option<PathBuf>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    key_id_file: Option<PathBuf>,
    #[serde(default)]
    mechanism: Option<Scalar>,
    #[serde(default)]
    mechanism_file: Option<PathBuf>,
    #[serde(default)]
    rsa_oaep_hash: Option<String>,
    #[serde(default)]
    rsa_oaep_hash_file: Option<PathBuf>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    address_file: Option<PathBuf>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    mount_path: Option<String>,
    #[serde(default)]
    mount_path_file: Option<PathBuf>,
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    key_name_file: Option<PathBuf>,
    #[serde(default)]
    tls_ca_cert: Option<String>,
    #[serde(default)]
    tls_ca_cert_file: Option<PathBuf>,
}

/// The PKCS#11 mechanism that seals the root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs11Mechanism {
    /// `CKM_AES_GCM` (0x1087), preferred: the HSM encrypts and decrypts.
    AesGcm,
    /// `CKM_RSA_PKCS_OAEP` (0x0009): encrypted with the public key, decrypted in the HSM.
    RsaOaep,
}

/// The hash of RSA-OAEP (`rsa_oaep_hash`), default SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// `[seal] type = "pkcs11"`.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (`lib`).
    pub lib: PathBuf,
    /// The slot id (`slot`); `token_label` is preferred, as slot ids may change.
    pub slot: Option<u64>,
    /// The token label (`token_label`).
    pub token_label: Option<String>,
    /// The user PIN (`pin`).
    pub pin: SecretString,
    /// The key's label (`key_label`).
    pub key_label: String,
    /// The key's `CKA_ID` (`key_id`, hex, `0x` prefix allowed).
    pub key_id: Option<Vec<u8>>,
    /// The mechanism (`mechanism`).
    pub mechanism: Pkcs11Mechanism,
    /// The hash of RSA-OAEP (`rsa_oaep_hash`).
    pub rsa_oaep_hash: OaepHash,
}

/// `[seal] type = "transit"`: another keyhaven, or an OpenBao/Vault transit key.
#[derive(Debug, Clone)]
pub struct TransitSettings {
    /// Base address of the remote server (`address`), e.g. `https://kms.example:8200`.
    pub address: String,
    /// Its token (`token`); renewed while the server runs.
    pub token: SecretString,
    /// The transit mount (`mount_path`), default `transit/`.
    pub mount_path: String,
    /// The key (`key_name`).
    pub key_name: String,
    /// A CA bundle (PEM) to verify the remote server with (`tls_ca_cert`).
    pub tls_ca_cert: Option<PathBuf>,
}

/// What seals the root key.
#[derive(Debug, Clone, Default)]
pub enum SealKind {
    /// Unseal key shares (the default).
    #[default]
    Shamir,
    /// An HSM key through PKCS#11.
    Pkcs11(Pkcs11Settings),
    /// A transit key of another server.
    Transit(TransitSettings),
}

/// The validated `[seal]` table.
#[derive(Debug, Clone, Default)]
pub struct SealSettings {
    /// The seal.
    pub kind: SealKind,
    /// `disabled = true`: the seal is being migrated away from (to Shamir).
    pub disabled: bool,
}

impl SealSettings {
    /// The seal type name (`shamir`, `pkcs11`, `transit`).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            SealKind::Shamir => "shamir",
            SealKind::Pkcs11(_) => "pkcs11",
            SealKind::Transit(_) => "transit",
        }
    }
}

/// A value from the field itself, its `*_file` twin, or `KEYHAVEN_SEAL_<FIELD>`.
fn value(
    name: &str,
    direct: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "seal.{name} and seal.{name}_file are both set; use one"
        ))),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "seal.{name}_file {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            let text = text.trim().to_owned();
            if text.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "seal.{name}_file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(text))
        }
        (None, None) => {
            let var = format!("KEYHAVEN_SEAL_{}", name.to_ascii_uppercase());
            Ok(std::env::var(&var).ok().filter(|v| !v.is_empty()))
        }
    }
}

fn required(name: &str, kind: &str, v: Option<String>) -> Result<String, ConfigError> {
    v.ok_or_else(|| {
        ConfigError::Invalid(format!(
            "seal.{name} (or {name}_file, or KEYHAVEN_SEAL_{}) is required for the {kind} seal",
            name.to_ascii_uppercase()
        ))
    })
}

fn parse_mechanism(text: &str) -> Result<Pkcs11Mechanism, ConfigError> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("CKM_").unwrap_or(&upper);
    let number = if let Some(hex) = name.strip_prefix("0X") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        name.parse::<u64>().ok()
    };
    match (name, number) {
        ("AES_GCM", _) | (_, Some(0x1087)) => Ok(Pkcs11Mechanism::AesGcm),
        ("RSA_PKCS_OAEP", _) | (_, Some(0x0009)) => Ok(Pkcs11Mechanism::RsaOaep),
        _ => Err(ConfigError::Invalid(format!(
            "seal.mechanism {t:?} is not supported: use CKM_AES_GCM (0x1087, preferred) or \
             CKM_RSA_PKCS_OAEP (0x0009)"
        ))),
    }
}

fn parse_hash(text: &str) -> Result<OaepHash, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "sha1" => Ok(OaepHash::Sha1),
        "sha224" => Ok(OaepHash::Sha224),
        "sha256" => Ok(OaepHash::Sha256),
        "sha384" => Ok(OaepHash::Sha384),
        "sha512" => Ok(OaepHash::Sha512),
        other => Err(ConfigError::Invalid(format!(
            "seal.rsa_oaep_hash {other:?}: use sha1, sha224, sha256, sha384 or sha512"
        ))),
    }
}

fn parse_key_id(text: &str) -> Result<Vec<u8>, ConfigError> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    hex::decode(digits)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ConfigError::Invalid("seal.key_id must be a hex string, e.g. 0x0102".into()))
}

fn parse_bool(name: &str, v: Scalar) -> Result<bool, ConfigError> {
    match v {
        Scalar::Bool(b) => Ok(b),
        other => match other.into_text().trim() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            t => Err(ConfigError::Invalid(format!(
                "seal.{name} {t:?}: use true or false"
            ))),
        },
    }
}

/// Validate the raw table (`None`: no `[seal]`, Shamir).
pub(crate) fn seal_settings(raw: Option<RawSeal>) -> Result<SealSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(SealSettings::default());
    };
    let disabled = match raw.disabled {
        Some(v) => parse_bool("disabled", v)?,
        None => false,
    };
    let kind_name = raw.kind.as_deref().unwrap_or("shamir");
    let kind = match kind_name {
        "shamir" => SealKind::Shamir,
        "pkcs11" => {
            let k = "pkcs11";
            let lib = required("lib", k, value("lib", raw.lib, raw.lib_file)?)?;
            let slot = value("slot", raw.slot.map(Scalar::into_text), raw.slot_file)?
                .map(|s| {
                    let t = s.trim();
                    match t.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16),
                        None => t.parse::<u64>(),
                    }
                    .map_err(|_| {
                        ConfigError::Invalid(format!("seal.slot {s:?} is not a slot number"))
                    })
                })
                .transpose()?;
            let token_label = value("token_label", raw.token_label, raw.token_label_file)?;
            if slot.is_none() && token_label.is_none() {
                return Err(ConfigError::Invalid(
                    "the pkcs11 seal needs seal.token_label (preferred) or seal.slot".into(),
                ));
            }
            let pin = required("pin", k, value("pin", raw.pin, raw.pin_file)?)?;
            let key_label = required(
                "key_label",
                k,
                value("key_label", raw.key_label, raw.key_label_file)?,
            )?;
            let key_id = value("key_id", raw.key_id, raw.key_id_file)?
                .map(|s| parse_key_id(&s))
                .transpose()?;
            let mechanism = value(
                "mechanism",
                raw.mechanism.map(Scalar::into_text),
                raw.mechanism_file,
            )?
            .map(|m| parse_mechanism(&m))
            .transpose()?
            .unwrap_or(Pkcs11Mechanism::AesGcm);
            let rsa_oaep_hash = value("rsa_oaep_hash", raw.rsa_oaep_hash, raw.rsa_oaep_hash_file)?
                .map(|h| parse_hash(&h))
                .transpose()?
                .unwrap_or(OaepHash::Sha256);
            SealKind::Pkcs11(Pkcs11Settings {
                lib: PathBuf::from(lib),
                slot,
                token_label,
                pin: SecretString::from(pin),
                key_label,
                key_id,
                mechanism,
                rsa_oaep_hash,
            })
        }
        "transit" => {
            let k = "transit";
            let address = required(
                "address",
                k,
                value("address", raw.address, raw.address_file)?,
            )?;
            let address = address.trim_end_matches('/').to_owned();
            if !(address.starts_with("https://") || address.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!(
                    "seal.address {address:?} must start with https:// (or http://)"
                )));
            }
            let token = required("token", k, value("token", raw.token, raw.token_file)?)?;
            let mount_path = value("mount_path", raw.mount_path, raw.mount_path_file)?
                .unwrap_or_else(|| "transit/".to_owned());
            let mount_path = mount_path.trim_matches('/').to_owned();
            if mount_path.is_empty() || mount_path.contains("..") {
                return Err(ConfigError::Invalid(
                    "seal.mount_path must name a transit mount, e.g. \"transit/\"".into(),
                ));
            }
            let key_name = required(
                "key_name",
                k,
                value("key_name", raw.key_name, raw.key_name_file)?,
            )?;
            if key_name.contains('/') || key_name.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "seal.key_name {key_name:?} must be a key name without '/'"
                )));
            }
            let tls_ca_cert =
                value("tls_ca_cert", raw.tls_ca_cert, raw.tls_ca_cert_file)?.map(PathBuf::from);
            SealKind::Transit(TransitSettings {
                address,
                token: SecretString::from(token),
                mount_path,
                key_name,
                tls_ca_cert,
            })
        }
        other => {
            return Err(ConfigError::Invalid(format!(
                "seal.type {other:?} is not supported: use \"shamir\", \"pkcs11\" or \"transit\""
            )));
        }
    };
    if disabled && matches!(kind, SealKind::Shamir) {
        return Err(ConfigError::Invalid(
            "seal.disabled applies to an auto seal being migrated away from, not to shamir".into(),
        ));
    }
    Ok(SealSettings { kind, disabled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SealSettings, ConfigError> {
        let raw: RawSeal = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        seal_settings(Some(raw))
    }

    #[test]
    fn openbaos_pkcs11_fields_are_read_with_their_names_and_forms() {
        let s = parse(
            "type = \"pkcs11\"\nlib = \"/usr/lib/softhsm/libsofthsm2.so\"\nslot = \"7\"\n\
             pin = \"5678\"\nkey_label = \"kek\"\nkey_id = \"0x0a0b\"\nmechanism = \"0x1087\"\n",
        )
        .unwrap();
        let SealKind::Pkcs11(p) = s.kind else {
            panic!("not pkcs11")
        };
        assert_eq!(p.slot, Some(7));
        assert_eq!(p.key_id, Some(vec![0x0a, 0x0b]));
        assert_eq!(p.mechanism, Pkcs11Mechanism::AesGcm);
        assert!(!format!("{p:?}").contains("5678"));
        for (m, want) in [
            ("CKM_RSA_PKCS_OAEP", Pkcs11Mechanism::RsaOaep),
            ("RSA_PKCS_OAEP", Pkcs11Mechanism::RsaOaep),
            ("9", Pkcs11Mechanism::RsaOaep),
            ("CKM_AES_GCM", Pkcs11Mechanism::AesGcm),
        ] {
            assert_eq!(parse_mechanism(m).unwrap(), want, "{m}");
        }
        let err = parse_mechanism("CKM_AES_CBC_PAD").unwrap_err().to_string();
        assert!(err.contains("CKM_AES_CBC_PAD"), "{err}");
    }

    #[test]
    fn secrets_come_from_file_twins_and_both_forms_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "5678\n").unwrap();
        let s = parse(&format!(
            "type = \"pkcs11\"\nlib = \"x.so\"\ntoken_label = \"kms\"\npin_file = \"{}\"\nkey_label = \"kek\"\n",
            pin.display()
        ))
        .unwrap();
        let SealKind::Pkcs11(p) = s.kind else {
            panic!("not pkcs11")
        };
        use secrecy::ExposeSecret as _;
        assert_eq!(p.pin.expose_secret(), "5678");
        let err = parse(&format!(
            "type = \"pkcs11\"\nlib = \"x.so\"\ntoken_label = \"kms\"\npin = \"1\"\npin_file = \"{}\"\nkey_label = \"kek\"\n",
            pin.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("seal.pin and seal.pin_file"), "{err}");
        let err = parse(
            "type = \"pkcs11\"\nlib = \"x.so\"\ntoken_label = \"kms\"\npin_file = \"/nonexistent/pin\"\nkey_label = \"kek\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("seal.pin_file /nonexistent/pin"), "{err}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let err = parse("type = \"pkcs11\"\nlib = \"x.so\"\npin = \"1\"\nkey_label = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_label"), "{err}");
        let err = parse("type = \"pkcs11\"\nlabel = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("label"), "{err}");
        let err = parse("type = \"awskms\"\n").unwrap_err().to_string();
        assert!(err.contains("awskms"), "{err}");
        let err = parse("type = \"shamir\"\ndisabled = \"true\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("disabled"), "{err}");
    }

    #[test]
    fn transit_fields_are_read_and_checked() {
        let s = parse(
            "type = \"transit\"\naddress = \"https://kms:8200/\"\ntoken = \"t\"\nkey_name = \"unseal\"\ndisabled = \"true\"\n",
        )
        .unwrap();
        assert!(s.disabled);
        let SealKind::Transit(t) = s.kind else {
            panic!("not transit")
        };
        assert_eq!(t.address, "https://kms:8200");
        assert_eq!(t.mount_path, "transit");
        let err =
            parse("type = \"transit\"\naddress = \"kms:8200\"\ntoken = \"t\"\nkey_name = \"k\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("seal.address"), "{err}");
    }
}
