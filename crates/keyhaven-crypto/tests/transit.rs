//! Transit keys against independent implementations and published known answers.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
};
use keyhaven_crypto::transit::{
    Base64, HashAlgorithm, KeyOptions, KeyType, Marshaling, RsaPadding, SignOptions, VersionKey,
    codec,
};
use keyhaven_crypto::{CryptoError, DecryptError, HmacKey, SecretBytes, hkdf_sha256};
use proptest::collection::vec;
use proptest::prelude::*;

fn key(kind: KeyType, options: KeyOptions, bytes: &[u8]) -> VersionKey {
    VersionKey::from_parts(
        kind,
        options,
        SecretBytes::new(bytes.to_vec()),
        SecretBytes::new(vec![0x55; 32]),
    )
    .unwrap()
}

fn rc_open(k: &[u8], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let nonce = &nonce.into();
    let p = Payload { msg: ct, aad };
    match k.len() {
        16 => Aes128Gcm::new_from_slice(k).unwrap().decrypt(nonce, p).ok(),
        _ => Aes256Gcm::new_from_slice(k).unwrap().decrypt(nonce, p).ok(),
    }
}

fn rc_seal(k: &[u8], nonce: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let nonce = &nonce.into();
    let p = Payload { msg: pt, aad };
    match k.len() {
        16 => Aes128Gcm::new_from_slice(k)
            .unwrap()
            .encrypt(nonce, p)
            .unwrap(),
        _ => Aes256Gcm::new_from_slice(k)
            .unwrap()
            .encrypt(nonce, p)
            .unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A `vault:v<N>:` ciphertext made for known key bytes opens with RustCrypto's AES-GCM,
    /// and one sealed by RustCrypto in OpenBao's layout opens with keyhaven.
    #[test]
    fn aes_gcm_envelopes_match_rustcrypto(
        k256 in any::<[u8; 32]>(),
        k128 in any::<[u8; 16]>(),
        nonce in any::<[u8; 12]>(),
        aad in vec(any::<u8>(), 0..40),
        pt in vec(any::<u8>(), 0..300),
        ver in 1u32..1000,
    ) {
        for (kind, raw) in [(KeyType::Aes256Gcm96, &k256[..]), (KeyType::Aes128Gcm96, &k128[..])] {
            let ours = key(kind, KeyOptions::default(), raw);
            let text = codec::encode(ver, &ours.encrypt(b"", &aad, &pt).unwrap(), Base64::Standard);
            let (v, body) = codec::decode(&text, Base64::Standard).unwrap();
            prop_assert_eq!(v, ver);
            prop_assert_eq!(body.len(), 12 + pt.len() + 16);
            prop_assert_eq!(rc_open(raw, &body[..12], &aad, &body[12..]), Some(pt.clone()));

            let mut theirs = nonce.to_vec();
            theirs.extend(rc_seal(raw, &nonce, &aad, &pt));
            let text = format!("vault:v{ver}:{}", Base64::Standard.encode(&theirs));
            let (_, body) = codec::decode(&text, Base64::Standard).unwrap();
            let opened = ours.decrypt(b"", &aad, &body).unwrap();
            prop_assert_eq!(opened.expose_secret(), &pt[..]);
        }
    }

    /// Derived keys are HKDF-SHA256(key, salt = empty, info = context); convergent nonces are
    /// HMAC-SHA256 over the plaintext under the next 32 bytes of the same output (OpenBao's
    /// convergent version 3). Rebuilt here from the primitives plus RustCrypto's AES-GCM.
    #[test]
    fn derived_and_convergent_layout(
        k in any::<[u8; 32]>(),
        ctx in vec(any::<u8>(), 1..40),
        pt in vec(any::<u8>(), 0..100),
    ) {
        let conv = key(KeyType::Aes256Gcm96, KeyOptions { derived: true, convergent: true }, &k);
        let body = conv.encrypt(&ctx, b"", &pt).unwrap();
        let mut okm = [0u8; 64];
        hkdf_sha256(&k, b"", &ctx, &mut okm).unwrap();
        let nonce = &HmacKey::new(&okm[32..]).sign(&pt)[..12];
        let mut expected = nonce.to_vec();
        expected.extend(rc_seal(&okm[..32], nonce, b"", &pt));
        prop_assert_eq!(&body, &expected);

        let derived = key(KeyType::Aes256Gcm96, KeyOptions { derived: true, convergent: false }, &k);
        let body = derived.encrypt(&ctx, b"ad", &pt).unwrap();
        prop_assert_eq!(rc_open(&okm[..32], &body[..12], b"ad", &body[12..]), Some(pt.clone()));
        // The two share the encryption key, so each opens the other's ciphertexts.
        let opened = derived.decrypt(&ctx, b"", &expected).unwrap();
        prop_assert_eq!(opened.expose_secret(), &pt[..]);
    }

    /// Any change to a body is the one opaque error.
    #[test]
    fn tampering_is_opaque(k in any::<[u8; 32]>(), pt in vec(any::<u8>(), 0..64), i in any::<prop::sample::Index>(), bit in 0u8..8) {
        let ours = key(KeyType::ChaCha20Poly1305, KeyOptions::default(), &k);
        let mut body = ours.encrypt(b"", b"", &pt).unwrap();
        let at = i.index(body.len());
        body[at] ^= 1 << bit;
        prop_assert_eq!(ours.decrypt(b"", b"", &body).unwrap_err(), CryptoError::Decrypt(DecryptError));
        for cut in [0, 1, 11, 12, 27] {
            prop_assert_eq!(ours.decrypt(b"", b"", &body[..cut.min(body.len())]).unwrap_err(), CryptoError::Decrypt(DecryptError));
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn opts(hash: HashAlgorithm, marshaling: Marshaling) -> SignOptions {
    SignOptions {
        hash,
        prehashed: false,
        padding: RsaPadding::Pss,
        marshaling,
    }
}

/// RFC 8032 §7.1 tests 1 and 2: Ed25519 is deterministic, so keyhaven must produce exactly
/// the published signatures, and show the published public key.
#[test]
fn ed25519_rfc8032_known_answers() {
    for (seed, public, msg, sig) in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ] {
        // PKCS#8 v1 (RFC 8410) wrapping of the seed.
        let mut pkcs8 = unhex("302e020100300506032b657004220420");
        pkcs8.extend(unhex(seed));
        let k = key(KeyType::Ed25519, KeyOptions::default(), &pkcs8);
        assert_eq!(k.public_key_bytes(), unhex(public));
        assert_eq!(
            k.public_key().unwrap(),
            Base64::Standard.encode(&unhex(public))
        );
        let o = opts(HashAlgorithm::Sha2_256, Marshaling::Asn1);
        assert_eq!(k.sign(&o, &unhex(msg)).unwrap(), unhex(sig));
        assert!(k.verify(&o, &unhex(msg), &unhex(sig)).unwrap());
    }
}

fn der_int(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

fn der_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
    let body = [der_int(r), der_int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// RFC 6979 appendix A.2.5 (P-256) and A.2.6 (P-384): deterministic signatures made by
/// another implementation verify under keyhaven, as DER (asn1) and as r ‖ s (jws).
#[test]
fn ecdsa_rfc6979_signatures_verify() {
    struct Case {
        kind: KeyType,
        hash: HashAlgorithm,
        x: &'static str,
        ux: &'static str,
        uy: &'static str,
        sigs: &'static [(&'static str, &'static str, &'static str)],
    }
    let cases = [
        Case {
            kind: KeyType::EcdsaP256,
            hash: HashAlgorithm::Sha2_256,
            x: "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721",
            ux: "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6",
            uy: "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299",
            sigs: &[
                (
                    "sample",
                    "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
                    "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
                ),
                (
                    "test",
                    "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
                    "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
                ),
            ],
        },
        Case {
            kind: KeyType::EcdsaP384,
            hash: HashAlgorithm::Sha2_384,
            x: "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D896D5724E4C70A825F872C9EA60D2EDF5",
            ux: "EC3A4E415B4E19A4568618029F427FA5DA9A8BC4AE92E02E06AAE5286B300C64DEF8F0EA9055866064A254515480BC13",
            uy: "8015D9B72D7D57244EA8EF9AC0C621896708A59367F9DFB9F54CA84B3F1C9DB1288B231C3AE0D4FE7344FD2533264720",
            sigs: &[(
                "sample",
                "94EDBB92A5ECB8AAD4736E56C691916B3F88140666CE9FA73D64C4EA95AD133C81A648152E44ACF96E36DD1E80FABE46",
                "99EF4AEB15F178CEA1FE40DB2603138F130E740A19624526203B6351D0A3A94FA329C145786E679E7B82C71A38628AC8",
            )],
        },
    ];
    for c in cases {
        let alg = match c.kind {
            KeyType::EcdsaP256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            _ => &ECDSA_P384_SHA384_ASN1_SIGNING,
        };
        let public = [vec![4u8], unhex(c.ux), unhex(c.uy)].concat();
        let pair =
            EcdsaKeyPair::from_private_key_and_public_key(alg, &unhex(c.x), &public).unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let k = key(c.kind, KeyOptions::default(), pkcs8.as_ref());
        assert_eq!(k.public_key_bytes(), public);
        for (msg, r, s) in c.sigs {
            let (r, s) = (unhex(r), unhex(s));
            let asn1 = opts(c.hash, Marshaling::Asn1);
            let jws = opts(c.hash, Marshaling::Jws);
            assert!(
                k.verify(&asn1, msg.as_bytes(), &der_sig(&r, &s)).unwrap(),
                "{msg}"
            );
            assert!(
                k.verify(&jws, msg.as_bytes(), &[r.clone(), s.clone()].concat())
                    .unwrap()
            );
            assert!(!k.verify(&asn1, b"other", &der_sig(&r, &s)).unwrap());
            // And keyhaven's own signatures with this key verify under the same check.
            let ours = k.sign(&jws, msg.as_bytes()).unwrap();
            assert_eq!(ours.len(), r.len() * 2);
            assert!(k.verify(&jws, msg.as_bytes(), &ours).unwrap());
        }
    }
}

#[test]
fn public_keys_are_pem_spki() {
    for kind in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let k = VersionKey::generate(kind, KeyOptions::default(), 0).unwrap();
        let pem = k.public_key().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(pem.lines().all(|l| l.len() <= 64));
        let der = Base64::Standard.decode(&b64).unwrap();
        assert_eq!(der[0], 0x30, "SubjectPublicKeyInfo is a SEQUENCE");
    }
}

#[test]
fn debug_never_shows_key_bytes() {
    let raw = [0x42u8; 32];
    let k = key(KeyType::Aes256Gcm96, KeyOptions::default(), &raw);
    let s = format!("{k:?}");
    assert!(!s.contains("66, 66"));
    assert!(!s.contains("424242"));
    assert!(s.starts_with("VersionKey"));
}
