//! `ferry purge`: removes a digest, a tag or a repository's tags from the
//! cache, through a running Ferry's admin API or in a stopped Ferry's store.

use super::admin_client::admin_post;
use anyhow::{bail, Context, Result};
use clap::Args;
use ferry::config::Overrides;
use ferry::oci::RepoName;
use ferry_storage::{Digest, Store, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct PurgeArgs {
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001 (its token,
    /// if it has one, from FERRY_ADMIN_TOKEN).
    #[arg(long, conflicts_with = "data_dir")]
    admin: Option<String>,
    /// The store of a stopped Ferry.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration (to resolve upstream aliases when purging offline).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A blob or manifest digest.
    #[arg(long, conflicts_with_all = ["upstream", "repository", "tag"])]
    digest: Option<String>,
    /// Upstream name or alias (e.g. docker.io).
    #[arg(long, requires = "repository")]
    upstream: Option<String>,
    /// Repository as named upstream (e.g. library/alpine).
    #[arg(long, requires = "upstream")]
    repository: Option<String>,
    /// One tag; without it every tag of the repository is forgotten.
    #[arg(long, requires = "repository")]
    tag: Option<String>,
}

/// Prints `{"removed":N}` (offline) or the admin API's answer; exits 1 when
/// the admin API refused.
pub fn run(args: &PurgeArgs) -> Result<ExitCode> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    match (&args.digest, &args.upstream, &args.repository) {
        (Some(d), _, _) => {
            query.append_pair("digest", d);
        }
        (None, Some(u), Some(r)) => {
            query
                .append_pair("upstream", u)
                .append_pair("repository", r);
            if let Some(t) = &args.tag {
                query.append_pair("tag", t);
            }
        }
        _ => bail!("give --digest, or --upstream and --repository [--tag]"),
    }
    if let Some(admin) = &args.admin {
        return admin_post(admin, "purge", &query.finish());
    }
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("give --admin URL (Ferry running) or --data-dir DIR (Ferry stopped)");
    };
    let store = Store::open(StoreOptions::new(&data_dir)).with_context(|| {
        format!(
            "opening the store in {} (is Ferry running? use --admin)",
            data_dir.display()
        )
    })?;
    let removed = if let Some(d) = &args.digest {
        let digest: Digest = d
            .parse()
            .with_context(|| format!("{d:?} is not a digest"))?;
        usize::from(store.purge_digest(&digest)?)
    } else {
        let (upstream, repo) = offline_names(args)?;
        store.purge_tags(&upstream, &repo, args.tag.as_deref())?
    };
    println!("{{\"removed\":{removed}}}");
    Ok(ExitCode::SUCCESS)
}

/// The stored upstream name and repository for an offline tag purge: resolved
/// through the configuration when the upstream is known there.
fn offline_names(args: &PurgeArgs) -> Result<(String, String)> {
    let upstream = args.upstream.clone().unwrap_or_default();
    let repo = args.repository.clone().unwrap_or_default();
    let config = super::read_config(args.config.as_deref(), Overrides::default())?;
    Ok(match (config.upstream(&upstream), RepoName::parse(&repo)) {
        (Some(u), Some(name)) => (u.name.clone(), u.repository(name).to_string()),
        (Some(u), None) => (u.name.clone(), repo),
        (None, _) => (upstream, repo),
    })
}
