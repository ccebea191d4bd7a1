//! The real `dataway` binary as a child process: started on a config file whose ingest
//! listens on port 0, its address read from the "ingest server listening" log line (no
//! free-port race), its stderr collected for assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A running `dataway run -c FILE`.
pub struct DaemonProcess {
    child: Option<Child>,
    /// Where ingest listens, as the daemon reported it.
    pub addr: SocketAddr,
    log: Arc<(Mutex<String>, Condvar)>,
    /// Set once stderr is closed (the process ended): waiting for more log is pointless.
    closed: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl DaemonProcess {
    /// Starts `dataway run -c cfg` with `env` added, and waits (up to 60 s, a limit for a
    /// stuck start, not a speed requirement) for it to report its ingest address. Write
    /// `listen = "127.0.0.1:0"` under `[ingest]` in `cfg`.
    pub fn start(cfg: &Path, env: &[(&str, &str)]) -> DaemonProcess {
        DaemonProcess::start_in(cfg, None, env)
    }

    /// As [`DaemonProcess::start`], in the working directory `cwd` if given.
    pub fn start_in(cfg: &Path, cwd: Option<&Path>, env: &[(&str, &str)]) -> DaemonProcess {
        DaemonProcess::start_with(cfg, env, |cmd| {
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
        })
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts line protocol to `/v1/write/<category>` and returns the status code.
    pub async fn post(&self, category: &str, body: String) -> u16 {
        reqwest::Client::new()
            .post(self.url(&format!("/v1/write/{category}")))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until `f` finds something in the log (re-checked on every new line), up to
    /// `timeout`, or until the process has ended (e.g. on a config error).
    pub fn wait_log<T>(&self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let (text, cv) = &*self.log;
        let deadline = Instant::now() + timeout;
        let mut text = text.lock().unwrap();
        loop {
            if let Some(v) = f(&text) {
                return Some(v);
            }
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            text = cv.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) through the `kill` command.
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `timeout` (a limit for a hung daemon: past it
    /// the process is killed and the test fails).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("wait for dataway") {
                self.child = None;
                // The pipe is closed: the reader ends once it has taken the last lines.
                if let Some(r) = self.reader.take() {
                    r.join().expect("stderr reader");
                }
                return st;
            }
            if Instant::now() >= deadline {
                child.kill().expect("kill a hung dataway");
                child.wait().expect("reap dataway");
                self.child = None;
                panic!("dataway did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill dataway");
        child.wait().expect("reap dataway");
    }
}

impl Drop for DaemonProcess {
    /// A test that panics must not leave a daemon behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                child.kill().expect("kill dataway");
            }
            child.wait().expect("reap dataway");
        }
    }
}

impl DaemonProcess {
    /// As [`DaemonProcess::start`], with the child's open-file limit, soft and hard, set to
    /// `limit` before it runs (so its raise to the hard limit cannot lift it): the daemon
    /// on a host that gives it few descriptors.
    pub fn start_with_open_file_limit(
        cfg: &Path,
        env: &[(&str, &str)],
        limit: u64,
    ) -> DaemonProcess {
        DaemonProcess::start_with(cfg, env, |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit(2) runs, which is
            // async-signal-safe; nothing is allocated or locked.
            unsafe {
                cmd.pre_exec(move || {
                    use rustix::process::{Resource, Rlimit, setrlimit};
                    let l = Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    };
                    setrlimit(Resource::Nofile, l).map_err(std::io::Error::from)
                });
            }
        })
    }

    /// As [`DaemonProcess::start`], with `customize` applied to the command before it is
    /// spawned.
    pub fn start_with(
        cfg: &Path,
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> DaemonProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
        cmd.args(["run", "-c"])
            .arg(cfg)
            .env_remove("ENV_DATAWAY")
            .env_remove("ENV_DATAWAY_TIMEOUT")
            .env_remove("ENV_DATAWAY_HTTP_PROXY")
            .env_remove("RUST_LOG")
            // The default compiled-plugin cache is $XDG_CACHE_HOME/dataway/plugins: keep it
            // in the build directory, never the user's ~/.cache.
            .env(
                "XDG_CACHE_HOME",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("start dataway");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        // Drain stderr for the whole life of the process: a full pipe would block its logging.
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = closed.clone();
        let reader = std::thread::spawn(move || {
            let (text, cv) = &*l;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                cv.notify_all();
            }
            let _held = text.lock().unwrap();
            c.store(true, std::sync::atomic::Ordering::SeqCst);
            cv.notify_all();
        });
        let mut p = DaemonProcess {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            closed,
            reader: Some(reader),
        };
        let line = p
            .wait_log(Duration::from_secs(60), |l| {
                l.lines()
                    .find(|x| x.contains("ingest server listening"))
                    .map(String::from)
            })
            .unwrap_or_else(|| panic!("dataway did not report its address:\n{}", p.log()));
        // A text line (`... listen=ADDR`) or, with `[log] format = "json"`, a JSON one.
        let json = serde_json::from_str::<serde_json::Value>(&line).ok();
        p.addr = match json {
            Some(v) => v["listen"].as_str().and_then(|a| a.parse().ok()),
            None => line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .and_then(|a| a.parse().ok()),
        }
        .unwrap_or_else(|| panic!("no listen address in {line}"));
        p
    }
}
