//! `[dpop]`: resource-server nonces for DPoP proofs (RFC 9449 §9).

use serde::Deserialize;

use super::validator::{ConfigError, Validator};
use crate::auth::DpopNonce;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpop {
    nonce_secret_file: Option<String>,
    nonce_step: Option<String>,
}

impl Validator<'_> {
    /// Nonces are on when a secret file is named; every replica reads the same file.
    pub(super) fn dpop(&self, d: RawDpop) -> Result<Option<DpopNonce>, ConfigError> {
        let Some(file) = d.nonce_secret_file else {
            if d.nonce_step.is_some() {
                return Err(self.err("dpop.nonce_step", "nonces are off without dpop.nonce_secret_file"));
            }
            return Ok(None);
        };
        let secret = self.secret_file("dpop.nonce_secret_file", &file, 32)?;
        let step = self.nonzero("dpop.nonce_step", d.nonce_step.as_deref().unwrap_or("30s"))?;
        if step.as_secs() < 5 || step.as_secs() > 3600 {
            return Err(self.err("dpop.nonce_step", "must be between 5s and 1h"));
        }
        Ok(Some(DpopNonce { secret, step_secs: step.as_secs() as i64 }))
    }
}
