//! Rows, ratios against the targets, the table on stdout and the JSON file.

use std::fmt::Write as _;

pub use crate::verdict::Better;
use crate::verdict::{self, Verdict};

/// The paths; `nginx` and `haproxy` are the off-the-shelf peers;
/// `copy-chain` is the bridge's shape with byte-copying
/// forwarders in place of shim and relay (the floor for two extra
/// processes); the last, `bridge-B`, is a second bridge (another build or
/// another environment) measured only when asked for, for A/B comparisons.
pub const PATHS: [&str; 7] = ["direct-uds", "direct-mtls", "bridge", "nginx", "haproxy", "copy-chain", "bridge-B"];
pub const MTLS: usize = 1;
pub const BRIDGE: usize = 2;
pub const NGINX: usize = 3;
pub const HAPROXY: usize = 4;
pub const COPY: usize = 5;
pub const BRIDGE_B: usize = 6;
/// The peers the bridge is compared with, and the label of each ratio.
pub const PEERS: [(usize, &str); 2] = [(NGINX, "bridge/nginx"), (HAPROXY, "bridge/haproxy")];

/// One path's result for one workload.
#[derive(Clone, Debug)]
pub enum Cell {
    /// One value per round.
    Values(Vec<f64>),
    /// The workload has no meaning for this path.
    Na(String),
    /// The path could not be set up.
    Skipped(String),
    /// The path was set up but the workload failed.
    Failed(String),
}

impl Cell {
    fn sorted(&self) -> Option<Vec<f64>> {
        match self {
            Cell::Values(v) if !v.is_empty() => {
                let mut v = v.clone();
                v.sort_by(|a, b| a.total_cmp(b));
                Some(v)
            }
            _ => None,
        }
    }

    pub fn median(&self) -> Option<f64> {
        let v = self.sorted()?;
        let n = v.len();
        Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted()?.first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted()?.last().copied()
    }

    fn values(&self) -> &[f64] {
        match self {
            Cell::Values(v) => v,
            _ => &[],
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Cell::Values(_) => None,
            Cell::Na(r) | Cell::Skipped(r) | Cell::Failed(r) => Some(r),
        }
    }
}

/// A target on a ratio or on an absolute value.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
}

impl Goal {
    pub fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(limit) => value <= limit,
            Goal::AtLeast(limit) => value >= limit,
            Goal::Below(limit) => value < limit,
        }
    }

    pub fn text(self) -> String {
        match self {
            Goal::AtMost(l) => format!("<={l}"),
            Goal::AtLeast(l) => format!(">={l}"),
            Goal::Below(l) => format!("<{l}"),
        }
    }
}

pub struct Row {
    pub key: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    pub cells: Vec<Cell>,
    /// Target on the ratio bridge / direct-mtls (medians).
    pub vs_mtls: Option<Goal>,
    /// Whether the bridge must beat each peer (indexed like [`PEERS`]) on
    /// this row, beyond noise (verdict.rs); otherwise the ratio is shown
    /// for information.
    pub beat: [bool; 2],
    /// `false`: no bridge/peer ratio is shown (the figures are not like
    /// for like, e.g. peak RSS summed over a master and its workers).
    pub peer_ratios: bool,
    /// Target on the bridge's own value (its worst round).
    pub absolute: Option<Goal>,
}

impl Row {
    pub fn new(key: &str, title: &str, unit: &str, better: Better, cells: Vec<Cell>) -> Row {
        Row {
            key: key.to_owned(),
            title: title.to_owned(),
            unit: unit.to_owned(),
            better,
            cells,
            vs_mtls: None,
            beat: [false; 2],
            peer_ratios: true,
            absolute: None,
        }
    }

    pub fn vs_mtls(mut self, goal: Goal) -> Row {
        self.vs_mtls = Some(goal);
        self
    }

    /// Requires the bridge to beat nginx on this row.
    pub fn beat_nginx(mut self) -> Row {
        self.beat[0] = true;
        self
    }

