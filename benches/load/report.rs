//! `load compare-report`: turns the raw figures of `benches/compare/run.sh`
//! (one `run proxy metric value errors` line each) into the published
//! Markdown table (`results.md`, with the targets as ratios taken
//! within each run) and a PNG chart (`chart.png`, grouped bars drawn with
//! plotters). Self-contained, so that tests/compare.rs includes it too and
//! tests it there (the load tool's own target has no test harness).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The proxies, in the table's column order: (raw name, heading).
const PROXIES: [(&str, &str); 4] = [
    ("portcullis", "portcullis"),
    ("bare-pingora", "bare Pingora"),
    ("nginx", "nginx"),
    ("apache", "Apache + mod_auth_openidc"),
];

/// The rate rows: (raw suffix, description).
const RATE_ROWS: [(&str, &str); 5] = [
    ("none", "no auth"),
    ("cookie", "cookie session"),
    ("cached", "cached bearer (RS256)"),
    ("fresh-rs256", "first-seen bearer, RS256"),
    ("fresh-es256", "first-seen bearer, ES256"),
];

/// Where the chart's text font comes from (Debian's fonts-dejavu-core):
/// plotters' ab_glyph backend draws only fonts it is handed.
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

#[derive(clap::Args)]
pub(crate) struct ReportRun {
    /// The raw figures: `run<TAB>proxy<TAB>metric<TAB>value<TAB>errors` lines.
    #[arg(long)]
    raw: PathBuf,
    /// `key=value` lines about the run (date, commit, machine, ...).
    #[arg(long)]
    meta: PathBuf,
    /// Where results.md and chart.png go.
    #[arg(long)]
    out: PathBuf,
}

/// One measured figure as the script recorded it.
#[derive(Debug)]
pub(crate) struct Figure {
    run: u32,
    value: String,
    errors: u64,
}

/// Every figure by (proxy, metric), in run order.
pub(crate) type Figures = BTreeMap<(String, String), Vec<Figure>>;

pub(crate) fn parse_raw(text: &str) -> Result<Figures> {
    let mut figures = Figures::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split('\t').collect();
        let [run, proxy, metric, value, errors] = fields[..] else {
            bail!(
                "raw line {}: expected 5 tab-separated fields: {line:?}",
                n + 1
            );
        };
        figures
            .entry((proxy.to_string(), metric.to_string()))
            .or_default()
            .push(Figure {
                run: run
                    .parse()
                    .with_context(|| format!("raw line {}: run {run:?}", n + 1))?,
                value: value.to_string(),
                errors: errors.parse().unwrap_or(0),
            });
    }
    Ok(figures)
}

/// The median of some numbers (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The numbers of a cell, one per run (a value that is not a number, e.g.
/// `n/a` or an empty field from a failed run, is left out).
pub(crate) fn numbers(figures: &Figures, proxy: &str, metric: &str) -> Vec<f64> {
    figures
        .get(&(proxy.to_string(), metric.to_string()))
        .map(|fs| fs.iter().filter_map(|f| f.value.parse().ok()).collect())
        .unwrap_or_default()
}

/// The table cell of a figure: its median over the runs, the runs' spread
/// when there are several, the errors seen; `n/a` where the proxy cannot do
/// that at all; `missing` where a figure should be and is not.
pub(crate) fn cell(figures: &Figures, proxy: &str, metric: &str, decimals: usize) -> String {
    let Some(runs) = figures.get(&(proxy.to_string(), metric.to_string())) else {
        return "missing".into();
    };
    if runs.iter().all(|f| f.value == "n/a") {
        return "n/a".into();
    }
    if let Some(seconds) = runs.iter().find_map(|f| f.value.strip_prefix("never:")) {
        return format!("never within {seconds} s");
    }
    let values = numbers(figures, proxy, metric);
    let Some(mid) = median(&values) else {
        return "missing".into();
    };
    let mut text = format!("{mid:.decimals$}");
    if values.len() > 1 && mid > 0.0 {
        let (lo, hi) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        text.push_str(&format!(" (±{:.0}%)", 50.0 * (hi - lo) / mid));
    }
    if values.len() < runs.len() {
        text.push_str(&format!(" (missing in {} runs)", runs.len() - values.len()));
    }
    let errors: u64 = runs.iter().map(|f| f.errors).sum();
    if errors > 0 {
        text.push_str(&format!(" ({errors} errors)"));
    }
    text
}

/// One of the targets: `a / b >= goal`, run by run.
pub(crate) struct Target {
    what: &'static str,
    a: (&'static str, &'static str),
    b: (&'static str, &'static str),
    goal: f64,
}

