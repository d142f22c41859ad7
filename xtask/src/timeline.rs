//! A run's timeline as one self-contained HTML page (inline CSS, inline SVG, a little inline
//! JS for a hover cursor; nothing is fetched) and as a plain-text summary for a terminal.
//!
//! The page shows, on one shared time axis: every phase and every image as a bar (cached
//! images hatched grey and marked "cached", failures red), then the machine's memory in use
//! with the builds' budget (dashed) and each build's cap over the interval its build ran.
//! Every bar carries `data-phase` or `data-image` + `data-state` so tests can find it, and a
//! `<title>` tooltip with the exact figures. The page is drawn server-side: without JS it
//! loses only the cursor; the script ends by setting `document.body.dataset.rendered = "ok"`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// e.g. "cargo xtask e2e — run 20261130-101500-4242"
    pub title: String,
    /// e.g. "passed" / "FAILED: <error>"
    pub outcome: String,
    /// Wall time of the run.
    pub total_s: f64,
    /// The run's phases (they may overlap).
    pub phases: Vec<Span>,
    /// One per image: built, cached (zero-length or marked), loaded, failed.
    pub images: Vec<Span>,
    /// Machine memory in use over time (may be empty: no builds ran).
    pub memory: Vec<Sample>,
    /// The memory budget of the builds, drawn as a horizontal line.
    pub budget_bytes: Option<u64>,
    /// Each build's memory cap, drawn for the time its build ran.
    pub caps: Vec<Cap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Span {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
    pub state: SpanState,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanState {
    Ok,
    Failed,
    Cached,
    Built,
    Loaded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cap {
    pub image: String,
    pub start_s: f64,
    pub end_s: f64,
    pub cap_bytes: u64,
}

// ---------------------------------------------------------------------------------------
// Geometry. Both charts share one viewBox width and one plot area, so their time axes line
// up exactly; the SVGs scale uniformly with the page width.

/// Width of every chart's viewBox.
const VBW: f64 = 1300.0;
/// Left gutter: row labels and memory tick labels.
const LEFT: f64 = 230.0;
/// Right margin: room for the label after a bar that ends at the end of the run.
const RIGHT: f64 = 90.0;
const PW: f64 = VBW - LEFT - RIGHT;
const ROW_H: f64 = 21.0;
const BAR_H: f64 = 13.0;
const SECTION_H: f64 = 20.0;
/// A zero-length span is still drawn this wide, so it can be seen and hovered.
const MIN_BAR_W: f64 = 4.0;
/// The same for a cached image, so that its hatching shows.
const MIN_CACHED_W: f64 = 8.0;
/// Longest row label, in characters, before it is cut with an ellipsis (the tooltip and the
/// table below keep the full name).
const LABEL_CHARS: usize = 32;
const MEM_PLOT_H: f64 = 170.0;
const MEM_TOP: f64 = 18.0;

const CAP_COLOURS: [&str; 8] = [
    "#f28e2b", "#59a14f", "#b07aa1", "#e0ac2b", "#76b7b2", "#ff7f9d", "#9c755f", "#7f7f7f",
];

/// Appends formatted text to a String (writing to a String cannot fail).
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        let _ = write!($dst, $($arg)*);
    }};
}

/// The shared time axis: seconds from `t0` to `t1`, mapped onto the plot area.
struct Axis {
    t0: f64,
    t1: f64,
}

impl Axis {
    fn of(t: &Timeline) -> Axis {
        let mut t1 = fin(t.total_s);
        let spans = t.phases.iter().chain(&t.images);
        for s in spans {
            t1 = t1.max(fin(s.start_s)).max(fin(s.end_s));
        }
        for c in &t.caps {
            t1 = t1.max(fin(c.start_s)).max(fin(c.end_s));
        }
        for m in &t.memory {
            t1 = t1.max(fin(m.t_s));
        }
        // Nothing took any time (or only garbage was given): still draw a one-second axis.
        if t1 <= 0.0 || !t1.is_finite() {
            t1 = 1.0;
        }
        Axis { t0: 0.0, t1 }
    }

    fn x(&self, t: f64) -> f64 {
        let t = fin(t).clamp(self.t0, self.t1);
        LEFT + (t - self.t0) / (self.t1 - self.t0) * PW
    }

    /// Tick positions (seconds) and their labels, in seconds. Steps are 1-2-5 below two
    /// minutes and whole minutes/hours above (60, 120, 300 s…); a step is doubled while its
    /// labels would be wider than the space between ticks.
    fn ticks(&self) -> Vec<(f64, String)> {
        let range = self.t1 - self.t0;
        let mut step = time_step(range, 10.0);
        for _ in 0..64 {
            let decimals = if step >= 1.0 {
                0
            } else {
                (-step.log10().floor()) as usize
            };
            let mut out = Vec::new();
            for k in 0..=200u32 {
                let v = self.t0 + f64::from(k) * step;
                if v > self.t1 * (1.0 + 1e-9) {
                    break;
                }
                out.push((v, format!("{v:.decimals$} s")));
            }
            let widest = out.iter().map(|(_, l)| l.len()).max().unwrap_or(0) as f64;
            if widest * 7.0 + 12.0 <= step / range * PW || out.len() <= 2 {
                return out;
            }
            step *= 2.0;
        }
        vec![(self.t0, "0 s".to_string())]
    }
}

/// A step for a time axis of `range` seconds cut into about `target` parts: 1-2-5 below
/// two minutes, then 15 s, 30 s, 1, 2, 5, 10, 15, 30 minutes, 1, 2, 3, 6, 12 hours, 1, 2,
/// 5 days, then 1-2-5 again.
fn time_step(range: f64, target: f64) -> f64 {
    const STEPS: [f64; 16] = [
        15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0,
        43200.0, 86400.0, 172800.0, 432000.0,
    ];
    let raw = range / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    if raw <= 10.0 {
        return nice_step(range, target);
    }
    match STEPS.iter().find(|&&s| s >= raw) {
        Some(&s) => s,
        None => nice_step(range, target),
    }
}

