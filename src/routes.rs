//! Method + path -> route (name and auth requirement), by matchit templates.
//!
//! Matching rule: the most specific template wins (static segments beat `{param}`, which beats
//! `{*catch_all}`); among routes that share one template, the first in the file whose `methods`
//! admit the request wins. A request that matches nothing gets `[defaults]` under the route
//! name `unmatched`.

use std::sync::Arc;

use http::Method;
use serde::Deserialize;

/// What a route demands of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// No token is looked at (health, overview pages).
    Public,
    /// Any valid token; no MFA needed.
    Token,
    /// App+User tokens must carry MFA; app-only tokens pass (operations needing no GDAP role).
    Mfa,
    /// Only App+User tokens with MFA (GDAP operations); app-only tokens are refused.
    AppUserMfa,
}

impl Requirement {
    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::Public => "public",
            Requirement::Token => "token",
            Requirement::Mfa => "mfa",
            Requirement::AppUserMfa => "app_user_mfa",
        }
    }
}

/// How a route wants the token bound to its client (sender-constrained, RFC 9449 and RFC 8705).
/// A bound token's binding is checked on every route; this makes one required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// A DPoP-bound token, with its proof (`Authorization: DPoP`).
    Dpop,
    /// A token bound to the client certificate of its connection (RFC 8705).
    Mtls,
    /// Either.
    Any,
}

impl Binding {
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Dpop => "dpop",
            Binding::Mtls => "mtls",
            Binding::Any => "any",
        }
    }
}

/// What a client is told when the route refuses it for want of MFA (or of a recent sign-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepUp {
    /// `401 Unauthorized - MFA required`, `Bearer error="invalid_token"`: the mandated bytes.
    PartnerCenter,
    /// RFC 9470: `error="insufficient_user_authentication"` with `acr_values` / `max_age`.
    Rfc9470,
    /// Entra's claims challenge (`error="insufficient_claims"`, `claims=...`), to clients whose
    /// token says they handle it (`xms_cc` holds `cp1`); others get the Partner Center bytes.
    EntraClaims,
}

impl StepUp {
    pub const ALL: [StepUp; 3] = [StepUp::PartnerCenter, StepUp::Rfc9470, StepUp::EntraClaims];

    pub fn as_str(self) -> &'static str {
        match self {
            StepUp::PartnerCenter => "partner_center",
            StepUp::Rfc9470 => "rfc9470",
            StepUp::EntraClaims => "entra_claims",
        }
    }
}

/// One resolved route: what the request path needs, and the name used in logs and metrics.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into the metric label set: routes in file order, then `unmatched`.
    pub index: usize,
    pub name: Arc<str>,
    pub require: Requirement,
    pub methods: Vec<Method>,
    pub roles_any: Vec<String>,
    pub scopes_any: Vec<String>,
    pub step_up: StepUp,
    /// Seconds since `auth_time` past which the route's MFA requirement fails.
    pub max_auth_age: Option<u64>,
    /// `false`: report-only. A request the route's rules would refuse is forwarded, marked and
    /// counted as `would_refuse`; a token that does not verify is refused all the same.
    pub enforce: bool,
    /// The binding the token must have here (`None`: bearer tokens too). Like a token's
    /// validity it is enforced on report-only routes too.
    pub binding: Option<Binding>,
}

/// `[defaults]`: for routes that do not say, and for requests that match no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub require: Requirement,
    /// `[challenge].step_up`.
    pub step_up: StepUp,
    pub enforce: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self { require: Requirement::AppUserMfa, step_up: StepUp::PartnerCenter, enforce: true }
    }
}

/// One `[[route]]` table, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    /// Empty means every method.
    pub methods: Vec<http::Method>,
    pub require: Requirement,
    pub roles_any: Vec<String>,
    pub scopes_any: Vec<String>,
    /// The route's own, or `[challenge].step_up`.
    pub step_up: StepUp,
    pub max_auth_age: Option<std::time::Duration>,
    /// The route's own, or `[defaults].enforce`.
    pub enforce: bool,
    pub binding: Option<Binding>,
}

pub const UNMATCHED: &str = "unmatched";

pub struct RouteTable {
    router: matchit::Router<Vec<usize>>,
    routes: Vec<Route>,
    unmatched: Route,
}

