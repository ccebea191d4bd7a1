//! Sinkers: split off the points a condition matches and send them to their own endpoints.
//!
//! In: a batch of points of one category, from the router ([`crate::dataway`]). Out: for
//! each sinker, the points it takes; and the points no sinker took, which the router sends
//! to the main endpoints. Each point goes to every sinker that matches it, once; a point no
//! sinker matches goes to the main endpoints, once (DataKit sent it N times with N sinkers,
//! `lessons.md` #1).
//!
//! A sinker's condition is a WebAssembly component ([`plugin`]) or nothing (take every point
//! of the sinker's categories). The condition is replaced live ([`reload`]): every batch
//! reads the condition once, so a batch in flight during a swap is judged entirely by the
//! old version or entirely by the new one, never both.

mod batch;
pub mod builtin;
pub mod plugin;
pub mod reload;
pub mod try_out;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::category::Category;
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;
use crate::point::{Content, Noting, Point, Text};

pub use plugin::{CallError, Columns, FailureKind, Limits, LoadError, LogFn, Plugin, Runtime};

/// What decides which points a sinker takes.
#[derive(Clone)]
pub enum Condition {
    /// No plugin configured: every point of the sinker's categories.
    All,
    /// A loaded plugin.
    Plugin(Plugin),
    /// The plugin file is missing or never loaded: no point (they go to the main
    /// endpoints) until a good file appears.
    Disabled,
}

/// One sinker: its categories, its condition and its endpoints.
pub struct Sinker {
    name: String,
    categories: Vec<Category>,
    condition: RwLock<Condition>,
    endpoints: Vec<Endpoint>,
}

impl Sinker {
    /// A sinker over endpoints already started.
    pub fn new(
        name: String,
        categories: Vec<Category>,
        condition: Condition,
        endpoints: Vec<Endpoint>,
    ) -> Sinker {
        Sinker {
            name,
            categories,
            condition: RwLock::new(condition),
            endpoints,
        }
    }

    /// The sinker's name (labels its metrics and log lines).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether points of `category` reach this sinker at all.
    pub fn takes(&self, category: Category) -> bool {
        self.categories.contains(&category)
    }

