use super::*;
use crate::config::{Overrides, RawConfig};
use std::collections::HashMap;

fn config() -> Config {
    let raw = RawConfig::from_toml(
        r#"
        default_upstream = "docker.io"
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
        [[upstream]]
        name = "local"
        url = "http://127.0.0.1:5001"
        "#,
    )
    .unwrap();
    Config::from_raw(raw, Overrides::default()).unwrap()
}

fn targets(dir: &Path) -> NodeTargets {
    NodeTargets {
        ferry_url: Some("http://10.96.0.50:5000".parse().unwrap()),
        containerd_dir: Some(dir.join("certs.d")),
        registries_d: Some(dir.join("registries.conf.d")),
        docker_daemon_json: Some(dir.join("daemon.json")),
        ..NodeTargets::default()
    }
}

/// Plans against an in-memory file system and applies the plan to it.
fn run(files: &mut HashMap<PathBuf, String>, t: &NodeTargets, remove: bool) -> Vec<Step> {
    let steps = plan(&config(), t, remove, |p| files.get(p).cloned()).unwrap();
    for s in &steps {
        match s {
            Step::Write { path, content } => {
                files.insert(path.clone(), content.clone());
            }
            Step::Remove { path } => {
                files.remove(path);
            }
            _ => {}
        }
    }
    steps
}

