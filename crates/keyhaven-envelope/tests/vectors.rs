//! Golden vectors of format version 1 (`tests/vectors/v1.json`), made with local KEKs and
//! fixed randomness. The tests decrypt them, rebuild them byte for byte, and re-derive the
//! keys and open the first frame with aws-lc-rs directly, following
//! docs/envelope-format.md rather than the crate's code.
//!
//! Regenerate (only for a new format version): `KEYHAVEN_REGEN_VECTORS=1 cargo test -p
//! keyhaven-envelope --test envelope vectors`.

use std::path::PathBuf;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use keyhaven_crypto::{SecretKey, hkdf_sha256};
use keyhaven_envelope::format::wrap_aad;
use keyhaven_envelope::{EncryptionContext, Encryptor, Header, LocalKek, Options};
use serde_json::{Value, json};

use crate::support::{decrypt, options};

struct Spec {
    name: &'static str,
    keks: &'static [u8],
    context: &'static [(&'static str, &'static str)],
    frame_len: u32,
    plaintext: &'static [u8],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "empty plaintext, one local KEK, empty context",
        keks: &[0x33],
        context: &[],
        frame_len: 16,
        plaintext: b"",
    },
    Spec {
        name: "three frames, one local KEK, two context pairs",
        keks: &[0x33],
        context: &[("tenant", "acme"), ("purpose", "golden")],
        frame_len: 16,
        plaintext: b"The quick brown fox jumps over the lazy dog.",
    },
    Spec {
        name: "exactly two full frames, two local KEKs",
        keks: &[0x33, 0x55],
        context: &[("k", "v")],
        frame_len: 8,
        plaintext: b"0123456789abcdef",
    },
];

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1.json")
}

fn okm(dek: &[u8], msg_id: &[u8], label: &str, n: usize) -> Vec<u8> {
    let mut info = b"keyhaven-envelope/v1 ".to_vec();
    info.extend_from_slice(label.as_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    let mut out = vec![0u8; n];
    hkdf_sha256(dek, msg_id, &info, &mut out).unwrap();
    out
}

fn build(i: usize, spec: &Spec) -> Value {
    let dek = [0x11u8.wrapping_add(i as u8); 32];
    let message_id = [0x22u8.wrapping_add(i as u8); 32];
    let mut ctx = EncryptionContext::new();
    for (k, v) in spec.context {
        ctx.insert(*k, *v).unwrap();
    }
    let aad = wrap_aad(1, &ctx);
    let mut wrapped = Vec::new();
    let mut kek_hex = Vec::new();
    for (j, b) in spec.keks.iter().enumerate() {
        let hexkey = hex::encode([*b; 32]);
        let kek = LocalKek::from_hex(&hexkey).unwrap();
        let nonce = [0x44u8 + j as u8; 12];
        wrapped.push(
            kek.wrap_with_nonce(&SecretKey::from_bytes(dek), &aad, &nonce)
                .unwrap(),
        );
        kek_hex.push(json!({"key": hexkey, "key_id": kek.id(), "wrap_nonce": hex::encode(nonce)}));
    }
    let enc = Encryptor::from_parts(
        &SecretKey::from_bytes(dek),
        message_id,
        wrapped,
        ctx,
        Options {
            frame_len: spec.frame_len,
            threads: 1,
            ..Options::default()
        },
    )
    .unwrap();
    let mut message = Vec::new();
    enc.encrypt(spec.plaintext, &mut message).unwrap();
    let context: serde_json::Map<String, Value> = spec
        .context
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "name": spec.name,
        "keks": kek_hex,
        "context": context,
        "frame_len": spec.frame_len,
        "data_key": hex::encode(dek),
        "message_id": hex::encode(message_id),
        "wrap_aad": hex::encode(&aad),
        "content_key": hex::encode(okm(&dek, &message_id, "content", 32)),
        "nonce_base": hex::encode(okm(&dek, &message_id, "nonce", 12)),
        "header_mac_key": hex::encode(okm(&dek, &message_id, "header-mac", 32)),
        "commitment": hex::encode(okm(&dek, &message_id, "commit", 32)),
        "plaintext": hex::encode(spec.plaintext),
        "message": hex::encode(&message),
    })
}

