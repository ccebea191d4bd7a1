//! `dataway monitor`: a live terminal view of a running daemon, read from its `/metrics`.
//!
//! A client of the daemon like any other: it knows the metric names and labels the daemon
//! exports (see [`model::names`]) and nothing else of it, so it watches any version that
//! exports them, local or remote. [`scrape`] fetches and parses the text exposition,
//! [`model`] turns two successive scrapes into totals, rates and sinker states (the clock
//! is the caller's), [`view`] lays them out, for ratatui or as plain text (`--once`).
//!
//! A daemon that does not answer is a state, not an error: the view says `cannot reach
//! URL: why` and keeps retrying. Only `--once` exits on it (code 1), for scripts.

pub mod model;
pub mod scrape;
pub mod view;

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

pub use model::{Screen, Tracker};

/// How often the view refreshes, and the gap between `--once`'s two scrapes.
pub const EVERY: Duration = Duration::from_secs(1);

/// A scrape that takes longer than this counts as failed ("timed out"): a hung daemon shows
/// as down instead of freezing the view.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// `http://host:port` (or with a path) to the URL of its `/metrics`: a bare address gets
/// `http://`, a URL without a path gets `/metrics`.
pub fn metrics_url(url: &str) -> Result<String, String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let mut parsed = url::Url::parse(&with_scheme).map_err(|e| format!("--url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "--url {url:?}: only http:// and https:// are scraped"
        ));
    }
    if parsed.path() == "/" || parsed.path().is_empty() {
        parsed.set_path("/metrics");
    }
    Ok(parsed.to_string())
}

/// `--once`: two scrapes [`EVERY`] apart, the view after the second as plain text on `out`.
/// `Err` is the message for stderr when the daemon cannot be reached (by the first scrape,
/// or the second).
pub fn once(url: &str, out: &mut dyn Write) -> Result<(), String> {
    let rt = runtime()?;
    let client = scrape::client(SCRAPE_TIMEOUT);
    let mut tracker = Tracker::new(url, EVERY);
    let first = Instant::now();
    let result = rt.block_on(scrape::fetch(&client, url));
    if let Err(why) = &result {
        return Err(format!("cannot reach {url}: {why}"));
    }
    tracker.observe(Instant::now(), result);
    std::thread::sleep(EVERY.saturating_sub(first.elapsed()));
    let result = rt.block_on(scrape::fetch(&client, url));
    if let Err(why) = &result {
        return Err(format!("cannot reach {url}: {why}"));
    }
    let screen = tracker.observe(Instant::now(), result);
    out.write_all(view::text(screen).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the output: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

/// What a key asks of the interactive view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Scroll by this many lines (for views taller than the terminal).
    Scroll(i32),
    None,
}

/// The interactive view's keys: `q`, `Esc` or `Ctrl-C` quit (in raw mode Ctrl-C is a key,
/// not a signal); arrows, `j`/`k` and page keys scroll.
pub fn on_key(key: KeyEvent) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::None;
    }
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Down | KeyCode::Char('j') => Action::Scroll(1),
        KeyCode::Up | KeyCode::Char('k') => Action::Scroll(-1),
        KeyCode::PageDown | KeyCode::Char(' ') => Action::Scroll(10),
        KeyCode::PageUp => Action::Scroll(-10),
        KeyCode::Home => Action::Scroll(i32::MIN),
        _ => Action::None,
    }
}

/// The interactive view until a quit key. Scrapes run on a thread of their own, so keys
/// are answered at once even while a scrape waits on a hung daemon.
pub fn interactive(url: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err("stdout is not a terminal: use --once for text output".to_string());
    }
    let (tx, rx) = mpsc::channel();
    let scrape_url = url.to_string();
    let rt = runtime()?;
    std::thread::spawn(move || {
        let client = scrape::client(SCRAPE_TIMEOUT);
        loop {
            let started = Instant::now();
            let result = rt.block_on(scrape::fetch(&client, &scrape_url));
            if tx.send((Instant::now(), result)).is_err() {
                return; // the view is gone
            }
            std::thread::sleep(EVERY.saturating_sub(started.elapsed()));
        }
    });
    let mut terminal = ratatui::try_init().map_err(|e| {
        let _ = ratatui::try_restore();
        format!("setting up the terminal: {e}")
    })?;
    let result = view_loop(&mut terminal, url, &rx);
    let restored = ratatui::try_restore();
    result?;
    restored.map_err(|e| format!("restoring the terminal: {e}"))
}

fn view_loop(
    terminal: &mut ratatui::DefaultTerminal,
    url: &str,
    rx: &mpsc::Receiver<(Instant, Result<Vec<scrape::Sample>, String>)>,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("terminal: {e}");
    let mut tracker = Tracker::new(url, EVERY);
    let mut scroll: u16 = 0;
    let mut dirty = true;
    loop {
        while let Ok((at, result)) = rx.try_recv() {
            tracker.observe(at, result);
            dirty = true;
        }
        if dirty {
            terminal
                .draw(|f| view::draw(f, tracker.screen(), scroll))
                .map_err(io)?;
            dirty = false;
        }
        // Short polls: a new scrape is drawn within 50 ms of arriving.
        if !event::poll(Duration::from_millis(50)).map_err(io)? {
            continue;
        }
        match event::read().map_err(io)? {
            Event::Key(key) => match on_key(key) {
                Action::Quit => return Ok(()),
                Action::Scroll(by) => {
                    scroll = (i64::from(scroll) + i64::from(by)).clamp(0, 1000) as u16;
                    dirty = true;
                }
                Action::None => {}
            },
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventState;

    fn key(code: KeyCode, modifiers: KeyModifiers, kind: KeyEventKind) -> KeyEvent {
        KeyEvent {
            code,
            modifiers,
            kind,
            state: KeyEventState::NONE,
        }
    }

    fn press(code: KeyCode) -> Action {
        on_key(key(code, KeyModifiers::NONE, KeyEventKind::Press))
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_other_keys_do_not() {
        assert_eq!(press(KeyCode::Char('q')), Action::Quit);
        assert_eq!(press(KeyCode::Char('Q')), Action::Quit);
        assert_eq!(press(KeyCode::Esc), Action::Quit);
        let ctrl_c = key(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
            KeyEventKind::Press,
        );
        assert_eq!(on_key(ctrl_c), Action::Quit);
        assert_eq!(press(KeyCode::Char('c')), Action::None);
        assert_eq!(press(KeyCode::Char('x')), Action::None);
        assert_eq!(press(KeyCode::Enter), Action::None);
        // Terminals that report releases send one per press: only the press counts.
        let release = key(
            KeyCode::Char('q'),
            KeyModifiers::NONE,
            KeyEventKind::Release,
        );
        assert_eq!(on_key(release), Action::None);
        assert_eq!(press(KeyCode::Down), Action::Scroll(1));
        assert_eq!(press(KeyCode::Char('k')), Action::Scroll(-1));
    }

    #[test]
    fn urls_point_at_metrics() {
        let u = |s| metrics_url(s).unwrap();
        assert_eq!(u("http://127.0.0.1:9529"), "http://127.0.0.1:9529/metrics");
        assert_eq!(u("127.0.0.1:9529"), "http://127.0.0.1:9529/metrics");
        assert_eq!(u("http://h:1/"), "http://h:1/metrics");
        assert_eq!(u("https://h/x/metrics"), "https://h/x/metrics");
        assert!(metrics_url("ftp://h").unwrap_err().contains("only http"));
        assert!(metrics_url("http://[::1").is_err());
    }
}
