//! A self-contained HTML report of a [`Window`]: one timeline row per process, a bar from each
//! operation's invoke to its return, coloured by what the checker concluded about it. Inline CSS
//! and SVG only, so the file can be attached to a bug report and opened anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write};

use super::model::Operation;
use super::window::Window;

/// How to label the report.
pub struct HtmlOptions<'a> {
    /// Page title and heading, e.g. the history's file name.
    pub title: &'a str,
    /// What a time is called, e.g. "line" for Jepsen logs whose times are line numbers.
    pub time_name: &'a str,
}

const COL: f64 = 44.0; // pixels per distinct event time
const LEFT: f64 = 90.0; // process labels
const CLIP: f64 = 30.0; // stub for bars that start before the window or end after it
const ROW: f64 = 38.0;
const BAR: f64 = 30.0;
const TOP: f64 = 40.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Culprit,
    Candidate,
    Linearized,
    Other,
}

impl Status {
    fn class(self) -> &'static str {
        match self {
            Status::Culprit => "culprit",
            Status::Candidate => "candidate",
            Status::Linearized => "linearized",
            Status::Other => "other",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Status::Culprit => "cannot be explained",
            Status::Candidate => "not placed (could have gone next)",
            Status::Linearized => "placed in the longest linearization",
            Status::Other => "after the stuck point",
        }
    }
}

