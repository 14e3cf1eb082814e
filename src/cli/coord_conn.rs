//! How a `ddpm` subcommand reaches a coordinator (`ddpm jobs`, `ddpm
//! status`): its address, the user token, TLS; one channel with the token
//! on every call.

use std::time::Duration;

use clap::Args;
use ddpm::runtime::error_chain;
use ddpm::wire::auth::Credentials;
use ddpm::wire::tls::is_tls_failure;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The environment variable `--coord` falls back to.
pub const COORD_ENV: &str = "DDPM_COORD";

#[derive(Args, Debug)]
pub struct CoordArgs {
    /// The coordinator, HOST:PORT (the address `ddpm-coord` printed).
    #[arg(long, global = true, env = COORD_ENV, default_value = "127.0.0.1:50051")]
    pub coord: String,
    /// File holding the run's user token (default: DDPM_USER_TOKEN); needed
    /// when the coordinator has tokens.
    #[arg(long, global = true)]
    pub token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: ddpm::wire::tls::ClientTlsArgs,
}

/// A channel to the coordinator whose calls carry the user token.
pub type CoordChannel = InterceptedService<Channel, Credentials>;

impl CoordArgs {
    /// Connects (10 s at most); the error says whether the coordinator is
    /// unreachable or TLS failed.
    pub async fn connect(&self) -> anyhow::Result<CoordChannel> {
        let token = ddpm::wire::auth::load_token(self.token_file.as_deref(), ddpm::wire::auth::USER_TOKEN_ENV)?;
        let tls = self.tls.load()?;
        let addr = &self.coord;
        let channel = tls.endpoint(addr)?.connect_timeout(Duration::from_secs(10)).connect().await.map_err(|e| {
            if is_tls_failure(&e) {
                anyhow::anyhow!("TLS with the coordinator at {addr} failed: {}", error_chain(&e))
            } else {
                anyhow::anyhow!(
                    "cannot reach the coordinator at {addr} (is ddpm-coord running there? --coord or {COORD_ENV} names it): {}",
                    error_chain(&e)
                )
            }
        })?;
        Ok(InterceptedService::new(channel, Credentials::new(token)))
    }
}

/// A gRPC error as a message for people.
pub fn rpc_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
