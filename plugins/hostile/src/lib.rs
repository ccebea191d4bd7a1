//! Test fixture: a plugin that misbehaves on purpose, to prove the host contains it.
//!
//! The config names the behaviour of `matches` (or of `init`):
//! `ok` matches every point; `loop` never returns; `oom` allocates until refused;
//! `trap` panics; `stack` recurses without end; `wrong-len` returns one result too few;
//! `log-flood` writes 10 000 log lines then matches everything; `init-trap` panics in
//! init; `init-error` refuses its config; `every-other` matches even-numbered points;
//! `boom` matches every point but traps on a batch holding a `boom` measurement;
//! `fs`, `env` and `clock` try to read a file, the environment and the wall clock, and
//! match every point only if that gave them anything (the host must make it trap).

use std::cell::Cell;

wit_bindgen::generate!({ world: "sinker", path: "../../wit" });

use dataway::sinker::host::{LogLevel, log};

#[derive(Clone, Copy)]
enum Mode {
    Ok,
    Loop,
    Oom,
    Trap,
    Stack,
    WrongLen,
    LogFlood,
    EveryOther,
    Boom,
    Fs,
    Env,
    Clock,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Ok) };
}

struct Plugin;

#[inline(never)]
#[allow(unconditional_recursion)] // the point: it must overflow the stack
fn recurse(n: u64) -> u64 {
    // `black_box` keeps the optimiser from turning this into a loop.
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let mode = match config.as_str() {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "oom" => Mode::Oom,
            "trap" => Mode::Trap,
            "stack" => Mode::Stack,
            "wrong-len" => Mode::WrongLen,
            "log-flood" => Mode::LogFlood,
            "every-other" => Mode::EveryOther,
            "boom" => Mode::Boom,
            "fs" => Mode::Fs,
            "env" => Mode::Env,
            "clock" => Mode::Clock,
            "init-trap" => panic!("hostile plugin: trap in init"),
            "init-loop" => loop {
                std::hint::black_box(0);
            },
            "init-error" => return Err("hostile plugin: config refused".into()),
            other => return Err(format!("unknown mode `{other}`")),
        };
        MODE.with(|m| m.set(mode));
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        let n = points.len() as usize;
        match MODE.with(Cell::get) {
            Mode::Ok => vec![true; n],
            Mode::Loop => loop {
                std::hint::black_box(n);
            },
            Mode::Oom => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Trap => panic!("hostile plugin: trap in matches"),
            Mode::Stack => vec![recurse(0) > 0; n],
            Mode::WrongLen => vec![true; n.saturating_sub(1)],
            Mode::LogFlood => {
                for i in 0..10_000 {
                    log(LogLevel::Warn, &format!("flood line {i}"));
                }
                vec![true; n]
            }
            Mode::EveryOther => (0..n).map(|i| i % 2 == 0).collect(),
            Mode::Boom => {
                let m = points.measurements();
                if m.dict.iter().any(|v| v.as_deref() == Some("boom")) {
                    panic!("hostile plugin: boom");
                }
                vec![true; n]
            }
            // Each matches everything if the sandbox let anything through, so a leak shows
            // up as points at the sinker, not only as a missing trap.
            Mode::Fs => {
                let got = std::fs::read("/etc/hostname").is_ok()
                    || std::fs::read_dir("/").is_ok_and(|mut d| d.next().is_some())
                    || std::fs::read_dir(".").is_ok_and(|mut d| d.next().is_some());
                vec![got; n]
            }
            Mode::Env => {
                let got = std::env::vars_os().next().is_some()
                    || std::env::args_os().next().is_some()
                    || std::env::current_dir().is_ok();
                vec![got; n]
            }
            Mode::Clock => {
                let now = std::time::SystemTime::now();
                let got = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .is_ok_and(|d| d.as_secs() > 0);
                vec![got; n]
            }
        }
    }
}

export!(Plugin);
