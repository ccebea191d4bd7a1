use super::*;
use crate::category::Category;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_str(text: &str) -> Result<Config, ConfigError> {
    let mut cfg = Config::from_toml(text, "test.toml")?;
    cfg.apply_env(no_env)?;
    cfg.validate()?;
    Ok(cfg)
}

#[test]
fn embedded_defaults_are_valid_and_write_to_a_local_directory() {
    let cfg = Config::load(None, no_env).unwrap();
    assert_eq!(cfg.dataway.urls, vec!["file://dataway-out"]);
    assert_eq!(cfg.ingest.listen.to_string(), "127.0.0.1:9529");
    assert_eq!(cfg.dataway.timeout, Duration::from_secs(30));
    assert_eq!(cfg.dataway.max_raw_body_size, 1024 * 1024);
    assert!(cfg.dataway.gzip);
}

#[test]
fn datakit_key_names_are_read() {
    let cfg = load_str(
        r#"
        [dataway]
        urls = ["https://openway.example.com?token=tkn_0123456789abcdef0123456789abcdef"]
        timeout = "5s"
        http_proxy = "http://127.0.0.1:3128"
        max_idle_conns_per_host = 8
        idle_timeout = "1m"
        max_retry_count = 2
        retry_delay = "200ms"
        gzip = false
        max_raw_body_size = 4096
        [ingest]
        listen = "127.0.0.1:0"
        token = "secret"
        max_body = 1000
        [log]
        level = "debug"
        "#,
    )
    .unwrap();
    let d = &cfg.dataway;
    assert_eq!(d.timeout, Duration::from_secs(5));
    assert_eq!(d.idle_timeout, Duration::from_secs(60));
    assert_eq!(d.retry_delay, Duration::from_millis(200));
    assert_eq!(d.max_retry_count, 2);
    assert_eq!(d.max_idle_conns_per_host, 8);
    assert!(!d.gzip);
    assert_eq!(d.max_raw_body_size, 4096);
    assert_eq!(cfg.ingest.token.as_deref(), Some("secret"));
    assert_eq!(cfg.ingest.max_body, 1000);
    assert_eq!(cfg.log.level, "debug");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    // `url` is DataKit's (deprecated) key; `urll` neither schema has.
    let err = load_str("[dataway]\nurll = \"http://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `urll`"), "{err}");
    assert!(err.contains("test.toml"), "{err}");
    let err = load_str("[sinker]\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `sinker`"), "{err}");
}

#[test]
fn a_small_memory_budget_lowers_the_default_body_limit_to_half_of_it() {
    let cfg = load_str("[dataway]\nmax_pending_bytes = 1000000\n").unwrap();
    assert_eq!(cfg.ingest.max_body, 500_000);
    let cfg =
        load_str("[dataway]\nmax_pending_bytes = 1000000\n[ingest]\nmax_body = 400000\n").unwrap();
    assert_eq!(cfg.ingest.max_body, 400_000);
    assert_eq!(load_str("").unwrap().ingest.max_body, 32 * 1024 * 1024);
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("[dataway]\ntimeout = \"30x\"\n", "timeout"),
        ("[dataway]\ntimeout = \"0s\"\n", "dataway.timeout"),
        ("[dataway]\ngzip = \"yes\"\n", "gzip"),
        ("[dataway]\nurls = []\n", "dataway.urls"),
        ("[dataway]\nurls = [\"ftp://x\"]\n", "dataway.urls[0]"),
        (
            "[dataway]\nurls = [\"file://a\", \"http://\"]\n",
            "dataway.urls[1]",
        ),
        (
            "[dataway]\nhttp_proxy = \"127.0.0.1:3128\"\n",
            "dataway.http_proxy",
        ),
        (
            "[dataway]\nmax_raw_body_size = 10\n",
            "dataway.max_raw_body_size",
        ),
        ("[dataway]\nworkers = 0\n", "dataway.workers"),
        ("[ingest]\nlisten = \"nowhere\"\n", "listen"),
        ("[ingest]\ntoken = \"\"\n", "ingest.token"),
        (
            "[ingest]\nbody_read_timeout = \"0s\"\n",
            "ingest.body_read_timeout",
        ),
        (
            "[dataway]\nmax_pending_bytes = 1000000\n[ingest]\nmax_body = 500001\n",
            "ingest.max_body",
        ),
        ("[log]\nlevel = \"loud=?=\"\n", "log.level"),
    ];
    for (text, key) in cases {
        let err = load_str(text).unwrap_err().to_string();
        assert!(
            err.contains(key),
            "error for {text:?} should name {key}: {err}"
        );
    }
}

