//! Where a run lives (`--run URL`) and how to reach it: the location
//! grammar, the S3 options with their AWS environment fallbacks, and the
//! clap flags every binary shares.
//!
//! ```text
//! /abs/path  ./rel/path  rel/path      the local filesystem (created if missing)
//! file:///abs/path                     the same, as a URL
//! s3://bucket[/prefix]                 an S3-compatible store (path-style addressing)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use super::error::StoreError;

/// A parsed run location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory of the local filesystem.
    Local(PathBuf),
    /// `s3://bucket/prefix`: `prefix` has no leading or trailing `/` and may be empty.
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses `--run` (see the module documentation).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        if url.trim().is_empty() {
            return Err(bad("empty: give a directory or s3://bucket/prefix"));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: write s3://BUCKET/PREFIX"));
            }
            if bucket.len() < 3
                || bucket.len() > 63
                || !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(bad("the bucket name must be 3 to 63 lowercase letters, digits, '-' or '.'"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|seg| seg.is_empty() && !prefix.is_empty()) {
                return Err(bad("the prefix has an empty segment ('//')"));
            }
            if prefix.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(bad("the prefix may not contain '.' or '..' segments"));
            }
            return Ok(Location::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path (file:///abs/path)"));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(bad(&format!("unsupported scheme {scheme}://: use a local path, file:///path or s3://bucket/prefix")));
        }
        Ok(Location::Local(PathBuf::from(url)))
    }
}

/// How to reach an S3-compatible store. Unset fields fall back to the
/// standard AWS variables when the store is opened ([`StoreOptions::resolve`]).
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT`; none: AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_REGION`, `AWS_DEFAULT_REGION`; default `us-east-1`. Must equal
    /// the server's region (Garage: its `s3_region`), which signs requests.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN` (temporary credentials).
    pub session_token: Option<String>,
    /// Allow a plain `http://` endpoint; `AWS_ALLOW_HTTP=true`.
    pub allow_http: Option<bool>,
    /// Files larger than this are uploaded in parts of this size (S3's
    /// minimum part is 5 MiB). Default [`DEFAULT_PART_SIZE`].
    pub part_size: Option<usize>,
    /// Retries of one request (object_store's `RetryConfig`).
    pub retry: RetryOptions,
}

/// 16 MiB: a 143 MB cifar10 tensor file is 9 parts.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// S3 refuses parts below 5 MiB (except the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// How hard one request tries before its error is reported.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryOptions {
    /// Retries of a failed request (connection errors, 5xx, throttling).
    pub max_retries: usize,
    /// First backoff; doubled after every retry up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts after this long from the first attempt.
    pub retry_timeout: Duration,
    /// Connecting to the endpoint gives up after this long.
    pub connect_timeout: Duration,
    /// One request (one part of an upload) gives up after this long.
    pub request_timeout: Duration,
}

impl Default for RetryOptions {
    /// object_store's defaults (10 retries from 100 ms up to 15 s, within
    /// 3 minutes) with a 5 s connect timeout and 5 minutes per request, so
    /// that a 16 MiB part over a slow link is not cut off.
    fn default() -> Self {
        Self {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            retry_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
        }
    }
}

impl RetryOptions {
    /// Two quick retries within a few seconds: for tests and for commands a
    /// person waits on.
    pub fn quick() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            retry_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryOptions {
    /// For commands a person waits on: a few retries within 20 s, then the
    /// classified error; long requests (big files) still have 5 minutes.
    pub fn interactive() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            retry_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    /// Never prints the secret or the session token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("part_size", &self.part_size)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Options with every fallback applied.
#[derive(Clone)]
pub(crate) struct Resolved {
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials: Option<(String, String)>,
    pub session_token: Option<String>,
    pub allow_http: bool,
    pub part_size: usize,
}

fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

impl StoreOptions {
    /// Applies the AWS environment fallbacks and checks the result.
    pub(crate) fn resolve(&self, url: &str) -> Result<Resolved, StoreError> {
        let cfg = |reason: String| StoreError::Config { url: url.to_string(), reason };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]))
            .map(|e| e.trim_end_matches('/').to_string());
        let region = self.region.clone().or_else(|| env(&["AWS_REGION", "AWS_DEFAULT_REGION"])).unwrap_or("us-east-1".into());
        let allow_http = match self.allow_http {
            Some(b) => b,
            None => env(&["AWS_ALLOW_HTTP"]).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
        };
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(cfg(format!("the endpoint {e:?} must start with http:// or https://")));
            }
            if e.starts_with("http://") && !allow_http {
                return Err(cfg(format!("the endpoint {e} is plain http: pass --s3-allow-http (or set AWS_ALLOW_HTTP=true) to allow it")));
            }
        }
        let key = self.access_key_id.clone().or_else(|| env(&["AWS_ACCESS_KEY_ID"]));
        let secret = self.secret_access_key.clone().or_else(|| env(&["AWS_SECRET_ACCESS_KEY"]));
        let credentials = match (key, secret) {
            (Some(k), Some(s)) => Some((k, s)),
            (Some(_), None) => return Err(cfg("an access key id but no secret: set AWS_SECRET_ACCESS_KEY or --s3-secret-key".into())),
            (None, Some(_)) => return Err(cfg("a secret but no access key id: set AWS_ACCESS_KEY_ID or --s3-access-key".into())),
            (None, None) => {
                // Kubernetes service accounts (web identity) and ECS task roles
                // need no static keys; anything else would wait on the EC2
                // metadata service, which off AWS only times out.
                if env(&["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"])
                    .is_none()
                {
                    return Err(cfg(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --s3-access-key and --s3-secret-key)"
                            .into(),
                    ));
                }
                None
            }
        };
        let session_token = self.session_token.clone().or_else(|| env(&["AWS_SESSION_TOKEN"]));
        let part_size = self.part_size.unwrap_or(DEFAULT_PART_SIZE);
        if part_size < MIN_PART_SIZE {
            return Err(cfg(format!("the part size {part_size} B is below S3's minimum of 5 MiB")));
        }
        Ok(Resolved { endpoint, region, credentials, session_token, allow_http, part_size })
    }
}

