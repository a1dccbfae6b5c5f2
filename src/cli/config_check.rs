//! `ferry config check`: validates a configuration (file and flags, exactly
//! as `ferry serve` would) and prints what it means.

use super::{load_config, ServeArgs};
use anyhow::Result;
use ferry::config::defaults;
use std::process::ExitCode;

/// Prints the effective configuration; a bad one is an `Err` (exit 2).
pub fn run(args: &ServeArgs) -> Result<ExitCode> {
    let config = load_config(args)?;
    println!("listen        {}", config.listen);
    println!("data_dir      {}", config.data_dir.display());
    if let Some(a) = config.admin_listen {
        let token = match config.admin_token {
            Some(_) => "bearer token",
            None => "no token: loopback only",
        };
        println!("admin_listen  {a} ({token})");
    }
    for u in &config.upstreams {
        let default = if u.name == config.default_upstream {
            " (default)"
        } else {
            ""
        };
        let f = &u.policy.defaults;
        let access = u.access.map_or_else(
            || "open".to_string(),
            |a| {
                format!(
                    "checked(ttl={} negative_ttl={} stale={})",
                    defaults::show(a.ttl),
                    defaults::show(a.negative_ttl),
                    defaults::show(a.stale)
                )
            },
        );
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "upstream      {}{default}: {} aliases={:?} tag_ttl={} stale_if_error={} negative_ttl={} credentials={} access={access} ca_file={} client_cert={}",
            u.name,
            u.url,
            u.aliases,
            defaults::show(f.tag_ttl),
            defaults::show(f.stale_if_error),
            defaults::show(f.negative_ttl),
            yes(u.credentials.is_some()),
            yes(u.tls.ca_pem.is_some()),
            yes(u.tls.identity_pem.is_some()),
        );
    }
    if let Some(b) = &config.bucket {
        println!(
            "bucket        {} {}/{} region={} path_style={} part_size={} max_uploads={} backoff={} (keys loaded, not shown)",
            b.endpoint,
            b.bucket,
            b.prefix,
            b.region,
            b.path_style,
            b.part_size,
            b.max_uploads,
            defaults::show(b.backoff),
        );
    }
    if let Some(c) = &config.cluster {
        let members = match &c.members {
            ferry::config::cluster::Members::Static(list) => format!("peers={list:?}"),
            ferry::config::cluster::Members::Dns { name, port } => {
                format!("peers_dns={name}:{port}")
            }
        };
        println!(
            "cluster       self={} {members} refresh={} quarantine={} (peer secret loaded, not shown)",
            c.self_addr,
            defaults::show(c.refresh),
            defaults::show(c.quarantine),
        );
    }
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}
