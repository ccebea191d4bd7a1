//! Prometheus metrics: DataKit's dataway metrics with their exact names, types and labels
//! (`metrics.md`), plus a few of our own under the `dataway_` prefix.
//!
//! One [`Metrics`] value is made at start-up and handed (in an `Arc`) to every part that
//! counts; there is no global registry, so tests can run many daemons in one process.

mod summary;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use reqwest::StatusCode;

pub use summary::SummaryVec;

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// `datakit_io_dataway_api_request_total{api,status}`: logical requests, once however many
    /// retries they took.
    pub api_request_total: IntCounterVec,
    /// `datakit_io_dataway_api_latency{api,status}`: milliseconds across all attempts.
    pub api_latency: SummaryVec,
    /// `datakit_io_dataway_point_total{category,status}`.
    pub point_total: IntCounterVec,
    /// `datakit_io_dataway_point_bytes_total{category,status}`: bytes on the wire.
    pub point_bytes_total: IntCounterVec,
    /// `datakit_io_dataway_sink_total{category}`: sink operations (batches offered to sinkers).
    pub sink_total: IntCounterVec,
    /// `datakit_io_dataway_sink_point_total{category,status}`.
    pub sink_point_total: IntCounterVec,
    /// `datakit_io_dataway_not_sink_point_total{category}`.
    pub not_sink_point_total: IntCounterVec,
    /// `datakit_io_flush_failcache_bytes{category}`: gzipped bytes resent from the fail-cache.
    pub failcache_bytes: SummaryVec,
    /// `datakit_io_grouped_request{category}`: with `enable_sinker`, the number of
    /// `X-Global-Tags` groups of each batch (DataKit observes it once per write).
    pub grouped_request: SummaryVec,
    /// `dataway_endpoint_points_total{endpoint,category,status}`: `point_total` per endpoint
    /// (DataKit's has no endpoint label, and its labels must stay as they are).
    pub endpoint_points_total: IntCounterVec,
    /// `dataway_endpoint_point_bytes_total{endpoint,category,status}`: `point_bytes_total`
    /// per endpoint.
    pub endpoint_point_bytes_total: IntCounterVec,
    /// `dataway_retries_total{endpoint}`: attempts after the first of each request (a
    /// request counts once in `api_request_total` however many it took).
    pub retries_total: IntCounterVec,
    /// `dataway_ingest_requests_total{category,code}`: write requests by HTTP answer code.
    pub ingest_requests_total: IntCounterVec,
    /// `dataway_ingest_points_total{category}`: points accepted by the ingest server.
    pub ingest_points_total: IntCounterVec,
    /// `dataway_dropped_points_total{category,reason}`: points given up on, by why
    /// (`rejected`: a 4xx answer; `retries_exhausted`; `shutdown`; `file_error`;
    /// `invalid_global_tags`: an `X-Global-Tags` value a header cannot carry).
    pub dropped_points_total: IntCounterVec,
    /// `dataway_queue_batches{endpoint}`: batches waiting in an endpoint's queue.
    pub queue_batches: IntGaugeVec,
    /// `dataway_sinker_calls_total{sinker,result}`: condition plugin calls, by result
    /// (`ok`, `trap`, `timeout`, `oom`, `bad_result`, `init_error`, `quarantined`: skipped).
    pub sinker_calls_total: IntCounterVec,
    /// `dataway_sinker_call_seconds{sinker}`: time of one batch call into a plugin.
    pub sinker_call_seconds: HistogramVec,
    /// `dataway_sinker_points_total{sinker,result}`: points offered to a sinker's condition,
    /// by `matched` / `not_matched`.
    pub sinker_points_total: IntCounterVec,
    /// `dataway_sinker_reloads_total{sinker,result}`: plugin loads by result (`ok`,
    /// `not_component`, `wrong_world`, `init_error`, `init_trap`, `compiler_error`, `removed`,
    /// `read_error`, `not_regular_file`, `too_large`, `bad_sidecar`).
    pub sinker_reloads_total: IntCounterVec,
    /// `dataway_sinker_plugin_info{sinker,sha256}`: 1 for the plugin version serving now.
    pub sinker_plugin_info: IntGaugeVec,
    /// `dataway_sinker_quarantined{sinker}`: 1 while the sinker's plugin is quarantined
    /// (set on each call: it stays 1 after the backoff until the trial call succeeds).
    pub sinker_quarantined: IntGaugeVec,
    /// `dataway_failcache_records{endpoint}`: bodies waiting in an endpoint's fail-cache.
    pub failcache_records: IntGaugeVec,
    /// `dataway_wal_held_points{endpoint,category}`: points of bodies that failed after
    /// retries and that the fail-cache could not take (a full disk, say), waiting to be sent
    /// again; the WAL holds them, so they are neither dropped nor lost.
    pub held_points: IntGaugeVec,
    /// `dataway_wal_spilled_writes`: writes the WAL holds that wait for room in memory
    /// (with the WAL on, a burst goes to disk rather than back to the client as 503).
    pub wal_spilled_writes: IntGauge,
    /// `dataway_wal_spilled_bytes`: their size (bounded by `[dataway.wal] max_spill_bytes`).
    pub wal_spilled_bytes: IntGauge,
    /// `dataway_wal_disk_bytes`: the size of the WAL's file on disk, every write it holds
    /// (read at each scrape; 0 with the WAL off).
    pub wal_disk_bytes: IntGauge,
    /// `dataway_failcache_disk_bytes{endpoint}`: their size on disk.
    pub failcache_disk_bytes: IntGaugeVec,
    /// `dataway_failcache_dropped_total{endpoint,reason}`: records given up on (`full`:
    /// pushed out by newer ones; `expired`; `corrupt`: a damaged record; `corrupt_file`: an
    /// unreadable cache file moved aside; `rejected`: refused by the server on resend;
    /// `disk_full`: shed, oldest first, to make room for a newer body on a full disk;
    /// `write_error`: could not be stored; with the WAL on such a body is held, not lost).
    pub failcache_dropped_total: IntCounterVec,
    /// `dataway_memory_budget_bytes`: the memory budget (`dataway.max_pending_bytes`).
    pub memory_budget_bytes: IntGauge,
    /// `dataway_memory_budget_used_bytes{part}`: what of it is held, by `reading` (request
    /// bodies being read and decompressed) and `points` (parsed, queued, being sent);
    /// set when `/metrics` is read.
    pub memory_budget_used_bytes: IntGaugeVec,
    /// `dataway_store_io_errors_total{store,name}`: I/O errors of a redb file (`store`:
    /// `failcache`, `name` the endpoint; or `store` and `name` both `wal`). Each closes the
    /// file, to be reopened after a backoff.
    pub store_io_errors_total: IntCounterVec,
    /// `dataway_store_reopens_total{store,name,result}`: reopens of a redb file after an I/O
    /// error, by `result` (`ok`, `error`: still failing, tried again after a longer backoff).
    pub store_reopens_total: IntCounterVec,
    /// `dataway_ingest_connections`: ingest connections open now.
    pub ingest_connections: IntGauge,
    /// `dataway_ingest_connections_max`: the connection cap in effect (`max_connections`,
    /// or half the open-file limit when that is lower).
    pub ingest_connections_max: IntGauge,
    /// `dataway_ingest_connections_closed_total{reason}`: ingest connections ended, by why
    /// (`client`: the client closed it, or an answer said `Connection: close`;
    /// `header_timeout`: no complete request head within `header_read_timeout`;
    /// `idle_evicted`: closed idle to make room under the cap; `accept_error`: closed idle to
    /// free a descriptor after an accept error; `shutdown`; `error`: a malformed request or
    /// an I/O error).
    pub ingest_connections_closed_total: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let summary = |name: &str, help: &str, labels: &[&str]| {
            let s = SummaryVec::new(name, help, labels).expect("valid metric");
            registry
                .register(Box::new(s.clone()))
                .expect("unique metric");
            s
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let single_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let m = Metrics {
            api_request_total: counter(
                "datakit_io_dataway_api_request_total",
                "Dataway HTTP requests processed, partitioned by status code and HTTP API (url path)",
                &["api", "status"],
            ),
            api_latency: summary(
                "datakit_io_dataway_api_latency",
                "Dataway HTTP request latency (ms) partitioned by HTTP API (url path) and HTTP status",
                &["api", "status"],
            ),
            point_total: counter(
                "datakit_io_dataway_point_total",
                "Dataway uploaded points, partitioned by category and send status (HTTP status of the send, after its retries; fail-cache resends are not counted again)",
                &["category", "status"],
            ),
            point_bytes_total: counter(
                "datakit_io_dataway_point_bytes_total",
                "Dataway uploaded points bytes, partitioned by category and point send status (HTTP status of the send, after its retries; fail-cache resends are not counted again)",
                &["category", "status"],
            ),
            sink_total: counter(
                "datakit_io_dataway_sink_total",
                "Dataway sink count, partitioned by category.",
                &["category"],
            ),
            sink_point_total: counter(
                "datakit_io_dataway_sink_point_total",
                "Dataway sink points, partitioned by category and point send status (HTTP status of the send, after its retries; fail-cache resends are not counted again)",
                &["category", "status"],
            ),
            not_sink_point_total: counter(
                "datakit_io_dataway_not_sink_point_total",
                "Dataway not-sinked points (condition or category not match)",
                &["category"],
            ),
            failcache_bytes: summary(
                "datakit_io_flush_failcache_bytes",
                "IO flush fail-cache bytes (in gzip) summary",
                &["category"],
            ),
            grouped_request: summary(
                "datakit_io_grouped_request",
                "Grouped requests under sinker",
                &["category"],
            ),
            endpoint_points_total: counter(
                "dataway_endpoint_points_total",
                "Points sent, by endpoint (token redacted), category and send status (counted as datakit_io_dataway_point_total)",
                &["endpoint", "category", "status"],
            ),
            endpoint_point_bytes_total: counter(
                "dataway_endpoint_point_bytes_total",
                "Bytes of points sent, by endpoint (token redacted), category and send status (counted as datakit_io_dataway_point_bytes_total)",
                &["endpoint", "category", "status"],
            ),
            retries_total: counter(
                "dataway_retries_total",
                "Attempts after the first of requests to an endpoint (token redacted)",
                &["endpoint"],
            ),
            ingest_requests_total: counter(
                "dataway_ingest_requests_total",
                "Write requests received by the ingest server, by category and HTTP answer code",
                &["category", "code"],
            ),
            ingest_points_total: counter(
                "dataway_ingest_points_total",
                "Points accepted by the ingest server, by category",
                &["category"],
            ),
            dropped_points_total: counter(
                "dataway_dropped_points_total",
                "Points given up on, by category and reason",
                &["category", "reason"],
            ),
            queue_batches: gauge(
                "dataway_queue_batches",
                "Batches waiting in an endpoint's queue",
                &["endpoint"],
            ),
            sinker_calls_total: counter(
                "dataway_sinker_calls_total",
                "Calls into sinker condition plugins, by sinker and result",
                &["sinker", "result"],
            ),
            sinker_call_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "dataway_sinker_call_seconds",
                        "Time of one batch call into a sinker condition plugin",
                    )
                    .buckets(prometheus::exponential_buckets(1e-5, 4.0, 10).expect("valid")),
                    &["sinker"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            sinker_points_total: counter(
                "dataway_sinker_points_total",
                "Points offered to a sinker's condition, by sinker and whether they matched",
                &["sinker", "result"],
            ),
            sinker_reloads_total: counter(
                "dataway_sinker_reloads_total",
                "Sinker plugin loads and reloads, by sinker and result",
                &["sinker", "result"],
            ),
            sinker_plugin_info: gauge(
                "dataway_sinker_plugin_info",
                "1 for the plugin version (SHA-256 of the file) a sinker uses now",
                &["sinker", "sha256"],
            ),
            sinker_quarantined: gauge(
                "dataway_sinker_quarantined",
                "1 while a sinker's plugin is quarantined after repeated failures",
                &["sinker"],
            ),
            failcache_records: gauge(
                "dataway_failcache_records",
                "Bodies waiting in an endpoint's fail-cache",
                &["endpoint"],
            ),
            held_points: gauge(
                "dataway_wal_held_points",
                "Points the fail-cache could not take, held by the WAL and sent again after the interval",
                &["endpoint", "category"],
            ),
            wal_spilled_writes: single_gauge(
                "dataway_wal_spilled_writes",
                "Writes the WAL holds that wait for room in memory to be queued",
            ),
            wal_spilled_bytes: single_gauge(
                "dataway_wal_spilled_bytes",
                "Bytes of the writes the WAL holds that wait for room in memory",
            ),
            wal_disk_bytes: single_gauge(
                "dataway_wal_disk_bytes",
                "Size of the WAL's file on disk, read at each scrape",
            ),
            failcache_disk_bytes: gauge(
                "dataway_failcache_disk_bytes",
                "Bytes of the bodies waiting in an endpoint's fail-cache",
                &["endpoint"],
            ),
            failcache_dropped_total: counter(
                "dataway_failcache_dropped_total",
                "Fail-cache records given up on, by endpoint and reason",
                &["endpoint", "reason"],
            ),
            memory_budget_bytes: single_gauge(
                "dataway_memory_budget_bytes",
                "The memory budget for data in flight (dataway.max_pending_bytes)",
            ),
            memory_budget_used_bytes: gauge(
                "dataway_memory_budget_used_bytes",
                "Bytes of the memory budget held: request bodies being read (reading) and points (points)",
                &["part"],
            ),
            store_io_errors_total: counter(
                "dataway_store_io_errors_total",
                "I/O errors of the fail-cache and WAL files, by store and name",
                &["store", "name"],
            ),
            store_reopens_total: counter(
                "dataway_store_reopens_total",
                "Reopens of the fail-cache and WAL files after an I/O error, by store, name and result",
                &["store", "name", "result"],
            ),
            ingest_connections: single_gauge(
                "dataway_ingest_connections",
                "Ingest connections open",
            ),
            ingest_connections_max: single_gauge(
                "dataway_ingest_connections_max",
                "Ingest connection cap in effect: max_connections, or half the open-file limit when lower",
            ),
            ingest_connections_closed_total: counter(
                "dataway_ingest_connections_closed_total",
                "Ingest connections ended, by reason",
                &["reason"],
            ),
            registry,
        };
        // The sink metrics exist from the start (at zero) so dashboards and alerts can rely
        // on them before the first sinker is configured.
        for c in crate::category::Category::ALL {
            m.sink_total.with_label_values(&[c.name()]);
            m.not_sink_point_total.with_label_values(&[c.name()]);
        }
        m
    }

    /// The registry, for callers that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format served at `GET /metrics`.
    pub fn encode_text(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to memory cannot fail");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The `status` label: the HTTP reason phrase (`OK`, `Bad Request`, …), the numeric code for
/// a code without one, or `unknown` when no response came (transport error), as DataKit.
pub fn status_label(status: Option<StatusCode>) -> String {
    match status {
        Some(s) => s
            .canonical_reason()
            .map(String::from)
            .unwrap_or_else(|| s.as_u16().to_string()),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_reason_phrases() {
        assert_eq!(status_label(Some(StatusCode::OK)), "OK");
        assert_eq!(
            status_label(Some(StatusCode::INTERNAL_SERVER_ERROR)),
            "Internal Server Error"
        );
        assert_eq!(
            status_label(Some(StatusCode::from_u16(599).unwrap())),
            "599"
        );
        assert_eq!(status_label(None), "unknown");
    }

    #[test]
    fn sink_metrics_exist_at_zero_before_any_sinker() {
        let text = Metrics::new().encode_text();
        assert!(text.contains("# TYPE datakit_io_dataway_sink_total counter"));
        assert!(text.contains("datakit_io_dataway_sink_total{category=\"metric\"} 0"));
        assert!(text.contains("datakit_io_dataway_not_sink_point_total{category=\"logging\"} 0"));
    }
}
