//! The linearizability checker against the reference Jepsen etcd histories (every file must get
//! its verdict from `EXPECTED.txt`, each within 5 s), against small hand-made histories whose
//! verdicts are known by construction, and the `keel-jepsen` binary end to end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jepsen::checker::{
    check, minimal_window, parse_register_history, CheckOptions, Kv, KvInput, KvOp, KvOutput, Operation,
    Register, RegisterInput as I, RegisterOutput as O, Verdict,
};

type Op = Operation<I, O>;

/// The reference histories: a copy kept in the repository (`jepsen/testdata/`, so a fresh clone
/// has them), or `KEEL_REFERENCE_HISTORIES` to check another set.
fn reference_dir() -> PathBuf {
    let dir = match std::env::var_os("KEEL_REFERENCE_HISTORIES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/jepsen-etcd-histories"),
    };
    assert!(
        dir.join("EXPECTED.txt").is_file(),
        "reference histories missing: expected {}/EXPECTED.txt",
        dir.display()
    );
    dir
}

fn expected() -> Vec<(String, Verdict)> {
    let dir = reference_dir();
    let text = std::fs::read_to_string(dir.join("EXPECTED.txt")).expect("read EXPECTED.txt");
    let list: Vec<(String, Verdict)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (file, verdict) = l.split_once(' ').unwrap_or_else(|| panic!("bad EXPECTED.txt line {l:?}"));
            let verdict = match verdict.trim() {
                "linearizable" => Verdict::Linearizable,
                "not-linearizable" => Verdict::NotLinearizable,
                v => panic!("bad verdict {v:?} in EXPECTED.txt"),
            };
            (file.to_string(), verdict)
        })
        .collect();
    // Every history in the directory has a verdict, so none is silently skipped.
    let logs = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert_eq!(logs, list.len(), "EXPECTED.txt does not cover every .log in {}", dir.display());
    assert!(!list.is_empty());
    list
}

