//! `keelctl`: etcdctl's commands against Keel (or etcd).

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use cli::output;
use keel_core::mvcc::range::prefix_end;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, PutRequest, RangeRequest,
};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(
    name = "keelctl",
    version,
    about = "A simple command line client for Keel and etcd (etcdctl-compatible)."
)]
struct Cli {
    /// gRPC endpoints
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// set the output format (simple, json)
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple")]
    write_out: Format,
    /// dial timeout for client connections
    #[arg(long = "dial-timeout", global = true, default_value = "2s", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// timeout for short running command (excluding dial timeout)
    #[arg(long = "command-timeout", global = true, default_value = "5s", value_parser = parse_duration)]
    command_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Simple,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Puts the given key into the store
    Put {
        key: String,
        /// The value; read from standard input when absent
        value: Option<String>,
        /// lease ID (in hexadecimal) to attach to the key
        #[arg(long, default_value = "0")]
        lease: String,
        /// return the previous key-value pair before modification
        #[arg(long = "prev-kv")]
        prev_kv: bool,
        /// updates the key using its current value
        #[arg(long = "ignore-value")]
        ignore_value: bool,
        /// updates the key using its current lease
        #[arg(long = "ignore-lease")]
        ignore_lease: bool,
    },
    /// Gets the key or a range of keys
    Get {
        key: String,
        range_end: Option<String>,
        /// Linearizable(l) or Serializable(s)
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Order of results; ASCEND or DESCEND (ASCEND by default)
        #[arg(long, default_value = "")]
        order: String,
        /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
        #[arg(long = "sort-by", default_value = "")]
        sort_by: String,
        /// Maximum number of results
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Get keys with matching prefix
        #[arg(long)]
        prefix: bool,
        /// Get keys that are greater than or equal to the given key using byte compare
        #[arg(long = "from-key")]
        from_key: bool,
        /// Specify the kv revision
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Get only the keys
        #[arg(long = "keys-only")]
        keys_only: bool,
        /// Get only the count
        #[arg(long = "count-only")]
        count_only: bool,
        /// Only write values when using the "simple" output format
        #[arg(long = "print-value-only")]
        print_value_only: bool,
    },
    /// Removes the specified key or range of keys [key, range_end)
    Del {
        key: String,
        range_end: Option<String>,
        /// delete keys with matching prefix
        #[arg(long)]
        prefix: bool,
        /// return deleted key-value pairs
        #[arg(long = "prev-kv")]
        prev_kv: bool,
        /// delete keys that are greater than or equal to the given key using byte compare
        #[arg(long = "from-key")]
        from_key: bool,
    },
    /// Manages Keel node snapshots
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// etcdutl's `snapshot` commands, for snapshot files Keel wrote (`etcdctl snapshot save`
/// against Keel).
#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Restores a Keel member snapshot to a new data directory (etcdutl's `snapshot restore`)
    Restore {
        filename: std::path::PathBuf,
        /// Path to the output data directory
        #[arg(long = "data-dir")]
        data_dir: std::path::PathBuf,
        /// Path to the WAL directory (use --data-dir if none given)
        #[arg(long = "wal-dir")]
        wal_dir: Option<std::path::PathBuf>,
        /// Human-readable name for this member
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap
        #[arg(long = "initial-cluster", default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// Initial cluster token for the etcd cluster during restore bootstrap
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster
        #[arg(long = "initial-advertise-peer-urls", default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory)
        #[arg(long = "skip-hash-check")]
        skip_hash_check: bool,
    },
}

