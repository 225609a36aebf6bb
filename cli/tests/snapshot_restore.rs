//! `keelctl snapshot restore` against `etcdutl snapshot restore` 3.5.1: the same flags, nothing
//! on standard output, and the same error lines and exit codes for what both refuse.

use jepsen::{provision, user_stderr};
use std::path::Path;
use std::process::Command;

fn run(program: &Path, args: &[&str]) -> (String, String, i32) {
    let out = Command::new(program).args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // etcdutl logs to stderr; keep only the error line.
    let kept = user_stderr(&stderr);
    let error: Vec<&str> = kept.lines().filter(|l| l.starts_with("Error:")).collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), error.join("\n"), out.status.code().unwrap_or(-1))
}

#[test]
fn restore_refusals_match_etcdutl() {
    let bins = provision();
    let keelctl = Path::new(env!("CARGO_BIN_EXE_keelctl"));
    let dir = tempfile::tempdir().unwrap();
    // No digest: 1000 bytes is not a multiple of 512 plus 32.
    let no_hash = dir.path().join("no-hash.db");
    std::fs::write(&no_hash, vec![0u8; 1000]).unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("something"), b"x").unwrap();
    let missing = dir.path().join("missing.db");
    // etcdutl may leave a partly written directory behind: each tool gets its own.
    let fresh = |tool: &str, name: &str| dir.path().join(format!("{name}-{tool}")).display().to_string();
    let cases = |tool: &str| -> Vec<(Vec<String>, String)> {
        vec![
            (
                vec![no_hash.display().to_string(), format!("--data-dir={}", fresh(tool, "a"))],
                fresh(tool, "a"),
            ),
            (vec![no_hash.display().to_string(), format!("--data-dir={}", full.display())], String::new()),
            (
                vec![missing.display().to_string(), format!("--data-dir={}", fresh(tool, "b"))],
                fresh(tool, "b"),
            ),
        ]
    };
    for ((want_args, want_dir), (got_args, got_dir)) in cases("etcd").into_iter().zip(cases("keel")) {
        let args = |case: &[String]| {
            let mut args = vec!["snapshot".to_string(), "restore".to_string()];
            args.extend(case.iter().cloned());
            args
        };
        let (want_args, got_args) = (args(&want_args), args(&got_args));
        let strs = |a: &[String]| a.iter().map(String::clone).collect::<Vec<_>>();
        let want = run(&bins.etcdutl, &strs(&want_args).iter().map(String::as_str).collect::<Vec<_>>());
        let got = run(keelctl, &strs(&got_args).iter().map(String::as_str).collect::<Vec<_>>());
        let norm = |s: &str, d: &str| if d.is_empty() { s.to_string() } else { s.replace(d, "<dir>") };
        let want = (want.0, norm(&want.1, &want_dir), want.2);
        let got = (got.0, norm(&got.1, &got_dir), got.2);
        assert_eq!(got, want, "{got_args:?}");
    }
}