fn load(file: &str) -> Vec<Op> {
    let path = reference_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_register_history(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn reference_histories_get_expected_verdicts() {
    let mut total = Duration::ZERO;
    for (file, want) in expected() {
        let history = load(&file);
        let t = Instant::now();
        let result = check::<Register>(&history, &CheckOptions::default());
        let elapsed = t.elapsed();
        total += elapsed;
        eprintln!("{file}: {:?} in {elapsed:?}, {} steps", result.verdict, result.steps);
        assert_eq!(result.verdict, want, "{file}");
        assert!(elapsed < Duration::from_secs(5), "{file} took {elapsed:?}");
    }
    eprintln!("all reference histories checked in {total:?}");
}

/// `history` cut at time `t`: later invokes are gone, operations still running become unknown.
fn prefix(history: &[Op], t: u64) -> Vec<Op> {
    history
        .iter()
        .filter(|op| op.call <= t)
        .map(|op| {
            let mut op = op.clone();
            if op.ret_time().is_some_and(|r| r > t) {
                op.ret = None;
            }
            op
        })
        .collect()
}

/// The window of every non-linearizable reference history is a real, minimal violation: the
/// history cut at the window's end is not linearizable, and cut at the return before it, it is.
#[test]
fn reference_windows_are_minimal() {
    let opts = CheckOptions::default();
    for (file, want) in expected() {
        if want != Verdict::NotLinearizable {
            continue;
        }
        let history = load(&file);
        let t = Instant::now();
        let failure = check::<Register>(&history, &opts).failure.expect("a violation has a failure");
        let window = minimal_window::<Register>(&history, &failure, &opts);
        assert!(t.elapsed() < Duration::from_secs(5), "{file}: window took {:?}", t.elapsed());
        assert_eq!(history[window.culprit].ret_time(), Some(window.cut), "{file}");
        assert!(window.ops.contains(&window.culprit) && window.ops.contains(&window.stuck.blocked), "{file}");
        assert_eq!(check::<Register>(&prefix(&history, window.cut), &opts).verdict, Verdict::NotLinearizable);
        let before = history.iter().filter_map(Op::ret_time).filter(|&r| r < window.cut).max();
        if let Some(before) = before {
            let v = check::<Register>(&prefix(&history, before), &opts).verdict;
            assert_eq!(v, Verdict::Linearizable, "{file}: the prefix up to {before} already fails");
        }
    }
}

// Hand-made histories. Times are small integers; `call < ret`.

fn w(p: u64, v: i64, call: u64, ret: u64) -> Op {
    Op::done(p, I::Write(v), call, ret, O::Write)
}
fn r(p: u64, v: Option<i64>, call: u64, ret: u64) -> Op {
    Op::done(p, I::Read, call, ret, O::Read(v))
}
fn cas(p: u64, from: i64, to: i64, ok: bool, call: u64, ret: u64) -> Op {
    Op::done(p, I::Cas { from, to }, call, ret, O::Cas(ok))
}
fn verdict(history: &[Op]) -> Verdict {
    check::<Register>(history, &CheckOptions::default()).verdict
}

fn log(lines: &[(u64, &str, &str, &str)]) -> String {
    lines.iter().map(|(p, kind, f, v)| format!("INFO  jepsen.util - {p}\t{kind}\t{f}\t{v}\n")).collect()
}
fn log_verdict(lines: &[(u64, &str, &str, &str)]) -> Verdict {
    verdict(&parse_register_history(&log(lines)).unwrap())
}

#[test]
fn trivially_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
    // Sequential, and the initial value is nil.
    let h = [
        r(0, None, 1, 2),
        w(0, 1, 3, 4),
        r(1, Some(1), 5, 6),
        cas(1, 1, 2, true, 7, 8),
        r(0, Some(2), 9, 10),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // Two reads concurrent with a write may see the old and the new value.
    let h = [w(0, 1, 1, 10), r(1, Some(1), 2, 3), r(2, None, 2, 3)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn stale_read_is_a_violation() {
    // The read starts after the write of 2 returned, yet sees 1.
    let h = [w(0, 1, 1, 2), w(0, 2, 3, 4), r(1, Some(1), 5, 6)];
    let result = check::<Register>(&h, &CheckOptions::default());
    assert_eq!(result.verdict, Verdict::NotLinearizable);
    let failure = result.failure.unwrap();
    assert_eq!(failure.stuck.blocked, 2, "the read is what cannot be explained");
    let window = minimal_window::<Register>(&h, &failure, &CheckOptions::default());
    assert_eq!((window.culprit, window.cut), (2, 6));
    assert_eq!(window.ops, vec![0, 1, 2], "the window shows the writes that make the read stale");
    // The same read overlapping the second write is fine.
    assert_eq!(verdict(&[w(0, 1, 1, 2), w(0, 2, 3, 6), r(1, Some(1), 5, 7)]), Verdict::Linearizable);
}

#[test]
fn cas_violations() {
    // Two sequential cas from 1 cannot both succeed.
    let h = [w(0, 1, 1, 2), cas(1, 1, 2, true, 3, 4), cas(2, 1, 3, true, 5, 6)];
    assert_eq!(verdict(&h), Verdict::NotLinearizable);
    // A cas that returned false although the register held `from`.
    assert_eq!(verdict(&[w(0, 1, 1, 2), cas(1, 1, 2, false, 3, 4)]), Verdict::NotLinearizable);
    // A cas that succeeded on nil.
    assert_eq!(verdict(&[cas(1, 1, 2, true, 1, 2)]), Verdict::NotLinearizable);
    // Controls: concurrent, one wins and the other fails.
    let h = [w(0, 1, 1, 2), cas(1, 1, 2, true, 3, 6), cas(2, 1, 3, false, 4, 5), r(0, Some(2), 7, 8)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn info_write_may_take_effect_late() {
    // The write timed out (line 2); a read after that still sees nil (lines 3-4), and a later
    // one sees 1 (lines 5-6). Only linearizable if the write took effect after line 4, long
    // after its :info.
    let mut lines = vec![
        (0, ":invoke", ":write", "1"),
        (0, ":info", ":write", ":timed-out"),
        (1, ":invoke", ":read", "nil"),
        (1, ":ok", ":read", "nil"),
        (1, ":invoke", ":read", "nil"),
        (1, ":ok", ":read", "1"),
    ];
    assert_eq!(log_verdict(&lines), Verdict::Linearizable);
    // Control: a value nobody wrote is still a violation.
    lines[5].3 = "2";
    assert_eq!(log_verdict(&lines), Verdict::NotLinearizable);
    // And so is a definite write in the same place: its :ok pins it before the first read.
    lines[1] = (0, ":ok", ":write", "1");
    lines[5].3 = "1";
    assert_eq!(log_verdict(&lines), Verdict::NotLinearizable);
}

#[test]
fn info_op_may_never_take_effect() {
    // A cas from 1 while the register never holds 1: if it had to take effect it could not.
    let lines = [
        (0, ":invoke", ":cas", "[1 2]"),
        (0, ":info", ":cas", ":timed-out"),
        (1, ":invoke", ":read", "nil"),
        (1, ":ok", ":read", "nil"),
        (1, ":invoke", ":write", "3"),
        (1, ":ok", ":write", "3"),
        (1, ":invoke", ":read", "nil"),
        (1, ":ok", ":read", "3"),
    ];
    assert_eq!(log_verdict(&lines), Verdict::Linearizable);
    // Same through the API, and with a write that would contradict every later read: for a
    // register, never taking effect is the same as taking effect after everything else.
    let h = [
        Op::unknown(0, I::Cas { from: 1, to: 2 }, 1),
        Op::unknown(1, I::Write(7), 2),
        w(2, 3, 3, 4),
        r(2, Some(3), 5, 6),
        cas(2, 3, 4, true, 7, 8),
        r(2, Some(4), 9, 10),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // Control: the same history with the cas definite is a violation.
    let mut h = h.to_vec();
    h[0] = cas(0, 1, 2, true, 1, 2);
    assert_eq!(verdict(&h), Verdict::NotLinearizable);
}

#[test]
fn process_reused_after_info() {
    // Jepsen retires a process after :info; if a log reuses it anyway, both operations count.
    let lines = [
        (0, ":invoke", ":write", "1"),
        (0, ":info", ":write", ":timed-out"),
        (0, ":invoke", ":read", "nil"),
        (0, ":ok", ":read", "nil"),
        (0, ":invoke", ":read", "nil"),
        (0, ":ok", ":read", "1"),
    ];
    assert_eq!(parse_register_history(&log(&lines)).unwrap().len(), 3);
    assert_eq!(log_verdict(&lines), Verdict::Linearizable);
}

#[test]
fn budget_exhaustion_is_unknown() {
    let history = load("etcd_002.log");
    let result = check::<Register>(&history, &CheckOptions { max_steps: 10, timeout: None });
    assert_eq!(result.verdict, Verdict::Unknown);
    let result =
        check::<Register>(&history, &CheckOptions { max_steps: u64::MAX, timeout: Some(Duration::ZERO) });
    assert_eq!(result.verdict, Verdict::Unknown, "the deadline is checked");
}

#[test]
fn kv_partitions_by_key() {
    let op = |p, key: &str, op, call, ret, out| {
        Operation::done(p, KvInput { key: key.to_string(), op }, call, ret, out)
    };
    let put = |v: &str| KvOp::Put(v.to_string());
    let got = |v: Option<&str>| KvOutput::Get(v.map(str::to_string));
    let mut h = vec![
        op(0, "a", put("1"), 1, 2, KvOutput::Put),
        op(1, "b", KvOp::Get, 3, 4, got(None)),
        op(1, "a", KvOp::Get, 5, 6, got(Some("1"))),
        op(0, "a", KvOp::Delete, 7, 8, KvOutput::Delete(1)),
        op(1, "a", KvOp::Get, 9, 10, got(None)),
        op(0, "b", put("2"), 11, 12, KvOutput::Put),
        op(1, "b", KvOp::Get, 13, 14, got(Some("2"))),
    ];
    assert_eq!(check::<Kv>(&h, &CheckOptions::default()).verdict, Verdict::Linearizable);
    // A stale read on b: only b's partition fails.
    h[6] = op(1, "b", KvOp::Get, 13, 14, got(None));
    let result = check::<Kv>(&h, &CheckOptions::default());
    assert_eq!(result.verdict, Verdict::NotLinearizable);
    assert_eq!(result.failure.unwrap().partition, vec![1, 5, 6]);
    // A delete of an absent key reports 0 deleted, not 1.
    let h = [op(0, "c", KvOp::Delete, 1, 2, KvOutput::Delete(1))];
    assert_eq!(check::<Kv>(&h, &CheckOptions::default()).verdict, Verdict::NotLinearizable);
}

// The binary.

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-jepsen")).args(args).output().expect("run keel-jepsen");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().expect("exit code"), text(out.stdout), text(out.stderr))
}

fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checker-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn binary_verdicts_and_exit_codes() {
    let dir = reference_dir();
    for (file, want) in expected().into_iter().take(8) {
        let (code, out, _) = run(&["check-history", dir.join(&file).to_str().unwrap()]);
        match want {
            Verdict::Linearizable => assert_eq!((code, out.as_str()), (0, "linearizable\n"), "{file}"),
            _ => assert_eq!((code, out.as_str()), (1, "not linearizable\n"), "{file}"),
        }
    }
    let bad = scratch("bad.log", &log(&[(0, ":invoke", ":write", "1")]).replace('1', "one"));
    let (code, _, err) = run(&["check-history", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");
    let (code, _, err) = run(&["check-history", "/nonexistent/history.log"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/history.log"), "{err}");
}

#[test]
fn binary_writes_html_for_a_violation() {
    let stale = log(&[
        (0, ":invoke", ":write", "1"),
        (0, ":ok", ":write", "1"),
        (0, ":invoke", ":write", "2"),
        (0, ":ok", ":write", "2"),
        (1, ":invoke", ":read", "nil"),
        (1, ":ok", ":read", "1"),
    ]);
    let history = scratch("stale.log", &stale);
    let html = history.with_extension("html");
    let _ = std::fs::remove_file(&html);
    let (code, out, err) =
        run(&["check-history", history.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, "not linearizable\n"), "{err}");
    let page = std::fs::read_to_string(&html).expect("the report was written");
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg") && page.contains("</html>"));
    for op in ["write 1 → ok", "write 2 → ok", "read → 1", "process 0", "process 1"] {
        assert!(page.contains(op), "the report shows {op:?}");
    }
    // Self-contained: no scripts, stylesheets or images fetched from elsewhere.
    for external in ["<script", "<link", "<img", "src=", "@import"] {
        assert!(!page.contains(external), "the report references an external asset ({external})");
    }
    // Also for a real history.
    let real = reference_dir().join("etcd_000.log");
    let (code, _, err) = run(&["check-history", real.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("cannot be explained"));
}

// Random small histories against a brute-force checker: every order of the operations that
// respects real time, unknown operations optional. It shares nothing with the WGL search (no
// memo, no pruning), so agreement on thousands of histories is evidence that those are sound.

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

fn brute_force(history: &[Op]) -> bool {
    use jepsen::checker::Model;
    fn go(h: &[Op], done: &mut Vec<bool>, state: Option<i64>) -> bool {
        if h.iter().zip(done.iter()).all(|(op, &d)| d || op.ret.is_none()) {
            return true;
        }
        for i in 0..h.len() {
            // `i` may go next unless some pending returned operation returned before it started.
            let blocked =
                h.iter().zip(done.iter()).any(|(q, &d)| !d && q.ret_time().is_some_and(|r| r < h[i].call));
            if done[i] || blocked {
                continue;
            }
            let next = match &h[i].ret {
                Some(r) => Register::step(&state, &h[i].input, &r.output),
                None => Register::step_unknown(&state, &h[i].input),
            };
            if let Some(next) = next {
                done[i] = true;
                let ok = go(h, done, next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(history, &mut vec![false; history.len()], None)
}

/// A history from a simulated register with `procs` clients: each operation takes effect at a
/// random moment between its invoke and return (or, if its outcome is unknown, maybe never);
/// then, sometimes, one observed output is corrupted so that the history may be a violation.
fn random_history(rng: &mut Rng, procs: u64, ops: usize) -> Vec<Op> {
    struct Running {
        op: usize,
        applied: bool,
    }
    let mut history: Vec<Op> = Vec::new();
    let mut running: Vec<Option<Running>> = (0..procs).map(|_| None).collect();
    let mut value: Option<i64> = None;
    let mut time = 0;
    while history.len() < ops || running.iter().any(Option::is_some) {
        time += 1;
        let p = rng.below(procs) as usize;
        match &mut running[p] {
            None if history.len() < ops => {
                let input = match rng.below(3) {
                    0 => I::Read,
                    1 => I::Write(rng.below(3) as i64),
                    _ => I::Cas { from: rng.below(3) as i64, to: rng.below(3) as i64 },
                };
                running[p] = Some(Running { op: history.len(), applied: false });
                history.push(Op::unknown(p as u64, input, time));
            }
            None => {}
            Some(r) if !r.applied => {
                r.applied = true;
                let op = &mut history[r.op];
                let output = match op.input {
                    I::Read => O::Read(value),
                    I::Write(v) => {
                        value = Some(v);
                        O::Write
                    }
                    I::Cas { from, to } => {
                        let ok = value == Some(from);
                        if ok {
                            value = Some(to);
                        }
                        O::Cas(ok)
                    }
                };
                // Stash the output; it becomes visible when the operation returns.
                op.ret = Some(jepsen::checker::Ret { time: u64::MAX, output });
            }
            Some(r) => {
                let op = &mut history[r.op];
                match rng.below(8) {
                    0 => op.ret = None, // timed out after taking effect
                    _ => op.ret.as_mut().unwrap().time = time,
                }
                running[p] = None;
            }
        }
        // Sometimes a client times out before its operation took effect, and it never does.
        if rng.below(40) == 0 {
            if let Some(r) = running[p].take_if(|r| !r.applied) {
                history[r.op].ret = None;
            }
        }
    }
    if rng.below(2) == 0 {
        let returned: Vec<usize> = (0..history.len()).filter(|&i| history[i].ret.is_some()).collect();
        if !returned.is_empty() {
            let i = returned[rng.below(returned.len() as u64) as usize];
            let ret = history[i].ret.as_mut().unwrap();
            ret.output = match ret.output {
                O::Read(_) => O::Read([None, Some(0), Some(1), Some(2)][rng.below(4) as usize]),
                O::Cas(ok) => O::Cas(!ok),
                O::Write => O::Write,
            };
        }
    }
    history
}

#[test]
fn random_histories_agree_with_brute_force() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut violations, mut unknowns) = (0, 0);
    for n in 0..3000 {
        let procs = 2 + rng.below(3);
        let len = 2 + rng.below(7) as usize;
        let history = random_history(&mut rng, procs, len);
        unknowns += history.iter().filter(|op| op.ret.is_none()).count();
        let want = brute_force(&history);
        let result = check::<Register>(&history, &CheckOptions::default());
        let want_verdict = if want { Verdict::Linearizable } else { Verdict::NotLinearizable };
        assert_eq!(result.verdict, want_verdict, "history #{n}: {history:#?}");
        if let Some(failure) = result.failure {
            violations += 1;
            // The window's prefix is a violation, and the prefix one return earlier is not.
            let window = minimal_window::<Register>(&history, &failure, &CheckOptions::default());
            assert!(!brute_force(&prefix(&history, window.cut)), "history #{n}: {history:#?}");
            let before = history.iter().filter_map(Op::ret_time).filter(|&r| r < window.cut).max();
            if let Some(before) = before {
                assert!(brute_force(&prefix(&history, before)), "history #{n}: {history:#?}");
            }
        }
    }
    // The generator must exercise both verdicts and unknown outcomes, or the test proves little.
    assert!(violations > 300 && violations < 2700, "{violations} violations");
    assert!(unknowns > 300, "{unknowns} unknown outcomes");
}