#[test]
fn env_overrides_urls_timeout_and_proxy() {
    let env = |k: &str| match k {
        "ENV_DATAWAY" => {
            Some("http://127.0.0.1:1?token=tkn_a, http://127.0.0.1:2?token=tkn_b".into())
        }
        "ENV_DATAWAY_TIMEOUT" => Some("7s".into()),
        "ENV_DATAWAY_HTTP_PROXY" => Some("http://127.0.0.1:3128".into()),
        _ => None,
    };
    let cfg = Config::load(None, env).unwrap();
    assert_eq!(
        cfg.dataway.urls,
        vec![
            "http://127.0.0.1:1?token=tkn_a",
            "http://127.0.0.1:2?token=tkn_b"
        ]
    );
    assert_eq!(cfg.dataway.timeout, Duration::from_secs(7));
    assert_eq!(
        cfg.dataway.http_proxy.as_deref(),
        Some("http://127.0.0.1:3128")
    );

    let bad = |k: &str| (k == "ENV_DATAWAY_TIMEOUT").then(|| "soon".to_string());
    let err = Config::load(None, bad).unwrap_err().to_string();
    assert!(err.contains("ENV_DATAWAY_TIMEOUT"), "{err}");
}

#[test]
fn missing_file_says_which() {
    let err = Config::load(Some(Path::new("/nonexistent/dataway.toml")), no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/dataway.toml"), "{err}");
}

#[test]
fn the_documented_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dataway.toml");
    Config::load(Some(&path), no_env).unwrap();
}

#[test]
fn sinkers_are_read_with_overrides_and_their_config_as_json() {
    let cfg = load_str(
        r#"
        [dataway]
        urls = ["file://main"]
        timeout = "9s"
        [[dataway.sinkers]]
        name = "web"
        categories = ["M", "logging"]
        plugin = "datakit_filter.wasm"
        config = { filters = ["{ host = 'web-1' }"] }
        urls = ["file://sink"]
        timeout = "2s"
        gzip = false
        [[dataway.sinkers]]
        name = "all"
        categories = ["metric", "metrics"]
        urls = ["file://all"]
        "#,
    )
    .unwrap();
    let s = &cfg.dataway.sinkers[0];
    assert_eq!(
        s.parsed_categories(),
        vec![Category::Metric, Category::Logging]
    );
    assert_eq!(s.plugin_config(), r#"{"filters":["{ host = 'web-1' }"]}"#);
    // The overrides' effect on endpoints is tested in `endpoint` (config imports nothing
    // above it).
    assert_eq!(s.timeout, Some(Duration::from_secs(2)));
    assert_eq!(s.gzip, Some(false));
    let all = &cfg.dataway.sinkers[1];
    assert_eq!(all.timeout, None);
    assert_eq!(all.parsed_categories(), vec![Category::Metric]);
    assert_eq!(all.plugin_config(), "");
}

#[test]
fn bad_sinkers_name_the_key() {
    let base = "[dataway]\nurls = [\"file://m\"]\n[[dataway.sinkers]]\n";
    let cases = [
        (
            "name = \"a b\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\n",
            "dataway.sinkers[0].name",
        ),
        (
            "name = \"s\"\ncategories = []\nurls = [\"file://s\"]\n",
            "dataway.sinkers[0].categories",
        ),
        (
            "name = \"s\"\ncategories = [\"mertic\"]\nurls = [\"file://s\"]\n",
            "dataway.sinkers[0].categories[0]",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\n",
            "dataway.sinkers[0].urls",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"ftp://x\"]\n",
            "dataway.sinkers[0].urls[0]",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\nplugin = \"../x.wasm\"\n",
            "dataway.sinkers[0].plugin",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\nhttp_proxy = \"proxy:1\"\n",
            "dataway.sinkers[0].http_proxy",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\nworkers = 0\n",
            "dataway.sinkers[0].workers",
        ),
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\n[[dataway.sinkers]]\nname = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://t\"]\n",
            "dataway.sinkers[1].name",
        ),
        // DataKit's `filters` is the built-in filter's config: with another plugin it is
        // ambiguous.
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\nplugin = \"x.wasm\"\nfilters = [\"{ a = 1 }\"]\n",
            "dataway.sinkers[0].filters",
        ),
    ];
    for (sinker, key) in cases {
        let err = load_str(&format!("{base}{sinker}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{sinker}: {err}");
    }
    for (limit, key) in [
        ("timeout = \"0s\"", "sinker_limits.timeout"),
        ("max_memory = 1000", "sinker_limits.max_memory"),
        ("max_stack = 10", "sinker_limits.max_stack"),
        ("quarantine_after = 0", "sinker_limits.quarantine_after"),
        ("timeout = \"2m\"", "sinker_limits.timeout"),
        ("quarantine_max = \"1000y\"", "sinker_limits.quarantine_max"),
        (
            "quarantine_min = \"1m\"\nquarantine_max = \"1s\"",
            "sinker_limits.quarantine_max",
        ),
    ] {
        let err = load_str(&format!("[dataway.sinker_limits]\n{limit}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{limit}: {err}");
    }
}

#[test]
fn a_drop_in_sidecar_takes_name_and_plugin_from_its_file_name() {
    let s = SinkerConfig::from_sidecar(
        "categories = [\"L\"]\nurls = [\"file://x\"]\nconfig = \"cpu\"\n",
        "nginx",
        "plugins/nginx.toml",
    )
    .unwrap();
    assert_eq!(s.name, "nginx");
    assert_eq!(s.plugin.as_deref(), Some("nginx.wasm"));
    s.validate("plugins/nginx.toml").unwrap();
    let err = SinkerConfig::from_sidecar(
        "name = \"other\"\ncategories = [\"L\"]\nurls = [\"file://x\"]\n",
        "nginx",
        "plugins/nginx.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("plugins/nginx.toml") && err.contains("file name"),
        "{err}"
    );
}

/// The whole config as TOML, for comparing configs (durations in one canonical form).
fn as_toml(cfg: &Config) -> toml::Value {
    toml::Value::try_from(cfg).expect("a config serialises")
}

/// A README default as TOML: `30s` and `info` are strings there, `64` and `true` are not.
fn readme_value(raw: &str) -> String {
    if toml::from_str::<toml::Table>(&format!("k = {raw}")).is_ok() {
        raw.to_string()
    } else {
        format!("{raw:?}")
    }
}

/// `section.key` set to `value` (TOML) on top of the defaults: equal to the defaults iff the
/// value is the default. `none` means the key is absent from the default config.
fn assert_documented_default(section: &str, key: &str, value: &str, origin: &str) {
    let defaults = as_toml(&Config::default());
    let default = section
        .split('.')
        .chain([key])
        .try_fold(&defaults, |v, k| v.get(k));
    if value == "none" {
        assert!(
            default.is_none(),
            "{origin}: [{section}] {key} is documented as none but defaults to {default:?}"
        );
        return;
    }
    let text = format!("[{section}]\n{key} = {}\n", readme_value(value));
    let cfg = Config::from_toml(&text, origin).unwrap_or_else(|e| panic!("{origin}: {e}"));
    assert_eq!(
        as_toml(&cfg),
        defaults,
        "{origin}: [{section}] {key} is documented as {value} but defaults to {default:?}"
    );
}

/// Every row of the README's defaults table (*Configuration*) against `Config::default()`.
#[test]
fn the_readme_defaults_table_is_the_default_config() {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration section");
    let mut section = String::new();
    let mut rows = 0;
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line
            .split(" | ")
            .map(|c| c.trim_matches(['|', ' ']))
            .collect();
        // `[dataway.fail_cache] enabled` starts a section; `path` continues the last one.
        let key_cell = cells[0];
        let key = match key_cell.strip_prefix("`[") {
            Some(rest) => {
                let (s, k) = rest.split_once("] ").expect("`[section] key`");
                section = s.to_string();
                k
            }
            None => key_cell,
        }
        .trim_matches('`');
        let value = match cells[1].split('`').nth(1) {
            Some(v) => v,
            None => cells[1],
        };
        assert!(!section.is_empty(), "a row before any [section]: {line}");
        assert_documented_default(&section, key, value, &format!("README row `{line}`"));
        rows += 1;
    }
    assert!(
        rows >= 25,
        "only {rows} rows found: did the table's format change?"
    );
}

