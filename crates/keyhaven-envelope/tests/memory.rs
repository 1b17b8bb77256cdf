//! A 2 GiB stream through encrypt and decrypt with bounded memory. The work runs in a child
//! process (this test binary again, running one ignored test) so that the peak RSS it
//! reports (`VmHWM`) is its own; the parent asserts a generous bound. No timing is asserted.

use std::io::{Read, Write};
use std::process::Command;

use keyhaven_envelope::{Decryptor, EncryptionContext, Encryptor, Options};

use crate::support::{block_on, kek};

const TOTAL: u64 = 2 << 30;
const BLOCK: usize = 4096;
/// Peak RSS bound for the child: the in-flight window is about 8 frames of 64 KiB per
/// direction, so 64 MiB is generous (the binary and its allocator take a few MiB).
const MAX_PEAK_KIB: u64 = 64 * 1024;

/// Block `i` of the plaintext is 4096 bytes of `i as u8`.
struct Generated {
    pos: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = TOTAL - self.pos;
        let in_block = BLOCK - (self.pos % BLOCK as u64) as usize;
        let n = buf.len().min(in_block).min(left as usize);
        buf[..n].fill((self.pos / BLOCK as u64) as u8);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Checks the plaintext against [`Generated`] without keeping it.
struct Check {
    pos: u64,
}

impl Write for Check {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let in_block = BLOCK - (self.pos % BLOCK as u64) as usize;
            let n = rest.len().min(in_block);
            let want = [(self.pos / BLOCK as u64) as u8; BLOCK];
            assert_eq!(&rest[..n], &want[..n], "plaintext differs at {}", self.pos);
            self.pos += n as u64;
            rest = &rest[n..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "the child half of two_gib_stream_round_trips_in_bounded_memory"]
fn child_two_gib_stream() {
    if std::env::var_os("KEYHAVEN_ENVELOPE_MEMORY_CHILD").is_none() {
        return;
    }
    let k = kek(9);
    let opts = Options {
        threads: 2,
        ..Options::default()
    };
    let enc = block_on(Encryptor::new(&[&k], EncryptionContext::new(), opts)).unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let encrypted = std::thread::scope(|s| {
        let producer = s.spawn(|| enc.encrypt(Generated { pos: 0 }, writer).unwrap());
        let dec = block_on(Decryptor::open(&mut reader, &[&k], opts)).unwrap();
        let mut check = Check { pos: 0 };
        let n = dec.decrypt(&mut reader, &mut check).unwrap();
        assert_eq!(n, TOTAL);
        assert_eq!(check.pos, TOTAL);
        producer.join().unwrap()
    });
    assert_eq!(encrypted, TOTAL);
    println!("VmHWM-KiB={}", peak_rss_kib());
}

#[test]
fn two_gib_stream_round_trips_in_bounded_memory() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory::child_two_gib_stream",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEYHAVEN_ENVELOPE_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak: u64 = stdout
        .split_once("VmHWM-KiB=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no VmHWM in {stdout}"))
        .parse()
        .unwrap();
    eprintln!("2 GiB round trip: peak RSS {peak} KiB");
    assert!(peak < MAX_PEAK_KIB, "peak RSS {peak} KiB");
    assert!(peak > 1024, "implausible peak RSS {peak} KiB");
}
