//! The same messages over tokio's `AsyncRead`/`AsyncWrite`.
//!
//! Frames are sealed and opened on the calling task, one at a time (64 KiB of AES-GCM is
//! tens of microseconds); for large files and several cores, the blocking API on a
//! blocking thread is faster. The bytes are exactly those of the blocking API.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::error::EnvelopeError;
use crate::format::{
    FINAL_MARKER, Header, MAX_CONTEXT_ENTRIES, MAX_FRAME_LEN, MAX_WRAPPED_KEYS, TAG_LEN,
    frame_prefix, read_frame,
};
use crate::kek::KekProvider;
use crate::stream::{Decryptor, Encryptor, Options};

fn io_or_truncated(e: std::io::Error, what: &'static str) -> EnvelopeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        EnvelopeError::TruncatedHeader(what)
    } else {
        EnvelopeError::Io(e)
    }
}

/// Appends exactly `n` bytes of `input` to `buf`.
async fn take<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    n: usize,
    what: &'static str,
) -> Result<(), EnvelopeError> {
    let start = buf.len();
    buf.resize(start + n, 0);
    let dst = buf.get_mut(start..).unwrap_or_default();
    input
        .read_exact(dst)
        .await
        .map_err(|e| io_or_truncated(e, what))?;
    Ok(())
}

async fn take_u16<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    what: &'static str,
) -> Result<usize, EnvelopeError> {
    take(input, buf, 2, what).await?;
    let b = buf.get(buf.len() - 2..).unwrap_or_default();
    Ok(usize::from(u16::from_be_bytes([
        b.first().copied().unwrap_or(0),
        b.get(1).copied().unwrap_or(0),
    ])))
}

/// Reads exactly the header's bytes (bounded by the format's limits) and parses them.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    input: &mut R,
) -> Result<Header, EnvelopeError> {
    let mut buf = Vec::with_capacity(256);
    take(
        input,
        &mut buf,
        4 + 1 + 2 + 32 + 4,
        "the fixed header fields",
    )
    .await?;
    let pairs = take_u16(input, &mut buf, "the context").await?;
    if pairs > MAX_CONTEXT_ENTRIES {
        return Err(EnvelopeError::Malformed(
            "too many encryption-context entries",
        ));
    }
    for _ in 0..pairs {
        let k = take_u16(input, &mut buf, "a context key").await?;
        take(input, &mut buf, k, "a context key").await?;
        let v = take_u16(input, &mut buf, "a context value").await?;
        take(input, &mut buf, v, "a context value").await?;
    }
    take(input, &mut buf, 64, "the commitment and MAC").await?;
    let keys = take_u16(input, &mut buf, "the wrapped key count").await?;
    if keys == 0 || keys > MAX_WRAPPED_KEYS {
        return Err(EnvelopeError::Malformed(
            "the wrapped key count is 0 or more than 16",
        ));
    }
    for _ in 0..keys {
        take(input, &mut buf, 1, "a wrapped key").await?;
        let r = take_u16(input, &mut buf, "a wrapped key").await?;
        take(input, &mut buf, r + 4, "a wrapped key").await?;
        let c = take_u16(input, &mut buf, "a wrapped key").await?;
        take(input, &mut buf, c, "a wrapped key").await?;
    }
    // The blocking parser checks every field and limit on exactly these bytes.
    let mut bytes = &buf[..];
    let header = Header::read_from(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(EnvelopeError::Malformed(
            "the header's lengths are inconsistent",
        ));
    }
    Ok(header)
}

