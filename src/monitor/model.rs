//! From scrapes to what the monitor shows: totals, rates between two successive scrapes,
//! and each sinker's state.
//!
//! Pure: the time of each scrape is given by the caller ([`Tracker::observe`]), so tests
//! control the clock and the rates exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::scrape::Sample;

/// The metric names the monitor reads: the daemon's contract (`metrics.md`, the README's
/// list), nothing else of it.
pub mod names {
    pub const INGEST_POINTS: &str = "dataway_ingest_points_total";
    pub const POINTS: &str = "datakit_io_dataway_point_total";
    pub const DROPPED: &str = "dataway_dropped_points_total";
    pub const ENDPOINT_POINTS: &str = "dataway_endpoint_points_total";
    pub const RETRIES: &str = "dataway_retries_total";
    pub const QUEUE: &str = "dataway_queue_batches";
    pub const FAILCACHE_RECORDS: &str = "dataway_failcache_records";
    pub const FAILCACHE_BYTES: &str = "dataway_failcache_disk_bytes";
    pub const WAL_HELD: &str = "dataway_wal_held_points";
    pub const WAL_SPILLED_WRITES: &str = "dataway_wal_spilled_writes";
    pub const WAL_SPILLED_BYTES: &str = "dataway_wal_spilled_bytes";
    pub const WAL_DISK: &str = "dataway_wal_disk_bytes";
    pub const BUDGET: &str = "dataway_memory_budget_bytes";
    pub const BUDGET_USED: &str = "dataway_memory_budget_used_bytes";
    pub const CONNECTIONS: &str = "dataway_ingest_connections";
    pub const CONNECTIONS_MAX: &str = "dataway_ingest_connections_max";
    pub const SINKER_POINTS: &str = "dataway_sinker_points_total";
    pub const SINKER_CALLS: &str = "dataway_sinker_calls_total";
    pub const SINKER_SECONDS_SUM: &str = "dataway_sinker_call_seconds_sum";
    pub const SINKER_SECONDS_COUNT: &str = "dataway_sinker_call_seconds_count";
    pub const SINKER_RELOADS: &str = "dataway_sinker_reloads_total";
    pub const SINKER_INFO: &str = "dataway_sinker_plugin_info";
    pub const SINKER_QUARANTINED: &str = "dataway_sinker_quarantined";
}

/// A counter: its value now and its rate per second since the previous scrape (none on the
/// first scrape, or when the counter went down: the daemon restarted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counter {
    pub total: f64,
    pub rate: Option<f64>,
}

/// Points of one category.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryRow {
    pub name: String,
    /// Accepted by ingest.
    pub received: Counter,
    /// Delivered (a 2xx answer, or written to a `file://` directory), counted once per
    /// endpoint that took them.
    pub sent: Counter,
    /// Sends that failed (any other answer, or none).
    pub failed: Counter,
    /// Given up on (`dataway_dropped_points_total`, every reason).
    pub dropped: Counter,
}

/// One endpoint (its URL, token redacted, as the daemon labels it).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    pub label: String,
    /// Batches waiting in its queue.
    pub queue: f64,
    pub failcache_records: f64,
    pub failcache_bytes: f64,
    /// Points the WAL holds for it (the fail-cache could not take them).
    pub wal_held: f64,
    /// Points delivered / failed, when the daemon counts them per endpoint
    /// (`dataway_endpoint_points_total`; older daemons only count per category).
    pub sent: Option<Counter>,
    pub failed: Option<Counter>,
    /// Attempts after the first, when the daemon exports `dataway_retries_total`.
    pub retries: Option<Counter>,
}

/// What a sinker is doing, as far as its metrics tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkerState {
    /// A plugin version is loaded and answering.
    Serving,
    /// Its plugin failed repeatedly and is skipped until a trial call succeeds.
    Quarantined,
    /// A reload failed (the result label, e.g. `init_error`) since the monitor started
    /// watching; the previous version keeps serving.
    ReloadFailed(String),
    /// No version loaded: the load failed (the last failing result) or there is no file.
    NoPlugin(Option<String>),
}

