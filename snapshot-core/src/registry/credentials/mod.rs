//! Registry credentials, resolved as docker (and nerdctl) resolve them from
//! a docker `config.json`.
//!
//! The config is the one given (a file, or the directory holding
//! `config.json`), else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. For a registry, in this order:
//!
//! 1. `credHelpers[<registry>]`: the helper `docker-credential-<name>`;
//! 2. `credsStore`: the default helper, for every registry;
//! 3. `auths[<registry>]`: `auth` (base64 `user:password`) or
//!    `username`/`password`, `identitytoken`, `registrytoken`.
//!
//! A helper that answers "credentials not found" means anonymous, as it
//! does for docker (the `auths` entries are then not consulted: with a
//! helper configured, docker keeps no secrets there). Keys match by host:
//! `https://host:port/v1/` and `host:port` are the same registry, and Docker
//! Hub's `docker.io`, `index.docker.io`, `registry-1.docker.io` and
//! `https://index.docker.io/v1/` (docker's own key) are one.
//!
//! No config at the default places means anonymous; an explicit config that
//! is missing, or any config that does not parse, is an error, never a
//! silent fallback to anonymous.

mod helper;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Docker's key for Docker Hub, and the server URL its helpers are asked for.
pub(super) const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a registry's credentials are.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// None: anonymous access.
    Anonymous,
    /// A user name and password (or a helper's secret).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's secret for
    /// the user name `<token>`): exchanged for an access token at the
    /// registry's token endpoint, never sent to the registry itself.
    IdentityToken(String),
    /// A bearer token for the registry itself (`registrytoken`).
    RegistryToken(String),
}

impl std::fmt::Debug for Credential {
    // Secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// The part of a docker `config.json` that concerns credentials (no
/// `Debug`: it holds secrets).
#[derive(Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry.
#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The host a config key or registry name stands for: scheme and path
/// dropped, lowercased, every Docker Hub name as `docker.io`.
pub(super) fn normalize(key: &str) -> String {
    let k = key.trim();
    let lower = k.to_ascii_lowercase();
    let k = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// The server URL under which docker stores and asks helpers for
/// `registry`'s credentials.
pub(super) fn server_key(registry: &str) -> String {
    if normalize(registry) == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// The value of `map` for `registry`: its own key first, then docker's
/// key, then any key naming the same host (the first in key order).
fn lookup<'m, V>(map: &'m BTreeMap<String, V>, registry: &str) -> Option<&'m V> {
    map.get(registry)
        .or_else(|| map.get(&server_key(registry)))
        .or_else(|| {
            let host = normalize(registry);
            map.iter()
                .find(|(k, _)| normalize(k) == host)
                .map(|(_, v)| v)
        })
}

/// Where the docker config is read from, and whether it must exist.
fn config_path(explicit: Option<&Path>) -> Option<(PathBuf, bool)> {
    if let Some(p) = explicit {
        let file = if p.is_dir() {
            p.join("config.json")
        } else {
            p.to_path_buf()
        };
        return Some((file, true));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some((PathBuf::from(dir).join("config.json"), false));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| (PathBuf::from(h).join(".docker/config.json"), false))
}

fn load(explicit: Option<&Path>) -> Result<DockerConfig> {
    let Some((path, required)) = config_path(explicit) else {
        return Ok(DockerConfig::default());
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DockerConfig::default());
        }
        Err(e) => return Err(Error::io("read docker config", path, e)),
    };
    serde_json::from_slice(&text).map_err(|e| {
        Error::InvalidArgument(format!(
            "docker config {}: not a valid config.json: {e}",
            path.display()
        ))
    })
}

/// The credentials of `registry` (as written in the reference: `docker.io`,
/// `host:port`) from the docker config. Helpers run on a blocking thread.
pub(crate) async fn resolve(registry: &str, docker_config: Option<&Path>) -> Result<Credential> {
    let registry = registry.to_string();
    let explicit = docker_config.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || resolve_blocking(&registry, explicit.as_deref()))
        .await
        .map_err(|e| Error::Internal(format!("credential lookup task: {e}")))?
}

fn resolve_blocking(registry: &str, docker_config: Option<&Path>) -> Result<Credential> {
    let config = load(docker_config)?;
    resolve_in(&config, registry, &|helper, server| {
        helper::get(helper, server, helper::HELPER_TIMEOUT)
    })
}

/// Runs helper `name` for `server`: `Ok(None)` when it has no credentials.
type RunHelper<'a> = dyn Fn(&str, &str) -> Result<Option<(String, String)>> + 'a;

fn resolve_in(config: &DockerConfig, registry: &str, run: &RunHelper<'_>) -> Result<Credential> {
    let helper = lookup(&config.cred_helpers, registry)
        .or(config.creds_store.as_ref())
        .filter(|h| !h.trim().is_empty());
    if let Some(name) = helper {
        return Ok(match run(name.trim(), &server_key(registry))? {
            None => Credential::Anonymous,
            // Docker's convention for an identity token kept by a helper.
            Some((user, secret)) if user == "<token>" => Credential::IdentityToken(secret),
            Some((username, password)) => Credential::Basic { username, password },
        });
    }
    let Some(entry) = lookup(&config.auths, registry) else {
        return Ok(Credential::Anonymous);
    };
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
    if let Some(t) = nonempty(&entry.identitytoken) {
        return Ok(Credential::IdentityToken(t));
    }
    if let Some(t) = nonempty(&entry.registrytoken) {
        return Ok(Credential::RegistryToken(t));
    }
    if let Some(auth) = nonempty(&entry.auth) {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "docker config: the \"auth\" of {registry} is not base64 \"user:password\": {why}"
            ))
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(&e.to_string()))?;
        let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let (u, p) = text.split_once(':').ok_or_else(|| bad("no ':'"))?;
        return Ok(Credential::Basic {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    match (nonempty(&entry.username), entry.password.clone()) {
        (Some(username), Some(password)) => Ok(Credential::Basic { username, password }),
        _ => Ok(Credential::Anonymous),
    }
}

#[cfg(test)]
mod tests;
