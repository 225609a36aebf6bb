//! etcd's server flags, as far as Keel implements them, and what they resolve to.

use clap::Parser;
use keel_core::ids;
use keel_core::pb::etcdserverpb::Member;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Parser, Debug, Clone)]
#[command(name = "keel", version, about = "Keel: an etcd-compatible, Raft-replicated key-value store")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.keel].
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic.
    #[arg(long = "listen-client-urls", default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(long = "advertise-client-urls", default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(long = "listen-peer-urls", default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long = "initial-advertise-peer-urls", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long = "initial-cluster")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long = "initial-cluster-state", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long = "heartbeat-interval", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long = "election-timeout", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long = "max-request-bytes", default_value_t = 1572864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long = "max-txn-ops", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise alarms when backend size exceeds the given quota. 0 means use the default quota.
    // As etcd 3.5.1 does: 0 is 2 GiB, a negative value turns the quota off, above 8 GiB is
    // taken with a warning.
    #[arg(long = "quota-backend-bytes", default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Number of committed transactions to trigger a snapshot to disk.
    // etcd 3.5's default is 100000; etcd 3.6 lowered it to 10000. Keel saves only the keys that
    // changed, so a save is cheap, and fewer entries to replay make restarts faster.
    #[arg(long = "snapshot-count", default_value_t = 10000)]
    pub snapshot_count: u64,
    /// Duration of periodic watch progress notifications (e.g. 10m, 30s).
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: std::time::Duration,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long = "log-level", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long = "listen-metrics-urls", default_value = "")]
    pub listen_metrics_urls: String,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration
    /// based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision'
    /// for revision number based retention.
    #[arg(long = "auto-compaction-mode", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// Auto compaction retention length. 0 means disable auto compaction.
    #[arg(long = "auto-compaction-retention", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Path to the server configuration file (etcd's YAML). Note that if a configuration file is
    /// provided, other command line flags will be ignored.
    #[arg(long = "config-file")]
    pub config_file: Option<PathBuf>,
}

/// `--log-level` as a tracing filter: etcd's `panic` and `fatal` log errors only, as `error`.
pub fn tracing_level(log_level: &str) -> &str {
    match log_level {
        "panic" | "fatal" => "error",
        other => other,
    }
}

/// etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history (by time).
    Periodic(std::time::Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Go's `time.ParseDuration`, as etcd's flags take durations: a sequence of decimal numbers,
/// each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `500ms`, `10m` or `1h30m`;
/// `0` alone is zero. Negative durations are refused (no flag takes one).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut secs = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| invalid())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {s:?}")),
            _ => return Err(invalid()),
        };
        secs += n * scale;
        rest = after;
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| invalid())
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid URL {0:?}: expected http://host:port")]
    BadUrl(String),
    #[error("{0:?}: TLS is not supported yet; use http://")]
    Tls(String),
    #[error("invalid --initial-cluster entry {0:?}: expected name=url")]
    BadCluster(String),
    #[error("--initial-cluster has no member named {name:?} (this member's --name)")]
    NotInCluster { name: String },
    #[error(
        "--initial-cluster has {name}={cluster:?} but --initial-advertise-peer-urls has {advertised:?}; they must match"
    )]
    PeerUrlsMismatch { name: String, cluster: Vec<String>, advertised: Vec<String> },
    #[error("--heartbeat-interval must be positive and --election-timeout at least 2x it")]
    Timeouts,
    #[error("cannot resolve {0:?}")]
    Resolve(String),
    #[error("invalid --auto-compaction-retention {0:?} for --auto-compaction-mode {1}")]
    Retention(String, String),
}

/// Flags turned into what the server needs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub data_dir: PathBuf,
    pub client_addrs: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub initial_members: Vec<Member>,
    /// `--initial-cluster-state existing`: this member joins a running cluster, which assigned
    /// its id at MemberAdd (the ids above are then not its own: ask the cluster).
    pub join: bool,
    /// Where to listen for peers (only bound when the cluster has other members).
    pub peer_addrs: Vec<SocketAddr>,
    /// Where else to serve `/metrics` and `/health` (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<SocketAddr>,
    /// `None` when the retention is 0 (etcd's default: no automatic compaction).
    pub auto_compaction: Option<AutoCompaction>,
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