/// A finite number, or 0.
fn fin(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// A 1-2-5 step that cuts `range` into about `target` parts.
fn nice_step(range: f64, target: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn state_name(s: SpanState) -> &'static str {
    match s {
        SpanState::Ok => "ok",
        SpanState::Failed => "failed",
        SpanState::Cached => "cached",
        SpanState::Built => "built",
        SpanState::Loaded => "loaded",
    }
}

/// Escapes text for HTML/SVG content and for double- or single-quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab/newline are not allowed in HTML text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Cuts a label to `max` characters (not bytes), ending it with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Seconds for people: "0.4 s", "12.3 s", "2m 05s", "1h 02m".
fn fmt_dur(s: f64) -> String {
    let s = fin(s).max(0.0);
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        let m = (s / 60.0).floor();
        format!("{m:.0}m {:02.0}s", (s - m * 60.0).floor())
    } else {
        let h = (s / 3600.0).floor();
        format!("{h:.0}h {:02.0}m", ((s - h * 3600.0) / 60.0).floor())
    }
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Bytes for people, binary units: "512 B", "1.5 GiB".
fn fmt_bytes(b: u64) -> String {
    let (v, unit) = scale_bytes(b as f64);
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `b` in its largest binary unit that keeps it at least 1, and that unit's index.
fn scale_bytes(b: f64) -> (f64, usize) {
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    (v, unit)
}

/// Exact bytes with thin grouping: "5 690 123 456 bytes".
fn exact_bytes(b: u64) -> String {
    let digits = b.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out + " bytes"
}

/// Whether the outcome reads as a success ("passed", "ok", "success…").
fn outcome_ok(outcome: &str) -> bool {
    let o = outcome.trim().to_ascii_lowercase();
    o.starts_with("pass") || o == "ok" || o.starts_with("ok ") || o.starts_with("success")
}

/// Samples in time order, without non-finite times.
fn sorted_samples(t: &Timeline) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = t
        .memory
        .iter()
        .filter(|m| m.t_s.is_finite())
        .map(|m| (m.t_s, m.used_bytes))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The highest sample: (time, bytes).
fn peak(samples: &[(f64, u64)]) -> Option<(f64, u64)> {
    samples.iter().copied().max_by_key(|&(_, b)| b)
}

// ---------------------------------------------------------------------------------------
// The page.

const CSS: &str = r#"
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --card:#fff;
  --ok:#4e79a7; --built:#59a14f; --loaded:#8e6bbf; --failed:#d62728; --cached:#9aa0a6; }
* { box-sizing: border-box; }
body { margin:0; padding:16px 24px 40px; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", sans-serif; }
header { margin-bottom:14px; }
h1 { font-size:20px; margin:0 0 8px; font-weight:600; overflow-wrap:anywhere; }
h2 { font-size:15px; margin:0; font-weight:600; }
.card-head { display:flex; flex-wrap:wrap; align-items:baseline; gap:4px 24px; margin:0 0 6px; }
.meta { display:flex; flex-wrap:wrap; gap:8px 18px; align-items:center; color:var(--muted); }
.meta b { color:var(--fg); font-variant-numeric: tabular-nums; }
.badge { display:inline-block; padding:2px 10px; border-radius:12px; font-weight:700;
  color:#fff; letter-spacing:.03em; }
.badge.pass { background:#2da44e; } .badge.fail { background:var(--failed); }
.badge.other { background:#6e7781; }
.outcome { margin-top:8px; white-space:pre-wrap; overflow-wrap:anywhere; max-height:9em;
  overflow:auto; padding:6px 10px; border-radius:6px; font: 12.5px/1.4 ui-monospace,
  "DejaVu Sans Mono", "Liberation Mono", monospace; }
.outcome.fail { background:#ffebe9; border:1px solid #ffcecb; color:#82071e; }
.outcome.pass, .outcome.other { display:none; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:12px 14px 8px; margin-bottom:14px; }
.legend { display:flex; flex-wrap:wrap; gap:4px 16px; font-size:12.5px; color:var(--muted); }
.legend span { display:inline-flex; align-items:center; gap:6px; }
.sw { display:inline-block; width:18px; height:10px; border-radius:2px; }
.sw.ok { background:var(--ok); } .sw.built { background:var(--built); }
.sw.loaded { background:var(--loaded); } .sw.failed { background:var(--failed); }
.sw.cached { background: repeating-linear-gradient(45deg, #c7cbd0 0 3px, #eef0f2 3px 6px);
  border:1px solid #9aa0a6; }
.sw.mem { background:#4e79a7; height:3px; }
.sw.budget { height:0; border-top:2px dashed var(--failed); border-radius:0; }
.sw.cap { height:0; border-top:2px solid #f28e2b; border-radius:0; }
svg.chart { display:block; width:100%; height:auto; font-size:12px;
  font-family: system-ui, "DejaVu Sans", "Liberation Sans", sans-serif; }
svg.chart { fill:var(--fg); } /* inherited: a text's own fill attribute wins */
svg .halo { stroke:#fff; stroke-width:3px; stroke-linejoin:round; paint-order:stroke; }
svg .muted, svg .tick { fill:var(--muted); }
svg .grid { stroke:#eaeef2; stroke-width:1; }
svg .axis { stroke:#8c959f; stroke-width:1; }
svg .zebra { fill:#f6f8fa; }
svg .section { font-weight:600; fill:var(--muted); font-size:11.5px; letter-spacing:.06em; }
svg g.bar:hover rect.b { stroke:#1f2328; stroke-width:1.5; }
svg .cursor { stroke:#1f2328; stroke-width:1; stroke-dasharray:3 3; pointer-events:none; }
.empty { color:var(--muted); font-style:italic; margin:6px 0 10px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:4px 10px 4px 0; border-bottom:1px solid #eaeef2;
  vertical-align:top; }
th { color:var(--muted); font-weight:600; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
th.num { text-align:right; }
td.detail { color:var(--muted); overflow-wrap:anywhere; }
td.name { overflow-wrap:anywhere; }
.st { font-weight:600; } .st.failed { color:var(--failed); } .st.cached { color:#6e7781; }
.st.built { color:#2f7d32; } .st.loaded { color:#6f4fa3; } .st.ok { color:var(--ok); }
#readout { position:absolute; display:none; pointer-events:none; background:#1f2328; color:#fff;
  font-size:12px; padding:3px 8px; border-radius:4px; white-space:nowrap; z-index:10; }
"#;

const JS: &str = r#"
(function () {
  var ro = document.getElementById("readout");
  var mem = JSON.parse(document.getElementById("mem-data").textContent || "[]");
  var charts = Array.prototype.slice.call(document.querySelectorAll("svg.chart"));
  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  function fmtBytes(b) {
    var u = 0;
    while (b >= 1024 && u + 1 < UNITS.length) { b /= 1024; u++; }
    return (u ? b.toFixed(1) : b.toFixed(0)) + " " + UNITS[u];
  }
  function nearest(t) {
    var lo = 0, hi = mem.length - 1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (mem[mid][0] <= t) lo = mid; else hi = mid; }
    return Math.abs(mem[hi][0] - t) < Math.abs(mem[lo][0] - t) ? mem[hi] : mem[lo];
  }
  function hide() {
    ro.style.display = "none";
    charts.forEach(function (s) { var c = s.querySelector(".cursor"); if (c) c.style.display = "none"; });
  }
  function move(ev) {
    var svg = ev.currentTarget, d = svg.dataset, r = svg.getBoundingClientRect();
    var x = (ev.clientX - r.left) * Number(d.vbw) / r.width;
    var left = Number(d.left), pw = Number(d.pw), t0 = Number(d.t0), t1 = Number(d.t1);
    if (!(r.width > 0) || x < left || x > left + pw) { hide(); return; }
    var t = t0 + (x - left) / pw * (t1 - t0);
    charts.forEach(function (s) {
      var c = s.querySelector(".cursor");
      if (c) { c.setAttribute("x1", x); c.setAttribute("x2", x); c.style.display = ""; }
    });
    var digits = t1 - t0 >= 100 ? 0 : 1;
    var text = "t = " + t.toFixed(digits) + " s";
    if (mem.length) { var m = nearest(t); text += " \u00b7 memory in use " + fmtBytes(m[1]); }
    ro.textContent = text;
    ro.style.display = "block";
    // Absolute, not fixed: a fixed element makes headless screenshots skip painting below
    // the viewport.
    ro.style.left = (ev.pageX + 14) + "px";
    ro.style.top = (ev.pageY + 14) + "px";
  }
  charts.forEach(function (s) {
    s.addEventListener("mousemove", move);
    s.addEventListener("mouseleave", hide);
  });
  document.body.dataset.rendered = "ok";
})();
"#;

/// The whole page: header, timeline, memory chart, table of figures.
pub fn render_html(t: &Timeline) -> String {
    let ax = Axis::of(t);
    let samples = sorted_samples(t);
    let ok = outcome_ok(&t.outcome);
    let failed = !ok && {
        let o = t.outcome.to_ascii_lowercase();
        o.contains("fail") || o.contains("error") || o.contains("interrupt")
    };
    let cls = if ok {
        "pass"
    } else if failed {
        "fail"
    } else {
        "other"
    };
    let badge = if ok {
        "PASSED".to_string()
    } else if failed {
        "FAILED".to_string()
    } else if t.outcome.trim().is_empty() {
        "NO OUTCOME".to_string()
    } else {
        shorten(t.outcome.trim(), 40)
    };

    let mut h = String::with_capacity(64 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    w!(
        h,
        "<title>{}</title>\n<style>{CSS}</style>\n</head>\n",
        esc(&t.title)
    );
    h.push_str("<body>\n<header>\n");
    w!(h, "<h1>{}</h1>\n<div class=\"meta\">", esc(&t.title));
    w!(
        h,
        "<span class=\"badge {cls}\" title=\"{}\">{}</span>",
        esc(&t.outcome),
        esc(&badge)
    );
    w!(h, "<span>total <b>{}</b></span>", esc(&fmt_dur(t.total_s)));
    w!(h, "<span><b>{}</b> phases</span>", t.phases.len());
    w!(h, "<span><b>{}</b> images", t.images.len());
    let mut counts = Vec::new();
    for st in [
        SpanState::Built,
        SpanState::Cached,
        SpanState::Loaded,
        SpanState::Failed,
    ] {
        let n = t.images.iter().filter(|s| s.state == st).count();
        if n > 0 {
            counts.push(format!("{n} {}", state_name(st)));
        }
    }
    if !counts.is_empty() {
        w!(h, " ({})", counts.join(", "));
    }
    h.push_str("</span>");
    if let Some((pt, pb)) = peak(&samples) {
        w!(
            h,
            "<span>peak memory <b>{}</b> at {}",
            fmt_bytes(pb),
            fmt_dur(pt)
        );
        if let Some(b) = t.budget_bytes {
            w!(h, " (budget <b>{}</b>)", fmt_bytes(b));
        }
        h.push_str("</span>");
    }
    h.push_str("</div>\n");
    w!(
        h,
        "<div class=\"outcome {cls}\">{}</div>\n",
        esc(&t.outcome)
    );
    h.push_str("</header>\n");

    // Timeline.
    h.push_str("<section class=\"card\" id=\"timeline\">\n<div class=\"card-head\">");
    h.push_str("<h2>Where the time went</h2><div class=\"legend\">");
    h.push_str("<span><i class=\"sw ok\"></i>phase</span>");
    h.push_str("<span><i class=\"sw built\"></i>image built</span>");
    h.push_str("<span><i class=\"sw cached\"></i>image cached</span>");
    h.push_str("<span><i class=\"sw loaded\"></i>image loaded</span>");
    h.push_str("<span><i class=\"sw failed\"></i>failed</span>");
    h.push_str("</div></div>\n");
    gantt(&mut h, t, &ax);
    h.push_str("</section>\n");

    // Memory.
    h.push_str("<section class=\"card\" id=\"memory\">\n<div class=\"card-head\">");
    h.push_str("<h2>Memory in use</h2>");
    if samples.is_empty() {
        h.push_str("</div>\n<p class=\"empty\">No memory samples: no builds ran.</p>\n");
    } else {
        h.push_str("<div class=\"legend\">");
        h.push_str("<span><i class=\"sw mem\"></i>machine memory in use</span>");
        if t.budget_bytes.is_some() {
            h.push_str("<span><i class=\"sw budget\"></i>budget of the builds</span>");
        }
        if !t.caps.is_empty() {
            h.push_str("<span><i class=\"sw cap\"></i>a build's cap, while it ran</span>");
        }
        h.push_str("</div></div>\n");
        memory_chart(&mut h, t, &ax, &samples);
    }
    h.push_str("</section>\n");

    // The figures, for copying and for reading without hovering.
    details_table(&mut h, t);

    h.push_str("<div id=\"readout\"></div>\n");
    // Numbers only (non-finite ones were dropped), so nothing can close the script early;
    // '<' is escaped all the same.
    let json = serde_json::to_string(&samples)
        .unwrap_or_else(|_| "[]".to_string())
        .replace('<', "\\u003c");
    w!(
        h,
        "<script type=\"application/json\" id=\"mem-data\">{json}</script>\n"
    );
    w!(h, "<script>{JS}</script>\n</body>\n</html>\n");
    h
}

/// The opening tag of a chart SVG, with what the cursor script needs to map x to time.
fn chart_open(h: &mut String, id: &str, height: f64, ax: &Axis, label: &str) {
    w!(
        h,
        "<svg class=\"chart\" id=\"{id}\" \
         viewBox=\"0 0 {VBW} {height:.0}\" role=\"img\" aria-label=\"{}\" \
         data-vbw=\"{VBW}\" data-left=\"{LEFT}\" data-pw=\"{PW}\" data-t0=\"{}\" data-t1=\"{}\">\n",
        esc(label),
        ax.t0,
        ax.t1
    );
}

fn gantt(h: &mut String, t: &Timeline, ax: &Axis) {
    let top = 26.0;
    let mut rows = 0.0;
    let mut sections = 0.0;
    for list in [&t.phases, &t.images] {
        if !list.is_empty() {
            sections += 1.0;
            rows += list.len() as f64;
        }
    }
    let empty = rows == 0.0;
    let body_h = if empty {
        ROW_H * 1.5
    } else {
        sections * SECTION_H + rows * ROW_H
    };
    let bottom = top + body_h;
    let height = bottom + 26.0;
    chart_open(h, "gantt", height, ax, "timeline of phases and images");
    h.push_str(
        "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#eef0f2\"/>\
         <rect width=\"3\" height=\"6\" fill=\"#c7cbd0\"/></pattern></defs>\n",
    );

    // Zebra rows first, then grid lines over them, then bars over everything.
    let mut y = top;
    let mut zebra = String::new();
    let mut bars = String::new();
    for (kind, list) in [("phase", &t.phases), ("image", &t.images)] {
        if list.is_empty() {
            continue;
        }
        let title = if kind == "phase" { "PHASES" } else { "IMAGES" };
        w!(
            bars,
            "<text class=\"section\" x=\"8\" y=\"{:.1}\">{title}</text>\n",
            y + SECTION_H - 6.0
        );
        y += SECTION_H;
        for (i, s) in list.iter().enumerate() {
            if i % 2 == 0 {
                w!(
                    zebra,
                    "<rect class=\"zebra\" x=\"0\" y=\"{y:.1}\" width=\"{VBW}\" height=\"{ROW_H}\"/>\n"
                );
            }
            bar(&mut bars, kind, s, ax, y);
            y += ROW_H;
        }
    }
    h.push_str(&zebra);

    // Grid and tick labels, top and bottom.
    for (v, label) in ax.ticks() {
        let x = ax.x(v);
        w!(
            h,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\n"
        );
        for ty in [top - 8.0, bottom + 17.0] {
            w!(
                h,
                "<text class=\"tick\" x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>\n",
                esc(&label)
            );
        }
    }
    // The end of the run.
    let xe = ax.x(t.total_s);
    if fin(t.total_s) > 0.0 {
        w!(
            h,
            "<line x1=\"{xe:.1}\" y1=\"{top}\" x2=\"{xe:.1}\" y2=\"{bottom:.1}\" stroke=\"#6e7781\" \
             stroke-dasharray=\"2 3\"><title>end of the run: {:.3} s</title></line>\n",
            fin(t.total_s)
        );
    }
    w!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom:.1}\"/>\n"
    );
    w!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\"/>\n",
        LEFT + PW
    );
    if empty {
        w!(
            h,
            "<text class=\"muted\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
             font-style=\"italic\">no phases or images were recorded</text>\n",
            LEFT + PW / 2.0,
            top + ROW_H
        );
    }
    h.push_str(&bars);
    w!(
        h,
        "<line class=\"cursor\" x1=\"0\" y1=\"{top}\" x2=\"0\" y2=\"{bottom:.1}\" style=\"display:none\"/>\n"
    );
    h.push_str("</svg>\n");
}

/// One bar: a `<g>` with the data attributes, its tooltip, the rect and its label.
fn bar(out: &mut String, kind: &str, s: &Span, ax: &Axis, y: f64) {
    let start = fin(s.start_s);
    let end = fin(s.end_s).max(start);
    let took = end - start;
    let state = state_name(s.state);
    let x0 = ax.x(start);
    let x1 = ax.x(end);
    let min_w = if s.state == SpanState::Cached {
        MIN_CACHED_W
    } else {
        MIN_BAR_W
    };
    // A span too short to see is widened around its middle, and kept inside the plot.
    let bw = (x1 - x0).max(min_w);
    let bx = (x0 - (bw - (x1 - x0)) / 2.0).clamp(LEFT, (LEFT + PW - bw).max(LEFT));
    let by = y + (ROW_H - BAR_H) / 2.0;
    let (fill, stroke) = match s.state {
        SpanState::Ok => ("#4e79a7", "#3b5f86"),
        SpanState::Built => ("#59a14f", "#3f7a38"),
        SpanState::Loaded => ("#8e6bbf", "#6f4fa3"),
        SpanState::Failed => ("#d62728", "#a01c1d"),
        SpanState::Cached => ("url(#hatch)", "#9aa0a6"),
    };

    let mut tip = format!("{} ({kind}): {state}\n", s.name);
    let _ = write!(
        tip,
        "start {start:.3} s, end {end:.3} s, took {took:.3} s ({})",
        fmt_dur(took)
    );
    if !s.detail.is_empty() {
        tip.push('\n');
        tip.push_str(&s.detail);
    }

    let label = match s.state {
        SpanState::Cached if took < 0.05 => "cached".to_string(),
        SpanState::Cached => format!("cached · {}", fmt_dur(took)),
        SpanState::Failed => format!("FAILED · {}", fmt_dur(took)),
        _ => fmt_dur(took),
    };
    let attr = if kind == "phase" {
        format!("data-phase=\"{}\"", esc(&s.name))
    } else {
        format!("data-image=\"{}\"", esc(&s.name))
    };
    w!(
        out,
        "<g class=\"bar {kind} {state}\" {attr} data-state=\"{state}\">\
         <title>{}</title>\n",
        esc(&tip)
    );
    w!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
        LEFT - 10.0,
        y + ROW_H / 2.0 + 4.0,
        esc(&shorten(&s.name, LABEL_CHARS))
    );
    w!(
        out,
        "<rect class=\"b\" x=\"{bx:.2}\" y=\"{by:.1}\" width=\"{bw:.2}\" height=\"{BAR_H}\" rx=\"2\" \
         fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1\"/>\n"
    );
    // The label goes after the bar, else before it, else inside it.
    let text_w = label.chars().count() as f64 * 6.8;
    let ty = y + ROW_H / 2.0 + 4.0;
    let weight = if s.state == SpanState::Failed {
        " font-weight=\"600\" fill=\"#a01c1d\""
    } else if s.state == SpanState::Cached {
        " fill=\"#57606a\" font-style=\"italic\""
    } else {
        ""
    };
    if bx + bw + 5.0 + text_w <= VBW - 4.0 {
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{ty:.1}\"{weight}>{}</text>\n",
            bx + bw + 5.0,
            esc(&label)
        );
    } else if bx - 5.0 - text_w >= LEFT {
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{ty:.1}\" text-anchor=\"end\"{weight}>{}</text>\n",
            bx - 5.0,
            esc(&label)
        );
    } else {
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{ty:.1}\" fill=\"#fff\" font-weight=\"600\">{}</text>\n",
            bx + 5.0,
            esc(&label)
        );
    }
    out.push_str("</g>\n");
}

fn memory_chart(h: &mut String, t: &Timeline, ax: &Axis, samples: &[(f64, u64)]) {
    let top = MEM_TOP;
    let bottom = top + MEM_PLOT_H;
    let height = bottom + 30.0;
    let peak = peak(samples).unwrap_or((0.0, 0));
    let mut ymax = peak.1 as f64;
    if let Some(b) = t.budget_bytes {
        ymax = ymax.max(b as f64);
    }
    for c in &t.caps {
        ymax = ymax.max(c.cap_bytes as f64);
    }
    if ymax <= 0.0 {
        ymax = 1024.0 * 1024.0 * 1024.0;
    }
    // Ticks in the unit of the largest value, on a 1-2-5 step.
    let (top_in_unit, unit) = scale_bytes(ymax * 1.08);
    let unit_b = 1024f64.powi(unit as i32);
    let step = nice_step(top_in_unit, 5.0);
    let n_steps = (top_in_unit / step).ceil().max(1.0);
    let ymax = n_steps * step * unit_b;
    let y = |b: f64| bottom - (b / ymax).clamp(0.0, 1.0) * MEM_PLOT_H;

    chart_open(h, "memchart", height, ax, "memory in use over time");
    for k in 0..=(n_steps as u32).min(50) {
        let v = f64::from(k) * step;
        let yy = y(v * unit_b);
        w!(
            h,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\"/>\n",
            LEFT + PW
        );
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10().floor()) as usize
        };
        w!(
            h,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.decimals$} {}</text>\n",
            LEFT - 8.0,
            yy + 4.0,
            UNITS[unit]
        );
    }
    for (v, label) in ax.ticks() {
        let x = ax.x(v);
        w!(
            h,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\n"
        );
        w!(
            h,
            "<text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            bottom + 17.0,
            esc(&label)
        );
    }

    // Memory in use: an area under a line; a dot per sample when there are very few.
    let pts = decimate(samples, ax);
    let mut line = String::new();
    for (i, (tt, b)) in pts.iter().enumerate() {
        let c = if i == 0 { 'M' } else { 'L' };
        w!(line, "{c}{:.1},{:.1} ", ax.x(*tt), y(*b as f64));
    }
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        w!(
            h,
            "<path d=\"{line}L{:.1},{bottom:.1} L{:.1},{bottom:.1} Z\" fill=\"#4e79a7\" \
             fill-opacity=\"0.14\" stroke=\"none\"/>\n",
            ax.x(last.0),
            ax.x(first.0)
        );
    }
    w!(
        h,
        "<path class=\"mem\" d=\"{line}\" fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.8\" \
         stroke-linejoin=\"round\"/>\n"
    );
    if samples.len() <= 3 {
        for (tt, b) in samples {
            w!(
                h,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4e79a7\">\
                 <title>{:.3} s: {}</title></circle>\n",
                ax.x(*tt),
                y(*b as f64),
                tt,
                esc(&exact_bytes(*b))
            );
        }
    }

    // Caps: a bracket at the cap's height over the interval its build ran, named.
    let mut colour_of: Vec<&str> = Vec::new();
    let mut placed: Vec<(f64, f64, f64)> = Vec::new(); // label boxes: x0, x1, baseline
    for c in &t.caps {
        let idx = match colour_of.iter().position(|n| *n == c.image) {
            Some(i) => i,
            None => {
                colour_of.push(&c.image);
                colour_of.len() - 1
            }
        };
        let colour = CAP_COLOURS[idx % CAP_COLOURS.len()];
        let start = fin(c.start_s);
        let end = fin(c.end_s).max(start);
        let x0 = ax.x(start);
        let x1 = ax.x(end).max(x0 + MIN_BAR_W);
        let yy = y(c.cap_bytes as f64);
        w!(
            h,
            "<g class=\"cap\" data-cap=\"{}\"><title>{}: memory cap {} ({}) from {start:.3} s to \
             {end:.3} s</title>\n",
            esc(&c.image),
            esc(&c.image),
            fmt_bytes(c.cap_bytes),
            exact_bytes(c.cap_bytes)
        );
        w!(
            h,
            "<rect x=\"{x0:.1}\" y=\"{yy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" \
             fill-opacity=\"0.18\"/>\n",
            x1 - x0,
            (bottom - yy).clamp(0.0, 6.0)
        );
        w!(
            h,
            "<path d=\"M{x0:.1},{:.1} V{yy:.1} H{x1:.1} V{:.1}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\"/>\n",
            yy + 6.0,
            yy + 6.0
        );
        // Label above the bracket, else below it, else further down, clear of earlier labels.
        let text = format!("{} cap {}", shorten(&c.image, 28), fmt_bytes(c.cap_bytes));
        let tw = text.chars().count() as f64 * 6.3;
        let lx = (x0 + 2.0).min(LEFT + PW - tw).max(LEFT + 2.0);
        let clear = |ly: f64| {
            !placed
                .iter()
                .any(|&(a, b, by)| lx < b && a < lx + tw && (by - ly).abs() < 13.0)
        };
        let above = (yy - 5.0).max(top + 10.0);
        let mut ly = above;
        if !clear(ly) {
            ly = yy + 18.0;
            for _ in 0..12 {
                if clear(ly) {
                    break;
                }
                ly += 13.0;
            }
        }
        placed.push((lx, lx + tw, ly));
        w!(
            h,
            "<text class=\"halo\" x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"11\" fill=\"{colour}\" \
             font-weight=\"600\">{}</text>\n</g>\n",
            esc(&text)
        );
    }

    // Peak.
    let (pt, pb) = peak;
    let (px, py) = (ax.x(pt), y(pb as f64));
    let ptext = format!("peak {} at {}", fmt_bytes(pb), fmt_dur(pt));
    let anchor_end = px > LEFT + PW * 0.75;
    w!(
        h,
        "<g class=\"peak\"><title>peak memory in use: {} at {pt:.3} s</title>\
         <circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"#fff\" stroke=\"#4e79a7\" \
         stroke-width=\"2\"/><text class=\"halo\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#3b5f86\" \
         text-anchor=\"{}\">{}</text></g>\n",
        esc(&exact_bytes(pb)),
        if anchor_end { px - 7.0 } else { px + 7.0 },
        (py + 14.0).min(bottom - 4.0),
        if anchor_end { "end" } else { "start" },
        esc(&ptext)
    );

    // Budget: dashed, across the whole axis, labelled at its right end.
    if let Some(b) = t.budget_bytes {
        let yy = y(b as f64);
        w!(
            h,
            "<g class=\"budget\" data-budget=\"{b}\"><title>memory budget of the builds: {} ({})</title>\
             <line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#d62728\" \
             stroke-width=\"1.8\" stroke-dasharray=\"7 5\"/>\
             <text class=\"halo\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"11.5\" font-weight=\"600\" fill=\"#d62728\" \
             text-anchor=\"end\">budget {}</text></g>\n",
            fmt_bytes(b),
            exact_bytes(b),
            LEFT + PW,
            LEFT + PW - 2.0,
            yy - 5.0,
            fmt_bytes(b)
        );
    }

    w!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom:.1}\"/>\n"
    );
    w!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\"/>\n",
        LEFT + PW
    );
    w!(
        h,
        "<line class=\"cursor\" x1=\"0\" y1=\"{top}\" x2=\"0\" y2=\"{bottom:.1}\" style=\"display:none\"/>\n"
    );
    h.push_str("</svg>\n");
}

/// At most about two points per pixel column: the minimum and the maximum of each column,
/// in time order, so peaks survive and a long run does not make a huge path.
fn decimate(samples: &[(f64, u64)], ax: &Axis) -> Vec<(f64, u64)> {
    let cols = PW as usize;
    if samples.len() <= cols * 2 {
        return samples.to_vec();
    }
    let mut out = Vec::with_capacity(cols * 2 + 2);
    let mut i = 0;
    while i < samples.len() {
        let col = ((ax.x(samples[i].0) - LEFT).floor()) as i64;
        let mut lo = samples[i];
        let mut hi = samples[i];
        let mut j = i + 1;
        while j < samples.len() && ((ax.x(samples[j].0) - LEFT).floor()) as i64 == col {
            if samples[j].1 < lo.1 {
                lo = samples[j];
            }
            if samples[j].1 > hi.1 {
                hi = samples[j];
            }
            j += 1;
        }
        if lo.0 <= hi.0 {
            out.push(lo);
            out.push(hi);
        } else {
            out.push(hi);
            out.push(lo);
        }
        i = j;
    }
    out
}

fn details_table(h: &mut String, t: &Timeline) {
    if t.phases.is_empty() && t.images.is_empty() {
        return;
    }
    h.push_str("<section class=\"card\" id=\"details\">\n<h2>Figures</h2>\n<table>\n");
    h.push_str(
        "<tr><th>kind</th><th>name</th><th>state</th><th class=\"num\">start</th>\
         <th class=\"num\">end</th><th class=\"num\">took</th><th>detail</th></tr>\n",
    );
    for (kind, list) in [("phase", &t.phases), ("image", &t.images)] {
        for s in list.iter() {
            let start = fin(s.start_s);
            let end = fin(s.end_s).max(start);
            let st = state_name(s.state);
            w!(
                h,
                "<tr><td>{kind}</td><td class=\"name\">{}</td><td class=\"st {st}\">{st}</td>\
                 <td class=\"num\">{start:.3} s</td><td class=\"num\">{end:.3} s</td>\
                 <td class=\"num\">{}</td><td class=\"detail\">{}</td></tr>\n",
                esc(&s.name),
                esc(&fmt_dur(end - start)),
                esc(&s.detail)
            );
        }
    }
    h.push_str("</table>\n</section>\n");
}

// ---------------------------------------------------------------------------------------
// The terminal summary.

/// A plain-text summary for a terminal: outcome, total, each phase with its duration, each
/// image with its state and duration, and the peak memory (and the budget) when there are
/// samples.
pub fn text_summary(t: &Timeline) -> String {
    let mut s = String::new();
    w!(s, "{}\n", t.title);
    w!(s, "outcome: {}\n", t.outcome);
    w!(s, "total:   {}\n", fmt_dur(t.total_s));
    for (heading, list) in [("phases", &t.phases), ("images", &t.images)] {
        if list.is_empty() {
            continue;
        }
        w!(s, "{heading}:\n");
        let width = list
            .iter()
            .map(|x| x.name.chars().count())
            .max()
            .unwrap_or(0);
        for x in list.iter() {
            let start = fin(x.start_s);
            let end = fin(x.end_s).max(start);
            let pad = width - x.name.chars().count();
            w!(
                s,
                "  {}{}  {:<6}  {:>7}  {:>7.1} s → {:>7.1} s",
                x.name,
                " ".repeat(pad),
                state_name(x.state),
                fmt_dur(end - start),
                start,
                end
            );
            if !x.detail.is_empty() {
                w!(s, "  {}", x.detail.lines().next().unwrap_or(""));
            }
            s.push('\n');
        }
    }
    let samples = sorted_samples(t);
    if let Some((pt, pb)) = peak(&samples) {
        w!(s, "peak memory: {} at {}", fmt_bytes(pb), fmt_dur(pt));
        if let Some(b) = t.budget_bytes {
            w!(s, " (budget {})", fmt_bytes(b));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn span(name: &str, start_s: f64, end_s: f64, state: SpanState) -> Span {
        Span {
            name: name.to_string(),
            start_s,
            end_s,
            state,
            detail: String::new(),
        }
    }

    fn sample() -> Timeline {
        Timeline {
            title: "cargo xtask e2e — run 20261130-101500-4242".into(),
            outcome: "passed".into(),
            total_s: 120.0,
            phases: vec![
                span("preflight", 0.0, 1.5, SpanState::Ok),
                span("prebuild images", 1.5, 60.0, SpanState::Ok),
                span("run suite", 70.0, 118.0, SpanState::Ok),
            ],
            images: vec![
                span("gateway", 2.0, 40.0, SpanState::Built),
                span("data-storage", 2.0, 2.0, SpanState::Cached),
                span("postgres", 60.0, 65.0, SpanState::Loaded),
            ],
            memory: (0..50u32)
                .map(|i| Sample {
                    t_s: f64::from(i),
                    used_bytes: GIB + u64::from(i) * 10_000_000,
                })
                .collect(),
            budget_bytes: Some(6 * GIB),
            caps: vec![Cap {
                image: "gateway".into(),
                start_s: 2.0,
                end_s: 40.0,
                cap_bytes: 2 * GIB,
            }],
        }
    }

    /// Every `data-NAME="…"` value in the page, unescaped only for the quotes check.
    fn attr_values(html: &str, attr: &str) -> Vec<String> {
        let needle = format!("{attr}=\"");
        html.match_indices(&needle)
            .map(|(i, _)| {
                let rest = &html[i + needle.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .collect()
    }

    #[test]
    fn every_phase_and_image_is_a_bar_with_its_data_attributes() {
        let t = sample();
        let html = render_html(&t);
        let phases = attr_values(&html, "data-phase");
        assert_eq!(
            phases,
            vec!["preflight", "prebuild images", "run suite"],
            "one bar per phase, in order"
        );
        let images = attr_values(&html, "data-image");
        assert_eq!(images, vec!["gateway", "data-storage", "postgres"]);
        for (name, state) in [
            ("gateway", "built"),
            ("data-storage", "cached"),
            ("postgres", "loaded"),
        ] {
            assert!(
                html.contains(&format!("data-image=\"{name}\" data-state=\"{state}\"")),
                "{name} should be marked {state}"
            );
        }
        // Each bar has a tooltip with exact figures.
        assert!(html.contains("start 2.000 s, end 40.000 s, took 38.000 s"));
        assert_eq!(html.matches("<g class=\"bar ").count(), 6);
    }

    #[test]
    fn cached_images_are_hatched_and_say_cached_failed_ones_are_red() {
        let mut t = sample();
        t.images.push(span("redis", 3.0, 9.0, SpanState::Failed));
        let html = render_html(&t);
        let cached = bar_markup(&html, "data-image=\"data-storage\"");
        assert!(cached.contains("fill=\"url(#hatch)\""), "{cached}");
        assert!(cached.contains(">cached</text>"), "{cached}");
        // A zero-length span is still drawn with some width.
        assert!(
            cached.contains(&format!("width=\"{MIN_CACHED_W:.2}\"")),
            "{cached}"
        );
        let failed = bar_markup(&html, "data-image=\"redis\"");
        assert!(failed.contains("fill=\"#d62728\""), "{failed}");
        assert!(failed.contains("FAILED"), "{failed}");
        let built = bar_markup(&html, "data-image=\"gateway\"");
        assert!(!built.contains("url(#hatch)") && !built.contains("cached"));
    }

    fn bar_markup<'a>(html: &'a str, attr: &str) -> &'a str {
        let i = html.find(attr).unwrap_or_else(|| panic!("no {attr}"));
        let end = html[i..].find("</g>").unwrap();
        &html[i..i + end]
    }

    #[test]
    fn all_text_is_escaped() {
        let mut t = sample();
        let evil = "<script>alert(\"x\")</script> & 'q'";
        t.title = evil.into();
        t.outcome = format!("FAILED: {evil}");
        t.phases[0].name = evil.into();
        t.phases[0].detail = evil.into();
        t.images[0].name = evil.into();
        t.caps[0].image = evil.into();
        let html = render_html(&t);
        assert!(!html.contains("<script>alert"), "raw markup leaked");
        assert!(!html.contains("alert(\"x\")"), "raw quotes leaked");
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;";
        assert!(html.contains(&format!("data-phase=\"{escaped}\"")));
        assert!(html.contains(&format!("data-image=\"{escaped}\"")));
        assert!(html.contains(&format!("<h1>{escaped}</h1>")));
        assert!(html.contains(&format!("<title>{escaped}</title>")));
        // The only <script> elements are the page's own two.
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
    }

    #[test]
    fn budget_line_only_when_given() {
        let mut t = sample();
        let html = render_html(&t);
        assert!(html.contains("data-budget=\"6442450944\""));
        assert!(html.contains("budget 6.0 GiB"));
        assert!(html.contains("stroke-dasharray=\"7 5\""));
        t.budget_bytes = None;
        let html = render_html(&t);
        assert!(!html.contains("data-budget"));
        assert!(!html.contains("budget 6.0 GiB"));
        assert!(!html.contains("stroke-dasharray=\"7 5\""));
    }

    #[test]
    fn caps_are_drawn_and_named() {
        let html = render_html(&sample());
        assert!(html.contains("data-cap=\"gateway\""));
        assert!(html.contains("gateway cap 2.0 GiB"));
    }

    #[test]
    fn no_memory_no_chart() {
        let mut t = sample();
        t.memory.clear();
        let html = render_html(&t);
        assert!(!html.contains("id=\"memchart\""));
        assert!(html.contains("No memory samples"));
        assert!(html.contains("id=\"gantt\""));
    }

    #[test]
    fn self_contained_no_urls_at_all() {
        let mut t = sample();
        t.images[0].detail = "see the log".into();
        let html = render_html(&t);
        // Not even the SVG namespace: the HTML parser gives inline <svg> its namespace.
        assert!(!html.contains("http://"), "http:// in the page");
        assert!(!html.contains("https://"), "https:// in the page");
        assert!(!html.contains("xmlns"));
        assert!(!html.contains("<link"), "no stylesheets or fonts to fetch");
        assert!(!html.contains(" src="), "no scripts or images to fetch");
        assert!(!html.contains("@import") && !html.contains("url(http"));
    }

    #[test]
    fn sets_rendered_ok_from_its_script() {
        let html = render_html(&sample());
        assert!(html.contains("document.body.dataset.rendered = \"ok\""));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn empty_timeline_renders() {
        let t = Timeline {
            title: String::new(),
            outcome: String::new(),
            total_s: 0.0,
            phases: vec![],
            images: vec![],
            memory: vec![],
            budget_bytes: None,
            caps: vec![],
        };
        let html = render_html(&t);
        assert!(html.contains("no phases or images were recorded"));
        assert!(html.contains("id=\"gantt\""));
        assert!(!html.contains("data-phase=") && !html.contains("data-image="));
        assert!(!html.contains("NaN") && !html.contains("inf"));
        let text = text_summary(&t);
        assert!(text.contains("total:   0.0 s"));
        assert!(!text.contains("peak"));
    }

    #[test]
    fn degenerate_numbers_render_finite_geometry() {
        let t = Timeline {
            title: "edge".into(),
            outcome: "FAILED: boom".into(),
            total_s: f64::NAN,
            phases: vec![
                span("zero", 0.0, 0.0, SpanState::Ok),
                span("backwards", 5.0, 1.0, SpanState::Failed),
                span("infinite", 0.0, f64::INFINITY, SpanState::Ok),
                span("huge", 0.0, 1e15, SpanState::Ok),
            ],
            images: vec![span("late", 1e15, 1e15, SpanState::Cached)],
            memory: vec![Sample {
                t_s: 3.0,
                used_bytes: u64::MAX,
            }],
            budget_bytes: Some(u64::MAX),
            caps: vec![Cap {
                image: "late".into(),
                start_s: -5.0,
                end_s: f64::NAN,
                cap_bytes: u64::MAX,
            }],
        };
        let html = render_html(&t);
        assert!(!html.contains("NaN"), "NaN in the page");
        assert!(!html.contains("inf\""), "infinite coordinate in the page");
        for name in ["zero", "backwards", "infinite", "huge"] {
            assert!(html.contains(&format!("data-phase=\"{name}\"")));
        }
        // A single sample is visible as a dot.
        assert!(html.contains("<circle"));
        assert!(html.contains("16.0 EiB"));
        // The tick loop stays bounded on a huge axis.
        assert!(html.matches("class=\"tick\"").count() < 100);
        let text = text_summary(&t);
        assert!(text.contains("peak memory: 16.0 EiB"));
    }

    #[test]
    fn many_samples_are_decimated_but_keep_the_peak() {
        let mut t = sample();
        t.memory = (0..100_000)
            .map(|i| Sample {
                t_s: f64::from(i) * 0.001,
                used_bytes: if i == 54_321 { 9 * GIB } else { GIB },
            })
            .collect();
        let html = render_html(&t);
        let path = html
            .split("<path class=\"mem\" d=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        assert!(path.matches('L').count() < 2 * PW as usize + 2);
        assert!(html.contains("peak 9.0 GiB"));
    }

    #[test]
    fn text_summary_lists_everything() {
        let t = sample();
        let s = text_summary(&t);
        assert!(s.contains("outcome: passed"));
        assert!(s.contains("total:   2m 00s"));
        assert!(s.contains("prebuild images"));
        assert!(s.contains("58.5 s"));
        assert!(s.contains("data-storage  cached"));
        assert!(s.contains("gateway       built"));
        assert!(s.contains("postgres      loaded"));
        assert!(s.contains("peak memory: 1.5 GiB at 49.0 s (budget 6.0 GiB)"));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(6 * GIB), "6.0 GiB");
        assert_eq!(fmt_dur(0.04), "0.0 s");
        assert_eq!(fmt_dur(59.94), "59.9 s");
        assert_eq!(fmt_dur(125.0), "2m 05s");
        assert_eq!(fmt_dur(3725.0), "1h 02m");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("ééé", 3), "ééé");
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(0.0, 10.0), 1.0);
        assert_eq!(exact_bytes(1234567), "1\u{202f}234\u{202f}567 bytes");
    }

    #[test]
    fn ticks_are_few_distinct_and_readable_at_any_scale() {
        for t1 in [1e-3, 0.5, 1.0, 37.0, 120.0, 600.0, 5000.0, 1e7, 1e12, 1e300] {
            let ax = Axis { t0: 0.0, t1 };
            let ticks = ax.ticks();
            assert!(ticks.len() >= 2 && ticks.len() <= 12, "{t1}: {ticks:?}");
            assert_eq!(ticks[0].0, 0.0);
            let mut labels: Vec<&String> = ticks.iter().map(|(_, l)| l).collect();
            labels.dedup();
            assert_eq!(labels.len(), ticks.len(), "{t1}: {ticks:?}");
            assert!(ticks
                .iter()
                .all(|(v, l)| *v <= t1 * 1.000001 && l.ends_with(" s")));
        }
        let minutes: Vec<f64> = Axis { t0: 0.0, t1: 600.0 }
            .ticks()
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(minutes[1], 60.0, "whole minutes on a ten-minute run");
    }

    #[test]
    fn round_trips_through_json() {
        let t = sample();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"state\":\"cached\""));
        let back: Timeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back.images[1].state, SpanState::Cached);
        assert_eq!(render_html(&back), render_html(&t));
    }
}