impl SinkerState {
    pub fn text(&self) -> String {
        match self {
            SinkerState::Serving => "serving".to_string(),
            SinkerState::Quarantined => "quarantined".to_string(),
            SinkerState::ReloadFailed(why) => format!("reload failed: {why}"),
            SinkerState::NoPlugin(Some(why)) => format!("load failed: {why}"),
            SinkerState::NoPlugin(None) => "no plugin".to_string(),
        }
    }
}

/// One sinker.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkerRow {
    pub name: String,
    pub state: SinkerState,
    /// Points offered to its condition.
    pub offered: Counter,
    /// Share of the offered points that matched: over the last interval when points were
    /// offered in it, else since the start; none before any point.
    pub match_ratio: Option<f64>,
    /// Mean time of one call into its plugin, over the same span as `match_ratio`.
    pub latency: Option<Duration>,
    /// Calls that failed (trap, timeout, out of memory, bad result, skipped while
    /// quarantined).
    pub call_errors: Counter,
}

/// Everything one view shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    /// Time between the two scrapes the rates come from (none on the first scrape).
    pub interval: Option<Duration>,
    pub categories: Vec<CategoryRow>,
    pub endpoints: Vec<EndpointRow>,
    pub sinkers: Vec<SinkerRow>,
    /// Bytes held of the memory budget, and the budget.
    pub budget_used: Option<f64>,
    pub budget: Option<f64>,
    pub connections: Option<f64>,
    pub connections_max: Option<f64>,
    pub wal_spilled_writes: Option<f64>,
    pub wal_spilled_bytes: Option<f64>,
    /// The WAL file's size on disk (0 with the WAL off).
    pub wal_disk_bytes: Option<f64>,
}

impl Model {
    pub fn failcache_records(&self) -> f64 {
        self.endpoints.iter().map(|e| e.failcache_records).sum()
    }

    pub fn failcache_bytes(&self) -> f64 {
        self.endpoints.iter().map(|e| e.failcache_bytes).sum()
    }

    pub fn wal_held(&self) -> f64 {
        self.endpoints.iter().map(|e| e.wal_held).sum()
    }
}

/// What the monitor knows: the latest model, and whether the last scrape failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Screen {
    /// The URL scraped.
    pub url: String,
    /// From the last scrape that worked (kept, marked stale, while the daemon is down).
    pub model: Option<Model>,
    /// Why the last scrape failed, if it did.
    pub error: Option<String>,
    /// Scrapes failed in a row.
    pub failures: u32,
    /// Refresh period, for the header.
    pub every: Duration,
}

/// A scrape at a time.
struct Scrape {
    at: Instant,
    samples: Vec<Sample>,
}

/// Turns successive scrapes into [`Screen`]s.
pub struct Tracker {
    screen: Screen,
    prev: Option<Scrape>,
    /// Per sinker, the last failing reload result seen to happen while watching (cleared
    /// by a successful reload).
    reload_failed: BTreeMap<String, String>,
}

impl Tracker {
    pub fn new(url: &str, every: Duration) -> Tracker {
        Tracker {
            screen: Screen {
                url: url.to_string(),
                every,
                ..Screen::default()
            },
            prev: None,
            reload_failed: BTreeMap::new(),
        }
    }

    pub fn screen(&self) -> &Screen {
        &self.screen
    }

    /// Takes the result of a scrape made at `at`.
    pub fn observe(&mut self, at: Instant, result: Result<Vec<Sample>, String>) -> &Screen {
        match result {
            Err(why) => {
                self.screen.error = Some(why);
                self.screen.failures = self.screen.failures.saturating_add(1);
            }
            Ok(samples) => {
                let cur = Scrape { at, samples };
                // Rates only over a gap with no failed scrape between: across an outage the
                // daemon may have restarted with counters that only look like progress.
                let prev = self.prev.take().filter(|_| self.screen.error.is_none());
                self.track_reloads(prev.as_ref(), &cur);
                let model = build(prev.as_ref(), &cur, &self.reload_failed);
                self.screen.model = Some(model);
                self.screen.error = None;
                self.screen.failures = 0;
                self.prev = Some(cur);
            }
        }
        &self.screen
    }

