//! The sans-IO boundary, checked mechanically: keel-core depends on no async runtime, network
//! or IO crate, and its sources name no clock, file, socket, thread or ambient randomness.
//! (core/clippy.toml bans the same at the type level; CI runs clippy with it.)

use std::path::Path;

const BANNED_DEPS: &[&str] = &["tokio", "madsim", "tonic", "hyper", "mio", "async-std", "memmap2", "libc"];
const BANNED_SOURCE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "rand::rng()",
    "rand::random",
    "from_entropy",
    "from_os_rng",
    "async fn",
];

#[test]
fn core_has_no_io_dependencies() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for line in deps.lines() {
        let name = line.split(['=', '.']).next().unwrap().trim();
        assert!(!BANNED_DEPS.contains(&name), "keel-core must not depend on {name}");
    }
}

fn visit(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            visit(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn core_sources_name_no_clock_file_socket_or_ambient_randomness() {
    let mut files = Vec::new();
    visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 5, "found the sources");
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for banned in BANNED_SOURCE {
                if code.contains(banned) {
                    hits.push(format!("{}:{}: {banned}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(hits.is_empty(), "outside the sans-IO boundary:\n{}", hits.join("\n"));
}
