//! The writer: opens the file, chains records onto it and undoes failed writes.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use keyhaven_engine::{Clock as _, SystemClock};
use serde_json::{Map, Value, json};

use super::chain::{Head, line_seq};
use super::recover::last_line;
use super::{DEVICE_RECORD_TYPE, TARGET};

pub(super) enum OpenError {
    Io(std::io::Error),
    Foreign,
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Io(e)
    }
}

pub(super) struct Writer {
    name: String,
    path: PathBuf,
    pub(super) fsync: bool,
    pub(super) file: Option<File>,
    /// Whether `file` is a regular file (then `len` is its length and failed writes are
    /// undone).
    regular: bool,
    len: u64,
    head: Head,
    pub(super) reopen: Arc<AtomicBool>,
    /// The lines of a batch (kept to reuse its allocation).
    buf: Vec<u8>,
}

fn now() -> String {
    keyhaven_engine::clock::rfc3339(SystemClock.now())
}

impl Writer {
    pub(super) fn new(name: String, path: PathBuf, fsync: bool) -> Writer {
        Writer {
            name,
            path,
            fsync,
            file: None,
            regular: false,
            len: 0,
            head: Head::genesis(),
            reopen: Arc::new(AtomicBool::new(false)),
            buf: Vec::new(),
        }
    }

    pub(super) fn report_open_error(&self, e: &OpenError) {
        match e {
            OpenError::Io(err) => {
                tracing::error!(target: TARGET, device = %self.name, path = %self.path.display(), error = %err, "cannot open the audit file");
            }
            OpenError::Foreign => {
                tracing::error!(target: TARGET, device = %self.name, path = %self.path.display(), "the audit file does not end with a keyhaven audit record");
            }
        }
    }

    /// Open the configured path and write the open record.
    pub(super) fn open(&mut self, reason: &str) -> Result<(), OpenError> {
        self.file = None;
        let meta = std::fs::metadata(&self.path).ok();
        let regular = meta.as_ref().is_none_or(|m| m.file_type().is_file());
        let mut repaired = 0u64;
        let (mut file, len) = if regular {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            let len = file.metadata()?.len();
            let (len, tail) = last_line(&mut file, len)?;
            if let Some((cut, line)) = tail {
                if cut > 0 {
                    file.set_len(len)?;
                    repaired = cut;
                }
                if let Some(line) = line {
                    let seq = line_seq(&line).ok_or(OpenError::Foreign)?;
                    self.head = Head {
                        hash: keyhaven_crypto::sha256(&line),
                        seq,
                        genesis: false,
                    };
                }
            }
            (file, len)
        } else {
            let file = OpenOptions::new().append(true).open(&self.path)?;
            let is_fifo = meta.is_some_and(|m| m.file_type().is_fifo());
            tracing::debug!(target: TARGET, device = %self.name, fifo = is_fifo, "audit path is not a regular file");
            (file, 0)
        };
        let mut rec = Map::new();
        rec.insert("time".to_owned(), json!(now()));
        rec.insert("type".to_owned(), json!(DEVICE_RECORD_TYPE));
        rec.insert("event".to_owned(), json!("open"));
        rec.insert("reason".to_owned(), json!(reason));
        rec.insert("device".to_owned(), json!(self.name));
        if repaired > 0 {
            rec.insert("repaired_tail_bytes".to_owned(), json!(repaired));
            tracing::warn!(target: TARGET, device = %self.name, bytes = repaired, "cut a partial record off the end of the audit file");
        }
        let record = serde_json::to_vec(&Value::Object(rec)).unwrap_or_default();
        let mut head = self.head;
        let mut buf = Vec::new();
        head.append(&record, &mut buf);
        file.write_all(&buf)?;
        file.flush()?;
        if self.fsync {
            file.sync_data()?;
        }
        self.head = head;
        self.regular = regular;
        self.len = len.saturating_add(u64::try_from(buf.len()).unwrap_or(u64::MAX));
        self.file = Some(file);
        tracing::info!(target: TARGET, device = %self.name, path = %self.path.display(), seq = self.head.seq, "audit file opened");
        Ok(())
    }

    /// Write the close record (best effort) and drop the file. Logs the chain head.
    pub(super) fn close(&mut self, reason: &str) {
        if self.file.is_none() {
            return;
        }
        let mut rec = Map::new();
        rec.insert("time".to_owned(), json!(now()));
        rec.insert("type".to_owned(), json!(DEVICE_RECORD_TYPE));
        rec.insert("event".to_owned(), json!("close"));
        rec.insert("reason".to_owned(), json!(reason));
        rec.insert("device".to_owned(), json!(self.name));
        let record = serde_json::to_vec(&Value::Object(rec)).unwrap_or_default();
        if let Err(e) = self.append(std::iter::once(record.as_slice())) {
            tracing::error!(target: TARGET, device = %self.name, error = %e, "cannot write the close record");
        }
        tracing::info!(
            target: TARGET,
            device = %self.name,
            path = %self.path.display(),
            seq = self.head.seq,
            head = %format!("sha256:{}", hex::encode(self.head.hash)),
            "audit file closed; chain head"
        );
        self.file = None;
    }

    /// Append records as one write; on failure undo it and report why.
    pub(super) fn append<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), String> {
        if self.file.is_none() {
            // Opened lazily (a FIFO), or lost after an error: try again.
            if let Err(e) = self.open("retry") {
                self.report_open_error(&e);
                return Err(match e {
                    OpenError::Io(err) => format!("cannot open the file: {err}"),
                    OpenError::Foreign => "the file does not end with an audit record".to_owned(),
                });
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err("no file".to_owned());
        };
        let mut head = self.head;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for r in records {
            head.append(r, &mut buf);
        }
        let written = file
            .write_all(&buf)
            .and_then(|()| file.flush())
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        match written {
            Ok(()) => {
                self.head = head;
                self.len = self.len.saturating_add(len);
                Ok(())
            }
            Err(e) => {
                // Undo a partial write so the chain stays whole; if that fails too, reopen
                // (which cuts the partial line) before the next batch.
                if !(self.regular && file.set_len(self.len).is_ok()) {
                    self.file = None;
                }
                Err(format!("write failed: {e}"))
            }
        }
    }
}
