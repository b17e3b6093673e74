//! Authorization with a registry: the token handshake of the distribution
//! spec, done by us so that a push's token covers what the push does.
//!
//! The registry's `/v2/` answers with its challenge. For `Bearer` (token
//! auth), one token is fetched for all the scopes of the push: `pull,push`
//! on the target and `pull` on the base image's repository when it lives in
//! the same registry, which a cross-repository mount needs. Credentials go
//! to the token endpoint: a user name and password as HTTP Basic on a `GET`;
//! an identity token (an OAuth2 refresh token) as `grant_type=refresh_token`
//! on a `POST`, exchanged for an access token, never sent as a bearer token
//! itself. For `Basic`, user name and password go to the registry; an
//! identity token is refused there with a message saying why. A registry
//! asking for nothing gets nothing.
//!
//! Credentials never go to a plain-HTTP token endpoint of an HTTPS
//! registry. The token is handed to oci-client, which uses it for the
//! push's requests and, once it expires, fetches new ones itself with the
//! user name and password ([`Access::install`]); our own requests (uploads,
//! [`mount`]) use it too. A 401 on any request of the push negotiates
//! again ([`Negotiator`]), which also renews a token got for an identity
//! token (oci-client cannot).

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::credentials::Credential;
use super::retry::Failure;
use super::tls::{tls_error, tls_failure};
use crate::error::Error;

/// How long a mount request (and the cancel of a refused one) may take.
const MOUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest body excerpt kept in a message: token servers may answer with
/// whole HTML pages.
const BODY_MAX: usize = 300;

/// How requests to the registry are authorized.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Authorization {
    /// No `Authorization` header.
    Anonymous,
    /// HTTP Basic.
    Basic(String, String),
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authorization::Anonymous => f.write_str("Anonymous"),
            Authorization::Basic(u, _) => write!(f, "Basic({u:?}, <redacted>)"),
            Authorization::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A registry's `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    /// Token auth: where to get a token, and for which service.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// HTTP Basic.
    Basic,
    /// Anything else (or nothing): requests go out anonymously.
    None,
}

/// Parses a `WWW-Authenticate` header (one challenge; parameters may be
/// quoted, with `\` escapes).
pub(super) fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_string();
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match get("realm") {
        Some(realm) if !realm.is_empty() => Challenge::Bearer {
            realm,
            service: get("service"),
        },
        _ => Challenge::None,
    }
}

/// The scopes of a push to `target`, mounting from `source` when that is
/// another repository of the same registry.
pub(super) fn push_scopes(
    target: &oci_client::Reference,
    source: Option<&oci_client::Reference>,
) -> Vec<String> {
    let mut scopes = vec![format!("repository:{}:pull,push", target.repository())];
    if let Some(s) = source
        && s.resolve_registry() == target.resolve_registry()
        && s.repository() != target.repository()
    {
        scopes.push(format!("repository:{}:pull", s.repository()));
    }
    scopes
}

