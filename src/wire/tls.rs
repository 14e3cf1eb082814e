//! Transport security: TLS on the coordinator's port (rustls, through
//! tonic), optionally mutual TLS, and the client side that workers and
//! `ddpm jobs` use to reach it.
//!
//! - The coordinator serves with `--tls-cert` and `--tls-key` (PEM). With
//!   `--tls-client-ca` every client must also present a certificate that
//!   CA signed (mutual TLS): the CA then decides which machines may
//!   connect at all, and the run's tokens still decide what each may do.
//! - A client trusts `--tls-ca` (the CA that signed the coordinator's
//!   certificate) and, for mutual TLS, presents `--tls-cert`/`--tls-key`.
//!   Any of these switches the client to `https://`.
//!
//! Files are read and parsed here, once, so that a wrong path or a file
//! that holds no certificate (or no key) is reported by name at start-up
//! rather than as a failed handshake later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped (a
/// client that opens a connection and sends nothing holds no handshake slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator's TLS flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerTlsArgs {
    /// PEM certificate chain the coordinator presents (turns TLS on; needs --tls-key).
    #[arg(long, env = "DDPM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DDPM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): every client must present a certificate one
    /// of them signed (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "DDPM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The TLS flags of a coordinator client (`ddpm-worker`, `ddpm jobs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) to trust for the coordinator's certificate
    /// (turns TLS on; without it, with --tls-cert, the system's roots).
    #[arg(long, global = true, env = "DDPM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a coordinator that requires mutual TLS
    /// (needs --tls-key).
    #[arg(long, global = true, env = "DDPM_TLS_CLIENT_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "DDPM_TLS_CLIENT_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the coordinator's certificate must carry (default: the host of
    /// the coordinator's address).
    #[arg(long, global = true, env = "DDPM_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

/// The coordinator's TLS, loaded and checked.
#[derive(Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mutual", &self.mutual).finish()
    }
}

impl ServerTls {
    /// Whether clients must present a certificate the client CA signed.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// The configuration tonic's server takes.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }
}

impl ServerTlsArgs {
    /// The server TLS these flags ask for; none without --tls-cert.
    pub fn load(&self) -> anyhow::Result<Option<ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            anyhow::ensure!(self.tls_client_ca.is_none(), "--tls-client-ca needs --tls-cert and --tls-key");
            return Ok(None);
        };
        let identity = load_identity(cert, key)?;
        let mut config = ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(load_ca(ca)?);
        }
        Ok(Some(ServerTls { config, mutual: self.tls_client_ca.is_some() }))
    }
}

/// A client's TLS, loaded and checked (or plain text).
#[derive(Clone, Default)]
pub struct ClientTls {
    config: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("enabled", &self.config.is_some()).finish()
    }
}

impl ClientTlsArgs {
    /// The client TLS these flags ask for (plain text without any).
    pub fn load(&self) -> anyhow::Result<ClientTls> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() {
            anyhow::ensure!(self.tls_domain.is_none(), "--tls-domain needs --tls-ca (or --tls-cert)");
            return Ok(ClientTls::default());
        }
        let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        config = match &self.tls_ca {
            Some(ca) => config.ca_certificate(load_ca(ca)?),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(load_identity(cert, key)?);
        }
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        Ok(ClientTls { config: Some(config) })
    }
}

impl ClientTls {
    pub fn is_enabled(&self) -> bool {
        self.config.is_some()
    }

    /// The endpoint of the coordinator at `addr` (`host:port`, or a URL):
    /// `https://` with this TLS, `http://` without. A URL whose scheme
    /// contradicts the flags is refused.
    pub fn endpoint(&self, addr: &str) -> anyhow::Result<Endpoint> {
        let url = match (addr.split_once("://"), self.is_enabled()) {
            (None, true) => format!("https://{addr}"),
            (None, false) => format!("http://{addr}"),
            (Some(("https", _)), true) | (Some(("http", _)), false) => addr.to_string(),
            (Some(("https", _)), false) => {
                anyhow::bail!(
                    "the coordinator address {addr:?} is https:// but no TLS flag is given: pass --tls-ca (the CA of its certificate)"
                )
            }
            (Some(("http", _)), true) => {
                anyhow::bail!("the coordinator address {addr:?} is http:// but TLS flags are given: drop the scheme or use https://")
            }
            (Some((scheme, _)), _) => anyhow::bail!("the coordinator address {addr:?} has scheme {scheme:?}: give HOST:PORT"),
        };
        let endpoint = Endpoint::from_shared(url).map_err(|e| anyhow::anyhow!("bad coordinator address {addr:?}: {e}"))?;
        match &self.config {
            Some(c) => endpoint.tls_config(c.clone()).map_err(|e| anyhow::anyhow!("TLS for {addr}: {e}")),
            None => Ok(endpoint),
        }
    }
}

/// Whether a connect error is a TLS verdict (an untrusted certificate, a
/// wrong name, a refused client certificate) rather than an unreachable
/// host: waiting will not mend it.
pub fn is_tls_failure(e: &tonic::transport::Error) -> bool {
    let text = crate::runtime::error_chain(e).to_lowercase();
    ["certificate", "handshake", "tls", "unknownissuer", "alert", "peer sent no certificates"].iter().any(|w| text.contains(w))
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
}

/// A certificate chain and its key; both files must hold what they claim.
fn load_identity(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    let cert_pem = read(cert, "TLS certificate")?;
    check_certificates(&cert_pem, cert)?;
    let key_pem = read(key, "TLS key")?;
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("{} holds no PEM private key ({e}); give the key of the certificate", key.display()))?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// CA certificate(s) to trust.
fn load_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = read(path, "CA certificate")?;
    check_certificates(&pem, path)?;
    Ok(Certificate::from_pem(pem))
}

/// At least one PEM certificate, and nothing unparsable among them.
fn check_certificates(pem: &[u8], path: &Path) -> anyhow::Result<()> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| anyhow::anyhow!("{} holds a broken PEM certificate: {e}", path.display()))?;
        n += 1;
    }
    anyhow::ensure!(n > 0, "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: Option<&Path>) -> ClientTls {
        ClientTlsArgs { tls_ca: ca.map(Path::to_path_buf), ..Default::default() }.load().unwrap()
    }

    #[test]
    fn files_that_hold_no_certificate_or_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = ClientTlsArgs { tls_ca: Some(junk.clone()), ..Default::default() }.load().unwrap_err();
        assert!(e.to_string().contains("junk.pem holds no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = ServerTlsArgs { tls_cert: Some(missing), tls_key: Some(junk.clone()), tls_client_ca: None }.load().unwrap_err();
        assert!(e.to_string().contains("cannot read the TLS certificate") && e.to_string().contains("missing.pem"), "{e}");
        let e = ServerTlsArgs { tls_client_ca: Some(junk), ..Default::default() }.load().unwrap_err();
        assert!(e.to_string().contains("--tls-client-ca needs --tls-cert"), "{e}");
    }

    #[test]
    fn the_scheme_follows_the_flags() {
        assert_eq!(tls(None).endpoint("h:1").unwrap().uri().to_string(), "http://h:1/");
        let e = tls(None).endpoint("https://h:1").unwrap_err();
        assert!(e.to_string().contains("no TLS flag"), "{e}");
        assert!(tls(None).endpoint("ftp://h:1").unwrap_err().to_string().contains("scheme \"ftp\""));
    }
}
