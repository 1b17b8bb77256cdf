//! Per-message keys derived from the data key and the message id, and the frame AEAD.
//!
//! ```text
//! okm(label, n) = HKDF-SHA256(ikm = data key, salt = message id,
//!                             info = "keyhaven-envelope/v1 " ‖ label ‖ alg u16, n bytes)
//! content key = okm("content", 32)   nonce base = okm("nonce", 12)
//! MAC key     = okm("header-mac", 32) commitment = okm("commit", 32)
//! ```

use keyhaven_crypto::{AeadAlgorithm, AeadKey, HmacKey, NONCE_LEN, SecretKey, ct_eq, hkdf_sha256};
use zeroize::Zeroizing;

use crate::error::EnvelopeError;
use crate::format::{COMMITMENT_LEN, HEADER_MAC_LEN, MESSAGE_ID_LEN, TAG_LEN};

const FRAME_AAD_LABEL: &[u8] = b"keyhaven-envelope/v1 frame";
const FRAME_AAD_LEN: usize = FRAME_AAD_LABEL.len() + MESSAGE_ID_LEN + 4 + 1 + 4;

/// The keys of one message.
pub(crate) struct MessageKeys {
    content: AeadKey,
    nonce_base: [u8; NONCE_LEN],
    mac: HmacKey,
    commitment: [u8; COMMITMENT_LEN],
    message_id: [u8; MESSAGE_ID_LEN],
}

fn okm(
    dek: &SecretKey,
    message_id: &[u8; MESSAGE_ID_LEN],
    algorithm: u16,
    label: &str,
    out: &mut [u8],
) -> Result<(), EnvelopeError> {
    let mut info = b"keyhaven-envelope/v1 ".to_vec();
    info.extend_from_slice(label.as_bytes());
    info.extend_from_slice(&algorithm.to_be_bytes());
    hkdf_sha256(dek.expose_secret(), message_id, &info, out)?;
    Ok(())
}

impl MessageKeys {
    pub(crate) fn derive(
        dek: &SecretKey,
        message_id: &[u8; MESSAGE_ID_LEN],
        algorithm: u16,
    ) -> Result<Self, EnvelopeError> {
        let mut content = Zeroizing::new([0u8; 32]);
        okm(dek, message_id, algorithm, "content", &mut content[..])?;
        let content = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::take(&mut content))?;
        let mut nonce_base = [0u8; NONCE_LEN];
        okm(dek, message_id, algorithm, "nonce", &mut nonce_base)?;
        let mut mac = Zeroizing::new([0u8; 32]);
        okm(dek, message_id, algorithm, "header-mac", &mut mac[..])?;
        let mac = HmacKey::new(&mac[..]);
        let mut commitment = [0u8; COMMITMENT_LEN];
        okm(dek, message_id, algorithm, "commit", &mut commitment)?;
        Ok(Self {
            content,
            nonce_base,
            mac,
            commitment,
            message_id: *message_id,
        })
    }

    pub(crate) fn commitment(&self) -> [u8; COMMITMENT_LEN] {
        self.commitment
    }

    pub(crate) fn commitment_matches(&self, found: &[u8; COMMITMENT_LEN]) -> bool {
        ct_eq(&self.commitment, found)
    }

    pub(crate) fn header_mac(&self, authenticated: &[u8]) -> [u8; HEADER_MAC_LEN] {
        self.mac.sign(authenticated)
    }

    pub(crate) fn header_mac_ok(&self, authenticated: &[u8], mac: &[u8]) -> bool {
        self.mac.verify(authenticated, mac)
    }

    /// nonce = nonce base XOR (seq as a 96-bit big-endian integer).
    fn nonce(&self, seq: u32) -> [u8; NONCE_LEN] {
        let mut n = self.nonce_base;
        for (b, s) in n.iter_mut().rev().zip(seq.to_le_bytes()) {
            *b ^= s;
        }
        n
    }

    /// `"keyhaven-envelope/v1 frame" ‖ message id ‖ seq u32 ‖ final u8 ‖ length u32`.
    fn frame_aad(&self, seq: u32, is_final: bool, len: u32) -> [u8; FRAME_AAD_LEN] {
        let mut aad = [0u8; FRAME_AAD_LEN];
        let parts: [&[u8]; 5] = [
            FRAME_AAD_LABEL,
            &self.message_id,
            &seq.to_be_bytes(),
            &[u8::from(is_final)],
            &len.to_be_bytes(),
        ];
        let mut rest = &mut aad[..];
        for part in parts {
            let (head, tail) = rest.split_at_mut(part.len());
            head.copy_from_slice(part);
            rest = tail;
        }
        aad
    }

    /// Seals the plaintext `frame` of frame `seq` in place; returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        seq: u32,
        is_final: bool,
        frame: &mut [u8],
    ) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let len = u32::try_from(frame.len()).map_err(|_| EnvelopeError::TooLarge)?;
        let aad = self.frame_aad(seq, is_final, len);
        Ok(self
            .content
            .seal_in_place_detached(&self.nonce(seq), &aad, frame)?)
    }

    /// Opens `ciphertext ‖ tag` of frame `seq` in place: on success the first
    /// `sealed.len() − 16` bytes are the plaintext; on failure `sealed` is wiped.
    pub(crate) fn open_in_place(
        &self,
        seq: u32,
        is_final: bool,
        sealed: &mut [u8],
    ) -> Result<(), EnvelopeError> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or(EnvelopeError::FrameAuth { seq })?;
        let aad = self.frame_aad(seq, is_final, len);
        self.content
            .open_in_place(&self.nonce(seq), &aad, sealed)
            .map_err(|_| EnvelopeError::FrameAuth { seq })?;
        Ok(())
    }

    /// Seals the plaintext in `buf` in place and appends the tag: `buf` becomes
    /// `ciphertext ‖ tag`.
    pub(crate) fn seal_frame(
        &self,
        seq: u32,
        is_final: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let len = u32::try_from(buf.len()).map_err(|_| EnvelopeError::TooLarge)?;
        let aad = self.frame_aad(seq, is_final, len);
        let tag = self
            .content
            .seal_in_place_detached(&self.nonce(seq), &aad, buf)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `ciphertext ‖ tag` in place; `sealed` becomes the plaintext.
    pub(crate) fn open_frame(
        &self,
        seq: u32,
        is_final: bool,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or(EnvelopeError::FrameAuth { seq })?;
        let aad = self.frame_aad(seq, is_final, len);
        let n = self
            .content
            .open_in_place(&self.nonce(seq), &aad, &mut sealed)
            .map_err(|_| EnvelopeError::FrameAuth { seq })?;
        sealed.truncate(n);
        Ok(sealed)
    }
}
