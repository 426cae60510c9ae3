//! The cross-proxy benchmark (benches/compare/run.sh) stays runnable: its
//! generated Apache, nginx and portcullis configs pass their own checkers,
//! and its `--quick` mode brings every proxy up and fills every cell of the
//! table. The full benchmark (minutes of load) is not part of the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// The report's own unit tests run here: the load tool has no test harness.
#[allow(dead_code)]
#[path = "../benches/load/report.rs"]
mod report;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The compare script with the test build's portcullis, bounded in time.
fn script(args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.current_dir(root())
        .args([
            "-s",
            "INT",
            "-k",
            "10",
            "240",
            "bash",
            "benches/compare/run.sh",
        ])
        .args(args)
        .env("BENCH_PORTCULLIS", env!("CARGO_BIN_EXE_portcullis"));
    c
}

#[test]
fn the_generated_configs_pass_apache2_t_nginx_t_and_portcullis_check() {
    let out = script(&["--check-configs"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("every generated config is valid"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("Syntax OK"),
        "apache2 -t: {}",
        describe(&out)
    );
    assert!(
        stderr.contains("test is successful"),
        "nginx -t: {}",
        describe(&out)
    );
    assert!(
        stdout.contains("configuration is valid"),
        "portcullis check: {}",
        describe(&out)
    );
}

/// The load tool as `cargo test` builds it (test profile, same features as
/// this test's build, so nothing is rebuilt).
fn load_tool() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "test",
            "--bench",
            "load",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .filter_map(|l| l.split("\"executable\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .find(|p| p.contains("/load-"))
        .expect("cargo named no load executable");
    PathBuf::from(path)
}

/// The cells of the table row that starts with `| label |`.
fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"));
    line.trim_matches('|')
        .split('|')
        .skip(1)
        .map(str::trim)
        .collect()
}

fn is_number(cell: &str) -> bool {
    cell.parse::<f64>().is_ok_and(|v| v.is_finite())
}

#[test]
fn the_quick_mode_measures_every_row_of_every_proxy() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = script(&["--quick", "--out", out_dir.path().to_str().unwrap()])
        .env("BENCH_LOAD", load_tool())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let table = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();

    // Columns: portcullis, bare Pingora, nginx, Apache.
    let authenticated = |what: &str| {
        [
            "cookie session",
            "cached bearer (RS256)",
            "first-seen bearer, RS256",
            "first-seen bearer, ES256",
        ]
        .map(|row| format!("{what}, {row}"))
    };
    for what in ["HTTP req/s", "WebSocket handshakes/s"] {
        let cells = row(&table, &format!("{what}, no auth"));
        assert!(
            cells.iter().all(|c| is_number(c)),
            "{what}, no auth: {cells:?}\n{table}"
        );
        for label in authenticated(what) {
            let cells = row(&table, &label);
            assert!(
                is_number(cells[0]) && is_number(cells[3]),
                "{label}: {cells:?}\n{table}"
            );
            assert_eq!(cells[1..3], ["n/a", "n/a"], "{label}\n{table}");
        }
    }
    for label in ["idle WebSockets held", "RSS per idle WebSocket, KiB"] {
        let cells = row(&table, label);
        assert!(
            cells.iter().all(|c| is_number(c)),
            "{label}: {cells:?}\n{table}"
        );
    }
    // Every proxy held every socket it was asked for (100 in --quick).
    assert_eq!(row(&table, "idle WebSockets held"), ["100"; 4], "{table}");
    let logout = row(&table, "logout → live WebSocket closed, ms");
    assert!(
        is_number(logout[0]),
        "portcullis closes the socket: {logout:?}\n{table}"
    );
    assert!(
        is_number(logout[3]) || logout[3].starts_with("never within"),
        "{logout:?}\n{table}"
    );
    // Each target's ratio was computed from figures of the run.
    let targets: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("(ratio within one run)") || l.contains(" / "))
        .collect();
    assert!(targets.len() >= 12, "{table}");
    assert!(!table.contains("missing"), "{table}");

    let chart = std::fs::read(out_dir.path().join("chart.png")).unwrap();
    assert!(
        chart.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chart.png is not a PNG"
    );
    assert!(
        chart.len() > 10_000,
        "chart.png is suspiciously small: {} bytes",
        chart.len()
    );
}

// ---------------------------------------------------------------- the report

mod report_tests {
    use super::report::*;
    use std::collections::BTreeMap;

    fn figures(raw: &str) -> Figures {
        parse_raw(raw).unwrap()
    }

    #[test]
    fn a_cell_is_the_median_with_spread_errors_and_its_special_values() {
        let f = figures(
            "1\tportcullis\thttp:none\t100\t0\n2\tportcullis\thttp:none\t300\t2\n3\tportcullis\thttp:none\t200\t0\n\
             1\tnginx\thttp:cookie\tn/a\t-\n1\tapache\tlogout:close_ms\tnever:10\t0\n1\tapache\thttp:none\t\t0\n",
        );
        assert_eq!(
            cell(&f, "portcullis", "http:none", 0),
            "200 (±50%) (2 errors)"
        );
        assert_eq!(cell(&f, "nginx", "http:cookie", 0), "n/a");
        assert_eq!(
            cell(&f, "apache", "logout:close_ms", 1),
            "never within 10 s"
        );
        assert_eq!(cell(&f, "apache", "http:none", 0), "missing");
        assert_eq!(cell(&f, "bare-pingora", "http:none", 0), "missing");
    }

    #[test]
    fn a_target_is_a_ratio_within_each_run() {
        let f = figures(
            "1\tportcullis\thttp:fresh-rs256\t400\t0\n2\tportcullis\thttp:fresh-rs256\t300\t0\n\
             1\tapache\thttp:fresh-rs256\t100\t0\n2\tapache\thttp:fresh-rs256\t200\t0\n",
        );
        assert_eq!(ratios(&f, &TARGETS[2]), vec![(1, 4.0), (2, 1.5)]);
        let table = markdown(&f, &BTreeMap::new(), 2);
        assert!(
            table.contains("| 4.00× | 1.50× | in 1 of 2 runs |"),
            "{table}"
        );
    }

    #[test]
    fn a_malformed_raw_line_is_refused_with_its_number() {
        let e = parse_raw("1\tportcullis\thttp:none\t100\t0\nbroken line\n").unwrap_err();
        assert!(e.to_string().contains("raw line 2"), "{e}");
    }
}