/// `http://host:port` to a socket address; `localhost` is the IPv4 loopback, as etcd binds it.
pub fn url_to_addr(url: &str) -> Result<SocketAddr, ConfigError> {
    if url.starts_with("https://") || url.starts_with("unixs://") {
        return Err(ConfigError::Tls(url.to_string()));
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| ConfigError::BadUrl(url.to_string()))?;
    let hostport = rest.trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| ConfigError::BadUrl(url.to_string()))?;
    let port: u16 = port.parse().map_err(|_| ConfigError::BadUrl(url.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::Resolve(url.to_string()))
}

impl Config {
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        if self.heartbeat_interval == 0 || self.election_timeout < 2 * self.heartbeat_interval {
            return Err(ConfigError::Timeouts);
        }
        let advertise_peer_urls = split_urls(&self.initial_advertise_peer_urls);
        for u in &advertise_peer_urls {
            url_to_addr(u)?;
        }
        let cluster = self.initial_cluster.clone().unwrap_or_else(|| {
            format!("{}={}", self.name, advertise_peer_urls.join(&format!(",{}=", self.name)))
        });
        // name=url pairs; a member with several peer URLs is named once per URL.
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) =
                part.split_once('=').ok_or_else(|| ConfigError::BadCluster(part.to_string()))?;
            url_to_addr(url)?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        let Some((_, cluster_urls)) = members.iter().find(|(n, _)| *n == self.name) else {
            return Err(ConfigError::NotInCluster { name: self.name.clone() });
        };
        let (mut a, mut b) = (cluster_urls.clone(), advertise_peer_urls.clone());
        a.sort();
        b.sort();
        if a != b {
            return Err(ConfigError::PeerUrlsMismatch {
                name: self.name.clone(),
                cluster: cluster_urls.clone(),
                advertised: advertise_peer_urls.clone(),
            });
        }
        let initial_members: Vec<Member> = members
            .iter()
            .map(|(name, urls)| Member {
                id: ids::member_id(urls, &self.initial_cluster_token),
                name: name.clone(),
                peer_ur_ls: urls.clone(),
                client_ur_ls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let member_id = ids::member_id(&advertise_peer_urls, &self.initial_cluster_token);
        let cluster_id = ids::cluster_id(&initial_members.iter().map(|m| m.id).collect::<Vec<_>>());
        let peer_addrs = split_urls(&self.listen_peer_urls)
            .iter()
            .map(|u| url_to_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        let client_addrs = split_urls(&self.listen_client_urls)
            .iter()
            .map(|u| url_to_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        if client_addrs.is_empty() {
            return Err(ConfigError::BadUrl(self.listen_client_urls.clone()));
        }
        let advertise_client_urls = split_urls(&self.advertise_client_urls);
        for u in &advertise_client_urls {
            url_to_addr(u)?;
        }
        let metrics_addrs = split_urls(&self.listen_metrics_urls)
            .iter()
            .map(|u| url_to_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        let auto_compaction = parse_retention(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        Ok(Resolved {
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name))),
            client_addrs,
            advertise_client_urls,
            advertise_peer_urls,
            member_id,
            cluster_id,
            initial_members,
            join: self.initial_cluster_state == "existing",
            peer_addrs,
            metrics_addrs,
            auto_compaction,
        })
    }
}

/// etcd's reading of `--auto-compaction-retention`: in periodic mode a Go duration, or a bare
/// integer counting hours; in revision mode an integer count of revisions. Zero disables it.
pub fn parse_retention(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, ConfigError> {
    let bad = || ConfigError::Retention(retention.to_string(), mode.to_string());
    let compaction = match mode {
        "periodic" => match retention.parse::<u64>() {
            Ok(hours) => AutoCompaction::Periodic(std::time::Duration::from_secs(hours.saturating_mul(3600))),
            Err(_) => AutoCompaction::Periodic(parse_duration(retention).map_err(|_| bad())?),
        },
        "revision" => {
            AutoCompaction::Revision(retention.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    let disabled = matches!(compaction, AutoCompaction::Periodic(d) if d.is_zero())
        || compaction == AutoCompaction::Revision(0);
    Ok((!disabled).then_some(compaction))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("keel").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]).unwrap();
        let r = c.resolve().unwrap();
        assert_eq!(r.data_dir, PathBuf::from("default.keel"));
        assert_eq!(r.client_addrs, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(r.initial_members.len(), 1);
        assert_eq!(r.initial_members[0].peer_ur_ls, vec!["http://localhost:2380".to_string()]);
        assert_eq!(r.member_id, ids::member_id(&["http://localhost:2380".to_string()], "etcd-cluster"));
    }

    #[test]
    fn durations_and_retentions_read_as_etcd_reads_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "1x", "m", "-1s", "1h-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_retention("periodic", "0"), Ok(None));
        assert_eq!(
            parse_retention("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            parse_retention("periodic", "5m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(300))))
        );
        assert_eq!(parse_retention("revision", "1000"), Ok(Some(AutoCompaction::Revision(1000))));
        assert_eq!(parse_retention("revision", "0"), Ok(None));
        assert!(parse_retention("revision", "5m").is_err());
        assert!(parse_retention("periodic", "soon").is_err());
        let c = parse(&["--auto-compaction-mode", "revision", "--auto-compaction-retention", "x"]).unwrap();
        assert!(matches!(c.resolve().unwrap_err(), ConfigError::Retention(..)));
        assert!(parse(&["--auto-compaction-mode", "hourly"]).is_err());
        assert!(parse(&["--log-level", "bogus"]).is_err());
        let c = parse(&["--listen-metrics-urls", "http://127.0.0.1:9999"]).unwrap();
        assert_eq!(c.resolve().unwrap().metrics_addrs, vec!["127.0.0.1:9999".parse().unwrap()]);
        assert!(parse(&[]).unwrap().resolve().unwrap().metrics_addrs.is_empty());
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let err = parse(&["--no-such-flag", "x"]).unwrap_err();
        assert!(err.to_string().contains("--no-such-flag"), "{err}");
    }

    #[test]
    fn procfile_member_gets_etcds_id() {
        let c = parse(&[
            "--name",
            "infra1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-cluster",
            "infra1=http://127.0.0.1:12380",
            "--initial-cluster-token",
            "etcd-cluster-1",
        ])
        .unwrap();
        assert_eq!(format!("{:x}", c.resolve().unwrap().member_id), "8211f1d0f64f3269");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let c = parse(&["--initial-cluster", "other=http://localhost:2380"]).unwrap();
        assert_eq!(c.resolve().unwrap_err(), ConfigError::NotInCluster { name: "default".into() });
        let c = parse(&["--listen-client-urls", "https://localhost:2379"]).unwrap();
        assert!(matches!(c.resolve().unwrap_err(), ConfigError::Tls(_)));
        let c = parse(&["--listen-client-urls", "localhost"]).unwrap();
        assert!(matches!(c.resolve().unwrap_err(), ConfigError::BadUrl(_)));
        let c =
            parse(&["--initial-cluster", "default=http://localhost:2380,b=http://localhost:3380"]).unwrap();
        assert_eq!(c.resolve().unwrap().initial_members.len(), 2);
        let c = parse(&["--initial-advertise-peer-urls", "http://127.0.0.1:9999"]).unwrap();
        // The default --initial-cluster follows the advertised URLs, so this is consistent.
        assert!(c.resolve().is_ok());
        let c = parse(&[
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:9999",
            "--initial-cluster",
            "default=http://127.0.0.1:1",
        ])
        .unwrap();
        assert!(matches!(c.resolve().unwrap_err(), ConfigError::PeerUrlsMismatch { .. }));
    }
}
