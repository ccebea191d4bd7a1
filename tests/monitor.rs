//! `dataway monitor --once`, the real binary, against the real daemon: the counts it prints
//! per category (received, sent, failed, dropped), endpoint and sinker are the daemon's; and against an address where nothing
//! listens it says so and exits 1.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::process::DaemonProcess;
use common::{MockDataway, Reply, plugin_cache_dir, sample, scratch_dir};

/// A stuck daemon's limit, not a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);

fn monitor_once(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["monitor", "--once", "--url", url])
        .output()
        .expect("run dataway monitor")
}

/// The words of the output line that starts with `start`.
fn row(out: &str, start: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starts with {start:?}:\n{out}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Polls the daemon's /metrics until `series` has `value` (counts are recorded just after
/// the mock answers).
async fn wait_series(d: &DaemonProcess, series: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(d.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never {value}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_the_daemons_counts_per_category_endpoint_and_sinker() {
    let (main, sink) = (MockDataway::start().await, MockDataway::start().await);
    let dir = scratch_dir("monitor");
    let cfg = dir.join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[dataway]
urls = ["{main}"]
retry_delay = "20ms"
plugins_dir = "{dir}/plugins"
[dataway.fail_cache]
path = "{dir}/failcache"
[dataway.sinker_limits]
cache_dir = "{cache}"
[[dataway.sinkers]]
name = "cpu"
categories = ["metric"]
plugin = "datakit_filter.wasm"
config = "{{ measurement = 'cpu' }}"
urls = ["{sink}"]
[ingest]
listen = "127.0.0.1:0"
"#,
            main = main.url("tkn_main_secret"),
            sink = sink.url("tkn_sink_secret"),
            dir = dir.display(),
            cache = plugin_cache_dir().display(),
        ),
    )
    .unwrap();
    let d = DaemonProcess::start(&cfg, &[]);
    d.wait_log(PATIENCE, |l| l.contains("plugin loaded").then_some(()))
        .unwrap_or_else(|| panic!("the sinker never loaded:\n{}", d.log()));

    let metric = "cpu,host=a usage=1 1\ncpu,host=b usage=2 2\ncpu,host=c usage=3 3\n\
                  cpu,host=d usage=4 4\nmem,host=a free=1i 5\nmem,host=b free=2i 6";
    assert_eq!(d.post("metric", metric.into()).await, 200);
    assert!(main.wait_points(2, PATIENCE).await, "{}", d.log());
    assert!(sink.wait_points(4, PATIENCE).await, "{}", d.log());
    // The main endpoint refuses the network points: failed, and dropped.
    main.script([Reply::Status(400)]);
    let network = "tcp,host=a bytes=1i 1\ntcp,host=b bytes=2i 2";
    assert_eq!(d.post("network", network.into()).await, 200);
    wait_series(
        &d,
        r#"dataway_dropped_points_total{category="network",reason="rejected"}"#,
        2.0,
    )
    .await;
    let logging = "app message=\"a\" 1\napp message=\"b\" 2\napp message=\"c\" 3";
    assert_eq!(d.post("logging", logging.into()).await, 200);
    assert!(main.wait_points(5, PATIENCE).await, "{}", d.log());
    wait_series(
        &d,
        r#"datakit_io_dataway_point_total{category="metric",status="OK"}"#,
        6.0,
    )
    .await;
    wait_series(
        &d,
        r#"datakit_io_dataway_point_total{category="logging",status="OK"}"#,
        3.0,
    )
    .await;

    // The bare address: the monitor adds /metrics.
    let run = monitor_once(&format!("http://{}", d.addr));
    let out = String::from_utf8(run.stdout).unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{:?}\n{out}\n{err}", run.status);
    assert!(
        out.starts_with(&format!("dataway monitor http://{}/metrics\n", d.addr)),
        "{out}"
    );
    assert!(out.contains("rates over "), "{out}");
    // Nothing happens between the two scrapes: every rate is 0, the totals are the writes'.
    // Columns: in/s sent/s failed/s received sent failed dropped.
    assert_eq!(
        row(&out, "metric")[1..],
        ["0", "0", "0", "6", "6", "0", "0"],
        "{out}"
    );
    assert_eq!(
        row(&out, "logging")[1..],
        ["0", "0", "0", "3", "3", "0", "0"],
        "{out}"
    );
    assert_eq!(
        row(&out, "network")[1..],
        ["0", "0", "0", "2", "0", "2", "2"],
        "{out}"
    );
    // Both endpoints, tokens redacted, their queues and fail-caches empty; the daemon
    // counts per endpoint, so the sent/s, fail/s and retry/s columns are there (all 0).
    // Columns: queue, fail-cache (bodies, bytes), WAL held, sent/s, fail/s, retry/s.
    for mock in [&main, &sink] {
        let label = format!("http://{}?token=tkn_***", mock.addr);
        assert_eq!(
            row(&out, &label)[1..],
            ["0", "0", "(0", "B)", "0", "0", "0", "0"],
            "{out}"
        );
    }
    assert!(!out.contains("secret"), "{out}");
    // 4 of the 6 metric points matched the sinker's filter.
    let cpu = row(&out, "cpu ");
    assert_eq!(cpu[1], "serving", "{out}");
    assert_eq!(cpu[3], "66.7%", "{out}");
    assert!(out.contains("fail-cache 0 bodies, 0 B"), "{out}");
}

#[test]
fn once_against_nothing_says_cannot_reach_and_exits_1() {
    let url = refused_url();
    let run = monitor_once(&url);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    assert!(
        err.starts_with(&format!("error: cannot reach {url}: ")),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
}

/// The live view on a pseudo-terminal of 80x24 made its controlling terminal: with nothing
/// at the URL it draws "cannot reach URL: why", keeps running, and `q` ends it with exit 0,
/// leaving the alternate screen.
#[test]
fn interactive_view_on_a_pty_shows_the_outage_and_q_quits() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{Winsize, tcsetwinsize};
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let size = Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(&slave, size).unwrap();

    let url = refused_url();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
    cmd.args(["monitor", "--url", &url])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: between fork and exec only setsid(2) and ioctl(2) run, both async-signal-safe;
    // nothing is allocated or locked. A session of its own with the pty as its controlling
    // terminal: crossterm reads the size from /dev/tty, which must be this pty, not the one
    // the tests may run in.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run dataway monitor");
    drop(cmd); // the parent's copies of the slave: the master reads EOF once the child exits

    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let seen = screen.clone();
    let reading = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child has exited and the slave is closed.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let raw = || screen.lock().unwrap().clone();
    let text = || String::from_utf8_lossy(&raw()).into_owned();
    let deadline = Instant::now() + PATIENCE;
    let wait_for = |what: &str, done: &dyn Fn(&[u8]) -> bool| {
        while !done(&raw()) {
            assert!(Instant::now() < deadline, "{what}:\n{}", text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("no outage shown", &|t| {
        String::from_utf8_lossy(t).contains("(1 failed in a row)")
    });
    assert!(
        text().contains(&format!("cannot reach {url}: ")),
        "{}",
        text()
    );
    assert!(text().contains("refused"), "{}", text());
    // It keeps retrying: the next failure is drawn (ratatui redraws only the digit that
    // changed, so the count is seen as more output after the first screen).
    let first = raw().len();
    wait_for("no retry drawn", &|t| t[first..].contains(&b'2'));
    assert!(child.try_wait().unwrap().is_none(), "exited:\n{}", text());

    std::fs::File::from(master).write_all(b"q").unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("q did not quit:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reading.join().unwrap();
    assert!(status.success(), "{status:?}:\n{}", text());
    // The terminal is given back: the alternate screen was left (raw mode goes with it).
    assert!(text().contains("\x1b[?1049l"), "{:?}", text());
}

/// A `/metrics` URL on a port that was just free: connecting to it is refused.
fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/metrics")
}
