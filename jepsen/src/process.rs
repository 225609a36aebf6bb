//! Child processes for tests: servers that die with the test, and etcdctl runs.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A server process, killed (SIGKILL) when dropped. Its stdout and stderr go to `log`.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Proc {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("wait for child")
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts TCP connections; panics with the process's log otherwise.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!(
                        "{} exited ({status}) before listening on {addr}:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {addr} after {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs `etcdctl --endpoints=<endpoint> <args>` with a bounded command timeout.
pub fn etcdctl(bin: &Path, endpoint: &str, args: &[&str]) -> CmdOutput {
    etcdctl_input(bin, endpoint, args, "")
}

/// Like [`etcdctl`], with `input` on standard input (for `txn`, `put` without a value, ...).
pub fn etcdctl_input(bin: &Path, endpoint: &str, args: &[&str], input: &str) -> CmdOutput {
    let mut child = Command::new(bin)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // etcdctl may exit before reading everything (a usage error); that is its answer.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("wait for {}: {e}", bin.display()));
    CmdOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// What etcdctl said to its user on stderr: its client library also logs retries there as JSON
/// lines with timestamps, which differ from run to run and are dropped.
pub fn user_stderr(s: &str) -> String {
    s.lines().filter(|l| !l.starts_with("{\"level\"")).collect::<Vec<_>>().join("\n")
}
