//! What the monitor shows: a [`Screen`] as styled lines, drawn by ratatui on a terminal, or
//! as plain text for `--once`. One layout for both, so a script reads what a person sees.
//!
//! Laid out for 80 columns: numbers in fixed-width right-aligned columns, the one column of
//! names that can be long (endpoint URLs, sinker states) takes what is left, cut with `…`.

use std::time::Duration;

use ratatui::Frame;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::model::{Counter, Model, Screen, SinkerState};

/// Draws `screen` on the whole frame, scrolled down by `scroll` lines.
pub fn draw(frame: &mut Frame, screen: &Screen, scroll: u16) {
    let area = frame.area();
    let lines = lines(screen, Some(area.width as usize));
    frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), area);
}

/// `screen` as plain text, one line per row, trailing spaces trimmed; no column is cut.
pub fn text(screen: &Screen) -> String {
    let mut out = String::new();
    for line in lines(screen, None) {
        let row: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// One row of fixed columns: `(text, width, align)`, one space between columns; a text
/// longer than its column is cut with `…`.
fn row(cols: &[(String, usize, Align)]) -> String {
    let mut out = String::new();
    for (i, (text, width, align)) in cols.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let text = fit(text, *width);
        let pad = width.saturating_sub(text.chars().count());
        match align {
            Align::Left => {
                out.push_str(&text);
                out.extend(std::iter::repeat_n(' ', pad));
            }
            Align::Right => {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(&text);
            }
        }
    }
    out
}

/// `s` in at most `width` characters.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = s.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// A rate: `-` when unknown (first scrape), else 3 significant figures or so.
fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_string(),
        Some(0.0) => "0".to_string(),
        Some(r) if r < 10.0 => format!("{r:.1}"),
        Some(r) => count(r),
    }
}

/// A count: exact below a million (scripts compare them), then k-less SI: `12.3M`.
fn count(n: f64) -> String {
    if !n.is_finite() {
        return n.to_string();
    }
    if n.abs() < 1e6 {
        return format!("{}", n.round() as i64);
    }
    let (v, unit) = if n.abs() < 1e9 {
        (n / 1e6, "M")
    } else if n.abs() < 1e12 {
        (n / 1e9, "G")
    } else {
        (n / 1e12, "T")
    };
    format!("{v:.1}{unit}")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `64 MiB`.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if !n.is_finite() || n < 1024.0 {
        return format!("{} B", count(n));
    }
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `text` in lines of at most `width` characters, broken at spaces where it can be.
fn wrap(text: &str, width: Option<usize>) -> Vec<String> {
    let Some(width) = width.filter(|w| *w > 0) else {
        return vec![text.to_string()];
    };
    let mut lines = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while rest.len() > width {
        let cut = rest[..=width]
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|i| *i > 0)
            .unwrap_or(width);
        lines.push(rest[..cut].iter().collect());
        let skip = usize::from(rest.get(cut) == Some(&' '));
        rest.drain(..cut + skip);
    }
    lines.push(rest.into_iter().collect());
    lines
}

fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn title(text: &str, width: Option<usize>) -> Line<'static> {
    let width = width.unwrap_or(80);
    let head = format!("── {text} ");
    let rule = width.saturating_sub(head.chars().count());
    Line::from(format!("{head}{}", "─".repeat(rule)))
        .style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD))
}

fn heading(text: String) -> Line<'static> {
    Line::from(text).style(Style::new().add_modifier(Modifier::BOLD))
}

