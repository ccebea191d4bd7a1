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
    let err = load_str("[dataway]\nurl = \"http://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `url`"), "{err}");
    assert!(err.contains("test.toml"), "{err}");
    let err = load_str("[sinker]\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `sinker`"), "{err}");
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
    let opts = s.endpoint_options(&cfg.dataway);
    assert_eq!(opts.http.timeout, Duration::from_secs(2));
    assert!(!opts.gzip);
    assert_eq!(opts.sinker.as_deref(), Some("web"));
    // Not overridden: the main value.
    let all = &cfg.dataway.sinkers[1];
    assert_eq!(
        all.endpoint_options(&cfg.dataway).http.timeout,
        Duration::from_secs(9)
    );
    assert_eq!(all.parsed_categories(), vec![Category::Metric]);
    assert_eq!(all.plugin_config(), "");
}

#[test]
fn bad_sinkers_name_the_key() {
    let base = "[dataway]\nurls = [\"file://m\"]\n[[dataway.sinkers]]\n";
    let cases = [
        (
            "categories = [\"metric\"]\nurls = [\"file://s\"]\n",
            "dataway.sinkers[0].name",
        ),
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
        // DataKit's key is `filters`; here the rule is the plugin's config: say so by refusing it.
        (
            "name = \"s\"\ncategories = [\"metric\"]\nurls = [\"file://s\"]\nfilters = [\"{ a = 1 }\"]\n",
            "filters",
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