    /// Requires the bridge to beat HAProxy on this row.
    pub fn beat_haproxy(mut self) -> Row {
        self.beat[1] = true;
        self
    }

    /// Shows no bridge/peer ratio on this row.
    pub fn no_peer_ratios(mut self) -> Row {
        self.peer_ratios = false;
        self
    }

    pub fn absolute(mut self, goal: Goal) -> Row {
        self.absolute = Some(goal);
        self
    }

    fn ratio(&self, other: usize) -> Option<f64> {
        if !self.peer_ratios && PEERS.iter().any(|(peer, _)| *peer == other) {
            return None;
        }
        self.ratio_of(BRIDGE, other)
    }

    /// The bridge against peer `k` of [`PEERS`], beyond noise.
    fn beat_verdict(&self, k: usize) -> Option<Verdict> {
        let (bridge, peer) = (self.cells.get(BRIDGE)?, self.cells.get(PEERS[k].0)?);
        verdict::beat(self.better, bridge.values(), peer.values())
    }

    fn ratio_of(&self, path: usize, base: usize) -> Option<f64> {
        let value = self.cells.get(path)?.median()?;
        let base = self.cells.get(base)?.median()?;
        (base > 0.0).then(|| value / base)
    }

    /// The bridge's worst round for an absolute target.
    fn worst(&self) -> Option<f64> {
        match self.better {
            Better::Lower => self.cells[BRIDGE].max(),
            Better::Higher => self.cells[BRIDGE].min(),
        }
    }

    /// (label, value, target, verdict) of every target this row carries.
    pub fn verdicts(&self) -> Vec<(String, Option<f64>, String, Option<Verdict>)> {
        let mut out = Vec::new();
        if let Some(goal) = self.vs_mtls {
            let r = self.ratio(MTLS);
            out.push(("bridge/direct-mtls".to_owned(), r, goal.text(), r.map(|r| met(goal, r))));
        }
        for (k, (peer, label)) in PEERS.iter().enumerate() {
            if self.beat[k] {
                out.push(((*label).to_owned(), self.ratio(*peer), beat_text(self.better), self.beat_verdict(k)));
            }
        }
        if let Some(goal) = self.absolute {
            let v = self.worst();
            out.push(("bridge".to_owned(), v, goal.text(), v.map(|v| met(goal, v))));
        }
        out
    }
}

pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn verdict_word(verdict: Option<Verdict>) -> &'static str {
    verdict.map(Verdict::word).unwrap_or("n/a")
}

/// A threshold target (against direct-mtls, or absolute): PASS or MISS.
fn met(goal: Goal, value: f64) -> Verdict {
    if goal.met(value) {
        Verdict::Pass
    } else {
        Verdict::Miss
    }
}

/// The target "beat the peer beyond noise" in words.
fn beat_text(better: Better) -> String {
    let margin = verdict::MARGIN;
    match better {
        Better::Lower => format!("<={:.2}|apart", 1.0 - margin),
        Better::Higher => format!(">={:.2}|apart", 1.0 + margin),
    }
}

/// Notes referenced from cells: each distinct reason once.
struct Notes(Vec<String>);

impl Notes {
    fn mark(&mut self, reason: &str) -> usize {
        match self.0.iter().position(|r| r == reason) {
            Some(i) => i + 1,
            None => {
                self.0.push(reason.to_owned());
                self.0.len()
            }
        }
    }
}

fn cell_text(cell: &Cell, notes: &mut Notes) -> String {
    match cell {
        Cell::Values(_) => {
            let (med, min, max) =
                (cell.median().unwrap_or(f64::NAN), cell.min().unwrap_or(0.0), cell.max().unwrap_or(0.0));
            if (max - min).abs() < f64::EPSILON {
                num(med)
            } else {
                format!("{} ({}-{})", num(med), num(min), num(max))
            }
        }
        Cell::Na(r) => format!("n/a [{}]", notes.mark(r)),
        Cell::Skipped(r) => format!("skipped [{}]", notes.mark(r)),
        Cell::Failed(r) => format!("FAILED [{}]", notes.mark(r)),
    }
}

