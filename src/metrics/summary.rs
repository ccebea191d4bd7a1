//! A Prometheus *summary* collector with a label vector: [`SummaryVec`].
//!
//! # Why this exists
//!
//! The `prometheus` crate has counters, gauges and histograms, but no summary type. DataKit
//! exports some of its dataway metrics as summaries (for example
//! `datakit_io_dataway_api_latency{api,status}` and `datakit_io_flush_failcache_bytes{category}`),
//! and the dashboards built on them read the `quantile="0.5"`, `"0.9"` and `"0.99"` series as
//! well as `_sum` and `_count`. So we build one here, on top of the crate's [`Collector`] trait
//! and its plain (non-protobuf) data model.
//!
//! DataKit itself declares these summaries without `Objectives`; since `client_golang` 1.0 that
//! means a summary with *no* quantiles, so DataKit in practice exports only `_sum` and `_count`.
//! That is a DataKit bug which we deliberately do not copy: every summary here has the
//! objectives DataKit evidently meant, the old `client_golang` defaults
//! `{0.5: 0.05, 0.9: 0.01, 0.99: 0.001}`.
//!
//! # How it works (the same way as Go's `client_golang`)
//!
//! * `_sum` and `_count` cover every observation since start-up.
//! * Quantiles cover a sliding window of `max_age` (10 minutes by default). The window is kept as
//!   `age_buckets` (5 by default) quantile streams. Every observation goes into all of them; every
//!   `max_age / age_buckets` the oldest stream is cleared and becomes the newest. Queries read the
//!   oldest stream, which has seen the longest stretch of time (between
//!   `max_age - max_age / age_buckets` and `max_age`). Rotation is checked lazily, on
//!   [`SummaryVec::observe`] and on collection; there is no background thread.
//! * A quantile whose window holds no observation is exported as `NaN`, as Go does.
//! * The streams use the CKMS algorithm (`quantiles::ckms`, the same family Go's `perks` uses).
//!   That crate implements the *fully biased* invariant, whose rank error at quantile φ is at
//!   most ε·φ·n; with ε = 0.001 (the smallest objective error) every objective is met.
//! * `NaN` observations are dropped: they would make `_sum` `NaN` for the rest of the process'
//!   life and break the ordering the quantile streams rely on.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use quantiles::ckms::CKMS;

/// The quantiles every summary exports, with their allowed rank errors, exactly as the old Go
/// `client_golang` `DefObjectives`.
pub const OBJECTIVES: [(f64, f64); 3] = [(0.5, 0.05), (0.9, 0.01), (0.99, 0.001)];

/// Go's `DefMaxAge`: how far back the quantiles look.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_mins(10);

/// Go's `DefAgeBuckets`: in how many steps the quantile window slides.
pub const DEFAULT_AGE_BUCKETS: u32 = 5;

/// The label name the exposition format reserves for quantiles.
const QUANTILE_LABEL: &str = "quantile";

/// CKMS error parameter: the smallest objective error, so that every objective is honoured.
fn ckms_error() -> f64 {
    OBJECTIVES
        .iter()
        .map(|&(_, e)| e)
        .fold(f64::INFINITY, f64::min)
}

/// A family of summaries, one per combination of label values, exported as a single Prometheus
/// `SUMMARY` metric family with quantiles 0.5, 0.9 and 0.99 plus `_sum` and `_count`.
///
/// Cloning is cheap and every clone feeds the same data. Register one clone in a
/// [`prometheus::Registry`] and observe through any other.
#[derive(Clone)]
pub struct SummaryVec {
    inner: Arc<Inner>,
}

/// State shared by all clones of a [`SummaryVec`].
struct Inner {
    desc: Desc,
    /// Length of one age bucket: `max_age / age_buckets`.
    stream_duration: Duration,
    age_buckets: usize,
    error: f64,
    /// Hasher for label values; series are keyed by that hash and then compared in full.
    hasher: RandomState,
    series: RwLock<HashMap<u64, Vec<Arc<Series>>>>,
    /// Whether a wrong number of label values has already been reported.
    warned_arity: AtomicBool,
    clock: Clock,
}

