use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use super::chain::Head;
use super::group::lock;
use super::writer::Writer;
use super::*;

fn write_chain(path: &Path, records: &[&str], close: bool) {
    let mut head = Head::genesis();
    let mut out = Vec::new();
    head.append(
        br#"{"type":"audit_file","event":"open","reason":"start"}"#,
        &mut out,
    );
    for r in records {
        head.append(r.as_bytes(), &mut out);
    }
    if close {
        head.append(
            br#"{"type":"audit_file","event":"close","reason":"shutdown"}"#,
            &mut out,
        );
    }
    std::fs::write(path, out).unwrap();
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(path, out).unwrap();
}

const RECS: [&str; 4] = [
    r#"{"type":"request","request":{"path":"a"}}"#,
    r#"{"type":"response","request":{"path":"a"}}"#,
    r#"{"type":"request","request":{"path":"b"}}"#,
    r#"{"type":"response","request":{"path":"b"}}"#,
];

#[test]
fn a_clean_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    write_chain(&p, &RECS, true);
    let r = verify(&p).unwrap();
    assert_eq!(
        (r.lines, r.first_seq, r.last_seq, r.closed),
        (6, 1, 6, true)
    );
    assert_eq!(r.continues_from, None);
    let first = std::fs::read_to_string(&p).unwrap();
    assert!(first.starts_with(&format!("{{\"prev_hash\":\"{GENESIS}\",\"seq\":1,")));
}

#[test]
fn tampering_is_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    // lines: 1 open, 2..5 records, 6 close
    write_chain(&p, &RECS, true);
    rewrite(&p, |l| l[2] = l[2].replace("\"a\"", "\"x\""));
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((3, ProblemKind::Edited))
    );

    write_chain(&p, &RECS, true);
    rewrite(&p, |l| {
        l.remove(2);
    });
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((3, ProblemKind::Missing))
    );

    write_chain(&p, &RECS, true);
    rewrite(&p, |l| l.swap(2, 3));
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((3, ProblemKind::Reordered))
    );

    write_chain(&p, &RECS, true);
    rewrite(&p, |l| {
        let copy = l[1].clone();
        l.insert(3, copy);
    });
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((4, ProblemKind::Inserted))
    );

    write_chain(&p, &RECS, true);
    rewrite(&p, |l| {
        l.remove(0);
    });
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((1, ProblemKind::Missing))
    );

    write_chain(&p, &RECS, true);
    let len = std::fs::metadata(&p).unwrap().len();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    assert_eq!(
        verify(&p).unwrap_err().problem(),
        Some((6, ProblemKind::Truncated))
    );

    write_chain(&p, &RECS, true);
    rewrite(&p, |l| {
        l.truncate(4);
    });
    assert!(!verify(&p).unwrap().closed);
}

#[test]
fn bytes_in_memory_verify_as_the_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    write_chain(&p, &RECS, true);
    let from_memory = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        crate::internal::audit_verify_bytes(p, &bytes)
    };
    assert_eq!(from_memory(&p).unwrap(), verify(&p).unwrap());
    let records: Vec<&[u8]> =
        std::iter::once(br#"{"type":"audit_file","event":"open","reason":"start"}"#.as_slice())
            .chain(RECS.iter().map(|r| r.as_bytes()))
            .chain([br#"{"type":"audit_file","event":"close","reason":"shutdown"}"#.as_slice()])
            .collect();
    assert_eq!(
        crate::internal::audit_chain(&records),
        std::fs::read(&p).unwrap()
    );
    // A gap in `seq` reads the source a second time to tell a move from a deletion.
    rewrite(&p, |l| l.swap(2, 3));
    let (memory, file) = (from_memory(&p).unwrap_err(), verify(&p).unwrap_err());
    assert_eq!(memory.problem(), Some((3, ProblemKind::Reordered)));
    assert_eq!(memory.to_string(), file.to_string());
}

#[test]
fn the_writer_continues_an_existing_file_and_repairs_a_partial_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    write_chain(&p, &RECS, false);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"prev_hash\":\"sha256:ab").unwrap();
    drop(f);
    let mut w = Writer::new("file".into(), p.clone(), false);
    assert!(w.open("start").is_ok());
    w.append([RECS[0].as_bytes()].into_iter()).unwrap();
    w.close("shutdown");
    let r = verify(&p).unwrap();
    assert!(r.closed);
    assert_eq!(r.last_seq, 8);
    assert_eq!(r.unclean_restarts, vec![6]);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("\"repaired_tail_bytes\":23"), "{text}");
}