#[test]
fn writes_each_client_config_and_a_second_run_changes_nothing() {
    let dir = Path::new("/node");
    let t = targets(dir);
    let mut files = HashMap::new();
    let first = run(&mut files, &t, false);
    assert_eq!(
        first
            .iter()
            .filter(|s| matches!(s, Step::Write { .. }))
            .count(),
        4
    );
    assert_eq!(
        files[&dir.join("certs.d/docker.io/hosts.toml")],
        format!(
            "{MARKER}
server = \"https://registry-1.docker.io\"

[host.\"http://10.96.0.50:5000\"]
  capabilities = [\"pull\", \"resolve\"]
"
        )
    );
    assert_eq!(
        files[&dir.join("certs.d/127.0.0.1:5001/hosts.toml")],
        format!(
            "{MARKER}
server = \"http://127.0.0.1:5001\"

[host.\"http://10.96.0.50:5000\"]
  capabilities = [\"pull\", \"resolve\"]
"
        )
    );
    // A host with a port cannot be a containers/image path prefix: the
    // upstream's name is (`local`, not `127.0.0.1:5001`).
    assert_eq!(
        files[&dir.join("registries.conf.d").join(DROP_IN)],
        format!(
            "{MARKER}

[[registry]]
prefix = \"docker.io\"
location = \"docker.io\"
[[registry.mirror]]
location = \"10.96.0.50:5000/docker.io\"
insecure = true

[[registry]]
prefix = \"127.0.0.1:5001\"
location = \"127.0.0.1:5001\"
[[registry.mirror]]
location = \"10.96.0.50:5000/local\"
insecure = true
"
        )
    );
    assert_eq!(
        files[&dir.join("daemon.json")],
        "{\n  \"registry-mirrors\": [\n    \"http://10.96.0.50:5000\"\n  ]\n}\n"
    );

    let second = run(&mut files, &t, false);
    assert!(
        second.iter().all(|s| matches!(s, Step::Unchanged { .. })),
        "{second:?}"
    );
}

#[test]
fn leaves_the_operators_files_alone_and_removes_only_its_own() {
    let dir = Path::new("/node");
    let t = targets(dir);
    let mut files = HashMap::new();
    let theirs = dir.join("certs.d/docker.io/hosts.toml");
    files.insert(
        theirs.clone(),
        "server = \"https://mirror.corp\"\n".to_string(),
    );
    files.insert(
        dir.join("daemon.json"),
        "{\"log-driver\": \"journald\", \"registry-mirrors\": [\"https://other\"]}".into(),
    );
    let steps = run(&mut files, &t, false);
    assert!(steps.contains(&Step::Skip {
        path: theirs.clone(),
        why: "not written by ferry node-config".into()
    }));
    let daemon: serde_json::Value = serde_json::from_str(&files[&dir.join("daemon.json")]).unwrap();
    assert_eq!(daemon["log-driver"], "journald");
    assert_eq!(
        daemon["registry-mirrors"],
        serde_json::json!(["http://10.96.0.50:5000", "https://other"])
    );

    run(&mut files, &t, true);
    assert_eq!(
        files[&theirs], "server = \"https://mirror.corp\"\n",
        "theirs kept"
    );
    assert!(!files.contains_key(&dir.join("certs.d/127.0.0.1:5001/hosts.toml")));
    assert!(!files.contains_key(&dir.join("registries.conf.d").join(DROP_IN)));
    let daemon: serde_json::Value = serde_json::from_str(&files[&dir.join("daemon.json")]).unwrap();
    assert_eq!(
        daemon["registry-mirrors"],
        serde_json::json!(["https://other"])
    );
    assert_eq!(daemon["log-driver"], "journald");
}

#[test]
fn ca_and_client_auth_header_go_into_hosts_toml() {
    let dir = Path::new("/node");
    let mut t = targets(dir);
    t.ferry_url = Some("https://ferry.example:5000".parse().unwrap());
    t.ca = Some("/etc/ferry/ca.pem".into());
    t.auth_header = Some("Basic bm9kZTpwdw==".into());
    let mut files = HashMap::new();
    run(&mut files, &t, false);
    assert_eq!(
        files[&dir.join("certs.d/docker.io/hosts.toml")],
        format!(
            "{MARKER}
server = \"https://registry-1.docker.io\"

[host.\"https://ferry.example:5000\"]
  capabilities = [\"pull\", \"resolve\"]
  ca = \"/etc/ferry/ca.pem\"
  [host.\"https://ferry.example:5000\".header]
    authorization = \"Basic bm9kZTpwdw==\"
"
        )
    );
    let drop_in = &files[&dir.join("registries.conf.d").join(DROP_IN)];
    assert!(!drop_in.contains("insecure"), "TLS: not insecure");
}

#[test]
fn quotes_and_backslashes_in_the_ca_path_and_header_stay_inside_their_values() {
    let dir = Path::new("/node");
    let mut t = targets(dir);
    t.ca = Some(r#"/etc/ferry/"odd" dir\ca.pem"#.into());
    t.auth_header = Some(r#"Bearer a"b\c"#.into());
    let mut files = HashMap::new();
    run(&mut files, &t, false);
    let hub = &files[&dir.join("certs.d/docker.io/hosts.toml")];
    assert!(hub.starts_with(&format!("{MARKER}\n")), "{hub}");
    let parsed: toml::Value = toml::from_str(hub).unwrap_or_else(|e| panic!("{e}\n{hub}"));
    let want = toml::Value::try_from(serde_json::json!({
        "server": "https://registry-1.docker.io",
        "host": {
            "http://10.96.0.50:5000": {
                "capabilities": ["pull", "resolve"],
                "ca": r#"/etc/ferry/"odd" dir\ca.pem"#,
                "header": { "authorization": r#"Bearer a"b\c"# },
            },
        },
    }))
    .unwrap();
    assert_eq!(parsed, want, "{hub}");
}

#[test]
fn a_registry_with_a_port_and_no_usable_name_gets_a_comment_not_a_mirror() {
    let raw = RawConfig::from_toml(
        r#"
        [[upstream]]
        name = "registry.corp:5000"
        url = "https://registry.corp:5000"
        "#,
    )
    .unwrap();
    let config = Config::from_raw(raw, Overrides::default()).unwrap();
    let t = NodeTargets {
        ferry_url: Some("https://ferry.example:5000".parse().unwrap()),
        registries_d: Some("/node/registries.conf.d".into()),
        ..NodeTargets::default()
    };
    let steps = plan(&config, &t, false, |_| None).unwrap();
    let content = format!(
        "{MARKER}

# registry.corp:5000: no mirror. containers/image cannot take a host with a port as a
# path prefix, and the upstream's name \"registry.corp:5000\" is not a repository path component.
"
    );
    assert_eq!(
        steps,
        [Step::Write {
            path: Path::new("/node/registries.conf.d").join(DROP_IN),
            content,
        }]
    );
}

#[test]
fn a_ferry_url_is_required_except_to_remove() {
    let mut t = targets(Path::new("/node"));
    t.ferry_url = None;
    assert!(plan(&config(), &t, false, |_| None).is_err());
    assert!(plan(&config(), &t, true, |_| None).unwrap().is_empty());
}