/// Where a summary reads the time: the system's monotonic clock, or in unit tests one the
/// test advances, so the sliding window is tested without sleeping.
#[derive(Clone)]
enum Clock {
    System,
    #[cfg(test)]
    Manual(Arc<Mutex<Instant>>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(test)]
            Clock::Manual(t) => *t.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// One label set's summary.
struct Series {
    /// Label values in `label_names` order (the key).
    values: Vec<String>,
    /// Label pairs sorted by name, ready for export.
    label_pairs: Vec<LabelPair>,
    state: Mutex<SeriesState>,
}

/// The mutable part of one label set's summary.
struct SeriesState {
    count: u64,
    sum: f64,
    /// `age_buckets` streams; `None` is an empty stream (saves the CKMS's allocation while a
    /// label set is idle).
    streams: Vec<Option<CKMS<f64>>>,
    /// Index of the oldest stream, the one queries read.
    head: usize,
    /// When the head stream gets cleared and the next one becomes the head.
    head_expires: Instant,
}

impl SummaryVec {
    /// Makes a summary vector called `name` with help text `help` and the variable labels
    /// `label_names`, with Go's default window: quantiles over the last 10 minutes, sliding in 5
    /// steps.
    ///
    /// # Errors
    ///
    /// Fails if the name, help or a label name is invalid, a label name repeats, or a label is
    /// called `quantile`.
    pub fn new(name: &str, help: &str, label_names: &[&str]) -> prometheus::Result<Self> {
        Self::with_window(
            name,
            help,
            label_names,
            DEFAULT_MAX_AGE,
            DEFAULT_AGE_BUCKETS,
        )
    }

    /// Like [`SummaryVec::new`], with an explicit quantile window: quantiles cover roughly the
    /// last `max_age`, and the window slides in `age_buckets` steps.
    ///
    /// # Errors
    ///
    /// As [`SummaryVec::new`], and also if `age_buckets` is 0 or `max_age / age_buckets` is
    /// zero.
    pub fn with_window(
        name: &str,
        help: &str,
        label_names: &[&str],
        max_age: Duration,
        age_buckets: u32,
    ) -> prometheus::Result<Self> {
        Self::with_clock(name, help, label_names, max_age, age_buckets, Clock::System)
    }

    fn with_clock(
        name: &str,
        help: &str,
        label_names: &[&str],
        max_age: Duration,
        age_buckets: u32,
        clock: Clock,
    ) -> prometheus::Result<Self> {
        if label_names.contains(&QUANTILE_LABEL) {
            return Err(prometheus::Error::Msg(format!(
                "summary {name}: label name \"{QUANTILE_LABEL}\" is reserved"
            )));
        }
        if age_buckets == 0 {
            return Err(prometheus::Error::Msg(format!(
                "summary {name}: age_buckets must be at least 1"
            )));
        }
        let stream_duration = max_age / age_buckets;
        if stream_duration.is_zero() {
            return Err(prometheus::Error::Msg(format!(
                "summary {name}: max_age {max_age:?} too short for {age_buckets} age buckets"
            )));
        }
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            label_names.iter().map(|&n| n.to_owned()).collect(),
            HashMap::new(),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                desc,
                stream_duration,
                age_buckets: age_buckets as usize,
                error: ckms_error(),
                hasher: RandomState::new(),
                series: RwLock::new(HashMap::new()),
                warned_arity: AtomicBool::new(false),
                clock,
            }),
        })
    }

    /// Records `v` for the label set `label_values` (given in `label_names` order).
    ///
    /// A wrong number of label values is a programming error: the observation is dropped and a
    /// warning logged (once per summary vector). `NaN` is dropped silently.
    pub fn observe(&self, label_values: &[&str], v: f64) {
        let inner = &*self.inner;
        if label_values.len() != inner.desc.variable_labels.len() {
            if !inner.warned_arity.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = %inner.desc.fq_name,
                    expected = inner.desc.variable_labels.len(),
                    got = label_values.len(),
                    "summary observed with the wrong number of label values; dropping such \
                     observations"
                );
            }
            return;
        }
        if v.is_nan() {
            return;
        }
        let series = inner.series_for(label_values);
        let now = inner.clock.now();
        let mut state = series.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.rotate(now, inner.stream_duration);
        state.count += 1;
        state.sum += v;
        for stream in &mut state.streams {
            stream
                .get_or_insert_with(|| CKMS::new(inner.error))
                .insert(v);
        }
    }
}