    /// Notes reload results that increased since the previous scrape: a failure marks the
    /// sinker, a success clears it.
    fn track_reloads(&mut self, prev: Option<&Scrape>, cur: &Scrape) {
        let Some(prev) = prev else { return };
        for s in cur
            .samples
            .iter()
            .filter(|s| s.name == names::SINKER_RELOADS)
        {
            let (Some(name), Some(result)) = (s.label("sinker"), s.label("result")) else {
                continue;
            };
            let before = value(&prev.samples, names::SINKER_RELOADS, |p| {
                p.label("sinker") == Some(name) && p.label("result") == Some(result)
            })
            .unwrap_or(0.0);
            if s.value > before {
                if result == "ok" || result == "removed" {
                    self.reload_failed.remove(name);
                } else {
                    self.reload_failed
                        .insert(name.to_string(), result.to_string());
                }
            }
        }
    }
}

/// The sum of the samples named `name` that `keep` keeps; none if there is no such sample.
fn value(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// The values of label `key` among the samples named any of `names`.
fn label_values<'a>(samples: &'a [Sample], names: &[&str], key: &str) -> BTreeSet<&'a str> {
    samples
        .iter()
        .filter(|s| names.contains(&s.name.as_str()))
        .filter_map(|s| s.label(key))
        .collect()
}

/// Whether a `status` label (an HTTP reason phrase, or a bare code) is a 2xx answer.
fn is_success(status: &str) -> bool {
    const PHRASES: [&str; 10] = [
        "OK",
        "Created",
        "Accepted",
        "Non Authoritative Information",
        "No Content",
        "Reset Content",
        "Partial Content",
        "Multi-Status",
        "Already Reported",
        "IM Used",
    ];
    PHRASES.contains(&status) || (status.len() == 3 && status.starts_with('2'))
}

