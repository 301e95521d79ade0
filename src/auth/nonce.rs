//! Pure: resource-server nonces for DPoP proofs (RFC 9449 §9), made and checked from a shared
//! secret and the clock.

use base64::Engine;

/// The header that hands a client a nonce (RFC 9449 §9).
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// Resource-server nonces (§9) that every replica makes and checks alike from one secret and
/// the clock, so a fleet shares no store. A nonce names its time step and carries an HMAC of
/// it under the secret; it is accepted in its own step and the next.
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
    step_secs: i64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces").field("step_secs", &self.step_secs).finish_non_exhaustive()
    }
}

/// Bytes of HMAC-SHA256 a nonce carries: 128 bits, past guessing.
const NONCE_TAG_BYTES: usize = 16;

impl Nonces {
    pub fn new(secret: &[u8], step_secs: i64) -> Self {
        Self { key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret), step_secs: step_secs.max(1) }
    }

    fn tag(&self, step: i64) -> aws_lc_rs::hmac::Tag {
        aws_lc_rs::hmac::sign(&self.key, &[b"mfa-gateway dpop nonce ".as_slice(), &step.to_be_bytes()].concat())
    }

    /// The nonce of the time step `now` is in.
    pub fn issue(&self, now: i64) -> String {
        let step = now.div_euclid(self.step_secs);
        let mut bytes = step.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.tag(step).as_ref()[..NONCE_TAG_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` was issued with this secret in the current time step or the one before.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else { return false };
        let Some((step, tag)) = bytes.split_first_chunk::<8>() else { return false };
        let step = i64::from_be_bytes(*step);
        let current = now.div_euclid(self.step_secs);
        (step == current || step == current - 1)
            && tag.len() == NONCE_TAG_BYTES
            && aws_lc_rs::constant_time::verify_slices_are_equal(tag, &self.tag(step).as_ref()[..NONCE_TAG_BYTES])
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_lives_two_steps_and_only_under_its_secret() {
        let (n, other) = (
            Nonces::new(b"0123456789abcdef0123456789abcdef", 30),
            Nonces::new(b"another secret of 32 bytes......", 30),
        );
        let nonce = n.issue(1000);
        assert!(n.accepts(&nonce, 1000) && n.accepts(&nonce, 1019));
        assert!(n.accepts(&nonce, 1049), "the step after its own (990..1020, then 1020..1050)");
        assert!(!n.accepts(&nonce, 1050));
        assert!(!n.accepts(&nonce, 989), "not before its step");
        assert!(!other.accepts(&nonce, 1000));
        assert!(!n.accepts("AAAA", 1000) && !n.accepts("not base64!", 1000));
        let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        forged[7] ^= 1;
        assert!(!n.accepts(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged), 1000));
    }
}
