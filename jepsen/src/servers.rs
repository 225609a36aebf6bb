//! Starting single-member etcd and Keel servers with the same flags, so that they agree on
//! member and cluster ids and can be compared output for output.

use crate::process::{etcdctl, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One member's flags; the same for etcd and for Keel, which takes etcd's flags.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    /// The peer URL decides the member id; give etcd and Keel the same one to compare ids.
    pub peer_url: String,
    pub token: String,
}

impl MemberSpec {
    /// A single member on loopback, on free client and peer ports.
    pub fn local(name: &str, data_dir: PathBuf, token: &str) -> MemberSpec {
        MemberSpec {
            name: name.to_string(),
            data_dir,
            client_port: crate::free_port(),
            peer_url: format!("http://127.0.0.1:{}", crate::free_port()),
            token: token.to_string(),
        }
    }

    /// Asks that the keel binary at `path` exists, naming the command that builds it.
    pub fn require_release_keel(path: &Path) {
        assert!(path.exists(), "{} not found: run `cargo build --release -p server` first", path.display());
    }
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn args(&self) -> Vec<String> {
        let client = self.client_url();
        [
            ("--name", self.name.clone()),
            ("--data-dir", self.data_dir.display().to_string()),
            ("--listen-client-urls", client.clone()),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", self.peer_url.clone()),
            ("--initial-advertise-peer-urls", self.peer_url.clone()),
            ("--initial-cluster", format!("{}={}", self.name, self.peer_url)),
            ("--initial-cluster-token", self.token.clone()),
            ("--initial-cluster-state", "new".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    }
}

/// A running server and how to reach it.
pub struct Server {
    pub proc: Proc,
    pub spec: MemberSpec,
}

impl Server {
    /// Starts `program` (etcd or keel) with `spec`'s flags and waits until etcdctl can read
    /// through it (a leader exists and requests are served).
    pub fn start(kind: &str, program: &Path, spec: MemberSpec, etcdctl_bin: &Path) -> Server {
        Server::start_with(kind, program, spec, &[], etcdctl_bin)
    }

    /// [`Server::start`] with `extra` flags after the spec's.
    pub fn start_with(
        kind: &str,
        program: &Path,
        spec: MemberSpec,
        extra: &[String],
        etcdctl_bin: &Path,
    ) -> Server {
        std::fs::create_dir_all(spec.data_dir.parent().expect("data dir has a parent"))
            .expect("create parent");
        let log = spec.data_dir.with_extension("log");
        let args: Vec<String> = spec.args().into_iter().chain(extra.iter().cloned()).collect();
        let mut proc = Proc::spawn(kind, program, &args, &log);
        proc.wait_listening(spec.client_addr(), Duration::from_secs(30));
        let server = Server { proc, spec };
        server.wait_serving(etcdctl_bin, Duration::from_secs(30));
        server
    }

    pub fn endpoint(&self) -> String {
        self.spec.client_url()
    }

    pub fn wait_serving(&self, etcdctl_bin: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = etcdctl(etcdctl_bin, &self.endpoint(), &["get", "health-probe"]);
            if out.code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not serve reads after {timeout:?}: {out:?}\n{}",
                self.proc.name,
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