/// `snapshot restore`: like etcdutl, nothing on standard output; errors as `Error: ...`.
fn snapshot_command(command: &SnapshotCommand) -> ExitCode {
    let SnapshotCommand::Restore {
        filename,
        data_dir,
        wal_dir,
        name,
        initial_cluster,
        initial_cluster_token,
        initial_advertise_peer_urls,
        skip_hash_check,
    } = command;
    let opts = server::snapshot::RestoreOptions {
        data_dir: data_dir.clone(),
        wal_dir: wal_dir.clone(),
        name: name.clone(),
        initial_cluster: initial_cluster.clone(),
        initial_cluster_token: initial_cluster_token.clone(),
        initial_advertise_peer_urls: initial_advertise_peer_urls.clone(),
        skip_hash_check: *skip_hash_check,
    };
    match server::snapshot::restore(filename, &opts) {
        Ok(()) => {
            eprintln!("restored snapshot {} into {}", filename.display(), data_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration {s:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Key and range end as etcd's client computes them for --prefix and --from-key.
fn key_range(key: &str, range_end: Option<&str>, prefix: bool, from_key: bool) -> (Bytes, Bytes) {
    let key = key.as_bytes().to_vec();
    if prefix {
        if key.is_empty() {
            return (Bytes::from_static(&[0]), Bytes::from_static(&[0]));
        }
        let end = prefix_end(&key);
        return (key.into(), end);
    }
    if from_key {
        let key = if key.is_empty() { vec![0] } else { key };
        return (key.into(), Bytes::from_static(&[0]));
    }
    (key.into(), range_end.map(|e| Bytes::copy_from_slice(e.as_bytes())).unwrap_or_default())
}

/// etcdctl's exit code for a server or connection error.
const EXIT_ERROR: u8 = 1;
/// etcdctl's exit code for bad arguments.
const EXIT_BAD_ARGS: u8 = 128;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    fail_with(EXIT_ERROR, msg)
}

fn fail_with(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error: {msg}");
    ExitCode::from(code)
}

/// Go's `strconv.ParseInt(s, 16, 64)`, with its error text, as etcdctl reports it.
fn parse_lease(s: &str) -> Result<i64, String> {
    i64::from_str_radix(s, 16).map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!("bad lease ID (strconv.ParseInt: parsing {s:?}: {why}), expecting ID in Hex")
    })
}

async fn connect(cli: &Cli) -> Result<KvClient<Channel>, String> {
    let endpoints = cli.endpoints.iter().map(|e| {
        let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
        Endpoint::from_shared(url).map(|ep| ep.connect_timeout(cli.dial_timeout).timeout(cli.command_timeout))
    });
    let endpoints: Vec<Endpoint> = endpoints.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let channel = Channel::balance_list(endpoints.into_iter());
    Ok(KvClient::new(channel))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Snapshot { command } = &cli.command {
        return snapshot_command(command);
    }
    let mut kv = match connect(&cli).await {
        Ok(kv) => kv,
        Err(e) => return fail(e),
    };
    let json = matches!(cli.write_out, Format::Json);
    let text = match &cli.command {
        Command::Put { key, value, lease, prev_kv, ignore_value, ignore_lease } => {
            if *ignore_value && value.is_some() {
                return fail_with(
                    EXIT_BAD_ARGS,
                    "put command needs only 1 argument when 'ignore-value' is set",
                );
            }
            let value = match (value, ignore_value) {
                (_, true) => String::new(),
                (Some(v), false) => v.clone(),
                (None, false) => {
                    let mut v = String::new();
                    if std::io::Read::read_to_string(&mut std::io::stdin(), &mut v).is_err() {
                        return fail_with(
                            EXIT_BAD_ARGS,
                            "put command needs 1 argument and input from stdin or 2 arguments",
                        );
                    }
                    v
                }
            };
            let lease = match parse_lease(lease) {
                Ok(l) => l,
                Err(e) => return fail_with(EXIT_BAD_ARGS, e),
            };
            let req = PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                lease,
                prev_kv: *prev_kv,
                ignore_value: *ignore_value,
                ignore_lease: *ignore_lease,
            };
            kv.put(req).await.map(|r| {
                let r = r.into_inner();
                if json {
                    output::put_json(&r)
                } else {
                    output::put_simple(&r)
                }
            })
        }
        Command::Get {
            key,
            range_end,
            consistency,
            order,
            sort_by,
            limit,
            prefix,
            from_key,
            rev,
            keys_only,
            count_only,
            print_value_only,
        } => {
            if *count_only {
                // etcdctl allows --count-only with the `fields` format only.
                return fail_with(EXIT_BAD_ARGS, "--count-only is only for `--write-out=fields`");
            }
            let serializable = match consistency.as_str() {
                "l" => false,
                "s" => true,
                other => return fail(format!("unknown consistency flag {other:?}")),
            };
            let mut sort_order = match order.to_uppercase().as_str() {
                "" => SortOrder::None,
                "ASCEND" => SortOrder::Ascend,
                "DESCEND" => SortOrder::Descend,
                _ => return fail(format!("bad sort order {order}")),
            };
            let sort_target = match sort_by.to_uppercase().as_str() {
                "" | "KEY" => SortTarget::Key,
                "CREATE" => SortTarget::Create,
                "MODIFY" => SortTarget::Mod,
                "VALUE" => SortTarget::Value,
                "VERSION" => SortTarget::Version,
                _ => return fail(format!("bad sort target {sort_by}")),
            };
            // Keys come back in ascending key order already; etcd's client sends no sort then.
            if sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
                sort_order = SortOrder::None;
            }
            let (key, range_end) = key_range(key, range_end.as_deref(), *prefix, *from_key);
            let req = RangeRequest {
                key,
                range_end,
                limit: *limit,
                revision: *rev,
                sort_order: sort_order as i32,
                sort_target: sort_target as i32,
                serializable,
                keys_only: *keys_only,
                count_only: *count_only,
                ..Default::default()
            };
            kv.range(req).await.map(|r| {
                let r = r.into_inner();
                if json {
                    output::get_json(&r)
                } else {
                    output::get_simple(&r, *print_value_only)
                }
            })
        }
        Command::Del { key, range_end, prefix, prev_kv, from_key } => {
            let (key, range_end) = key_range(key, range_end.as_deref(), *prefix, *from_key);
            let req = DeleteRangeRequest { key, range_end, prev_kv: *prev_kv };
            kv.delete_range(req).await.map(|r| {
                let r = r.into_inner();
                if json {
                    output::del_json(&r)
                } else {
                    output::del_simple(&r)
                }
            })
        }
        Command::Snapshot { .. } => unreachable!("handled before connecting"),
    };
    match text {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(status)
            if status.code() == tonic::Code::Cancelled || status.code() == tonic::Code::DeadlineExceeded =>
        {
            fail("context deadline exceeded")
        }
        Err(status) => fail(status.message()),
    }
}
