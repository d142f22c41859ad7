//! A run's timeline (`timeline.json` beside each report), the page `report.html` made from it,
//! and a plain-text summary. The page is the static `xtask/templates/report.html` with the
//! timeline as JSON in a data island that its script draws (the contract: the template's head
//! comment and the tests below).

use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// e.g. "cargo xtask e2e: run 20261130-101500-4242"
    pub title: String,
    /// e.g. "passed" / "FAILED: <error>"
    pub outcome: String,
    pub total_s: f64,
    /// The run's phases (they may overlap).
    pub phases: Vec<Span>,
    /// One per image: built, cached (zero-length or marked), loaded, failed.
    pub images: Vec<Span>,
    /// Machine memory in use over time (may be empty: no builds ran).
    pub memory: Vec<Sample>,
    /// The builds' memory budget, drawn as a horizontal line.
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

/// What the builds did over time: each build's span and the machine's memory in use.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub builds: Vec<BuildSpan>,
    pub memory: Vec<(Instant, u64)>,
}

#[derive(Debug, Clone)]
pub struct BuildSpan {
    pub image: String,
    pub started: Instant,
    pub took: Duration,
    pub cap: u64,
    pub ok: bool,
}

/// The page; `PLACEHOLDER` stands once in it, as the data island's content.
const TEMPLATE: &str = include_str!("../templates/report.html");
const PLACEHOLDER: &str = "__TIMELINE_JSON__";

pub fn render_html(timeline: &Timeline) -> String {
    // In a <script> only '<' can harm (`</script>` ends it, `<!--` then `<script` moves its
    // end); '<' appears in JSON only in strings, which read `\u003c` as '<' again. Non-finite
    // numbers become null, which the page draws as 0.
    let json = serde_json::to_string(timeline).unwrap_or_else(|_| "null".into());
    let json = json.replace('<', "\\u003c");
    TEMPLATE.replacen(PLACEHOLDER, &json, 1)
}

