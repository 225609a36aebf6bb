//! Jepsen register histories, as `jepsen.util` logs them:
//!
//! ```text
//! INFO  jepsen.util - <process>⇥:invoke|:ok|:fail|:info⇥:read|:write|:cas⇥<value|nil|[from to]|:timed-out>
//! ```
//!
//! where `⇥` is a tab.
//!
//! Each `:invoke` is paired with the next completion line of the same process. Times are line
//! numbers (1-based), which are in real-time order because Jepsen logs each event as it happens.
//!
//! - `:ok` completes the operation; a read's `:ok` line carries the value read.
//! - `:fail :cas [from to]` is a cas that returned false: the compare did not match.
//! - Any other `:fail` (a read that timed out, a write that was refused) definitely had no
//!   effect and observed nothing, so the operation is dropped.
//! - `:info` is an unknown outcome: the write or cas may take effect at any moment after its
//!   invoke, or never (see [`Operation::unknown`]). An `:info` read is dropped, as it
//!   constrains nothing. So is an invoke still pending at the end of the file, for reads; writes
//!   and cas pending at the end are unknown.
//! - Lines of the `:nemesis` process (fault injection) are not client operations: skipped.
//!
//! Jepsen never reuses a process id after `:info`, but if a log does, the new invoke simply
//! starts a new operation; the unknown one stays pending "forever".

use std::collections::HashMap;
use std::fmt;

use super::model::{Operation, Ret};
use super::register::{RegisterInput, RegisterOutput};

/// A malformed history line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

const MARKER: &str = "jepsen.util - ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    Read,
    Write,
    Cas,
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            F::Read => ":read",
            F::Write => ":write",
            F::Cas => ":cas",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Nil,
    Int(i64),
    Pair(i64, i64),
    Keyword(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => write!(f, "nil"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Pair(a, b) => write!(f, "[{a} {b}]"),
            Value::Keyword(k) => write!(f, "{k}"),
        }
    }
}

/// One parsed line: `None` for lines that carry no client event.
fn parse_line(text: &str) -> Result<Option<(u64, Kind, F, Value)>, String> {
    let Some(at) = text.find(MARKER) else {
        return Err(format!(
            "expected `INFO  jepsen.util - <process>\\t<type>\\t<f>\\t<value>`, got {text:?}"
        ));
    };
    let rest = &text[at + MARKER.len()..];
    // Fields are tab separated; split on any whitespace for the first three so that logs whose
    // tabs became spaces still parse. The value (`[from to]`) may itself contain a space.
    let mut fields = rest.trim().splitn(4, char::is_whitespace).map(str::trim);
    let process = fields.next().unwrap_or("");
    if process == ":nemesis" {
        return Ok(None);
    }
    let process: u64 =
        process.parse().map_err(|_| format!("process must be a number or :nemesis, got {process:?}"))?;
    let kind = match fields.next() {
        Some(":invoke") => Kind::Invoke,
        Some(":ok") => Kind::Ok,
        Some(":fail") => Kind::Fail,
        Some(":info") => Kind::Info,
        other => return Err(format!("expected :invoke, :ok, :fail or :info, got {:?}", other.unwrap_or(""))),
    };
    let f = match fields.next() {
        Some(":read") => F::Read,
        Some(":write") => F::Write,
        Some(":cas") => F::Cas,
        other => return Err(format!("expected :read, :write or :cas, got {:?}", other.unwrap_or(""))),
    };
    let value = parse_value(fields.next().unwrap_or("").trim())?;
    Ok(Some((process, kind, f, value)))
}

fn parse_value(s: &str) -> Result<Value, String> {
    let int = |t: &str| t.parse::<i64>().map_err(|_| format!("expected an integer, got {t:?}"));
    if s == "nil" {
        Ok(Value::Nil)
    } else if s.starts_with(':') && s.len() > 1 {
        Ok(Value::Keyword(s.to_string()))
    } else if let Some(inner) = s.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let parts: Vec<&str> = inner.split_whitespace().collect();
        match parts[..] {
            [a, b] => Ok(Value::Pair(int(a)?, int(b)?)),
            _ => Err(format!("expected [from to], got {s:?}")),
        }
    } else if s.is_empty() {
        Err("missing value".to_string())
    } else {
        Ok(Value::Int(int(s)?))
    }
}

struct Pending {
    /// Index into the operations being built.
    op: usize,
    f: F,
    value: Value,
    line: usize,
}