    /// The sinker's endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The condition serving now.
    pub fn condition(&self) -> Condition {
        self.condition
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps the condition in: batches that already read the old one finish with it.
    pub fn set_condition(&self, c: Condition) {
        *self.condition.write().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// Which of `points` this sinker takes (`None`: all). A plugin failure means "none"
    /// (the points go on to the main endpoints) and is counted and logged (rate-limited).
    /// `columns`: those built for the same points by the sinkers before this one.
    pub fn evaluate(
        &self,
        category: Category,
        points: &Arc<Content>,
        columns: &Arc<Columns>,
        metrics: &Metrics,
    ) -> Option<Vec<bool>> {
        match self.condition() {
            Condition::All => None,
            Condition::Disabled => Some(vec![false; points.len()]),
            Condition::Plugin(p) => Some(self.call(&p, category, points, columns, metrics)),
        }
    }

    fn call(
        &self,
        plugin: &Plugin,
        category: Category,
        points: &Arc<Content>,
        columns: &Arc<Columns>,
        metrics: &Metrics,
    ) -> Vec<bool> {
        let start = Instant::now();
        let result = plugin.matches_with(category, points, columns);
        let name = self.name.as_str();
        if !matches!(&result, Err(e) if e.kind == FailureKind::Quarantined) {
            metrics
                .sinker_call_seconds
                .with_label_values(&[name])
                .observe(start.elapsed().as_secs_f64());
        }
        metrics
            .sinker_quarantined
            .with_label_values(&[name])
            .set(plugin.quarantined() as i64);
        match result {
            Ok(mask) => {
                metrics
                    .sinker_calls_total
                    .with_label_values(&[name, "ok"])
                    .inc();
                mask
            }
            Err(e) => {
                metrics
                    .sinker_calls_total
                    .with_label_values(&[name, e.kind.label()])
                    .inc();
                if e.kind != FailureKind::Quarantined && plugin.admit_failure_log() {
                    tracing::warn!(sinker = %name, points = points.len(), error = %e, "sinker plugin failed; its batch goes to the main endpoints");
                }
                vec![false; points.len()]
            }
        }
    }
}

/// The live set of sinkers; replaced whole when a drop-in sinker comes or goes.
#[derive(Default)]
pub struct Sinkers {
    set: RwLock<Arc<Vec<Arc<Sinker>>>>,
    /// Per category, the keys (and whether the measurements) the conditions asked of its
    /// last write's text: the parser notes them in the next one, so that asking again
    /// costs no search (see `point::keys`). A guess: keys asked anew are searched for, and
    /// noted from then on.
    noted: Mutex<Vec<NotingState>>,
}

/// What the parser notes in a category's writes.
struct NotingState {
    category: Category,
    /// What the conditions asked of the last write.
    asked: Noting,
    /// `asked` without the resting keys: what the parser notes.
    noting: Noting,
    /// Keys whose noted column was given up (an id-like tag): not noted for a while.
    resting: Vec<Resting>,
}

/// A key not noted for `left` more writes, because the parser gave its column up; each
/// give-up doubles `wait`, the rest that follows the next one.
struct Resting {
    key: String,
    left: u32,
    wait: u32,
}

impl Resting {
    /// Writes a key rests after its first give-up (a burst of ids may pass).
    const FIRST: u32 = 16;
    /// The longest rest: a key that stops being id-like is noted again within this many
    /// writes.
    const LONGEST: u32 = 1024;
}

impl NotingState {
    /// `asked` without the keys resting now.
    fn update(&mut self) {
        let resting = |k: &String| self.resting.iter().any(|r| r.left > 0 && r.key == *k);
        let keys: Vec<String> = self
            .asked
            .keys
            .iter()
            .filter(|k| !resting(k))
            .cloned()
            .collect();
        self.noting = if keys.len() == self.asked.keys.len() {
            self.asked.clone()
        } else {
            Noting {
                keys: keys.into(),
                measurement: self.asked.measurement,
            }
        };
    }
}

impl Sinkers {
    /// What the parser is to note in a write of `category` (see [`Sinkers::note`]).
    pub fn noted(&self, category: Category) -> Option<Noting> {
        let noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        noted
            .iter()
            .find(|s| s.category == category)
            .map(|s| s.noting.clone())
    }

    /// Keeps `asked` (what a split of `category`'s text asked about) for the category's
    /// next writes; asking nothing stops the noting. The keys in `given_up` (the text's
    /// noted columns given up) rest: they are not noted for the next writes of the
    /// category (each call is one), first 16, then twice as many after each give-up, up
    /// to 1,024; the sinkers search for them meanwhile.
    pub fn note(&self, category: Category, asked: Noting, given_up: &[String]) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        let state = match noted.iter_mut().position(|s| s.category == category) {
            Some(i) => &mut noted[i],
            None if asked.is_empty() => return,
            None => {
                noted.push(NotingState {
                    category,
                    asked: Noting::default(),
                    noting: Noting::default(),
                    resting: Vec::new(),
                });
                noted.last_mut().expect("just pushed")
            }
        };
        let mut changed = state.asked != asked;
        state.asked = asked;
        for r in &mut state.resting {
            changed |= r.left == 1;
            r.left = r.left.saturating_sub(1);
        }
        for key in given_up {
            changed = true;
            match state.resting.iter_mut().find(|r| r.key == *key) {
                Some(r) => {
                    r.left = r.wait;
                    r.wait = (r.wait * 2).min(Resting::LONGEST);
                }
                None => state.resting.push(Resting {
                    key: key.clone(),
                    left: Resting::FIRST,
                    wait: Resting::FIRST * 2,
                }),
            }
        }
        if changed {
            state.update();
        }
    }

    /// A set holding `sinkers`.
    pub fn new(sinkers: Vec<Arc<Sinker>>) -> Sinkers {
        Sinkers {
            noted: Mutex::new(Vec::new()),
            set: RwLock::new(Arc::new(sinkers)),
        }
    }

    /// The sinkers now (a snapshot: later changes do not affect it).
    pub fn snapshot(&self) -> Arc<Vec<Arc<Sinker>>> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a sinker, or replaces the one with the same name (returned).
    pub fn upsert(&self, sinker: Arc<Sinker>) -> Option<Arc<Sinker>> {
        let mut guard = self.set.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<Sinker>> = guard.as_ref().clone();
        let old = match next.iter().position(|s| s.name == sinker.name) {
            Some(i) => Some(std::mem::replace(&mut next[i], sinker)),
            None => {
                next.push(sinker);
                None
            }
        };
        *guard = Arc::new(next);
        old
    }

    /// Removes the sinker named `name` (returned).
    pub fn remove(&self, name: &str) -> Option<Arc<Sinker>> {
        let mut guard = self.set.write().unwrap_or_else(|e| e.into_inner());
        let i = guard.iter().position(|s| s.name == name)?;
        let mut next: Vec<Arc<Sinker>> = guard.as_ref().clone();
        let old = next.remove(i);
        *guard = Arc::new(next);
        Some(old)
    }
}

/// The outcome of routing one batch through the sinkers.
pub struct Split {
    /// Points each sinker takes, by the sinker's position in the set (only sinkers that
    /// take at least one), in the form they came in (text stays text).
    pub sunk: Vec<(usize, Content)>,
    /// Points no sinker took: they go to the main endpoints.
    pub rest: Content,
    /// What to count once the points are accepted (see [`Counts::record`]).
    pub counts: Counts,
    /// Over text: what the conditions asked about (nothing if no sinker took the
    /// category), for the parser to note in the category's next write
    /// ([`Sinkers::note`]). `None` over points.
    pub asked: Option<Noting>,
    /// Over text: the keys the parser noted but gave up on (too many distinct values).
    pub given_up: Vec<String>,
}

/// The routing counters of one split, kept until the write is accepted: a write refused
/// for lack of room is resent by its client and must not be counted twice.
#[derive(Default)]
pub struct Counts {
    category: Option<Category>,
    /// (sinker name, points matched, points offered) per sinker that looked.
    offered: Vec<(String, usize, usize)>,
    /// Points no sinker took, when there are sinkers at all.
    not_sunk: Option<usize>,
}

impl Counts {
    /// Adds this split to `sink_total`, `not_sink_point_total` and `dataway_sinker_points_total`.
    pub fn record(self, metrics: &Metrics) {
        let Some(category) = self.category else {
            return;
        };
        for (name, matched, offered) in &self.offered {
            metrics
                .sink_total
                .with_label_values(&[category.name()])
                .inc();
            let count = |r, n: usize| {
                metrics
                    .sinker_points_total
                    .with_label_values(&[name.as_str(), r])
                    .inc_by(n as u64)
            };
            count("matched", *matched);
            count("not_matched", offered - matched);
        }
        if let Some(n) = self.not_sunk {
            metrics
                .not_sink_point_total
                .with_label_values(&[category.name()])
                .inc_by(n as u64);
        }
    }
}

/// Splits `points` between the sinkers of `set` and the main endpoints. Text is split as
/// text: each share is the lines chosen, as they came ([`Text::select`]).
pub fn split(set: &[Arc<Sinker>], category: Category, points: Content, metrics: &Metrics) -> Split {
    let interested: Vec<usize> = (0..set.len()).filter(|&i| set[i].takes(category)).collect();
    let mut counts = Counts {
        category: Some(category),
        ..Counts::default()
    };
    let text = matches!(points, Content::Text(_));
    if interested.is_empty() {
        counts.not_sunk = (!set.is_empty()).then_some(points.len());
        return Split {
            sunk: Vec::new(),
            rest: points,
            counts,
            asked: text.then(Noting::default),
            given_up: Vec::new(),
        };
    }
    let given_up = match &points {
        Content::Text(t) => t.noted_given_up(),
        Content::Points(_) => Vec::new(),
    };
    // Plugins borrow the points through an Arc; it is unique again once they are done.
    // Columns one builds are kept for the next, when there is a next.
    let shared = Arc::new(points);
    let columns = Arc::new(if interested.len() > 1 {
        Columns::shared()
    } else {
        Columns::default()
    });
    let masks: Vec<Option<Vec<bool>>> = interested
        .iter()
        .map(|&i| set[i].evaluate(category, &shared, &columns, metrics))
        .collect();
    let points = Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone());
    let n = points.len();
    for (&i, mask) in interested.iter().zip(&masks) {
        let matched = mask
            .as_ref()
            .map_or(n, |m| m.iter().filter(|&&b| b).count());
        counts.offered.push((set[i].name().to_string(), matched, n));
    }
    let takes = |j: usize, i: usize| masks[j].as_ref().is_none_or(|m| m[i]);
    let (sunk, rest): (Vec<Content>, Content) = match points {
        Content::Points(points) => {
            let (sunk, rest) = split_points(points, interested.len(), takes);
            (
                sunk.into_iter().map(Content::Points).collect(),
                Content::Points(rest),
            )
        }
        Content::Text(text) => {
            let (sunk, rest) = split_text(text, interested.len(), takes);
            (
                sunk.into_iter().map(Content::Text).collect(),
                Content::Text(rest),
            )
        }
    };
    counts.not_sunk = Some(rest.len());
    Split {
        asked: text.then(|| columns.asked()),
        given_up,
        sunk: interested
            .into_iter()
            .zip(sunk)
            .filter(|(_, p)| !p.is_empty())
            .collect(),
        rest,
        counts,
    }
}

