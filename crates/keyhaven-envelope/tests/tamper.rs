//! Tampering: every single-byte change, frame surgery, swapped keys, changed context, and a
//! crafted message whose wrapped keys hold two different data keys.

use std::collections::BTreeSet;

use keyhaven_crypto::SecretKey;
use keyhaven_envelope::format::wrap_aad;
use keyhaven_envelope::{
    Encryptor, EnvelopeError, ErrorClass, Header, KekError, KekProvider, Options,
};

use crate::support::{block_on, context, decrypt, encrypt, kek, options, plaintext};

const FRAME: u32 = 16;

/// A message of 3 full frames and a final frame of 5 bytes.
fn message() -> (Vec<u8>, Vec<u8>) {
    let k = kek(1);
    let pt = plaintext(3 * FRAME as usize + 5);
    let msg = encrypt(
        &[&k],
        context(&[("app", "billing")]),
        options(FRAME, 1),
        &pt,
    );
    (pt, msg)
}

fn split(msg: &[u8]) -> (Header, usize) {
    let mut input = msg;
    let header = Header::read_from(&mut input).unwrap();
    (header, msg.len() - input.len())
}

/// The frames of the body: 3 regular frames (4 + 16 + 16 bytes) and the final one.
fn frames(body: &[u8]) -> Vec<Vec<u8>> {
    let regular = 4 + FRAME as usize + 16;
    let mut out: Vec<Vec<u8>> = body[..3 * regular]
        .chunks(regular)
        .map(<[u8]>::to_vec)
        .collect();
    out.push(body[3 * regular..].to_vec());
    out
}

fn variant(e: &EnvelopeError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap().to_owned()
}

#[test]
fn every_single_byte_change_is_refused() {
    let (pt, msg) = message();
    let k = kek(1);
    assert_eq!(decrypt(&[&k], options(FRAME, 1), &msg).unwrap(), pt);
    let (_, header_len) = split(&msg);
    let mut header_errors = BTreeSet::new();
    let mut body_errors = BTreeSet::new();
    for i in 0..msg.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = msg.clone();
            bad[i] ^= flip;
            let threads = if i % 2 == 0 { 1 } else { 2 };
            let err = decrypt(&[&k], options(FRAME, threads), &bad)
                .expect_err(&format!("byte {i} ^ {flip:#x} accepted"));
            let text = err.to_string();
            assert!(!text.is_empty());
            if i < header_len {
                header_errors.insert(variant(&err));
            } else {
                // Any change to the body is corruption, and says so.
                assert_eq!(err.class(), ErrorClass::Corrupt, "byte {i}: {err}");
                assert!(text.starts_with("corrupt message"), "{text}");
                body_errors.insert(variant(&err));
            }
        }
    }
    // The header's fields fail in their own ways: version, algorithm, commitment, MAC,
    // unwrap, syntax.
    for expected in [
        "UnsupportedVersion",
        "UnsupportedAlgorithm",
        "Malformed",
        "Commitment",
        "HeaderMac",
        "NoDataKey",
    ] {
        assert!(header_errors.contains(expected), "{header_errors:?}");
    }
    for expected in ["FrameAuth", "FrameOrder"] {
        assert!(body_errors.contains(expected), "{body_errors:?}");
    }
}

