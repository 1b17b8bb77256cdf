//! Log lines written in batches. A busy admission webhook logs one line per decision;
//! written one by one, that is a system call per request. Here the lines wait in a buffer
//! and a flusher thread writes them together: at most [`FLUSH_EVERY`] after the first of a
//! batch, at once for a warning or an error (with the lines before it, in order), by the
//! logging thread itself when [`PENDING_MAX`] bytes wait (output too slow: the caller
//! waits, as with an unbuffered write), and when the [`Flush`] guard is dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Past this many waiting bytes a line's own thread writes the batch.
pub const PENDING_MAX: usize = 256 * 1024;

/// A `MakeWriter` for `tracing_subscriber::fmt` that batches lines to `W`.
pub struct Batched<W> {
    shared: Arc<Shared<W>>,
}

/// Writes what waits when dropped, and stops the flusher thread.
pub struct Flush<W: Write> {
    shared: Arc<Shared<W>>,
}

struct Shared<W> {
    pending: Mutex<Pending>,
    /// Wakes the flusher when a batch starts, or when the guard is dropped.
    wake: Condvar,
    /// The output and a spare buffer, locked while a batch is written. It is taken while
    /// `pending` is held, so batches reach the output in the order they were taken.
    out: Mutex<(W, Vec<u8>)>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
    /// No flusher thread (it could not be started): every line is written at once.
    direct: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while logging leaves bytes, not a broken invariant: keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write> Batched<W> {
    fn unstarted(out: W) -> (Batched<W>, Flush<W>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            out: Mutex::new((out, Vec::new())),
        });
        (
            Batched {
                shared: shared.clone(),
            },
            Flush { shared },
        )
    }
}

impl<W: Write + Send + 'static> Batched<W> {
    /// Batch lines to `out`, with a flusher thread. Keep the guard for the life of the
    /// program: dropping it writes what waits and stops batching.
    pub fn new(out: W) -> (Batched<W>, Flush<W>) {
        let (batched, guard) = Batched::unstarted(out);
        let shared = batched.shared.clone();
        let flusher = shared.clone();
        let started = std::thread::Builder::new()
            .name("log-flush".to_owned())
            .spawn(move || flusher.run());
        if started.is_err() {
            lock(&shared.pending).direct = true;
        }
        (batched, guard)
    }
}

impl<W: Write> Shared<W> {
    fn run(&self) {
        loop {
            {
                let mut p = lock(&self.pending);
                while p.lines.is_empty() && !p.closed {
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                if p.closed {
                    return;
                }
            }
            // Let the batch gather.
            std::thread::sleep(FLUSH_EVERY);
            self.write_out(lock(&self.pending));
        }
    }

    /// Take what waits (with `pending` held) and write it.
    fn write_out(&self, mut pending: MutexGuard<'_, Pending>) {
        if pending.lines.is_empty() {
            return;
        }
        let mut out = lock(&self.out);
        let (w, spare) = &mut *out;
        std::mem::swap(&mut pending.lines, spare);
        drop(pending);
        // Errors are dropped, as an unbuffered stderr writer's are: there is nowhere
        // else to report them.
        let _ = w.write_all(spare).and_then(|()| w.flush());
        spare.clear();
        // A rare large batch does not keep its memory.
        if spare.capacity() > 4 * PENDING_MAX {
            *spare = Vec::new();
        }
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let mut p = lock(&self.pending);
        let first = p.lines.is_empty();
        p.lines.extend_from_slice(line);
        if urgent || p.direct || p.closed || p.lines.len() >= PENDING_MAX {
            self.write_out(p);
        } else if first {
            drop(p);
            self.wake.notify_one();
        }
    }
}

impl<W: Write> Drop for Flush<W> {
    fn drop(&mut self) {
        let mut p = lock(&self.shared.pending);
        p.closed = true;
        self.shared.write_out(p);
        self.shared.wake.notify_one();
    }
}

/// One event's writer.
pub struct Line<'a, W> {
    shared: &'a Shared<W>,
    urgent: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // The batch is written by the flusher; an urgent line was written already.
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Line<'a, W> {
        Line {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a, W> {
        Line {
            shared: &self.shared,
            // WARN and ERROR (`Level` orders the more verbose levels higher).
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u8>>>);

    impl Write for Seen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seen {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    fn subscriber(out: Seen) -> (impl tracing::Subscriber, Flush<Seen>) {
        let (writer, guard) = Batched::new(out);
        let s = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        (s, guard)
    }

    #[test]
    fn lines_wait_then_arrive_whole_and_in_order() {
        let seen = Seen::default();
        let (s, guard) = subscriber(seen.clone());
        tracing::subscriber::with_default(s, || {
            for i in 0..100 {
                tracing::info!(n = i, "decision");
            }
        });
        // Written by the flusher within a few periods (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.text().lines().count() < 100 && Instant::now() < deadline {
            std::thread::sleep(FLUSH_EVERY);
        }
        let text = seen.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100, "{text}");
        for (i, l) in lines.iter().enumerate() {
            assert!(l.ends_with(&format!("decision n={i}")), "{l}");
        }
        drop(guard);
    }

    #[test]
    fn a_warning_is_written_at_once_with_the_lines_before_it() {
        let seen = Seen::default();
        let (s, _guard) = subscriber(seen.clone());
        tracing::subscriber::with_default(s, || {
            tracing::info!("first");
            tracing::warn!("second");
            // No wait: both are out when `warn!` returns.
            let text = seen.text();
            assert_eq!(text.lines().count(), 2, "{text}");
            assert!(text.contains("INFO first\n") && text.ends_with("WARN second\n"));
        });
    }

    #[test]
    fn dropping_the_guard_writes_what_waits() {
        let seen = Seen::default();
        let (s, guard) = subscriber(seen.clone());
        tracing::subscriber::with_default(s, || tracing::info!("last words"));
        drop(guard);
        assert!(
            seen.text().ends_with("INFO last words\n"),
            "{}",
            seen.text()
        );
        // After the guard, lines are written as they come.
        let (writer, guard) = Batched::new(seen.clone());
        drop(guard);
        writer.make_writer().write_all(b"late\n").unwrap();
        assert!(seen.text().ends_with("late\n"));
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let seen = Seen::default();
        // No flusher thread: only the bound writes.
        let (writer, _guard) = Batched::unstarted(seen.clone());
        let mut w = writer.make_writer();
        w.write_all(&vec![b'x'; PENDING_MAX - 1]).unwrap();
        assert!(lock(&seen.0).is_empty());
        // The write that reaches the bound writes every byte before it, at once.
        w.write_all(b"\n").unwrap();
        assert_eq!(lock(&seen.0).len(), PENDING_MAX);
    }
}
