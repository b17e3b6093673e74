//! Image references and how a registry is reached.
//!
//! [`parse_reference`] accepts what the distribution grammar accepts, minus a
//! bare `host:port` that would silently become a Docker Hub name. Registries
//! listed as insecure are reached over plain HTTP, loopback ones too unless
//! they answer TLS (see [`super::tls::plain_http`]); every other registry
//! over HTTPS.

use std::net::IpAddr;

use oci_client::Reference;

use crate::error::{Error, Result};

/// Parses and validates an image reference.
///
/// Fails with [`Error::InvalidReference`] on what the distribution grammar
/// rejects (uppercase repository, bad tag or digest, empty parts) and on a
/// bare `host:port` or `host.domain` with no repository, which the grammar
/// would otherwise read as a Docker Hub image.
pub(crate) fn parse_reference(s: &str) -> Result<Reference> {
    let invalid = |reason: String| Error::InvalidReference {
        reference: s.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid("empty reference".into()));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace".into()));
    }
    if !s.contains('/') {
        let name = s.split(['@', ':']).next().unwrap_or(s);
        if name.contains('.') || name == "localhost" {
            return Err(invalid(format!(
                "missing repository: {name:?} looks like a registry host"
            )));
        }
    }
    let r = Reference::try_from(s).map_err(|e| invalid(e.to_string()))?;
    if r.repository().is_empty() {
        return Err(invalid("missing repository".into()));
    }
    // oci-client takes an uppercase first component (`Me/app`) as part of a
    // Docker Hub repository, which the grammar forbids and whose full form
    // it rejects itself; Docker would read it as a registry host.
    if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "repository {:?} must be lowercase",
            r.repository()
        )));
    }
    Ok(r)
}

/// The host part of a `host`, `host:port`, `[v6]` or `[v6]:port` string.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.matches(':').count() {
        1 => registry.split(':').next().unwrap_or(registry),
        _ => registry,
    }
}

/// Whether a registry address is on the loopback interface
/// (127.0.0.0/8, `::1`, `localhost`).
fn is_loopback_registry(registry: &str) -> bool {
    let host = host_of(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registries among `registries` to reach over plain HTTP: loopback
/// ones and those listed in `insecure` (an entry without a port matches any
/// port), plus the `insecure` entries themselves.
pub(crate) fn plain_http_registries(insecure: &[String], registries: &[&str]) -> Vec<String> {
    let entries = insecure_entries(insecure);
    let mut out: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    for r in registries {
        if (is_listed(&entries, r) || is_loopback_registry(r)) && !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    out
}

/// The `insecure` entries as hosts: scheme and trailing `/` dropped.
fn insecure_entries(insecure: &[String]) -> Vec<&str> {
    insecure
        .iter()
        .map(|e| {
            let e = e.trim();
            let e = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            e.trim_end_matches('/')
        })
        .filter(|e| !e.is_empty())
        .collect()
}

/// Whether `registry` is named by one of the (trimmed) insecure entries.
fn is_listed(entries: &[&str], registry: &str) -> bool {
    entries
        .iter()
        .any(|e| *e == registry || (host_of(e) == *e && *e == host_of(registry)))
}

/// Whether `registry` is plain HTTP only for being on loopback (not listed
/// in `insecure`): such a registry may still serve TLS.
pub(super) fn plain_for_loopback_only(insecure: &[String], registry: &str) -> bool {
    is_loopback_registry(registry) && !is_listed(&insecure_entries(insecure), registry)
}

/// The URL scheme of `registry` given the plain-HTTP ones.
pub(super) fn scheme_for(plain_http: &[String], registry: &str) -> &'static str {
    if plain_http.iter().any(|p| p == registry) {
        "http"
    } else {
        "https"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v1"));
        let r = parse_reference("ubuntu").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/ubuntu");
        assert_eq!(r.tag(), Some("latest"));
        assert!(parse_reference("localhost/x@sha256:0123456789012345678901234567890123456789012345678901234567890123").is_ok());
        for bad in [
            "",
            "Registry.example.com/UPPER/case:tag",
            "example.com/Upper",
            "example.com/repo:bad tag",
            "example.com/repo:-tag",
            "example.com/",
            "example.com:5000",
            "localhost:5000",
            "example.com/repo@sha256:abc",
            "example.com//repo",
            // Uppercase in the first of several components (found by the
            // reference fuzz target: accepted, with a full form that is not).
            "R01000/a/b:v.",
            "Me/app",
        ] {
            let e = parse_reference(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidReference { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_and_insecure() {
        for r in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "LOCALHOST",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "10.0.0.1:5000",
            "example.com",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
        let insecure = vec!["reg.lan".to_string(), "http://other:5000/".to_string()];
        let got = plain_http_registries(
            &insecure,
            &[
                "reg.lan:5000",
                "127.0.0.1:4000",
                "ghcr.io",
                "other:5000",
                "other:6000",
            ],
        );
        assert_eq!(
            got,
            vec!["reg.lan", "other:5000", "reg.lan:5000", "127.0.0.1:4000"]
        );
        assert!(plain_http_registries(&[], &["index.docker.io"]).is_empty());
        // Loopback ones may still serve TLS, unless listed.
        assert!(plain_for_loopback_only(&[], "127.0.0.1:4000"));
        assert!(plain_for_loopback_only(&insecure, "localhost"));
        let listed = vec!["http://127.0.0.1:4000/".to_string()];
        assert!(!plain_for_loopback_only(&listed, "127.0.0.1:4000"));
        assert!(plain_for_loopback_only(&listed, "127.0.0.1:4001"));
        assert!(!plain_for_loopback_only(&[], "reg.lan:5000"));
        assert_eq!(scheme_for(&got, "ghcr.io"), "https");
        assert_eq!(scheme_for(&got, "other:5000"), "http");
    }
}