fn ratio_text(row: &Row, other: usize, goal: Option<Goal>) -> String {
    let Some(r) = row.ratio(other) else {
        return "-".to_owned();
    };
    match goal {
        Some(goal) => format!("{:.2} {} {}", r, goal.text(), verdict_word(Some(met(goal, r)))),
        None => format!("{r:.2}"),
    }
}

/// bridge / peer `k` with its verdict when the row requires a win.
fn peer_text(row: &Row, k: usize) -> String {
    let Some(r) = row.ratio(PEERS[k].0) else {
        return "-".to_owned();
    };
    if row.beat[k] {
        format!("{r:.2} {}", verdict_word(row.beat_verdict(k)))
    } else {
        format!("{r:.2}")
    }
}

/// The table: rows = workloads, columns = paths, then the ratios.
pub fn table(rows: &[Row]) -> String {
    let mut notes = Notes(Vec::new());
    let paths = rows.first().map(|r| r.cells.len()).unwrap_or(4);
    let with_b = paths > BRIDGE_B;
    let header: Vec<String> = ["workload (median (min-max) over rounds)"]
        .into_iter()
        .chain(PATHS.into_iter().take(paths))
        .chain(["bridge/direct-mtls", "bridge/nginx", "bridge/haproxy", "copy-chain/direct-mtls", "bridge/copy-chain"])
        .chain(with_b.then_some("bridge-B/bridge"))
        .map(str::to_owned)
        .collect();
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = vec![format!("{} [{}]", row.title, row.unit)];
        for cell in &row.cells {
            line.push(cell_text(cell, &mut notes));
        }
        match row.absolute {
            Some(goal) => {
                let worst = row.worst();
                line.push(match worst {
                    Some(v) => {
                        format!("worst {} {} {}", num(v), goal.text(), verdict_word(Some(met(goal, v))))
                    }
                    None => "-".to_owned(),
                });
            }
            None => line.push(ratio_text(row, MTLS, row.vs_mtls)),
        }
        line.push(peer_text(row, 0));
        line.push(peer_text(row, 1));
        let info = |path, base| row.ratio_of(path, base).map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        line.push(info(COPY, MTLS));
        line.push(info(BRIDGE, COPY));
        if with_b {
            line.push(info(BRIDGE_B, BRIDGE));
        }
        lines.push(line);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(
                |(c, text)| {
                    if c == 0 {
                        format!("{text:<w$}", w = widths[c])
                    } else {
                        format!("{text:>w$}", w = widths[c])
                    }
                },
            )
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (columns - 1)));
        }
    }
    if !notes.0.is_empty() {
        let _ = writeln!(out);
        for (i, note) in notes.0.iter().enumerate() {
            let _ = writeln!(out, "[{}] {note}", i + 1);
        }
    }
    out
}

/// How many targets got each verdict.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub pass: usize,
    pub tie: usize,
    pub miss: usize,
    /// Targets that could not be judged (a path skipped or failed).
    pub na: usize,
}

impl Tally {
    /// "N PASS, N TIE, N MISS" (and the targets not judged, if any).
    pub fn line(&self) -> String {
        let mut line = format!("{} PASS, {} TIE, {} MISS", self.pass, self.tie, self.miss);
        if self.na > 0 {
            let _ = write!(line, ", {} not judged", self.na);
        }
        line
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"pass\": {}, \"tie\": {}, \"miss\": {}, \"not_judged\": {}}}",
            self.pass, self.tie, self.miss, self.na
        )
    }
}

