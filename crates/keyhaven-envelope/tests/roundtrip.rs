//! Round trips of every size around frame boundaries, with one and several threads and
//! one or two KEKs.

use keyhaven_envelope::{EnvelopeError, Header, KekKind, rewrap_header};

use crate::support::{block_on, context, decrypt, encrypt, kek, options, plaintext};

#[test]
fn round_trips_from_empty_to_several_frames_plus_one_byte() {
    let k = kek(1);
    let frame = 64u32;
    let sizes = [0usize, 1, 63, 64, 65, 127, 128, 129, 4 * 64, 4 * 64 + 1];
    for threads in [1, 2, 3] {
        for &len in &sizes {
            let pt = plaintext(len);
            let msg = encrypt(
                &[&k],
                context(&[("app", "x")]),
                options(frame, threads),
                &pt,
            );
            let back = decrypt(&[&k], options(frame, threads), &msg).unwrap();
            assert_eq!(back, pt, "size {len}, {threads} threads");
            // Decryption on another thread count gives the same result.
            assert_eq!(decrypt(&[&k], options(frame, 1), &msg).unwrap(), pt);
        }
    }
}

#[test]
fn the_default_frame_size_round_trips_a_few_frames() {
    let k = kek(1);
    let pt = plaintext(3 * 65536 + 1);
    let msg = encrypt(&[&k], context(&[]), Default::default(), &pt);
    assert_eq!(decrypt(&[&k], Default::default(), &msg).unwrap(), pt);
}

#[test]
fn either_of_two_keks_opens_the_message_and_a_third_does_not() {
    let (a, b, c) = (kek(1), kek(2), kek(3));
    let pt = plaintext(1000);
    let msg = encrypt(&[&a, &b], context(&[("t", "1")]), options(100, 2), &pt);
    let header = Header::read_from(&mut &msg[..]).unwrap();
    assert_eq!(header.wrapped_keys.len(), 2);
    assert!(header.wrapped_keys.iter().all(|w| w.kind == KekKind::Local));
    assert_eq!(decrypt(&[&a], options(100, 1), &msg).unwrap(), pt);
    assert_eq!(decrypt(&[&b], options(100, 1), &msg).unwrap(), pt);
    let err = decrypt(&[&c], options(100, 1), &msg).unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::NoDataKey(a) if a.is_empty()),
        "{err:?}"
    );
    assert!(err.to_string().contains("no key-encryption key"), "{err}");
}

#[test]
fn rewrap_replaces_the_keys_and_keeps_the_body() {
    let (a, b) = (kek(1), kek(2));
    let pt = plaintext(500);
    let msg = encrypt(&[&a], context(&[]), options(64, 1), &pt);
    let mut input = &msg[..];
    let header = Header::read_from(&mut input).unwrap();
    let body = input;
    let new = block_on(rewrap_header(&header, &[&a], Some(&[&b]))).unwrap();
    assert_eq!(new.wrapped_keys.len(), 1);
    assert_eq!(new.wrapped_keys[0].key_ref, b.id());
    let mut rewritten = new.encode();
    rewritten.extend_from_slice(body);
    assert!(rewritten.ends_with(body));
    assert_eq!(decrypt(&[&b], options(64, 1), &rewritten).unwrap(), pt);
    assert!(decrypt(&[&a], options(64, 1), &rewritten).is_err());
    // A local KEK cannot rewrap in place: the header stays as it was.
    let same = block_on(rewrap_header(&header, &[&a], None)).unwrap();
    assert_eq!(same, header);
}

#[test]
fn the_context_is_public_and_authenticated() {
    let k = kek(1);
    let ctx = context(&[("tenant", "acme"), ("purpose", "backup")]);
    let msg = encrypt(&[&k], ctx.clone(), options(64, 1), b"x");
    let header = Header::read_from(&mut &msg[..]).unwrap();
    assert_eq!(header.context, ctx);
    let pairs: Vec<_> = header.context.iter().collect();
    assert_eq!(pairs, [("purpose", "backup"), ("tenant", "acme")]);
}

/// Hands out at most 1 to 7 bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Takes at most 1000 bytes per (vectored) write, cutting slices anywhere.
struct Stingy(Vec<u8>);

impl std::io::Write for Stingy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1000);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let mut left = 1000;
        for b in bufs {
            let n = b.len().min(left);
            self.0.extend_from_slice(&b[..n]);
            left -= n;
        }
        Ok(1000 - left)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn batches_of_frames_round_trip_across_their_boundaries_with_short_reads_and_writes() {
    use keyhaven_envelope::{Decryptor, Encryptor};
    let k = kek(1);
    let frame = 64usize;
    // Frames travel in batches of 256 at this frame size: sizes around one and two
    // batches, including a final frame that starts at a batch's end (decryption carries
    // its first bytes over to the next batch).
    let batch = 256 * frame;
    let sizes = [
        batch - 1,
        batch,
        batch + 1,
        batch + frame,
        2 * batch,
        2 * batch + 5,
    ];
    for threads in [1, 2] {
        for &len in &sizes {
            let pt = plaintext(len);
            let opts = options(frame as u32, threads);
            let enc = block_on(Encryptor::new(&[&k], context(&[]), opts)).unwrap();
            let mut msg = Stingy(Vec::new());
            let n = enc
                .encrypt(Trickle { data: &pt, step: 0 }, &mut msg)
                .unwrap();
            assert_eq!(n, len as u64);
            // The same bytes as through a plain reader and writer, but for the message id.
            let plain = encrypt(&[&k], context(&[]), opts, &pt);
            assert_eq!(msg.0.len(), plain.len(), "size {len}");
            let mut input = Trickle {
                data: &msg.0,
                step: 3,
            };
            let dec = block_on(Decryptor::open(&mut input, &[&k], opts)).unwrap();
            let mut back = Stingy(Vec::new());
            assert_eq!(dec.decrypt(input, &mut back).unwrap(), len as u64);
            assert!(back.0 == pt, "size {len}, {threads} threads");
            assert_eq!(
                decrypt(&[&k], options(frame as u32, 1), &msg.0).unwrap(),
                pt
            );
        }
    }
}