impl Inner {
    fn hash_values<S: AsRef<str>>(&self, values: &[S]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            v.as_ref().hash(&mut h);
        }
        h.finish()
    }

    /// The series for `values`, made on first use.
    fn series_for(&self, values: &[&str]) -> Arc<Series> {
        let hash = self.hash_values(values);
        let matches = |s: &&Arc<Series>| {
            s.values
                .iter()
                .map(String::as_str)
                .eq(values.iter().copied())
        };
        {
            let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = map.get(&hash).and_then(|b| b.iter().find(matches)) {
                return Arc::clone(s);
            }
        }
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = map.entry(hash).or_default();
        if let Some(s) = bucket.iter().find(matches) {
            return Arc::clone(s);
        }
        let series = Arc::new(self.new_series(values));
        bucket.push(Arc::clone(&series));
        series
    }

    fn new_series(&self, values: &[&str]) -> Series {
        let mut label_pairs: Vec<LabelPair> = self
            .desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, &value)| {
                let mut lp = LabelPair::default();
                lp.set_name(name.clone());
                lp.set_value(value.to_owned());
                lp
            })
            .collect();
        // Same order as the crate's own vectors (`make_label_pairs`): sorted by label name.
        label_pairs.sort();
        Series {
            values: values.iter().map(|&v| v.to_owned()).collect(),
            label_pairs,
            state: Mutex::new(SeriesState {
                count: 0,
                sum: 0.0,
                streams: (0..self.age_buckets).map(|_| None).collect(),
                head: 0,
                head_expires: self.clock.now() + self.stream_duration,
            }),
        }
    }
}

impl SeriesState {
    /// Clears the streams whose time is up, as Go's `maybeRotateStreams`: each expiry clears the
    /// head (oldest) stream and makes the next one the head.
    fn rotate(&mut self, now: Instant, stream_duration: Duration) {
        if now < self.head_expires {
            return;
        }
        let expiries = 1 + (now - self.head_expires).as_nanos() / stream_duration.as_nanos();
        let buckets = self.streams.len();
        let clears = usize::try_from(expiries).map_or(buckets, |e| e.min(buckets));
        for _ in 0..clears {
            self.streams[self.head] = None;
            self.head = (self.head + 1) % buckets;
        }
        // Keep expiries on the original grid, like Go; if that overflows, restart the grid.
        let advance = u64::try_from(stream_duration.as_nanos().saturating_mul(expiries))
            .ok()
            .map(Duration::from_nanos)
            .and_then(|d| self.head_expires.checked_add(d));
        self.head_expires = advance.unwrap_or(now + stream_duration);
    }

    fn to_summary(&self) -> Summary {
        let head = self.streams[self.head].as_ref();
        let quantiles = OBJECTIVES
            .iter()
            .map(|&(q, _)| {
                let mut quantile = Quantile::default();
                quantile.set_quantile(q);
                quantile.set_value(head.and_then(|s| s.query(q)).map_or(f64::NAN, |(_, v)| v));
                quantile
            })
            .collect();
        let mut summary = Summary::default();
        summary.set_sample_count(self.count);
        summary.set_sample_sum(self.sum);
        summary.set_quantile(quantiles);
        summary
    }
}

