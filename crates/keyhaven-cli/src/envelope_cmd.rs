//! `keyhaven envelope …`: offline envelope encryption of files and streams
//! (docs/envelope-format.md), with data keys from keyhaven transit or a local key file.
//!
//! Output goes to `-o OUT` through a temporary file next to OUT, renamed into place only
//! after the whole message verified (decrypt) or was written (encrypt, rewrap); on failure
//! the temporary file is removed and OUT is untouched. An OUT that exists and is not a
//! regular file (a device such as /dev/null, a FIFO) is written in place, like stdout. On stdout, `decrypt` holds back up
//! to 64 MiB of plaintext until the final frame verified; beyond that it streams frames as
//! they verify, and a later failure exits with code 3 and says how much was written.

use std::fs::File;
use std::io::{BufReader, BufWriter, IoSlice, IsTerminal as _, Read, Write};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyhaven_envelope::{
    Decryptor, EncryptionContext, Encryptor, EnvelopeError, ErrorClass, Header, KekKind,
    KekProvider, LocalKek, Options, TransitKek, rewrap_header,
};
use serde_json::json;

use crate::output;
use crate::remote::{ClientArgs, Failure, Format};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage or local error (unreadable file, no usable key given)
  2  the server answered with another error (e.g. the key is disabled)
  3  the message is corrupt, tampered with, or not an envelope
  4  not authorized: the server refused the token
  5  the server could not be reached

Nothing is written to -o OUT unless the whole message verified. On stdout (or an OUT that
is a device or FIFO), decrypt holds back up to 64 MiB; a larger message streams verified
frames and, if a later frame fails, exits 3 after some verified plaintext was written:
check the exit code.";

/// Stdout hold-back of `decrypt`.
const HOLD_BACK: usize = 64 << 20;

/// Inputs larger than this show a progress bar when stderr is a terminal.
const PROGRESS_MIN: u64 = 64 << 20;

/// Arguments of `keyhaven envelope`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct EnvelopeArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: EnvelopeCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EnvelopeCommand {
    /// Encrypt IN (or stdin) under a fresh data key wrapped by each --key and --local-key.
    #[command(after_help = EXIT_CODES)]
    Encrypt(EncryptArgs),
    /// Decrypt IN (or stdin) with the first of its keys that opens.
    #[command(after_help = EXIT_CODES)]
    Decrypt(DecryptArgs),
    /// Rewrap the data key after a KEK rotation, or replace the message's keys; the body
    /// is copied unchanged.
    #[command(after_help = EXIT_CODES)]
    Rewrap(RewrapArgs),
    /// Show a message's header: context, keys, frame size (not verified).
    Inspect(InspectArgs),
    /// Write a new local key file (mode 0600) for --local-key.
    NewLocalKey(NewLocalKeyArgs),
}

#[derive(Debug, clap::Args)]
struct Io {
    /// Write the output to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: Option<PathBuf>,
    /// The input file; stdin if absent or `-`.
    #[arg(value_name = "IN")]
    input: Option<PathBuf>,
    /// Threads that encrypt or decrypt frames (and read a regular input file)
    /// [default: the number of cores, at most 8].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct EncryptArgs {
    /// A transit key that wraps the data key, MOUNT/NAME (e.g. transit/backup). Repeat
    /// for several; the first one generates the data key.
    #[arg(long = "key", value_name = "MOUNT/NAME")]
    keys: Vec<String>,
    /// A local key file (64 hex characters) that wraps the data key too.
    #[arg(long = "local-key", value_name = "FILE")]
    local_keys: Vec<PathBuf>,
    /// An encryption-context pair, authenticated and stored in clear in the header.
    #[arg(long = "context", value_name = "K=V")]
    context: Vec<String>,
    #[command(flatten)]
    io: Io,
}

#[derive(Debug, clap::Args)]
struct DecryptArgs {
    /// A local key file to try before the message's transit keys.
    #[arg(long = "local-key", value_name = "FILE")]
    local_keys: Vec<PathBuf>,
    #[command(flatten)]
    io: Io,
}

