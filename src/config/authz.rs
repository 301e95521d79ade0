//! `[authz]`: the decision listener of authorization-only mode, and which front proxy asks.

use http::HeaderName;
use serde::Deserialize;

use super::validator::{ConfigError, Validator};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthz {
    listen: Option<String>,
    front: Option<crate::authz::FrontKind>,
    method_header: Option<String>,
    uri_header: Option<String>,
    path_prefix: Option<String>,
    public_origin: Option<String>,
    client_cert: Option<bool>,
    client_cert_header: Option<String>,
}

impl Validator<'_> {
    pub(super) fn authz(&self, a: RawAuthz) -> Result<Option<crate::authz::AuthzConfig>, ConfigError> {
        use crate::authz::{AuthzConfig, Front, FrontKind};
        let Some(listen) = a.listen else {
            if a.front.is_some()
                || a.method_header.is_some()
                || a.uri_header.is_some()
                || a.path_prefix.is_some()
                || a.public_origin.is_some()
                || a.client_cert.is_some()
                || a.client_cert_header.is_some()
            {
                return Err(self.err(
                    "authz.listen",
                    "[authz] settings without listen; set listen to turn the decision listener on",
                ));
            }
            return Ok(None);
        };
        let listen = self.addr("authz.listen", &listen)?;
        // Never guessed: which headers carry the original request depends on the front proxy.
        let kind = a.front.ok_or_else(|| {
            self.err(
                "authz.front",
                "required with authz.listen: \"nginx\", \"traefik\" or \"envoy\" (where the original request is read)",
            )
        })?;
        let header = |key: &str, v: Option<String>, default: &'static str| match v {
            None => Ok(HeaderName::from_static(default)),
            Some(v) => HeaderName::from_bytes(v.as_bytes())
                .map_err(|_| self.err(format!("authz.{key}"), format!("{v:?} is not a header name"))),
        };
        if kind != FrontKind::Nginx && (a.method_header.is_some() || a.uri_header.is_some()) {
            return Err(self.err(
                "authz.method_header",
                format!(
                    "front = \"{}\" has fixed header names; method_header and uri_header are for nginx",
                    kind.as_str()
                ),
            ));
        }
        if kind != FrontKind::Envoy && a.path_prefix.is_some() {
            return Err(self.err("authz.path_prefix", "path_prefix is for front = \"envoy\""));
        }
        let front = match kind {
            FrontKind::Nginx => Front::Headers {
                kind,
                method: header("method_header", a.method_header, "x-original-method")?,
                uri: header("uri_header", a.uri_header, "x-original-uri")?,
            },
            FrontKind::Traefik => Front::Headers {
                kind,
                method: HeaderName::from_static("x-forwarded-method"),
                uri: HeaderName::from_static("x-forwarded-uri"),
            },
            FrontKind::Envoy => {
                let path_prefix = a.path_prefix.unwrap_or_default();
                if !(path_prefix.is_empty() || path_prefix.starts_with('/') && !path_prefix.ends_with('/')) {
                    return Err(self.err(
                        "authz.path_prefix",
                        format!(
                            "{path_prefix:?}: write it as ext_authz's path_prefix, e.g. \"/authz\" (no trailing '/')"
                        ),
                    ));
                }
                Front::Envoy { path_prefix }
            }
        };
        if a.client_cert_header.is_some() && (kind != FrontKind::Nginx || a.client_cert != Some(true)) {
            return Err(self.err(
                "authz.client_cert_header",
                "for front = \"nginx\" with client_cert = true (Envoy and Traefik name their own header)",
            ));
        }
        // Each front's own header, and only with client_cert = true: a certificate is public, so
        // a header the front does not always set or remove would let anyone claim one.
        let client_cert = match (a.client_cert.unwrap_or(false), kind) {
            (false, _) => None,
            (true, FrontKind::Envoy) => Some(HeaderName::from_static("x-forwarded-client-cert")),
            (true, FrontKind::Traefik) => Some(HeaderName::from_static("x-forwarded-tls-client-cert")),
            (true, FrontKind::Nginx) => Some(header("client_cert_header", a.client_cert_header, "x-client-cert")?),
        };
        let public_origin = a.public_origin.map(|o| self.origin("authz.public_origin", &o)).transpose()?;
        Ok(Some(AuthzConfig { listen, front, public_origin, client_cert }))
    }
}
