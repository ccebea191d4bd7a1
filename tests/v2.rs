//! DataKit's v2 (protobuf) wire format, both ways, against DataKit's own Go codec.
//!
//! Our uploads with `content_encoding = "v2"`, captured by a loopback Dataway, are decoded by
//! `dkfilter pbdecode` (cliutils `point` decoder) to the points we were given; bodies made by
//! `dkfilter pbencode` (cliutils `point` encoder) are accepted by our ingest and delivered as
//! the same points. `dkfilter` is built from `../shared/peers/datakit-filter-go` into the
//! target dir (about a minute and a half, once), or taken from `DATAWAY_DKFILTER`. Without a
//! Go toolchain those tests are ignored (build/proto.rs), unless CI requires them.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{MockDataway, Recorded, Reply, TestDaemon, config_for, dkfilter};
use dataway::point::v2::{self, pb};
use dataway::point::{FieldValue, ParseOptions, Point, parse};
use prost::Message;

const TOKEN: &str = "tkn_0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);
const OPTS: ParseOptions = ParseOptions {
    precision: dataway::point::Precision::Nanos,
    default_time: 0,
};

/// Every field type and its edges, tags and names with escapes, unicode, then a few hundred
/// varied points (so that uploads are split into several bodies). Nanosecond timestamps.
fn corpus() -> String {
    let mut lp = String::from(
        "cpu,host=web\\ 1,region=eu\\,west,k\\=ey=v\\=al,dir=C:\\temp usage=12.5,load=-3i,\
         total=18446744073709551615u,ok=true,msg=\"hello, \\\"world\\\" C:\\\\temp\",empty=\"\",\
         big=1e300,tiny=5e-324,neg=-0.001,zero=0i,uzero=0u,off=false 1700000000000000000\n\
         温度,城市=北京,emoji=🚀 值=-40.5,i=-9223372036854775808i,imax=9223372036854775807i,\
         s=\"unicode ✓ 🚀 ü\",t=\"a=b, c d\" 1700000000000000001\n\
         my\\ meas\\,x,a\\ b=c\\,d f=1i 2\n\
         bare only=\"fields\" 1\n",
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..400u64 {
        let r = rnd();
        let m = ["cpu", "mem", "disk io", "nginx,req", "日志"][(r % 5) as usize];
        let m = m.replace(' ', "\\ ").replace(',', "\\,");
        lp.push_str(&format!(
            "{m},host=h-{},svc=s{} seq={i}i,v={}.{},u={}u,s=\"{}\",b={} {}\n",
            r % 97,
            (r >> 8) % 13,
            (r >> 16) % 1000,
            (r >> 24) % 100,
            r >> 20,
            "x ".repeat(((r >> 40) % 40) as usize),
            r & 1 == 0,
            1_700_000_000_000_000_000 + i as i64 * 1_000_003,
        ));
    }
    lp
}

/// Points with tags and fields sorted by key: DataKit sorts them (its line protocol parser
/// sorts tags, its point keeps fields by key), and neither order means anything.
fn normalized(mut pts: Vec<Point>) -> Vec<Point> {
    for p in &mut pts {
        p.tags.sort();
        p.fields.sort_by(|a, b| a.0.cmp(&b.0));
    }
    pts
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

/// Runs `dkfilter <cmd>` with `input` on stdin; its stdout, or a panic with its output.
fn oracle(cmd: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(dkfilter())
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "dkfilter {cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn v2_config(dw: &MockDataway, extra: &str) -> dataway::config::Config {
    config_for(
        &[dw.url(TOKEN)],
        &format!("content_encoding = \"v2\"\n{extra}"),
        "",
    )
}

/// The v2 bodies `dw` accepted, un-gzipped, after checking DataKit's headers on each.
fn v2_bodies(dw: &MockDataway) -> Vec<(Recorded, Vec<u8>)> {
    dw.requests()
        .into_iter()
        .filter(|r| r.ok() && r.path.starts_with("/v1/write/"))
        .map(|r| {
            assert_eq!(
                r.header("content-type"),
                Some("application/protobuf; proto=com.guance.Point")
            );
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            let raw = gunzip(&r.body);
            (r, raw)
        })
        .collect()
}

#[tokio::test]
#[cfg_attr(
    dataway_no_go_toolchain,
    ignore = "needs Go (apt-get install golang-go) to build DataKit's codec"
)]
async fn our_v2_uploads_decode_in_datakit_to_the_same_points() {
    // Times before 1970 too (DataKit's line protocol decoder, in `pbencode`, would replace
    // them with "now", so they are only in this direction).
    let lp = corpus() + "old,t=x v=1i -1\nolder v=2i -1000000000000000000\n";
    let sent = parse(lp.as_bytes(), OPTS).unwrap();
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(v2_config(&dw, "max_raw_body_size = 4096")).await;
    assert_eq!(d.post("metric", lp.clone()).await.status(), 200);
    assert!(dw.wait_points(sent.len(), WAIT).await);
    d.stop().await;
    let bodies = v2_bodies(&dw);
    assert!(bodies.len() > 3, "split into {} bodies", bodies.len());
    let mut ours = Vec::new();
    let mut datakits = Vec::new();
    for (r, raw) in &bodies {
        assert!(raw.len() < 4096, "raw body of {} bytes", raw.len());
        // DataKit's decoder reads it (gzipped, as sent) to line protocol, one point a line.
        let text = String::from_utf8(oracle("pbdecode", &r.body)).unwrap();
        let theirs =
            parse(text.trim_end().as_bytes(), OPTS).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(theirs.len(), r.x_points(), "X-Points");
        datakits.extend(theirs);
        ours.extend(v2::decode(raw, OPTS).unwrap());
    }
    assert_eq!(ours, sent, "our own decoder: same points, same order");
    assert_eq!(normalized(datakits), normalized(sent));
}