#[derive(Debug, clap::Args)]
struct RewrapArgs {
    /// Replace the message's keys by these transit keys (and the --local-key files);
    /// without --key, each transit-wrapped key is rewrapped under its key's newest
    /// version and nothing else changes.
    #[arg(long = "key", value_name = "MOUNT/NAME")]
    keys: Vec<String>,
    /// A local key file that opens the message (kept in the new key list with --key).
    #[arg(long = "local-key", value_name = "FILE")]
    local_keys: Vec<PathBuf>,
    #[command(flatten)]
    io: Io,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The input file; stdin if absent or `-`.
    #[arg(value_name = "IN")]
    input: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct NewLocalKeyArgs {
    /// The key file to create (refused if it exists).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

/// A failure of an envelope command, with its exit code.
struct Fail {
    code: u8,
    message: String,
}

impl From<EnvelopeError> for Fail {
    fn from(e: EnvelopeError) -> Self {
        let code = match e.class() {
            ErrorClass::Local => 1,
            ErrorClass::Server => 2,
            ErrorClass::Corrupt => 3,
            ErrorClass::NotAuthorized => 4,
            ErrorClass::Unreachable => 5,
        };
        let message = match (&e, e.class()) {
            (_, ErrorClass::NotAuthorized) => format!("not authorized: {e}"),
            (_, ErrorClass::Unreachable) => format!("server unreachable: {e}"),
            (EnvelopeError::NoDataKey(a), _) if a.is_empty() => {
                format!("{e} (for a local key, pass --local-key FILE)")
            }
            _ => e.to_string(),
        };
        Fail { code, message }
    }
}

impl From<Failure> for Fail {
    fn from(f: Failure) -> Self {
        let code = f.exit_code();
        let message = match f {
            Failure::Local(e) => format!("{e:#}"),
            Failure::NotFound(m) => m,
            Failure::Remote { context, error } => {
                format!("{context}: {}", output::describe(&error))
            }
        };
        Fail { code, message }
    }
}

fn local(message: impl Into<String>) -> Fail {
    Fail {
        code: 1,
        message: message.into(),
    }
}

/// Run `keyhaven envelope …`.
pub fn run(args: EnvelopeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::failure(&Failure::local(format!(
                "cannot start the async runtime: {e}"
            )));
            return ExitCode::from(1);
        }
    };
    let client = args.client;
    let result = runtime.block_on(async move {
        match args.command {
            EnvelopeCommand::Encrypt(a) => encrypt(&client, a).await,
            EnvelopeCommand::Decrypt(a) => decrypt(&client, a).await,
            EnvelopeCommand::Rewrap(a) => rewrap(&client, a).await,
            EnvelopeCommand::Inspect(a) => inspect(&client, &a),
            EnvelopeCommand::NewLocalKey(a) => new_local_key(&a),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            output::failure(&Failure::local(f.message));
            ExitCode::from(f.code)
        }
    }
}

fn options(threads: Option<usize>) -> Result<Options, Fail> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut o = Options {
        threads: cores.min(8),
        ..Options::default()
    };
    if let Some(t) = threads {
        if t == 0 || t > 256 {
            return Err(local("--threads must be between 1 and 256"));
        }
        o.threads = t;
    }
    Ok(o)
}

fn local_keks(files: &[PathBuf]) -> Result<Vec<LocalKek>, Fail> {
    files
        .iter()
        .map(|p| LocalKek::from_file(p).map_err(|e| local(e.to_string())))
        .collect()
}

fn transit_keks(client: &ClientArgs, refs: &[String]) -> Result<Vec<TransitKek>, Fail> {
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let c = client.client()?;
    refs.iter()
        .map(|r| TransitKek::new(c.clone(), r).map_err(|e| local(e.to_string())))
        .collect()
}

/// The transit keys a header names, reached through `client`.
fn header_transit_keks(client: &ClientArgs, header: &Header) -> Result<Vec<TransitKek>, Fail> {
    let mut refs: Vec<String> = header
        .wrapped_keys
        .iter()
        .filter(|w| w.kind == KekKind::Transit)
        .map(|w| w.key_ref.clone())
        .collect();
    refs.dedup();
    transit_keks(client, &refs)
}

fn parse_context(pairs: &[String]) -> Result<EncryptionContext, Fail> {
    let mut ctx = EncryptionContext::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| local(format!("invalid --context {p:?}: expected key=value")))?;
        ctx.insert(k, v).map_err(Fail::from)?;
    }
    Ok(ctx)
}

