//! `keel-jepsen`: Jepsen tooling for Keel.
//!
//! `keel-jepsen check-history FILE [--html OUT.html]` checks a Jepsen register history (the
//! `jepsen.util` log format, see [`jepsen::checker::parse`]) for linearizability and prints
//! `linearizable` or `not linearizable`.
//!
//! Exit status: 0 linearizable, 1 not linearizable, 2 bad input (unreadable file, malformed
//! line: the message names the line), 3 undecided within the budget (`--max-steps`,
//! `--timeout-secs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen::checker::{
    check, minimal_window, parse_register_history, render_html, CheckOptions, HtmlOptions, Register, Verdict,
};

#[derive(Parser)]
#[command(name = "keel-jepsen", about = "Jepsen tooling for Keel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a Jepsen register history (read/write/cas) for linearizability.
    CheckHistory {
        /// The history: `INFO  jepsen.util - <process>\t<type>\t<f>\t<value>` lines.
        file: PathBuf,
        /// On a violation, write a self-contained HTML timeline of the minimal failing window here.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
        /// Give up (exit 3) after this many search steps.
        #[arg(long, default_value_t = CheckOptions::default().max_steps)]
        max_steps: u64,
        /// Give up (exit 3) after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckHistory { file, html, max_steps, timeout_secs } => {
            let opts = CheckOptions { max_steps, timeout: Some(Duration::from_secs(timeout_secs)) };
            check_history(&file, html.as_deref(), &opts)
        }
    }
}

fn check_history(file: &std::path::Path, html: Option<&std::path::Path>, opts: &CheckOptions) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keel-jepsen: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let history = match parse_register_history(&text) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("keel-jepsen: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let result = check::<Register>(&history, opts);
    match result.verdict {
        Verdict::Linearizable => {
            println!("linearizable");
            if html.is_some() {
                eprintln!("keel-jepsen: no violation, so no HTML report written");
            }
            ExitCode::SUCCESS
        }
        Verdict::Unknown => {
            println!("unknown");
            eprintln!(
                "keel-jepsen: undecided after {} search steps; raise --max-steps or --timeout-secs",
                result.steps
            );
            ExitCode::from(3)
        }
        Verdict::NotLinearizable => {
            println!("not linearizable");
            if let (Some(out), Some(failure)) = (html, result.failure.as_ref()) {
                let window = minimal_window::<Register>(&history, failure, opts);
                let title = file
                    .file_name()
                    .map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
                let page = render_html(
                    &history,
                    &window,
                    |s: &Option<i64>| s.map_or_else(|| "nil".to_string(), |v| v.to_string()),
                    &HtmlOptions { title: &title, time_name: "line" },
                );
                if let Err(e) = std::fs::write(out, page) {
                    eprintln!("keel-jepsen: cannot write {}: {e}", out.display());
                    return ExitCode::from(2);
                }
                eprintln!(
                    "keel-jepsen: wrote {} (first violation at line {}, {} operations shown)",
                    out.display(),
                    window.cut,
                    window.ops.len()
                );
            }
            ExitCode::from(1)
        }
    }
}
