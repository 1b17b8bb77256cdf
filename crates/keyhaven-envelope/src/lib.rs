//! Offline streaming envelope encryption of files and streams.
//!
//! # Purpose
//!
//! Large data is encrypted and decrypted locally with a fresh data key; only the small
//! data key travels to a key-encryption key (KEK) to be wrapped or unwrapped: a keyhaven
//! transit key through [`keyhaven_client`] ([`TransitKek`]), or a local key from a key file
//! for tests and air-gapped recovery ([`LocalKek`]). Several KEKs may wrap the same data
//! key; any one of them opens the message. The format is specified in
//! `docs/envelope-format.md` and covered by golden vectors.
//!
//! * [`Encryptor`] writes a header and a framed body from any [`std::io::Read`];
//! * [`Decryptor`] opens the header (key commitment and header MAC checked) and decrypts
//!   the frames into any [`std::io::Write`];
//! * [`Encryptor::encrypt_file`] and [`Decryptor::decrypt_file`] do the same from a
//!   regular file that every worker thread reads at its own offsets;
//! * [`Encryptor::encrypt_async`], [`Decryptor::open_async`] and
//!   [`Decryptor::decrypt_async`] do the same over tokio's `AsyncRead`/`AsyncWrite`, one
//!   frame at a time on the calling task;
//! * [`rewrap_header`] rewrites only the wrapped keys (after a KEK rotation);
//! * [`DataKeyCache`] reuses a data key for many small messages within bounds.
//!
//! Frames travel in batches of about 1 MiB, each read with one call, sealed or opened in
//! place and written with one vectored call, on several threads with a bounded number of
//! batches in flight, so memory does not grow with the input (docs/design/0014).
//!
//! # Non-goals
//!
//! * Signatures: anyone who can unwrap the data key can also write a valid message.
//! * Random access into the body and appending to a message.
//!
//! # Invariants
//!
//! * No key material or plaintext in errors or `Debug` output.
//! * A frame's plaintext is written only after that frame authenticated, in order; see
//!   the streaming contract on [`Decryptor`].
//! * A data key is used only after it matched the header's key commitment and the header
//!   MAC verified.
#![forbid(unsafe_code)]

mod asyncio;
mod cache;
mod error;
pub mod format;
mod kek;
mod keys;
mod stream;
mod transit;

pub use cache::DataKeyCache;
pub use error::{EnvelopeError, ErrorClass, KekError};
pub use format::{EncryptionContext, Header, KekKind, WrappedKey};
pub use kek::{KekProvider, LocalKek};
pub use stream::{Decryptor, Encryptor, Options, rewrap_header};
pub use transit::TransitKek;
