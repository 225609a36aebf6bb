//! The vocabulary the checker works in: operations with invoke/return times, and the sequential
//! [`Model`] that says which outcomes are possible.

use std::hash::Hash;

/// How an operation completed, when it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ret<O> {
    /// When the client saw the result. Must not be before the operation's `call`.
    pub time: u64,
    /// What the client saw.
    pub output: O,
}

/// One client operation in a concurrent history.
///
/// Times are only compared with each other, so any monotonic clock works; the Jepsen parser
/// uses line numbers. An operation whose outcome is unknown (`ret: None`: Jepsen's `:info`, or
/// an invoke that never returned) may take effect at any moment after `call`, or never.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client (Jepsen process) that issued it; only used for display.
    pub process: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client invoked it.
    pub call: u64,
    /// When and how it returned; `None` when the outcome is unknown.
    pub ret: Option<Ret<O>>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation.
    pub fn done(process: u64, input: I, call: u64, ret: u64, output: O) -> Self {
        Operation { process, input, call, ret: Some(Ret { time: ret, output }) }
    }

    /// An operation whose outcome is unknown: it may take effect any time after `call`, or never.
    pub fn unknown(process: u64, input: I, call: u64) -> Self {
        Operation { process, input, call, ret: None }
    }

    /// The return time, if the operation returned.
    pub fn ret_time(&self) -> Option<u64> {
        self.ret.as_ref().map(|r| r.time)
    }
}

/// A sequential specification: the state machine that concurrent operations must be explainable
/// by, one at a time, each at some instant between its invoke and its return.
///
/// The functions are associated functions (no `self`) because a model is a type-level
/// description; the checker never needs a model value.
pub trait Model {
    /// The state of the object. It is hashed and compared so that the search can remember which
    /// (set of linearized operations, state) configurations it has already explored.
    type State: Clone + Eq + Hash;
    /// An operation's request. Compared and hashed so that the search can treat unknown-outcome
    /// operations with equal requests as interchangeable.
    type Input: Eq + Hash;
    /// An operation's observed result.
    type Output;

    /// The state before any operation.
    fn init() -> Self::State;

    /// The state after `input` takes effect in `state` and the client observes `output`, or
    /// `None` if that output is impossible from that state.
    fn step(state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// The state after `input` takes effect in `state` when nobody saw its result, or `None` if
    /// it cannot take effect there.
    ///
    /// Returning `None` is always safe for an operation that leaves the state unchanged (a read,
    /// a failed compare-and-set): the checker lets an unknown operation never take effect, which
    /// is indistinguishable from taking effect without changing anything.
    fn step_unknown(state: &Self::State, input: &Self::Input) -> Option<Self::State>;

    /// P-compositionality: split the history into independent sub-histories (for example one per
    /// key) that are checked separately, as lists of indices into `history`. A history is
    /// linearizable exactly when every partition is, provided that operations in different
    /// partitions never touch the same state. The default is a single partition.
    fn partition(history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}
