//! Who may call the coordinator: the credentials a call carries, as gRPC
//! metadata, and the client side that attaches them.
//!
//! - `authorization: Bearer <token>`: the run's worker token (the
//!   Coordinator service) or user token (the Jobs service, and GetStatus).
//!   Two tokens, so that a user who may submit jobs cannot join training.
//! - `x-ddpm-session: <secret>`: the session secret the coordinator gave a
//!   worker in its RegisterReply, bound to its worker id; every later call
//!   of that worker carries it, so no peer can act under another's id.
//!
//! Tokens come from a file (a mounted Kubernetes Secret) or an environment
//! variable; see [`load_token`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key of the session secret.
pub const SESSION_KEY: &str = "x-ddpm-session";

/// The worker token's environment variable.
pub const WORKER_TOKEN_ENV: &str = "DDPM_WORKER_TOKEN";
/// The user token's environment variable.
pub const USER_TOKEN_ENV: &str = "DDPM_USER_TOKEN";

/// Why a token cannot be used; each names where the token came from.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {} is empty", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{env} is set but empty: give it a token, or unset it")]
    EmptyVar { env: String },
    /// `origin`: "the token in FILE" or the variable's name.
    #[error("{origin}: a token needs at least 16 characters (this one has {len}); e.g. `openssl rand -hex 32`")]
    TooShort { origin: String, len: usize },
    #[error("{origin}: a token may hold printable ASCII only, no spaces")]
    NotPrintable { origin: String },
}

/// A token from `file` (trimmed), else from the variable `env`, else none.
/// An unreadable or empty file, or an empty variable, is an error: a run
/// meant to be protected must not silently start open.
pub fn load_token(file: Option<&Path>, env: &str) -> Result<Option<String>, TokenError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_path_buf(), source })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::EmptyFile { path: path.to_path_buf() });
        }
        check_token(token, || format!("the token in {}", path.display()))?;
        return Ok(Some(token.to_string()));
    }
    match std::env::var(env) {
        Ok(v) if v.trim().is_empty() => Err(TokenError::EmptyVar { env: env.to_string() }),
        Ok(v) => {
            check_token(v.trim(), || env.to_string())?;
            Ok(Some(v.trim().to_string()))
        }
        Err(_) => Ok(None),
    }
}

/// A token must be usable as an HTTP header value, and long enough.
fn check_token(t: &str, origin: impl FnOnce() -> String) -> Result<(), TokenError> {
    if t.len() < 16 {
        return Err(TokenError::TooShort { origin: origin(), len: t.len() });
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotPrintable { origin: origin() });
    }
    Ok(())
}

/// Equal, in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The bearer token a call carries, if any.
pub fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// The session secret a call carries, if any.
pub fn session<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get(SESSION_KEY)?.to_str().ok()
}

/// 32 random bytes from the OS, hex: a session secret.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A client's credentials, attached to every call: the token (if the run
/// has one) and, once registered, the session secret. Clones share the
/// session, so setting it after Register reaches every client of the
/// connection.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<Arc<str>>,
    session: Arc<Mutex<Option<String>>>,
}

impl Credentials {
    pub fn new(token: Option<String>) -> Self {
        Self { token: token.map(Into::into), session: Default::default() }
    }

    /// The session secret from RegisterReply, for every later call.
    pub fn set_session(&self, secret: &str) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret.to_string());
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let bad = |what: &str| Status::invalid_argument(format!("the {what} cannot be sent as a header"));
        if let Some(t) = &self.token {
            let v = MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| bad("token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        if let Some(s) = self.session.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let v = MetadataValue::try_from(s.as_str()).map_err(|_| bad("session secret"))?;
            req.metadata_mut().insert(SESSION_KEY, v);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn credentials_ride_on_every_call_and_the_session_once_set() {
        let mut c = Credentials::new(Some("0123456789abcdef0123".into()));
        let req = c.call(Request::new(())).unwrap();
        assert_eq!(bearer(&req), Some("0123456789abcdef0123"));
        assert_eq!(session(&req), None);
        c.clone().set_session("s3cret");
        let req = c.call(Request::new(())).unwrap();
        assert_eq!(session(&req), Some("s3cret"));
    }

    #[test]
    fn tokens_are_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "short\n").unwrap();
        assert!(load_token(Some(&f), "UNSET_VAR_X").unwrap_err().to_string().contains("at least 16"));
        std::fs::write(&f, "  a-long-enough-token-1234 \n").unwrap();
        assert_eq!(load_token(Some(&f), "UNSET_VAR_X").unwrap().as_deref(), Some("a-long-enough-token-1234"));
        assert!(load_token(Some(&dir.path().join("missing")), "X").is_err());
        assert_eq!(load_token(None, "DDPM_SURELY_UNSET_VAR").unwrap(), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
        assert_eq!(new_secret().len(), 64);
    }
}