impl Encryptor {
    /// As [`Encryptor::encrypt`], over async streams, on the calling task.
    ///
    /// # Errors
    ///
    /// As [`Encryptor::encrypt`].
    pub async fn encrypt_async<R, W>(
        &self,
        mut input: R,
        mut output: W,
    ) -> Result<u64, EnvelopeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        output.write_all(&self.header().encode()).await?;
        let frame_len = self.header().frame_len as usize;
        let mut total = 0u64;
        let mut seq = 0u32;
        let mut next = read_chunk(&mut input, frame_len).await?;
        loop {
            let mut chunk = std::mem::take(&mut next);
            let is_final = if chunk.len() < frame_len {
                true
            } else {
                next = read_chunk(&mut input, frame_len).await?;
                next.is_empty()
            };
            seq = seq.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
            if seq == FINAL_MARKER {
                return Err(EnvelopeError::TooLarge);
            }
            let n = chunk.len();
            let len = u32::try_from(n).map_err(|_| EnvelopeError::TooLarge)?;
            self.keys().seal_frame(seq, is_final, &mut chunk)?;
            output.write_all(&frame_prefix(seq, is_final, len)).await?;
            output.write_all(&chunk).await?;
            total = total.saturating_add(n as u64);
            if is_final {
                break;
            }
        }
        output.flush().await?;
        Ok(total)
    }
}

async fn read_chunk<R: AsyncRead + Unpin>(
    input: &mut R,
    len: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut buf = Vec::with_capacity(len.saturating_add(TAG_LEN));
    (&mut *input).take(len as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl Decryptor {
    /// As [`Decryptor::open`], over an async stream.
    ///
    /// # Errors
    ///
    /// As [`Decryptor::open`].
    pub async fn open_async<R: AsyncRead + Unpin>(
        input: &mut R,
        keks: &[&dyn KekProvider],
        options: Options,
    ) -> Result<Self, EnvelopeError> {
        let header = read_header(input).await?;
        Self::from_header(header, keks, options).await
    }

    /// As [`Decryptor::decrypt`], over async streams, on the calling task; the same
    /// streaming contract.
    ///
    /// # Errors
    ///
    /// As [`Decryptor::decrypt`].
    pub async fn decrypt_async<R, W>(
        &self,
        mut input: R,
        mut output: W,
    ) -> Result<u64, EnvelopeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let frame_len = self.header().frame_len;
        let mut total = 0u64;
        let mut seq = 0u32;
        loop {
            seq = seq.checked_add(1).ok_or(EnvelopeError::TooLarge)?;
            if seq == FINAL_MARKER {
                return Err(EnvelopeError::TooLarge);
            }
            let raw = read_raw_frame(&mut input, frame_len, seq).await?;
            let frame = read_frame(&mut &raw[..], frame_len, seq)?;
            let is_final = frame.is_final;
            if is_final {
                let mut one = [0u8; 1];
                if input.read(&mut one).await? != 0 {
                    return Err(EnvelopeError::TrailingData);
                }
            }
            let plain = self.keys().open_frame(frame.seq, is_final, frame.sealed)?;
            output.write_all(&plain).await?;
            total = total.saturating_add(plain.len() as u64);
            if is_final {
                break;
            }
        }
        output.flush().await?;
        Ok(total)
    }
}

/// The bytes of one frame, for [`read_frame`] to check.
async fn read_raw_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    frame_len: u32,
    seq: u32,
) -> Result<Vec<u8>, EnvelopeError> {
    let truncated = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            EnvelopeError::Truncated { seq }
        } else {
            EnvelopeError::Io(e)
        }
    };
    let mut head = [0u8; 4];
    input.read_exact(&mut head).await.map_err(truncated)?;
    let mut raw = head.to_vec();
    let len = if u32::from_be_bytes(head) == FINAL_MARKER {
        let mut more = [0u8; 8];
        input.read_exact(&mut more).await.map_err(truncated)?;
        raw.extend_from_slice(&more);
        let [_, _, _, _, a, b, c, d] = more;
        u32::from_be_bytes([a, b, c, d])
    } else {
        frame_len
    };
    if len > frame_len || len > MAX_FRAME_LEN {
        return Err(EnvelopeError::Malformed(
            "the final frame is longer than the frame size",
        ));
    }
    let start = raw.len();
    raw.resize(start + len as usize + TAG_LEN, 0);
    input
        .read_exact(raw.get_mut(start..).unwrap_or_default())
        .await
        .map_err(truncated)?;
    Ok(raw)
}