#[test]
fn a_new_file_is_created_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("new.log");
    let mut w = Writer::new("file".into(), p.clone(), false);
    assert!(w.open("start").is_ok());
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn rotation_links_segments() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let mut w = Writer::new("file".into(), p.clone(), true);
    assert!(w.open("start").is_ok());
    w.append(RECS.iter().map(|r| r.as_bytes())).unwrap();
    let old = dir.path().join("a.log.1");
    std::fs::rename(&p, &old).unwrap();
    w.close("reopen");
    assert!(w.open("reopen").is_ok());
    w.append([RECS[0].as_bytes()].into_iter()).unwrap();
    w.close("shutdown");
    let reports = verify_files(&[old.clone(), p.clone()]).unwrap();
    assert_eq!(reports[1].first_seq, reports[0].last_seq + 1);
    assert!(verify_files(&[p.clone(), old.clone()]).is_err());
    // Removing the close record of the old file breaks the link.
    rewrite(&old, |l| {
        l.pop();
    });
    let err = verify_files(&[old, p]).unwrap_err();
    assert_eq!(err.problem(), Some((1, ProblemKind::BrokenLink)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_batches_and_the_chain_holds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let device = FileDevice::start(FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path: p.clone(),
        timeout: Duration::from_secs(5),
        fsync: false,
    })
    .unwrap();
    let Sink::Group(group) = &device.sink else {
        panic!("a regular file is written in group commit");
    };
    let group = group.clone();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let device = device.clone();
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let rec = format!(r#"{{"type":"request","task":{t},"i":{i}}}"#);
                if t % 2 == 1 {
                    // A request and its response, handed over together.
                    let resp = format!(r#"{{"type":"response","task":{t},"i":{i}}}"#);
                    device
                        .write_batch(vec![rec.into_bytes(), resp.into_bytes()])
                        .await
                        .unwrap();
                } else {
                    device.write(rec.into_bytes()).await.unwrap();
                }
                if t == 0 && i == 100 {
                    group.request_reopen();
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    device.close().await;
    let r = verify(&p).unwrap();
    assert!(r.closed);
    // open, 1600 single records and 1600 pairs, close, open (reopen), close
    assert_eq!(r.lines, 4804);
    // Every pair is written as two neighbouring lines, request first.
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut pairs = 0;
    for (k, line) in lines.iter().enumerate() {
        if line["type"] == "response" {
            let before = &lines[k - 1];
            assert_eq!(before["type"], "request", "line {k}");
            assert_eq!((&before["task"], &before["i"]), (&line["task"], &line["i"]));
            pairs += 1;
        }
    }
    assert_eq!(pairs, 1600);
    assert!(matches!(
        device.write(b"{}".to_vec()).await,
        Err(EngineError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_device_dropped_without_close_still_closes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let device = FileDevice::start(FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path: p.clone(),
        timeout: Duration::from_secs(1),
        fsync: true,
    })
    .unwrap();
    device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
    drop(device);
    let r = verify(&p).unwrap();
    assert!(r.closed);
    assert_eq!(r.lines, 3);
}

#[tokio::test]
async fn a_failed_batch_fails_its_writers_and_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let device = FileDevice::start(FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path: p.clone(),
        timeout: Duration::from_secs(1),
        fsync: false,
    })
    .unwrap();
    device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
    let before = std::fs::read(&p).unwrap();
    // Swap the open file for one that refuses writes.
    let Sink::Group(group) = &device.sink else {
        panic!("a regular file is written in group commit");
    };
    lock(&group.writer).file = Some(File::open(&p).unwrap());
    assert!(device.write(RECS[1].as_bytes().to_vec()).await.is_err());
    assert_eq!(std::fs::read(&p).unwrap(), before);
    // The next batch reopens the file and continues the chain.
    device.write(RECS[2].as_bytes().to_vec()).await.unwrap();
    device.close().await;
    let r = verify(&p).unwrap();
    assert!(r.closed);
    assert!(
        !std::fs::read_to_string(&p)
            .unwrap()
            .contains("\"response\"")
    );
}

/// Regression (issue 10, item 11e): a missing audit directory stopped start-up with a
/// bare "No such file or directory". It is created, 0700, like the file's own 0600; a
/// directory that cannot be created is named in the error.
#[tokio::test]
async fn missing_audit_directory_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("logs/keyhaven/audit.log");
    let device = FileDevice::start(FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path: p.clone(),
        timeout: Duration::from_secs(1),
        fsync: false,
    })
    .unwrap();
    device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
    device.close().await;
    assert!(verify(&p).unwrap().closed);
    for d in ["logs", "logs/keyhaven"] {
        let mode = std::fs::metadata(dir.path().join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}: {mode:o}");
    }
    // A parent that cannot be a directory: the error says which.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let err = FileDevice::start(FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path: blocker.join("sub/audit.log"),
        timeout: Duration::from_secs(1),
        fsync: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "cannot create directory {}",
            blocker.join("sub").display()
        )),
        "{err}"
    );
}

#[test]
fn directories_and_world_writable_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = |path: PathBuf| FileDeviceConfig {
        name: "file".into(),
        description: String::new(),
        path,
        timeout: Duration::from_secs(1),
        fsync: false,
    };
    assert!(matches!(
        check_path(&config(dir.path().to_owned())),
        Err(AuditFileError::IsDirectory { .. })
    ));
    let p = dir.path().join("ww.log");
    std::fs::write(&p, b"").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(matches!(
        check_path(&config(p)),
        Err(AuditFileError::WorldWritable { .. })
    ));
    assert!(check_path(&config("/dev/full".into())).is_ok());
}
