//! DataKit's server-side sinker routing end to end: with `enable_sinker`, the points of a
//! write are grouped by their values of `global_customer_keys` (and `global_tag_keys`),
//! and each group arrives in bodies of its own with the `X-Global-Tags` header DataKit
//! sends, through retries and fail-cache resends. The real daemon, loopback receivers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Routing on: customer keys `app` and `source`, global tag key `host`.
const ROUTING: &str = "enable_sinker = true\n\
                       global_customer_keys = [\"app\", \"source\"]\n\
                       global_tag_keys = [\"host\"]\n";

/// Log lines with a unique `seq`, `app` and `host` as given (`None`: no such tag).
fn log_line(measurement: &str, app: Option<&str>, host: Option<&str>, seq: usize) -> String {
    let mut l = measurement.to_string();
    if let Some(a) = app {
        l.push_str(&format!(",app={a}"));
    }
    if let Some(h) = host {
        l.push_str(&format!(",host={h}"));
    }
    l.push_str(&format!(
        " message=\"m{seq}\",seq={seq}i {}",
        1_700_000_000_000_000_000i64 + seq as i64
    ));
    l
}

/// The lines that every write request carrying `header` holds, keyed by that header's
/// value (`None`: the header was absent).
fn by_header(mock: &MockDataway, header: &str) -> BTreeMap<Option<String>, Vec<String>> {
    let mut out: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for r in mock.requests().iter().filter(|r| r.ok()) {
        out.entry(r.header(header).map(String::from))
            .or_default()
            .extend(r.text.lines().map(String::from));
    }
    out
}

fn seqs_of(lines: &[String]) -> BTreeSet<usize> {
    lines
        .iter()
        .map(|l| {
            l.split([' ', ','])
                .find_map(|kv| kv.strip_prefix("seq="))
                .and_then(|v| v.trim_end_matches('i').parse().ok())
                .unwrap_or_else(|| panic!("no seq in {l}"))
        })
        .collect()
}

fn set(seqs: &[usize]) -> BTreeSet<usize> {
    seqs.iter().copied().collect()
}

/// The bodies DataKit's grouping makes of one write: one per header value, DataKit's
/// format (string keys of the point, tags sorted by key, then `source=<measurement>` for
/// logging), and no point in two bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_arrives_in_its_own_body_with_its_x_global_tags() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url("t")], ROUTING, "")).await;
    let body = [
        log_line("nginx", Some("a"), Some("h1"), 0),
        log_line("nginx", Some("b"), Some("h1"), 1),
        log_line("nginx", Some("a"), Some("h1"), 2),
        // Tags written in another order: the same group.
        format!(
            "nginx,host=h1,app=a message=\"m3\",seq=3i {}",
            1_700_000_000_000_000_003i64
        ),
        log_line("redis", Some("a"), None, 4),
        log_line("nginx", None, Some("h2"), 5),
    ]
    .join("\n");
    assert_eq!(d.post("logging", body).await.status(), 200);
    assert!(dw.wait_points(6, WAIT).await);
    let got = by_header(&dw, "x-global-tags");
    let want: BTreeMap<Option<String>, BTreeSet<usize>> = [
        ("app=a,host=h1,source=nginx", set(&[0, 2, 3])),
        ("app=b,host=h1,source=nginx", set(&[1])),
        ("app=a,source=redis", set(&[4])),
        ("host=h2,source=nginx", set(&[5])),
    ]
    .into_iter()
    .map(|(k, v)| (Some(k.to_string()), v))
    .collect();
    let got_seqs: BTreeMap<_, _> = got.iter().map(|(k, v)| (k.clone(), seqs_of(v))).collect();
    assert_eq!(got_seqs, want);
    // One body per group (they are small), each with its own point count.
    assert_eq!(dw.requests().len(), 4);
    for r in dw.requests() {
        assert_eq!(r.x_points(), r.text.lines().count());
    }
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_grouped_request_count{category=\"logging\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "datakit_io_grouped_request_sum{category=\"logging\"}"
        ),
        Some(4.0)
    );
    d.stop().await;
}

/// Points with none of the keys travel together with an empty `X-Global-Tags`, as
/// DataKit sends them; in metric, the added key is `measurement`, not `source`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_without_the_keys_go_together_with_an_empty_header() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        "enable_sinker = true\nglobal_customer_keys = [\"app\"]\n",
        "",
    ))
    .await;
    let body = [
        log_line("cpu", None, Some("h1"), 0),
        log_line("cpu", Some("x"), None, 1),
        log_line("mem", None, None, 2),
    ]
    .join("\n");
    assert_eq!(d.post("metric", body).await.status(), 200);
    assert!(dw.wait_points(3, WAIT).await);
    let got: BTreeMap<_, _> = by_header(&dw, "x-global-tags")
        .into_iter()
        .map(|(k, v)| (k, seqs_of(&v)))
        .collect();
    let want: BTreeMap<_, _> = [
        (Some(String::new()), set(&[0, 2])),
        (Some("app=x".to_string()), set(&[1])),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    d.stop().await;
}

/// Without `enable_sinker` the keys do nothing: one body, no header (DataKit's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinker_disabled_sends_one_body_without_the_header() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        "enable_sinker = false\nglobal_customer_keys = [\"app\"]\nglobal_tag_keys = [\"host\"]\n",
        "",
    ))
    .await;
    let body = (0..6)
        .map(|i| log_line("nginx", Some(["a", "b", "c"][i % 3]), Some("h1"), i))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(d.post("logging", body).await.status(), 200);
    assert!(dw.wait_points(6, WAIT).await);
    let reqs = dw.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("x-global-tags"), None);
    assert_eq!(reqs[0].header("x-global-tags-v2"), None);
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_grouped_request_count{category=\"logging\"}"
        ),
        None
    );
    d.stop().await;
}

