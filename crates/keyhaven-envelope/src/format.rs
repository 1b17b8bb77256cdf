//! The byte layout of an envelope message: header and frames (docs/envelope-format.md).
//!
//! Everything here is pure parsing and serialization of untrusted bytes; nothing decrypts.
//! Parsers check every length against the limits below before allocating.

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::EnvelopeError;

/// The four bytes every message starts with.
pub const MAGIC: [u8; 4] = *b"KHEV";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Algorithm 0x0001: AES-256-GCM frames, HKDF-SHA256 key derivation, HMAC-SHA256 header
/// MAC, 256-bit key commitment.
pub const ALG_AES256GCM_HKDF_SHA256_COMMIT: u16 = 0x0001;
/// Length of the random message id.
pub const MESSAGE_ID_LEN: usize = 32;
/// Length of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Length of the header MAC.
pub const HEADER_MAC_LEN: usize = 32;
/// Length of a frame's authentication tag.
pub const TAG_LEN: usize = 16;
/// The frame size written by default (plaintext bytes per frame).
pub const DEFAULT_FRAME_LEN: u32 = 64 * 1024;
/// The largest frame size a reader accepts (4 MiB): it bounds the memory of a reader.
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;
/// The sequence-number field of a final frame.
pub const FINAL_MARKER: u32 = 0xFFFF_FFFF;
/// The largest number of encryption-context entries.
pub const MAX_CONTEXT_ENTRIES: usize = 64;
/// The largest encoded context (entry bytes, without the count).
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;
/// The largest number of wrapped data keys.
pub const MAX_WRAPPED_KEYS: usize = 16;
/// The largest key reference (`mount/name` or a local key id).
pub const MAX_KEY_REF_LEN: usize = 512;
/// The largest wrapped data key.
pub const MAX_WRAPPED_LEN: usize = 4096;

/// Who wrapped a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KekKind {
    /// A keyhaven (or Vault/OpenBao) transit key, named `mount/name`.
    Transit,
    /// A local 256-bit key from a key file, named by its key id.
    Local,
}

impl KekKind {
    /// The byte that encodes it.
    pub fn code(self) -> u8 {
        match self {
            KekKind::Transit => 1,
            KekKind::Local => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(KekKind::Transit),
            2 => Some(KekKind::Local),
            _ => None,
        }
    }

    /// `transit` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            KekKind::Transit => "transit",
            KekKind::Local => "local",
        }
    }
}

/// One wrapped copy of the message's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The kind of key-encryption key.
    pub kind: KekKind,
    /// The KEK's name, independent of any server address: `mount/name` for transit, the key
    /// id for a local key.
    pub key_ref: String,
    /// The KEK version that wrapped it.
    pub version: u32,
    /// The wrapped data key: for transit the ciphertext string `vault:vN:…` as UTF-8
    /// bytes, for a local key `nonce ‖ ciphertext ‖ tag`.
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// `transit:mount/name v3` / `local:0123… v1`, for messages.
    pub fn label(&self) -> String {
        format!("{}:{} v{}", self.kind.as_str(), self.key_ref, self.version)
    }
}

