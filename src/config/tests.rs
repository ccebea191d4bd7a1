use super::*;

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