/// The README's `[dataway.sinker_limits]` block says "defaults shown": they are.
#[test]
fn the_readme_sinker_limits_are_the_defaults() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("[dataway.sinker_limits]")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("README shows [dataway.sinker_limits]");
    let mut keys = 0;
    for line in block.lines().map(str::trim) {
        let Some((key, rest)) = line.split_once(" = ") else {
            continue;
        };
        if key.starts_with('#') {
            continue;
        }
        let value = rest.split(" #").next().unwrap().trim();
        let text = format!("[dataway.sinker_limits]\n{key} = {value}\n");
        let cfg = Config::from_toml(&text, "README").unwrap();
        assert_eq!(
            as_toml(&cfg),
            as_toml(&Config::default()),
            "README: sinker_limits.{key} = {value} is not the default"
        );
        keys += 1;
    }
    assert!(keys >= 8, "only {keys} limits found");
}

/// `examples/dataway.toml` says "every key, with its default": loading it gives the defaults.
#[test]
fn the_example_config_holds_the_defaults() {
    let text = include_str!("../../examples/dataway.toml");
    let cfg = Config::from_toml(text, "examples/dataway.toml").unwrap();
    assert_eq!(as_toml(&cfg), as_toml(&Config::default()));
}

#[test]
fn a_bad_log_level_is_an_error_naming_log_level() {
    for bad in ["verbose", "warning", "info,loud", "dataway=verbose", ""] {
        let err = load_str(&format!("[log]\nlevel = {bad:?}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.level") && err.contains("debug"),
            "{bad:?}: {err}"
        );
    }
    for good in [
        "info",
        "INFO",
        "Warn",
        "off",
        "info,dataway=debug",
        "dataway::sinker=trace",
    ] {
        let cfg = load_str(&format!("[log]\nlevel = {good:?}\n"))
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        assert_eq!(cfg.log.level, good);
    }
    // The plain levels are read as levels, in any case, not as target names.
    let filter = tracing_subscriber::EnvFilter::new("WARN");
    assert_eq!(
        filter.max_level_hint(),
        Some(tracing_subscriber::filter::LevelFilter::WARN)
    );
}

