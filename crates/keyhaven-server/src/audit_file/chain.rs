//! The line format of the chain: writing a line, and reading the head of one.

use std::io::Write as _;

use serde::Deserialize;

use super::{DEVICE_RECORD_TYPE, GENESIS};

/// The end of the chain: the hash of the last line and its `seq`.
#[derive(Clone, Copy)]
pub(super) struct Head {
    pub(super) hash: [u8; 32],
    pub(super) seq: u64,
    pub(super) genesis: bool,
}

impl Head {
    pub(super) fn genesis() -> Head {
        Head {
            hash: [0; 32],
            seq: 0,
            genesis: true,
        }
    }

    /// Append the `prev_hash` text (`sha256:<hex>`) to `out`.
    fn put_prev_hash(&self, out: &mut Vec<u8>) {
        if self.genesis {
            out.extend_from_slice(GENESIS.as_bytes());
        } else {
            let mut hex = [0u8; 64];
            out.extend_from_slice(b"sha256:");
            if hex::encode_to_slice(self.hash, &mut hex).is_ok() {
                out.extend_from_slice(&hex);
            }
        }
    }

    /// Append `record` (a JSON object) as the next line to `out`; advance.
    pub(super) fn append(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let seq = self.seq.saturating_add(1);
        out.extend_from_slice(b"{\"prev_hash\":\"");
        self.put_prev_hash(out);
        out.extend_from_slice(b"\",\"seq\":");
        let _ = write!(out, "{seq}");
        let body = record.strip_prefix(b"{").unwrap_or(record);
        let body = body.trim_ascii_start();
        if body.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(body);
        let line = out.get(start..).unwrap_or_default();
        self.hash = keyhaven_crypto::sha256(line);
        self.seq = seq;
        self.genesis = false;
        out.push(b'\n');
    }
}

/// The lines of a new chain holding `records` (JSON objects), as the writer writes them.
pub(crate) fn new_chain(records: &[&[u8]]) -> Vec<u8> {
    let mut head = Head::genesis();
    let mut out = Vec::new();
    for record in records {
        head.append(record, &mut out);
    }
    out
}

/// The `seq` of one of our lines.
pub(super) fn line_seq(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<LineHead>(line).ok().map(|h| h.seq)
}

#[derive(Deserialize)]
pub(super) struct LineHead {
    pub(super) prev_hash: String,
    pub(super) seq: u64,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    event: Option<String>,
}

impl LineHead {
    pub(super) fn is_device_event(&self, event: &str) -> bool {
        self.kind.as_deref() == Some(DEVICE_RECORD_TYPE) && self.event.as_deref() == Some(event)
    }
}
