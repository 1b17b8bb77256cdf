//! Encrypting and decrypting streams: the header, then frames sealed or opened in parallel
//! with a bounded number in flight.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use keyhaven_crypto::{SecretKey, fill_random};

use crate::cache::DataKeyCache;
use crate::error::{EnvelopeError, KekError};
use crate::format::{
    ALG_AES256GCM_HKDF_SHA256_COMMIT, DEFAULT_FRAME_LEN, EncryptionContext, FINAL_MARKER, Header,
    MAX_FRAME_LEN, MESSAGE_ID_LEN, WrappedKey, expect_end, frame_prefix, read_frame_into, wrap_aad,
};
use crate::kek::KekProvider;
use crate::keys::MessageKeys;

/// How a message is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Plaintext bytes per frame (encryption only; 1 ..= 4 MiB).
    pub frame_len: u32,
    /// Threads that seal or open frames. 1 runs everything on the calling thread.
    pub threads: usize,
    /// Frames in flight per thread: memory is bounded by about
    /// `threads × window_per_thread × 2 × frame_len`.
    pub window_per_thread: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            frame_len: DEFAULT_FRAME_LEN,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            window_per_thread: 4,
        }
    }
}

impl Options {
    fn check(&self) -> Result<(), EnvelopeError> {
        if self.frame_len == 0 || self.frame_len > MAX_FRAME_LEN {
            return Err(EnvelopeError::InvalidArgument(
                "the frame size must be between 1 byte and 4 MiB".into(),
            ));
        }
        Ok(())
    }

    fn window(&self) -> usize {
        self.threads
            .max(1)
            .saturating_mul(self.window_per_thread.max(1))
    }
}

/// Encrypts one message.
///
/// ```no_run
/// # async fn demo(kek: &keyhaven_envelope::LocalKek) -> Result<(), keyhaven_envelope::EnvelopeError> {
/// use keyhaven_envelope::{EncryptionContext, Encryptor, Options};
/// let mut context = EncryptionContext::new();
/// context.insert("purpose", "backup")?;
/// let enc = Encryptor::new(&[kek], context, Options::default()).await?;
/// enc.encrypt(std::io::stdin(), std::io::stdout())?;
/// # Ok(()) }
/// ```
pub struct Encryptor {
    header: Header,
    keys: MessageKeys,
    options: Options,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Prepares a message: a fresh data key from the first KEK (transit: `datakey/plaintext`),
    /// wrapped by each of the others too, and a random message id.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::NoKek`] without KEKs, [`EnvelopeError::Kek`] when one fails.
    pub async fn new(
        keks: &[&dyn KekProvider],
        context: EncryptionContext,
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        options.check()?;
        let (dek, wrapped) = data_key(keks, &context).await?;
        let mut message_id = [0u8; MESSAGE_ID_LEN];
        fill_random(&mut message_id)?;
        Self::from_parts(&dek, message_id, wrapped, context, options)
    }

    /// As [`Encryptor::new`], but takes the data key (and its wrappings) from `cache` while
    /// the cached one is within its bounds of uses and age. Each message still gets its own
    /// message id and therefore its own keys.
    ///
    /// # Errors
    ///
    /// As [`Encryptor::new`].
    pub async fn new_cached(
        cache: &DataKeyCache,
        keks: &[&dyn KekProvider],
        context: EncryptionContext,
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        options.check()?;
        let cache_key = DataKeyCache::key_for(keks, &context);
        let (dek, wrapped) = match cache.take(&cache_key) {
            Some(hit) => hit,
            None => {
                let (dek, wrapped) = data_key(keks, &context).await?;
                cache.put(cache_key, &dek, &wrapped);
                (dek, wrapped)
            }
        };
        let mut message_id = [0u8; MESSAGE_ID_LEN];
        fill_random(&mut message_id)?;
        Self::from_parts(&dek, message_id, wrapped, context, options)
    }

    /// Builds a message from given parts. Golden vectors and tests only: a repeated message id
    /// with the same data key repeats nonces.
    #[doc(hidden)]
    pub fn from_parts(
        dek: &SecretKey,
        message_id: [u8; MESSAGE_ID_LEN],
        wrapped_keys: Vec<WrappedKey>,
        context: EncryptionContext,
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        options.check()?;
        let algorithm = ALG_AES256GCM_HKDF_SHA256_COMMIT;
        let keys = MessageKeys::derive(dek, &message_id, algorithm)?;
        let mut header = Header {
            algorithm,
            message_id,
            frame_len: options.frame_len,
            context,
            commitment: keys.commitment(),
            mac: [0u8; 32],
            wrapped_keys,
        };
        header.mac = keys.header_mac(&header.authenticated_bytes());
        Ok(Self {
            header,
            keys,
            options,
        })
    }