fn bounded(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(BODY_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Authorized access to one registry.
#[derive(Debug, Clone)]
pub(super) struct Access {
    authorization: Authorization,
    /// What oci-client keeps to renew an expired token by itself: the
    /// user name and password (or nothing, for anonymous tokens); a token
    /// it cannot renew otherwise.
    renewal: Authorization,
}

impl Access {
    /// Negotiates access to `registry` (as it is reached: `host[:port]`)
    /// over `scheme` for `scopes`, with `credential`. One attempt: transient
    /// failures come back as [`Failure::Oci`] for the caller to retry.
    pub(super) async fn negotiate(
        http: &reqwest::Client,
        scheme: &str,
        registry: &str,
        credential: &Credential,
        scopes: &[String],
    ) -> std::result::Result<Access, Failure> {
        let ping = format!("{scheme}://{registry}/v2/");
        let res = http
            .get(&ping)
            .send()
            .await
            .map_err(|e| request_failure(registry, e))?;
        let challenge = match res.headers().get(reqwest::header::WWW_AUTHENTICATE) {
            Some(h) if res.status() == reqwest::StatusCode::UNAUTHORIZED => {
                parse_challenge(&String::from_utf8_lossy(h.as_bytes()))
            }
            _ => Challenge::None,
        };
        if res.status().is_server_error() || res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(Failure::Oci(OciDistributionError::ServerError {
                code: res.status().as_u16(),
                url: ping,
                message: "registry ping".into(),
            }));
        }
        let authorization = match (&challenge, credential) {
            (Challenge::Bearer { .. }, Credential::RegistryToken(t)) => {
                Authorization::Bearer(t.clone())
            }
            (Challenge::Bearer { realm, service }, _) => Authorization::Bearer(
                fetch_token(
                    http,
                    scheme,
                    registry,
                    realm,
                    service.as_deref(),
                    credential,
                    scopes,
                )
                .await?,
            ),
            (Challenge::Basic, Credential::Basic { username, password }) => {
                Authorization::Basic(username.clone(), password.clone())
            }
            (Challenge::Basic, Credential::IdentityToken(_)) => {
                return Err(Failure::Fatal(Error::RegistryUnauthorized {
                    registry: registry.to_string(),
                    message: "the docker config holds an identity token for it, but it asks for \
                              HTTP Basic, not token authentication: an identity token is only \
                              exchanged at a token endpoint, never sent as a password or bearer \
                              token (log in with a user name and password instead)"
                        .into(),
                }));
            }
            (Challenge::Basic, Credential::RegistryToken(t)) => Authorization::Bearer(t.clone()),
            (Challenge::Basic, Credential::Anonymous) | (Challenge::None, _) => {
                Authorization::Anonymous
            }
        };
        let renewal = match (&challenge, credential, &authorization) {
            (Challenge::Bearer { .. }, Credential::Basic { username, password }, _) => {
                Authorization::Basic(username.clone(), password.clone())
            }
            (Challenge::Bearer { .. }, Credential::Anonymous, _) => Authorization::Anonymous,
            (_, _, a) => a.clone(),
        };
        tracing::debug!(
            registry,
            ?challenge,
            ?authorization,
            ?scopes,
            "registry access"
        );
        Ok(Access {
            authorization,
            renewal,
        })
    }

    /// Hands the authorization to oci-client for `image`'s requests of
    /// `operation`: the push's token is used as it is until it expires;
    /// then oci-client fetches a new one itself with the credentials kept
    /// for renewal (for the target's repository only: mounts come first).
    /// The first credentials stored for a registry stay, as in oci-client.
    pub(super) async fn install(
        &self,
        client: &oci_client::Client,
        image: &oci_client::Reference,
        operation: oci_client::RegistryOperation,
    ) -> std::result::Result<(), OciDistributionError> {
        client
            .store_auth_if_needed(image.resolve_registry(), &oci_auth(&self.renewal))
            .await;
        client
            .auth(image, &oci_auth(&self.authorization), operation)
            .await?;
        if operation == oci_client::RegistryOperation::Push
            && matches!(self.authorization, Authorization::Bearer(_))
        {
            // A push token serves the repository's pulls (blob checks) too:
            // a renewed one replaces the old for both.
            client
                .auth(
                    image,
                    &oci_auth(&self.authorization),
                    oci_client::RegistryOperation::Pull,
                )
                .await?;
        }
        Ok(())
    }

    /// How our own requests to the registry are authorized.
    pub(super) fn authorization(&self) -> &Authorization {
        &self.authorization
    }
}

/// How to negotiate access to one registry for a push, again when a token
/// expires.
#[derive(Debug, Clone)]
pub(super) struct Negotiator {
    /// The client of the handshake (the push's TLS roots).
    pub(super) http: reqwest::Client,
    /// `http` or `https`.
    pub(super) scheme: &'static str,
    /// The registry as it is reached (`host[:port]`).
    pub(super) registry: String,
    /// Its credential.
    pub(super) credential: Credential,
    /// The scopes of the push ([`push_scopes`]).
    pub(super) scopes: Vec<String>,
}

impl Negotiator {
    /// One negotiation ([`Access::negotiate`]).
    pub(super) async fn access(&self) -> std::result::Result<Access, Failure> {
        Access::negotiate(
            &self.http,
            self.scheme,
            &self.registry,
            &self.credential,
            &self.scopes,
        )
        .await
    }
}

/// `req` with `authz`'s `Authorization` header.
pub(super) fn authorize(
    req: reqwest::RequestBuilder,
    authz: &Authorization,
) -> reqwest::RequestBuilder {
    match authz {
        Authorization::Anonymous => req,
        Authorization::Basic(u, p) => req.basic_auth(u, Some(p)),
        Authorization::Bearer(t) => req.bearer_auth(t),
    }
}

/// Mounts blob `digest` from repository `from` into `repository` of the
/// registry at `base` (`scheme://host[:port]/`). `true` when mounted (201).
/// A registry that answers 202 opened an upload session instead: it is
/// cancelled (`DELETE`), and the blob is to be uploaded. Any failure only
/// means "upload it instead".
pub(super) async fn mount(
    http: &reqwest::Client,
    base: &url::Url,
    authz: &Authorization,
    repository: &str,
    from: &str,
    digest: &str,
) -> bool {
    let url = match base
        .join(&format!("v2/{repository}/blobs/uploads/"))
        .map(|mut u| {
            u.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            u
        }) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(digest, error = %e, "mount URL");
            return false;
        }
    };
    let post = authorize(http.post(url.clone()), authz).timeout(MOUNT_TIMEOUT);
    let res = match post.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(digest, error = %e, "cross-repository mount failed; uploading");
            return false;
        }
    };
    match res.status().as_u16() {
        201 => {
            tracing::debug!(digest, from, "blob mounted");
            true
        }
        202 => {
            let location = res
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            if let Some(loc) = location {
                let delete = authorize(http.delete(loc), authz).timeout(MOUNT_TIMEOUT);
                match delete.send().await {
                    Ok(r) => tracing::debug!(
                        digest,
                        status = %r.status(),
                        "mount refused (202); upload session cancelled"
                    ),
                    Err(e) => tracing::debug!(
                        digest,
                        error = %e,
                        "mount refused (202); cancelling its upload session failed"
                    ),
                }
            }
            false
        }
        status => {
            tracing::debug!(digest, status, "cross-repository mount refused; uploading");
            false
        }
    }
}