pub(crate) const TARGETS: [Target; 12] = [
    Target {
        what: "HTTP, cookie session / no auth (portcullis)",
        a: ("portcullis", "http:cookie"),
        b: ("portcullis", "http:none"),
        goal: 0.9,
    },
    Target {
        what: "HTTP, cached bearer / no auth (portcullis)",
        a: ("portcullis", "http:cached"),
        b: ("portcullis", "http:none"),
        goal: 0.9,
    },
    Target {
        what: "HTTP, first-seen RS256: portcullis / Apache",
        a: ("portcullis", "http:fresh-rs256"),
        b: ("apache", "http:fresh-rs256"),
        goal: 2.0,
    },
    Target {
        what: "HTTP, first-seen ES256: portcullis / Apache",
        a: ("portcullis", "http:fresh-es256"),
        b: ("apache", "http:fresh-es256"),
        goal: 2.0,
    },
    Target {
        what: "handshakes, first-seen RS256: portcullis / Apache",
        a: ("portcullis", "ws:fresh-rs256"),
        b: ("apache", "ws:fresh-rs256"),
        goal: 2.0,
    },
    Target {
        what: "handshakes, first-seen ES256: portcullis / Apache",
        a: ("portcullis", "ws:fresh-es256"),
        b: ("apache", "ws:fresh-es256"),
        goal: 2.0,
    },
    Target {
        what: "handshakes, cookie session / no auth (portcullis)",
        a: ("portcullis", "ws:cookie"),
        b: ("portcullis", "ws:none"),
        goal: 0.9,
    },
    Target {
        what: "handshakes, cached bearer / no auth (portcullis)",
        a: ("portcullis", "ws:cached"),
        b: ("portcullis", "ws:none"),
        goal: 0.9,
    },
    Target {
        what: "handshakes, cookie session: portcullis / Apache",
        a: ("portcullis", "ws:cookie"),
        b: ("apache", "ws:cookie"),
        goal: 1.5,
    },
    Target {
        what: "handshakes, cached bearer: portcullis / Apache",
        a: ("portcullis", "ws:cached"),
        b: ("apache", "ws:cached"),
        goal: 1.5,
    },
    Target {
        what: "HTTP, no auth: portcullis / bare Pingora (for reference)",
        a: ("portcullis", "http:none"),
        b: ("bare-pingora", "http:none"),
        goal: 0.0,
    },
    Target {
        what: "handshakes, no auth: portcullis / bare Pingora (for reference)",
        a: ("portcullis", "ws:none"),
        b: ("bare-pingora", "ws:none"),
        goal: 0.0,
    },
];

