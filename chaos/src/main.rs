//! `dataway-chaos`: the attacks of issue 11 ("Survive the host") against a built `dataway`
//! binary, as a black box: its own config and scratch dir per attack, ingest on loopback, a
//! stand-in Dataway that records every point it receives. Prints one markdown table row per
//! attack (acked, delivered, lost, duplicated, peak RSS, peak fds, healthy after the fault,
//! verdict) and exits non-zero if any verdict is FAIL.
//!
//! Rules (from the issue): zero lost acknowledged points in every WAL-on row (and wherever
//! nothing may be shed); no point delivered more than `report::MAX_COPIES` times; the daemon
//! healthy again (GET /health and a write acknowledged) within seconds after each fault ends,
//! without a restart.

mod attacks;
mod daemon;
mod load;
mod receiver;
mod report;
mod row;

use std::path::PathBuf;
use std::process::ExitCode;

use row::Ctx;

const USAGE: &str = "\
usage: dataway-chaos [--quick] [--daemon PATH] [--only ROWS] [--rss-budget MIB] [--judge-rss]
                     [--sabotage] [--keep]

  --quick          bounded form for CI (about 3 minutes against a debug build)
  --daemon PATH    the dataway binary (default: $CARGO_TARGET_DIR or target, then
                   /release/dataway if present, else /debug/dataway)
  --only ROWS      comma-separated rows to run: bomb,idle,kill,fcfull,walfull,plugins,malformed
  --rss-budget MIB peak RSS allowed where it is judged (default 128)
  --judge-rss      judge peak RSS even for a build not under a `release` directory
  --sabotage       check the checker: the WAL-on kill -9 row runs with the WAL off and must FAIL
  --keep           keep the scratch directory (configs, data) for a look afterwards
";

const ROWS: [&str; 7] = [
    "bomb",
    "idle",
    "kill",
    "fcfull",
    "walfull",
    "plugins",
    "malformed",
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut quick, mut keep, mut sabotage, mut judge_rss) = (false, false, false, None);
    let mut bin = None;
    let mut only: Vec<String> = ROWS.iter().map(|s| s.to_string()).collect();
    let mut budget = 128;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--sabotage" => sabotage = true,
            "--judge-rss" => judge_rss = Some(true),
            "--daemon" => bin = args.next().map(PathBuf::from),
            "--only" => {
                only = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--rss-budget" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => budget = v,
                None => return usage("--rss-budget takes a number of MiB"),
            },
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(bad) = only.iter().find(|r| !ROWS.contains(&r.as_str())) {
        return usage(&format!("unknown row {bad:?}"));
    }
    let bin = bin.unwrap_or_else(daemon::default_binary);
    if !bin.is_file() {
        return usage(&format!(
            "no daemon binary at {} (build it with `cargo build`, or pass --daemon PATH)",
            bin.display()
        ));
    }
    let release = bin.components().any(|c| c.as_os_str() == "release");
    raise_fd_limit();
    let scratch = std::env::temp_dir().join(format!("dataway-chaos-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return usage(&format!("cannot create {}: {e}", scratch.display()));
    }
    let ctx = Ctx {
        bin: bin.clone(),
        scratch: scratch.clone(),
        quick,
        judge_rss: judge_rss.unwrap_or(release),
        rss_budget_mib: budget,
        sabotage_wal: sabotage,
    };
    println!(
        "# dataway chaos ({} form) against {}\n",
        if quick { "quick" } else { "full" },
        bin.display()
    );
    if !ctx.judge_rss {
        println!(
            "Not a release build: its peak RSS is reported but means little and is not judged \
             (run against `cargo build --release` for numbers to compare).\n"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        for row in ROWS.iter().filter(|r| only.iter().any(|o| o == *r)) {
            let t = std::time::Instant::now();
            eprintln!("chaos: {row}…");
            match *row {
                "bomb" => rows.push(attacks::gzip_bomb(&ctx).await),
                "idle" => rows.push(attacks::idle_connections(&ctx).await),
                "kill" => {
                    rows.push(attacks::kill9(&ctx, true).await);
                    rows.push(attacks::kill9(&ctx, false).await);
                }
                "fcfull" => rows.push(attacks::failcache_full(&ctx).await),
                "walfull" => rows.push(attacks::wal_full(&ctx).await),
                "plugins" => rows.push(attacks::hostile_plugins(&ctx).await),
                "malformed" => rows.push(attacks::malformed_bodies(&ctx).await),
                _ => unreachable!("rows are checked above"),
            }
            eprintln!("chaos: {row} done in {:.1} s", t.elapsed().as_secs_f64());
        }
        rows
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    print!("{}", report::table(&rows));
    if keep {
        println!("\nscratch kept in {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if rows.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        println!("\nFAIL: see the rules broken above");
        ExitCode::FAILURE
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("error: {why}\n\n{USAGE}");
    ExitCode::from(2)
}

/// 1,100 idle connections need more descriptors than the usual soft limit of 1,024.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct of our own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