#[test]
fn a_bad_duration_shows_how_to_write_one() {
    for text in [
        "[dataway]\ntimeout = \"30x\"\n",
        "[dataway]\ntimeout = 30\n",
        "[dataway.fail_cache]\nclean_interval = \"soon\"\n",
        "[dataway.sinker_limits]\ntimeout = \"1 fortnight\"\n",
        "[[dataway.sinkers]]\nname = \"s\"\ncategories = [\"M\"]\nurls = [\"file://x\"]\ntimeout = \"x\"\n",
    ] {
        let err = load_str(text).unwrap_err().to_string();
        assert!(
            err.contains("`30s`") && err.contains("`500ms`"),
            "{text:?}: {err}"
        );
    }
    let bad = |k: &str| (k == "ENV_DATAWAY_TIMEOUT").then(|| "soon".to_string());
    let err = Config::load(None, bad).unwrap_err().to_string();
    assert!(
        err.contains("ENV_DATAWAY_TIMEOUT") && err.contains("`30s`"),
        "{err}"
    );
}

#[test]
fn bad_environment_values_name_the_variable() {
    let proxy = |k: &str| (k == "ENV_DATAWAY_HTTP_PROXY").then(|| "proxy:3128".to_string());
    let err = Config::load(None, proxy).unwrap_err().to_string();
    assert!(
        err.contains("ENV_DATAWAY_HTTP_PROXY") && err.contains("http://"),
        "{err}"
    );
    assert!(!err.contains("dataway.http_proxy"), "{err}");
    let urls = |k: &str| (k == "ENV_DATAWAY").then(|| "file://a,ftp://b".to_string());
    let err = Config::load(None, urls).unwrap_err().to_string();
    assert!(
        err.contains("ENV_DATAWAY") && err.contains("ftp://b"),
        "{err}"
    );
    assert!(!err.contains("dataway.urls"), "{err}");
}

/// Relative paths of a config file are relative to its folder, not to where the daemon
/// was started; absolute ones, `http` URLs, the environment's URLs and "" are kept.
#[test]
fn relative_paths_resolve_against_the_config_files_folder() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let file = etc.join("dataway.toml");
    std::fs::write(
        &file,
        r#"
        [dataway]
        urls = ["file://out", "file:///abs/out", "http://127.0.0.1:1?token=tkn_x"]
        plugins_dir = "plugins"
        tls_ca_file = "ca.pem"
        [[dataway.sinkers]]
        name = "s"
        categories = ["M"]
        urls = ["file://sink"]
        [dataway.fail_cache]
        path = "data/failcache"
        [dataway.wal]
        path = "/var/lib/dataway/wal"
        [dataway.sinker_limits]
        cache_dir = "cache"
        "#,
    )
    .unwrap();
    // A real CA certificate next to the config file: validation reads it from there.
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(etc.join("ca.pem"), ca.self_signed(&key).unwrap().pem()).unwrap();
    let cfg = Config::load(Some(&file), no_env).unwrap();
    let d = &cfg.dataway;
    let at = |p: &str| etc.join(p);
    assert_eq!(
        d.urls,
        [
            format!("file://{}", at("out").display()),
            "file:///abs/out".to_string(),
            "http://127.0.0.1:1?token=tkn_x".to_string(),
        ]
    );
    assert_eq!(
        d.sinkers[0].urls,
        [format!("file://{}", at("sink").display())]
    );
    assert_eq!(d.plugins_dir, at("plugins"));
    assert_eq!(d.fail_cache.path, at("data/failcache"));
    assert_eq!(d.wal.path, Path::new("/var/lib/dataway/wal"));
    assert_eq!(d.sinker_limits.cache_dir.as_deref(), Some(&*at("cache")));
    assert_eq!(d.tls_ca_file.as_deref(), Some(&*at("ca.pem")));

    // "" turns the compiled cache off: it stays "".
    std::fs::write(&file, "[dataway.sinker_limits]\ncache_dir = \"\"\n").unwrap();
    let cfg = Config::load(Some(&file), no_env).unwrap();
    assert_eq!(cfg.dataway.sinker_limits.cache_dir, Some(PathBuf::new()));
    // The defaults in a file are resolved too; URLs from the environment are not.
    let env = |k: &str| (k == "ENV_DATAWAY").then(|| "file://env-out".to_string());
    let cfg = Config::load(Some(&file), env).unwrap();
    assert_eq!(cfg.dataway.urls, ["file://env-out"]);
    assert_eq!(cfg.dataway.fail_cache.path, at("dataway-data/failcache"));
    assert_eq!(cfg.dataway.plugins_dir, at("plugins"));
    // Without a file, the embedded defaults stay relative to the working directory.
    let cfg = Config::load(None, no_env).unwrap();
    assert_eq!(
        cfg.dataway.fail_cache.path,
        Path::new("dataway-data/failcache")
    );
    assert_eq!(cfg.dataway.urls, ["file://dataway-out"]);

    // A drop-in sidecar's file:// URLs are relative to its folder.
    let s = SinkerConfig::from_sidecar(
        "categories = [\"L\"]\nurls = [\"file://x\", \"file:///y\"]\n",
        "nginx",
        "/etc/dataway/plugins/nginx.toml",
    )
    .unwrap();
    assert_eq!(s.urls, ["file:///etc/dataway/plugins/x", "file:///y"]);
}