fn build(prev: Option<&Scrape>, cur: &Scrape, reload_failed: &BTreeMap<String, String>) -> Model {
    let interval = prev.map(|p| cur.at.saturating_duration_since(p.at));
    let now = &cur.samples;
    // A counter of the selected samples, with its rate against the previous scrape.
    let counter = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> Counter {
        let total = value(now, name, keep).unwrap_or(0.0);
        let rate = prev.zip(interval).and_then(|(p, dt)| {
            let before = value(&p.samples, name, keep).unwrap_or(0.0);
            let secs = dt.as_secs_f64();
            (total >= before && secs > 0.0).then(|| (total - before) / secs)
        });
        Counter { total, rate }
    };
    let gauge = |name: &str, keep: &dyn Fn(&Sample) -> bool| value(now, name, keep);

    let names_seen = label_values(
        now,
        &[names::INGEST_POINTS, names::POINTS, names::DROPPED],
        "category",
    );
    let categories = names_seen
        .into_iter()
        .map(|c| {
            let cat = |s: &Sample| s.label("category") == Some(c);
            CategoryRow {
                name: c.to_string(),
                received: counter(names::INGEST_POINTS, &cat),
                sent: counter(names::POINTS, &|s| {
                    cat(s) && s.label("status").is_some_and(is_success)
                }),
                failed: counter(names::POINTS, &|s| {
                    cat(s) && !s.label("status").is_some_and(is_success)
                }),
                dropped: counter(names::DROPPED, &cat),
            }
        })
        // The daemon exports some series at zero from the start; a category with nothing
        // in it is noise on a small screen.
        .filter(|r| {
            [r.received, r.sent, r.failed, r.dropped]
                .iter()
                .any(|c| c.total != 0.0)
        })
        .collect();

    let labels = label_values(
        now,
        &[
            names::QUEUE,
            names::FAILCACHE_RECORDS,
            names::FAILCACHE_BYTES,
            names::WAL_HELD,
            names::ENDPOINT_POINTS,
            names::RETRIES,
        ],
        "endpoint",
    );
    let per_endpoint = now.iter().any(|s| s.name == names::ENDPOINT_POINTS);
    let has_retries = now.iter().any(|s| s.name == names::RETRIES);
    let endpoints = labels
        .into_iter()
        .map(|e| {
            let ep = |s: &Sample| s.label("endpoint") == Some(e);
            let g = |name| gauge(name, &ep).unwrap_or(0.0);
            EndpointRow {
                label: e.to_string(),
                queue: g(names::QUEUE),
                failcache_records: g(names::FAILCACHE_RECORDS),
                failcache_bytes: g(names::FAILCACHE_BYTES),
                wal_held: g(names::WAL_HELD),
                sent: per_endpoint.then(|| {
                    counter(names::ENDPOINT_POINTS, &|s| {
                        ep(s) && s.label("status").is_some_and(is_success)
                    })
                }),
                failed: per_endpoint.then(|| {
                    counter(names::ENDPOINT_POINTS, &|s| {
                        ep(s) && !s.label("status").is_some_and(is_success)
                    })
                }),
                retries: has_retries.then(|| counter(names::RETRIES, &ep)),
            }
        })
        .collect();

    let sinker_names = label_values(
        now,
        &[
            names::SINKER_POINTS,
            names::SINKER_CALLS,
            names::SINKER_RELOADS,
            names::SINKER_INFO,
            names::SINKER_QUARANTINED,
        ],
        "sinker",
    );
    let sinkers = sinker_names
        .into_iter()
        .map(|n| {
            let sk = |s: &Sample| s.label("sinker") == Some(n);
            let offered = counter(names::SINKER_POINTS, &sk);
            let matched = counter(names::SINKER_POINTS, &|s| {
                sk(s) && s.label("result") == Some("matched")
            });
            let calls = counter(names::SINKER_SECONDS_COUNT, &sk);
            let seconds = counter(names::SINKER_SECONDS_SUM, &sk);
            let span = |c: Counter| c.rate.zip(interval).map(|(r, dt)| r * dt.as_secs_f64());
            // Over the last interval if it saw any, else since the start.
            let ratio = |part: Counter, whole: Counter| match (span(part), span(whole)) {
                (Some(p), Some(w)) if w > 0.0 => Some(p / w),
                _ if whole.total > 0.0 => Some(part.total / whole.total),
                _ => None,
            };
            let state = if gauge(names::SINKER_QUARANTINED, &sk).unwrap_or(0.0) >= 1.0 {
                SinkerState::Quarantined
            } else if gauge(names::SINKER_INFO, &sk).unwrap_or(0.0) < 1.0 {
                let last_failure = now
                    .iter()
                    .filter(|s| s.name == names::SINKER_RELOADS && sk(s) && s.value > 0.0)
                    .filter_map(|s| s.label("result"))
                    .find(|r| *r != "ok" && *r != "removed");
                SinkerState::NoPlugin(
                    reload_failed
                        .get(n)
                        .cloned()
                        .or(last_failure.map(str::to_string)),
                )
            } else if let Some(why) = reload_failed.get(n) {
                SinkerState::ReloadFailed(why.clone())
            } else {
                SinkerState::Serving
            };
            SinkerRow {
                name: n.to_string(),
                state,
                offered,
                match_ratio: ratio(matched, offered),
                latency: ratio(seconds, calls)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64),
                call_errors: counter(names::SINKER_CALLS, &|s| {
                    sk(s) && s.label("result").is_some_and(|r| r != "ok")
                }),
            }
        })
        .collect();

    let all = |_: &Sample| true;
    Model {
        interval,
        categories,
        endpoints,
        sinkers,
        budget_used: gauge(names::BUDGET_USED, &all),
        budget: gauge(names::BUDGET, &all),
        connections: gauge(names::CONNECTIONS, &all),
        connections_max: gauge(names::CONNECTIONS_MAX, &all),
        wal_spilled_writes: gauge(names::WAL_SPILLED_WRITES, &all),
        wal_spilled_bytes: gauge(names::WAL_SPILLED_BYTES, &all),
        wal_disk_bytes: gauge(names::WAL_DISK, &all),
    }
}

