//! Finding where an existing file's chain ends.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};

/// Find the last line of a regular file. Returns the length to keep (without a partial
/// last line) and, when the file is not empty, how many bytes of a partial line follow
/// that length and the last complete line (without its newline).
#[allow(clippy::type_complexity, reason = "private helper")]
pub(super) fn last_line(
    file: &mut File,
    len: u64,
) -> std::io::Result<(u64, Option<(u64, Option<Vec<u8>>)>)> {
    if len == 0 {
        return Ok((0, None));
    }
    const CHUNK: u64 = 64 * 1024;
    // Walk backwards collecting bytes until two newlines (or the start) bound the last
    // complete line.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut newlines: Vec<u64> = Vec::new(); // absolute offsets of '\n', descending
    while pos > 0 && newlines.len() < 2 {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b == b'\n' {
                newlines.push(start + u64::try_from(i).unwrap_or(0));
                if newlines.len() == 2 {
                    break;
                }
            }
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
    }
    let base = pos; // offset of tail[0]
    let Some(&last_nl) = newlines.first() else {
        // No newline at all: the whole file is one partial line.
        return Ok((0, Some((len, None))));
    };
    let keep = last_nl + 1;
    let cut = len - keep;
    let line_start = newlines.get(1).map_or(0, |p| p + 1);
    let from = usize::try_from(line_start.saturating_sub(base)).unwrap_or(0);
    let to = usize::try_from(last_nl.saturating_sub(base)).unwrap_or(0);
    let line = tail.get(from..to).map(<[u8]>::to_vec);
    Ok((keep, Some((cut, line))))
}