/// DataKit's `[dataway]` keys (a file with any key only DataKit has is read as DataKit's).
#[test]
fn datakit_dataway_keys_map_onto_ours() {
    let (cfg, notes) = Config::from_toml_noted(
        r#"
        [dataway]
        urls = ["https://openway.example.com?token=tkn_0123456789abcdef0123456789abcdef"]
        timeout = "10s"
        timeout_v2 = "5s"
        http_proxy = ""
        max_retry_count = 4
        retry_delay = "200ms"
        max_idle_conns = 16
        max_idle_conns_per_host = 0
        max_raw_body_size = 0
        content_encoding = "Protobuf"
        enable_httptrace = true
        tls_insecure = true
        drop_expired_package_at = "24h"
        global_customer_keys = ["project"]
        enable_sinker = true
        sinker_header_version = "v2"
        [dataway.ntp]
        interval = "5m"
        diff = "30s"
        [dataway.wal]
        max_capacity_gb = 0.5
        path = "/var/cache/dw-wal"
        fail_cache_clean_interval = "30s"
        workers = 4
        "#,
        "test",
    )
    .unwrap();
    let d = &cfg.dataway;
    let defaults = DatawayConfig::default();
    assert_eq!(d.timeout, Duration::from_secs(5), "timeout_v2 wins");
    assert_eq!(d.http_proxy, None, "empty is not set");
    assert_eq!(d.max_retry_count, 3, "4 attempts");
    assert_eq!(
        d.max_idle_conns_per_host, 16,
        "64 (DataKit's 0) capped by 16"
    );
    assert_eq!(d.max_raw_body_size, defaults.max_raw_body_size);
    assert_eq!(d.content_encoding, ContentEncoding::V2);
    assert!(d.tls_insecure && d.enable_sinker);
    assert_eq!(d.global_customer_keys, vec!["project"]);
    assert_eq!(d.sinker_header_version, SinkerHeaderVersion::V2);
    assert_eq!(d.fail_cache.drop_expired_after, Duration::from_secs(86_400));
    assert_eq!(d.fail_cache.max_capacity, 1 << 29);
    assert_eq!(d.fail_cache.path, PathBuf::from("/var/cache/dw-wal"));
    assert_eq!(d.fail_cache.clean_interval, Duration::from_secs(30));
    assert!(
        !d.wal.enabled,
        "DataKit's WAL is not an acknowledgement WAL"
    );
    assert!(
        notes
            .dialect
            .as_deref()
            .unwrap()
            .contains("DataKit's `dataway."),
        "{notes:?}"
    );
    let ignored = notes.ignored.join("\n");
    for key in [
        "dataway.timeout",
        "dataway.enable_httptrace",
        "dataway.ntp",
        "dataway.wal.workers",
    ] {
        assert_eq!(ignored.matches(&format!("`{key}`")).count(), 1, "{ignored}");
    }
    assert_eq!(notes.ignored.len(), 4, "{ignored}");
    cfg.validate().unwrap();
}

/// Our own format keeps our meanings: `max_retry_count` counts retries, 0 stays 0.
#[test]
fn our_own_format_is_not_read_as_datakit() {
    let (cfg, notes) = Config::from_toml_noted(
        "[dataway]\nurls = [\"file://x\"]\nmax_retry_count = 4\n[dataway.wal]\nenabled = true\n",
        "test",
    )
    .unwrap();
    assert_eq!(notes, Notes::default());
    assert_eq!(cfg.dataway.max_retry_count, 4);
    assert!(cfg.dataway.wal.enabled);
}

