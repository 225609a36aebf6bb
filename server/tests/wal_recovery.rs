//! WAL damage through the real binary: a torn tail is cut off and the node serves everything
//! before it; damage in the middle stops the node with an error naming the file and offset,
//! and nothing is served.

mod common;

use jepsen::{etcdctl, provision};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

/// The one WAL segment of a small data directory.
fn wal_path(server: &jepsen::Server) -> std::path::PathBuf {
    let dir = server.spec.data_dir.join("member").join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

/// Where the records end: the segment is preallocated with zeros after them.
fn records_end(bytes: &[u8]) -> usize {
    (bytes.iter().rposition(|b| *b != 0).unwrap() + 1 + 7) & !7
}

#[test]
fn torn_tail_is_cut_and_middle_corruption_is_reported() {
    let bins = provision();
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::start_keel(dir.path(), &bins);
    for i in 0..20 {
        let out =
            etcdctl(&bins.etcdctl, &server.endpoint(), &["put", &format!("key{i:02}"), &format!("value{i}")]);
        assert_eq!(out.stdout, "OK\n", "{out:?}");
    }
    let wal = wal_path(&server);
    let spec = server.spec.clone();
    assert!(server.proc.signal_and_wait(libc::SIGTERM).success(), "graceful stop");

    // A torn record at the tail: part of a header, promising more bytes than follow.
    let end = records_end(&std::fs::read(&wal).unwrap());
    let mut f = OpenOptions::new().write(true).open(&wal).unwrap();
    f.seek(SeekFrom::Start(end as u64)).unwrap();
    f.write_all(&[1, 2, 3, 4, 200, 0, 0, 0, 4, 0, 0]).unwrap();
    drop(f);
    let mut server = jepsen::Server::start("keel", &common::keel_bin(), spec.clone(), &bins.etcdctl);
    let out = etcdctl(&bins.etcdctl, &server.endpoint(), &["get", "key", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 20, "all writes before the torn tail are served: {out:?}");
    assert!(server.proc.log_text().contains("torn WAL tail"), "the cut is logged");
    assert!(server.proc.signal_and_wait(libc::SIGTERM).success());

    // Damage a record in the middle.
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = records_end(&bytes) / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    let log = spec.data_dir.with_extension("corrupt.log");
    let mut proc = jepsen::Proc::spawn("keel", &common::keel_bin(), &spec.args(), &log);
    let status = proc.wait_exit(Duration::from_secs(30)).expect("keel must exit on a corrupt WAL");
    assert!(!status.success(), "exit status must report failure");
    let text = proc.log_text();
    assert!(text.contains("corrupt record at offset"), "{text}");
    assert!(text.contains(&wal.display().to_string()), "the error names the file: {text}");
    assert!(std::net::TcpStream::connect(spec.client_addr()).is_err(), "nothing is served");
}
