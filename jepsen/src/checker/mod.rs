//! A linearizability checker for Jepsen-style histories.
//!
//! A history is a set of [`Operation`]s, each invoked at one time and returning (or not) at a
//! later one. It is *linearizable* with respect to a sequential [`Model`] if every operation can
//! be given an instant between its invoke and its return such that applying them one by one in
//! that order, the model produces exactly the outputs the clients saw. An operation whose
//! outcome is unknown (Jepsen's `:info`, or an invoke that never returned) may be given any
//! instant after its invoke, or none at all.
//!
//! - [`check`] decides it: the Wing–Gong/Lowe search ([`wgl`]), memoising (linearized set,
//!   state) pairs, one [`Model::partition`] at a time, within a [`CheckOptions`] budget.
//! - [`Register`] is the Jepsen etcd register (read, write, cas; nil at first), [`Kv`] an
//!   etcd-style key-value skeleton partitioned by key.
//! - [`parse_register_history`] reads Jepsen's `jepsen.util` log lines.
//! - [`minimal_window`] and [`render_html`] turn a violation into a picture a person can read.
//!
//! ```
//! use jepsen::checker::{check, parse_register_history, CheckOptions, Register, Verdict};
//!
//! let log = "INFO  jepsen.util - 0\t:invoke\t:write\t1\n\
//!            INFO  jepsen.util - 0\t:ok\t:write\t1\n\
//!            INFO  jepsen.util - 1\t:invoke\t:read\tnil\n\
//!            INFO  jepsen.util - 1\t:ok\t:read\tnil\n";
//! let history = parse_register_history(log).unwrap();
//! // The read started after the write returned, so it cannot see nil.
//! let result = check::<Register>(&history, &CheckOptions::default());
//! assert_eq!(result.verdict, Verdict::NotLinearizable);
//! ```

pub mod html;
pub mod kv;
pub mod model;
pub mod parse;
pub mod register;
pub mod wgl;
pub mod window;

pub use html::{render_html, HtmlOptions};
pub use kv::{Kv, KvInput, KvOp, KvOutput};
pub use model::{Model, Operation, Ret};
pub use parse::{parse_register_history, ParseError};
pub use register::{Register, RegisterInput, RegisterOutput};
pub use wgl::{check, CheckOptions, CheckResult, Failure, Stuck, Verdict};
pub use window::{minimal_window, Window};