/// Parses a Jepsen register history (see the module docs). The operations come back in invoke
/// order, with line numbers as times.
pub fn parse_register_history(
    text: &str,
) -> Result<Vec<Operation<RegisterInput, RegisterOutput>>, ParseError> {
    // Dropped operations become `None` and are filtered out at the end.
    let mut ops: Vec<Option<Operation<RegisterInput, RegisterOutput>>> = Vec::new();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    for (i, text) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        if text.trim().is_empty() {
            continue;
        }
        let Some((process, kind, f, value)) = parse_line(text).map_err(err)? else { continue };
        let time = line as u64;
        if kind == Kind::Invoke {
            if let Some(p) = pending.get(&process) {
                return Err(err(format!(
                    "process {process} invokes {f} while its {} invoked at line {} has not completed",
                    p.f, p.line
                )));
            }
            let input = match (f, &value) {
                (F::Read, _) => RegisterInput::Read,
                (F::Write, Value::Int(v)) => RegisterInput::Write(*v),
                (F::Cas, Value::Pair(from, to)) => RegisterInput::Cas { from: *from, to: *to },
                (F::Write, v) => return Err(err(format!(":write needs an integer value, got {v}"))),
                (F::Cas, v) => return Err(err(format!(":cas needs [from to], got {v}"))),
            };
            pending.insert(process, Pending { op: ops.len(), f, value, line });
            ops.push(Some(Operation::unknown(process, input, time)));
            continue;
        }
        let Some(p) = pending.remove(&process) else {
            return Err(err(format!("process {process} completes a {f} it never invoked")));
        };
        if p.f != f {
            return Err(err(format!(
                "process {process} completes a {f} but invoked a {} at line {}",
                p.f, p.line
            )));
        }
        // Jepsen echoes a write's or cas's argument on its completion; a different one means the
        // lines were paired wrongly, which would make any verdict meaningless.
        let echoes = matches!(value, Value::Keyword(_)) || f == F::Read || value == p.value;
        if !echoes {
            return Err(err(format!(
                "process {process} completes {f} {value} but invoked {f} {} at line {}",
                p.value, p.line
            )));
        }
        let output = match (kind, f, value) {
            (Kind::Ok, F::Read, Value::Nil) => Some(RegisterOutput::Read(None)),
            (Kind::Ok, F::Read, Value::Int(v)) => Some(RegisterOutput::Read(Some(v))),
            (Kind::Ok, F::Read, v) => return Err(err(format!(":ok :read needs nil or an integer, got {v}"))),
            (Kind::Ok, F::Write, _) => Some(RegisterOutput::Write),
            (Kind::Ok, F::Cas, _) => Some(RegisterOutput::Cas(true)),
            (Kind::Fail, F::Cas, Value::Pair(..)) => Some(RegisterOutput::Cas(false)),
            (Kind::Fail, ..) | (Kind::Info, F::Read, _) => {
                ops[p.op] = None;
                continue;
            }
            // Unknown: the operation stays as invoked, with no return.
            (Kind::Info, ..) => None,
            (Kind::Invoke, ..) => unreachable!("handled above"),
        };
        if let (Some(output), Some(op)) = (output, ops[p.op].as_mut()) {
            op.ret = Some(Ret { time, output });
        }
    }
    // Reads still pending at the end observed nothing; writes and cas are unknown, as invoked.
    for p in pending.values() {
        if p.f == F::Read {
            ops[p.op] = None;
        }
    }
    Ok(ops.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(process: u64, kind: &str, f: &str, value: &str) -> String {
        format!("INFO  jepsen.util - {process}\t{kind}\t{f}\t{value}\n")
    }

    #[test]
    fn pairs_invokes_with_completions() {
        let text = [
            line(0, ":invoke", ":write", "1"),
            line(1, ":invoke", ":read", "nil"),
            line(0, ":ok", ":write", "1"),
            line(1, ":ok", ":read", "1"),
            line(2, ":invoke", ":cas", "[1 2]"),
            line(2, ":fail", ":cas", "[1 2]"),
            line(3, ":invoke", ":cas", "[1 3]"),
            line(3, ":info", ":cas", ":timed-out"),
            line(4, ":invoke", ":read", "nil"),
            line(4, ":fail", ":read", ":timed-out"),
            line(5, ":invoke", ":write", "4"),
        ]
        .concat();
        let ops = parse_register_history(&text).unwrap();
        assert_eq!(
            ops,
            vec![
                Operation::done(0, RegisterInput::Write(1), 1, 3, RegisterOutput::Write),
                Operation::done(1, RegisterInput::Read, 2, 4, RegisterOutput::Read(Some(1))),
                Operation::done(2, RegisterInput::Cas { from: 1, to: 2 }, 5, 6, RegisterOutput::Cas(false)),
                Operation::unknown(3, RegisterInput::Cas { from: 1, to: 3 }, 7),
                Operation::unknown(5, RegisterInput::Write(4), 11),
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let bad = |text: String, line: usize, needle: &str| {
            let e = parse_register_history(&text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        };
        bad(format!("{}garbage\n", line(0, ":invoke", ":read", "nil")), 2, "expected");
        bad(line(0, ":ok", ":read", "1"), 1, "never invoked");
        bad([line(0, ":invoke", ":read", "nil"), line(0, ":invoke", ":read", "nil")].concat(), 2, "line 1");
        bad(
            [line(0, ":invoke", ":write", "1"), line(0, ":ok", ":read", "1")].concat(),
            2,
            "invoked a :write",
        );
        bad([line(0, ":invoke", ":write", "1"), line(0, ":ok", ":write", "2")].concat(), 2, "completes");
        bad(line(0, ":invoke", ":cas", "[1]"), 1, "[from to]");
        bad(line(0, ":invoke", ":write", "x"), 1, "integer");
        bad(line(0, ":begin", ":write", "1"), 1, ":invoke");
    }

    #[test]
    fn skips_nemesis_and_blank_lines() {
        let text = format!(
            "\n{}INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n",
            line(0, ":invoke", ":read", "nil")
        );
        assert_eq!(parse_register_history(&text).unwrap(), vec![]);
    }
}