    /// The message's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub(crate) fn keys(&self) -> &MessageKeys {
        &self.keys
    }

    /// Writes the header and the encrypted frames of everything `input` yields to `output`;
    /// returns the number of plaintext bytes.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Io`] when reading or writing fails; [`EnvelopeError::TooLarge`]
    /// past 2^32−2 frames.
    pub fn encrypt<R: Read + Send, W: Write>(
        &self,
        mut input: R,
        mut output: W,
    ) -> Result<u64, EnvelopeError> {
        output.write_all(&self.header.encode())?;
        let frame_len = self.header.frame_len as usize;
        let mut seq: u32 = 0;
        let mut lookahead: Option<Vec<u8>> = None;
        let mut done = false;
        let mut total: u64 = 0;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<(u32, bool, Vec<u8>)>, EnvelopeError> {
            if done {
                return Ok(None);
            }
            let chunk = match lookahead.take() {
                Some(c) => c,
                None => read_chunk(&mut input, frame_len, pool.get())?,
            };
            let is_final = if chunk.len() < frame_len {
                true
            } else {
                let next = read_chunk(&mut input, frame_len, pool.get())?;
                let last = next.is_empty();
                if !last {
                    lookahead = Some(next);
                }
                last
            };
            seq = seq.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
            if seq == FINAL_MARKER {
                return Err(EnvelopeError::TooLarge);
            }
            done = is_final;
            Ok(Some((seq, is_final, chunk)))
        };
        let keys = &self.keys;
        let work = |(seq, is_final, mut chunk): (u32, bool, Vec<u8>)| {
            let n = chunk.len();
            let len = u32::try_from(n).map_err(|_| EnvelopeError::TooLarge)?;
            keys.seal_frame(seq, is_final, &mut chunk)?;
            Ok((frame_prefix(seq, is_final, len), chunk, n))
        };
        let consume = |(prefix, sealed, n): (Vec<u8>, Vec<u8>, usize)| {
            output.write_all(&prefix)?;
            output.write_all(&sealed)?;
            total = total.saturating_add(n as u64);
            pool.put(sealed);
            Ok(())
        };
        pipeline(&self.options, produce, work, consume)?;
        output.flush()?;
        Ok(total)
    }
}

async fn data_key(
    keks: &[&dyn KekProvider],
    context: &EncryptionContext,
) -> Result<(SecretKey, Vec<WrappedKey>), EnvelopeError> {
    let (first, rest) = keks.split_first().ok_or(EnvelopeError::NoKek)?;
    let aad = wrap_aad(ALG_AES256GCM_HKDF_SHA256_COMMIT, context);
    let (dek, entry) = first
        .generate(&aad)
        .await
        .map_err(|source| EnvelopeError::Kek {
            key: first.label(),
            source,
        })?;
    let mut wrapped = vec![entry];
    for kek in rest {
        wrapped.push(
            kek.wrap(&dek, &aad)
                .await
                .map_err(|source| EnvelopeError::Kek {
                    key: kek.label(),
                    source,
                })?,
        );
    }
    if wrapped.len() > crate::format::MAX_WRAPPED_KEYS {
        return Err(EnvelopeError::InvalidArgument(
            "at most 16 key-encryption keys per message".into(),
        ));
    }
    Ok((dek, wrapped))
}

/// Decrypts one message: [`Decryptor::open`] reads the header and recovers the data key,
/// [`Decryptor::decrypt`] the frames.
///
/// # Streaming contract
///
/// `decrypt` writes a frame's plaintext only after that frame authenticated, in order, but
/// it writes as it goes: when a later frame fails (tampering, truncation), the output has
/// already received the verified frames before it. A caller that must never expose a
/// partial message writes to a temporary place and keeps it only when `decrypt` returns
/// `Ok` (the CLI does that for files, and holds back up to 64 MiB on stdout).
pub struct Decryptor {
    header: Header,
    keys: MessageKeys,
    opened_with: String,
    options: Options,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("header", &self.header)
            .field("opened_with", &self.opened_with)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Reads the header from `input` and opens it with the first KEK that can unwrap one of
    /// its data keys, in the order of `keks`; checks the key commitment and the header MAC.
    ///
    /// # Errors
    ///
    /// Header syntax errors; [`EnvelopeError::NoDataKey`] listing every attempt when no
    /// KEK could open a data key; [`EnvelopeError::Commitment`] when an unwrapped data key
    /// does not match the commitment; [`EnvelopeError::HeaderMac`].
    pub async fn open<R: Read + ?Sized>(
        input: &mut R,
        keks: &[&dyn KekProvider],
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        let header = Header::read_from(input)?;
        let (dek, opened_with) = unwrap_any(&header, keks).await?;
        Self::with_data_key(header, &dek, opened_with, options)
    }

