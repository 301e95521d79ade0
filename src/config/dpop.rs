//! `[dpop]`: how long a DPoP proof is good, how many this replica remembers, and resource-server
//! nonces (RFC 9449 §9).

use serde::Deserialize;

use super::validator::{ConfigError, Validator};
use crate::auth::{DpopConfig, DpopNonce};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpop {
    iat_window: Option<String>,
    max_proofs: Option<usize>,
    nonce_secret_file: Option<String>,
    nonce_step: Option<String>,
}

impl Validator<'_> {
    pub(super) fn dpop(&self, d: RawDpop) -> Result<DpopConfig, ConfigError> {
        let defaults = DpopConfig::default();
        let window = match &d.iat_window {
            Some(w) => self.nonzero("dpop.iat_window", w)?.as_secs() as i64,
            None => defaults.window_secs,
        };
        if !(5..=300).contains(&window) {
            return Err(self.err("dpop.iat_window", "must be between 5s and 5m"));
        }
        let max_proofs = d.max_proofs.unwrap_or(defaults.max_proofs);
        if !(1_000..=10_000_000).contains(&max_proofs) {
            return Err(self.err("dpop.max_proofs", "must be between 1000 and 10000000"));
        }
        Ok(DpopConfig { window_secs: window, max_proofs, nonce: self.nonce(d.nonce_secret_file, d.nonce_step)? })
    }

    /// Nonces are on when a secret file is named; every replica reads the same file.
    fn nonce(&self, file: Option<String>, step: Option<String>) -> Result<Option<DpopNonce>, ConfigError> {
        let Some(file) = file else {
            if step.is_some() {
                return Err(self.err("dpop.nonce_step", "nonces are off without dpop.nonce_secret_file"));
            }
            return Ok(None);
        };
        let secret = self.secret_file("dpop.nonce_secret_file", &file, 32)?;
        let step = self.nonzero("dpop.nonce_step", step.as_deref().unwrap_or("30s"))?;
        if step.as_secs() < 5 || step.as_secs() > 3600 {
            return Err(self.err("dpop.nonce_step", "must be between 5s and 1h"));
        }
        Ok(Some(DpopNonce { secret, step_secs: step.as_secs() as i64 }))
    }
}
