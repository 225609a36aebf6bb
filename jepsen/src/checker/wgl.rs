//! The Wing–Gong/Lowe depth-first search, with memoisation and P-compositionality.
//!
//! The operations that returned are turned into a doubly linked list of call and return events
//! in time order. The search walks that list: at a call it tries to linearize the operation
//! right now (apply it to the model state and unlink its call and return, so the walk restarts
//! from the head); at a return it has met an operation that must already have taken effect but
//! could not be placed, so it backtracks by undoing the most recent linearization and trying
//! the next candidate after it. Every (set of linearized operations, model state) configuration
//! it reaches is remembered: if a configuration was seen before, everything after it was
//! explored before too (Lowe's improvement, which turns the exponential search into one that is
//! usually near linear).
//!
//! # Operations with an unknown outcome
//!
//! They may take effect any time after their invoke, or never. They have no return, so they are
//! never *due*: they are not in the event list at all, and the search succeeds as soon as every
//! operation that did return is linearized. They are only tried when the walk is about to
//! backtrack at a return: "would placing one of the unknown operations invoked before this
//! return, now, help?". Trying them last rather than in invoke order matters: Jepsen histories
//! accumulate unknown operations (every timeout is one), and trying the oldest of them first at
//! every step sends the search down long fruitless branches before the obvious explanation.
//!
//! Unknown operations with equal requests are interchangeable once both are invoked: neither has
//! a deadline, so in any linearization one can stand in for the other. So the search only ever
//! places the earliest-invoked unplaced one of each distinct request (a "class"), and at a stuck
//! point tries one operation per class rather than every pending one. For the register that is
//! at most a few dozen tries however many timeouts have piled up.
//!
//! They also weaken the memo table: with `k` of them pending, the same returned operations and
//! state can be reached with up to `2^k` different subsets of them used. But a configuration
//! that used *fewer* unknown operations can do everything one that used more can (the extra ones
//! are optional and still available to it), so the memo keeps, per (linearized returned
//! operations, state), only the minimal subsets of unknown operations seen, and prunes any
//! configuration whose subset includes one of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::model::{Model, Operation};

/// Limits on one check, so that a pathological history yields [`Verdict::Unknown`] instead of
/// running (or allocating) forever. The budget is shared by all partitions of a history.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps (list entries visited) before giving up. Each step adds at most one entry to
    /// the memo table, so this also bounds memory.
    pub max_steps: u64,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
}

impl Default for CheckOptions {
    /// Ten million steps and 60 seconds. The reference Jepsen histories need at most about three
    /// thousand steps each; ten million steps keep the memo table to roughly half a gigabyte even
    /// for a partition of a couple of thousand operations.
    fn default() -> Self {
        CheckOptions { max_steps: 10_000_000, timeout: Some(Duration::from_secs(60)) }
    }
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The budget ran out before the search finished.
    Unknown,
}

/// Where a failed search got furthest: the longest linearization it found (by number of
/// returned operations it placed), and the operation it could not get past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck<S> {
    /// The linearization, as indices into the history in linearization order, each with the
    /// model state after it.
    pub linearized: Vec<(usize, S)>,
    /// The operation whose return the search could not get past: after `linearized`, none of
    /// the operations invoked before that return could be placed next so as to reach it.
    pub blocked: usize,
    /// The operations invoked before `blocked` returned that are not in `linearized`
    /// (including `blocked` itself): one of them would have had to go next.
    pub candidates: Vec<usize>,
}

/// A partition that is not linearizable, and where its search got stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure<S> {
    /// The partition's operations, as indices into the history.
    pub partition: Vec<usize>,
    pub stuck: Stuck<S>,
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult<S> {
    pub verdict: Verdict,
    /// Search steps taken, over all partitions.
    pub steps: u64,
    /// Set when `verdict` is [`Verdict::NotLinearizable`].
    pub failure: Option<Failure<S>>,
}