/// A handle on file descriptor 0 or 1 of its own, so that large reads and writes go
/// straight to the kernel instead of through std's stdin buffer or stdout line buffer.
fn std_stream(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<File, Fail> {
    fd.try_clone_to_owned()
        .map(File::from)
        .map_err(|e| local(format!("cannot use {what}: {e}")))
}

fn stdout_file() -> Result<File, Fail> {
    std_stream(std::io::stdout().as_fd(), "stdout")
}

fn open_input(input: Option<&Path>) -> Result<(Box<dyn Read + Send>, Option<u64>), Fail> {
    match input.filter(|p| p.as_os_str() != "-") {
        None => Ok((
            Box::new(std_stream(std::io::stdin().as_fd(), "stdin")?),
            None,
        )),
        Some(p) => {
            let f =
                File::open(p).map_err(|e| local(format!("cannot open {}: {e}", p.display())))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            Ok((Box::new(f), len))
        }
    }
}

/// Whether reading `len` bytes shows a progress bar (large inputs, stderr a terminal).
fn shows_progress(len: Option<u64>) -> bool {
    matches!(len, Some(len) if len >= PROGRESS_MIN) && std::io::stderr().is_terminal()
}

/// IN as a regular file, when it is one and no progress bar is shown: the encryptor and
/// decryptor then read it with positional reads from all their threads.
fn positional_input(input: Option<&Path>) -> Option<File> {
    let path = input.filter(|p| p.as_os_str() != "-")?;
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok().filter(std::fs::Metadata::is_file)?;
    (!shows_progress(Some(meta.len()))).then_some(file)
}

/// Counts bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn with_progress(reader: Box<dyn Read + Send>, len: Option<u64>) -> Box<dyn Read + Send> {
    match len {
        Some(len) if shows_progress(Some(len)) => {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Box::new(Progress { inner: reader, bar })
        }
        _ => reader,
    }
}

