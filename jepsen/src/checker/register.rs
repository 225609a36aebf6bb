//! A single read/write/compare-and-set register whose initial value is nil: the object of the
//! Jepsen etcd register test (and of the reference histories).

use std::fmt;

use super::model::Model;

/// A register operation's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Write(i64),
    /// Set the register to `to` if it currently holds `from`.
    Cas {
        from: i64,
        to: i64,
    },
}

/// A register operation's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    /// The value read; `None` is nil (never written).
    Read(Option<i64>),
    /// The write was acknowledged.
    Write,
    /// Whether the compare matched (and so the set happened).
    Cas(bool),
}

/// The register model. Its state is the value, `None` for nil.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

impl Model for Register {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init() -> Option<i64> {
        None
    }

    fn step(state: &Option<i64>, input: &RegisterInput, output: &RegisterOutput) -> Option<Option<i64>> {
        match (*input, *output) {
            (RegisterInput::Read, RegisterOutput::Read(v)) => (v == *state).then_some(*state),
            (RegisterInput::Write(v), RegisterOutput::Write) => Some(Some(v)),
            (RegisterInput::Cas { from, to }, RegisterOutput::Cas(true)) => {
                (*state == Some(from)).then_some(Some(to))
            }
            // A cas that returned false is a definite outcome: the compare did not match.
            (RegisterInput::Cas { from, .. }, RegisterOutput::Cas(false)) => {
                (*state != Some(from)).then_some(*state)
            }
            // An output of the wrong kind for the request can never be explained.
            _ => None,
        }
    }

    fn step_unknown(state: &Option<i64>, input: &RegisterInput) -> Option<Option<i64>> {
        match *input {
            RegisterInput::Read => Some(*state),
            RegisterInput::Write(v) => Some(Some(v)),
            // A cas whose compare fails changes nothing, like one that never happened, which the
            // checker allows anyway.
            RegisterInput::Cas { from, to } => (*state == Some(from)).then_some(Some(to)),
        }
    }
}

impl fmt::Display for RegisterInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterInput::Read => write!(f, "read"),
            RegisterInput::Write(v) => write!(f, "write {v}"),
            RegisterInput::Cas { from, to } => write!(f, "cas {from}→{to}"),
        }
    }
}

impl fmt::Display for RegisterOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterOutput::Read(None) => write!(f, "nil"),
            RegisterOutput::Read(Some(v)) => write!(f, "{v}"),
            RegisterOutput::Write | RegisterOutput::Cas(true) => write!(f, "ok"),
            RegisterOutput::Cas(false) => write!(f, "fail"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        use RegisterInput as I;
        use RegisterOutput as O;
        assert_eq!(Register::step(&None, &I::Read, &O::Read(None)), Some(None));
        assert_eq!(Register::step(&None, &I::Read, &O::Read(Some(1))), None);
        assert_eq!(Register::step(&None, &I::Write(3), &O::Write), Some(Some(3)));
        assert_eq!(Register::step(&Some(1), &I::Cas { from: 1, to: 2 }, &O::Cas(true)), Some(Some(2)));
        assert_eq!(Register::step(&Some(1), &I::Cas { from: 1, to: 2 }, &O::Cas(false)), None);
        assert_eq!(Register::step(&None, &I::Cas { from: 1, to: 2 }, &O::Cas(false)), Some(None));
        assert_eq!(Register::step(&None, &I::Write(1), &O::Read(None)), None);
        assert_eq!(Register::step_unknown(&Some(0), &I::Cas { from: 1, to: 2 }), None);
        assert_eq!(Register::step_unknown(&Some(1), &I::Cas { from: 1, to: 2 }), Some(Some(2)));
    }
}