/// Checks that `history` is linearizable with respect to `M`, one partition (see
/// [`Model::partition`]) at a time. Stops at the first partition that is not linearizable.
pub fn check<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    opts: &CheckOptions,
) -> CheckResult<M::State> {
    let mut budget = Budget::new(opts);
    let mut verdict = Verdict::Linearizable;
    for partition in M::partition(history) {
        let items = partition.iter().map(|&op| Item { op, definite: history[op].ret.is_some() }).collect();
        match search::<M>(history, items, &mut budget) {
            Search::Linearizable => {}
            Search::OutOfBudget => {
                // The budget is shared, so no further partition could be checked either.
                verdict = Verdict::Unknown;
                break;
            }
            Search::Stuck(stuck) => {
                return CheckResult {
                    verdict: Verdict::NotLinearizable,
                    steps: budget.used,
                    failure: Some(Failure { partition, stuck }),
                };
            }
        }
    }
    CheckResult { verdict, steps: budget.used, failure: None }
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    /// Index into the history.
    pub op: usize,
    /// Whether its return counts. When false the operation is treated as having an unknown
    /// outcome even if it returned (used to cut a history short: see [`super::window`]).
    pub definite: bool,
}

pub(crate) struct Budget {
    max_steps: u64,
    deadline: Option<Instant>,
    pub used: u64,
}

impl Budget {
    pub fn new(opts: &CheckOptions) -> Budget {
        Budget { max_steps: opts.max_steps, deadline: opts.timeout.map(|t| Instant::now() + t), used: 0 }
    }

    /// Counts a step; false once the budget is exhausted.
    fn tick(&mut self) -> bool {
        self.used += 1;
        if self.used > self.max_steps {
            return false;
        }
        // Reading the clock costs tens of nanoseconds, about as much as a step: do it rarely (but
        // on the first step too, so that a deadline already past is always noticed).
        if self.used & 4095 == 1 {
            if let Some(deadline) = self.deadline {
                return Instant::now() < deadline;
            }
        }
        true
    }
}

pub(crate) enum Search<S> {
    Linearizable,
    Stuck(Stuck<S>),
    OutOfBudget,
}