#[test]
fn datakit_sinkers_map_to_ours_with_filters_as_the_builtin_filter() {
    let (cfg, notes) = Config::from_toml_noted(
        r#"
        [dataway]
        urls = ["http://127.0.0.1:9528?token=tkn_main"]
        [[dataway.sinkers]]
        categories = ["M", "CO"]
        filters = ["{ host = 'web-1' }", "{ cpu = 'cpu-total' }"]
        url = "https://sink.example.com:8443"
        token = "tkn_sink"
        proxy = "10.0.0.1:3128"
        [[dataway.sinkers]]
        categories = ["L"]
        url = "http://127.0.0.1:9529?token=tkn_other"
        proxy = ""
        "#,
        "test",
    )
    .unwrap();
    cfg.validate().unwrap();
    let s = &cfg.dataway.sinkers[0];
    assert_eq!(s.name, "sinker0-sink.example.com-8443");
    assert_eq!(s.urls, vec!["https://sink.example.com:8443?token=tkn_sink"]);
    assert_eq!(s.http_proxy.as_deref(), Some("http://10.0.0.1:3128"));
    assert_eq!(s.plugin.as_deref(), Some("datakit_filter.wasm"));
    assert_eq!(
        s.plugin_config(),
        r#"["{ host = 'web-1' }","{ cpu = 'cpu-total' }"]"#
    );
    assert_eq!(
        s.parsed_categories(),
        vec![Category::Metric, Category::CustomObject]
    );
    let t = &cfg.dataway.sinkers[1];
    assert_eq!(t.name, "sinker1-127.0.0.1-9529");
    assert_eq!(t.plugin, None, "no filters: every point of its categories");
    assert_eq!(t.http_proxy, None);
    assert!(
        notes.mapped.iter().all(|m| !m.contains("tkn_")),
        "a token in the notes: {notes:?}"
    );
}

#[test]
fn datakit_1_4_sinks_become_sinkers_and_other_targets_are_refused() {
    let (cfg, _) = Config::from_toml_noted(
        r#"
        [dataway]
        urls = ["http://127.0.0.1:9528?token=t"]
        [sinks]
          [[sinks.sink]]
            categories = ["M"]
            filters = ["{host='user-ubuntu'}"]
            target = "dataway"
            token = "tkn_1"
            url = "http://127.0.0.1:9530"
        "#,
        "test",
    )
    .unwrap();
    cfg.validate().unwrap();
    let s = &cfg.dataway.sinkers[0];
    assert_eq!(s.urls, vec!["http://127.0.0.1:9530?token=tkn_1"]);
    assert_eq!(s.plugin.as_deref(), Some("datakit_filter.wasm"));
    let err = Config::from_toml(
        "[sinks]\n[[sinks.sink]]\ntarget = \"logstash\"\ncategories = [\"L\"]\n",
        "test",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sinks.sink[0].target") && err.contains("logstash"),
        "{err}"
    );
}

#[test]
fn a_whole_datakit_conf_takes_the_ingest_address_and_ignores_the_rest_in_one_warning() {
    let (cfg, notes) = Config::from_toml_noted(
        r#"
        default_enabled_inputs = ["cpu"]
        protect_mode = true
        [http_api]
          listen = "0.0.0.0:19529"
          rum_origin_ip_header = "X-Forwarded-For"
        [dataway]
          urls = ["http://127.0.0.1:9528?token=t"]
        [logging]
          level = "info"
        [election]
          enable = false
        "#,
        "test",
    )
    .unwrap();
    assert_eq!(cfg.ingest.listen.to_string(), "0.0.0.0:19529");
    assert_eq!(notes.ignored.len(), 1, "{notes:?}");
    let w = &notes.ignored[0];
    for k in [
        "default_enabled_inputs",
        "protect_mode",
        "logging",
        "election",
        "http_api",
    ] {
        assert!(w.contains(k), "{w}");
    }
    let err = Config::from_toml("[http_api]\nlisten = \"/tmp/dk.sock\"\n", "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http_api.listen") && err.contains("Unix socket"),
        "{err}"
    );
    // A key of neither schema is still an error naming it, in a DataKit file too.
    let err = Config::from_toml("protect_mode = true\n[dataway]\nturbo = 1\n", "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("turbo"), "{err}");
    let err = Config::from_toml("[dataway.wal]\nmax_capacity_gb = 1.0\nspeed = 2\n", "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dataway.wal.speed"), "{err}");
}

#[test]
fn datakit_environment_variables_apply_over_the_file() {
    let vars = [
        ("ENV_DATAWAY_MAX_RETRY_COUNT", "1"),
        ("ENV_DATAWAY_TLS_INSECURE", "on"),
        ("ENV_DATAWAY_ENABLE_SINKER", "1"),
        ("ENV_SINKER_GLOBAL_CUSTOMER_KEYS", "project, cluster"),
        ("ENV_DATAWAY_CONTENT_ENCODING", "v2"),
        ("ENV_DATAWAY_DISABLE_GZIP", "yes"),
        ("ENV_DATAWAY_WAL_CAPACITY", "1.0"),
        ("ENV_DATAWAY_NTP_INTERVAL", "5m"),
        (
            "ENV_SINKER",
            r#"[{"categories":["L"],"filters":["{ source = 'nginx' }"],"url":"http://127.0.0.1:9600?token=tkn_env","proxy":""}]"#,
        ),
    ];
    let env = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let mut notes = Notes::default();
    let mut cfg = Config::default();
    cfg.apply_env_noted(env, &mut notes).unwrap();
    cfg.validate().unwrap();
    let d = &cfg.dataway;
    assert_eq!(d.max_retry_count, 0);
    assert!(d.tls_insecure && d.enable_sinker && !d.gzip);
    assert_eq!(d.global_customer_keys, vec!["project", "cluster"]);
    assert_eq!(d.content_encoding, ContentEncoding::V2);
    assert_eq!(d.fail_cache.max_capacity, 1 << 30);
    assert_eq!(d.sinkers.len(), 1);
    assert_eq!(d.sinkers[0].name, "sinker0-127.0.0.1-9600");
    assert_eq!(d.sinkers[0].plugin.as_deref(), Some("datakit_filter.wasm"));
    assert_eq!(notes.ignored.len(), 1, "{notes:?}");
    assert!(notes.ignored[0].contains("ENV_DATAWAY_NTP_INTERVAL"));
    let bad = |k: &str| (k == "ENV_SINKER").then(|| "{not json".to_string());
    let err = Config::default().apply_env(bad).unwrap_err().to_string();
    assert!(err.contains("ENV_SINKER"), "{err}");
}