/// Each of `takers` sinkers' points (`takes(j, i)`: sinker `j` takes point `i`), and the
/// points none takes. The last taker of a point gets the point itself, the others a copy.
fn split_points(
    points: Vec<Point>,
    takers: usize,
    takes: impl Fn(usize, usize) -> bool,
) -> (Vec<Vec<Point>>, Vec<Point>) {
    let mut sunk: Vec<Vec<Point>> = vec![Vec::new(); takers];
    let mut rest = Vec::new();
    for (i, p) in points.into_iter().enumerate() {
        match (0..takers).rev().find(|&j| takes(j, i)) {
            None => rest.push(p),
            Some(last) => {
                for (j, out) in sunk.iter_mut().enumerate().take(last) {
                    if takes(j, i) {
                        out.push(p.clone());
                    }
                }
                sunk[last].push(p);
            }
        }
    }
    (sunk, rest)
}

/// As [`split_points`], for text: each share is a copy of the lines chosen; the rest is
/// the text itself, its taken lines removed in place where it can ([`Text::retain`]).
fn split_text(
    text: Text,
    takers: usize,
    takes: impl Fn(usize, usize) -> bool,
) -> (Vec<Text>, Text) {
    let sunk = text.select_each(takers, &takes);
    let taken: usize = sunk.iter().map(Text::len).sum();
    let rest = if taken == 0 {
        text
    } else {
        text.retain(|i| !(0..takers).any(|j| takes(j, i)))
    };
    (sunk, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key the parser gave up on is left out of the noting for 16 of the category's
    /// writes, then noted again; given up again, it rests twice as long. Other keys and
    /// categories are noted throughout.
    #[test]
    fn a_given_up_key_rests_then_is_noted_again_and_rests_longer() {
        let sinkers = Sinkers::default();
        let asked = Noting {
            keys: ["host".to_string(), "id".to_string()].as_slice().into(),
            measurement: true,
        };
        let keys = |c| {
            let n = sinkers.noted(c).expect("noted");
            assert!(n.measurement);
            n.keys.to_vec()
        };
        sinkers.note(Category::Metric, asked.clone(), &[]);
        sinkers.note(Category::Logging, asked.clone(), &[]);
        assert_eq!(keys(Category::Metric), ["host", "id"]);
        // Each `note` is a write of the category; the give-up comes with write 0.
        let mut rests = Vec::new();
        for write in 0..150 {
            let given_up = if [0, 17, 50].contains(&write) {
                vec!["id".to_string()]
            } else {
                vec![]
            };
            sinkers.note(Category::Metric, asked.clone(), &given_up);
            if keys(Category::Metric) == ["host"] {
                rests.push(write);
            }
            assert_eq!(keys(Category::Logging), ["host", "id"], "another category");
        }
        // Not noted in writes 1..=16 (after write 0's give-up), noted in 17 (given up
        // again), then not in 18..=49 (32 writes), noted in 50 (given up again), then not
        // in 51..=114 (64 writes). `rests` holds the writes after which it is not noted.
        let want: Vec<u32> = (0..=15).chain(17..=48).chain(50..=113).collect();
        assert_eq!(rests, want);
    }
}
