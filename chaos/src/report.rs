//! One row of the table per attack: what was acknowledged, delivered, lost, duplicated,
//! what it cost the host, how soon the daemon was healthy again, and the verdict by the
//! issue's rules, each broken rule named.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

/// Any seq delivered more often than this is unbounded duplication (at-least-once allows a
/// resend after a crash or a failed removal, not a loop).
pub const MAX_COPIES: u32 = 3;

#[derive(Default)]
pub struct Outcome {
    pub attack: String,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub max_copies: u32,
    pub peak_rss_kib: u64,
    pub peak_fds: u64,
    /// How long after the fault ended the daemon answered /health and took a write again;
    /// `None`: not within the limit.
    pub healthy_after: Option<Duration>,
    pub skipped: Option<String>,
    /// Rules broken (empty: PASS).
    pub broken: Vec<String>,
    pub notes: Vec<String>,
    /// The daemon's last log lines, shown when the row fails.
    pub log_tail: Option<String>,
}

impl Outcome {
    pub fn new(attack: &str) -> Outcome {
        Outcome {
            attack: attack.to_string(),
            ..Outcome::default()
        }
    }

    pub fn skipped(attack: &str, why: &str) -> Outcome {
        Outcome {
            skipped: Some(why.to_string()),
            ..Outcome::new(attack)
        }
    }

    /// Breaks the row unless `ok`, saying `rule`.
    pub fn check(&mut self, ok: bool, rule: impl Into<String>) {
        if !ok {
            self.broken.push(rule.into());
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Counts `acked` seq ranges against what was `delivered` (seq -> copies), and the
    /// rules every row keeps: duplication bounded.
    pub fn count(&mut self, acked: &[Range<u64>], delivered: &HashMap<u64, u32>) {
        self.acked = acked.iter().map(|r| r.end - r.start).sum();
        self.delivered = delivered.len() as u64;
        self.lost = acked
            .iter()
            .flat_map(|r| r.clone())
            .filter(|s| !delivered.contains_key(s))
            .count() as u64;
        self.duplicated = delivered.values().map(|&c| u64::from(c) - 1).sum();
        self.max_copies = delivered.values().copied().max().unwrap_or(0);
        self.check_duplication();
    }

    pub fn check_duplication(&mut self) {
        let max = self.max_copies;
        self.check(
            max <= MAX_COPIES,
            format!(
                "a point was delivered {max} times (unbounded duplication; at most {MAX_COPIES})"
            ),
        );
    }

    /// The daemon must be healthy again within `limit` after the fault, without a restart.
    pub fn check_healthy(&mut self, after: Option<Duration>, limit: Duration) {
        self.healthy_after = after;
        self.check(
            after.is_some(),
            format!("not healthy (GET /health 200 and a write acknowledged) within {limit:?} after the fault"),
        );
    }

    pub fn passed(&self) -> bool {
        self.skipped.is_some() || self.broken.is_empty()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The markdown table, then what each row broke and noted.
pub fn table(rows: &[Outcome]) -> String {
    let mut out = String::from(
        "| attack | acked | delivered | lost | duplicated | peak RSS | peak fds | healthy after fault | verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        if let Some(why) = &r.skipped {
            out.push_str(&format!(
                "| {} | | | | | | | | skipped: {why} |\n",
                r.attack
            ));
            continue;
        }
        let healthy = match r.healthy_after {
            Some(d) => format!("yes, {:.1} s", d.as_secs_f64()),
            None => "**no**".to_string(),
        };
        let dup = if r.duplicated == 0 {
            "0".to_string()
        } else {
            format!("{} (max ×{})", r.duplicated, r.max_copies)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.attack,
            r.acked,
            r.delivered,
            r.lost,
            dup,
            mib(r.peak_rss_kib),
            r.peak_fds,
            healthy,
            if r.broken.is_empty() {
                "PASS"
            } else {
                "**FAIL**"
            }
        ));
    }
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        if r.broken.is_empty() && r.notes.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{}:\n", r.attack));
        for b in &r.broken {
            out.push_str(&format!("- FAIL: {b}\n"));
        }
        for n in &r.notes {
            out.push_str(&format!("- {n}\n"));
        }
        if let (false, Some(tail)) = (r.broken.is_empty(), &r.log_tail) {
            out.push_str(&format!(
                "- the daemon's last log lines:\n```\n{tail}\n```\n"
            ));
        }
    }
    out
}
