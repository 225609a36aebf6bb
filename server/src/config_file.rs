//! etcd's `--config-file`: a YAML mapping from etcd's flag names to values.
//!
//! As in etcd 3.5 (checked against its binary), a config file replaces the command line: the
//! other flags are still parsed (an unknown one is still an error) but their values are
//! ignored. Each key the file sets becomes `--key=value` for the same clap parser the command
//! line goes through, so defaults and validation are shared. Like etcd, which decodes the file
//! into a typed struct, a value of the wrong YAML type is refused (`heartbeat-interval: "100"`,
//! `auto-compaction-retention: 1`, `name: 123`), a null value leaves the default, and keys it
//! does not know are ignored; Keel names the ignored ones in a warning.

use crate::config::Config;
use clap::Parser;
use std::path::{Path, PathBuf};
use thiserror::Error;
use yaml_rust2::{Yaml, YamlLoader};

/// Bound on a config file's size: etcd's are a few KiB.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// The Go type etcd decodes a key into, which decides the YAML values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A string (URLs, names, modes, `auto-compaction-retention`).
    Str,
    /// An unsigned integer (`uint`, `uint64`).
    Uint,
    /// A signed integer (`int64`).
    Int,
    /// A `time.Duration`: an integer count of nanoseconds.
    DurationNs,
}

/// Every etcd key Keel takes, with etcd's type for it.
const KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("data-dir", Kind::Str),
    ("listen-client-urls", Kind::Str),
    ("advertise-client-urls", Kind::Str),
    ("listen-peer-urls", Kind::Str),
    ("initial-advertise-peer-urls", Kind::Str),
    ("initial-cluster", Kind::Str),
    ("initial-cluster-state", Kind::Str),
    ("initial-cluster-token", Kind::Str),
    ("heartbeat-interval", Kind::Uint),
    ("election-timeout", Kind::Uint),
    ("max-request-bytes", Kind::Uint),
    ("max-txn-ops", Kind::Uint),
    ("snapshot-count", Kind::Uint),
    ("quota-backend-bytes", Kind::Int),
    ("experimental-watch-progress-notify-interval", Kind::DurationNs),
    ("log-level", Kind::Str),
    ("listen-metrics-urls", Kind::Str),
    ("auto-compaction-mode", Kind::Str),
    ("auto-compaction-retention", Kind::Str),
];

/// etcd's TLS settings: Keel serves plain HTTP only, so a file that asks for TLS is refused
/// rather than served without it. Empty settings (as in etcd's sample file) are fine.
const TLS_SECTIONS: &[&str] = &["client-transport-security", "peer-transport-security"];

#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: larger than {CONFIG_FILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("config file {path}: invalid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("config file {path}: expected a mapping of etcd's configuration keys")]
    NotMapping { path: String },
    #[error("config file {path}: {key}: expected {expected}, found {found}")]
    Type { path: String, key: String, expected: &'static str, found: String },
    #[error("config file {path}: {key}: TLS is not supported yet; use http://")]
    Tls { path: String, key: String },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A config file read into a [`Config`], with the keys it ignored.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Keys Keel does not take (etcd's other settings, or unknown to etcd too), in file order.
    pub ignored: Vec<String>,
}

/// Reads `path` into a configuration, as etcd's `--config-file` does.
pub fn load(path: &Path) -> Result<Loaded, ConfigFileError> {
    let shown = path.display().to_string();
    let read_err = |source| ConfigFileError::Read { path: shown.clone(), source };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigFileError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse(&text, path)
}

/// Parses a config file's text (`path` only names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigFileError> {
    let shown = path.display().to_string();
    let args = to_args(text, &shown)?;
    let config =
        Config::try_parse_from(std::iter::once("keel".to_string()).chain(args.args)).map_err(|e| {
            // clap's first line says what is wrong (`error: invalid value 'x' for '--max-txn-ops
            // <MAX_TXN_OPS>': ...`); its usage lines name the command line, not the file.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            ConfigFileError::Invalid {
                path: shown.clone(),
                message: first.trim_start_matches("error: ").to_string(),
            }
        })?;
    Ok(Loaded { config: Config { config_file: Some(PathBuf::from(path)), ..config }, ignored: args.ignored })
}

struct Args {
    args: Vec<String>,
    ignored: Vec<String>,
}

fn to_args(text: &str, path: &str) -> Result<Args, ConfigFileError> {
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| ConfigFileError::Yaml { path: path.to_string(), message: e.to_string() })?;
    let mut out = Args { args: Vec::new(), ignored: Vec::new() };
    let map = match docs.first() {
        // An empty file (or one with comments only) sets nothing, as for etcd.
        None | Some(Yaml::Null) => return Ok(out),
        Some(Yaml::Hash(map)) => map,
        Some(_) => return Err(ConfigFileError::NotMapping { path: path.to_string() }),
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Err(ConfigFileError::NotMapping { path: path.to_string() });
        };
        if TLS_SECTIONS.contains(&key) {
            if asks_for_tls(value) {
                return Err(ConfigFileError::Tls { path: path.to_string(), key: key.to_string() });
            }
            continue;
        }
        let Some(&(_, kind)) = KEYS.iter().find(|(k, _)| *k == key) else {
            out.ignored.push(key.to_string());
            continue;
        };
        let type_err = |expected| ConfigFileError::Type {
            path: path.to_string(),
            key: key.to_string(),
            expected,
            found: describe(value),
        };
        let text = match (kind, value) {
            (_, Yaml::Null) => continue,
            (Kind::Str, Yaml::String(s)) => s.clone(),
            (Kind::Str, _) => return Err(type_err("a string")),
            (Kind::Uint, Yaml::Integer(n)) if *n >= 0 => n.to_string(),
            (Kind::Uint, _) => return Err(type_err("a non-negative integer")),
            (Kind::Int, Yaml::Integer(n)) => n.to_string(),
            (Kind::Int, _) => return Err(type_err("an integer")),
            (Kind::DurationNs, Yaml::Integer(n)) if *n >= 0 => format!("{n}ns"),
            (Kind::DurationNs, _) => return Err(type_err("an integer count of nanoseconds")),
        };
        out.args.push(format!("--{key}={text}"));
    }
    Ok(out)
}