impl Collector for SummaryVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let inner = &*self.inner;
        let mut series: Vec<Arc<Series>> = {
            let map = inner.series.read().unwrap_or_else(PoisonError::into_inner);
            map.values().flatten().cloned().collect()
        };
        series.sort_by(|a, b| a.values.cmp(&b.values));
        let now = inner.clock.now();
        let metrics = series
            .iter()
            .map(|s| {
                let summary = {
                    let mut state = s.state.lock().unwrap_or_else(PoisonError::into_inner);
                    state.rotate(now, inner.stream_duration);
                    state.to_summary()
                };
                let mut metric = Metric::from_label(s.label_pairs.clone());
                metric.set_summary(summary);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(inner.desc.fq_name.clone());
        family.set_help(inner.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(metrics);
        vec![family]
    }
}

impl std::fmt::Debug for SummaryVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SummaryVec")
            .field("name", &self.inner.desc.fq_name)
            .field("labels", &self.inner.desc.variable_labels)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    fn encode(r: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn latency() -> SummaryVec {
        SummaryVec::new(
            "datakit_io_dataway_api_latency",
            "API request latency (ms)",
            &["api", "status"],
        )
        .unwrap()
    }

    /// The exported summary of the label set `values`.
    fn summary_of(s: &SummaryVec, values: &[&str]) -> Summary {
        let families = s.collect();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].get_field_type(), MetricType::SUMMARY);
        families[0]
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label()
                    .iter()
                    .map(|l| l.value())
                    .eq(values.iter().copied())
            })
            .expect("label set exported")
            .get_summary()
            .clone()
    }

    #[test]
    fn text_exposition() {
        let s = latency();
        let r = Registry::new();
        r.register(Box::new(s.clone())).unwrap();
        for v in [10.0, 20.0, 30.0] {
            s.observe(&["/v1/write/metric", "OK"], v);
        }
        let text = encode(&r);
        let want = "\
# HELP datakit_io_dataway_api_latency API request latency (ms)
# TYPE datakit_io_dataway_api_latency summary
datakit_io_dataway_api_latency{api=\"/v1/write/metric\",status=\"OK\",quantile=\"0.5\"} 20
datakit_io_dataway_api_latency{api=\"/v1/write/metric\",status=\"OK\",quantile=\"0.9\"} 30
datakit_io_dataway_api_latency{api=\"/v1/write/metric\",status=\"OK\",quantile=\"0.99\"} 30
datakit_io_dataway_api_latency_sum{api=\"/v1/write/metric\",status=\"OK\"} 60
datakit_io_dataway_api_latency_count{api=\"/v1/write/metric\",status=\"OK\"} 3
";
        assert_eq!(text, want);
    }

    #[test]
    fn labels_are_sorted_by_name() {
        let s = SummaryVec::new("x_bytes", "help", &["status", "api"]).unwrap();
        s.observe(&["OK", "/v1/write/logging"], 1.0);
        let families = s.collect();
        let labels: Vec<(&str, &str)> = families[0].get_metric()[0]
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert_eq!(labels, [("api", "/v1/write/logging"), ("status", "OK")]);
    }

    #[test]
    fn no_labels() {
        let s = SummaryVec::new("plain", "help", &[]).unwrap();
        s.observe(&[], 5.0);
        let r = Registry::new();
        r.register(Box::new(s)).unwrap();
        let text = encode(&r);
        assert!(text.contains("plain{quantile=\"0.5\"} 5\n"), "{text}");
        assert!(text.contains("plain_sum 5\nplain_count 1\n"), "{text}");
    }

    #[test]
    fn quantiles_meet_objectives() {
        let s = latency();
        // Shuffled deterministically so the streams see more than the monotone case.
        let n = 1000u64;
        for i in 0..n {
            let v = (i * 7919) % n + 1;
            s.observe(&["/v1/write/metric", "OK"], v as f64);
        }
        let summary = summary_of(&s, &["/v1/write/metric", "OK"]);
        assert_eq!(summary.sample_count(), n);
        assert_eq!(summary.sample_sum(), (n * (n + 1) / 2) as f64);
        let got = summary.get_quantile();
        assert_eq!(got.len(), OBJECTIVES.len());
        for (q, &(want_q, eps)) in got.iter().zip(&OBJECTIVES) {
            assert_eq!(q.quantile(), want_q);
            // Values are 1..=n, so a value is its own rank.
            let (lo, hi) = ((want_q - eps) * n as f64, (want_q + eps) * n as f64);
            assert!(
                (lo..=hi).contains(&q.value()),
                "quantile {want_q}: {} not in [{lo}, {hi}]",
                q.value()
            );
        }
    }

    #[test]
    fn quantiles_meet_objectives_monotone() {
        let s = latency();
        let n = 1000u64;
        for v in 1..=n {
            s.observe(&["a", "b"], v as f64);
        }
        for (q, &(want_q, eps)) in summary_of(&s, &["a", "b"])
            .get_quantile()
            .iter()
            .zip(&OBJECTIVES)
        {
            let (lo, hi) = ((want_q - eps) * n as f64, (want_q + eps) * n as f64);
            assert!((lo..=hi).contains(&q.value()), "{want_q}: {}", q.value());
        }
    }

    #[test]
    fn label_sets_are_kept_apart() {
        let s = latency();
        for v in [1.0, 2.0, 3.0] {
            s.observe(&["/v1/write/metric", "OK"], v);
        }
        s.observe(&["/v1/write/metric", "Bad Request"], 1000.0);
        s.observe(&["/v1/write/logging", "OK"], 0.5);
        s.observe(&["/v1/write/logging", "OK"], 0.25);

        let families = s.collect();
        assert_eq!(families[0].get_metric().len(), 3);

        let ok = summary_of(&s, &["/v1/write/metric", "OK"]);
        assert_eq!((ok.sample_count(), ok.sample_sum()), (3, 6.0));
        assert_eq!(ok.get_quantile()[2].value(), 3.0);

        let bad = summary_of(&s, &["/v1/write/metric", "Bad Request"]);
        assert_eq!((bad.sample_count(), bad.sample_sum()), (1, 1000.0));
        assert!(bad.get_quantile().iter().all(|q| q.value() == 1000.0));

        let log = summary_of(&s, &["/v1/write/logging", "OK"]);
        assert_eq!((log.sample_count(), log.sample_sum()), (2, 0.75));
    }

    /// A clock that moves only when the test advances it.
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    /// A summary with the default window (10 minutes in 5 steps) on a manual clock.
    fn on_manual_clock(name: &str, labels: &[&str]) -> (SummaryVec, ManualClock) {
        let t = Arc::new(Mutex::new(Instant::now()));
        let s = SummaryVec::with_clock(
            name,
            "help",
            labels,
            DEFAULT_MAX_AGE,
            DEFAULT_AGE_BUCKETS,
            Clock::Manual(t.clone()),
        )
        .unwrap();
        (s, ManualClock(t))
    }

    fn quantile_values(s: &Summary) -> Vec<f64> {
        s.get_quantile().iter().map(Quantile::value).collect()
    }

    const NS: Duration = Duration::from_nanos(1);
    const MIN: Duration = Duration::from_mins(1);

    #[test]
    fn exact_quantiles_of_small_samples() {
        // Too few observations for any rank error: each quantile is one exact observation.
        let s = latency();
        for v in [7.0, 3.0, 10.0, 1.0, 5.0, 9.0, 2.0, 8.0, 6.0, 4.0] {
            s.observe(&["ten", "OK"], v);
        }
        let ten = summary_of(&s, &["ten", "OK"]);
        assert_eq!(quantile_values(&ten), [5.0, 9.0, 10.0]);
        assert_eq!((ten.sample_count(), ten.sample_sum()), (10, 55.0));

        for v in [8.5, 0.25] {
            s.observe(&["two", "OK"], v);
        }
        let two = summary_of(&s, &["two", "OK"]);
        assert_eq!(quantile_values(&two), [0.25, 8.5, 8.5]);
        assert_eq!((two.sample_count(), two.sample_sum()), (2, 8.75));

        s.observe(&["one", "OK"], 1234.5);
        let one = summary_of(&s, &["one", "OK"]);
        assert_eq!(quantile_values(&one), [1234.5; 3]);
        assert_eq!((one.sample_count(), one.sample_sum()), (1, 1234.5));
    }

    #[test]
    fn window_expires_quantiles_but_not_count() {
        let (s, clock) = on_manual_clock("datakit_io_flush_failcache_bytes", &["category"]);
        s.observe(&["metric"], 100.0);
        s.observe(&["metric"], 300.0);
        // Seen for exactly max_age (10 minutes), then gone from the quantiles.
        clock.advance(10 * MIN - NS);
        let before = summary_of(&s, &["metric"]);
        assert_eq!(quantile_values(&before), [100.0, 300.0, 300.0]);
        clock.advance(NS);
        let after = summary_of(&s, &["metric"]);
        assert!(quantile_values(&after).iter().all(|v| v.is_nan()));
        assert_eq!((after.sample_count(), after.sample_sum()), (2, 400.0));

        // Observations after expiry are seen again.
        s.observe(&["metric"], 7.0);
        let again = summary_of(&s, &["metric"]);
        assert_eq!(quantile_values(&again), [7.0; 3]);
        assert_eq!((again.sample_count(), again.sample_sum()), (3, 407.0));

        let r = Registry::new();
        r.register(Box::new(s)).unwrap();
        clock.advance(10 * MIN);
        let text = encode(&r);
        assert!(
            text.contains(
                "datakit_io_flush_failcache_bytes{category=\"metric\",quantile=\"0.5\"} NaN\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("datakit_io_flush_failcache_bytes_count{category=\"metric\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn window_slides_one_bucket_at_a_time() {
        let (s, clock) = on_manual_clock("slide", &[]);
        let q = |s: &SummaryVec| quantile_values(&summary_of(s, &[]));
        s.observe(&[], 1.0);
        clock.advance(3 * MIN);
        s.observe(&[], 2.0);
        // Buckets expire every 2 minutes; the oldest one (read by queries) has both.
        assert_eq!(q(&s), [1.0, 2.0, 2.0]);
        clock.advance(7 * MIN - NS);
        assert_eq!(q(&s), [1.0, 2.0, 2.0]);
        // At 10 minutes the first observation leaves; the second, made after the first
        // expiry, is in the bucket that becomes the oldest.
        clock.advance(NS);
        assert_eq!(q(&s), [2.0; 3]);
        clock.advance(2 * MIN - NS);
        assert_eq!(q(&s), [2.0; 3]);
        // At 12 minutes that bucket expires too: the second observation was seen for 9.
        clock.advance(NS);
        assert!(q(&s).iter().all(|v| v.is_nan()));
        let all = summary_of(&s, &[]);
        assert_eq!((all.sample_count(), all.sample_sum()), (2, 3.0));
    }

    #[test]
    fn rotate_skips_many_expiries() {
        let start = Instant::now();
        let d = Duration::from_secs(1);
        let mut st = SeriesState {
            count: 0,
            sum: 0.0,
            streams: (0..5).map(|_| Some(CKMS::new(0.001))).collect(),
            head: 0,
            head_expires: start + d,
        };
        st.rotate(start + Duration::from_millis(2500), d);
        // Expiries at 1s and 2s: two streams cleared, head moved twice, next expiry at 3s.
        assert_eq!(st.head, 2);
        assert_eq!(st.streams.iter().filter(|s| s.is_none()).count(), 2);
        assert_eq!(st.head_expires, start + Duration::from_secs(3));
        st.rotate(start + Duration::from_secs(3600), d);
        assert!(st.streams.iter().all(Option::is_none));
        assert_eq!(st.head_expires, start + Duration::from_secs(3601));
    }

    #[test]
    fn wrong_arity_is_ignored() {
        let s = latency();
        s.observe(&["only-one"], 1.0);
        s.observe(&["a", "b", "c"], 1.0);
        s.observe(&[], 1.0);
        assert!(s.collect()[0].get_metric().is_empty());
        s.observe(&["a", "b"], 1.0);
        assert_eq!(summary_of(&s, &["a", "b"]).sample_count(), 1);
    }

    #[test]
    fn nan_is_dropped() {
        let s = latency();
        s.observe(&["a", "b"], f64::NAN);
        s.observe(&["a", "b"], 2.0);
        let sum = summary_of(&s, &["a", "b"]);
        assert_eq!((sum.sample_count(), sum.sample_sum()), (1, 2.0));
    }

    #[test]
    fn bad_definitions_are_rejected() {
        assert!(SummaryVec::new("bad name", "help", &[]).is_err());
        assert!(SummaryVec::new("ok", "", &[]).is_err());
        assert!(SummaryVec::new("ok", "help", &["quantile"]).is_err());
        assert!(SummaryVec::new("ok", "help", &["a", "a"]).is_err());
        assert!(SummaryVec::with_window("ok", "help", &[], Duration::from_secs(1), 0).is_err());
        assert!(SummaryVec::with_window("ok", "help", &[], Duration::ZERO, 5).is_err());
    }

    #[test]
    fn concurrent_observers() {
        let s = latency();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let status = if t % 2 == 0 { "OK" } else { "Bad" };
                    for v in 0..500 {
                        s.observe(&["/v1/write/metric", status], f64::from(v));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for status in ["OK", "Bad"] {
            assert_eq!(
                summary_of(&s, &["/v1/write/metric", status]).sample_count(),
                1000
            );
        }
    }

    #[test]
    fn is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<SummaryVec>();
    }
}