/// Renders the report. `show_state` formats a model state for the explanation.
pub fn render_html<I: Display, O: Display, S>(
    history: &[Operation<I, O>],
    window: &Window<S>,
    show_state: impl Fn(&S) -> String,
    opts: &HtmlOptions<'_>,
) -> String {
    let stuck = &window.stuck;
    let order: BTreeMap<usize, usize> =
        stuck.linearized.iter().enumerate().map(|(k, (op, _))| (*op, k)).collect();
    let candidates: BTreeSet<usize> = stuck.candidates.iter().copied().collect();
    let status = |i: usize| {
        if i == window.culprit || i == stuck.blocked {
            Status::Culprit
        } else if candidates.contains(&i) {
            Status::Candidate
        } else if order.contains_key(&i) {
            Status::Linearized
        } else {
            Status::Other
        }
    };
    // Only returns inside the prefix count; later ones are not part of the window.
    let ret_in = |i: usize| history[i].ret_time().filter(|&t| t <= window.cut);
    let label = |i: usize| {
        let op = &history[i];
        match (&op.ret, ret_in(i)) {
            (Some(r), Some(_)) => format!("{} → {}", op.input, r.output),
            (Some(_), None) => format!("{} → …", op.input),
            (None, _) => format!("{} → ?", op.input),
        }
    };

    // Columns: every distinct event time inside the span gets the same width, so that dense
    // bursts stay readable.
    let mut times: BTreeSet<u64> = BTreeSet::from([window.start, window.cut]);
    for &i in &window.ops {
        let op = &history[i];
        if op.call >= window.start {
            times.insert(op.call);
        }
        if let Some(t) = ret_in(i) {
            times.insert(t);
        }
    }
    let col: BTreeMap<u64, usize> = times.iter().enumerate().map(|(k, &t)| (t, k)).collect();
    let x = |t: u64| LEFT + CLIP + col[&t] as f64 * COL;
    let right = x(window.cut) + CLIP;

    // Rows: one lane per process, more if its operations overlap (an unknown operation and the
    // next one of a process that Jepsen should have retired).
    struct Bar {
        i: usize,
        x0: f64,
        x1: f64,
    }
    let mut lanes: BTreeMap<u64, Vec<Vec<Bar>>> = BTreeMap::new();
    for &i in &window.ops {
        let op = &history[i];
        let x0 = if op.call < window.start { LEFT + 4.0 } else { x(op.call) };
        let x1 = ret_in(i).map_or(right, x).max(x0 + 6.0);
        let rows = lanes.entry(op.process).or_default();
        match rows.iter_mut().find(|r| r.last().is_none_or(|b| b.x1 + 2.0 <= x0)) {
            Some(r) => r.push(Bar { i, x0, x1 }),
            None => rows.push(vec![Bar { i, x0, x1 }]),
        }
    }
    let nrows: usize = lanes.values().map(Vec::len).sum();
    let width = right + 40.0;
    let height = TOP + nrows as f64 * ROW + 30.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    svg.push_str(
        r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="none"/><line x1="0" y1="0" x2="0" y2="6" stroke="#0004" stroke-width="2"/></pattern></defs>
"##,
    );
    // Time axis: a tick per column, labelled every few columns.
    let every = (times.len() / 25).max(1);
    for (k, &t) in times.iter().enumerate() {
        let tx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx}" y1="{}" x2="{tx}" y2="{}" stroke="#eee"/>"##,
            TOP - 6.0,
            height - 24.0
        );
        if k % every == 0 || t == window.cut {
            let _ = writeln!(
                svg,
                r##"<text x="{tx}" y="{}" text-anchor="middle" fill="#666">{t}</text>"##,
                TOP - 10.0
            );
        }
    }
    let _ = writeln!(svg, r##"<text x="4" y="{}" fill="#666">{}</text>"##, TOP - 10.0, esc(opts.time_name));
    // The stuck point and the cut.
    let mark = |svg: &mut String, t: u64, text: &str, dy: f64| {
        let tx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx}" y1="{}" x2="{tx}" y2="{}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{tx}" y="{}" text-anchor="end" fill="#c0392b">{} </text>"##,
            TOP - 6.0,
            height - 20.0,
            height - 8.0 + dy,
            esc(text)
        );
    };
    if let Some(t) = ret_in(stuck.blocked).filter(|&t| t != window.cut) {
        mark(&mut svg, t, "search stuck here", -12.0);
    }
    mark(&mut svg, window.cut, "first violation: the prefix ends here", 0.0);

    let mut row = 0;
    for (process, rows) in &lanes {
        for (lane, bars) in rows.iter().enumerate() {
            let y = TOP + row as f64 * ROW;
            if lane == 0 {
                let _ = writeln!(svg, r#"<text x="4" y="{}">process {process}</text>"#, y + BAR / 2.0 + 4.0);
            }
            for b in bars {
                let op = &history[b.i];
                let st = status(b.i);
                let unknown = ret_in(b.i).is_none();
                let w = b.x1 - b.x0;
                let mut tip =
                    format!("process {process}: {}\ninvoked at {} {}", label(b.i), opts.time_name, op.call);
                match (&op.ret, ret_in(b.i)) {
                    (Some(_), Some(t)) => {
                        let _ = write!(tip, ", returned at {} {t}", opts.time_name);
                    }
                    (Some(r), None) => {
                        let _ = write!(
                            tip,
                            ", still running at the cut (returned {} at {} {})",
                            r.output, opts.time_name, r.time
                        );
                    }
                    (None, _) => tip.push_str(", outcome unknown: may take effect any time after, or never"),
                }
                let _ = write!(tip, "\n{}", st.describe());
                if let Some(k) = order.get(&b.i) {
                    let _ = write!(tip, " (#{} of {})", k + 1, order.len());
                }
                let dash = if unknown { r#" stroke-dasharray="5 3""# } else { "" };
                let _ = writeln!(
                    svg,
                    r#"<g><title>{}</title><rect class="{}" x="{}" y="{y}" width="{w}" height="{BAR}" rx="3"{dash}/>"#,
                    esc(&tip),
                    st.class(),
                    b.x0
                );
                if unknown {
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{}" y="{y}" width="{w}" height="{BAR}" rx="3" fill="url(#hatch)"/>"#,
                        b.x0
                    );
                }
                // Two lines, request over result, so that short bars stay legible; a nested svg
                // clips them to the bar.
                let mut first = op.input.to_string();
                if op.call < window.start {
                    first = format!("◀{} {first}", op.call);
                }
                let second = match (&op.ret, ret_in(b.i)) {
                    (Some(r), Some(_)) => format!("→ {}", r.output),
                    (Some(_), None) => "→ …".to_string(),
                    (None, _) => "→ ?".to_string(),
                };
                let _ = writeln!(
                    svg,
                    r#"<svg x="{}" y="{y}" width="{}" height="{BAR}"><text x="3" y="12">{}</text><text x="3" y="25">{}</text></svg></g>"#,
                    b.x0,
                    (w - 2.0).max(0.0),
                    esc(&first),
                    esc(&second)
                );
            }
            row += 1;
        }
    }
    svg.push_str("</svg>\n");

    // The explanation.
    let culprit = &history[window.culprit];
    let mut text = String::new();
    let _ = writeln!(
        text,
        "<p>The history is <b>not linearizable</b>. Its shortest non-linearizable prefix ends at {} {}, \
         when process {} returned <code>{}</code> (invoked at {} {}). Everything before that return \
         can be explained by some sequential order.</p>",
        esc(opts.time_name),
        window.cut,
        culprit.process,
        esc(&label(window.culprit)),
        esc(opts.time_name),
        culprit.call
    );
    let blocked = &history[stuck.blocked];
    let last_state = stuck.linearized.last().map(|(_, s)| show_state(s));
    let _ = writeln!(
        text,
        "<p>The longest explanation the checker found places {} operations, leaving the state at \
         <code>{}</code>; after that it cannot place any of the {} operation(s) invoked before \
         process {}'s <code>{}</code> had to take effect (its return at {} {}).</p>",
        stuck.linearized.len(),
        esc(&last_state.unwrap_or_else(|| "the initial state".to_string())),
        stuck.candidates.len(),
        blocked.process,
        esc(&label(stuck.blocked)),
        esc(opts.time_name),
        blocked.ret_time().map_or_else(|| "?".to_string(), |t| t.to_string())
    );
    text.push_str("<p>The end of that explanation, in order:</p>\n<ol class=\"lin\">\n");
    let skip = stuck.linearized.len().saturating_sub(12);
    if skip > 0 {
        let _ = writeln!(text, "<li value=\"1\">… {skip} earlier operations</li>");
    }
    for (k, (op, state)) in stuck.linearized.iter().enumerate().skip(skip) {
        let _ = writeln!(
            text,
            "<li value=\"{}\">process {}: <code>{}</code>, leaving <code>{}</code></li>",
            k + 1,
            history[*op].process,
            esc(&label(*op)),
            esc(&show_state(state))
        );
    }
    text.push_str("</ol>\n");

    let mut table = String::from(
        "<table><tr><th>process</th><th>operation</th><th>invoked</th><th>returned</th><th>checker</th></tr>\n",
    );
    for &i in &window.ops {
        let op = &history[i];
        let ret = match (&op.ret, ret_in(i)) {
            (_, Some(t)) => t.to_string(),
            (Some(r), None) => format!("{} (after the cut)", r.time),
            (None, None) => "unknown".to_string(),
        };
        let mut st = status(i).describe().to_string();
        if let Some(k) = order.get(&i) {
            let _ = write!(st, " #{}", k + 1);
        }
        let _ = writeln!(
            table,
            "<tr class=\"{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            status(i).class(),
            op.process,
            esc(&label(i)),
            op.call,
            esc(&ret),
            esc(&st)
        );
    }
    table.push_str("</table>\n");

    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: not linearizable</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.timeline {{ overflow-x: auto; border: 1px solid #ddd; padding: 6px; }}
rect.culprit {{ fill: #f4a6a0; stroke: #c0392b; stroke-width: 2; }}
rect.candidate {{ fill: #fcd9a0; stroke: #d68910; }}
rect.linearized {{ fill: #c8e6c9; stroke: #2e7d32; }}
rect.other {{ fill: #e8e8e8; stroke: #999; }}
.legend span {{ display: inline-block; padding: 2px 8px; margin-right: 8px; border-radius: 3px; }}
.legend .culprit {{ background: #f4a6a0; }} .legend .candidate {{ background: #fcd9a0; }}
.legend .linearized {{ background: #c8e6c9; }} .legend .other {{ background: #e8e8e8; }}
.legend .unknown {{ border: 1px dashed #555; background: repeating-linear-gradient(45deg, #fff, #fff 3px, #ccc 3px, #ccc 5px); }}
table {{ border-collapse: collapse; margin-top: 1em; }} td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
tr.culprit {{ background: #fbe3e1; }} tr.candidate {{ background: #fef0d9; }}
</style></head>
<body>
<h1>{title}: not linearizable</h1>
<p class="legend"><span class="culprit">cannot be explained</span><span class="candidate">not placed when stuck</span><span class="linearized">placed</span><span class="other">after the stuck point</span><span class="unknown">outcome unknown</span> Bars run from invoke to return; hover for details. Times are {time_name}s {start}–{cut}.</p>
<div class="timeline">
{svg}</div>
{text}{table}</body></html>
"##,
        title = esc(opts.title),
        time_name = esc(opts.time_name),
        start = window.start,
        cut = window.cut,
    )
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