/// Whether an etcd `*-transport-security` section turns TLS on: a certificate, key or CA
/// file, client certificate authentication, or automatic TLS.
fn asks_for_tls(section: &Yaml) -> bool {
    let Yaml::Hash(map) = section else {
        return !matches!(section, Yaml::Null);
    };
    map.values().any(|v| match v {
        Yaml::Null => false,
        Yaml::String(s) => !s.is_empty(),
        Yaml::Boolean(b) => *b,
        _ => true,
    })
}

/// A YAML value as an error shows it.
fn describe(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Integer(n) => format!("the number {n}"),
        Yaml::Real(r) => format!("the number {r}"),
        Yaml::Boolean(b) => format!("the boolean {b}"),
        Yaml::Array(_) => "a list".to_string(),
        Yaml::Hash(_) => "a mapping".to_string(),
        Yaml::Null => "null".to_string(),
        Yaml::Alias(_) | Yaml::BadValue => "an unreadable value".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Loaded, ConfigFileError> {
        parse(text, Path::new("etcd.conf.yml"))
    }

    #[test]
    fn keys_become_flags() {
        let loaded = parse_str(
            "# etcd's sample layout\n\
             name: infra1\n\
             data-dir: /var/lib/keel\n\
             listen-client-urls: http://127.0.0.1:2379,http://127.0.0.1:22379\n\
             initial-cluster-state: existing\n\
             heartbeat-interval: 50\n\
             election-timeout: 500\n\
             snapshot-count: 5000\n\
             quota-backend-bytes: -1\n\
             max-txn-ops: 64\n\
             experimental-watch-progress-notify-interval: 5000000000\n\
             auto-compaction-mode: revision\n\
             auto-compaction-retention: \"1000\"\n\
             log-level: warn\n\
             listen-metrics-urls: http://127.0.0.1:2381\n\
             initial-cluster:\n\
             enable-v2: false\n\
             no-such-key: 5\n\
             client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  auto-tls: false\n",
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.name, "infra1");
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/keel")));
        assert_eq!(c.listen_client_urls, "http://127.0.0.1:2379,http://127.0.0.1:22379");
        assert_eq!(c.initial_cluster_state, "existing");
        assert_eq!((c.heartbeat_interval, c.election_timeout), (50, 500));
        assert_eq!((c.snapshot_count, c.max_txn_ops), (5000, 64));
        assert_eq!(c.quota_backend_bytes, -1);
        assert_eq!(c.watch_progress_notify_interval, std::time::Duration::from_secs(5));
        assert_eq!(
            (c.auto_compaction_mode.as_str(), c.auto_compaction_retention.as_str()),
            ("revision", "1000")
        );
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.listen_metrics_urls, "http://127.0.0.1:2381");
        // A null value leaves the default; keys Keel does not take are named.
        assert_eq!(c.initial_cluster, None);
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(loaded.ignored, vec!["enable-v2".to_string(), "no-such-key".to_string()]);
        assert_eq!(c.config_file, Some(PathBuf::from("etcd.conf.yml")));
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        for text in ["", "# nothing\n", "---\n"] {
            let c = parse_str(text).unwrap().config;
            assert_eq!(c.name, "default");
            assert_eq!(c.listen_client_urls, "http://localhost:2379");
        }
    }

    #[test]
    fn wrong_types_are_refused_as_etcd_refuses_them() {
        for (text, key) in [
            ("heartbeat-interval: abc\n", "heartbeat-interval"),
            ("heartbeat-interval: \"100\"\n", "heartbeat-interval"),
            ("snapshot-count: -1\n", "snapshot-count"),
            ("max-txn-ops: 1.5\n", "max-txn-ops"),
            ("name: 123\n", "name"),
            ("auto-compaction-retention: 1\n", "auto-compaction-retention"),
            (
                "experimental-watch-progress-notify-interval: 10m\n",
                "experimental-watch-progress-notify-interval",
            ),
            ("listen-client-urls: [http://a:1]\n", "listen-client-urls"),
        ] {
            let err = parse_str(text).unwrap_err();
            assert!(matches!(&err, ConfigFileError::Type { key: k, .. } if k == key), "{text}: {err}");
            assert!(err.to_string().starts_with("config file etcd.conf.yml: "), "{err}");
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let err = parse_str("name: [1,2\n").unwrap_err();
        assert!(matches!(err, ConfigFileError::Yaml { .. }), "{err}");
        assert!(err.to_string().contains("etcd.conf.yml"), "{err}");
        assert!(matches!(parse_str("- a\n- b\n").unwrap_err(), ConfigFileError::NotMapping { .. }));
        // Values clap refuses, named with the file.
        let err = parse_str("initial-cluster-state: sideways\n").unwrap_err();
        assert!(matches!(err, ConfigFileError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("sideways") && err.to_string().contains("etcd.conf.yml"), "{err}");
        let err = parse_str("client-transport-security:\n  cert-file: /etc/keel/server.crt\n").unwrap_err();
        assert!(matches!(err, ConfigFileError::Tls { .. }), "{err}");
        let err = load(Path::new("/nonexistent/keel.yml")).unwrap_err();
        assert!(err.to_string().starts_with("config file /nonexistent/keel.yml: "), "{err}");
    }
}
