//! Start to serving with the built-in DataKit filter: how long from starting `dataway run`
//! until `/health` answers (the sinker's filter is loaded before ingest serves), with an
//! empty compiled-plugin cache (cold: the filter is compiled) and with the cache filled by
//! the run before (warm: it is loaded).
//!
//! Run: `cargo build --release && cargo run --release --example startup -- [RUNS]` (default
//! 5 of each); `DATAWAY_BIN=path` picks another daemon binary. No plugins directory: the
//! filter is the one built into the binary. Everything binds 127.0.0.1; files go to a
//! temporary directory that is removed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One start: the time until `/health` answered 200, and the daemon's "plugin loaded" line.
fn start(bin: &str, cfg: &std::path::Path) -> (Duration, String) {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(cfg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dataway");
    // The address from the log (ingest listens on port 0), and the loaded-plugin line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut loaded = String::new();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("dataway exited before listening")
            .unwrap();
        if line.contains("plugin loaded") {
            loaded = line.clone();
        }
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .filter(|_| line.contains("ingest server listening"))
        {
            break a.parse().unwrap();
        }
        if line.contains("ERROR") {
            panic!("{line}");
        }
    };
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let took = loop {
        if health(addr) {
            break t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(!loaded.is_empty(), "no `plugin loaded` line before serving");
    (took, loaded)
}

fn health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let bin = std::env::var("DATAWAY_BIN").unwrap_or_else(|_| "target/release/dataway".into());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = tmp.path().join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[dataway]
urls = ["file://out"]
[dataway.fail_cache]
enabled = false
[dataway.sinker_limits]
cache_dir = "{}"
[[dataway.sinkers]]
name = "dk"
categories = ["M", "L"]
plugin = "datakit_filter.wasm"
config = ["{{ measurement = 'cpu' and host in ['web-1', 'web-2'] }}", "{{ source = 'nginx', status >= '500' }}"]
urls = ["file://dk"]
[ingest]
listen = "127.0.0.1:0"
"#,
            cache.display()
        ),
    )
    .unwrap();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&cache);
        let (t, line) = start(&bin, &cfg);
        assert!(line.contains("cached=false"), "{line}");
        cold.push(t);
        let (t, line) = start(&bin, &cfg);
        assert!(line.contains("cached=true"), "{line}");
        warm.push(t);
    }
    println!("start to serving with the built-in DataKit filter ({runs} runs each, {bin}):");
    println!(
        "  cold (empty compile cache): median {:?}, min {:?}",
        median(cold.clone()),
        cold.iter().min().unwrap()
    );
    println!(
        "  warm (from the compile cache): median {:?}, min {:?}",
        median(warm.clone()),
        warm.iter().min().unwrap()
    );
}