/// A retried body is the same request: same bytes, same header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_survives_a_retry() {
    let dw = MockDataway::start().await;
    // The first body's first attempt fails; the bodies of one batch go one after another.
    dw.script([Reply::Status(500)]);
    let d = TestDaemon::start(config_for(&[dw.url("t")], ROUTING, "")).await;
    let body = [
        log_line("nginx", Some("a"), None, 0),
        log_line("nginx", Some("b"), None, 1),
    ]
    .join("\n");
    assert_eq!(d.post("logging", body).await.status(), 200);
    assert!(dw.wait_points(2, WAIT).await);
    let reqs = dw.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let (failed, retry) = (&reqs[0], &reqs[1]);
    assert_eq!(failed.status, Some(500));
    assert!(retry.ok());
    assert_eq!(failed.body, retry.body);
    assert_eq!(failed.header("x-global-tags"), Some("app=a,source=nginx"));
    assert_eq!(retry.header("x-global-tags"), Some("app=a,source=nginx"));
    assert_eq!(reqs[2].header("x-global-tags"), Some("app=b,source=nginx"));
    d.stop().await;
}

/// A body that failed all its retries is kept on disk with its header: resent after a
/// restart (read back from the cache file), it carries the header it was first sent with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_survives_a_fail_cache_resend_across_a_restart() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let cache = scratch_dir("routing-failcache");
    let extra = format!(
        "{ROUTING}max_retry_count = 1\nretry_delay = \"10ms\"\nmax_retry_delay = \"50ms\"\n\
         [dataway.fail_cache]\nclean_interval = \"100ms\"\npath = \"{}\"\n",
        cache.display()
    );
    let d = TestDaemon::start(config_for(&[dw.url("t")], &extra, "")).await;
    let body = [
        log_line("nginx", Some("a"), Some("h1"), 0),
        log_line("nginx", Some("b"), None, 1),
    ]
    .join("\n");
    assert_eq!(d.post("logging", body).await.status(), 200);
    let records = format!(
        "dataway_failcache_records{{endpoint=\"http://{}?token=***\"}}",
        dw.addr
    );
    assert!(
        wait_metric(&d.metrics, &records, 2.0).await,
        "two bodies cached"
    );
    d.stop().await;
    assert_eq!(dw.points_accepted(), 0);
    let first: BTreeMap<Vec<u8>, Option<String>> = dw
        .requests()
        .iter()
        .map(|r| (r.body.clone(), r.header("x-global-tags").map(String::from)))
        .collect();

    dw.set_default(None);
    let d = TestDaemon::start(config_for(&[dw.url("t")], &extra, "")).await;
    assert!(dw.wait_points(2, WAIT).await);
    d.stop().await;
    let resent: Vec<_> = dw.requests().into_iter().filter(|r| r.ok()).collect();
    assert_eq!(resent.len(), 2);
    let mut headers = BTreeSet::new();
    for r in &resent {
        assert_eq!(r.header("x-fail-cache-retry"), Some("1"));
        let h = r.header("x-global-tags").map(String::from);
        assert_eq!(
            first.get(&r.body),
            Some(&h),
            "the header first sent with it"
        );
        headers.insert(h.unwrap_or_default());
    }
    assert_eq!(
        headers,
        ["app=a,host=h1,source=nginx", "app=b,source=nginx"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

/// `sinker_header_version = "v2"`: DataKit's `X-Global-Tags-V2`, URL-encoded, instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_version_2_url_encodes_into_x_global_tags_v2() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        "enable_sinker = true\nglobal_customer_keys = [\"app\"]\nsinker_header_version = \"v2\"\n",
        "",
    ))
    .await;
    let line = format!(
        "nginx,app=a\\,b\\=c\\ d message=\"m0\",seq=0i {}",
        1_700_000_000_000_000_000i64
    );
    assert_eq!(d.post("logging", line).await.status(), 200);
    assert!(dw.wait_points(1, WAIT).await);
    let r = &dw.requests()[0];
    assert_eq!(r.header("x-global-tags-v2"), Some("app=a%2Cb%3Dc+d"));
    assert_eq!(r.header("x-global-tags"), None);
    d.stop().await;
}

/// A sinker's endpoints are Dataways too: their bodies are grouped the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinkers_endpoints_get_the_groups_too() {
    let main = MockDataway::start().await;
    let sink = MockDataway::start().await;
    let extra = format!(
        "{ROUTING}[[dataway.sinkers]]\nname = \"logs\"\ncategories = [\"L\"]\nurls = [\"{}\"]\n",
        sink.url("s")
    );
    let d = TestDaemon::start(config_for(&[main.url("m")], &extra, "")).await;
    let body = [
        log_line("nginx", Some("a"), None, 0),
        log_line("nginx", Some("b"), None, 1),
    ]
    .join("\n");
    assert_eq!(d.post("logging", body).await.status(), 200);
    assert!(sink.wait_points(2, WAIT).await);
    let got: BTreeSet<_> = by_header(&sink, "x-global-tags").into_keys().collect();
    let want: BTreeSet<_> = ["app=a,source=nginx", "app=b,source=nginx"]
        .into_iter()
        .map(|s| Some(s.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(main.requests().is_empty());
    d.stop().await;
}
