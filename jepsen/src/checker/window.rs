//! The smallest piece of a non-linearizable history that shows the bug.
//!
//! # The choice of window
//!
//! 1. **Shortest failing prefix.** Linearizability is prefix-closed: if a history is
//!    linearizable, so is every prefix of it, where operations still running at the cut count
//!    as outcome-unknown (they may or may not have taken effect by then). So "the prefix up to
//!    time `t` is not linearizable" is monotone in `t`, and a binary search over the return
//!    times of the failing partition finds the earliest return after which no explanation
//!    exists. That return's operation is the *culprit*: everything before it was explainable.
//! 2. **Where the search got stuck.** Re-checking that prefix yields the deepest point of the
//!    search ([`Stuck`]): the longest linearization found, the operation whose return it could
//!    not get past, and the candidates that could have gone next. The window spans from the
//!    earliest invoke among the culprit, the blocked operation and the candidates that
//!    returned, to the cut.
//! 3. **Context.** A stale read or failed cas is only a bug because of earlier writes, which
//!    usually returned before the window. So the window is widened back to the invokes of the
//!    last two operations of the linearization that changed the state before it.
//!
//! The window then shows every operation of the prefix that overlaps that span. Operations with
//! an unknown outcome are shown when invoked before the cut, however early, since they could
//! take effect inside the window.

use super::model::{Model, Operation};
use super::wgl::{search, Budget, CheckOptions, Failure, Item, Search, Stuck};

/// A minimal non-linearizable window; indices are into the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window<S> {
    /// The prefix ends at this time (the culprit's return); later events are not part of it.
    pub cut: u64,
    /// The operation whose return makes the prefix non-linearizable.
    pub culprit: usize,
    /// Where the search over the prefix got stuck.
    pub stuck: Stuck<S>,
    /// The start of the shown span.
    pub start: u64,
    /// The operations to show, in invoke order.
    pub ops: Vec<usize>,
}

/// The window for a failure that [`super::check`] reported for `history`. Each re-check of a
/// prefix gets the budget in `opts`; a prefix whose check runs out of budget is treated as
/// linearizable, so the window may then be longer than minimal, but is still a violation.
pub fn minimal_window<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    failure: &Failure<M::State>,
    opts: &CheckOptions,
) -> Window<M::State> {
    let part = &failure.partition;
    let mut cuts: Vec<u64> = part.iter().filter_map(|&i| history[i].ret_time()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    // The whole partition is known to fail; its last return is the fallback cut.
    let last = *cuts.last().expect("a failing partition has a returned operation");
    let mut found = (last, failure.stuck.clone());
    // Binary search for the first failing cut: invariant `cuts[hi]` fails (or is the fallback).
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match check_prefix::<M>(history, part, cuts[mid], opts) {
            Some(stuck) => {
                found = (cuts[mid], stuck);
                hi = mid;
            }
            None => lo = mid + 1,
        }
    }
    let (cut, stuck) = found;
    let culprit = if history[stuck.blocked].ret_time() == Some(cut) {
        stuck.blocked
    } else {
        *part.iter().find(|&&i| history[i].ret_time() == Some(cut)).expect("the cut is a return time")
    };
    let returned_by_cut = |i: usize| history[i].ret_time().is_some_and(|t| t <= cut);
    let mut start = history[culprit].call.min(history[stuck.blocked].call);
    for &c in &stuck.candidates {
        if returned_by_cut(c) {
            start = start.min(history[c].call);
        }
    }
    // Context: the last two state changes of the linearization that happened before `start`.
    let mut changes = 0;
    for k in (0..stuck.linearized.len()).rev() {
        let (op, ref after) = stuck.linearized[k];
        let before = if k == 0 { M::init() } else { stuck.linearized[k - 1].1.clone() };
        // Operations without a return in the prefix are shown anyway, and their invokes may be
        // arbitrarily early: they must not stretch the span.
        if *after != before && returned_by_cut(op) {
            if history[op].ret_time() < Some(start) {
                changes += 1;
            }
            start = start.min(history[op].call);
            if changes == 2 {
                break;
            }
        }
    }
    let mut ops: Vec<usize> = part
        .iter()
        .copied()
        .filter(|&i| history[i].call <= cut && history[i].ret_time().is_none_or(|r| r >= start))
        .collect();
    ops.sort_by_key(|&i| (history[i].call, i));
    Window { cut, culprit, stuck, start, ops }
}

/// `Some(stuck)` if the prefix of the partition up to `cut` is not linearizable.
fn check_prefix<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    part: &[usize],
    cut: u64,
    opts: &CheckOptions,
) -> Option<Stuck<M::State>> {
    let items = part
        .iter()
        .filter(|&&i| history[i].call <= cut)
        .map(|&i| Item { op: i, definite: history[i].ret_time().is_some_and(|t| t <= cut) })
        .collect();
    match search::<M>(history, items, &mut Budget::new(opts)) {
        Search::Stuck(stuck) => Some(stuck),
        Search::Linearizable | Search::OutOfBudget => None,
    }
}