#[cfg(test)]
mod tests {
    use super::super::scrape::parse;
    use super::*;

    /// A tracker fed `texts` at the given seconds after a fixed start.
    fn track(scrapes: &[(f64, Result<&str, &str>)]) -> Screen {
        let t0 = Instant::now();
        let mut t = Tracker::new("http://d/metrics", Duration::from_secs(1));
        for (at, r) in scrapes {
            let r = r.map(|text| parse(text).unwrap()).map_err(str::to_string);
            t.observe(t0 + Duration::from_secs_f64(*at), r);
        }
        t.screen().clone()
    }

    fn model(scrapes: &[(f64, Result<&str, &str>)]) -> Model {
        track(scrapes).model.expect("a scrape worked")
    }

    const T1: &str = r#"
dataway_ingest_points_total{category="metric"} 100
dataway_ingest_points_total{category="logging"} 0
datakit_io_dataway_point_total{category="metric",status="OK"} 90
datakit_io_dataway_point_total{category="metric",status="unknown"} 5
datakit_io_dataway_not_sink_point_total{category="network"} 0
dataway_queue_batches{endpoint="http://a?token=tkn_***"} 3
dataway_failcache_records{endpoint="http://a?token=tkn_***"} 2
dataway_failcache_disk_bytes{endpoint="http://a?token=tkn_***"} 2048
dataway_queue_batches{endpoint="file:///out"} 0
dataway_wal_held_points{endpoint="http://a?token=tkn_***",category="metric"} 7
dataway_memory_budget_bytes 1000
dataway_memory_budget_used_bytes{part="reading"} 100
dataway_memory_budget_used_bytes{part="points"} 150
"#;

    const T2: &str = r#"
dataway_ingest_points_total{category="metric"} 400
dataway_ingest_points_total{category="logging"} 0
datakit_io_dataway_point_total{category="metric",status="OK"} 290
datakit_io_dataway_point_total{category="metric",status="unknown"} 5
datakit_io_dataway_point_total{category="metric",status="Bad Request"} 15
dataway_dropped_points_total{category="metric",reason="rejected"} 15
dataway_queue_batches{endpoint="http://a?token=tkn_***"} 1
dataway_failcache_records{endpoint="http://a?token=tkn_***"} 2
dataway_failcache_disk_bytes{endpoint="http://a?token=tkn_***"} 2048
dataway_queue_batches{endpoint="file:///out"} 0
"#;

    #[test]
    fn rates_are_deltas_over_the_time_between_scrapes() {
        let m = model(&[(10.0, Ok(T1)), (12.0, Ok(T2))]);
        assert_eq!(m.interval, Some(Duration::from_secs(2)));
        // logging's series are all zero: not shown.
        assert_eq!(m.categories.len(), 1, "{:?}", m.categories);
        let c = &m.categories[0];
        assert_eq!(c.name, "metric");
        assert_eq!(
            c.received,
            Counter {
                total: 400.0,
                rate: Some(150.0)
            }
        );
        assert_eq!(c.sent.rate, Some(100.0));
        assert_eq!(c.sent.total, 290.0);
        // "unknown" (no answer) and "Bad Request" are failures; 5 -> 20 over 2 s.
        assert_eq!(c.failed.total, 20.0);
        assert_eq!(c.failed.rate, Some(7.5));
        assert_eq!(
            c.dropped,
            Counter {
                total: 15.0,
                rate: Some(7.5)
            }
        );
    }