/// Every target with its verdict, one per line.
pub fn verdicts(rows: &[Row]) -> (String, Tally) {
    let mut out = String::new();
    let mut tally = Tally::default();
    for row in rows {
        for (label, value, goal, verdict) in row.verdicts() {
            match verdict {
                Some(Verdict::Pass) => tally.pass += 1,
                Some(Verdict::Tie) => tally.tie += 1,
                Some(Verdict::Miss) => tally.miss += 1,
                None => tally.na += 1,
            }
            let value = value.map(|v| if label == "bridge" { num(v) } else { format!("{v:.2}") });
            let _ = writeln!(
                out,
                "{:<4}  {:<44}  {:<18} {:>8}  target {}",
                verdict_word(verdict),
                row.title,
                label,
                value.unwrap_or_else(|| "-".into()),
                goal
            );
        }
    }
    (out, tally)
}

// ---------------------------------------------------------------------------
// JSON, by hand (no serializer among the dependencies).

pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_owned()
    }
}

fn json_opt(v: Option<f64>) -> String {
    v.map(json_number).unwrap_or_else(|| "null".into())
}

fn json_cell(cell: &Cell) -> String {
    match cell {
        Cell::Values(v) => format!(
            "{{\"median\": {}, \"min\": {}, \"max\": {}, \"rounds\": [{}]}}",
            json_opt(cell.median()),
            json_opt(cell.min()),
            json_opt(cell.max()),
            v.iter().map(|x| json_number(*x)).collect::<Vec<_>>().join(", ")
        ),
        other => {
            let kind = match other {
                Cell::Na(_) => "not_applicable",
                Cell::Skipped(_) => "skipped",
                _ => "failed",
            };
            format!("{{\"{kind}\": {}}}", json_string(other.reason().unwrap_or_default()))
        }
    }
}

pub fn json_rows(rows: &[Row]) -> String {
    let mut items = Vec::new();
    for row in rows {
        let paths: Vec<String> = PATHS
            .iter()
            .zip(&row.cells)
            .map(|(p, c)| format!("        {}: {}", json_string(p), json_cell(c)))
            .collect();
        let ratios = format!(
            "{{\"bridge/direct-mtls\": {}, \"bridge/nginx\": {}, \"bridge/haproxy\": {}, \"copy-chain/direct-mtls\": {}, \"bridge/copy-chain\": {}{}}}",
            json_opt(row.ratio(MTLS)),
            json_opt(row.ratio(NGINX)),
            json_opt(row.ratio(HAPROXY)),
            json_opt(row.ratio_of(COPY, MTLS)),
            json_opt(row.ratio_of(BRIDGE, COPY)),
            if row.cells.len() > BRIDGE_B {
                format!(", \"bridge-B/bridge\": {}", json_opt(row.ratio_of(BRIDGE_B, BRIDGE)))
            } else {
                String::new()
            }
        );
        let targets: Vec<String> = row
            .verdicts()
            .into_iter()
            .map(|(label, value, goal, verdict)| {
                format!(
                    "{{\"on\": {}, \"value\": {}, \"target\": {}, \"verdict\": {}, \"pass\": {}}}",
                    json_string(&label),
                    json_opt(value),
                    json_string(&goal),
                    verdict.map(|v| json_string(v.word())).unwrap_or_else(|| "null".into()),
                    verdict.map(|v| (v == Verdict::Pass).to_string()).unwrap_or_else(|| "null".into())
                )
            })
            .collect();
        items.push(format!(
            "    {{\n      \"key\": {},\n      \"workload\": {},\n      \"unit\": {},\n      \"better\": {},\n      \"paths\": {{\n{}\n      }},\n      \"ratios\": {},\n      \"targets\": [{}]\n    }}",
            json_string(&row.key),
            json_string(&row.title),
            json_string(&row.unit),
            json_string(if row.better == Better::Lower { "lower" } else { "higher" }),
            paths.join(",\n"),
            ratios,
            targets.join(", ")
        ));
    }
    format!("[\n{}\n  ]", items.join(",\n"))
}
