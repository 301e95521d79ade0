//! `[[route]]` and `[defaults]`: which requests need what.

use serde::Deserialize;

use super::validator::{ConfigError, Validator};
use crate::routes::{Binding, Defaults, Requirement, RouteConfig, StepUp};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    require: Option<Requirement>,
    enforce: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    require: Requirement,
    #[serde(default)]
    roles_any: Vec<String>,
    #[serde(default)]
    scopes_any: Vec<String>,
    step_up: Option<StepUp>,
    max_auth_age: Option<String>,
    enforce: Option<bool>,
    binding: Option<Binding>,
}

impl Validator<'_> {
    /// `[defaults]` and every `[[route]]`, with the step-up `[challenge]` names as the default.
    pub(super) fn routes(
        &self,
        defaults: RawDefaults,
        step_up: Option<StepUp>,
        raw: Vec<RawRoute>,
    ) -> Result<(Defaults, Vec<RouteConfig>), ConfigError> {
        let defaults = Defaults {
            require: defaults.require.unwrap_or(Requirement::AppUserMfa),
            step_up: step_up.unwrap_or(StepUp::PartnerCenter),
            enforce: defaults.enforce.unwrap_or(true),
        };
        let mut routes = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            routes.push(self.route(i, r, &routes, defaults)?);
        }
        // Build the table once here so a conflicting template fails `check`, not start-up.
        crate::routes::RouteTable::new(&routes, defaults).map_err(|(i, e)| self.err(format!("route[{i}].path"), e))?;
        Ok((defaults, routes))
    }

    fn route(
        &self,
        i: usize,
        r: RawRoute,
        seen: &[RouteConfig],
        defaults: Defaults,
    ) -> Result<RouteConfig, ConfigError> {
        let step_up = defaults.step_up;
        let key = |k: &str| format!("route[{i}].{k}");
        let name_ok = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.err(
                key("name"),
                format!("{:?}: use 1-64 letters, digits, '_' or '-' (it becomes a metric label)", r.name),
            ));
        }
        if seen.iter().any(|s| s.name == r.name) {
            return Err(self.err(key("name"), format!("duplicate route name {:?}", r.name)));
        }
        if r.name == crate::routes::UNMATCHED {
            return Err(self
                .err(key("name"), format!("{:?} is the name of requests that match no route; pick another", r.name)));
        }
        if !r.path.starts_with('/') {
            return Err(self.err(key("path"), format!("{:?} must start with '/'", r.path)));
        }
        let mut methods = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let method = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| self.err(key("methods"), format!("{m:?} is not an HTTP method")))?;
            methods.push(method);
        }
        if r.require == Requirement::Public && !(r.roles_any.is_empty() && r.scopes_any.is_empty()) {
            return Err(
                self.err(key("require"), "a public route looks at no token, so roles_any/scopes_any cannot apply")
            );
        }
        if r.require == Requirement::Public && r.binding.is_some() {
            return Err(self.err(key("binding"), "a public route looks at no token, so no binding can be required"));
        }
        let max_auth_age = match &r.max_auth_age {
            Some(s) => Some(self.nonzero(&key("max_auth_age"), s)?),
            None => None,
        };
        let mfa_route = matches!(r.require, Requirement::Mfa | Requirement::AppUserMfa);
        if !mfa_route && (max_auth_age.is_some() || r.step_up.is_some()) {
            return Err(self.err(
                key(if max_auth_age.is_some() { "max_auth_age" } else { "step_up" }),
                "applies to MFA routes only (require = \"mfa\" or \"app_user_mfa\")",
            ));
        }
        Ok(RouteConfig {
            name: r.name,
            path: r.path,
            methods,
            require: r.require,
            roles_any: r.roles_any,
            scopes_any: r.scopes_any,
            step_up: r.step_up.unwrap_or(step_up),
            max_auth_age,
            enforce: r.enforce.unwrap_or(defaults.enforce),
            binding: r.binding,
        })
    }
}
