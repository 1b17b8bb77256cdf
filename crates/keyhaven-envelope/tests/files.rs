//! Regular files through `encrypt_file` and `decrypt_file`, whose worker threads read
//! their own batches at their offsets: the same messages and the same refusals, in the
//! same order, as the streaming calls.

use std::io::Write;

use keyhaven_envelope::{Decryptor, EncryptionContext, Encryptor, EnvelopeError, Options};

use crate::support::{block_on, decrypt, encrypt, kek, options, plaintext};

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn encrypt_file(opts: Options, pt: &[u8]) -> Vec<u8> {
    let k = kek(1);
    let input = file_with(pt);
    let enc = block_on(Encryptor::new(&[&k], EncryptionContext::new(), opts)).unwrap();
    let mut out = Vec::new();
    let n = enc.encrypt_file(input.as_file(), &mut out).unwrap();
    assert_eq!(n, pt.len() as u64);
    out
}

fn decrypt_file(opts: Options, message: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let k = kek(1);
    let written = file_with(message);
    let file = written.reopen().unwrap();
    let mut reader = std::io::BufReader::new(&file);
    let dec = block_on(Decryptor::open(&mut reader, &[&k], opts))?;
    let mut out = Vec::new();
    dec.decrypt_file(&file, &mut out)?;
    Ok(out)
}

/// Both ways of decrypting give the same plaintext or the same error.
fn same_outcome(opts: Options, message: &[u8]) -> Result<Vec<u8>, String> {
    let k = kek(1);
    let streamed = decrypt(&[&k], opts, message).map_err(|e| format!("{e:?}"));
    let positional = decrypt_file(opts, message).map_err(|e| format!("{e:?}"));
    assert_eq!(streamed, positional, "{} bytes", message.len());
    positional
}

#[test]
fn files_round_trip_across_batch_boundaries() {
    let frame = 64usize;
    let batch = 256 * frame;
    for threads in [1, 2, 3] {
        let opts = options(frame as u32, threads);
        for len in [
            0,
            1,
            frame,
            batch - 1,
            batch,
            batch + 1,
            2 * batch,
            3 * batch + 7,
        ] {
            let pt = plaintext(len);
            let msg = encrypt_file(opts, &pt);
            // Same layout as the streaming encryptor (only the message id differs).
            assert_eq!(
                msg.len(),
                encrypt(&[&kek(1)], EncryptionContext::new(), opts, &pt).len()
            );
            assert_eq!(
                decrypt(&[&kek(1)], options(frame as u32, 1), &msg).unwrap(),
                pt
            );
            assert!(same_outcome(opts, &msg).unwrap() == pt, "size {len}");
        }
    }
}

#[test]
fn files_refuse_damage_as_the_stream_does() {
    const FRAME: u32 = 16;
    let pt = plaintext(600 * FRAME as usize + 3);
    let msg = encrypt(&[&kek(1)], EncryptionContext::new(), options(FRAME, 1), &pt);
    let mut input = &msg[..];
    keyhaven_envelope::Header::read_from(&mut input).unwrap();
    let hl = msg.len() - input.len();
    let regular = 4 + FRAME as usize + 16;
    let frame_at = |seq: usize| hl + (seq - 1) * regular;
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Byte flips all over the body, including prefixes, tags and the final frame.
    for at in (hl..msg.len()).step_by(41).chain(msg.len() - 30..msg.len()) {
        let mut bad = msg.clone();
        bad[at] ^= 0x80;
        cases.push(bad);
    }
    // Cuts: at frame and batch boundaries, inside frames, inside the final frame.
    for cut in [
        hl,
        hl + 3,
        frame_at(2),
        frame_at(256),
        frame_at(257),
        frame_at(257) + 5,
        frame_at(513),
        frame_at(601),
        frame_at(601) + 11,
        msg.len() - 1,
    ] {
        cases.push(msg[..cut].to_vec());
    }
    // Dropped and duplicated frames at the batch boundary, and trailing bytes.
    let mut dropped = msg[..frame_at(256)].to_vec();
    dropped.extend_from_slice(&msg[frame_at(257)..]);
    cases.push(dropped);
    let mut duplicated = msg[..frame_at(258)].to_vec();
    duplicated.extend_from_slice(&msg[frame_at(257)..]);
    cases.push(duplicated);
    for extra in [1usize, 20, 5000] {
        let mut trailing = msg.clone();
        trailing.extend(std::iter::repeat_n(0u8, extra));
        cases.push(trailing);
    }
    for threads in [1, 2] {
        let opts = options(FRAME, threads);
        assert!(same_outcome(opts, &msg).unwrap() == pt);
        for bad in &cases {
            assert!(
                same_outcome(opts, bad).is_err(),
                "{} bytes accepted",
                bad.len()
            );
        }
    }
}