/// For a terminal: outcome, total, each phase and image (state, times), and peak memory and
/// budget when sampled.
pub fn text_summary(timeline: &Timeline) -> String {
    let or_zero = |secs: f64| if secs.is_finite() { secs } else { 0.0 };
    let total = or_zero(timeline.total_s).max(0.0);
    let human = HumanDuration(Duration::try_from_secs_f64(total).unwrap_or_default());
    let title = &timeline.title;
    let outcome = &timeline.outcome;
    let mut out = format!("{title}\noutcome: {outcome}\ntotal:   {total:.1} s ({human})\n");
    for (heading, list) in [("phases", &timeline.phases), ("images", &timeline.images)] {
        if !list.is_empty() {
            out += &format!("{heading}:\n");
        }
        // Rust pads by characters, as a terminal shows them (mostly).
        let width = list.iter().map(|span| span.name.chars().count()).max().unwrap_or(0);
        for span in list {
            let start = or_zero(span.start_s);
            let state = format!("{:?}", span.state).to_lowercase();
            let end = or_zero(span.end_s).max(start);
            let name = &span.name;
            let took = end - start;
            let detail = span.detail.lines().next().filter(|d| !d.is_empty());
            let detail = detail.map_or(String::new(), |d| format!("  {d}"));
            out += &format!(
                "  {name:<width$}  {state:<6}  {took:>6.1} s  {start:>7.1} s → {end:>7.1} s{detail}\n"
            );
        }
    }
    // The highest sample; the last of equals, as on the page.
    let finite = timeline.memory.iter().filter(|m| m.t_s.is_finite());
    let peak = finite.max_by(|a, b| a.used_bytes.cmp(&b.used_bytes).then(a.t_s.total_cmp(&b.t_s)));
    if let Some(peak) = peak {
        let budget = timeline.budget_bytes;
        let budget = budget.map_or(String::new(), |b| format!(" (budget {})", HumanBytes(b)));
        let used = HumanBytes(peak.used_bytes);
        out += &format!("peak memory: {used} at {:.1} s{budget}\n", peak.t_s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;
    const ISLAND: &str = "<script type=\"application/json\" id=\"timeline\">";

    fn span(name: &str, start_s: f64, end_s: f64, state: SpanState) -> Span {
        Span { name: name.to_string(), start_s, end_s, state, detail: String::new() }
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
                .map(|i| Sample { t_s: f64::from(i), used_bytes: GIB + u64::from(i) * 10_000_000 })
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

    /// The data island's text, as an HTML parser finds it: up to the first `</script`.
    fn island(html: &str) -> &str {
        let start = html.find(ISLAND).expect("no data island") + ISLAND.len();
        let len = html[start..].to_ascii_lowercase().find("</script").unwrap();
        &html[start..start + len]
    }

    /// What the page's script reads from the island.
    fn data(html: &str) -> serde_json::Value {
        serde_json::from_str(island(html)).expect("the island is not JSON")
    }

    #[test]
    fn the_page_is_the_template_with_the_timeline_in_its_data_island() {
        let timeline = sample();
        let html = render_html(&timeline);
        let (before, after) = TEMPLATE.split_once(PLACEHOLDER).unwrap();
        assert!(html.starts_with(before) && html.ends_with(after));
        assert_eq!(data(&html), serde_json::to_value(&timeline).unwrap());
        assert!(!html.contains(PLACEHOLDER));
    }

    #[test]
    fn the_template_keeps_the_page_contract() {
        assert_eq!(TEMPLATE.matches(PLACEHOLDER).count(), 1);
        assert!(TEMPLATE.contains(&format!("{ISLAND}{PLACEHOLDER}</script>")));
        assert!(TEMPLATE.starts_with("<!DOCTYPE html>"));
        assert!(TEMPLATE.trim_end().ends_with("</html>"));
        // The island, then the script that reads it, and nothing else that could run.
        assert_eq!(TEMPLATE.matches("<script").count(), 2);
        assert_eq!(TEMPLATE.to_ascii_lowercase().matches("</script").count(), 2);
        let script = &TEMPLATE[TEMPLATE.rfind("<script>").unwrap()..];
        assert!(!script.contains("<!--"));
        // What test/e2e/check-report.sh and people look for.
        assert!(script.contains("document.body.dataset.rendered = \"ok\""));
        assert!(script.contains("\"data-phase\"") && script.contains("\"data-image\""));
        assert!(script.contains("getElementById(\"timeline\")"));
        assert!(script.contains("no phases or images were recorded"));
        assert!(TEMPLATE.contains("No memory samples"));
    }

    #[test]
    fn no_text_can_break_out_of_the_data_island() {
        let mut timeline = sample();
        let evil = "</script><script>alert(\"x\")</script><!-- <script> </SCRIPT > & 'q'";
        timeline.title = evil.into();
        timeline.outcome = format!("FAILED: {evil}");
        timeline.phases[0].name = evil.into();
        timeline.phases[1].name = "<!--".into();
        timeline.phases[2].name = "</script>".into();
        timeline.images[0].detail = evil.into();
        timeline.images[1].name = evil.into();
        timeline.caps[0].image = evil.into();
        let html = render_html(&timeline);
        assert!(!island(&html).contains('<'), "{}", island(&html));
        // All of the island is read, and every name comes back as it was.
        let back: Timeline = serde_json::from_value(data(&html)).unwrap();
        assert_eq!(back.title, evil);
        assert_eq!(back.phases[0].name, evil);
        assert_eq!(back.phases[1].name, "<!--");
        assert_eq!(back.phases[2].name, "</script>");
        assert_eq!(back.images[1].name, evil);
        assert_eq!(back.caps[0].image, evil);
        // No element was added or ended early: the page is still the template around it.
        let (before, after) = TEMPLATE.split_once(PLACEHOLDER).unwrap();
        assert!(html[before.len()..].starts_with(island(&html)));
        assert_eq!(&html[before.len() + island(&html).len()..], after);
        assert!(!html.contains("<script>alert") && !html.contains("<!-- <script>"));
    }

    #[test]
    fn self_contained_no_urls_at_all() {
        let mut timeline = sample();
        timeline.images[0].detail = "see the log".into();
        let html = render_html(&timeline);
        // Not even the SVG namespace: the script takes it from the page's own <svg>.
        assert!(!html.contains("http://"), "http:// in the page");
        assert!(!html.contains("https://"), "https:// in the page");
        assert!(!html.contains("xmlns"));
        assert!(!html.contains("<link"), "no stylesheets or fonts to fetch");
        assert!(!html.contains(" src="), "no scripts or images to fetch");
        assert!(!html.contains("@import") && !html.contains("url(http"));
        assert!(!html.contains("fetch(") && !html.contains("XMLHttpRequest"));
    }

    #[test]
    fn empty_timeline_renders() {
        let timeline = Timeline {
            title: String::new(),
            outcome: String::new(),
            total_s: 0.0,
            phases: vec![],
            images: vec![],
            memory: vec![],
            budget_bytes: None,
            caps: vec![],
        };
        let html = render_html(&timeline);
        assert_eq!(data(&html)["phases"], serde_json::json!([]));
        let text = text_summary(&timeline);
        assert!(text.contains("total:   0.0 s (0 seconds)"), "{text}");
        assert!(!text.contains("peak") && !text.contains("phases:"), "{text}");
    }

    #[test]
    fn degenerate_numbers_become_null_or_are_summarised_as_zero() {
        let timeline = Timeline {
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
            memory: vec![
                Sample { t_s: f64::NAN, used_bytes: u64::MAX },
                Sample { t_s: 3.0, used_bytes: u64::MAX - 1 },
            ],
            budget_bytes: Some(u64::MAX),
            caps: vec![Cap {
                image: "late".into(),
                start_s: -5.0,
                end_s: f64::NAN,
                cap_bytes: u64::MAX,
            }],
        };
        let html = render_html(&timeline);
        let island_data = data(&html);
        assert!(island_data["total_s"].is_null() && island_data["phases"][2]["end_s"].is_null());
        assert_eq!(island_data["phases"][3]["end_s"], 1e15);
        assert!(!island(&html).contains("NaN") && !island(&html).contains("Infinity"));
        let text = text_summary(&timeline);
        assert!(text.contains("total:   0.0 s (0 seconds)"), "{text}");
        assert!(text.contains("backwards  failed     0.0 s      5.0 s →     5.0 s"), "{text}");
        assert!(text.contains("infinite   ok         0.0 s"), "{text}");
        // The sample without a time is left out.
        assert!(text.contains("peak memory: 16.00 EiB at 3.0 s"), "{text}");
        assert!(!text.contains("NaN") && !text.contains("inf s"), "{text}");
    }

    #[test]
    fn text_summary_lists_everything() {
        let mut timeline = sample();
        timeline.images[0].detail = "38.0s (cap 2 GiB)\nsecond line".into();
        let summary = text_summary(&timeline);
        assert!(summary.starts_with("cargo xtask e2e — run 20261130-101500-4242\n"), "{summary}");
        assert!(summary.contains("\noutcome: passed\n"), "{summary}");
        assert!(summary.contains("\ntotal:   120.0 s (2 minutes)\n"), "{summary}");
        assert!(summary.contains("\nphases:\n"), "{summary}");
        assert!(
            summary.contains("  prebuild images  ok        58.5 s      1.5 s →    60.0 s\n"),
            "{summary}"
        );
        assert!(summary.contains("\nimages:\n"), "{summary}");
        assert!(summary.contains("  data-storage  cached     0.0 s"), "{summary}");
        assert!(
            summary.contains(
                "  gateway       built     38.0 s      2.0 s →    40.0 s  38.0s (cap 2 GiB)\n"
            ),
            "{summary}"
        );
        assert!(!summary.contains("second line"), "{summary}");
        assert!(summary.contains("  postgres      loaded     5.0 s"), "{summary}");
        assert!(
            summary.contains("peak memory: 1.46 GiB at 49.0 s (budget 6.00 GiB)\n"),
            "{summary}"
        );
        timeline.budget_bytes = None;
        assert!(text_summary(&timeline).contains("peak memory: 1.46 GiB at 49.0 s\n"));
        // Names are padded by characters, not bytes.
        timeline.images[2].name = "ρедис".into();
        let summary = text_summary(&timeline);
        assert!(summary.contains(&format!("  ρедис{}loaded", " ".repeat(9))), "{summary}");
    }

    #[test]
    fn round_trips_through_json() {
        let timeline = sample();
        let json = serde_json::to_string(&timeline).unwrap();
        assert!(json.contains("\"state\":\"cached\""));
        let back: Timeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back.images[1].state, SpanState::Cached);
        assert_eq!(render_html(&back), render_html(&timeline));
        assert_eq!(text_summary(&back), text_summary(&timeline));
    }

    /// A timeline.json as earlier runs wrote it still reads.
    #[test]
    fn reads_timeline_json_as_written() {
        let json = r#"{"title":"t","outcome":"passed","total_s":2.5,
            "phases":[{"name":"deploy","start_s":0.1,"end_s":2.0,"state":"ok","detail":"1.9s"}],
            "images":[{"name":"redis","start_s":0.0,"end_s":0.0,"state":"loaded","detail":""},
                      {"name":"pg","start_s":0.0,"end_s":1.0,"state":"failed","detail":"x"}],
            "memory":[{"t_s":1.0,"used_bytes":1024}],"budget_bytes":null,
            "caps":[{"image":"pg","start_s":0.0,"end_s":1.0,"cap_bytes":512}]}"#;
        let timeline: Timeline = serde_json::from_str(json).unwrap();
        assert_eq!(timeline.phases[0].name, "deploy");
        assert_eq!(timeline.images[0].state, SpanState::Loaded);
        assert_eq!(timeline.images[1].state, SpanState::Failed);
        assert_eq!(timeline.memory[0].used_bytes, 1024);
        assert_eq!(timeline.budget_bytes, None);
        assert_eq!(timeline.caps[0].cap_bytes, 512);
    }

    /// Renders a timeline.json into report.html beside it, to look at the page after changing
    /// the template: `TIMELINE_JSON=path/timeline.json cargo test -p xtask render_file -- --ignored`.
    #[test]
    #[ignore = "needs TIMELINE_JSON"]
    fn render_file() {
        let path = std::path::PathBuf::from(std::env::var("TIMELINE_JSON").unwrap());
        let timeline: Timeline = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::write(path.with_file_name("report.html"), render_html(&timeline)).unwrap();
    }
}
