//! Hostile files on the host (issue 11): plugin files that are not regular files or are
//! too big, a compiled-plugin cache others can write to or that was tampered with, and the
//! modes of the data files the daemon writes. Real files, the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::DaemonProcess;

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// A sparse file of `len` bytes: nothing on disk, a huge size to anyone who reads it.
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// A config file with plugins in `plugins/`, `max_plugin_size` set, and `sinkers` (TOML of
/// `[[dataway.sinkers]]` tables) appended; (config file, plugins dir).
fn config_with(max_plugin_size: u64, sinkers: &str) -> (PathBuf, PathBuf) {
    let out = common::scratch_dir("out");
    let file = common::config_file(&[format!("file://{}", out.display())], "", "");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[dataway.sinker_limits]\n",
        &format!("[dataway.sinker_limits]\nmax_plugin_size = {max_plugin_size}\n"),
    );
    let sinkers = sinkers.replace("OUT", &format!("file://{}", out.display()));
    std::fs::write(&file, format!("{text}\n{sinkers}")).unwrap();
    let plugins = file.parent().unwrap().join("plugins");
    (file, plugins)
}

const SINKERS: &str = r#"
[[dataway.sinkers]]
name = "fifo"
categories = ["metric"]
plugin = "x.wasm"
urls = ["OUT"]

[[dataway.sinkers]]
name = "zero"
categories = ["metric"]
plugin = "zero.wasm"
urls = ["OUT"]

[[dataway.sinkers]]
name = "big"
categories = ["metric"]
plugin = "big.wasm"
urls = ["OUT"]
"#;

/// The three hostile plugin files of [`SINKERS`]: a FIFO, a symlink to /dev/zero, and a
/// sparse file of 2 MiB (over a 1 MiB limit).
fn hostile_plugins(plugins: &Path) {
    mkfifo(&plugins.join("x.wasm"));
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).unwrap();
    sparse(&plugins.join("big.wasm"), 2 << 20);
}