/// Every line of the view; `width` is the terminal's, none for text that is never cut.
pub fn lines(screen: &Screen, width: Option<usize>) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let every = duration(screen.every);
    let mut head = vec![
        Span::styled(
            "dataway monitor ",
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(screen.url.clone()),
    ];
    if width.is_some() {
        head.push(Span::styled(
            format!("  every {every}, q quits"),
            Style::new().fg(Color::DarkGray),
        ));
    }
    out.push(Line::from(head));
    if let Some(why) = &screen.error {
        // Wrapped, not cut: the reason is the point of the line.
        let error = format!("cannot reach {}: {why}", screen.url);
        for part in wrap(&error, width) {
            out.push(Line::from(Span::styled(
                part,
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            )));
        }
        let note = match (&screen.model, screen.failures) {
            (Some(_), n) => format!(
                "retrying every {every} ({n} failed in a row); the values below are the last seen"
            ),
            (None, n) => format!("retrying every {every} ({n} failed in a row)"),
        };
        out.push(Line::from(Span::styled(
            note,
            Style::new().fg(Color::DarkGray),
        )));
    }
    let Some(model) = &screen.model else {
        return out;
    };
    summary(model, &mut out);
    categories(model, width, &mut out);
    endpoints(model, width, &mut out);
    sinkers(model, width, &mut out);
    out
}

fn summary(m: &Model, out: &mut Vec<Line<'static>>) {
    let mut parts = Vec::new();
    if let (Some(used), Some(budget)) = (m.budget_used, m.budget) {
        let share = if budget > 0.0 {
            format!(" ({:.0}%)", used / budget * 100.0)
        } else {
            String::new()
        };
        parts.push(format!(
            "memory budget {} / {}{share}",
            bytes(used),
            bytes(budget)
        ));
    }
    if let (Some(open), Some(max)) = (m.connections, m.connections_max) {
        parts.push(format!("connections {} / {}", count(open), count(max)));
    }
    if let Some(dt) = m.interval {
        parts.push(format!("rates over {}", duration(dt)));
    } else {
        parts.push("rates: after the next scrape".to_string());
    }
    out.push(Line::from(parts.join("   ")));
    let mut stores = vec![format!(
        "fail-cache {} bodies, {}",
        count(m.failcache_records()),
        bytes(m.failcache_bytes())
    )];
    // Only with the WAL on: off, the daemon exports 0.
    if let Some(d) = m.wal_disk_bytes.filter(|&d| d > 0.0) {
        stores.push(format!("WAL {} on disk", bytes(d)));
    }
    if let (Some(w), Some(b)) = (m.wal_spilled_writes, m.wal_spilled_bytes) {
        stores.push(format!("WAL spilled {} writes, {}", count(w), bytes(b)));
    }
    stores.push(format!("WAL held {} points", count(m.wal_held())));
    let busy = m.failcache_records() > 0.0 || m.wal_held() > 0.0;
    let style = if busy {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    out.push(Line::from(stores.join("   ")).style(style));
}

fn categories(m: &Model, width: Option<usize>, out: &mut Vec<Line<'static>>) {
    out.push(title("points per category", width));
    // The name gets what the numbers leave (21 of 80 columns).
    let fixed = [7, 7, 8, 8, 8, 7, 7];
    let longest = m.categories.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let name_w = name_width(width, &fixed, longest.max(8), 8);
    let cols = |name: String, v: [String; 7]| {
        let mut c = vec![(name, name_w, Align::Left)];
        c.extend(v.into_iter().zip(fixed).map(|(t, w)| (t, w, Align::Right)));
        row(&c)
    };
    out.push(heading(cols(
        "category".into(),
        [
            "in/s", "sent/s", "failed/s", "received", "sent", "failed", "dropped",
        ]
        .map(String::from),
    )));
    if m.categories.is_empty() {
        out.push(Line::from("(no points yet)"));
    }
    for c in &m.categories {
        let line = Line::from(cols(
            c.name.clone(),
            [
                rate(c.received.rate),
                rate(c.sent.rate),
                rate(c.failed.rate),
                count(c.received.total),
                count(c.sent.total),
                count(c.failed.total),
                count(c.dropped.total),
            ],
        ));
        out.push(warn_if(line, rising(c.failed) || rising(c.dropped)));
    }
}

fn endpoints(m: &Model, width: Option<usize>, out: &mut Vec<Line<'static>>) {
    out.push(title("endpoints", width));
    let per_endpoint = m.endpoints.iter().any(|e| e.sent.is_some());
    let retries = m.endpoints.iter().any(|e| e.retries.is_some());
    let mut fixed = vec![5, 15, 8];
    let mut head = vec!["queue", "fail-cache", "WAL held"];
    if per_endpoint {
        fixed.extend([7, 7]);
        head.extend(["sent/s", "fail/s"]);
    }
    if retries {
        fixed.push(7);
        head.push("retry/s");
    }
    let longest = m.endpoints.iter().map(|e| e.label.chars().count()).max();
    let name_w = name_width(width, &fixed, longest.unwrap_or(0).max(8), 16);
    let cols = |name: String, v: Vec<String>| {
        let mut c = vec![(name, name_w, Align::Left)];
        c.extend(
            v.into_iter()
                .zip(&fixed)
                .map(|(t, w)| (t, *w, Align::Right)),
        );
        row(&c)
    };
    out.push(heading(cols(
        "endpoint".into(),
        head.into_iter().map(String::from).collect(),
    )));
    if m.endpoints.is_empty() {
        out.push(Line::from("(none reported)"));
    }
    for e in &m.endpoints {
        let mut v = vec![
            count(e.queue),
            format!(
                "{} ({})",
                count(e.failcache_records),
                bytes(e.failcache_bytes)
            ),
            count(e.wal_held),
        ];
        if per_endpoint {
            v.push(rate(e.sent.and_then(|c| c.rate)));
            v.push(rate(e.failed.and_then(|c| c.rate)));
        }
        if retries {
            v.push(rate(e.retries.and_then(|c| c.rate)));
        }
        let trouble = e.failcache_records > 0.0 || e.wal_held > 0.0 || e.failed.is_some_and(rising);
        out.push(warn_if(Line::from(cols(e.label.clone(), v)), trouble));
    }
}

fn sinkers(m: &Model, width: Option<usize>, out: &mut Vec<Line<'static>>) {
    out.push(title("sinkers", width));
    if m.sinkers.is_empty() {
        out.push(Line::from("(no sinkers)"));
        return;
    }
    let name_w = m
        .sinkers
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 16);
    // The state column takes what the name and the numbers leave.
    let fixed = [7, 6, 8, 6];
    let longest_state = m.sinkers.iter().map(|s| s.state.text().len()).max();
    let state_w = name_width(
        width.map(|w| w.saturating_sub(name_w + 1)),
        &fixed,
        longest_state.unwrap_or(0).max(5),
        11,
    );
    let cols = |name: String, state: String, v: [String; 4]| {
        let mut c = vec![(name, name_w, Align::Left), (state, state_w, Align::Left)];
        c.extend(v.into_iter().zip(fixed).map(|(t, w)| (t, w, Align::Right)));
        row(&c)
    };
    out.push(heading(cols(
        "sinker".into(),
        "state".into(),
        ["pts/s", "match", "avg call", "err/s"].map(String::from),
    )));
    for s in &m.sinkers {
        let text = cols(
            s.name.clone(),
            s.state.text(),
            [
                rate(s.offered.rate),
                percent(s.match_ratio),
                s.latency.map_or_else(|| "-".to_string(), duration),
                rate(s.call_errors.rate),
            ],
        );
        let style = match s.state {
            SinkerState::Serving if rising(s.call_errors) => Style::new().fg(Color::Yellow),
            SinkerState::Serving => Style::new(),
            SinkerState::Quarantined | SinkerState::NoPlugin(_) => Style::new().fg(Color::Red),
            SinkerState::ReloadFailed(_) => Style::new().fg(Color::Yellow),
        };
        out.push(Line::from(text).style(style));
    }
}

