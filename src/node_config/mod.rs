//! `ferry node-config`: each client's mirror configuration on a node, written
//! from Ferry's own upstream table, so adding a node (or an upstream) needs
//! nothing by hand.
//!
//! - containerd: one `hosts.toml` per upstream registry under `certs.d`
//!   (Ferry as a mirror with `pull` and `resolve`, the registry as fallback);
//! - CRI-O and podman: one `registries.conf.d` drop-in with a mirror per registry
//!   (prefix form, `<ferry>/<registry>/…`);
//! - Docker Engine: `registry-mirrors` in `daemon.json` (Docker Hub only; other
//!   keys of the file are kept).
//!
//! Every file Ferry writes carries a marker line; a file without it is the
//! operator's and is left alone (reported as skipped). A second run changes
//! nothing, and `--remove` takes back exactly what Ferry wrote.

use crate::config::{authority, Config};
use std::path::{Path, PathBuf};
use url::Url;

/// The first line of every file Ferry writes (TOML comment).
pub const MARKER: &str =
    "# Written by `ferry node-config`; `ferry node-config --remove` deletes it.";
/// The drop-in's file name under `registries.conf.d`.
pub const DROP_IN: &str = "50-ferry.conf";

/// What to configure, from the command line.
#[derive(Clone, Debug, Default)]
pub struct NodeTargets {
    /// Ferry as nodes reach it, e.g. `http://10.96.0.50:5000`.
    pub ferry_url: Option<Url>,
    /// containerd's `config_path` (e.g. `/etc/containerd/certs.d`).
    pub containerd_dir: Option<PathBuf>,
    /// `/etc/containers/registries.conf.d`.
    pub registries_d: Option<PathBuf>,
    /// `/etc/docker/daemon.json`.
    pub docker_daemon_json: Option<PathBuf>,
    /// A CA bundle for Ferry's certificate, as a path on the node.
    pub ca: Option<PathBuf>,
    /// An `Authorization` header value for Ferry's client authentication.
    pub auth_header: Option<String>,
}