    #[test]
    fn the_first_scrape_has_totals_but_no_rates() {
        let m = model(&[(0.0, Ok(T1))]);
        assert_eq!(m.interval, None);
        assert_eq!(m.categories[0].received.total, 100.0);
        assert_eq!(m.categories[0].received.rate, None);
        assert_eq!(m.budget_used, Some(250.0));
        assert_eq!(m.budget, Some(1000.0));
        let a = &m.endpoints[1];
        assert_eq!(a.label, "http://a?token=tkn_***");
        assert_eq!(
            (a.queue, a.failcache_records, a.failcache_bytes),
            (3.0, 2.0, 2048.0)
        );
        assert_eq!(a.wal_held, 7.0);
        assert_eq!(m.endpoints[0].label, "file:///out");
        // This daemon exports no per-endpoint point counts: none, not zero.
        assert_eq!(a.sent, None);
        assert_eq!(a.retries, None);
        assert_eq!((m.failcache_records(), m.wal_held()), (2.0, 7.0));
    }

    #[test]
    fn a_counter_that_went_down_has_no_rate() {
        // The daemon restarted between the scrapes: no negative rate, no made-up one.
        let m = model(&[(0.0, Ok(T2)), (1.0, Ok(T1))]);
        assert_eq!(m.categories[0].received.rate, None);
        assert_eq!(m.categories[0].received.total, 100.0);
    }

    #[test]
    fn a_failed_scrape_keeps_the_last_model_and_breaks_the_rate() {
        let s = track(&[(0.0, Ok(T1)), (1.0, Err("refused")), (2.0, Err("refused"))]);
        assert_eq!(s.error.as_deref(), Some("refused"));
        assert_eq!(s.failures, 2);
        assert_eq!(
            s.model.as_ref().unwrap().categories[0].received.total,
            100.0
        );
        // Back up: the gap spanned an outage, so no rate until the next scrape.
        let s = track(&[(0.0, Ok(T1)), (1.0, Err("refused")), (2.0, Ok(T2))]);
        assert_eq!((s.error, s.failures), (None, 0));
        assert_eq!(s.model.as_ref().unwrap().categories[0].received.rate, None);
        let s = track(&[(0.0, Ok(T1)), (1.0, Err("x")), (2.0, Ok(T1)), (4.0, Ok(T2))]);
        assert_eq!(s.model.unwrap().categories[0].received.rate, Some(150.0));
    }

    #[test]
    fn per_endpoint_counts_and_retries_when_the_daemon_has_them() {
        let a = r#"
dataway_endpoint_points_total{endpoint="e",category="metric",status="OK"} 10
dataway_endpoint_points_total{endpoint="e",category="logging",status="OK"} 10
dataway_endpoint_points_total{endpoint="e",category="metric",status="Internal Server Error"} 1
dataway_retries_total{endpoint="e"} 4
"#;
        let b = r#"
dataway_endpoint_points_total{endpoint="e",category="metric",status="OK"} 30
dataway_endpoint_points_total{endpoint="e",category="logging",status="OK"} 30
dataway_endpoint_points_total{endpoint="e",category="metric",status="Internal Server Error"} 5
dataway_retries_total{endpoint="e"} 12
"#;
        let m = model(&[(0.0, Ok(a)), (4.0, Ok(b))]);
        let e = &m.endpoints[0];
        assert_eq!(e.sent.unwrap().rate, Some(10.0));
        assert_eq!(e.failed.unwrap().rate, Some(1.0));
        assert_eq!(e.retries.unwrap().rate, Some(2.0));
    }

    fn sinker(text: &str) -> String {
        text.replace('\'', "\"")
    }