#[test]
fn dropped_duplicated_reordered_and_truncated_frames_are_refused() {
    let (_, msg) = message();
    let k = kek(1);
    let (_, hl) = split(&msg);
    let head = &msg[..hl];
    let f = frames(&msg[hl..]);
    let build = |order: &[usize]| {
        let mut m = head.to_vec();
        for &i in order {
            m.extend_from_slice(&f[i]);
        }
        m
    };
    let cases: [(&str, Vec<u8>); 4] = [
        ("dropped", build(&[0, 2, 3])),
        ("duplicated", build(&[0, 1, 1, 2, 3])),
        ("reordered", build(&[0, 2, 1, 3])),
        ("final dropped", build(&[0, 1, 2])),
    ];
    for threads in [1, 2] {
        for (what, bad) in &cases {
            let err = decrypt(&[&k], options(FRAME, threads), bad).unwrap_err();
            match (*what, &err) {
                (
                    "dropped",
                    EnvelopeError::FrameOrder {
                        expected: 2,
                        found: 3,
                    },
                )
                | (
                    "duplicated",
                    EnvelopeError::FrameOrder {
                        expected: 3,
                        found: 2,
                    },
                )
                | (
                    "reordered",
                    EnvelopeError::FrameOrder {
                        expected: 2,
                        found: 3,
                    },
                )
                | ("final dropped", EnvelopeError::Truncated { seq: 4 }) => {}
                _ => panic!("{what}: {err:?}"),
            }
            assert!(err.to_string().contains("frame"), "{err}");
        }
    }
    // Every cut inside the final frame is a truncation.
    let whole = build(&[0, 1, 2, 3]);
    for cut in whole.len() - f[3].len()..whole.len() {
        let err = decrypt(&[&k], options(FRAME, 1), &whole[..cut]).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Truncated { seq: 4 }),
            "{cut}: {err:?}"
        );
    }
    // Data after the final frame.
    let mut trailing = whole.clone();
    trailing.push(0);
    assert!(matches!(
        decrypt(&[&k], options(FRAME, 1), &trailing).unwrap_err(),
        EnvelopeError::TrailingData
    ));
    // A frame spliced from another message under the same key and context.
    let (_, other) = message();
    let (_, ohl) = split(&other);
    let of = frames(&other[ohl..]);
    let mut spliced = head.to_vec();
    for part in [&f[0], &of[1], &f[2], &f[3]] {
        spliced.extend_from_slice(part);
    }
    assert!(matches!(
        decrypt(&[&k], options(FRAME, 2), &spliced).unwrap_err(),
        EnvelopeError::FrameAuth { seq: 2 }
    ));
    // A regular frame turned into a final one (truncation with a forged marker).
    let seq_len = &f[1][..4];
    assert_eq!(seq_len, 2u32.to_be_bytes());
    let mut f2 = Vec::new();
    f2.extend_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
    f2.extend_from_slice(&2u32.to_be_bytes());
    f2.extend_from_slice(&FRAME.to_be_bytes());
    f2.extend_from_slice(&f[1][4..]);
    let mut marked = head.to_vec();
    marked.extend_from_slice(&f[0]);
    marked.extend_from_slice(&f2);
    assert!(matches!(
        decrypt(&[&k], options(FRAME, 1), &marked).unwrap_err(),
        EnvelopeError::FrameAuth { seq: 2 }
    ));
}