/// The store flags of `ddpm`, `ddpm-coord` and friends; `#[command(flatten)]` them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// S3 endpoint URL, e.g. http://127.0.0.1:3900 (default: AWS_ENDPOINT_URL, else AWS itself).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region; must be the server's (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long)]
    pub s3_access_key: Option<String>,
    /// S3 secret key (default: AWS_SECRET_ACCESS_KEY; prefer the variable, flags show in `ps`).
    #[arg(long)]
    pub s3_secret_key: Option<String>,
    /// Allow a plain http endpoint, e.g. a test server on loopback (default: AWS_ALLOW_HTTP).
    #[arg(long)]
    pub s3_allow_http: bool,
    /// Upload files larger than this many MiB in parts of this size (at least 5).
    #[arg(long, value_name = "MIB")]
    pub s3_part_size_mib: Option<usize>,
}

impl StoreArgs {
    /// The options these flags describe (unset ones fall back to the environment).
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key.clone(),
            secret_access_key: self.s3_secret_key.clone(),
            session_token: None,
            allow_http: self.s3_allow_http.then_some(true),
            part_size: self.s3_part_size_mib.map(|m| m << 20),
            retry: RetryOptions::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(Location::parse("runs/a").unwrap(), Location::Local("runs/a".into()));
        assert_eq!(Location::parse("/x/y").unwrap(), Location::Local("/x/y".into()));
        assert_eq!(Location::parse("file:///x/y").unwrap(), Location::Local("/x/y".into()));
        assert_eq!(Location::parse("s3://bkt/runs/a/").unwrap(), Location::S3 { bucket: "bkt".into(), prefix: "runs/a".into() });
        assert_eq!(Location::parse("s3://bkt").unwrap(), Location::S3 { bucket: "bkt".into(), prefix: String::new() });
        for (bad, why) in [
            ("s3://", "no bucket"),
            ("s3://B_x/p", "bucket name"),
            ("s3://bkt/a//b", "empty segment"),
            ("s3://bkt/a/../b", "'..'"),
            ("gs://bkt/p", "unsupported scheme gs://"),
            ("file://rel", "absolute path"),
            ("", "empty"),
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn refuses_plain_http_unless_asked_and_hides_the_secret() {
        let mut o = StoreOptions {
            endpoint: Some("http://127.0.0.1:3900".into()),
            region: Some("garage".into()),
            access_key_id: Some("GK1".into()),
            secret_access_key: Some("very-secret".into()),
            allow_http: Some(false),
            ..Default::default()
        };
        let e = o.resolve("s3://b/p").err().unwrap().to_string();
        assert!(e.contains("--s3-allow-http"), "{e}");
        o.allow_http = Some(true);
        let r = o.resolve("s3://b/p").unwrap();
        assert_eq!((r.region.as_str(), r.part_size), ("garage", DEFAULT_PART_SIZE));
        assert!(!format!("{o:?}").contains("very-secret"));
        o.part_size = Some(1 << 20);
        assert!(o.resolve("s3://b/p").err().unwrap().to_string().contains("5 MiB"));
        o.part_size = None;
        o.secret_access_key = None;
        o.access_key_id = Some("GK1".into());
        if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
            assert!(o.resolve("s3://b/p").err().unwrap().to_string().contains("no secret"));
        }
    }
}
