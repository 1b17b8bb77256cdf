//! Formatting a secret-bearing value must never show its bytes.
//!
//! Each secret type is built around a planted marker; its `Debug` output (plain and
//! alternate) is searched for the marker as ASCII, as hex (both cases) and as the decimal list
//! that a derived `Debug` would print, in whole and in 8-byte windows. None of the secret
//! types implements `Display`.

use keyhaven_crypto::shamir::{self, Share};
use keyhaven_crypto::{
    AeadAlgorithm, AeadKey, CryptoError, DecryptError, HmacKey, SecretBytes, SecretKey,
};

const MARKER: [u8; 32] = *b"planted-secret-marker-0123456789";

fn assert_no_leak(what: &str, rendered: &str, secret: &[u8]) {
    let mut needles = vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        format!("{secret:?}"),
        String::from_utf8_lossy(secret).into_owned(),
    ];
    for w in secret.windows(8) {
        needles.push(hex::encode(w));
        needles.push(hex::encode_upper(w));
        needles.push(String::from_utf8_lossy(w).into_owned());
        needles.push(format!("{w:?}").trim_matches(['[', ']']).to_owned());
    }
    for n in needles {
        assert!(!rendered.contains(&n), "{what} leaks {n:?} in {rendered:?}");
    }
}

fn check<T: std::fmt::Debug>(what: &str, value: &T, secret: &[u8]) -> String {
    let plain = format!("{value:?}");
    let alt = format!("{value:#?}");
    assert_no_leak(what, &plain, secret);
    assert_no_leak(what, &alt, secret);
    // Inside containers, as it would appear in a derived Debug of a larger struct.
    assert_no_leak(what, &format!("{:?}", Some(value)), secret);
    plain
}

#[test]
fn secret_key() {
    let k = SecretKey::from_bytes(MARKER);
    assert_eq!(check("SecretKey", &k, &MARKER), "SecretKey(…)");
    assert_eq!(
        check("SecretKey clone", &k.try_clone(), &MARKER),
        "SecretKey(…)"
    );
}

#[test]
fn secret_bytes() {
    let s = SecretBytes::new(MARKER.to_vec());
    assert_eq!(check("SecretBytes", &s, &MARKER), "SecretBytes(…)");
}

#[test]
fn aead_key() {
    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
        let k = AeadKey::new(alg, &SecretKey::from_bytes(MARKER)).unwrap();
        let shown = check("AeadKey", &k, &MARKER);
        assert!(shown.starts_with("AeadKey"), "{shown}");
    }
}

#[test]
fn hmac_key() {
    let k = HmacKey::new(&MARKER);
    assert_eq!(check("HmacKey", &k, &MARKER), "HmacKey(…)");
}

#[test]
fn shares() {
    // A share of the marker (t = 1 shares carry the secret itself, so they must not leak it).
    for t in [1u8, 2] {
        for s in shamir::split(&MARKER, t, 3).unwrap() {
            let shown = check("Share", &s, &MARKER);
            assert_no_leak("Share", &shown, s.as_bytes());
            assert!(shown.starts_with("Share { x: "), "{shown}");
        }
    }
    let mut raw = MARKER.to_vec();
    raw.push(9);
    let s = Share::from_bytes(raw).unwrap();
    assert_eq!(check("Share", &s, &MARKER), "Share { x: 9, .. }");
    let combined = shamir::combine(&[s]).unwrap();
    check("combined secret", &combined, &MARKER);
}

#[test]
fn errors_carry_no_secret() {
    let k = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::from_bytes(MARKER)).unwrap();
    let e = k.open(&MARKER, &MARKER).unwrap_err();
    assert_eq!(e, DecryptError);
    check("DecryptError", &e, &MARKER);
    assert_no_leak("DecryptError", &e.to_string(), &MARKER);
    let e = SecretKey::from_slice(&MARKER[..31]).unwrap_err();
    check("CryptoError", &e, &MARKER);
    assert_no_leak("CryptoError", &e.to_string(), &MARKER);
    let e = CryptoError::from(Share::from_bytes(MARKER[..1].to_vec()).unwrap_err());
    check("CryptoError", &e, &MARKER);
}

/// Compile-time checks: secret types implement neither `Clone` nor `Copy`, and all zeroize
/// on drop.
#[test]
fn secret_types_are_not_clone_and_zeroize_on_drop() {
    // If `T: Clone`, both impls apply and the call below is ambiguous: compilation fails.
    trait AmbiguousIfClone<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfClone<()> for T {}
    #[allow(dead_code)]
    struct Invalid;
    impl<T: Clone> AmbiguousIfClone<Invalid> for T {}

    <SecretKey as AmbiguousIfClone<_>>::check();
    <SecretBytes as AmbiguousIfClone<_>>::check();
    <Share as AmbiguousIfClone<_>>::check();
    <AeadKey as AmbiguousIfClone<_>>::check();
    <HmacKey as AmbiguousIfClone<_>>::check();

    fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<SecretKey>();
    zeroize_on_drop::<SecretBytes>();
    zeroize_on_drop::<Share>();
}
