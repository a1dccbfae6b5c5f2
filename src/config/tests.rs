use super::*;

fn load(toml: &str) -> Result<Config, ConfigError> {
    Config::from_raw(RawConfig::from_toml(toml)?, Overrides::default())
}

fn default_upstream(c: &Config) -> &UpstreamConfig {
    c.upstream(&c.default_upstream).expect("the default exists")
}

#[test]
fn client_entries_turn_authentication_on() {
    assert!(load("").unwrap().client_auth.is_none());
    let c = load("[[client]]\nusername = \"node\"\npassword = \"s3:cret\"\n").unwrap();
    assert!(c.client_auth.is_some());
    for bad in [
        "[[client]]\nusername = \"a:b\"\npassword = \"x\"\n",
        "[[client]]\nusername = \"a\"\n",
        "[[client]]\nusername = \"a\"\npassword = \"\"\n",
        "[[client]]\nusername = \"a\"\npassword = \"x\"\n[[client]]\nusername = \"a\"\npassword = \"y\"\n",
        "[[client]]\nusername = \"a\"\npassword_env = \"FERRY_TEST_UNSET_VAR\"\n",
    ] {
        assert!(load(bad).is_err(), "{bad}");
    }
}

#[test]
fn defaults_to_docker_hub() {
    let c = load("").unwrap();
    assert_eq!(c.listen, defaults::LISTEN.parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from(defaults::DATA_DIR));
    assert_eq!(c.upstreams.len(), 1);
    let hub = default_upstream(&c);
    assert_eq!(hub.name, "docker.io");
    assert!(hub.library_prefix);
    for a in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        assert!(hub.aliases.iter().any(|x| x == a), "{a}");
    }
    assert_eq!(
        hub.policy.for_tag("library/alpine", "latest").tag_ttl,
        defaults::TAG_TTL
    );
    assert_eq!(c.cache.high_watermark, defaults::HIGH_WATERMARK);
    assert_eq!(c.timeouts.idle, defaults::IDLE_TIMEOUT);
}

#[test]
fn cli_upstream_is_known_by_host_and_port() {
    let c = Config::for_upstream("http://127.0.0.1:5001", "/tmp/x").unwrap();
    let u = default_upstream(&c);
    assert_eq!(u.name, "127.0.0.1:5001");
    assert!(u.aliases.contains(&"127.0.0.1:5001".to_string()));
    assert!(!u.library_prefix);
}

#[test]
fn full_file_with_rules() {
    let c = load(
        r#"
        listen = "0.0.0.0:5000"
        default_upstream = "hub"
        [cache]
        max_size = "10GiB"
        [freshness]
        tag_ttl = "1m"
        immutable_tags = ['v?\d+\.\d+\.\d+']
        [[upstream]]
        name = "hub"
        url = "https://registry-1.docker.io"
        username = "u"
        password = "secret"
        [[upstream.rule]]
        repository = "library/.*"
        tag = "latest"
        tag_ttl = 10
        [[upstream]]
        name = "ghcr"
        url = "https://ghcr.io"
        aliases = ["GHCR.IO"]
        [upstream.freshness]
        tag_ttl = "5m"
        "#,
    )
    .unwrap();
    assert_eq!(c.cache.max_size, Some(10 << 30));
    let hub = default_upstream(&c);
    assert_eq!(hub.name, "hub");
    assert!(hub.aliases.contains(&"docker.io".to_string()));
    let p = &hub.policy;
    assert_eq!(
        p.for_tag("library/alpine", "latest").tag_ttl,
        Duration::from_secs(10)
    );
    assert_eq!(
        p.for_tag("user/app", "latest").tag_ttl,
        Duration::from_secs(60)
    );
    assert!(p.for_tag("user/app", "1.2.3").immutable);
    assert!(p.for_tag("user/app", "v1.2.3").immutable);
    assert!(!p.for_tag("user/app", "1.2.3-rc1").immutable);
    assert!(!format!("{hub:?}").contains("secret"));
    let ghcr = c.upstream("ghcr.io").expect("found by alias");
    assert_eq!(ghcr.name, "ghcr");
    assert_eq!(
        ghcr.policy.for_tag("o/i", "x").tag_ttl,
        Duration::from_secs(300)
    );
}

#[test]
fn library_rule_lives_with_the_upstream() {
    let c = load("").unwrap();
    let hub = default_upstream(&c);
    let name = |s: &str| crate::oci::RepoName::parse(s).unwrap();
    assert_eq!(hub.repository(name("alpine")).as_str(), "library/alpine");
    assert_eq!(hub.repository(name("me/app")).as_str(), "me/app");
    let c = Config::for_upstream("http://127.0.0.1:5001", "/tmp/x").unwrap();
    assert_eq!(
        default_upstream(&c).repository(name("alpine")).as_str(),
        "alpine"
    );
}

