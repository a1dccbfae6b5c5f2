//! Where the images are in an admitted object: the JSON Pointer of every
//! `image` to pin, by kind and subresource.
//!
//! - a Pod: its `initContainers` and `containers`; on the
//!   `pods/ephemeralcontainers` subresource only the ephemeral containers that
//!   are new (absent from `oldObject`): existing ones cannot change, and the API
//!   server drops every other change on that subresource;
//! - with workloads on: the pod template of a Deployment, StatefulSet,
//!   DaemonSet, ReplicaSet or Job (`/spec/template/spec`), and of a CronJob
//!   (`/spec/jobTemplate/spec/template/spec`), so every replica of a rollout
//!   gets one digest.

use serde_json::Value;

/// An image string and where it sits (a JSON Pointer into the object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageAt {
    /// e.g. `/spec/containers/0/image`.
    pub pointer: String,
    /// The image as written.
    pub image: String,
}

/// The images to consider pinning in an admission request's object.
pub fn to_pin(request: &Value, workloads: bool) -> Vec<ImageAt> {
    let kind = request["kind"]["kind"].as_str().unwrap_or("");
    let sub = request["subResource"].as_str().unwrap_or("");
    let object = &request["object"];
    match (kind, sub) {
        ("Pod", "") => containers(object, "/spec", &["initContainers", "containers"]),
        ("Pod", "ephemeralcontainers") => {
            let old: Vec<&str> = request["oldObject"]["spec"]["ephemeralContainers"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            containers(object, "/spec", &["ephemeralContainers"])
                .into_iter()
                .filter(|i| {
                    let idx: usize = i
                        .pointer
                        .split('/')
                        .nth(3)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let name = object["spec"]["ephemeralContainers"][idx]["name"]
                        .as_str()
                        .unwrap_or("");
                    !old.contains(&name)
                })
                .collect()
        }
        ("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job", "") if workloads => {
            containers(
                object,
                "/spec/template/spec",
                &["initContainers", "containers"],
            )
        }
        ("CronJob", "") if workloads => containers(
            object,
            "/spec/jobTemplate/spec/template/spec",
            &["initContainers", "containers"],
        ),
        _ => Vec::new(),
    }
}

/// The images of the container lists `lists` under the pod spec at `spec`.
fn containers(object: &Value, spec: &str, lists: &[&str]) -> Vec<ImageAt> {
    let Some(pod) = object.pointer(spec) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for list in lists {
        for (i, c) in pod[*list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if let Some(image) = c["image"].as_str() {
                out.push(ImageAt {
                    pointer: format!("{spec}/{list}/{i}/image"),
                    image: image.to_string(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/admission/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["request"].clone()
    }

    fn pointers(name: &str, workloads: bool) -> Vec<String> {
        to_pin(&request(name), workloads)
            .into_iter()
            .map(|i| format!("{} {}", i.pointer, i.image))
            .collect()
    }

    #[test]
    fn pods_workloads_and_ephemeral_containers() {
        assert_eq!(
            pointers("pod-init-and-containers.json", true),
            [
                "/spec/initContainers/0/image busybox:1.36",
                "/spec/containers/0/image nginx:1.27",
                "/spec/containers/1/image 127.0.0.1:5001/team/app:1.0",
            ]
        );
        assert_eq!(
            pointers("deployment.json", true),
            ["/spec/template/spec/containers/0/image nginx:1.27"]
        );
        assert!(
            pointers("deployment.json", false).is_empty(),
            "workloads off"
        );
        assert_eq!(
            pointers("cronjob.json", true),
            ["/spec/jobTemplate/spec/template/spec/containers/0/image 127.0.0.1:5001/team/app:1.0"]
        );
        assert_eq!(
            pointers("ephemeral-container.json", true),
            ["/spec/ephemeralContainers/0/image busybox:1.36"],
            "only the new ephemeral container"
        );
    }
}