#[test]
fn a_swapped_wrapped_key_breaks_the_commitment() {
    let k = kek(1);
    let (_, a) = message();
    let (_, b) = message();
    let (mut ha, hla) = split(&a);
    let (hb, _) = split(&b);
    ha.wrapped_keys = hb.wrapped_keys.clone();
    let mut bad = ha.encode();
    bad.extend_from_slice(&a[hla..]);
    let err = decrypt(&[&k], options(FRAME, 1), &bad).unwrap_err();
    assert!(matches!(err, EnvelopeError::Commitment(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Corrupt);
    assert!(err.to_string().contains("key commitment"), "{err}");
}

#[test]
fn a_changed_context_is_refused() {
    let k = kek(1);
    let (_, msg) = message();
    let (mut h, hl) = split(&msg);
    h.context = context(&[("app", "payroll")]);
    let mut bad = h.encode();
    bad.extend_from_slice(&msg[hl..]);
    let err = decrypt(&[&k], options(FRAME, 1), &bad).unwrap_err();
    match &err {
        EnvelopeError::NoDataKey(attempts) => {
            assert_eq!(attempts.len(), 1);
            assert!(matches!(attempts[0].1, KekError::Rejected));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Corrupt);
    assert!(err.to_string().contains("encryption context"), "{err}");
}

/// The "invisible salamanders" attack: a sender gives each of two recipients a different
/// data key for the same body. Without commitment both would decrypt it (to different
/// plaintexts, or one of them to garbage that still authenticates under a crafted key);
/// with it, the recipient whose key does not match the commitment is refused.
#[test]
fn a_message_with_two_different_data_keys_is_refused_by_the_commitment() {
    let (k1, k2) = (kek(1), kek(2));
    let ctx = context(&[("x", "y")]);
    let dek_a = SecretKey::from_bytes([0xa1; 32]);
    let dek_b = SecretKey::from_bytes([0xb2; 32]);
    let aad = wrap_aad(0x0001, &ctx);
    let wa = block_on(k1.wrap(&dek_a, &aad)).unwrap();
    let wb = block_on(k2.wrap(&dek_b, &aad)).unwrap();
    let enc = Encryptor::from_parts(
        &dek_a,
        [7; 32],
        vec![wa, wb],
        ctx,
        Options {
            frame_len: FRAME,
            threads: 1,
            ..Options::default()
        },
    )
    .unwrap();
    let mut msg = Vec::new();
    enc.encrypt(&b"pay 100 to alice"[..], &mut msg).unwrap();
    assert_eq!(
        decrypt(&[&k1], options(FRAME, 1), &msg).unwrap(),
        b"pay 100 to alice"
    );
    let err = decrypt(&[&k2], options(FRAME, 1), &msg).unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::Commitment(by) if by.starts_with("local:")),
        "{err:?}"
    );
}

#[test]
fn errors_and_debug_output_carry_no_secrets() {
    let k = kek(1);
    let marker = b"MARKER-SECRET-7f3a";
    let mut pt = plaintext(40);
    pt.extend_from_slice(marker);
    let msg = encrypt(&[&k], context(&[]), options(FRAME, 1), &pt);
    let mut bad = msg.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = decrypt(&[&k], options(FRAME, 1), &bad).unwrap_err();
    let shown = format!("{err} {err:?} {k:?}");
    assert!(!shown.contains("MARKER"), "{shown}");
    assert!(!shown.contains(&"01".repeat(32)), "{shown}");
    let enc = block_on(keyhaven_envelope::Encryptor::new(
        &[&k],
        context(&[]),
        Options::default(),
    ))
    .unwrap();
    assert!(
        !format!("{enc:?}").contains("SecretKey("),
        "Debug shows only the header"
    );
}

#[test]
fn frame_surgery_at_a_batch_boundary_is_refused() {
    // 16-byte frames travel in batches of 256: cut, drop and flip around the first
    // boundary, with one and two threads.
    let k = kek(1);
    let pt = plaintext(600 * FRAME as usize + 3);
    let msg = encrypt(&[&k], context(&[]), options(FRAME, 1), &pt);
    let (_, hl) = split(&msg);
    let regular = 4 + FRAME as usize + 16;
    let frame_at = |seq: usize| hl + (seq - 1) * regular;
    let mut dropped = msg[..frame_at(256)].to_vec();
    dropped.extend_from_slice(&msg[frame_at(257)..]);
    let cut = msg[..frame_at(257)].to_vec();
    let mut flipped = msg.clone();
    flipped[frame_at(300) + 10] ^= 1;
    for threads in [1, 2] {
        let opts = options(FRAME, threads);
        assert_eq!(decrypt(&[&k], opts, &msg).unwrap(), pt);
        assert!(matches!(
            decrypt(&[&k], opts, &dropped).unwrap_err(),
            EnvelopeError::FrameOrder {
                expected: 256,
                found: 257
            }
        ));
        assert!(matches!(
            decrypt(&[&k], opts, &cut).unwrap_err(),
            EnvelopeError::Truncated { seq: 257 }
        ));
        assert!(matches!(
            decrypt(&[&k], opts, &flipped).unwrap_err(),
            EnvelopeError::FrameAuth { seq: 300 }
        ));
    }
}
