//! The `ferry` command line as an operator runs it: the real binary, against
//! files in a temporary directory and HTTP servers on 127.0.0.1:0.
//!
//! - `ferry probe URL`: exit 0 on a 2xx within 5 s, else 1;
//! - `ferry node-config`: the files it writes (compared whole), `--dry-run`,
//!   `--auth-header-file`, `--remove`, and its refusals (status 2).

use crate::support::{Answer, Hostile};
use ferry::node_config::MARKER;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry probe URL`, on the test's runtime (so a server on it can answer).
async fn probe(url: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["probe", url])
        .output()
        .await
        .unwrap();
    (out, started.elapsed())
}

#[tokio::test]
async fn probe_exits_0_when_the_url_answers_2xx() {
    let server = Hostile::start(|_, _| Answer::full("200 OK", &[], b"ready\n")).await;
    let (out, _) = probe(&format!("{}/readyz", server.url())).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.requests(), ["GET /readyz"]);
    assert_eq!(stdout(&out), "", "a probe prints nothing");
}

#[tokio::test]
async fn probe_exits_1_when_the_url_answers_5xx() {
    let server =
        Hostile::start(|_, _| Answer::full("503 Service Unavailable", &[], b"starting\n")).await;
    let (out, _) = probe(&format!("{}/readyz", server.url())).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(server.requests(), ["GET /readyz"]);
}

#[tokio::test]
async fn probe_exits_1_when_the_connection_is_refused() {
    // A port that was free a moment ago, with nothing listening on it now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (out, _) = probe(&format!("http://{addr}/readyz")).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[tokio::test]
async fn probe_gives_up_after_5_seconds_without_an_answer() {
    // The kernel completes the handshake for the backlog, but nobody ever
    // accepts or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (out, took) = probe(&format!("http://{addr}/readyz")).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "gave up after {took:?}"
    );
}

/// Ferry's upstreams: Docker Hub, and a registry with a port (which CRI-O and
/// podman can only reach through the upstream's name).
const FERRY_TOML: &str = r#"
default_upstream = "docker.io"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
[[upstream]]
name = "local"
url = "http://127.0.0.1:5001"
"#;

const FERRY_URL: &str = "https://ferry.example:5000";

/// A node's configuration directories, under a temporary directory that also
/// holds Ferry's configuration.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ferry.toml"), FERRY_TOML).unwrap();
        Node { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// `ferry node-config` for every client on this node, then `extra`.
    fn node_config(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("node-config")
            .arg("--config")
            .arg(self.path("ferry.toml"))
            .arg("--containerd-dir")
            .arg(self.path("certs.d"))
            .arg("--registries-d")
            .arg(self.path("registries.conf.d"))
            .arg("--docker-daemon-json")
            .arg(self.path("daemon.json"))
            .args(extra)
            .output()
            .unwrap()
    }

    /// `VERB PATH` per line, for the files this node's run touches, in order.
    fn report(&self, lines: &[(&str, &str)]) -> String {
        lines
            .iter()
            .map(|(verb, rel)| format!("{verb} {}\n", self.path(rel).display()))
            .collect()
    }
}

/// containerd's `hosts.toml` for `server`, Ferry at [`FERRY_URL`] with the CA
/// and the client's `Authorization` header.
fn hosts_toml(server: &str) -> String {
    format!(
        r#"{MARKER}
server = "{server}"

[host."https://ferry.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/ferry/ca.pem"
  [host."https://ferry.example:5000".header]
    authorization = "Basic bm9kZTpwdw=="
"#
    )
}

/// The CRI-O/podman drop-in for [`FERRY_TOML`]'s upstreams (TLS: no `insecure`).
fn drop_in() -> String {
    format!(
        r#"{MARKER}

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "ferry.example:5000/docker.io"

[[registry]]
prefix = "127.0.0.1:5001"
location = "127.0.0.1:5001"
[[registry.mirror]]
location = "ferry.example:5000/local"
"#
    )
}

/// Where `ferry node-config` writes, relative to the node's directory.
const HUB_HOSTS: &str = "certs.d/docker.io/hosts.toml";
const LOCAL_HOSTS: &str = "certs.d/127.0.0.1:5001/hosts.toml";
const DROP_IN: &str = "registries.conf.d/50-ferry.conf";
const DAEMON_JSON: &str = "daemon.json";

/// The arguments every writing run here passes: Ferry's URL, the CA, and the
/// header from a file (a mounted Secret, with its trailing newline).
fn writing(node: &Node) -> Vec<String> {
    node.write("secret/authorization", "Basic bm9kZTpwdw==\n");
    let file = node.path("secret/authorization");
    vec![
        "--ferry-url".into(),
        FERRY_URL.into(),
        "--ca".into(),
        "/etc/ferry/ca.pem".into(),
        "--auth-header-file".into(),
        file.display().to_string(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn node_config_writes_every_clients_file_and_a_second_run_changes_nothing() {
    let node = Node::new();
    node.write(DAEMON_JSON, r#"{"log-driver": "journald"}"#);
    let writing = writing(&node);
    let out = node.node_config(&args(&writing));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        node.report(&[
            ("wrote", HUB_HOSTS),
            ("wrote", LOCAL_HOSTS),
            ("wrote", DROP_IN),
            ("wrote", DAEMON_JSON),
        ])
    );
    assert_eq!(stderr(&out), "");
    assert_eq!(
        node.read(HUB_HOSTS),
        hosts_toml("https://registry-1.docker.io")
    );
    assert_eq!(node.read(LOCAL_HOSTS), hosts_toml("http://127.0.0.1:5001"));
    assert_eq!(node.read(DROP_IN), drop_in());
    // The operator's keys are kept; Ferry goes first among the mirrors.
    assert_eq!(
        node.read(DAEMON_JSON),
        r#"{
  "log-driver": "journald",
  "registry-mirrors": [
    "https://ferry.example:5000"
  ]
}
"#
    );

    let again = node.node_config(&args(&writing));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        node.report(&[
            ("unchanged", HUB_HOSTS),
            ("unchanged", LOCAL_HOSTS),
            ("unchanged", DROP_IN),
            ("unchanged", DAEMON_JSON),
        ])
    );
}

#[test]
fn node_config_dry_run_prints_the_plan_and_writes_nothing() {
    let node = Node::new();
    let mut dry_run = writing(&node);
    dry_run.push("--dry-run".into());
    let before = files_under(node.dir.path());
    let out = node.node_config(&args(&dry_run));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let would_write = |rel: &str, content: &str| {
        format!("would write {}:\n{content}\n", node.path(rel).display())
    };
    assert_eq!(
        stdout(&out),
        [
            would_write(HUB_HOSTS, &hosts_toml("https://registry-1.docker.io")),
            would_write(LOCAL_HOSTS, &hosts_toml("http://127.0.0.1:5001")),
            would_write(DROP_IN, &drop_in()),
            would_write(
                DAEMON_JSON,
                "{\n  \"registry-mirrors\": [\n    \"https://ferry.example:5000\"\n  ]\n}\n"
            ),
        ]
        .concat()
    );
    assert_eq!(files_under(node.dir.path()), before, "nothing written");
}

#[test]
fn node_config_remove_takes_back_only_what_it_wrote() {
    let node = Node::new();
    // The operator's own file for one registry, and their daemon.json keys.
    let theirs = "server = \"http://127.0.0.1:5001\"\n";
    node.write(LOCAL_HOSTS, theirs);
    node.write(DAEMON_JSON, r#"{"log-driver": "journald"}"#);
    let out = node.node_config(&args(&writing(&node)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        node.report(&[
            ("wrote", HUB_HOSTS),
            ("wrote", DROP_IN),
            ("wrote", DAEMON_JSON)
        ])
    );
    let left_alone = format!(
        "ferry: left {} alone: not written by ferry node-config\n",
        node.path(LOCAL_HOSTS).display()
    );
    assert_eq!(stderr(&out), left_alone);

    // daemon.json carries no marker: Ferry's entry is found by its URL.
    let out = node.node_config(&["--remove", "--ferry-url", FERRY_URL]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        node.report(&[
            ("removed", HUB_HOSTS),
            ("removed", DROP_IN),
            ("wrote", DAEMON_JSON),
        ])
    );
    assert_eq!(stderr(&out), left_alone);
    assert!(
        !node.path("certs.d/docker.io").exists(),
        "its directory too"
    );
    assert!(!node.path(DROP_IN).exists());
    assert_eq!(node.read(LOCAL_HOSTS), theirs, "the operator's file kept");
    assert_eq!(
        node.read(DAEMON_JSON),
        "{\n  \"log-driver\": \"journald\"\n}\n"
    );
}

#[test]
fn node_config_refuses_an_incomplete_command_with_status_2() {
    let node = Node::new();
    let ferry = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("node-config")
            .args(args)
            .output()
            .unwrap()
    };
    let config = node.path("ferry.toml").display().to_string();
    let out = ferry(&["--ferry-url", FERRY_URL, "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "ferry: nothing to configure: give --containerd-dir, --registries-d and/or --docker-daemon-json\n"
    );
    let out = node.node_config(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "ferry: --ferry-url is required (except with --remove)\n"
    );
    assert_eq!(
        files_under(node.dir.path()),
        ["ferry.toml"],
        "nothing written"
    );
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `ferry config check` shows what `[bucket]` and `[cluster]` mean, and none
/// of their secrets.
#[test]
fn config_check_shows_the_bucket_and_the_cluster_but_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let key = file("key", "GKvisible-key-id");
    let secret = file("secret", "s3-secret-never-shown");
    let peer = file("peer", "peer-secret-never-shown");
    let cfg = file(
        "ferry.toml",
        &format!(
            "[bucket]\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"ferry\"\nregion = \"garage\"\n\
             access_key_file = {key:?}\nsecret_key_file = {secret:?}\n\
             [cluster]\nself = \"10.0.0.1:5000\"\npeers = [\"10.0.0.1:5000\", \"10.0.0.2:5000\"]\n\
             secret_file = {peer:?}\n"
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("bucket        http://127.0.0.1:3900/ ferry/ region=garage path_style=true part_size=8388608 max_uploads=8 backoff=30s"),
        "{text}"
    );
    assert!(
        text.contains("cluster       self=10.0.0.1:5000 peers=[\"10.0.0.1:5000\", \"10.0.0.2:5000\"] refresh=5s quarantine=10s"),
        "{text}"
    );
    for s in ["s3-secret-never-shown", "peer-secret-never-shown"] {
        assert!(
            !text.contains(s) && !stderr(&out).contains(s),
            "{s} printed"
        );
    }
}
