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
    let hub = &files[&dir.join("certs.d/docker.io/hosts.toml")];
    assert!(hub.starts_with(MARKER));
    assert!(hub.contains("server = \"https://registry-1.docker.io\""));
    assert!(hub.contains("[host.\"http://10.96.0.50:5000\"]"));
    assert!(hub.contains("capabilities = [\"pull\", \"resolve\"]"));
    let local = &files[&dir.join("certs.d/127.0.0.1:5001/hosts.toml")];
    assert!(local.contains("server = \"http://127.0.0.1:5001\""));
    let drop_in = &files[&dir.join("registries.conf.d").join(DROP_IN)];
    assert!(drop_in.contains("location = \"10.96.0.50:5000/docker.io\""));
    // A host with a port cannot be a containers/image path prefix: the name is.
    assert!(drop_in.contains("prefix = \"127.0.0.1:5001\""));
    assert!(drop_in.contains("location = \"10.96.0.50:5000/local\""));
    assert!(!drop_in.contains("10.96.0.50:5000/127.0.0.1"));
    assert!(drop_in.contains("insecure = true"));
    let daemon: serde_json::Value = serde_json::from_str(&files[&dir.join("daemon.json")]).unwrap();
    assert_eq!(
        daemon["registry-mirrors"],
        serde_json::json!(["http://10.96.0.50:5000"])
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
    let hub = &files[&dir.join("certs.d/docker.io/hosts.toml")];
    assert!(hub.contains("ca = \"/etc/ferry/ca.pem\""));
    assert!(hub.contains("[host.\"https://ferry.example:5000\".header]"));
    assert!(hub.contains("authorization = \"Basic bm9kZTpwdw==\""));
    let drop_in = &files[&dir.join("registries.conf.d").join(DROP_IN)];
    assert!(!drop_in.contains("insecure"), "TLS: not insecure");
    assert!(hub.parse::<toml::Table>().is_ok(), "valid TOML:\n{hub}");
}

#[test]
fn a_ferry_url_is_required_except_to_remove() {
    let mut t = targets(Path::new("/node"));
    t.ferry_url = None;
    assert!(plan(&config(), &t, false, |_| None).is_err());
    assert!(plan(&config(), &t, true, |_| None).unwrap().is_empty());
}
