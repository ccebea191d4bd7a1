//! DataKit's own `datakit.conf` files, unchanged but for addresses, run by the real binary
//! against loopback stand-in Dataways: they load, route as their filters say, warn once per
//! ignored key, and `dataway check` says what it mapped and ignored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::MockDataway;
use common::process::DaemonProcess;

const WAIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datakit")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixture with its three addresses (main `:9601`, sinkers `:9602`, `:9603`) pointed
/// at `addrs` and DataKit's `localhost:9529` at port 0, written to a scratch dir as
/// `datakit.conf`, with no plugins directory: DataKit's `filters` run on the built-in
/// filter, as with the release binary alone.
fn install(name: &str, addrs: &[String]) -> PathBuf {
    let mut text = fixture(name);
    for (port, addr) in ["127.0.0.1:9601", "127.0.0.1:9602", "127.0.0.1:9603"]
        .iter()
        .zip(addrs)
    {
        assert!(text.contains(port), "{name} has no {port}");
        text = text.replace(port, addr);
    }
    text = text.replace("listen = \"localhost:9529\"", "listen = \"localhost:0\"");
    let dir = common::scratch_dir("datakit-conf");
    let file = dir.join("datakit.conf");
    std::fs::write(&file, text).unwrap();
    file
}

/// `dataway ARGS` to its end, with `env` and none of the caller's DataKit variables:
/// (exit code, stdout, stderr).
fn dataway(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("ENV_DATAWAY") || k.starts_with("ENV_SINKER") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .envs(env.iter().copied())
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
        )
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A stock DataKit 1.6 `datakit.conf` with two `[[dataway.sinkers]]` using `filters`:
/// loads as it is and routes exactly as the filters say; each ignored key warns once.
#[tokio::test(flavor = "multi_thread")]
async fn a_datakit_1_6_conf_routes_as_its_filters_say() {
    let main = MockDataway::start().await;
    let cpu_sink = MockDataway::start().await;
    let nginx_sink = MockDataway::start().await;
    let addrs = [&main, &cpu_sink, &nginx_sink].map(|m| m.addr.to_string());
    let file = install("datakit-1.6.conf", &addrs);
    let daemon = DaemonProcess::start(&file, &[]);

    let metrics = "cpu,cpu=cpu-total,host=h usage=1i 1700000000000000000\ncpu,cpu=cpu0,host=h usage=2i 1700000000000000000\n";
    assert_eq!(daemon.post("metric", metrics.to_string()).await, 200);
    let logs = "nginx,host=h message=\"GET /\" 1700000000000000000\nmysql,host=h message=\"slow\" 1700000000000000000\n";
    assert_eq!(daemon.post("logging", logs.to_string()).await, 200);

    assert!(cpu_sink.wait_points(1, WAIT).await, "{}", daemon.log());
    assert!(nginx_sink.wait_points(1, WAIT).await, "{}", daemon.log());
    assert!(main.wait_points(2, WAIT).await, "{}", daemon.log());
    let only = |m: &MockDataway| {
        let mut l = m.lines_accepted();
        l.sort();
        l
    };
    assert_eq!(
        only(&cpu_sink),
        vec!["cpu,cpu=cpu-total,host=h usage=1i 1700000000000000000"]
    );
    assert_eq!(
        only(&nginx_sink),
        vec!["nginx,host=h message=\"GET /\" 1700000000000000000"]
    );
    let main_lines = only(&main);
    assert_eq!(main_lines.len(), 2, "{main_lines:?}");
    assert!(main_lines[0].starts_with("cpu,cpu=cpu0"), "{main_lines:?}");
    assert!(main_lines[1].starts_with("mysql"), "{main_lines:?}");
    // The sinkers' paths and tokens are their own.
    let r = &cpu_sink.requests()[0];
    assert_eq!(r.path, "/v1/write/metric");
    assert_eq!(
        r.query.as_deref(),
        Some("token=tkn_sinker100000000000000000000000")
    );

    let log = daemon.log();
    for warning in [
        "`dataway.enable_httptrace` is ignored",
        "DataKit's other settings are ignored",
    ] {
        assert_eq!(count(&log, warning), 1, "{warning:?} once in:\n{log}");
    }
    assert!(log.contains("`cgroup`") && log.contains("`io`"), "{log}");
    assert!(
        !log.contains("tkn_main0000"),
        "a token reached the log:\n{log}"
    );
}