/// Runs the binary with `args`; a hang (past 60 s, a limit for a stuck process, not a
/// speed requirement) kills it and fails the test. (success, stdout, stderr).
fn run_bounded(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("dataway {args:?} hung: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start-up with a FIFO, /dev/zero and an oversized plugin stays healthy; a FIFO plugin and
/// a FIFO sidecar dropped while it runs are skipped on reload; SIGTERM still stops it.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugin_files_block_neither_start_up_nor_reload_nor_shutdown() {
    let (cfg, plugins) = config_with(1 << 20, SINKERS);
    hostile_plugins(&plugins);
    let mut d = DaemonProcess::start(&cfg, &[]);
    for (file, why) in [
        ("x.wasm", "not a regular file (a FIFO)"),
        ("zero.wasm", "not a regular file (a character device)"),
        (
            "big.wasm",
            "2097152 bytes or more, over the limit of 1048576 bytes",
        ),
    ] {
        let path = plugins.join(file).display().to_string();
        d.wait_log(Duration::from_secs(60), |l| {
            l.lines()
                .any(|x| x.contains("cannot read plugin") && x.contains(&path) && x.contains(why))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("no warning for {file} ({why}):\n{}", d.log()));
    }
    let health = reqwest::get(d.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(d.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (sinker, result) in [
        ("fifo", "not_regular_file"),
        ("zero", "not_regular_file"),
        ("big", "too_large"),
    ] {
        let series =
            format!("dataway_sinker_reloads_total{{result=\"{result}\",sinker=\"{sinker}\"}}");
        assert_eq!(
            common::sample(&metrics, &series),
            Some(1.0),
            "{series}\n{metrics}"
        );
    }
    // While running: a drop-in whose plugin is a FIFO, and one whose sidecar is.
    std::fs::write(
        plugins.join("w.toml"),
        format!(
            "categories = [\"metric\"]\nurls = [\"file://{}\"]\n",
            plugins.join("w-out").display()
        ),
    )
    .unwrap();
    mkfifo(&plugins.join("w.wasm"));
    std::fs::write(plugins.join("v.wasm"), b"").unwrap();
    mkfifo(&plugins.join("v.toml"));
    for (file, what) in [
        ("w.wasm", "cannot read plugin"),
        ("v.toml", "cannot read drop-in sidecar"),
    ] {
        let path = plugins.join(file).display().to_string();
        d.wait_log(Duration::from_secs(60), |l| {
            l.lines()
                .any(|x| x.contains(what) && x.contains(&path) && x.contains("a FIFO"))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("no warning for {file} on reload:\n{}", d.log()));
    }
    assert_eq!(reqwest::get(d.url("/health")).await.unwrap().status(), 200);
    d.signal("TERM");
    let st = d.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}:\n{}", d.log());
}

/// `dataway check` names each hostile file and why, and returns.
#[test]
fn check_names_hostile_plugin_files_and_returns() {
    let (cfg, plugins) = config_with(1 << 20, SINKERS);
    hostile_plugins(&plugins);
    let (ok, _, stderr) = run_bounded(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert!(!ok, "{stderr}");
    for (file, why) in [
        ("x.wasm", "not a regular file (a FIFO)"),
        ("zero.wasm", "not a regular file (a character device)"),
        ("big.wasm", "over the limit of 1048576 bytes"),
    ] {
        let path = plugins.join(file).display().to_string();
        assert!(
            stderr.lines().any(|l| l.contains(&path) && l.contains(why)),
            "{file}: {why}\n{stderr}"
        );
    }
}

/// `dataway sinker test` on a FIFO or /dev/zero fails at once, saying why.
#[test]
fn sinker_test_refuses_files_that_are_not_regular() {
    let dir = common::scratch_dir("sinker-test-hostile");
    hostile_plugins(&dir);
    let cache = common::scratch_dir("sinker-test-hostile-cache");
    for (file, why) in [("x.wasm", "a FIFO"), ("zero.wasm", "a character device")] {
        let path = dir.join(file);
        let (ok, _, stderr) = run_bounded(
            &["sinker", "test", "--plugin", path.to_str().unwrap()],
            &[("XDG_CACHE_HOME", &cache)],
        );
        assert!(!ok);
        assert!(
            stderr.contains(&format!("not a regular file ({why})")),
            "{stderr}"
        );
    }
}

/// The bounded read is a second guard: a file that says it is small (here a `/proc` file,
/// size 0) but gives more is refused at `limit + 1` bytes, not read to its end.
#[test]
fn a_file_bigger_than_its_size_says_is_cut_off_at_the_limit() {
    use dataway::sinker::plugin::{FileError, read_plugin_file};
    let path = Path::new("/proc/self/maps");
    assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
    match read_plugin_file(path, 16) {
        Err(FileError::TooLarge { size, limit }) => assert_eq!((size, limit), (17, 16)),
        other => panic!("{other:?}"),
    }
    assert!(read_plugin_file(path, 1 << 20).unwrap().len() > 16);
}

fn sinker_test_filter(xdg: &Path) -> String {
    let (ok, stdout, stderr) = common::sinker_test_in(
        &["--filters", r#"["{ usage > 90 }"]"#],
        "cpu usage=95\n",
        None,
        xdg,
    );
    assert!(ok, "{stdout}{stderr}");
    stderr
}

const FROM_CACHE: &str = "compiled plugin loaded from the cache";

/// A world-writable cache directory is not loaded from; a tampered artifact is recompiled.
#[test]
fn the_plugin_cache_is_used_only_when_private_and_untampered() {
    let xdg = common::scratch_dir("xdg-trust");
    let dir = xdg.join("dataway/plugins");
    let first = sinker_test_filter(&xdg);
    assert!(first.contains("plugin compiled in"), "{first}");
    assert!(sinker_test_filter(&xdg).contains(FROM_CACHE));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let open = sinker_test_filter(&xdg);
    assert!(!open.contains(FROM_CACHE), "{open}");
    assert!(
        open.contains("not using the compiled-plugin cache") && open.contains("mode 777"),
        "{open}"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(sinker_test_filter(&xdg).contains(FROM_CACHE));
    let artifact = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a compiled plugin in the cache");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&artifact, bytes).unwrap();
    let tampered = sinker_test_filter(&xdg);
    assert!(!tampered.contains(FROM_CACHE), "{tampered}");
    assert!(tampered.contains("checksum does not match"), "{tampered}");
    // Rewritten by the recompile: trusted again.
    assert!(sinker_test_filter(&xdg).contains(FROM_CACHE));
}

/// Under umask 0 the daemon still makes its data directories 0700 and files 0600: WAL,
/// fail-cache, compiled-plugin cache and its key.
#[test]
fn data_files_are_private_whatever_the_umask() {
    let root = common::scratch_dir("umask");
    let data = root.join("dataway-data");
    let cache = root.join("cache");
    let cfg = root.join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"http://127.0.0.1:1?token=tkn_x\"]\nplugins_dir = \"{p}\"\n\
             [dataway.fail_cache]\npath = \"{d}/failcache\"\n\
             [dataway.wal]\nenabled = true\npath = \"{d}/wal\"\n\
             [dataway.sinker_limits]\ncache_dir = \"{c}\"\n\
             [[dataway.sinkers]]\nname = \"dk\"\ncategories = [\"metric\"]\n\
             plugin = \"datakit_filter.wasm\"\nconfig = [\"{{ usage > 90 }}\"]\n\
             urls = [\"http://127.0.0.1:1?token=tkn_y\"]\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n",
            p = root.join("plugins").display(),
            d = data.display(),
            c = cache.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "umask 0 && exec \"$0\" run -c \"$1\""])
        .arg(env!("CARGO_BIN_EXE_dataway"))
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log until ingest listens: by then the sinkers (their plugin compiled and
    // cached), the endpoints (their fail-cache files) and the WAL are all open.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log += &line;
            log.push('\n');
            if line.contains("ingest server listening") {
                let _ = tx.send(Ok(log.clone()));
            }
        }
        let _ = tx.send(Err(log));
    });
    let loaded = rx.recv_timeout(Duration::from_secs(60));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = |dir: &Path, ext: &str| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let result = std::panic::catch_unwind(|| {
        let log = match &loaded {
            Ok(Ok(log)) => log.clone(),
            other => panic!("the daemon did not start: {other:?}"),
        };
        assert!(log.contains("plugin loaded"), "{log}");
        for dir in [&data, &data.join("wal"), &data.join("failcache"), &cache] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        let mut checked = vec![data.join("wal/wal.redb"), cache.join("cache.key")];
        checked.extend(files(&data.join("failcache"), "redb"));
        checked.extend(files(&cache, "cwasm"));
        assert!(checked.len() >= 5, "{checked:?}");
        for f in checked {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