fn oci_auth(a: &Authorization) -> RegistryAuth {
    match a {
        Authorization::Anonymous => RegistryAuth::Anonymous,
        Authorization::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
        Authorization::Bearer(t) => RegistryAuth::Bearer(t.clone()),
    }
}

/// What a failed request to `host` is: a TLS failure ends the push at
/// once; anything else goes to the retry classification.
fn request_failure(host: &str, e: reqwest::Error) -> Failure {
    match tls_failure(&e) {
        Some(t) => Failure::Fatal(tls_error(host, &t)),
        None => Failure::Oci(OciDistributionError::RequestError(e)),
    }
}

/// Fetches a token for `scopes` at `realm`.
async fn fetch_token(
    http: &reqwest::Client,
    scheme: &str,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    credential: &Credential,
    scopes: &[String],
) -> std::result::Result<String, Failure> {
    let unauthorized = |message: String| {
        Failure::Fatal(Error::RegistryUnauthorized {
            registry: registry.to_string(),
            message,
        })
    };
    let realm_url = url::Url::parse(realm)
        .map_err(|e| unauthorized(format!("token endpoint {realm:?} is not a URL: {e}")))?;
    let sends_secret = !matches!(credential, Credential::Anonymous);
    if sends_secret && scheme == "https" && realm_url.scheme() != "https" {
        return Err(unauthorized(format!(
            "its token endpoint {realm} is not HTTPS: credentials are not sent in the clear"
        )));
    }
    let realm_host = realm_url.host_str().unwrap_or(registry).to_string();
    let req = match credential {
        Credential::IdentityToken(refresh) => {
            // OAuth2 refresh-token grant; scopes space-separated.
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh)
                .append_pair("client_id", "seamless-snapshot")
                .append_pair("scope", &scopes.join(" "));
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            http.post(realm_url.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.finish())
        }
        _ => {
            let mut url = realm_url.clone();
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let req = http.get(url);
            match credential {
                Credential::Basic { username, password } => {
                    req.basic_auth(username, Some(password))
                }
                _ => req,
            }
        }
    };
    let res = req
        .send()
        .await
        .map_err(|e| request_failure(&realm_host, e))?;
    let status = res.status();
    let body = res
        .bytes()
        .await
        .map_err(|e| request_failure(&realm_host, e))?;
    let text = || bounded(&String::from_utf8_lossy(&body));
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Oci(OciDistributionError::ServerError {
            code: status.as_u16(),
            url: realm.to_string(),
            message: text(),
        }));
    }
    let what = match credential {
        Credential::IdentityToken(_) => "exchanging the identity token",
        Credential::Anonymous => "getting an anonymous token",
        _ => "getting a token",
    };
    if !status.is_success() {
        return Err(unauthorized(format!(
            "{what} at {realm}: {status}: {}",
            text()
        )));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|e| unauthorized(format!("{what} at {realm}: unreadable answer: {e}")))?;
    // The OAuth2 endpoint answers `access_token`, the token endpoint
    // `token` (and often both, equal).
    let token = match credential {
        Credential::IdentityToken(_) => answer.access_token.or(answer.token),
        _ => answer.token.or(answer.access_token),
    };
    token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized(format!("{what} at {realm}: the answer holds no token")))
}

#[cfg(test)]
mod tests;