/// DataKit's daemon reads only `timeout_v2`; the deprecated `timeout` (read by its
/// installer alone) is used here when it is the only one, as our own key.
#[test]
fn timeout_alone_is_used_and_timeout_v2_wins_over_it() {
    let dk = |dataway: &str| {
        Config::from_toml_noted(
            &format!("protect_mode = true\n[dataway]\nurls = [\"file://x\"]\n{dataway}"),
            "test",
        )
        .unwrap()
    };
    let (cfg, notes) = dk("timeout = \"7s\"\n");
    assert_eq!(cfg.dataway.timeout, Duration::from_secs(7));
    assert!(
        !notes.ignored.join("\n").contains("dataway.timeout"),
        "{notes:?}"
    );
    let (cfg, notes) = dk("timeout = \"7s\"\ntimeout_v2 = \"9s\"\n");
    assert_eq!(cfg.dataway.timeout, Duration::from_secs(9));
    let ignored = notes.ignored.join("\n");
    assert!(
        ignored.contains("`dataway.timeout` is ignored") && ignored.contains("timeout_v2"),
        "{ignored}"
    );
    let (cfg, _) = dk("timeout_v2 = \"9s\"\ntimeout = \"\"\n");
    assert_eq!(cfg.dataway.timeout, Duration::from_secs(9));
}

/// `sinker_header_version`: `v1`/`v2` as DataKit writes them; "" is unset; anything else
/// (which DataKit would silently read as v1) is an error naming the key.
#[test]
fn sinker_header_version_is_mapped_and_a_bad_one_is_an_error() {
    let load = |v: &str| {
        Config::from_toml(
            &format!("protect_mode = true\n[dataway]\nsinker_header_version = {v}\n"),
            "test",
        )
    };
    assert_eq!(
        load("\"v2\"").unwrap().dataway.sinker_header_version,
        SinkerHeaderVersion::V2
    );
    assert_eq!(
        load("\"\"").unwrap().dataway.sinker_header_version,
        SinkerHeaderVersion::V1
    );
    for bad in ["\"V2\"", "\"v3\"", "2"] {
        let err = load(bad).unwrap_err().to_string();
        assert!(
            err.contains("dataway.sinker_header_version") && err.contains("\"v2\""),
            "{bad}: {err}"
        );
    }
    // In our own format too.
    let cfg = Config::from_toml("[dataway]\nsinker_header_version = \"v2\"\n", "test").unwrap();
    assert_eq!(cfg.dataway.sinker_header_version, SinkerHeaderVersion::V2);
}

/// The keys of `[global_host_tags]`, its old name `[global_tags]`, `[election.tags]` and
/// its old name `global_env_tags` are DataKit's global tag keys: they become
/// `global_tag_keys`, and those sections are mapped, not in the ignored-sections summary.
#[test]
fn datakit_global_tags_sections_become_global_tag_keys() {
    let (cfg, notes) = Config::from_toml_noted(
        r#"
        protect_mode = true
        [dataway]
          urls = ["file://x"]
          enable_sinker = true
        [global_host_tags]
          ip   = "$datakit_ip"
          host = "$datakit_hostname"
        [global_tags]
          region = "eu"
          host = "dup"
        [global_env_tags]
          zone = "z1"
        [election]
          enable = false
          namespace = "default"
          [election.tags]
            project = "my-project"
        "#,
        "test",
    )
    .unwrap();
    cfg.validate().unwrap();
    let mut keys = cfg.dataway.global_tag_keys.clone();
    keys.sort();
    assert_eq!(keys, ["host", "ip", "project", "region", "zone"]);
    let mapped = notes.mapped.join("\n");
    for m in [
        "`[global_host_tags]` keys `host`, `ip` → `dataway.global_tag_keys`",
        "`[global_tags]` keys",
        "`[global_env_tags]` keys `zone`",
        "`[election.tags]` keys `project`",
    ] {
        assert!(mapped.contains(m), "{m:?} not in:\n{mapped}");
    }
    assert_eq!(notes.ignored.len(), 1, "{notes:?}");
    let summary = &notes.ignored[0];
    assert!(summary.contains("protect_mode"), "{summary}");
    assert!(summary.contains("election (all but `tags`)"), "{summary}");
    for mapped_section in ["global_host_tags", "global_tags", "global_env_tags"] {
        assert!(
            !summary.contains(&format!("`{mapped_section}`")),
            "{summary}"
        );
    }

    // `[election]` with only `tags` is all mapped; keys of our own file stay, once.
    let (cfg, notes) = Config::from_toml_noted(
        "[dataway]\nglobal_tag_keys = [\"project\", \"own\"]\n[election.tags]\nproject = \"p\"\n",
        "test",
    )
    .unwrap();
    assert_eq!(cfg.dataway.global_tag_keys, ["project", "own"]);
    assert!(notes.ignored.is_empty(), "{notes:?}");

    let err = Config::from_toml("global_host_tags = \"host=h\"\n", "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`global_host_tags`") && err.contains("table"),
        "{err}"
    );
}

