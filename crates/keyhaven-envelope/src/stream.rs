//! Encrypting and decrypting streams: the header, then frames sealed or opened in parallel
//! with a bounded number in flight.

use std::collections::BTreeMap;
use std::io::{IoSlice, Read, Write};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use keyhaven_crypto::{SecretKey, fill_random};

use crate::cache::DataKeyCache;
use crate::error::{EnvelopeError, KekError};
use crate::format::{
    ALG_AES256GCM_HKDF_SHA256_COMMIT, DEFAULT_FRAME_LEN, EncryptionContext, FINAL_MARKER,
    FramePrefix, Header, MAX_FRAME_LEN, MESSAGE_ID_LEN, WrappedKey, encode_frame_prefix,
    expect_end, parse_frame_prefix, wrap_aad,
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
    /// Batches in flight per thread (a batch is about 1 MiB of frames, at least one
    /// frame): memory is bounded by about `threads × window_per_thread × batch`.
    pub window_per_thread: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            frame_len: DEFAULT_FRAME_LEN,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            window_per_thread: 3,
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
        let per_batch = frames_per_batch(frame_len);
        // One byte beyond the batch's frames tells whether its last frame is the final one;
        // it is carried to the start of the next batch.
        let capacity = per_batch.saturating_mul(frame_len).saturating_add(1);
        let mut carry: Option<u8> = None;
        let mut seq: u32 = 0;
        let mut done = false;
        let mut total: u64 = 0;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<PlainBatch>, EnvelopeError> {
            if done {
                return Ok(None);
            }
            let mut buf = pool.get(capacity);
            let mut filled = 0;
            if let (Some(byte), Some(first)) = (carry.take(), buf.first_mut()) {
                *first = byte;
                filled = 1;
            }
            let filled = fill(&mut input, &mut buf, filled)?;
            let (len, ends) = if filled == capacity {
                carry = buf.last().copied();
                (capacity - 1, false)
            } else {
                (filled, true)
            };
            let frames = u32::try_from(len.div_ceil(frame_len).max(1))
                .map_err(|_| EnvelopeError::TooLarge)?;
            let first_seq = seq.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
            seq = seq.checked_add(frames).ok_or(EnvelopeError::TooLarge)?;
            if seq == FINAL_MARKER {
                return Err(EnvelopeError::TooLarge);
            }
            done = ends;
            Ok(Some(PlainBatch {
                first_seq,
                buf,
                len,
                ends,
                tags: Vec::with_capacity(frames as usize),
            }))
        };
        let keys = &self.keys;
        let work = |mut batch: PlainBatch| {
            seal_batch(keys, &mut batch, frame_len)?;
            Ok(batch)
        };
        let consume = |batch: PlainBatch| {
            write_sealed_batch(&mut output, &batch, frame_len)?;
            total = total.saturating_add(batch.len as u64);
            pool.put(batch.buf);
            Ok(())
        };
        pipeline(&self.options, produce, work, consume)?;
        output.flush()?;
        Ok(total)
    }

    /// As [`Encryptor::encrypt`], for a regular file: each worker thread reads its own
    /// batches with positional reads, so that reading, not only sealing, is spread over
    /// the threads. The file must not change while it is read: a length other than the
    /// one it had at the start is an error, and the message is then incomplete.
    ///
    /// # Errors
    ///
    /// As [`Encryptor::encrypt`].
    pub fn encrypt_file<W: Write>(
        &self,
        input: &std::fs::File,
        mut output: W,
    ) -> Result<u64, EnvelopeError> {
        output.write_all(&self.header.encode())?;
        let frame_len = self.header.frame_len as usize;
        let per_batch = frames_per_batch(frame_len);
        let batch_len = per_batch.saturating_mul(frame_len);
        let capacity = batch_len.saturating_add(1);
        let file_len = input.metadata()?.len();
        if file_len.div_ceil(frame_len as u64) >= u64::from(FINAL_MARKER) {
            return Err(EnvelopeError::TooLarge);
        }
        let batches = file_len.div_ceil(batch_len as u64).max(1);
        let mut next = 0u64;
        let mut total: u64 = 0;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<(u64, Vec<u8>)>, EnvelopeError> {
            if next == batches {
                return Ok(None);
            }
            next += 1;
            Ok(Some((next - 1, pool.get(capacity))))
        };
        let keys = &self.keys;
        let work = |(k, mut buf): (u64, Vec<u8>)| {
            let offset = k.saturating_mul(batch_len as u64);
            let filled = fill_at(input, &mut buf, offset)?;
            let ends = k + 1 == batches;
            let expected = if ends {
                usize::try_from(file_len - offset).map_err(|_| EnvelopeError::TooLarge)?
            } else {
                capacity
            };
            if filled != expected {
                return Err(changed_while_read());
            }
            let first_seq = u32::try_from(k.saturating_mul(per_batch as u64) + 1)
                .map_err(|_| EnvelopeError::TooLarge)?;
            let mut batch = PlainBatch {
                first_seq,
                buf,
                len: filled.min(batch_len),
                ends,
                tags: Vec::with_capacity(per_batch),
            };
            seal_batch(keys, &mut batch, frame_len)?;
            Ok(batch)
        };
        let consume = |batch: PlainBatch| {
            write_sealed_batch(&mut output, &batch, frame_len)?;
            total = total.saturating_add(batch.len as u64);
            pool.put(batch.buf);
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
        let per_batch = frames_per_batch(frame_len as usize);
        let regular = (frame_len as usize).saturating_add(4 + crate::format::TAG_LEN);
        // Room for the batch's regular frames and 8 bytes more, so that a final frame
        // (8 bytes longer than a regular one) always fits in one batch.
        let capacity = per_batch.saturating_mul(regular).saturating_add(8);
        let mut carry: Vec<u8> = Vec::new();
        let mut eof = false;
        let mut seq: u32 = 0;
        let mut done = false;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<CipherBatch>, EnvelopeError> {
            if done {
                return Ok(None);
            }
            let mut buf = pool.get(capacity);
            let mut filled = carry.len();
            buf.get_mut(..filled)
                .ok_or(EnvelopeError::TooLarge)?
                .copy_from_slice(&carry);
            carry.clear();
            if !eof {
                filled = fill(&mut input, &mut buf, filled)?;
                eof = filled < capacity;
            }
            let bytes = buf.get(..filled).unwrap_or_default();
            let parsed = parse_batch(bytes, eof, frame_len, seq, usize::MAX, &mut || {
                expect_end(&mut input)
            });
            seq = parsed.last_seq;
            if parsed.tail.is_none() && !parsed.ended {
                carry.extend_from_slice(bytes.get(parsed.used..).unwrap_or_default());
            }
            done = parsed.tail.is_some() || parsed.ended;
            Ok(Some(CipherBatch {
                buf,
                frames: parsed.frames,
                tail: parsed.tail,
            }))
        };
        let keys = &self.keys;
        let work = |mut batch: CipherBatch| {
            open_batch(keys, &mut batch)?;
            Ok(batch)
        };
        let mut total: u64 = 0;
        let consume = |batch: CipherBatch| {
            let n = write_opened_batch(&mut output, &batch)?;
            total = total.saturating_add(n);
            pool.put(batch.buf);
            match batch.tail {
                Some(e) => Err(e),
                None => Ok(()),
            }
        };
        pipeline(&self.options, produce, work, consume)?;
        output.flush()?;
        Ok(total)
    }

    /// As [`Decryptor::decrypt`], for a regular file that holds the message from its
    /// start (the body follows the header): each worker thread reads its own batches of
    /// frames with positional reads, so that reading is spread over the threads too. The
    /// same checks, in the same order, and the same streaming contract.
    ///
    /// # Errors
    ///
    /// As [`Decryptor::decrypt`].
    pub fn decrypt_file<W: Write>(
        &self,
        input: &std::fs::File,
        mut output: W,
    ) -> Result<u64, EnvelopeError> {
        let frame_len = self.header.frame_len;
        let per_batch = frames_per_batch(frame_len as usize);
        let regular = (frame_len as usize).saturating_add(4 + crate::format::TAG_LEN);
        let stride = per_batch.saturating_mul(regular) as u64;
        // A batch's frames, the 8 bytes by which a final frame is longer than a regular
        // one, and one byte to see whether anything follows a final frame.
        let capacity = per_batch.saturating_mul(regular).saturating_add(9);
        let body_start = self.header.encode().len() as u64;
        let body_len = input.metadata()?.len().saturating_sub(body_start);
        // A well-formed body is `n` regular frames and a final one of 28 to 28 + frame
        // size bytes; the last batch is the one that holds the final frame. A body of
        // another shape fails in the batch where a frame-by-frame reader fails.
        let n_regular = body_len.saturating_sub(28) / regular as u64;
        let batches = n_regular / per_batch as u64 + 1;
        let mut next = 0u64;
        let pool = Pool::default();
        let pool = &pool;
        let produce = || -> Result<Option<(u64, Vec<u8>)>, EnvelopeError> {
            if next == batches {
                return Ok(None);
            }
            next += 1;
            Ok(Some((next - 1, pool.get(capacity))))
        };
        let keys = &self.keys;
        let work = |(k, mut buf): (u64, Vec<u8>)| {
            let offset = body_start.saturating_add(k.saturating_mul(stride));
            let filled = fill_at(input, &mut buf, offset)?;
            let eof = filled < capacity;
            let last = k + 1 == batches;
            let seq = u32::try_from(k.saturating_mul(per_batch as u64))
                .map_err(|_| EnvelopeError::TooLarge)?;
            let bytes = buf.get(..filled).unwrap_or_default();
            let end = offset.saturating_add(filled as u64);
            let parsed = parse_batch(
                bytes,
                eof,
                frame_len,
                seq,
                if last { usize::MAX } else { per_batch },
                &mut || {
                    let mut one = [0u8; 1];
                    match fill_at(input, &mut one, end)? {
                        0 => Ok(()),
                        _ => Err(EnvelopeError::TrailingData),
                    }
                },
            );
            if parsed.tail.is_none() && !parsed.ended && last {
                // The file grew or shrank since its length was taken.
                return Err(changed_while_read());
            }
            let mut batch = CipherBatch {
                buf,
                frames: parsed.frames,
                tail: parsed.tail,
            };
            open_batch(keys, &mut batch)?;
            Ok(batch)
        };
        let mut total: u64 = 0;
        let consume = |batch: CipherBatch| {
            let n = write_opened_batch(&mut output, &batch)?;
            total = total.saturating_add(n);
            pool.put(batch.buf);
            match batch.tail {
                Some(e) => Err(e),
                None => Ok(()),
            }
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

/// Plaintext bytes a batch of frames aims at. A batch is read with one call, sealed or
/// opened in place while it sits in the core's cache, and written with one vectored call;
/// the threads hand each other batches, not frames.
const BATCH_BYTES: usize = 1 << 20;

/// Frames per batch: at least one, and at most 256 so that a batch's vectored write
/// (three slices per frame) stays within the kernel's limit of 1024.
fn frames_per_batch(frame_len: usize) -> usize {
    (BATCH_BYTES / frame_len.max(1)).clamp(1, 256)
}

/// Plaintext of consecutive frames, from `first_seq`; after sealing, their ciphertexts
/// and `tags`.
struct PlainBatch {
    first_seq: u32,
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    len: usize,
    /// Whether the last frame is the final one.
    ends: bool,
    tags: Vec<[u8; crate::format::TAG_LEN]>,
}

/// One frame inside a [`CipherBatch`]'s buffer, starting at `at`.
struct CipherFrame {
    seq: u32,
    at: usize,
    prefix: FramePrefix,
}

/// Consecutive frames as read (opened in place by the workers), and the error, if any,
/// that ended the input right after them.
struct CipherBatch {
    buf: Vec<u8>,
    frames: Vec<CipherFrame>,
    tail: Option<EnvelopeError>,
}

/// `data` cut into frames of `frame_len` bytes (the last one shorter); no data is one
/// empty frame.
fn frames_of(data: &[u8], frame_len: usize) -> Vec<&[u8]> {
    if data.is_empty() {
        return vec![data];
    }
    data.chunks(frame_len).collect()
}

/// As [`frames_of`], mutable.
fn frames_mut(data: &mut [u8], frame_len: usize) -> Vec<&mut [u8]> {
    if data.is_empty() {
        return vec![data];
    }
    data.chunks_mut(frame_len).collect()
}

/// Seals a batch's frames in place and records their tags.
fn seal_batch(
    keys: &MessageKeys,
    batch: &mut PlainBatch,
    frame_len: usize,
) -> Result<(), EnvelopeError> {
    let data = batch
        .buf
        .get_mut(..batch.len)
        .ok_or(EnvelopeError::TooLarge)?;
    let frames = frames_mut(data, frame_len);
    let last = frames.len().saturating_sub(1);
    let mut seq = batch.first_seq;
    for (i, frame) in frames.into_iter().enumerate() {
        let is_final = batch.ends && i == last;
        batch.tags.push(keys.seal_in_place(seq, is_final, frame)?);
        seq = seq.wrapping_add(1);
    }
    Ok(())
}

/// Writes a sealed batch: each frame's prefix, ciphertext and tag, in one vectored call
/// where the output allows.
fn write_sealed_batch<W: Write + ?Sized>(
    output: &mut W,
    batch: &PlainBatch,
    frame_len: usize,
) -> Result<(), EnvelopeError> {
    let data = batch.buf.get(..batch.len).ok_or(EnvelopeError::TooLarge)?;
    let frames = frames_of(data, frame_len);
    let last = frames.len().saturating_sub(1);
    let mut prefixes = vec![([0u8; 12], 0usize); frames.len()];
    for (i, ((prefix, used), frame)) in prefixes.iter_mut().zip(&frames).enumerate() {
        let seq = batch.first_seq.wrapping_add(i as u32);
        let len = u32::try_from(frame.len()).map_err(|_| EnvelopeError::TooLarge)?;
        *used = encode_frame_prefix(seq, batch.ends && i == last, len, prefix);
    }
    let mut slices = Vec::with_capacity(frames.len() * 3);
    for (((prefix, used), frame), tag) in prefixes.iter().zip(&frames).zip(&batch.tags) {
        slices.push(IoSlice::new(prefix.get(..*used).unwrap_or_default()));
        slices.push(IoSlice::new(frame));
        slices.push(IoSlice::new(tag));
    }
    write_all_vectored(output, &mut slices)?;
    Ok(())
}

/// Opens a batch's frames in place, in order; the first that fails is the error.
fn open_batch(keys: &MessageKeys, batch: &mut CipherBatch) -> Result<(), EnvelopeError> {
    for f in &batch.frames {
        let start = f.at + f.prefix.prefix_len;
        let sealed = batch
            .buf
            .get_mut(start..start + f.prefix.len + crate::format::TAG_LEN)
            .ok_or(EnvelopeError::FrameAuth { seq: f.seq })?;
        keys.open_in_place(f.seq, f.prefix.is_final, sealed)?;
    }
    Ok(())
}

/// Writes an opened batch's plaintexts in one vectored call where the output allows;
/// returns their length.
fn write_opened_batch<W: Write + ?Sized>(
    output: &mut W,
    batch: &CipherBatch,
) -> Result<u64, EnvelopeError> {
    let mut slices = Vec::with_capacity(batch.frames.len());
    let mut n = 0u64;
    for f in &batch.frames {
        let start = f.at + f.prefix.prefix_len;
        let plain = batch
            .buf
            .get(start..start + f.prefix.len)
            .ok_or(EnvelopeError::FrameAuth { seq: f.seq })?;
        slices.push(IoSlice::new(plain));
        n = n.saturating_add(plain.len() as u64);
    }
    write_all_vectored(output, &mut slices)?;
    Ok(n)
}

/// The frames [`parse_batch`] found.
struct Parsed {
    frames: Vec<CipherFrame>,
    /// The error that ends the message right after `frames`.
    tail: Option<EnvelopeError>,
    /// Bytes taken by `frames`; what follows belongs to the next batch.
    used: usize,
    /// Whether the last of `frames` is the final frame.
    ended: bool,
    /// The sequence number of the last frame parsed.
    last_seq: u32,
}

/// Parses up to `limit` frames from the start of `bytes`, the first one numbered
/// `seq + 1`, with the checks, in the order, of a frame-by-frame reader: `eof` says that
/// the input ends after `bytes`; `at_end` checks that nothing follows a final frame that
/// ends exactly at the end of `bytes` when the input goes on.
fn parse_batch(
    bytes: &[u8],
    eof: bool,
    frame_len: u32,
    mut seq: u32,
    limit: usize,
    at_end: &mut dyn FnMut() -> Result<(), EnvelopeError>,
) -> Parsed {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    let mut ended = false;
    let tail = loop {
        if frames.len() == limit {
            break None;
        }
        let next = match seq.checked_add(1) {
            Some(n) if n != FINAL_MARKER => n,
            _ => break Some(EnvelopeError::TooLarge),
        };
        let rest = bytes.get(pos..).unwrap_or_default();
        match parse_frame_prefix(rest, frame_len, next) {
            Err(e) => break Some(e),
            Ok(None) if eof => break Some(EnvelopeError::Truncated { seq: next }),
            Ok(None) => break None,
            Ok(Some(prefix)) => {
                seq = next;
                let at = pos;
                pos += prefix.total_len();
                if !prefix.is_final {
                    frames.push(CipherFrame { seq, at, prefix });
                    continue;
                }
                // Nothing may follow the final frame; that is checked before the final
                // frame is opened, as a frame-by-frame reader does.
                let trailing = if pos < bytes.len() {
                    Err(EnvelopeError::TrailingData)
                } else if eof {
                    Ok(())
                } else {
                    at_end()
                };
                match trailing {
                    Ok(()) => {
                        frames.push(CipherFrame { seq, at, prefix });
                        ended = true;
                        break None;
                    }
                    Err(e) => break Some(e),
                }
            }
        }
    };
    Parsed {
        frames,
        tail,
        used: pos,
        ended,
        last_seq: seq,
    }
}

fn changed_while_read() -> EnvelopeError {
    EnvelopeError::Io(std::io::Error::other(
        "the input file changed size while it was read",
    ))
}

/// Reads into `buf` from `offset` of `file` until `buf` is full or the file ends;
/// returns the bytes read.
fn fill_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<usize, EnvelopeError> {
    use std::os::unix::fs::FileExt as _;
    let mut filled = 0usize;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset.saturating_add(filled as u64)) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Io(e)),
        }
    }
    Ok(filled)
}

/// Batch buffers handed back by the writer for the reader to fill again: a reused buffer
/// is neither allocated nor zeroed again. At most [`POOL_MAX`] are kept; the pipeline's
/// window bounds how many exist.
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

    /// A buffer of exactly `len` bytes (contents unspecified).
    fn get(&self, len: usize) -> Vec<u8> {
        let mut buf = self.lock().pop().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        let mut bufs = self.lock();
        if bufs.len() < POOL_MAX {
            bufs.push(buf);
        }
    }
}

/// Reads into `buf` from `filled` until it is full or `input` ends; returns the bytes
/// of `buf` now filled.
fn fill<R: Read + ?Sized>(
    input: &mut R,
    buf: &mut [u8],
    mut filled: usize,
) -> Result<usize, EnvelopeError> {
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Io(e)),
        }
    }
    Ok(filled)
}

/// Writes all of `bufs` with as few (vectored) calls as `output` allows.
fn write_all_vectored<W: Write + ?Sized>(
    output: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match output.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