/// The encryption context: public, authenticated key/value pairs, kept sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidContext`] for an empty or duplicate key, or when the context
    /// grows past its limits.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), EnvelopeError> {
        let key = key.into();
        if key.is_empty() {
            return Err(EnvelopeError::InvalidContext("a context key is empty"));
        }
        if key.len() > usize::from(u16::MAX) || self.0.contains_key(&key) {
            return Err(EnvelopeError::InvalidContext(
                "a context key is repeated or too long",
            ));
        }
        let value = value.into();
        if value.len() > usize::from(u16::MAX) {
            return Err(EnvelopeError::InvalidContext("a context value is too long"));
        }
        self.0.insert(key, value);
        if self.0.len() > MAX_CONTEXT_ENTRIES || self.entry_bytes() > MAX_CONTEXT_BYTES {
            return Err(EnvelopeError::InvalidContext(
                "the encryption context is too large",
            ));
        }
        Ok(())
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn entry_bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| 4 + k.len() + v.len()).sum()
    }

    /// The canonical encoding: `count u16 ‖ (klen u16 ‖ key ‖ vlen u16 ‖ value)*`, sorted by
    /// key bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entry_bytes());
        put_u16(&mut out, self.0.len());
        for (k, v) in &self.0 {
            put_u16(&mut out, k.len());
            out.extend_from_slice(k.as_bytes());
            put_u16(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The algorithm id.
    pub algorithm: u16,
    /// The random message id.
    pub message_id: [u8; MESSAGE_ID_LEN],
    /// Plaintext bytes per frame.
    pub frame_len: u32,
    /// The encryption context.
    pub context: EncryptionContext,
    /// The key commitment.
    pub commitment: [u8; COMMITMENT_LEN],
    /// The header MAC over [`Header::authenticated_bytes`].
    pub mac: [u8; HEADER_MAC_LEN],
    /// The wrapped data keys (not covered by the MAC: each is authenticated by its KEK, and
    /// the commitment ties the data key it holds to this message).
    pub wrapped_keys: Vec<WrappedKey>,
}

/// The associated data every wrapping of a data key is bound to:
/// `"keyhaven-envelope/v1 data key" ‖ 0x00 ‖ alg u16 ‖ encoded context`.
pub fn wrap_aad(algorithm: u16, context: &EncryptionContext) -> Vec<u8> {
    let mut out = b"keyhaven-envelope/v1 data key\0".to_vec();
    out.extend_from_slice(&algorithm.to_be_bytes());
    out.extend_from_slice(&context.encode());
    out
}

impl Header {
    /// The bytes the MAC covers: magic through commitment.
    pub fn authenticated_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.algorithm.to_be_bytes());
        out.extend_from_slice(&self.message_id);
        out.extend_from_slice(&self.frame_len.to_be_bytes());
        out.extend_from_slice(&self.context.encode());
        out.extend_from_slice(&self.commitment);
        out
    }

    /// The whole header as written.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.authenticated_bytes();
        out.extend_from_slice(&self.mac);
        put_u16(&mut out, self.wrapped_keys.len());
        for k in &self.wrapped_keys {
            out.push(k.kind.code());
            put_u16(&mut out, k.key_ref.len());
            out.extend_from_slice(k.key_ref.as_bytes());
            out.extend_from_slice(&k.version.to_be_bytes());
            put_u16(&mut out, k.ciphertext.len());
            out.extend_from_slice(&k.ciphertext);
        }
        out
    }

    /// Reads and checks a header's syntax from `input`, consuming exactly its bytes.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Malformed`] naming what is wrong, or [`EnvelopeError::Io`].
    pub fn read_from<R: Read + ?Sized>(input: &mut R) -> Result<Header, EnvelopeError> {
        let mut r = Reader { input };
        let magic: [u8; 4] = r.array("the magic bytes")?;
        if magic != MAGIC {
            return Err(malformed("not a keyhaven envelope (wrong magic bytes)"));
        }
        let [version] = r.array::<1>("the format version")?;
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let algorithm = u16::from_be_bytes(r.array("the algorithm id")?);
        if algorithm != ALG_AES256GCM_HKDF_SHA256_COMMIT {
            return Err(EnvelopeError::UnsupportedAlgorithm(algorithm));
        }
        let message_id = r.array("the message id")?;
        let frame_len = u32::from_be_bytes(r.array("the frame size")?);
        if frame_len == 0 || frame_len > MAX_FRAME_LEN {
            return Err(malformed("the frame size is 0 or larger than 4 MiB"));
        }
        let count = r.u16("the context")?;
        if usize::from(count) > MAX_CONTEXT_ENTRIES {
            return Err(malformed("too many encryption-context entries"));
        }
        let mut context = BTreeMap::new();
        let mut total = 0usize;
        let mut previous: Option<String> = None;
        for _ in 0..count {
            let k = r.string("a context key", usize::from(u16::MAX))?;
            let v = r.string("a context value", usize::from(u16::MAX))?;
            total = total.saturating_add(4 + k.len() + v.len());
            if total > MAX_CONTEXT_BYTES {
                return Err(malformed("the encryption context is larger than 16 KiB"));
            }
            if k.is_empty()
                || previous
                    .as_ref()
                    .is_some_and(|p| p.as_bytes() >= k.as_bytes())
            {
                return Err(malformed(
                    "the encryption context is not sorted, or has an empty or repeated key",
                ));
            }
            previous = Some(k.clone());
            context.insert(k, v);
        }
        let commitment = r.array("the key commitment")?;
        let mac = r.array("the header MAC")?;
        let n = usize::from(r.u16("the wrapped key count")?);
        if n == 0 || n > MAX_WRAPPED_KEYS {
            return Err(malformed("the wrapped key count is 0 or more than 16"));
        }
        let mut wrapped_keys = Vec::with_capacity(n);
        for _ in 0..n {
            let [code] = r.array::<1>("a wrapped key's kind")?;
            let kind = KekKind::from_code(code)
                .ok_or_else(|| malformed("a wrapped key has an unknown kind"))?;
            let key_ref = r.string("a wrapped key's key reference", MAX_KEY_REF_LEN)?;
            if key_ref.is_empty() {
                return Err(malformed("a wrapped key has an empty key reference"));
            }
            let version = u32::from_be_bytes(r.array("a wrapped key's version")?);
            let len = usize::from(r.u16("a wrapped key's length")?);
            if len == 0 || len > MAX_WRAPPED_LEN {
                return Err(malformed(
                    "a wrapped key is empty or longer than 4096 bytes",
                ));
            }
            let ciphertext = r.bytes(len, "a wrapped key")?;
            wrapped_keys.push(WrappedKey {
                kind,
                key_ref,
                version,
                ciphertext,
            });
        }
        Ok(Header {
            algorithm,
            message_id,
            frame_len,
            context: EncryptionContext(context),
            commitment,
            mac,
            wrapped_keys,
        })
    }
}

