//! keyhaven tokens of pods, cached until shortly before they expire.
//!
//! The provider cannot verify a ServiceAccount token itself (the server does, at login),
//! so the cache is keyed by a keyed hash of the token *itself* plus the login's role,
//! mount and server: only a caller that holds the very same token finds the entry.
//! Claims such as namespace or ServiceAccount name are never a key: anyone can write
//! them into an unsigned token. Kubelet reuses a pod's token for most of its lifetime,
//! so repeated mounts and rotation polls of a pod log in once per token.
//!
//! Concurrent mounts with the same key wait on one slot: the first logs in, the others
//! take its token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;

/// A cached token and when to stop using it.
struct Cached {
    token: SecretString,
    fresh_until: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The token cache.
pub struct TokenCache {
    key: hmac::Key,
    slots: Mutex<HashMap<[u8; 32], Slot>>,
    capacity: usize,
}

/// The part of a token's lifetime kept as a margin before it is replaced: a tenth,
/// and at least 10 seconds.
pub fn usable_for(ttl: Duration) -> Duration {
    let margin = (ttl / 10).max(Duration::from_secs(10));
    ttl.saturating_sub(margin)
}

impl TokenCache {
    /// A cache of at most `capacity` tokens, keyed with a fresh random key.
    pub fn new(capacity: usize) -> Result<TokenCache, aws_lc_rs::error::Unspecified> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Ok(TokenCache {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)?,
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    /// The cache key of a login.
    pub fn key_of(&self, jwt: &SecretString, role: &str, mount: &str, address: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [jwt.expose_secret(), role, mount, address] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn slot(&self, key: [u8; 32]) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = slots.get(&key) {
            return s.clone();
        }
        if slots.len() >= self.capacity {
            let now = Instant::now();
            // Drop what is stale or empty, and not in use.
            slots.retain(|_, s| match s.try_lock() {
                Ok(g) => g.as_ref().is_some_and(|c| c.fresh_until > now),
                Err(_) => true,
            });
            // Still full: drop the entry that expires first.
            if slots.len() >= self.capacity {
                let victim = slots
                    .iter()
                    .filter_map(|(k, s)| {
                        s.try_lock()
                            .ok()
                            .and_then(|g| g.as_ref().map(|c| (c.fresh_until, *k)))
                    })
                    .min()
                    .map(|(_, k)| k);
                if let Some(k) = victim {
                    slots.remove(&k);
                }
            }
        }
        let s = Slot::default();
        slots.insert(key, s.clone());
        s
    }

    /// The cached token for `key`, or a new one from `login`, which returns the token
    /// and how long it may be used. Whether the token came from the cache is returned too.
    pub async fn get_or_login<E, F>(
        &self,
        key: [u8; 32],
        login: F,
    ) -> Result<(SecretString, bool), E>
    where
        F: Future<Output = Result<(SecretString, Duration), E>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && c.fresh_until > Instant::now()
        {
            return Ok((c.token.clone(), true));
        }
        *guard = None;
        let (token, usable) = login.await?;
        if !usable.is_zero() {
            *guard = Some(Cached {
                token: token.clone(),
                fresh_until: Instant::now() + usable,
            });
        }
        Ok((token, false))
    }

    /// Forget the token for `key` (e.g. the server refused it: revoked).
    pub async fn forget(&self, key: [u8; 32]) {
        let slot = {
            let slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots.get(&key).cloned()
        };
        if let Some(s) = slot {
            *s.lock().await = None;
        }
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn concurrent_logins_coalesce_and_expire() {
        let cache = Arc::new(TokenCache::new(10).unwrap());
        let jwt = SecretString::from("jwt-a");
        let key = cache.key_of(&jwt, "app", "kubernetes", "http://x");
        assert_ne!(
            key,
            cache.key_of(
                &SecretString::from("jwt-b"),
                "app",
                "kubernetes",
                "http://x"
            )
        );
        assert_ne!(key, cache.key_of(&jwt, "other", "kubernetes", "http://x"));
        let logins = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, logins) = (cache.clone(), logins.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_login::<(), _>(key, async {
                        logins.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok((SecretString::from("khs.t"), Duration::from_secs(60)))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().0.expose_secret(), "khs.t");
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1, "one login for 20 mounts");
        tokio::time::advance(Duration::from_secs(61)).await;
        let (_, cached) = cache
            .get_or_login::<(), _>(key, async {
                Ok((SecretString::from("khs.u"), Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert!(!cached, "an expired token is replaced");
        cache.forget(key).await;
        let (t, cached) = cache
            .get_or_login::<(), _>(key, async {
                Ok((SecretString::from("khs.v"), Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert!(!cached);
        assert_eq!(t.expose_secret(), "khs.v");
        assert_eq!(
            usable_for(Duration::from_secs(3600)),
            Duration::from_secs(3240)
        );
        assert_eq!(usable_for(Duration::from_secs(5)), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(3).unwrap();
        for i in 0..10 {
            let key = cache.key_of(&SecretString::from(format!("jwt-{i}")), "r", "m", "a");
            cache
                .get_or_login::<(), _>(key, async {
                    Ok((SecretString::from("t"), Duration::from_secs(60)))
                })
                .await
                .unwrap();
        }
        assert!(cache.len() <= 3, "{}", cache.len());
    }
}