/// A set of item indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn is_subset(&self, of: &Bits) -> bool {
        self.0.iter().zip(of.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// The configurations explored so far; see the module docs for the subset rule.
struct Memo<S> {
    seen: HashMap<(Bits, S), Vec<Bits>>,
}

impl<S: Clone + Eq + std::hash::Hash> Memo<S> {
    /// Records a configuration; false if it, or one that can do everything it can, was seen.
    fn insert(&mut self, definite: &Bits, state: &S, unknown: &Bits) -> bool {
        let minimal = self.seen.entry((definite.clone(), state.clone())).or_default();
        if minimal.iter().any(|u| u.is_subset(unknown)) {
            return false;
        }
        minimal.retain(|u| !unknown.is_subset(u));
        minimal.push(unknown.clone());
        true
    }
}

/// The linearized set, split into operations that returned and operations with an unknown
/// outcome (which the memo treats differently).
struct Linearized {
    definite: Bits,
    unknown: Bits,
    /// Each item's index within its half.
    slot: Vec<usize>,
}

impl Linearized {
    fn new(items: &[Item]) -> Linearized {
        let (mut d, mut u) = (0, 0);
        let slot = items
            .iter()
            .map(|it| {
                let n = if it.definite { &mut d } else { &mut u };
                *n += 1;
                *n - 1
            })
            .collect();
        Linearized { definite: Bits::new(d), unknown: Bits::new(u), slot }
    }
    fn set(&mut self, items: &[Item], i: usize) {
        let half = if items[i].definite { &mut self.definite } else { &mut self.unknown };
        half.set(self.slot[i]);
    }
    fn clear(&mut self, items: &[Item], i: usize) {
        let half = if items[i].definite { &mut self.definite } else { &mut self.unknown };
        half.clear(self.slot[i]);
    }
    fn contains(&self, items: &[Item], i: usize) -> bool {
        let half = if items[i].definite { &self.definite } else { &self.unknown };
        half.0[self.slot[i] / 64] & (1 << (self.slot[i] % 64)) != 0
    }
}

/// The event list of the operations that returned: entries `0..n` are calls and returns in time
/// order, `head` and `tail` are sentinels so that unlinking never needs a special case.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each entry: the item, whether it is that item's return, and its time.
    entry: Vec<(usize, bool, u64)>,
    /// Per item (returned ones only): its call and return entries.
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Events {
    fn new<I, O>(history: &[Operation<I, O>], items: &[Item]) -> Events {
        // (time, is_return, item). Calls sort before returns at the same time, so that operations
        // that touch at an instant count as concurrent: the permissive reading.
        let mut events = Vec::with_capacity(items.len() * 2);
        for (i, item) in items.iter().enumerate().filter(|(_, it)| it.definite) {
            let op = &history[item.op];
            // A return before its own call is malformed; read it as returning at the call.
            let ret = op.ret_time().expect("definite items have returned").max(op.call);
            events.push((op.call, false, i));
            events.push((ret, true, i));
        }
        events.sort_unstable();
        let n = events.len();
        let (head, tail) = (n, n + 1);
        // The list starts as head, 0, 1, ..., n - 1, tail.
        let order: Vec<usize> = std::iter::once(head).chain(0..n).chain(std::iter::once(tail)).collect();
        let mut next = vec![usize::MAX; n + 2];
        let mut prev = vec![usize::MAX; n + 2];
        for w in order.windows(2) {
            next[w[0]] = w[1];
            prev[w[1]] = w[0];
        }
        let mut call_of = vec![usize::MAX; items.len()];
        let mut ret_of = vec![usize::MAX; items.len()];
        let mut entry = Vec::with_capacity(n + 2);
        for (e, &(time, is_ret, i)) in events.iter().enumerate() {
            entry.push((i, is_ret, time));
            if is_ret {
                ret_of[i] = e;
            } else {
                call_of[i] = e;
            }
        }
        // The sentinels: the tail acts as a return at the end of time.
        entry.push((usize::MAX, false, 0));
        entry.push((usize::MAX, true, u64::MAX));
        Events { next, prev, entry, call_of, ret_of, head, tail }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(e)`; valid only in reverse order of the unlinks (dancing links).
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, item: usize) {
        self.unlink(self.call_of[item]);
        self.unlink(self.ret_of[item]);
    }

    fn unlift(&mut self, item: usize) {
        self.relink(self.ret_of[item]);
        self.relink(self.call_of[item]);
    }
}

/// Where the walk is.
#[derive(Clone, Copy)]
enum Cursor {
    /// At an entry of the event list.
    List(usize),
    /// Stuck at the return entry `.0`, trying the unknown operations of the classes from `.1` on.
    Unknown(usize, usize),
}

/// The unknown operations, grouped by equal request, each group in invoke order.
struct Classes {
    members: Vec<Vec<usize>>,
    class_of: Vec<usize>,
    /// Per class, how many members are placed: always a prefix of them (see the module docs).
    used: Vec<usize>,
}

impl Classes {
    fn new<I: Eq + std::hash::Hash, O>(history: &[Operation<I, O>], items: &[Item]) -> Classes {
        let mut unknown: Vec<usize> = (0..items.len()).filter(|&i| !items[i].definite).collect();
        unknown.sort_by_key(|&i| (history[items[i].op].call, i));
        let mut index: HashMap<&I, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut class_of = vec![usize::MAX; items.len()];
        for i in unknown {
            let c = *index.entry(&history[items[i].op].input).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[c].push(i);
            class_of[i] = c;
        }
        let used = vec![0; members.len()];
        Classes { members, class_of, used }
    }
}

/// One linearized operation on the search stack.
struct Frame<S> {
    item: usize,
    /// The state before it.
    before: S,
    /// For an unknown operation: the return entry at which it was tried.
    at: usize,
}

/// The search over one partition (or a prefix of one): see the module docs.
pub(crate) fn search<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    items: Vec<Item>,
    budget: &mut Budget,
) -> Search<M::State> {
    let definite = items.iter().filter(|i| i.definite).count();
    let mut remaining = definite;
    if remaining == 0 {
        // Only operations that may never take effect: leaving them all out is a linearization.
        return Search::Linearizable;
    }
    let mut ev = Events::new(history, &items);
    let mut classes = Classes::new(history, &items);
    let mut linearized = Linearized::new(&items);
    let mut memo = Memo { seen: HashMap::new() };
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = M::init();
    // The root too: an unknown operation that leads back to the initial state is pointless.
    memo.insert(&linearized.definite, &state, &linearized.unknown);
    let mut best: Option<(usize, Stuck<M::State>)> = None;
    let mut cursor = Cursor::List(ev.next[ev.head]);
    loop {
        if !budget.tick() {
            return Search::OutOfBudget;
        }
        // The operation to try now, if any, and where the walk resumes otherwise.
        let (item, otherwise) = match cursor {
            Cursor::List(e) => {
                let (item, is_ret, _) = ev.entry[e];
                if is_ret {
                    // A return: the operation is due and was not placed. Remember the deepest such
                    // point for the report, then try the unknown operations before giving up.
                    // Depth counts returned operations only: placing unknown ones is not progress.
                    let depth = definite - remaining;
                    if e != ev.tail && best.as_ref().is_none_or(|(d, _)| depth > *d) {
                        let call = |i: usize| history[items[i].op].call;
                        let stuck = stuck_here(call, &ev, &items, &linearized, &stack, &state, e);
                        best = Some((depth, stuck));
                    }
                    cursor = Cursor::Unknown(e, 0);
                    continue;
                }
                (Some(item), Cursor::List(ev.next[e]))
            }
            Cursor::Unknown(at, c) => match classes.members.get(c) {
                Some(members) => {
                    // The class's first unplaced member, if it was invoked before this return.
                    let next = members.get(classes.used[c]).copied();
                    let item = next.filter(|&i| history[items[i].op].call <= ev.entry[at].2);
                    (item, Cursor::Unknown(at, c + 1))
                }
                None => {
                    // Nothing can go before this return: backtrack.
                    let Some(frame) = stack.pop() else {
                        let (_, stuck) = best.expect("a failed search has met a return");
                        return Search::Stuck(stuck);
                    };
                    state = frame.before;
                    linearized.clear(&items, frame.item);
                    cursor = if items[frame.item].definite {
                        ev.unlift(frame.item);
                        remaining += 1;
                        Cursor::List(ev.next[ev.call_of[frame.item]])
                    } else {
                        let c = classes.class_of[frame.item];
                        classes.used[c] -= 1;
                        debug_assert_eq!(classes.members[c][classes.used[c]], frame.item);
                        Cursor::Unknown(frame.at, c + 1)
                    };
                    continue;
                }
            },
        };
        cursor = otherwise;
        let Some(item) = item else { continue };
        let it = items[item];
        let op = &history[it.op];
        let next = match (&op.ret, it.definite) {
            (Some(ret), true) => M::step(&state, &op.input, &ret.output),
            // Taking effect without changing the state is pointless for an operation that may
            // also never take effect: it would only use the operation up.
            _ => M::step_unknown(&state, &op.input).filter(|s| *s != state),
        };
        let Some(next) = next else { continue };
        linearized.set(&items, item);
        if !memo.insert(&linearized.definite, &next, &linearized.unknown) {
            linearized.clear(&items, item);
            continue;
        }
        let at = if let Cursor::Unknown(at, _) = cursor { at } else { usize::MAX };
        stack.push(Frame { item, before: std::mem::replace(&mut state, next), at });
        if it.definite {
            ev.lift(item);
            remaining -= 1;
            if remaining == 0 {
                return Search::Linearizable;
            }
        } else {
            classes.used[classes.class_of[item]] += 1;
        }
        cursor = Cursor::List(ev.next[ev.head]);
    }
}

fn stuck_here<S: Clone>(
    history_call: impl Fn(usize) -> u64,
    ev: &Events,
    items: &[Item],
    linearized: &Linearized,
    stack: &[Frame<S>],
    state: &S,
    ret_entry: usize,
) -> Stuck<S> {
    let mut done = Vec::with_capacity(stack.len());
    for (k, frame) in stack.iter().enumerate() {
        let after = stack.get(k + 1).map_or(state, |f| &f.before);
        done.push((items[frame.item].op, after.clone()));
    }
    let (blocked, _, time) = ev.entry[ret_entry];
    let mut candidates = Vec::new();
    let mut e = ev.next[ev.head];
    while e != ret_entry {
        let (item, is_ret, _) = ev.entry[e];
        if !is_ret {
            candidates.push(items[item].op);
        }
        e = ev.next[e];
    }
    for item in (0..items.len()).filter(|&i| !items[i].definite) {
        if history_call(item) <= time && !linearized.contains(items, item) {
            candidates.push(items[item].op);
        }
    }
    Stuck { linearized: done, blocked: items[blocked].op, candidates }
}