/// One frame as read from the body, still encrypted.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The sequence number (from 1).
    pub seq: u32,
    /// Whether this is the final frame.
    pub is_final: bool,
    /// `ciphertext ‖ tag`.
    pub sealed: Vec<u8>,
}

/// Reads the frame with sequence number `expected_seq`.
///
/// Regular frame: `seq u32 ‖ ciphertext (frame_len) ‖ tag (16)`. Final frame:
/// `0xFFFFFFFF ‖ seq u32 ‖ length u32 ‖ ciphertext (length) ‖ tag (16)`.
///
/// # Errors
///
/// [`EnvelopeError::Truncated`] when the body ends early (including no final frame),
/// [`EnvelopeError::FrameOrder`] for a sequence number other than `expected_seq`,
/// [`EnvelopeError::Malformed`] for an impossible length.
pub fn read_frame<R: Read + ?Sized>(
    input: &mut R,
    frame_len: u32,
    expected_seq: u32,
) -> Result<RawFrame, EnvelopeError> {
    read_frame_into(input, frame_len, expected_seq, Vec::new())
}

/// As [`read_frame`], reusing `buf` (any contents) for the frame's bytes.
///
/// # Errors
///
/// As [`read_frame`].
pub fn read_frame_into<R: Read + ?Sized>(
    input: &mut R,
    frame_len: u32,
    expected_seq: u32,
    mut buf: Vec<u8>,
) -> Result<RawFrame, EnvelopeError> {
    let mut r = Reader { input };
    let first = u32::from_be_bytes(r.frame_array(expected_seq)?);
    let (seq, is_final, len) = if first == FINAL_MARKER {
        let seq = u32::from_be_bytes(r.frame_array(expected_seq)?);
        let len = u32::from_be_bytes(r.frame_array(expected_seq)?);
        if len > frame_len {
            return Err(malformed("the final frame is longer than the frame size"));
        }
        (seq, true, len)
    } else {
        (first, false, frame_len)
    };
    if seq != expected_seq {
        return Err(EnvelopeError::FrameOrder {
            expected: expected_seq,
            found: seq,
        });
    }
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(TAG_LEN))
        .ok_or_else(|| malformed("a frame length is out of range"))?;
    // Resizing a reused buffer zero-fills only what it grows by.
    buf.resize(total, 0);
    r.fill(&mut buf, "a frame")
        .map_err(|e| truncated_or(e, expected_seq))?;
    Ok(RawFrame {
        seq,
        is_final,
        sealed: buf,
    })
}

/// A frame's header, parsed from the start of a buffer by [`parse_frame_prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// Whether this is the final frame.
    pub is_final: bool,
    /// Bytes before the ciphertext: 4 for a regular frame, 12 for the final one.
    pub prefix_len: usize,
    /// Ciphertext bytes (the plaintext length), without the tag.
    pub len: usize,
}