/// One change to a node's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this content (the file is absent or differs).
    Write {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        content: String,
    },
    /// Delete a file Ferry wrote.
    Remove {
        /// The file.
        path: PathBuf,
    },
    /// Already as wanted.
    Unchanged {
        /// The file.
        path: PathBuf,
    },
    /// Left alone: the operator's file.
    Skip {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The steps that bring a node to `targets` (or, with `remove`, take back what
/// Ferry wrote). `read` returns a file's current content (`None`: absent).
pub fn plan(
    config: &Config,
    targets: &NodeTargets,
    remove: bool,
    read: impl Fn(&Path) -> Option<String>,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let want = |path: PathBuf, content: Option<String>, steps: &mut Vec<Step>| {
        let current = read(&path);
        let ours = current.as_deref().is_none_or(|c| c.starts_with(MARKER));
        let step = match (content, current) {
            (_, Some(_)) if !ours => Step::Skip {
                path,
                why: "not written by ferry node-config".into(),
            },
            (None, None) => return,
            (None, Some(_)) => Step::Remove { path },
            (Some(c), Some(cur)) if c == cur => Step::Unchanged { path },
            (Some(content), _) => Step::Write { path, content },
        };
        steps.push(step);
    };
    if !remove && targets.ferry_url.is_none() {
        return Err("--ferry-url is required (except with --remove)".into());
    }
    let ferry = targets.ferry_url.as_ref().filter(|_| !remove);
    if let Some(dir) = &targets.containerd_dir {
        for u in &config.upstreams {
            let host = registry_host(u);
            let content = ferry.map(|f| hosts_toml(&u.url, f, targets));
            want(dir.join(&host).join("hosts.toml"), content, &mut steps);
        }
    }
    if let Some(dir) = &targets.registries_d {
        let content = ferry.map(|f| drop_in(config, f));
        want(dir.join(DROP_IN), content, &mut steps);
    }
    if let Some(path) = &targets.docker_daemon_json {
        let ferry = targets.ferry_url.as_ref();
        if let Some(step) = daemon_json(config, ferry, remove, &read(path), path)? {
            steps.push(step);
        }
    }
    Ok(steps)
}

/// The name clients use for an upstream registry: Docker Hub is `docker.io`.
fn registry_host(u: &crate::config::UpstreamConfig) -> String {
    if u.library_prefix && u.aliases.iter().any(|a| a == "docker.io") {
        "docker.io".into()
    } else {
        authority(&u.url)
    }
}

/// containerd's `hosts.toml` for the registry at `server`: Ferry as its mirror.
fn hosts_toml(server: &Url, ferry: &Url, t: &NodeTargets) -> String {
    let host = toml_string(ferry.as_str().trim_end_matches('/'));
    let mut s = format!(
        "{MARKER}\nserver = {}\n\n[host.{host}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        toml_string(server.as_str().trim_end_matches('/'))
    );
    if let Some(ca) = &t.ca {
        s.push_str(&format!(
            "  ca = {}\n",
            toml_string(&ca.display().to_string())
        ));
    }
    if let Some(auth) = &t.auth_header {
        s.push_str(&format!(
            "  [host.{host}.header]\n    authorization = {}\n",
            toml_string(auth)
        ));
    }
    s
}

/// The CRI-O/podman drop-in: one `[[registry]]` with Ferry as its mirror per
/// upstream that containers/image can name.
fn drop_in(config: &Config, ferry: &Url) -> String {
    let insecure = ferry.scheme() == "http";
    let ferry = authority(ferry);
    let mut s = format!("{MARKER}\n");
    for u in &config.upstreams {
        let host = registry_host(u);
        let Some(prefix) = mirror_prefix(u, &host) else {
            s.push_str(&format!(
                "\n# {host}: no mirror. containers/image cannot take a host with a port as a\n\
                 # path prefix, and the upstream's name {:?} is not a repository path component.\n",
                u.name
            ));
            continue;
        };
        let host = toml_string(&host);
        s.push_str(&format!(
            "\n[[registry]]\nprefix = {host}\nlocation = {host}\n[[registry.mirror]]\nlocation = {}\n",
            toml_string(&format!("{ferry}/{prefix}"))
        ));
        if insecure {
            s.push_str("insecure = true\n");
        }
    }
    s
}

/// `value` as a TOML string (also a valid quoted key), escaped by the `toml`
/// crate: the files keep a hand-laid-out shape with their marker and comments,
/// while no path or header value can break out of its quotes.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The path prefix a CRI-O or podman mirror puts before repository names so
/// Ferry routes them to `u`: the registry's host, or, when that has a port
/// (containers/image refuses `ferry/host:port/name` as "invalid reference
/// format"), the upstream's name, which Ferry also routes by.
fn mirror_prefix(u: &crate::config::UpstreamConfig, host: &str) -> Option<String> {
    if !host.contains(':') {
        return Some(host.to_string());
    }
    let name = u.name.to_ascii_lowercase();
    crate::oci::RepoName::parse(&name)
        .filter(|n| n.components().count() == 1)
        .map(|_| name)
}

/// `daemon.json` with Ferry first in `registry-mirrors` (Docker Hub images
/// only), every other key and mirror kept; with `remove`, Ferry's entry taken
/// out again. dockerd refuses unknown keys, so the file carries no marker:
/// Ferry's entry is recognised by its URL.
fn daemon_json(
    config: &Config,
    ferry: Option<&Url>,
    remove: bool,
    current: &Option<String>,
    path: &Path,
) -> Result<Option<Step>, String> {
    let Some(ferry) = ferry else {
        return Ok(None);
    };
    let mine = ferry.as_str().trim_end_matches('/').to_string();
    let hub = config
        .upstreams
        .iter()
        .any(|u| registry_host(u) == "docker.io");
    let mut doc: serde_json::Value = match current {
        Some(text) if !text.trim().is_empty() => serde_json::from_str(text)
            .map_err(|e| format!("{}: not JSON ({e}); left alone", path.display()))?,
        _ => serde_json::json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| format!("{}: not a JSON object; left alone", path.display()))?;
    let mut list: Vec<serde_json::Value> = match obj.get("registry-mirrors") {
        None => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(format!(
                "{}: registry-mirrors is not a list",
                path.display()
            ))
        }
    };
    list.retain(|m| m.as_str().map(|m| m.trim_end_matches('/')) != Some(mine.as_str()));
    if hub && !remove {
        list.insert(0, serde_json::Value::String(mine));
    }
    if list.is_empty() {
        obj.remove("registry-mirrors");
    } else {
        obj.insert("registry-mirrors".into(), serde_json::Value::Array(list));
    }
    if current.is_none() && obj.is_empty() {
        return Ok(None);
    }
    let content = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    let unchanged = current
        .as_deref()
        .is_some_and(|c| serde_json::from_str::<serde_json::Value>(c).ok().as_ref() == Some(&doc));
    Ok(Some(if unchanged {
        Step::Unchanged { path: path.into() }
    } else {
        Step::Write {
            path: path.into(),
            content,
        }
    }))
}

/// Carries out `steps` on the real file system.
pub fn apply(steps: &[Step]) -> std::io::Result<()> {
    for step in steps {
        match step {
            Step::Write { path, content } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("ferry-tmp");
                std::fs::write(&tmp, content)?;
                std::fs::rename(&tmp, path)?;
            }
            Step::Remove { path } => {
                std::fs::remove_file(path)?;
                // containerd's per-registry directory goes too, if now empty.
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            Step::Unchanged { .. } | Step::Skip { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
