//! Who may call what. A run is open (no tokens: loopback, or `--insecure`)
//! or protected by two tokens: the worker token admits the Coordinator
//! service, the user token the Jobs service; GetStatus takes either. A
//! worker's calls after Register also carry its session secret, checked
//! against its id by the handlers (`CoordService::authorize`).
//!
//! The interceptors run before any handler: a call without a token, or
//! with an unknown one, is refused with UNAUTHENTICATED; a token of the
//! wrong kind with PERMISSION_DENIED. Nothing of the run changes.

use ddpm::wire::auth;
use tonic::{Request, Status};

/// The run's tokens (both or neither).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub worker_token: Option<String>,
    pub user_token: Option<String>,
}

/// Who a call comes from, as its token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Worker,
    User,
    /// The run has no tokens: anyone who reaches it.
    Open,
}

impl Access {
    /// Both tokens or neither: a run half protected is a configuration mistake.
    pub fn new(worker_token: Option<String>, user_token: Option<String>) -> anyhow::Result<Self> {
        match (&worker_token, &user_token) {
            (Some(w), Some(u)) if auth::same_secret(w, u) => {
                anyhow::bail!("the worker and user tokens are the same: give them different values, or a user could join training")
            }
            (Some(_), None) | (None, Some(_)) => anyhow::bail!(
                "give both tokens or neither: the worker token ({}, --worker-token-file) and the user token ({}, --user-token-file)",
                auth::WORKER_TOKEN_ENV,
                auth::USER_TOKEN_ENV
            ),
            _ => Ok(Self { worker_token, user_token }),
        }
    }

    pub fn is_protected(&self) -> bool {
        self.worker_token.is_some()
    }

    /// Who `req` comes from; UNAUTHENTICATED without a known token.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let (Some(worker), Some(user)) = (&self.worker_token, &self.user_token) else {
            return Ok(Caller::Open);
        };
        match auth::bearer(req) {
            None => Err(Status::unauthenticated(
                "this coordinator requires a token (authorization: Bearer ...): workers pass the run's worker token \
                 (DDPM_WORKER_TOKEN or --token-file), users the user token (DDPM_USER_TOKEN or --token-file)",
            )),
            Some(t) if auth::same_secret(t, worker) => Ok(Caller::Worker),
            Some(t) if auth::same_secret(t, user) => Ok(Caller::User),
            Some(_) => Err(Status::unauthenticated("wrong token: this is not one of the run's tokens")),
        }
    }

    /// The Coordinator service's gate: any known token; the caller rides
    /// along for the handlers.
    pub fn coordinator_gate(&self) -> impl tonic::service::Interceptor + Clone {
        let access = self.clone();
        move |mut req: Request<()>| {
            let caller = access.caller(&req)?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }

    /// The Jobs service's gate: the user token only.
    pub fn jobs_gate(&self) -> impl tonic::service::Interceptor + Clone {
        let access = self.clone();
        move |req: Request<()>| match access.caller(&req)? {
            Caller::Worker => Err(Status::permission_denied("the worker token cannot use the Jobs service: use the run's user token")),
            Caller::User | Caller::Open => Ok(req),
        }
    }
}

/// The caller of a call that passed the Coordinator gate.
pub fn caller_of<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<Caller>().copied().unwrap_or(Caller::Open)
}