/// DataKit's environment for the ingest address and the global tags, and its sinker
/// routing switches, over the file exactly as DataKit parses them (`config/env.go`).
#[test]
fn datakit_listen_tags_and_routing_environment_apply_over_the_file() {
    let file = r#"
        protect_mode = true
        [http_api]
          listen = "localhost:9529"
        [dataway]
          urls = ["file://x"]
          global_customer_keys = ["from_file"]
          enable_sinker = false
        [global_host_tags]
          host = "$datakit_hostname"
        "#;
    let run = |vars: &[(&str, &str)]| {
        let (mut cfg, mut notes) = Config::from_toml_noted(file, "test").unwrap();
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        cfg.apply_env_noted(env, &mut notes).map(|()| (cfg, notes))
    };
    let (cfg, notes) = run(&[
        ("ENV_HTTP_LISTEN", "0.0.0.0:19529"),
        ("ENV_DATAWAY_ENABLE_SINKER", "on"),
        ("ENV_SINKER_GLOBAL_CUSTOMER_KEYS", " project, ,cluster ,"),
        // The first of a pair that is set wins (the second is the deprecated name).
        ("ENV_GLOBAL_HOST_TAGS", "cluster=c1,bad,=x,zone=z"),
        ("ENV_GLOBAL_TAGS", "old=o"),
        // Without ENV_ENABLE_ELECTION DataKit reads no election variable.
        ("ENV_GLOBAL_ELECTION_TAGS", "elected=e"),
        ("ENV_ENABLE_ELECTION_NAMESPACE_TAG", "1"),
        ("ENV_CLUSTER_NAME_K8S", "k8s-1"),
        ("ENV_HTTP_LISTEN_SOCKET", "/var/run/datakit/datakit.sock"),
    ])
    .unwrap();
    cfg.validate().unwrap();
    let d = &cfg.dataway;
    assert_eq!(cfg.ingest.listen.to_string(), "0.0.0.0:19529");
    assert!(d.enable_sinker);
    assert_eq!(
        d.global_customer_keys,
        ["project", "cluster"],
        "replaced, trimmed"
    );
    assert_eq!(
        d.global_tag_keys,
        ["host", "cluster", "zone", "cluster_name_k8s"]
    );
    let ignored = notes.ignored.join("\n");
    for w in [
        "`ENV_GLOBAL_HOST_TAGS`: `bad` is not `key=value`",
        "`ENV_GLOBAL_HOST_TAGS`: `=x` is not `key=value`",
        "`ENV_HTTP_LISTEN_SOCKET` is ignored",
    ] {
        assert!(ignored.contains(w), "{w:?} not in:\n{ignored}");
    }
    let mapped = notes.mapped.join("\n");
    assert!(
        mapped.contains("`ENV_HTTP_LISTEN = \"0.0.0.0:19529\"` → `ingest.listen"),
        "{mapped}"
    );

    let (cfg, _) = run(&[
        ("ENV_ENABLE_ELECTION", "1"),
        ("ENV_GLOBAL_ENV_TAGS", "env_old=1"),
        ("ENV_ENABLE_ELECTION_NAMESPACE_TAG", "1"),
        ("ENV_GLOBAL_TAGS", "old=o"),
    ])
    .unwrap();
    assert_eq!(
        cfg.dataway.global_tag_keys,
        ["host", "old", "env_old", "election_namespace"]
    );
    assert!(
        !cfg.dataway.enable_sinker,
        "the file's, without the variable"
    );
    assert_eq!(cfg.dataway.global_customer_keys, ["from_file"]);
    assert_eq!(cfg.ingest.listen.to_string(), "127.0.0.1:9529");

    let err = run(&[("ENV_HTTP_LISTEN", "/tmp/dk.sock")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ENV_HTTP_LISTEN") && err.contains("Unix socket"),
        "{err}"
    );
}