#[tokio::test]
#[cfg_attr(
    dataway_no_go_toolchain,
    ignore = "needs Go (apt-get install golang-go) to build DataKit's codec"
)]
async fn datakits_v2_bodies_are_accepted_and_delivered_as_the_same_points() {
    let lp = corpus();
    let want = normalized(parse(lp.as_bytes(), OPTS).unwrap());
    let body = oracle("pbencode", lp.as_bytes());
    for gzipped in [false, true] {
        let dw = MockDataway::start().await;
        // Delivered as line protocol (v1), so what arrives is what ingest understood.
        let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "", "")).await;
        let mut req = reqwest::Client::new()
            .post(d.url("/v1/write/logging"))
            .header(
                "content-type",
                "application/protobuf; proto=com.guance.Point",
            );
        req = if gzipped {
            req.header("content-encoding", "gzip").body(gzip(&body))
        } else {
            req.body(body.clone())
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert!(dw.wait_points(want.len(), WAIT).await);
        d.stop().await;
        let text = dw.lines_accepted().join("\n");
        let got = parse(text.as_bytes(), OPTS).unwrap();
        assert_eq!(normalized(got), want, "gzipped: {gzipped}");
        assert!(dw.requests().iter().all(|r| r.path == "/v1/write/logging"));
    }
}

/// A v2 body with one point whose second field is `f`.
fn body_with(f: pb::Field) -> Vec<u8> {
    pb::PbPoints {
        arr: vec![pb::PbPoint {
            name: "m".into(),
            fields: vec![
                pb::Field {
                    key: "ok".into(),
                    val: Some(pb::field::Val::I(1)),
                    ..Default::default()
                },
                f,
            ],
            time: 1,
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test]
async fn v2_bodies_we_cannot_carry_are_clear_errors_and_nothing_is_sent() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "", "")).await;
    let post = |ct: &'static str, body: Vec<u8>| {
        reqwest::Client::new()
            .post(d.url("/v1/write/metric"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let blob = body_with(pb::Field {
        key: "blob".into(),
        val: Some(pb::field::Val::D(vec![0, 1, 2])),
        ..Default::default()
    });
    let r = post(v2::CONTENT_TYPE, blob.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("point 0 (`m`)") && text.contains("field `blob`") && text.contains("bytes"),
        "{text}"
    );
    let arr = body_with(pb::Field {
        key: "list".into(),
        val: Some(pb::field::Val::A(prost_types::Any {
            type_url: "type.googleapis.com/point.Array".into(),
            value: vec![],
        })),
        ..Default::default()
    });
    let text = post(v2::CONTENT_TYPE, arr)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("field `list`") && text.contains("array"),
        "{text}"
    );
    let r = post(v2::CONTENT_TYPE, b"\x0a\xff\xff".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("not a v2 (protobuf PBPoints) message"),
        "{text}"
    );
    // The same bytes without the v2 Content-Type are line protocol (as in DataKit).
    let r = post("application/line-protocol", blob).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed line protocol"));
    let r = post("application/json", b"[]".to_vec()).await.unwrap();
    assert_eq!(r.status(), 415);
    let r = post("application/protobuf; proto=other.Msg", vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // A good one, spelled differently, goes through.
    let good = v2::encode(&[Point {
        measurement: "m".into(),
        tags: vec![],
        fields: vec![("ok".into(), FieldValue::Int(1))],
        time: 5,
    }]);
    let r = post("Application/Protobuf;proto=\"com.guance.Point\"", good)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dw.wait_points(1, WAIT).await);
    d.stop().await;
    assert_eq!(dw.lines_accepted(), ["m ok=1i 5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_body_kept_in_the_fail_cache_is_resent_as_v2() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(v2_config(
        &dw,
        "max_retry_count = 1\nretry_delay = \"10ms\"\nmax_retry_delay = \"50ms\"\n\
         [dataway.fail_cache]\nclean_interval = \"100ms\"",
    ))
    .await;
    let lp = "cpu,host=a v=1i 1\ncpu,host=b v=2i 2";
    assert_eq!(d.post("metric", lp).await.status(), 200);
    let resend = |m: &MockDataway| {
        m.requests()
            .iter()
            .any(|r| r.header("x-fail-cache-retry") == Some("1"))
    };
    assert!(dw.wait_for(WAIT, resend).await);
    dw.set_default(None);
    assert!(dw.wait_points(2, WAIT).await);
    d.stop().await;
    let bodies = v2_bodies(&dw);
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].0.header("x-fail-cache-retry"), Some("1"));
    assert_eq!(
        v2::decode(&bodies[0].1, OPTS).unwrap(),
        parse(lp.as_bytes(), OPTS).unwrap()
    );
}
