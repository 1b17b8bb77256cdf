//! The writer thread of a FIFO or a character device.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::MAX_BATCH;
use super::writer::Writer;

/// Tells a sender whether its record was written (or why not).
pub(super) type Ack = oneshot::Sender<Result<(), String>>;

pub(super) enum Msg {
    /// Records written together, in order.
    Records(Vec<Vec<u8>>, Ack),
    /// Look at the reopen flag.
    Wake,
    /// Write the close record and stop.
    Close(oneshot::Sender<()>),
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<(Vec<Vec<u8>>, Ack)> = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                self.close("stopped");
                return;
            };
            let mut closing = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Records(r, ack) => batch.push((r, ack)),
                    Msg::Wake => {}
                    Msg::Close(ack) => {
                        closing = Some(ack);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if self.reopen.swap(false, Ordering::SeqCst) {
                self.close("reopen");
                if let Err(e) = self.open("reopen") {
                    self.report_open_error(&e);
                }
            }
            if !batch.is_empty() {
                let result = self.append(
                    batch
                        .iter()
                        .flat_map(|(records, _)| records.iter().map(Vec::as_slice)),
                );
                for (_, ack) in batch.drain(..) {
                    // The sender may have given up (timeout); nothing to tell then.
                    let _ = ack.send(result.clone());
                }
            }
            if let Some(ack) = closing {
                self.close("shutdown");
                let _ = ack.send(());
                return;
            }
        }
    }
}