    /// As [`Decryptor::open`], for a header already read (the body follows it).
    ///
    /// # Errors
    ///
    /// As [`Decryptor::open`].
    pub async fn from_header(
        header: Header,
        keks: &[&dyn KekProvider],
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        let (dek, opened_with) = unwrap_any(&header, keks).await?;
        Self::with_data_key(header, &dek, opened_with, options)
    }

    fn with_data_key(
        header: Header,
        dek: &SecretKey,
        opened_with: String,
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        let keys = MessageKeys::derive(dek, &header.message_id, header.algorithm)?;
        if !keys.commitment_matches(&header.commitment) {
            return Err(EnvelopeError::Commitment(opened_with));
        }
        if !keys.header_mac_ok(&header.authenticated_bytes(), &header.mac) {
            return Err(EnvelopeError::HeaderMac);
        }
        Ok(Self {
            header,
            keys,
            opened_with,
            options,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub(crate) fn keys(&self) -> &MessageKeys {
        &self.keys
    }

    /// The wrapped key that opened the message (`kind:ref vN`).
    pub fn opened_with(&self) -> &str {
        &self.opened_with
    }

    /// Decrypts the frames that follow the header in `input` into `output`, and checks that
    /// nothing follows the final frame; returns the number of plaintext bytes. See the
    /// streaming contract above.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::FrameAuth`], [`EnvelopeError::FrameOrder`],
    /// [`EnvelopeError::Truncated`], [`EnvelopeError::TrailingData`], I/O errors.
    pub fn decrypt<R: Read + Send, W: Write>(
        &self,
        mut input: R,
        mut output: W,
    ) -> Result<u64, EnvelopeError> {
        let frame_len = self.header.frame_len;
        let mut seq: u32 = 0;
        let mut done = false;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<_>, EnvelopeError> {
            if done {
                return Ok(None);
            }
            seq = seq.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
            if seq == FINAL_MARKER {
                return Err(EnvelopeError::TooLarge);
            }
            let frame = read_frame_into(&mut input, frame_len, seq, pool.get())?;
            if frame.is_final {
                expect_end(&mut input)?;
                done = true;
            }
            Ok(Some(frame))
        };
        let keys = &self.keys;
        let work = |f: crate::format::RawFrame| keys.open_frame(f.seq, f.is_final, f.sealed);
        let mut total: u64 = 0;
        let consume = |plain: Vec<u8>| {
            output.write_all(&plain)?;
            total = total.saturating_add(plain.len() as u64);
            pool.put(plain);
            Ok(())
        };
        pipeline(&self.options, produce, work, consume)?;
        output.flush()?;
        Ok(total)
    }
}

async fn unwrap_any(
    header: &Header,
    keks: &[&dyn KekProvider],
) -> Result<(SecretKey, String), EnvelopeError> {
    let aad = wrap_aad(header.algorithm, &header.context);
    let mut attempts: Vec<(String, KekError)> = Vec::new();
    for kek in keks {
        for entry in header.wrapped_keys.iter().filter(|e| kek.matches(e)) {
            match kek.unwrap(entry, &aad).await {
                Ok(dek) => return Ok((dek, entry.label())),
                Err(e) => attempts.push((entry.label(), e)),
            }
        }
    }
    Err(EnvelopeError::NoDataKey(attempts))
}

/// Rewrites a header's wrapped keys; the body that follows is unchanged.
///
/// Without `replace_with`, every wrapped key whose KEK is in `keks` and can rewrap
/// (transit) is rewrapped under the KEK's newest version; the data key never leaves the
/// server. With `replace_with`, the data key is opened with `keks` (commitment and header
/// MAC checked) and wrapped by exactly those KEKs instead.
///
/// # Errors
///
/// As [`Decryptor::open`], and [`EnvelopeError::Kek`] when a KEK fails.
pub async fn rewrap_header(
    header: &Header,
    keks: &[&dyn KekProvider],
    replace_with: Option<&[&dyn KekProvider]>,
) -> Result<Header, EnvelopeError> {
    let aad = wrap_aad(header.algorithm, &header.context);
    let mut out = header.clone();
    match replace_with {
        None => {
            for entry in &mut out.wrapped_keys {
                let Some(kek) = keks.iter().find(|k| k.matches(entry)) else {
                    continue;
                };
                let rewrapped =
                    kek.rewrap(entry, &aad)
                        .await
                        .map_err(|source| EnvelopeError::Kek {
                            key: entry.label(),
                            source,
                        })?;
                if let Some(new) = rewrapped {
                    *entry = new;
                }
            }
        }
        Some(new_keks) => {
            if new_keks.is_empty() {
                return Err(EnvelopeError::NoKek);
            }
            let (dek, opened_with) = unwrap_any(header, keks).await?;
            // Verify before re-wrapping, so a crafted header is not given fresh wrappings.
            Decryptor::with_data_key(header.clone(), &dek, opened_with, Options::default())?;
            let mut wrapped = Vec::with_capacity(new_keks.len());
            for kek in new_keks {
                wrapped.push(
                    kek.wrap(&dek, &aad)
                        .await
                        .map_err(|source| EnvelopeError::Kek {
                            key: kek.label(),
                            source,
                        })?,
                );
            }
            if wrapped.len() > crate::format::MAX_WRAPPED_KEYS {
                return Err(EnvelopeError::InvalidArgument(
                    "at most 16 key-encryption keys per message".into(),
                ));
            }
            out.wrapped_keys = wrapped;
        }
    }
    Ok(out)
}

/// Buffers handed back by the writer for the reader to fill again: reused buffers are
/// already initialized, so filling them costs one copy and no zeroing. At most
/// [`POOL_MAX`] are kept; the pipeline's window bounds how many exist.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

const POOL_MAX: usize = 64;

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn get(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    fn put(&self, buf: Vec<u8>) {
        let mut bufs = self.lock();
        if bufs.len() < POOL_MAX {
            bufs.push(buf);
        }
    }
}

/// Up to `len` bytes of `input` (fewer only at its end) in `buf`, which keeps room for
/// the tag so that the frame is sealed in place without another allocation.
fn read_chunk<R: Read + ?Sized>(
    input: &mut R,
    len: usize,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, EnvelopeError> {
    buf.reserve_exact(
        len.saturating_add(crate::format::TAG_LEN)
            .saturating_sub(buf.len()),
    );
    // Resizing a reused buffer zero-fills only what it grows by.
    buf.resize(len, 0);
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Io(e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Runs `produce → work → consume` over items: `produce` and `consume` in order on the
/// calling side, `work` on `options.threads` threads, with at most `options.window()` items
/// between being produced and consumed. The first failure in item order wins.
fn pipeline<J, O, P, F, C>(
    options: &Options,
    mut produce: P,
    work: F,
    mut consume: C,
) -> Result<(), EnvelopeError>
where
    J: Send,
    O: Send,
    P: FnMut() -> Result<Option<J>, EnvelopeError> + Send,
    F: Fn(J) -> Result<O, EnvelopeError> + Sync,
    C: FnMut(O) -> Result<(), EnvelopeError>,
{
    if options.threads <= 1 {
        while let Some(job) = produce()? {
            consume(work(job)?)?;
        }
        return Ok(());
    }
    let window = options.window();
    type Item<T> = (u64, Result<T, EnvelopeError>);
    std::thread::scope(|scope| {
        let (token_tx, token_rx) = sync_channel::<()>(window);
        for _ in 0..window {
            // The channel has room for exactly `window` tokens.
            let _ = token_tx.send(());
        }
        let (job_tx, job_rx) = sync_channel::<Item<J>>(window);
        let (out_tx, out_rx) = sync_channel::<Item<O>>(window);
        scope.spawn(move || {
            let mut index = 0u64;
            while token_rx.recv().is_ok() {
                let item = match produce() {
                    Ok(Some(job)) => Ok(job),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if job_tx.send((index, item)).is_err() || failed {
                    break;
                }
                index += 1;
            }
        });
        let job_rx: Arc<Mutex<Receiver<Item<J>>>> = Arc::new(Mutex::new(job_rx));
        let work = &work;
        for _ in 0..options.threads {
            let job_rx = Arc::clone(&job_rx);
            let out_tx = out_tx.clone();
            scope.spawn(move || {
                loop {
                    let next = {
                        let guard = match job_rx.lock() {
                            Ok(g) => g,
                            Err(poisoned) => poisoned.into_inner(),
                        };
                        guard.recv()
                    };
                    let Ok((index, item)) = next else { break };
                    let out = item.and_then(work);
                    if out_tx.send((index, out)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(out_tx);
        let mut pending: BTreeMap<u64, Result<O, EnvelopeError>> = BTreeMap::new();
        let mut next = 0u64;
        for (index, out) in &out_rx {
            pending.insert(index, out);
            while let Some(out) = pending.remove(&next) {
                consume(out?)?;
                next += 1;
                // The producer may have finished and dropped its receiver.
                let _ = token_tx.send(());
            }
        }
        Ok(())
    })
}
