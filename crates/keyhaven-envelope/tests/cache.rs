//! The data-key cache: reuse within the bounds of uses and age, per KEK set and context.

use std::time::Duration;

use keyhaven_envelope::{DataKeyCache, Encryptor, Header};

use crate::support::{block_on, context, decrypt, kek, options};

fn wrapped(
    cache: &DataKeyCache,
    ctx: &[(&str, &str)],
    k: &keyhaven_envelope::LocalKek,
) -> (Vec<u8>, Header) {
    let enc = block_on(Encryptor::new_cached(
        cache,
        &[k],
        context(ctx),
        options(32, 1),
    ))
    .unwrap();
    let mut out = Vec::new();
    enc.encrypt(&b"small message"[..], &mut out).unwrap();
    let h = Header::read_from(&mut &out[..]).unwrap();
    (out, h)
}

#[test]
fn a_cached_data_key_serves_at_most_max_uses_messages() {
    let k = kek(1);
    let cache = DataKeyCache::new(3, Duration::from_secs(3600), 8);
    let hs: Vec<Header> = (0..7)
        .map(|_| wrapped(&cache, &[("a", "1")], &k).1)
        .collect();
    let w = |i: usize| hs[i].wrapped_keys.clone();
    // Uses 1-3 share a data key (same wrapping), 4-6 the next, 7 a third.
    assert_eq!(w(0), w(1));
    assert_eq!(w(1), w(2));
    assert_ne!(w(2), w(3));
    assert_eq!(w(3), w(5));
    assert_ne!(w(5), w(6));
    // Each message still has its own id.
    assert_ne!(hs[0].message_id, hs[1].message_id);
    assert_ne!(hs[0].commitment, hs[1].commitment);
}

#[test]
fn the_cache_is_keyed_by_context_and_bounded_by_age() {
    let k = kek(1);
    let cache = DataKeyCache::new(100, Duration::from_secs(3600), 8);
    let (m1, h1) = wrapped(&cache, &[("a", "1")], &k);
    let (_, h2) = wrapped(&cache, &[("a", "2")], &k);
    assert_ne!(h1.wrapped_keys, h2.wrapped_keys);
    assert_eq!(cache.len(), 2);
    assert_eq!(
        decrypt(&[&k], options(32, 1), &m1).unwrap(),
        b"small message"
    );

    let expired = DataKeyCache::new(100, Duration::ZERO, 8);
    let (_, a) = wrapped(&expired, &[], &k);
    let (_, b) = wrapped(&expired, &[], &k);
    assert_ne!(a.wrapped_keys, b.wrapped_keys);

    let one = DataKeyCache::new(100, Duration::from_secs(3600), 1);
    wrapped(&one, &[("a", "1")], &k);
    wrapped(&one, &[("a", "2")], &k);
    assert_eq!(one.len(), 1);
}
