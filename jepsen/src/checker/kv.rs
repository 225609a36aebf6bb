//! An etcd-style key-value store: get, put and delete on string keys, each key absent until
//! first put. Operations on different keys commute, so the model partitions the history by key
//! (P-compositionality) and each key is checked as its own small history.
//!
//! This is a skeleton for Keel's own Jepsen tests: no ranges, revisions, leases or transactions
//! yet; those need richer inputs and outputs but not a different checker.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::model::{Model, Operation};

/// A request on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvInput {
    pub key: String,
    pub op: KvOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Get,
    Put(String),
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// The value read, `None` when the key is absent.
    Get(Option<String>),
    /// The put was acknowledged.
    Put,
    /// The number of keys deleted: 0 or 1, as etcd's `DeleteRange` reports for a single key.
    Delete(u64),
}

/// The KV model. The state maps keys to values; absent keys are not in the map. Within one
/// partition the map holds at most one key, so states stay small and cheap to hash.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

impl Model for Kv {
    type State = BTreeMap<String, String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init() -> Self::State {
        BTreeMap::new()
    }

    fn step(state: &Self::State, input: &KvInput, output: &KvOutput) -> Option<Self::State> {
        let current = state.get(&input.key);
        match (&input.op, output) {
            (KvOp::Get, KvOutput::Get(v)) => (v.as_ref() == current).then(|| state.clone()),
            (KvOp::Put(_), KvOutput::Put) => Self::step_unknown(state, input),
            (KvOp::Delete, KvOutput::Delete(n)) => {
                (*n == u64::from(current.is_some())).then(|| Self::step_unknown(state, input)).flatten()
            }
            _ => None,
        }
    }

    fn step_unknown(state: &Self::State, input: &KvInput) -> Option<Self::State> {
        let mut next = state.clone();
        match &input.op {
            KvOp::Get => {}
            KvOp::Put(v) => {
                next.insert(input.key.clone(), v.clone());
            }
            KvOp::Delete => {
                next.remove(&input.key);
            }
        }
        Some(next)
    }

    /// One partition per key, in order of first appearance.
    fn partition(history: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut parts: Vec<Vec<usize>> = Vec::new();
        for (i, op) in history.iter().enumerate() {
            let p = *index.entry(op.input.key.as_str()).or_insert_with(|| {
                parts.push(Vec::new());
                parts.len() - 1
            });
            parts[p].push(i);
        }
        parts
    }
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            KvOp::Get => write!(f, "get {}", self.key),
            KvOp::Put(v) => write!(f, "put {} {v}", self.key),
            KvOp::Delete => write!(f, "del {}", self.key),
        }
    }
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Get(None) => write!(f, "absent"),
            KvOutput::Get(Some(v)) => write!(f, "{v}"),
            KvOutput::Put => write!(f, "ok"),
            KvOutput::Delete(n) => write!(f, "{n} deleted"),
        }
    }
}