    #[test]
    fn sinker_match_rate_latency_and_errors_over_the_interval() {
        let a = sinker(
            "dataway_sinker_points_total{result='matched',sinker='s'} 10
             dataway_sinker_points_total{result='not_matched',sinker='s'} 90
             dataway_sinker_call_seconds_sum{sinker='s'} 1.0
             dataway_sinker_call_seconds_count{sinker='s'} 10
             dataway_sinker_calls_total{result='ok',sinker='s'} 10
             dataway_sinker_plugin_info{sha256='ab',sinker='s'} 1
             dataway_sinker_quarantined{sinker='s'} 0
             dataway_sinker_reloads_total{result='ok',sinker='s'} 1",
        );
        let b =
            a.replace(
                "\"matched\",sinker=\"s\"} 10",
                "\"matched\",sinker=\"s\"} 40",
            )
            .replace(
                "not_matched\",sinker=\"s\"} 90",
                "not_matched\",sinker=\"s\"} 100",
            )
            .replace("_sum{sinker=\"s\"} 1.0", "_sum{sinker=\"s\"} 1.02")
            .replace("_count{sinker=\"s\"} 10", "_count{sinker=\"s\"} 20")
            .replace(
                "result=\"ok\",sinker=\"s\"} 10",
                "result=\"ok\",sinker=\"s\"} 18",
            ) + "\ndataway_sinker_calls_total{result=\"trap\",sinker=\"s\"} 2";
        let m = model(&[(0.0, Ok(&a)), (2.0, Ok(&b))]);
        let s = &m.sinkers[0];
        assert_eq!(s.name, "s");
        assert_eq!(s.state, SinkerState::Serving);
        assert_eq!(s.offered.rate, Some(20.0));
        // Over the interval: 30 of 40 matched (since start it would be 40 of 140).
        assert_eq!(s.match_ratio, Some(0.75));
        // 0.02 s over 10 calls.
        let ms = s.latency.unwrap().as_secs_f64() * 1e3;
        assert!((ms - 2.0).abs() < 1e-6, "{ms}");
        assert_eq!(s.call_errors.rate, Some(1.0));
        // An idle interval falls back on the totals since the start.
        let m = model(&[(0.0, Ok(&b)), (1.0, Ok(&b))]);
        assert_eq!(m.sinkers[0].match_ratio, Some(40.0 / 140.0));
    }

    #[test]
    fn sinker_states() {
        let serving = sinker(
            "dataway_sinker_plugin_info{sha256='ab',sinker='s'} 1
             dataway_sinker_quarantined{sinker='s'} 0
             dataway_sinker_reloads_total{result='ok',sinker='s'} 1",
        );
        let state = |scrapes: &[(f64, Result<&str, &str>)]| model(scrapes).sinkers[0].state.clone();
        assert_eq!(state(&[(0.0, Ok(&serving))]), SinkerState::Serving);

        let quarantined =
            serving.replace("quarantined{sinker=\"s\"} 0", "quarantined{sinker=\"s\"} 1");
        assert_eq!(state(&[(0.0, Ok(&quarantined))]), SinkerState::Quarantined);

        // A reload that failed while watching: the old version still serves.
        let failed = format!(
            "{serving}\ndataway_sinker_reloads_total{{result=\"init_error\",sinker=\"s\"}} 1"
        );
        assert_eq!(
            state(&[(0.0, Ok(&serving)), (1.0, Ok(&failed))]),
            SinkerState::ReloadFailed("init_error".into())
        );
        // ... and stays so on the next scrape, until a reload succeeds.
        assert_eq!(
            state(&[(0.0, Ok(&serving)), (1.0, Ok(&failed)), (2.0, Ok(&failed))]),
            SinkerState::ReloadFailed("init_error".into())
        );
        let fixed = failed.replace(
            "result=\"ok\",sinker=\"s\"} 1",
            "result=\"ok\",sinker=\"s\"} 2",
        );
        assert_eq!(
            state(&[(0.0, Ok(&serving)), (1.0, Ok(&failed)), (2.0, Ok(&fixed))]),
            SinkerState::Serving
        );
        // A failure from before the monitor started says nothing about now.
        assert_eq!(state(&[(0.0, Ok(&failed))]), SinkerState::Serving);

        // No version loaded.
        let none = sinker(
            "dataway_sinker_quarantined{sinker='s'} 0
             dataway_sinker_reloads_total{result='wrong_world',sinker='s'} 1",
        );
        assert_eq!(
            state(&[(0.0, Ok(&none))]),
            SinkerState::NoPlugin(Some("wrong_world".into()))
        );
        let missing = sinker("dataway_sinker_quarantined{sinker='s'} 0");
        assert_eq!(state(&[(0.0, Ok(&missing))]), SinkerState::NoPlugin(None));
    }
}