impl RouteTable {
    /// Builds the table; on a template matchit refuses, returns the route's index and why.
    /// Requests that match no route get `defaults`.
    pub fn new(configs: &[RouteConfig], defaults: Defaults) -> Result<Self, (usize, String)> {
        let mut router = matchit::Router::new();
        let mut templates: Vec<(String, Vec<usize>)> = Vec::new();
        let mut routes = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            routes.push(Route {
                index: i,
                name: c.name.as_str().into(),
                require: c.require,
                methods: c.methods.clone(),
                roles_any: c.roles_any.clone(),
                scopes_any: c.scopes_any.clone(),
                step_up: c.step_up,
                max_auth_age: c.max_auth_age.map(|d| d.as_secs()),
                enforce: c.enforce,
                binding: c.binding,
            });
            match templates.iter_mut().find(|(p, _)| *p == c.path) {
                Some((_, ids)) => ids.push(i),
                None => templates.push((c.path.clone(), vec![i])),
            }
        }
        for (path, ids) in templates {
            let first = ids[0];
            router.insert(path, ids).map_err(|e| (first, e.to_string()))?;
        }
        let unmatched = Route {
            index: configs.len(),
            name: UNMATCHED.into(),
            require: defaults.require,
            methods: Vec::new(),
            roles_any: Vec::new(),
            scopes_any: Vec::new(),
            step_up: defaults.step_up,
            max_auth_age: None,
            enforce: defaults.enforce,
            binding: None,
        };
        Ok(Self { router, routes, unmatched })
    }

    pub fn resolve(&self, method: &Method, path: &str) -> &Route {
        if let Ok(m) = self.router.at(path) {
            for &i in m.value {
                let r = &self.routes[i];
                if r.methods.is_empty() || r.methods.contains(method) {
                    return r;
                }
            }
        }
        &self.unmatched
    }

    /// The route of requests that match none.
    pub fn unmatched(&self) -> &Route {
        &self.unmatched
    }

    /// Routes in label order (file order, then `unmatched`).
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(std::iter::once(&self.unmatched))
    }

    /// Route names in label order (file order, then `unmatched`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().chain(std::iter::once(&self.unmatched)).map(|r| &*r.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str, methods: &[&str], require: Requirement) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path: path.into(),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            require,
            roles_any: vec![],
            scopes_any: vec![],
            step_up: StepUp::PartnerCenter,
            max_auth_age: None,
            enforce: true,
            binding: None,
        }
    }

    #[test]
    fn specific_template_wins_and_methods_fall_through_in_file_order() {
        let t = RouteTable::new(
            &[
                route("customers", "/v1/customers/{id}/{*rest}", &[], Requirement::AppUserMfa),
                route("orders", "/v1/customers/{id}/orders", &[], Requirement::Mfa),
                route("offers-read", "/v1/offers", &["GET"], Requirement::Mfa),
                route("offers-write", "/v1/offers", &[], Requirement::AppUserMfa),
            ],
            Defaults { require: Requirement::Token, ..Defaults::default() },
        )
        .unwrap();
        assert_eq!(&*t.resolve(&Method::GET, "/v1/customers/c1/orders").name, "orders");
        assert_eq!(&*t.resolve(&Method::GET, "/v1/customers/c1/users").name, "customers");
        assert_eq!(&*t.resolve(&Method::GET, "/v1/offers").name, "offers-read");
        assert_eq!(&*t.resolve(&Method::POST, "/v1/offers").name, "offers-write");
        let u = t.resolve(&Method::GET, "/nothing");
        assert_eq!((&*u.name, u.require, u.index), (UNMATCHED, Requirement::Token, 4));
        assert_eq!(t.names().collect::<Vec<_>>(), ["customers", "orders", "offers-read", "offers-write", UNMATCHED]);
    }

    #[test]
    fn conflicting_templates_name_the_route() {
        let err = RouteTable::new(
            &[route("a", "/v1/{x}", &[], Requirement::Token), route("b", "/v1/{y}", &[], Requirement::Token)],
            Defaults { require: Requirement::Token, ..Defaults::default() },
        )
        .err()
        .unwrap();
        assert_eq!(err.0, 1);
    }
}