/// The width of the one flexible column: what `width` leaves after the `fixed` columns and
/// separators, at least `min`; without a width, `natural`.
fn name_width(width: Option<usize>, fixed: &[usize], natural: usize, min: usize) -> usize {
    match width {
        None => natural,
        Some(w) => {
            let taken: usize = fixed.iter().map(|f| f + 1).sum();
            w.saturating_sub(taken).clamp(min.min(natural), natural)
        }
    }
}

fn rising(c: Counter) -> bool {
    c.rate.is_some_and(|r| r > 0.0)
}

fn warn_if(line: Line<'static>, warn: bool) -> Line<'static> {
    if warn {
        line.style(Style::new().fg(Color::Yellow))
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{CategoryRow, EndpointRow, SinkerRow};
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn c(total: f64, rate: Option<f64>) -> Counter {
        Counter { total, rate }
    }

    fn model() -> Model {
        Model {
            interval: Some(Duration::from_secs(1)),
            categories: vec![CategoryRow {
                name: "metric".into(),
                received: c(1234.0, Some(120.0)),
                sent: c(1200.0, Some(118.4)),
                failed: c(34.0, Some(1.5)),
                dropped: c(3.0, Some(0.0)),
            }],
            endpoints: vec![
                EndpointRow {
                    label: "https://openway.example.com/v1/write?token=tkn_***".into(),
                    queue: 4.0,
                    failcache_records: 12.0,
                    failcache_bytes: 1536.0,
                    wal_held: 0.0,
                    sent: None,
                    failed: None,
                    retries: None,
                },
                EndpointRow {
                    label: "file:///var/lib/dataway/out".into(),
                    queue: 0.0,
                    failcache_records: 0.0,
                    failcache_bytes: 0.0,
                    wal_held: 0.0,
                    sent: None,
                    failed: None,
                    retries: None,
                },
            ],
            sinkers: vec![
                SinkerRow {
                    name: "web".into(),
                    state: SinkerState::Serving,
                    offered: c(500.0, Some(50.0)),
                    match_ratio: Some(0.25),
                    latency: Some(Duration::from_micros(2500)),
                    call_errors: c(0.0, Some(0.0)),
                },
                SinkerRow {
                    name: "flaky".into(),
                    state: SinkerState::Quarantined,
                    offered: c(9.0, Some(0.0)),
                    match_ratio: None,
                    latency: None,
                    call_errors: c(40.0, Some(2.0)),
                },
                SinkerRow {
                    name: "new".into(),
                    state: SinkerState::ReloadFailed("init_trap".into()),
                    offered: c(0.0, None),
                    match_ratio: None,
                    latency: None,
                    call_errors: c(0.0, None),
                },
            ],
            budget_used: Some(16.0 * 1024.0 * 1024.0),
            budget: Some(64.0 * 1024.0 * 1024.0),
            connections: Some(3.0),
            connections_max: Some(1024.0),
            wal_spilled_writes: Some(0.0),
            wal_spilled_bytes: Some(0.0),
            wal_disk_bytes: Some(0.0),
        }
    }

    fn screen(model: Option<Model>, error: Option<&str>) -> Screen {
        Screen {
            url: "http://127.0.0.1:9529/metrics".into(),
            model,
            error: error.map(String::from),
            failures: u32::from(error.is_some()) * 3,
            every: Duration::from_secs(1),
        }
    }

    /// The rows of an 80x24 terminal after drawing `s`.
    fn render(s: &Screen) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, s, 0)).unwrap();
        let buf = t.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn row_of<'a>(rows: &'a [String], start: &str) -> &'a str {
        rows.iter()
            .find(|r| r.starts_with(start))
            .unwrap_or_else(|| panic!("no row starts with {start:?}:\n{}", rows.join("\n")))
    }

    fn words(row: &str) -> Vec<&str> {
        row.split_whitespace().collect()
    }

    #[test]
    fn fits_80x24_with_the_numbers_in_their_columns() {
        let rows = render(&screen(Some(model()), None));
        let all = rows.join("\n");
        assert!(
            rows[0].starts_with("dataway monitor http://127.0.0.1:9529/metrics"),
            "{all}"
        );
        assert!(all.contains("memory budget 16 MiB / 64 MiB (25%)"), "{all}");
        assert!(all.contains("connections 3 / 1024"), "{all}");
        assert!(all.contains("fail-cache 12 bodies, 1.5 KiB"), "{all}");
        assert_eq!(
            words(row_of(&rows, "category")),
            [
                "category", "in/s", "sent/s", "failed/s", "received", "sent", "failed", "dropped"
            ]
        );
        assert_eq!(
            words(row_of(&rows, "metric")),
            ["metric", "120", "118", "1.5", "1234", "1200", "34", "3"]
        );
        // A long URL is cut to fit, its numbers kept.
        let ep = row_of(&rows, "https://openway");
        assert_eq!(ep.chars().count(), 80);
        assert!(ep.contains('…'), "{ep}");
        assert_eq!(words(ep)[1..], ["4", "12", "(1.5", "KiB)", "0"], "{ep}");
        assert_eq!(
            words(row_of(&rows, "web")),
            ["web", "serving", "50", "25.0%", "2.5ms", "0"]
        );
        assert!(row_of(&rows, "flaky").contains("quarantined"), "{all}");
        assert!(
            row_of(&rows, "new").contains("reload failed: init_trap"),
            "{all}"
        );
        // Everything fits: the last sinker is on screen.
        assert!(rows.iter().rposition(|r| r.starts_with("new")).unwrap() < 24);
    }

    #[test]
    fn a_quarantined_sinker_is_red_and_a_failing_endpoint_yellow() {
        let s = screen(Some(model()), None);
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, &s, 0)).unwrap();
        let buf = t.backend().buffer().clone();
        let rows = render(&s);
        let y = |start: &str| rows.iter().position(|r| r.starts_with(start)).unwrap() as u16;
        assert_eq!(buf[(0, y("flaky"))].fg, Color::Red);
        assert_eq!(buf[(0, y("web"))].fg, Color::Reset);
        assert_eq!(buf[(0, y("https://"))].fg, Color::Yellow);
        assert_eq!(buf[(0, y("file://"))].fg, Color::Reset);
    }

    #[test]
    fn a_daemon_that_is_down_is_said_so_with_the_last_values_kept() {
        let why = "connection failed: Connection refused (os error 111)";
        let rows = render(&screen(None, Some(why)));
        // Wrapped at a space on an 80-column terminal, never cut.
        assert_eq!(
            format!("{} {}", rows[1].trim_end(), rows[2].trim_end()),
            format!("cannot reach http://127.0.0.1:9529/metrics: {why}")
        );
        assert!(
            rows[3].starts_with("retrying every 1.00s (3 failed in a row)"),
            "{rows:?}"
        );
        let rows = render(&screen(Some(model()), Some(why)));
        assert!(
            rows[3].contains("the values below are the last seen"),
            "{rows:?}"
        );
        assert!(row_of(&rows, "metric").contains("1234"));
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let s = screen(Some(model()), Some("x"));
        for (w, h) in [(1, 1), (10, 3), (30, 5), (0, 0)] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| draw(f, &s, 0)).unwrap();
            t.draw(|f| draw(f, &s, 500)).unwrap();
        }
    }

    #[test]
    fn text_mode_cuts_nothing() {
        let out = text(&screen(Some(model()), None));
        let ep = out.lines().find(|l| l.starts_with("https://")).unwrap();
        assert!(
            ep.starts_with("https://openway.example.com/v1/write?token=tkn_***  "),
            "{out}"
        );
        assert!(!out.contains('…'), "{out}");
        assert!(!out.contains("q quits"), "{out}");
        assert!(out.lines().all(|l| l == l.trim_end()));
    }

    /// The WAL's size on disk is shown when the WAL is on (its gauge above 0), not when off.
    #[test]
    fn the_wal_size_on_disk_is_shown_when_the_wal_is_on() {
        let off = text(&screen(Some(model()), None));
        assert!(!off.contains("on disk"), "{off}");
        let mut m = model();
        m.wal_disk_bytes = Some(3.0 * 1024.0 * 1024.0);
        let on = text(&screen(Some(m), None));
        assert!(on.contains("WAL 3 MiB on disk"), "{on}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(Some(2.25)), "2.2");
        assert_eq!(rate(Some(1234.4)), "1234");
        assert_eq!(count(999_999.0), "999999");
        assert_eq!(count(12_345_678.0), "12.3M");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(64.0 * 1024.0 * 1024.0), "64 MiB");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(duration(Duration::from_micros(12)), "12µs");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 0), "");
        assert_eq!(wrap("ab cd ef", Some(5)), ["ab cd", "ef"]);
        assert_eq!(wrap("abcdefgh", Some(3)), ["abc", "def", "gh"]);
        assert_eq!(wrap("ab", None), ["ab"]);
    }
}
