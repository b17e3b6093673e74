//! Registry credentials from a docker `config.json`.
//!
//! No credentials for a registry (or no config at all) means anonymous
//! access; an unreadable or malformed explicit config is an error, never a
//! silent fallback to anonymous.

use std::io::BufReader;
use std::path::Path;

use oci_client::secrets::RegistryAuth;

use crate::error::{Error, Result};

/// Credentials for `registry` from the docker config.
pub(super) async fn registry_auth(
    registry: &str,
    docker_config: Option<&Path>,
) -> Result<RegistryAuth> {
    let registry = registry.to_string();
    let path = docker_config.map(|p| {
        if p.is_dir() {
            p.join("config.json")
        } else {
            p.to_path_buf()
        }
    });
    // Credential helpers are external programs: keep them off the runtime.
    tokio::task::spawn_blocking(move || lookup_credential(&registry, path.as_deref()))
        .await
        .map_err(|e| Error::Internal(format!("credential lookup task: {e}")))?
}

fn lookup_credential(registry: &str, path: Option<&Path>) -> Result<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let res = match path {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io("open", p, e))?;
            match docker_credential::get_credential_from_reader(BufReader::new(f), registry) {
                Err(E::ConfigReadError) => {
                    return Err(Error::InvalidArgument(format!(
                        "docker config {}: not a valid config.json",
                        p.display()
                    )));
                }
                r => r,
            }
        }
        None => docker_credential::get_credential(registry),
    };
    match res {
        Ok(DockerCredential::UsernamePassword(u, p)) => Ok(RegistryAuth::Basic(u, p)),
        Ok(DockerCredential::IdentityToken(t)) => Ok(RegistryAuth::Bearer(t)),
        // No config, or nothing for this registry: anonymous.
        Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
            Ok(RegistryAuth::Anonymous)
        }
        Err(e) => Err(Error::RegistryUnauthorized {
            registry: registry.to_string(),
            message: format!("reading credentials from the docker config: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_explicit_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        // "user:pass"
        std::fs::write(
            &cfg,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"},"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        assert_eq!(
            lookup_credential("127.0.0.1:5000", Some(&cfg)).unwrap(),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            lookup_credential("docker.io", Some(&cfg)).unwrap(),
            RegistryAuth::Basic("hub".into(), "secret".into())
        );
        assert_eq!(
            lookup_credential("ghcr.io", Some(&cfg)).unwrap(),
            RegistryAuth::Anonymous
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        // A directory is taken as the directory holding config.json.
        assert_eq!(
            rt.block_on(registry_auth("127.0.0.1:5000", Some(dir.path())))
                .unwrap(),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        let missing = dir.path().join("nope.json");
        assert!(matches!(
            lookup_credential("x", Some(&missing)),
            Err(Error::Io { .. })
        ));
        std::fs::write(&cfg, "not json").unwrap();
        assert!(matches!(
            lookup_credential("x", Some(&cfg)),
            Err(Error::InvalidArgument(_))
        ));
    }
}