/// A file written under a temporary name next to its target and renamed into place by
/// [`Staged::commit`]; dropped without commit, it is removed.
struct Staged {
    temp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Staged {
    fn create(target: &Path) -> Result<Self, Fail> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        let name = target
            .file_name()
            .ok_or_else(|| local(format!("invalid output path {}", target.display())))?;
        // Unlikely to collide (std's per-process random hasher keys), and created with
        // create_new, so never an existing file.
        use std::hash::{BuildHasher as _, Hasher as _};
        let tag = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let temp = dir.join(format!(
            ".{}.{}-{tag:016x}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options
            .open(&temp)
            .map_err(|e| local(format!("cannot create a file in {}: {e}", dir.display())))?;
        Ok(Self {
            temp,
            target: target.to_owned(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, Fail> {
        self.file
            .as_mut()
            .ok_or_else(|| local("the output file is closed"))
    }

    fn commit(mut self) -> Result<(), Fail> {
        let file = self
            .file
            .take()
            .ok_or_else(|| local("the output file is closed"))?;
        let file = file.into_inner().map_err(|e| {
            local(format!(
                "cannot write {}: {}",
                self.target.display(),
                e.error()
            ))
        })?;
        file.sync_all()
            .map_err(|e| local(format!("cannot write {}: {e}", self.target.display())))?;
        std::fs::rename(&self.temp, &self.target)
            .map_err(|e| local(format!("cannot create {}: {e}", self.target.display())))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Holds back plaintext on stdout up to [`HOLD_BACK`] bytes, then streams.
struct HoldBack<W: Write> {
    inner: W,
    held: Vec<u8>,
    streaming: bool,
    written: u64,
}

impl<W: Write> Write for HoldBack<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.streaming && self.held.len() + buf.len() > HOLD_BACK {
            self.streaming = true;
            self.inner.write_all(&self.held)?;
            self.written += self.held.len() as u64;
            self.held = Vec::new();
        }
        if self.streaming {
            self.inner.write_all(buf)?;
            self.written += buf.len() as u64;
        } else {
            self.held.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        if !self.streaming {
            let len: usize = bufs.iter().map(|b| b.len()).sum();
            if self.held.len() + len <= HOLD_BACK {
                for b in bufs {
                    self.held.extend_from_slice(b);
                }
                return Ok(len);
            }
            self.streaming = true;
            self.inner.write_all(&self.held)?;
            self.written += self.held.len() as u64;
            self.held = Vec::new();
        }
        let n = self.inner.write_vectored(bufs)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.streaming {
            self.inner.flush()?;
        }
        Ok(())
    }
}

impl<W: Write> HoldBack<W> {
    fn finish(mut self) -> std::io::Result<()> {
        self.inner.write_all(&self.held)?;
        self.held.clear();
        self.inner.flush()
    }
}

async fn encrypt(client: &ClientArgs, a: EncryptArgs) -> Result<(), Fail> {
    if a.keys.is_empty() && a.local_keys.is_empty() {
        return Err(local(
            "give at least one --key MOUNT/NAME or --local-key FILE",
        ));
    }
    let opts = options(a.io.threads)?;
    let context = parse_context(&a.context)?;
    let transit = transit_keks(client, &a.keys)?;
    let locals = local_keks(&a.local_keys)?;
    let keks: Vec<&dyn KekProvider> = transit
        .iter()
        .map(|k| k as &dyn KekProvider)
        .chain(locals.iter().map(|k| k as &dyn KekProvider))
        .collect();
    let file = positional_input(a.io.input.as_deref());
    let (input, len) = match file {
        Some(_) => (None, None),
        None => {
            let (input, len) = open_input(a.io.input.as_deref())?;
            (Some(input), len)
        }
    };
    let enc = Encryptor::new(&keks, context, opts).await?;
    // No BufReader or BufWriter: the encryptor reads about 1 MiB at a time straight into
    // the buffer it seals in place, and writes each batch of frames with one vectored call.
    let run = |out: &mut dyn Write| match (&file, input) {
        (Some(f), _) => enc.encrypt_file(f, out),
        (None, Some(input)) => enc.encrypt(with_progress(input, len), out),
        (None, None) => Err(EnvelopeError::InvalidArgument("no input".into())),
    };
    match a.io.output.as_deref() {
        Some(out) => match special_output(out)? {
            Some(mut device) => {
                run(&mut device)?;
                Ok(())
            }
            None => {
                let mut staged = Staged::create(out)?;
                run(staged.writer()?)?;
                staged.commit()
            }
        },
        None => {
            run(&mut stdout_file()?)?;
            Ok(())
        }
    }
}

/// OUT opened for writing in place when it exists and is not a regular file (a device
/// such as /dev/null, a FIFO): such a target cannot be replaced by a renamed temporary
/// file, so it is written like stdout.
fn special_output(out: &Path) -> Result<Option<File>, Fail> {
    match std::fs::metadata(out) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map(Some)
            .map_err(|e| local(format!("cannot open {}: {e}", out.display()))),
        _ => Ok(None),
    }
}

/// Reads the header and opens it with the local keys, then the transit keys it names.
async fn open(
    client: &ClientArgs,
    local_files: &[PathBuf],
    input: &mut dyn Read,
    opts: Options,
) -> Result<Decryptor, Fail> {
    let header = Header::read_from(input)?;
    let locals = local_keks(local_files)?;
    let transit = header_transit_keks(client, &header)?;
    let keks: Vec<&dyn KekProvider> = locals
        .iter()
        .map(|k| k as &dyn KekProvider)
        .chain(transit.iter().map(|k| k as &dyn KekProvider))
        .collect();
    Ok(Decryptor::from_header(header, &keks, opts).await?)
}

async fn decrypt(client: &ClientArgs, a: DecryptArgs) -> Result<(), Fail> {
    let opts = options(a.io.threads)?;
    if let Some(file) = positional_input(a.io.input.as_deref()) {
        let dec = open(
            client,
            &a.local_keys,
            &mut BufReader::with_capacity(64 << 10, &file),
            opts,
        )
        .await?;
        return write_plaintext(a.io.output.as_deref(), |out| dec.decrypt_file(&file, out));
    }
    let (input, len) = open_input(a.io.input.as_deref())?;
    let mut input = BufReader::with_capacity(1 << 20, with_progress(input, len));
    let dec = open(client, &a.local_keys, &mut input, opts).await?;
    write_plaintext(a.io.output.as_deref(), |out| dec.decrypt(input, out))
}

/// Runs `decrypt` into OUT (through a temporary file) or into stdout or a device or FIFO
/// named by OUT (held back up to [`HOLD_BACK`]).
fn write_plaintext(
    output: Option<&Path>,
    decrypt: impl FnOnce(&mut dyn Write) -> Result<u64, EnvelopeError>,
) -> Result<(), Fail> {
    let device = match output {
        Some(out) => special_output(out)?,
        None => None,
    };
    match (output, device) {
        (Some(out), None) => {
            let mut staged = Staged::create(out)?;
            decrypt(staged.writer()?)?;
            staged.commit()
        }
        (_, device) => {
            let inner = match device {
                Some(device) => device,
                None => stdout_file()?,
            };
            let mut held = HoldBack {
                inner,
                // Reserved once: growing by doubling would copy and fault in twice as
                // many pages.
                held: Vec::with_capacity(HOLD_BACK),
                streaming: false,
                written: 0,
            };
            match decrypt(&mut held) {
                Ok(_) => held
                    .finish()
                    .map_err(|e| local(format!("cannot write to stdout: {e}"))),
                Err(e) => {
                    let written = held.written;
                    let mut f = Fail::from(e);
                    if written > 0 {
                        f.message = format!(
                            "{}; {written} bytes of verified plaintext were already written to stdout: discard them",
                            f.message
                        );
                    }
                    Err(f)
                }
            }
        }
    }
}

async fn rewrap(client: &ClientArgs, a: RewrapArgs) -> Result<(), Fail> {
    let (input, _) = open_input(a.io.input.as_deref())?;
    let mut input = BufReader::with_capacity(1 << 20, input);
    let header = Header::read_from(&mut input)?;
    let locals = local_keks(&a.local_keys)?;
    let transit = header_transit_keks(client, &header)?;
    let keks: Vec<&dyn KekProvider> = locals
        .iter()
        .map(|k| k as &dyn KekProvider)
        .chain(transit.iter().map(|k| k as &dyn KekProvider))
        .collect();
    let new_header = if a.keys.is_empty() {
        rewrap_header(&header, &keks, None).await?
    } else {
        let replace = transit_keks(client, &a.keys)?;
        let replace: Vec<&dyn KekProvider> = replace
            .iter()
            .map(|k| k as &dyn KekProvider)
            .chain(locals.iter().map(|k| k as &dyn KekProvider))
            .collect();
        rewrap_header(&header, &keks, Some(&replace)).await?
    };
    let copy = |out: &mut dyn Write, input: &mut dyn Read| -> Result<(), Fail> {
        out.write_all(&new_header.encode())
            .and_then(|()| std::io::copy(input, out).map(|_| ()))
            .and_then(|()| out.flush())
            .map_err(|e| local(format!("cannot write the output: {e}")))
    };
    match a.io.output.as_deref() {
        Some(out) => match special_output(out)? {
            Some(mut device) => copy(&mut device, &mut input),
            None => {
                let mut staged = Staged::create(out)?;
                copy(staged.writer()?, &mut input)?;
                staged.commit()
            }
        },
        None => {
            let stdout = std::io::stdout();
            copy(&mut BufWriter::new(stdout.lock()), &mut input)
        }
    }
}

fn inspect(client: &ClientArgs, a: &InspectArgs) -> Result<(), Fail> {
    let format = client.format()?;
    let (mut input, _) = open_input(a.input.as_deref())?;
    let h = Header::read_from(&mut input)?;
    let keys: Vec<_> = h
        .wrapped_keys
        .iter()
        .map(|w| json!({"kind": w.kind.as_str(), "key": w.key_ref, "version": w.version}))
        .collect();
    let context: serde_json::Map<String, serde_json::Value> = h
        .context
        .iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    match format {
        Format::Json => output::json(&json!({
            "format_version": keyhaven_envelope::format::FORMAT_VERSION,
            "algorithm": format!("0x{:04x}", h.algorithm),
            "message_id": hex_string(&h.message_id),
            "frame_size": h.frame_len,
            "context": context,
            "keys": keys,
            "verified": false,
        }))?,
        Format::Table => {
            let mut rows = vec![
                (
                    "format_version".to_owned(),
                    keyhaven_envelope::format::FORMAT_VERSION.to_string(),
                ),
                (
                    "algorithm".to_owned(),
                    format!(
                        "0x{:04x} (AES-256-GCM, HKDF-SHA256, committing)",
                        h.algorithm
                    ),
                ),
                ("message_id".to_owned(), hex_string(&h.message_id)),
                ("frame_size".to_owned(), h.frame_len.to_string()),
            ];
            for (k, v) in h.context.iter() {
                rows.push((format!("context.{k}"), v.to_owned()));
            }
            for w in &h.wrapped_keys {
                rows.push(("key".to_owned(), w.label()));
            }
            rows.push((
                "verified".to_owned(),
                "no (the header MAC needs the data key: decrypt verifies)".to_owned(),
            ));
            output::line(&output::table(&rows));
        }
    }
    Ok(())
}

fn new_local_key(a: &NewLocalKeyArgs) -> Result<(), Fail> {
    let text = LocalKek::generate_file_text().map_err(|e| local(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options
        .open(&a.output)
        .map_err(|e| local(format!("cannot create {}: {e}", a.output.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| local(format!("cannot write {}: {e}", a.output.display())))?;
    let kek = LocalKek::from_hex(text.trim()).map_err(|e| local(e.to_string()))?;
    output::line(&format!(
        "local key {} written to {}",
        kek.id(),
        a.output.display()
    ));
    Ok(())
}