#[test]
fn cli_tag_ttl_overrides_the_file() {
    let raw = RawConfig::from_toml("[freshness]\ntag_ttl = 99").unwrap();
    let c = Config::from_raw(
        raw,
        Overrides {
            tag_ttl: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        c.upstreams[0].policy.defaults.tag_ttl,
        Duration::from_secs(5)
    );
}

#[test]
fn bad_configs_say_what_is_wrong() {
    let cases = [
        ("listen = \"nope\"", "listen"),
        ("bogus = 1", "unknown field"),
        ("[freshness]\ntag_ttl = \"soon\"", "tag_ttl"),
        ("[cache]\nmax_size = \"10 parsecs\"", "unit"),
        ("[cache]\nlow_watermark = 0.99", "watermarks"),
        ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"", "http"),
        ("[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nusername = \"u\"", "together"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"b\"\nurl = \"https://x\"",
            "default_upstream",
        ),
        (
            "default_upstream = \"a\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"b\"\nurl = \"https://x\"",
            "both answer",
        ),
        ("default_upstream = \"zz\"", "names no"),
        ("[freshness]\nimmutable_tags = ['(']", "regex"),
    ];
    for (toml, needle) in cases {
        let e = load(toml).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml:?} gave {e:?}");
    }
}

#[test]
fn access_tls_admin_and_client_scopes_are_checked_before_serving() {
    let up = "[[upstream]]\nname = \"corp\"\nurl = \"https://corp.example\"\n";
    let c = load(&format!("{up}[upstream.access]\n")).unwrap();
    let a = default_upstream(&c).access.unwrap();
    assert_eq!(
        (a.ttl, a.negative_ttl, a.stale),
        (
            defaults::ACCESS_TTL,
            defaults::ACCESS_NEGATIVE_TTL,
            defaults::ACCESS_STALE
        )
    );
    assert!(
        load(up).unwrap().upstreams[0].access.is_none(),
        "off by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.display();
    for (bad, says) in [
        (format!("{up}[upstream.access]\nttl = \"2h\"\n"), "stale must be at least"),
        (format!("{up}ca_file = \"/nonexistent/ca.pem\"\n"), "ca_file /nonexistent/ca.pem"),
        (format!("{up}ca_file = \"{junk}\"\n"), "ca_file"),
        (format!("{up}client_cert = \"{junk}\"\n"), "go together"),
        (format!("{up}client_cert = \"{junk}\"\nclient_key = \"{junk}\"\n"), "client_cert"),
        (
            format!("{up}[upstream.events]\nsecret = \"0123456789abcdef\"\nsecret_env = \"X\"\n"),
            "events: set secret or secret_env, not both",
        ),
        (
            format!("{up}[upstream.events]\nsecret_env = \"FERRY_TEST_UNSET_VAR\"\n"),
            "events: secret_env names",
        ),
        (
            "admin_listen = \"127.0.0.1:5001\"\nadmin_token_env = \"A\"\nadmin_token_file = \"/x\"\n".into(),
            "set admin_token_file or admin_token_env, not both",
        ),
        ("admin_listen = \"0.0.0.0:5001\"\n".to_string(), "not a loopback address"),
        (
            "admin_listen = \"127.0.0.1:5001\"\nadmin_token_env = \"FERRY_TEST_UNSET_VAR\"\n".into(),
            "not set",
        ),
        (
            format!("{up}[[client]]\nusername = \"a\"\npassword = \"b\"\nrepositories = [\"nowhere/x\"]\n"),
            "names no configured upstream",
        ),
        (
            format!("{up}[[client]]\nusername = \"a\"\npassword = \"b\"\nrepositories = [\"corp\"]\n"),
            "<upstream>/<repository regex>",
        ),
    ] {
        let e = load(&bad).err().unwrap_or_else(|| panic!("accepted: {bad}"));
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    let token = dir.path().join("token");
    let with_token = |text: &str| {
        std::fs::write(&token, text).unwrap();
        load(&format!(
            "admin_listen = \"0.0.0.0:5001\"\nadmin_token_file = \"{}\"\n",
            token.display()
        ))
    };
    let e = with_token("short\n").unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
    let e = with_token("0123456789 abcdef0123\n").unwrap_err();
    assert!(e.to_string().contains("printable ASCII"), "{e}");
    let c = with_token("0123456789abcdef0123\n").unwrap();
    assert!(c
        .admin_token
        .unwrap()
        .allows(Some("Bearer 0123456789abcdef0123")));
}

#[test]
fn a_bucket_is_validated_and_its_secret_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let secret = dir.path().join("secret");
    std::fs::write(&key, "GK123\n").unwrap();
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let creds = format!("access_key_file = {key:?}\nsecret_key_file = {secret:?}\n");
    let c = load(&format!(
        "[bucket]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"ferry\"\nregion = \"garage\"\n\
         prefix = \"/cluster-a/\"\n{creds}"
    ))
    .unwrap();
    let b = c.bucket.expect("configured");
    assert_eq!(b.endpoint.as_str(), "http://127.0.0.1:3900/");
    assert_eq!((b.bucket.as_str(), b.region.as_str()), ("ferry", "garage"));
    assert_eq!(b.prefix, "cluster-a/");
    assert_eq!(
        (b.access_key.as_str(), b.secret_key.as_str()),
        ("GK123", "s3cr3t-value")
    );
    assert!(b.path_style);
    assert_eq!(b.part_size, defaults::BUCKET_PART_SIZE);
    assert_eq!(b.max_uploads, defaults::BUCKET_MAX_UPLOADS);
    assert_eq!(b.backoff, defaults::BUCKET_BACKOFF);
    assert!(
        !format!("{b:?}").contains("s3cr3t"),
        "the secret is redacted"
    );
    assert!(load("").unwrap().bucket.is_none(), "off unless configured");

    let base = "[bucket]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"ferry\"\n";
    for (bad, says) in [
        (format!("{base}{creds}part_size = \"4MiB\"\n"), "part_size"),
        (format!("{base}{creds}max_uploads = 0\n"), "max_uploads"),
        (
            format!("{base}{creds}backoff = \"soon\"\n"),
            "bucket.backoff",
        ),
        (
            format!("{base}{creds}prefix = \"a/../b\"\n"),
            "bucket.prefix",
        ),
        (format!("{base}{creds}colour = \"blue\"\n"), "colour"),
        (
            format!("[bucket]\nendpoint = \"ftp://x\"\nbucket = \"ferry\"\n{creds}"),
            "bucket.endpoint",
        ),
        (
            format!("[bucket]\nendpoint = \"http://x\"\nbucket = \"No_Such\"\n{creds}"),
            "bucket.bucket",
        ),
        (
            format!(
                "{base}access_key_env = \"FERRY_TEST_UNSET_VAR\"\nsecret_key_file = {secret:?}\n"
            ),
            "FERRY_TEST_UNSET_VAR",
        ),
        (format!("{base}{creds}access_key_env = \"X\"\n"), "not both"),
    ] {
        let e = load(&bad).expect_err(&bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn a_cluster_needs_its_members_and_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "sixteen-chars-or-more\n").unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "short").unwrap();
    let multiline = dir.path().join("multiline");
    std::fs::write(&multiline, "first-line-of-it\nsecond-line-of-it\n").unwrap();
    let s = format!("secret_file = {secret:?}\n");
    let c = load(&format!(
        "[cluster]\nself = \"10.0.0.1:5000\"\npeers = [\"10.0.0.1:5000\", \"10.0.0.2:5000\"]\n{s}"
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.self_addr, "10.0.0.1:5000");
    assert_eq!(
        c.members,
        cluster::Members::Static(vec!["10.0.0.1:5000".into(), "10.0.0.2:5000".into()])
    );
    assert_eq!(c.secret, "sixteen-chars-or-more");
    assert_eq!(
        (c.refresh, c.quarantine),
        (defaults::CLUSTER_REFRESH, defaults::PEER_QUARANTINE)
    );
    assert!(
        !format!("{c:?}").contains("sixteen"),
        "the secret is redacted"
    );
    let c = load(&format!(
        "[cluster]\nself = \"${{CARGO_PKG_NAME}}:5000\"\npeers_dns = \"ferry-peers.ns.svc:5000\"\n{s}"
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        c.self_addr, "ferry:5000",
        "cargo sets CARGO_PKG_NAME for tests"
    );
    assert_eq!(
        c.members,
        cluster::Members::Dns {
            name: "ferry-peers.ns.svc".into(),
            port: 5000
        }
    );
    for (bad, says) in [
        (format!("[cluster]\nself = \"a:1\"\n{s}"), "set peers"),
        (format!("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\npeers_dns = \"x:1\"\n{s}"), "not both"),
        (format!("[cluster]\nself = \"a\"\npeers = [\"b:1\"]\n{s}"), "cluster.self"),
        (format!("[cluster]\nself = \"$FERRY_TEST_UNSET_VAR:1\"\npeers = [\"b:1\"]\n{s}"), "FERRY_TEST_UNSET_VAR"),
        (format!("[cluster]\nself = \"a:1\"\npeers = [\"b\"]\n{s}"), "cluster.peers"),
        (format!("[cluster]\nself = \"a:1\"\npeers_dns = \"svc\"\n{s}"), "cluster.peers_dns"),
        ("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\n".to_string(), "peer secret is required"),
        (format!("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\nsecret_file = {short:?}\n"), "at least 16"),
        (format!("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\nsecret_file = {multiline:?}\n"), "printable ASCII"),
        (
            "[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\nsecret_env = \"FERRY_TEST_UNSET_VAR\"\n".to_string(),
            "cluster.secret_env names \"FERRY_TEST_UNSET_VAR\", which is not set",
        ),
        (
            format!("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\nsecret_env = \"FERRY_TEST_UNSET_VAR\"\n{s}"),
            "set cluster.secret_file or cluster.secret_env, not both",
        ),
        (
            format!("[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\nsecret_file = {:?}\n", dir.path().join("none")),
            "cluster.secret_file: cannot read",
        ),
        (
            format!("tls_cert = \"x\"\ntls_key = \"y\"\n[cluster]\nself = \"a:1\"\npeers = [\"b:1\"]\n{s}"),
            "not supported yet",
        ),
    ] {
        let e = load(&bad).expect_err(&bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