fn load() -> Vec<Value> {
    if std::env::var_os("KEYHAVEN_REGEN_VECTORS").is_some() {
        let all: Vec<Value> = SPECS.iter().enumerate().map(|(i, s)| build(i, s)).collect();
        std::fs::write(path(), serde_json::to_string_pretty(&all).unwrap() + "\n").unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap()
}

fn h(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

#[test]
fn golden_vectors_decrypt_with_each_of_their_keks() {
    let vectors = load();
    assert_eq!(vectors.len(), SPECS.len());
    for v in &vectors {
        let message = h(v, "message");
        for kek in v["keks"].as_array().unwrap() {
            let k = LocalKek::from_hex(kek["key"].as_str().unwrap()).unwrap();
            assert_eq!(k.id(), kek["key_id"].as_str().unwrap());
            for threads in [1, 2] {
                assert_eq!(
                    decrypt(&[&k], options(16, threads), &message).unwrap(),
                    h(v, "plaintext"),
                    "{}",
                    v["name"]
                );
            }
        }
    }
}

#[test]
fn golden_vectors_are_reproduced_byte_for_byte() {
    for (i, (spec, v)) in SPECS.iter().zip(load()).enumerate() {
        assert_eq!(
            build(i, spec),
            v,
            "{}: the writer's output changed",
            spec.name
        );
    }
}

/// Follows docs/envelope-format.md with aws-lc-rs directly: the key commitment and header
/// MAC at their offsets, and frame 1 opened with the derived key, nonce and AAD.
#[test]
fn golden_vectors_match_the_documented_derivation() {
    for v in load() {
        let message = h(&v, "message");
        let dek = h(&v, "data_key");
        let msg_id = h(&v, "message_id");
        let header = Header::read_from(&mut &message[..]).unwrap();
        assert_eq!(&message[0..4], b"KHEV");
        assert_eq!(message[4], 1);
        assert_eq!(&message[5..7], &[0, 1]);
        assert_eq!(&message[7..39], &msg_id[..]);
        let commitment = okm(&dek, &msg_id, "commit", 32);
        assert_eq!(header.commitment.to_vec(), commitment);
        assert_eq!(h(&v, "commitment"), commitment);
        // The MAC covers magic .. commitment, which ends right before the MAC.
        let auth_len = header.authenticated_bytes().len();
        assert_eq!(&message[auth_len - 32..auth_len], &commitment[..]);
        let mac_key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &okm(&dek, &msg_id, "header-mac", 32),
        );
        let mac = aws_lc_rs::hmac::sign(&mac_key, &message[..auth_len]);
        assert_eq!(mac.as_ref(), &message[auth_len..auth_len + 32]);
        // Frame 1 starts after the wrapped keys.
        let header_len = header.encode().len();
        let body = &message[header_len..];
        let frame_len = v["frame_len"].as_u64().unwrap() as usize;
        let pt = h(&v, "plaintext");
        let (is_final, len, sealed) = if body[0..4] == [0xff; 4] {
            assert_eq!(&body[4..8], &1u32.to_be_bytes());
            let len = u32::from_be_bytes(body[8..12].try_into().unwrap()) as usize;
            (true, len, &body[12..12 + len + 16])
        } else {
            assert_eq!(&body[0..4], &1u32.to_be_bytes());
            (false, frame_len, &body[4..4 + frame_len + 16])
        };
        let mut nonce: [u8; 12] = okm(&dek, &msg_id, "nonce", 12).try_into().unwrap();
        nonce[11] ^= 1;
        let mut aad = b"keyhaven-envelope/v1 frame".to_vec();
        aad.extend_from_slice(&msg_id);
        aad.extend_from_slice(&1u32.to_be_bytes());
        aad.push(u8::from(is_final));
        aad.extend_from_slice(&(len as u32).to_be_bytes());
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &okm(&dek, &msg_id, "content", 32)).unwrap(),
        );
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut buf,
            )
            .unwrap();
        assert_eq!(plain, &pt[..len.min(pt.len())]);
    }
}
