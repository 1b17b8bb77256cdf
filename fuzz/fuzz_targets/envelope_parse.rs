//! The envelope header and frame parsers (docs/envelope-format.md). First byte even:
//! arbitrary bytes as a message; the header parser and the frame reader never panic, an
//! accepted header re-encodes to exactly the bytes it consumed, and the decryptor's batch
//! frame parser agrees with the frame reader on every frame. First byte odd: a valid
//! message (under a fixed local key, plaintext from the input) after up to 8 byte edits
//! taken from the input; decryption never panics, and whenever it succeeds it yields the
//! original plaintext.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keyhaven_crypto::SecretKey;
use keyhaven_envelope::format::{parse_frame_prefix, read_frame, wrap_aad};
use keyhaven_envelope::{
    Decryptor, EncryptionContext, Encryptor, EnvelopeError, Header, KekProvider, LocalKek,
    Options,
};
use libfuzzer_sys::fuzz_target;

/// Local KEKs never wait: their futures are ready at the first poll.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a local KEK future was pending"),
    }
}

fn opts() -> Options {
    Options {
        frame_len: 16,
        threads: 1,
        window_per_thread: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut input = rest;
        let Ok(header) = Header::read_from(&mut input) else {
            return;
        };
        let consumed = rest.len() - input.len();
        assert_eq!(header.encode(), rest[..consumed]);
        for seq in 1..=64 {
            // The batch parser of the decryptor agrees with the frame reader.
            let parsed = parse_frame_prefix(input, header.frame_len, seq);
            match read_frame(&mut input, header.frame_len, seq) {
                Ok(f) => {
                    let p = parsed.unwrap().unwrap();
                    assert_eq!(p.is_final, f.is_final);
                    assert_eq!(p.len + 16, f.sealed.len());
                    if f.is_final {
                        break;
                    }
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    match parsed {
                        Ok(None) => assert!(matches!(e, EnvelopeError::Truncated { .. })),
                        Ok(Some(_)) => panic!("the batch parser accepted a frame: {e}"),
                        Err(p) => assert_eq!(p.to_string(), e.to_string()),
                    }
                    break;
                }
            }
        }
        return;
    }
    let (edits, plaintext) = rest.split_at(rest.len().min(16));
    let kek = LocalKek::new(&SecretKey::from_bytes([7; 32])).unwrap();
    let mut ctx = EncryptionContext::new();
    ctx.insert("k", "v").unwrap();
    let dek = SecretKey::from_bytes([9; 32]);
    let wrapped = kek
        .wrap_with_nonce(&dek, &wrap_aad(1, &ctx), &[3; 12])
        .unwrap();
    let enc = Encryptor::from_parts(&dek, [5; 32], vec![wrapped], ctx, opts()).unwrap();
    let mut message = Vec::new();
    enc.encrypt(plaintext, &mut message).unwrap();
    let original = message.clone();
    for pair in edits.chunks_exact(2) {
        let at = usize::from(pair[0]) * message.len() / 256;
        message[at] ^= pair[1];
    }
    let mut input = &message[..];
    let keks: [&dyn KekProvider; 1] = [&kek];
    let Ok(dec) = ready(Decryptor::open(&mut input, &keks, opts())) else {
        assert_ne!(message, original);
        return;
    };
    let mut out = Vec::new();
    match dec.decrypt(input, &mut out) {
        Ok(_) => assert_eq!(out, plaintext),
        Err(e) => {
            assert_ne!(message, original);
            assert!(e.to_string().starts_with("corrupt message") || e.to_string().contains("I/O"));
        }
    }
});