/// The ratio `a / b` in each run where both were measured.
pub(crate) fn ratios(figures: &Figures, target: &Target) -> Vec<(u32, f64)> {
    let by_run = |(proxy, metric): (&str, &str)| -> BTreeMap<u32, f64> {
        figures
            .get(&(proxy.to_string(), metric.to_string()))
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| Some((f.run, f.value.parse::<f64>().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (by_run(target.a), by_run(target.b));
    a.iter()
        .filter_map(|(run, &x)| {
            let y = *b.get(run)?;
            (y > 0.0).then_some((*run, x / y))
        })
        .collect()
}

pub(crate) fn markdown(figures: &Figures, meta: &BTreeMap<String, String>, runs: u32) -> String {
    let m = |key: &str| meta.get(key).map_or("?", String::as_str);
    let mut out = String::new();
    out.push_str(&format!(
        "Cross-proxy benchmark, {}: commit {}, {}; {} profile; {}; load average {}.\n\
         Versions: {}.\nSettings: {}.\nCommand: `{}`.\n\n",
        m("date"),
        m("commit"),
        m("machine"),
        m("profile"),
        m("pinning"),
        m("load_average"),
        m("versions"),
        m("settings"),
        m("command"),
    ));
    out.push_str("| measure |");
    for (_, heading) in PROXIES {
        out.push_str(&format!(" {heading} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(PROXIES.len()));
    out.push('\n');
    let mut row = |label: String, metric: &str, decimals: usize| {
        out.push_str(&format!("| {label} |"));
        for (proxy, _) in PROXIES {
            out.push_str(&format!(" {} |", cell(figures, proxy, metric, decimals)));
        }
        out.push('\n');
    };
    for (kind, noun) in [("http", "HTTP req/s"), ("ws", "WebSocket handshakes/s")] {
        for (suffix, description) in RATE_ROWS {
            row(
                format!("{noun}, {description}"),
                &format!("{kind}:{suffix}"),
                0,
            );
        }
    }
    row("idle WebSockets held".into(), "hold:opened", 0);
    row("RSS per idle WebSocket, KiB".into(), "hold:kib_per_conn", 1);
    row(
        "logout → live WebSocket closed, ms".into(),
        "logout:close_ms",
        1,
    );
    out.push_str(
        "\nMedians over the runs, (±x%) half the runs' spread; n/a: the proxy has no such \
         authentication. \"first-seen\": a distinct token on every request, each used once.\n\n",
    );

    out.push_str("| target (ratio within one run) | goal |");
    for run in 1..=runs {
        out.push_str(&format!(" run {run} |"));
    }
    out.push_str(" met |\n|---|---:|");
    out.push_str(&"---:|".repeat(runs as usize));
    out.push_str("---|\n");
    for target in &TARGETS {
        let per_run = ratios(figures, target);
        let goal = if target.goal > 0.0 {
            format!("≥ {:.1}×", target.goal)
        } else {
            "—".into()
        };
        out.push_str(&format!("| {} | {goal} |", target.what));
        for run in 1..=runs {
            match per_run.iter().find(|(r, _)| *r == run) {
                Some((_, ratio)) => out.push_str(&format!(" {ratio:.2}× |")),
                None => out.push_str(" missing |"),
            }
        }
        let met = per_run.iter().filter(|(_, r)| *r >= target.goal).count();
        let verdict = if target.goal <= 0.0 {
            "—".to_string()
        } else if per_run.is_empty() {
            "missing".to_string()
        } else if met == per_run.len() {
            "yes".to_string()
        } else if met == 0 {
            "no".to_string()
        } else {
            format!("in {met} of {} runs", per_run.len())
        };
        out.push_str(&format!(" {verdict} |\n"));
    }
    out
}

/// Hands plotters a font from the system (its ab_glyph backend has none).
fn register_chart_font() -> Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .with_context(|| {
            format!(
                "no font for the chart at {}: install fonts-dejavu-core (scripts/setup.sh)",
                FONT_PATHS.join(" or ")
            )
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path}: not a font plotters can use"))?;
    Ok(())
}

/// Grouped bars: one panel for HTTP req/s and one for handshakes/s, a group
/// per authentication row, a bar per proxy (none where it has no such row).
fn chart(figures: &Figures, meta: &BTreeMap<String, String>, path: &Path) -> Result<()> {
    register_chart_font()?;
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "portcullis vs bare Pingora, nginx, Apache + mod_auth_openidc ({}, {})",
        meta.get("date").map_or("?", String::as_str),
        meta.get("commit").map_or("?", String::as_str)
    );
    let (top, body) = root.split_vertically(50);
    top.titled(&title, ("sans-serif", 26))?;
    let panels = body.split_evenly((2, 1));
    let colors = [
        RGBColor(0xd9, 0x4f, 0x1e),
        RGBColor(0x55, 0x8b, 0xc4),
        RGBColor(0x4c, 0xa8, 0x5e),
        RGBColor(0x8e, 0x6b, 0xb5),
    ];
    for (panel, (kind, label)) in panels
        .iter()
        .zip([("http", "HTTP req/s"), ("ws", "WebSocket handshakes/s")])
    {
        let value = |proxy: &str, suffix: &str| {
            median(&numbers(figures, proxy, &format!("{kind}:{suffix}")))
        };
        let top_value = PROXIES
            .iter()
            .flat_map(|(p, _)| RATE_ROWS.iter().filter_map(|(s, _)| value(p, s)))
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .caption(label, ("sans-serif", 22))
            .build_cartesian_2d(
                -0.5f64..(RATE_ROWS.len() as f64 - 0.5),
                0f64..top_value * 1.15,
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(RATE_ROWS.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    RATE_ROWS
                        .get(i as usize)
                        .map_or(String::new(), |(_, d)| (*d).to_string())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 16))
            .draw()?;
        let width = 0.8 / PROXIES.len() as f64;
        for (p, ((proxy, heading), color)) in PROXIES.iter().zip(colors).enumerate() {
            let bars: Vec<_> = RATE_ROWS
                .iter()
                .enumerate()
                .filter_map(|(i, (suffix, _))| {
                    let v = value(proxy, suffix)?;
                    let x0 = i as f64 - 0.4 + p as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, v)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(*heading)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

pub(crate) fn compare_report(run: ReportRun) -> Result<()> {
    let raw = std::fs::read_to_string(&run.raw)
        .with_context(|| format!("cannot read {}", run.raw.display()))?;
    let figures = parse_raw(&raw)?;
    let meta_text = std::fs::read_to_string(&run.meta)
        .with_context(|| format!("cannot read {}", run.meta.display()))?;
    let meta: BTreeMap<String, String> = meta_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let runs = figures.values().flatten().map(|f| f.run).max().unwrap_or(0);
    std::fs::create_dir_all(&run.out)?;
    std::fs::write(run.out.join("results.md"), markdown(&figures, &meta, runs))?;
    chart(&figures, &meta, &run.out.join("chart.png"))?;
    Ok(())
}
