//! Shared helpers: local KEKs, block_on, encrypt/decrypt to memory.

use keyhaven_crypto::SecretKey;
use keyhaven_envelope::{
    Decryptor, EncryptionContext, Encryptor, EnvelopeError, KekProvider, LocalKek, Options,
};

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn kek(byte: u8) -> LocalKek {
    LocalKek::new(&SecretKey::from_bytes([byte; 32])).unwrap()
}

pub fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    let mut c = EncryptionContext::new();
    for (k, v) in pairs {
        c.insert(*k, *v).unwrap();
    }
    c
}

pub fn options(frame_len: u32, threads: usize) -> Options {
    Options {
        frame_len,
        threads,
        ..Options::default()
    }
}

pub fn encrypt(
    keks: &[&dyn KekProvider],
    ctx: EncryptionContext,
    opts: Options,
    plaintext: &[u8],
) -> Vec<u8> {
    let enc = block_on(Encryptor::new(keks, ctx, opts)).unwrap();
    let mut out = Vec::new();
    let n = enc.encrypt(plaintext, &mut out).unwrap();
    assert_eq!(n, plaintext.len() as u64);
    out
}

/// Decrypts to memory; the plaintext is returned only when the whole message verified.
pub fn decrypt(
    keks: &[&dyn KekProvider],
    opts: Options,
    message: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut input = message;
    let dec = block_on(Decryptor::open(&mut input, keks, opts))?;
    let mut out = Vec::new();
    dec.decrypt(input, &mut out)?;
    Ok(out)
}

/// A deterministic plaintext of `len` bytes.
pub fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}