impl FramePrefix {
    /// The whole frame's length: prefix, ciphertext and tag.
    pub fn total_len(&self) -> usize {
        self.prefix_len + self.len + TAG_LEN
    }
}

/// Parses the frame with sequence number `expected_seq` at the start of `bytes`, which
/// may hold less than the whole frame: `Ok(None)` means more bytes are needed (at the end
/// of the input, that is [`EnvelopeError::Truncated`]). The checks and their order are
/// those of [`read_frame`].
///
/// # Errors
///
/// [`EnvelopeError::Malformed`] for a final frame longer than the frame size,
/// [`EnvelopeError::FrameOrder`] for a sequence number other than `expected_seq`.
pub fn parse_frame_prefix(
    bytes: &[u8],
    frame_len: u32,
    expected_seq: u32,
) -> Result<Option<FramePrefix>, EnvelopeError> {
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    };
    let Some(first) = word(0) else {
        return Ok(None);
    };
    let (seq, is_final, len, prefix_len) = if first == FINAL_MARKER {
        let (Some(seq), Some(len)) = (word(4), word(8)) else {
            return Ok(None);
        };
        if len > frame_len {
            return Err(malformed("the final frame is longer than the frame size"));
        }
        (seq, true, len, 12)
    } else {
        (first, false, frame_len, 4)
    };
    if seq != expected_seq {
        return Err(EnvelopeError::FrameOrder {
            expected: expected_seq,
            found: seq,
        });
    }
    let len = usize::try_from(len).map_err(|_| malformed("a frame length is out of range"))?;
    let prefix = FramePrefix {
        is_final,
        prefix_len,
        len,
    };
    Ok((bytes.len() >= prefix.total_len()).then_some(prefix))
}

/// Writes the frame header of frame `seq` into `out`; returns its length (4 or 12).
pub fn encode_frame_prefix(seq: u32, is_final: bool, len: u32, out: &mut [u8; 12]) -> usize {
    let regular = [seq];
    let last = [FINAL_MARKER, seq, len];
    let words: &[u32] = if is_final { &last } else { &regular };
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_be_bytes());
    }
    words.len() * 4
}

/// Checks that `input` has nothing after the final frame.
///
/// # Errors
///
/// [`EnvelopeError::TrailingData`] if it has.
pub fn expect_end<R: Read + ?Sized>(input: &mut R) -> Result<(), EnvelopeError> {
    let mut one = [0u8; 1];
    loop {
        match input.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(EnvelopeError::TrailingData),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Io(e)),
        }
    }
}

/// The frame header bytes of frame `seq` (what precedes `ciphertext ‖ tag`).
pub fn frame_prefix(seq: u32, is_final: bool, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    if is_final {
        out.extend_from_slice(&FINAL_MARKER.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    // Callers check lengths against u16 limits first; saturating keeps this total.
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

fn malformed(what: &'static str) -> EnvelopeError {
    EnvelopeError::Malformed(what)
}

fn truncated_or(e: EnvelopeError, seq: u32) -> EnvelopeError {
    match e {
        EnvelopeError::TruncatedHeader(_) => EnvelopeError::Truncated { seq },
        other => other,
    }
}

struct Reader<'a, R: Read + ?Sized> {
    input: &'a mut R,
}

impl<R: Read + ?Sized> Reader<'_, R> {
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), EnvelopeError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                EnvelopeError::TruncatedHeader(what)
            } else {
                EnvelopeError::Io(e)
            }
        })
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], EnvelopeError> {
        let mut a = [0u8; N];
        self.fill(&mut a, what)?;
        Ok(a)
    }

    fn frame_array<const N: usize>(&mut self, seq: u32) -> Result<[u8; N], EnvelopeError> {
        let mut a = [0u8; N];
        self.fill(&mut a, "a frame")
            .map_err(|e| truncated_or(e, seq))?;
        Ok(a)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<Vec<u8>, EnvelopeError> {
        let mut v = vec![0u8; len];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<String, EnvelopeError> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(EnvelopeError::Malformed(
                "a string in the header is too long",
            ));
        }
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes)
            .map_err(|_| EnvelopeError::Malformed("a string in the header is not UTF-8"))
    }
}