/// The `datakit.conf` current DataKit writes on install (`content_encoding = "v2"`,
/// `[dataway.ntp]`, `[dataway.wal]`): `dataway check` says what was mapped, what ignored,
/// and the endpoint with its token redacted.
#[test]
fn check_of_a_current_datakit_conf_lists_mapped_and_ignored_keys() {
    let file = install("datakit-1.8x.conf", &["127.0.0.1:9601".to_string()]);
    let (code, out, err) = dataway(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for line in [
        "format: DataKit datakit.conf",
        "mapped: `dataway.timeout_v2` → `dataway.timeout`",
        "mapped: `dataway.max_retry_count = 1` (DataKit: attempts) → 0 retries",
        "mapped: `http_api.listen = \"localhost:0\"` → `ingest.listen = \"127.0.0.1:0\"`",
        "mapped: `dataway.wal.max_capacity_gb = 2` → `dataway.fail_cache.max_capacity = 2147483648`",
        "mapped: `[global_host_tags]` keys `host`, `ip` → `dataway.global_tag_keys`",
        "mapped: `[election.tags]` is empty",
        "ignored: `dataway.enable_httptrace` is ignored",
        "ignored: `dataway.ntp` is ignored",
        "ignored: DataKit's other settings are ignored",
        "endpoint[0]: http://127.0.0.1:9601?token=tkn_***",
        "config ok",
    ] {
        assert_eq!(count(&out, line), 1, "{line:?} once in:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.contains("DataKit's other settings are ignored"))
        .unwrap();
    for section in [
        "`point_pool`",
        "`remote_job`",
        "`resource_limit`",
        "`logging`",
        "`election (all but `tags`)`",
    ] {
        assert!(summary.contains(section), "{section} not listed:\n{out}");
    }
    // Mapped, so not among the ignored.
    assert!(!summary.contains("`global_host_tags`"), "{summary}");
    assert!(!out.contains("tkn_main0000"), "token shown:\n{out}");
}

/// A key DataKit never had is still an error naming it; so is a sink target other than
/// dataway.
#[test]
fn an_unknown_key_fails_naming_it() {
    let file = install("datakit-1.6.conf", &[]);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[dataway]\n", "[dataway]\n  enable_turbo = true\n");
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = dataway(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("enable_turbo"), "{err}");

    let dir = common::scratch_dir("datakit-sinks");
    let old = dir.join("datakit.conf");
    std::fs::write(
        &old,
        "[dataway]\nurls = [\"http://127.0.0.1:9601?token=t\"]\n\n[sinks]\n  [[sinks.sink]]\n    \
         categories = [\"M\"]\n    target = \"influxdb\"\n    host = \"localhost:8086\"\n",
    )
    .unwrap();
    let (code, _, err) = dataway(&["check", "-c", old.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("sinks.sink[0].target") && err.contains("influxdb"),
        "{err}"
    );
}

/// `ENV_SINKER` (DataKit's JSON array of sinkers) adds a sinker over the file, with
/// `filters` that route.
#[tokio::test(flavor = "multi_thread")]
async fn env_sinker_routes_points() {
    let main = MockDataway::start().await;
    let s1 = MockDataway::start().await;
    let s2 = MockDataway::start().await;
    let env_sink = MockDataway::start().await;
    let addrs = [&main, &s1, &s2].map(|m| m.addr.to_string());
    let file = install("datakit-1.6.conf", &addrs);
    let env_sinker = format!(
        r#"[{{"categories":["M"],"filters":["{{ host = 'web-1' }}"],"url":"{}"}}]"#,
        env_sink.url("tkn_env000000000000000000000000000")
    );
    let daemon = DaemonProcess::start(&file, &[("ENV_SINKER", &env_sinker)]);
    let metrics =
        "mem,host=web-1 used=1i 1700000000000000000\nmem,host=web-2 used=2i 1700000000000000000\n";
    assert_eq!(daemon.post("metric", metrics.to_string()).await, 200);
    assert!(env_sink.wait_points(1, WAIT).await, "{}", daemon.log());
    assert!(main.wait_points(1, WAIT).await, "{}", daemon.log());
    assert_eq!(
        env_sink.lines_accepted(),
        vec!["mem,host=web-1 used=1i 1700000000000000000"]
    );
    assert_eq!(
        main.lines_accepted(),
        vec!["mem,host=web-2 used=2i 1700000000000000000"]
    );
    assert_eq!(s1.arrived() + s2.arrived(), 0);
}

/// The `datakit.conf` current DataKit writes on install (`content_encoding = "v2"`), with a
/// filter sinker from `ENV_SINKER` and no plugins directory: the built-in filter routes, and
/// every body, the main endpoint's and the sinker's, is DataKit's protobuf that DataKit's own
/// decoder (`dkfilter pbdecode`) reads back to exactly the points that were routed there.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    dataway_no_go_toolchain,
    ignore = "needs Go (apt-get install golang-go) to build DataKit's codec"
)]
async fn a_current_datakit_conf_uploads_v2_that_datakit_decodes_and_routes_by_env_sinker() {
    let main = MockDataway::start().await;
    let sink = MockDataway::start().await;
    let file = install("datakit-1.8x.conf", &[main.addr.to_string()]);
    assert!(!file.parent().unwrap().join("plugins").exists());
    let env_sinker = format!(
        r#"[{{"categories":["M","L"],"filters":["{{ host = 'web-1' }}", "{{ source = 'nginx' }}"],"url":"{}"}}]"#,
        sink.url("tkn_env000000000000000000000000000")
    );
    let daemon = DaemonProcess::start(&file, &[("ENV_SINKER", &env_sinker)]);
    let metrics = "mem,host=web-1 used=1i,free=2.5,ok=true 1700000000000000000\n\
                   mem,host=web-2 used=2i,note=\"ü \\\"q\\\"\" 1700000000000000000\n";
    assert_eq!(daemon.post("metric", metrics.to_string()).await, 200);
    let logs = "nginx,host=web-9 message=\"GET /\" 1700000000000000000\n\
                mysql,host=web-9 message=\"slow\",n=7u 1700000000000000000\n";
    assert_eq!(daemon.post("logging", logs.to_string()).await, 200);
    // Bodies of two points each side; wait for both categories.
    let arrived = |m: &MockDataway| m.requests().iter().filter(|r| r.ok()).count();
    for m in [&main, &sink] {
        let t = std::time::Instant::now();
        while arrived(m) < 2 {
            assert!(t.elapsed() < WAIT, "{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let decoded = |m: &MockDataway| {
        let mut lines = String::new();
        for r in m.requests().iter().filter(|r| r.ok()) {
            assert_eq!(
                r.header("content-type"),
                Some("application/protobuf; proto=com.guance.Point"),
                "{}",
                r.path
            );
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            let text = pbdecode(&r.body);
            assert_eq!(
                text.lines().count().to_string(),
                r.header("x-points").unwrap()
            );
            lines.push_str(&text);
        }
        points(&lines)
    };
    let (metrics, logs): (Vec<&str>, Vec<&str>) =
        (metrics.lines().collect(), logs.lines().collect());
    assert_eq!(
        decoded(&sink),
        points(&[metrics[0], logs[0]].join("\n")),
        "{}",
        daemon.log()
    );
    assert_eq!(decoded(&main), points(&[metrics[1], logs[1]].join("\n")));
}

/// Line protocol as points in a canonical order (points, tags and fields sorted), so bodies
/// compare by content whatever order an encoder writes keys in.
fn points(lp: &str) -> Vec<dataway::point::Point> {
    let opts = dataway::point::ParseOptions {
        precision: dataway::point::Precision::Nanos,
        default_time: 0,
    };
    let mut pts = dataway::point::parse(lp.trim().as_bytes(), opts).unwrap();
    for p in &mut pts {
        p.tags.sort();
        p.fields.sort_by(|a, b| a.0.cmp(&b.0));
    }
    pts.sort_by_key(|p| format!("{p:?}"));
    pts
}

/// `dkfilter pbdecode`: DataKit's v2 decoder, a body (gzipped or not) to line protocol.
fn pbdecode(body: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(common::dkfilter())
        .arg("pbdecode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pbdecode: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The README's "Migrating from DataKit" excerpt is part of the 1.6 fixture that the tests
/// above load: the excerpt cannot drift from a file that works.
#[test]
fn the_readme_migration_excerpt_is_part_of_a_tested_fixture() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Migrating from DataKit\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Migrating from DataKit section");
    let excerpt: Vec<&str> = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a toml excerpt")
        .lines()
        .collect();
    assert!(excerpt.len() >= 10, "{excerpt:?}");
    let fixture = fixture("datakit-1.6.conf");
    let lines: Vec<&str> = fixture.lines().collect();
    assert!(
        lines.windows(excerpt.len()).any(|w| w == excerpt),
        "README's excerpt is not verbatim in tests/fixtures/datakit/datakit-1.6.conf:\n{}",
        excerpt.join("\n")
    );
}

/// A current `datakit.conf` with `enable_sinker = true`: the keys of its `[global_host_tags]`
/// (`host`, `ip`) and of `ENV_GLOBAL_HOST_TAGS` group the points, each group in bodies of its
/// own with DataKit's `X-Global-Tags`.
#[tokio::test(flavor = "multi_thread")]
async fn enable_sinker_groups_by_the_global_host_tag_keys_of_file_and_environment() {
    let main = MockDataway::start().await;
    let file = install("datakit-1.8x.conf", &[main.addr.to_string()]);
    let text = std::fs::read_to_string(&file).unwrap();
    let on = "enable_sinker        = true # disable sinker";
    let text = text.replace("enable_sinker        = false # disable sinker", on);
    assert!(text.contains(on));
    std::fs::write(&file, text).unwrap();
    let daemon = DaemonProcess::start(&file, &[("ENV_GLOBAL_HOST_TAGS", "cluster=c1")]);
    let metrics = [
        "cpu,host=h1,ip=10.0.0.1 usage=1i 1700000000000000000",
        "cpu,cluster=c1,host=h1,ip=10.0.0.1 usage=2i 1700000000000000000",
        "cpu,host=h2,other=x usage=3i 1700000000000000000",
        "cpu,other=y usage=4i 1700000000000000000",
        "mem,host=h2 used=5i 1700000000000000000",
    ]
    .join("\n");
    assert_eq!(daemon.post("metric", metrics).await, 200);
    assert!(main.wait_points(5, WAIT).await, "{}", daemon.log());
    let mut got: Vec<(Option<String>, usize)> = main
        .requests()
        .iter()
        .map(|r| (r.header("x-global-tags").map(String::from), r.x_points()))
        .collect();
    got.sort();
    let want: Vec<(Option<String>, usize)> = [
        ("", 1),
        ("cluster=c1,host=h1,ip=10.0.0.1", 1),
        ("host=h1,ip=10.0.0.1", 1),
        ("host=h2", 2),
    ]
    .into_iter()
    .map(|(h, n)| (Some(h.to_string()), n))
    .collect();
    assert_eq!(got, want, "{}", daemon.log());
}

/// `tls_insecure` (the file's, or DataKit's `ENV_DATAWAY_TLS_INSECURE`) is warned about at
/// start by the real daemon; without it, no such warning.
#[test]
fn tls_insecure_is_warned_about_at_start() {
    let warning = "dataway.tls_insecure is on";
    let url = "http://127.0.0.1:9?token=tkn_x".to_string();
    for (extra, env) in [
        ("tls_insecure = true\n", &[][..]),
        ("", &[("ENV_DATAWAY_TLS_INSECURE", "1")][..]),
    ] {
        let file = common::config_file(std::slice::from_ref(&url), extra, "");
        let daemon = DaemonProcess::start(&file, env);
        let log = daemon
            .wait_log(WAIT, |l| l.contains(warning).then(|| l.to_string()))
            .unwrap_or_else(|| panic!("no warning ({extra:?} {env:?}):\n{}", daemon.log()));
        assert_eq!(count(&log, warning), 1, "{extra:?} {env:?}:\n{log}");
        assert!(log.contains("NOT") && log.contains("tls_ca_file"), "{log}");
    }
    let file = common::config_file(&[url], "", "");
    let daemon = DaemonProcess::start(&file, &[]);
    // It would come before "ingest server listening", which `start` has waited for.
    let log = daemon.log();
    assert_eq!(count(&log, warning), 0, "{log}");
}
