//! The async API writes and reads the same bytes as the blocking one, and refuses the
//! same damage.

use keyhaven_envelope::{Decryptor, Encryptor, EnvelopeError};

use crate::support::{block_on, context, decrypt, encrypt, kek, options, plaintext};

async fn decrypt_async(
    k: &keyhaven_envelope::LocalKek,
    message: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut input = message;
    let dec = Decryptor::open_async(&mut input, &[k], options(64, 1)).await?;
    let mut out = Vec::new();
    dec.decrypt_async(input, &mut out).await?;
    Ok(out)
}

#[test]
fn async_and_blocking_messages_are_interchangeable() {
    let k = kek(4);
    for len in [0usize, 1, 64, 65, 200] {
        let pt = plaintext(len);
        let enc = block_on(Encryptor::new(
            &[&k],
            context(&[("a", "b")]),
            options(64, 2),
        ))
        .unwrap();
        let mut sync_out = Vec::new();
        enc.encrypt(&pt[..], &mut sync_out).unwrap();
        let mut async_out = Vec::new();
        block_on(enc.encrypt_async(&pt[..], &mut async_out)).unwrap();
        assert_eq!(sync_out, async_out, "{len}");
        assert_eq!(block_on(decrypt_async(&k, &sync_out)).unwrap(), pt);
        assert_eq!(decrypt(&[&k], options(64, 1), &async_out).unwrap(), pt);
    }
}

#[test]
fn async_decryption_refuses_damage() {
    let k = kek(4);
    let msg = encrypt(&[&k], context(&[]), options(64, 1), &plaintext(150));
    for cut in [10, msg.len() - 100, msg.len() - 1] {
        let err = block_on(decrypt_async(&k, &msg[..cut])).unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::TruncatedHeader(_) | EnvelopeError::Truncated { .. }
            ),
            "{cut}: {err:?}"
        );
    }
    let mut bad = msg.clone();
    let at = bad.len() - 20;
    bad[at] ^= 1;
    assert!(matches!(
        block_on(decrypt_async(&k, &bad)).unwrap_err(),
        EnvelopeError::FrameAuth { seq: 3 }
    ));
    let mut trailing = msg.clone();
    trailing.push(1);
    assert!(matches!(
        block_on(decrypt_async(&k, &trailing)).unwrap_err(),
        EnvelopeError::TrailingData
    ));
}
