//! The store's error type: what went wrong talking to the run's storage,
//! classified from `object_store`'s errors into the few cases a user can act
//! on, each saying which flag or variable to fix.

/// An error of the run store. Every variant names the store (its URL) and,
/// where it applies, the object; its message says how to fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--run` value is not a location the store understands.
    #[error("invalid run location {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The options cannot describe a working store (missing credentials,
    /// plain http not allowed, ...).
    #[error("cannot open the run store {url}: {reason}")]
    Config { url: String, reason: String },

    /// S3 refused the access key or the signature.
    #[error(
        "S3 rejected the credentials for {url} (SignatureDoesNotMatch / InvalidAccessKeyId / AccessDenied): \
         check AWS_SECRET_ACCESS_KEY and AWS_ACCESS_KEY_ID (or --s3-secret-key / --s3-access-key), and that \
         the region ({region}) is the server's; server said: {detail}"
    )]
    Credentials { url: String, region: String, detail: String },

    /// The request was signed for another region than the server's.
    #[error(
        "the S3 server at {endpoint} is not in region {region:?}: set --s3-region / AWS_REGION to the server's          region (Garage: its s3_region); server said: {detail}"
    )]
    WrongRegion { url: String, endpoint: String, region: String, detail: String },

    /// The bucket of an `s3://bucket/...` URL does not exist.
    #[error("the bucket {bucket:?} does not exist at {endpoint}: create it, or fix the bucket in --run {url}")]
    NoSuchBucket { url: String, bucket: String, endpoint: String },

    /// The endpoint could not be reached (connection refused, DNS, timeout).
    #[error(
        "cannot reach the object store at {endpoint} for {url} ({op} {key}): {detail}. \
         Check that the server is running and --s3-endpoint / AWS_ENDPOINT_URL; plain http needs --s3-allow-http"
    )]
    Unreachable { url: String, endpoint: String, op: &'static str, key: String, detail: String },

    /// The object does not exist.
    #[error("{key} does not exist in {url}")]
    NotFound { url: String, key: String },

    /// The store refused the operation for a reason that retrying will not
    /// fix (no space left, permission denied, a read-only file system); a
    /// person has to act, as `hint` says.
    #[error("{op} {key} in {url} failed: {detail}. {hint}")]
    Refused { url: String, op: &'static str, key: String, detail: String, hint: &'static str },

    /// A fenced store refused the write: this process may not write to the
    /// run (it lost the run lease, or could not renew it).
    #[error("refused to {op} {key} in {url}: {reason}")]
    Fenced {
        url: String,
        op: &'static str,
        key: String,
        #[source]
        reason: FenceError,
    },

    /// Anything else the store reported, with the operation and object.
    #[error("{op} {key} in {url} failed: {detail}")]
    Other { url: String, op: &'static str, key: String, detail: String },
}

impl StoreError {
    /// True for errors that may go away by themselves (the store is down or
    /// overloaded, or something unclassified); the uploader retries those
    /// and not, say, bad credentials or a full disk.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. } | StoreError::Other { .. })
    }
}

/// Errors no retry fixes, by the text the OS (`os error N`) or an S3 server
/// puts in them, with what a person should do.
const REFUSALS: [(&[&str], &str); 5] = [
    (
        &["No space left on device", "os error 28)", "Disk quota exceeded", "os error 122)", "QuotaExceeded"],
        "The store is full: free space (or raise the quota) where --run points, or point --run elsewhere",
    ),
    (
        &["Permission denied", "os error 13)", "Operation not permitted", "os error 1)"],
        "The coordinator may not write there: fix the permissions (or attributes, e.g. chattr -i) where --run points",
    ),
    (&["Read-only file system", "os error 30)"], "The store is mounted read-only: remount it writable or point --run elsewhere"),
    (&["File too large", "os error 27)", "EntityTooLarge"], "The object is larger than the store accepts: raise its limit"),
    (&["Is a directory", "os error 21)", "Not a directory", "os error 20)"], "Something else occupies that path: move it away"),
];

/// The refusal `detail` describes, if it is one (its hint).
fn refusal(detail: &str) -> Option<&'static str> {
    REFUSALS.iter().find(|(marks, _)| marks.iter().any(|m| detail.contains(m))).map(|(_, hint)| *hint)
}

/// A local I/O error of `op` on `key`: a refusal, or (may pass) `Other`.
pub(crate) fn local_io(url: &str, op: &'static str, key: &str, path: &std::path::Path, e: &std::io::Error) -> StoreError {
    let detail = format!("{}: {e}", path.display());
    let (url, key) = (url.to_string(), key.to_string());
    match refusal(&detail) {
        Some(hint) => StoreError::Refused { url, op, key, detail, hint },
        None => StoreError::Other { url, op, key, detail },
    }
}

/// Where an error happened, for [`classify`].
pub(crate) struct Context<'a> {
    pub url: &'a str,
    pub endpoint: &'a str,
    pub region: &'a str,
    pub bucket: Option<&'a str>,
    pub op: &'static str,
    pub key: &'a str,
}

/// Maps an `object_store` error to the case a user can act on. S3 servers
/// answer a bad secret with 403 SignatureDoesNotMatch, an unknown key with
/// 403 InvalidAccessKeyId (Garage: "Forbidden: No such key"), a missing
/// bucket with 404 NoSuchBucket; connection failures carry no status.
pub(crate) fn classify(err: object_store::Error, cx: &Context<'_>) -> StoreError {
    let detail = crate::runtime::error_chain(&err);
    let url = cx.url.to_string();
    let key = cx.key.to_string();
    const AUTH: [&str; 6] =
        ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "Invalid signature", "No such key", "Forbidden"];
    if let Some(bucket) = cx.bucket {
        if detail.contains("NoSuchBucket") || detail.contains("Bucket not found") {
            return StoreError::NoSuchBucket { url, bucket: bucket.to_string(), endpoint: cx.endpoint.to_string() };
        }
        if ["AuthorizationHeaderMalformed", "IncorrectRegion", "PermanentRedirect", "incorrectly configured region"]
            .iter()
            .any(|m| detail.contains(m))
        {
            return StoreError::WrongRegion { url, endpoint: cx.endpoint.to_string(), region: cx.region.to_string(), detail };
        }
        if matches!(err, object_store::Error::NotFound { .. }) {
            return StoreError::NotFound { url, key };
        }
        let auth_variant = matches!(err, object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. });
        if auth_variant || AUTH.iter().any(|a| detail.contains(a)) {
            return StoreError::Credentials { url, region: cx.region.to_string(), detail };
        }
    }
    match err {
        object_store::Error::NotFound { .. } => StoreError::NotFound { url, key },
        _ if is_connection_failure(&detail) => StoreError::Unreachable { url, endpoint: cx.endpoint.to_string(), op: cx.op, key, detail },
        _ => match refusal(&detail) {
            Some(hint) => StoreError::Refused { url, op: cx.op, key, detail, hint },
            None => StoreError::Other { url, op: cx.op, key, detail },
        },
    }
}

fn is_connection_failure(detail: &str) -> bool {
    const MARKS: [&str; 8] = [
        "error sending request",
        "Connection refused",
        "connection refused",
        "tcp connect error",
        "dns error",
        "timed out",
        "connection reset",
        "Connection reset",
    ];
    MARKS.iter().any(|m| detail.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context { url: "s3://b/run", endpoint: "http://127.0.0.1:1", region: "garage", bucket: Some("b"), op: "put", key: "k" }
    }

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: msg.to_string().into() }
    }

    #[test]
    fn classifies_the_cases_users_can_fix() {
        let e = classify(generic("Server returned 403: <Code>SignatureDoesNotMatch</Code>"), &cx());
        assert!(matches!(e, StoreError::Credentials { .. }), "{e}");
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = classify(generic("400 <Code>AuthorizationHeaderMalformed</Code> expected garage"), &cx());
        assert!(matches!(e, StoreError::WrongRegion { .. }) && e.to_string().contains("AWS_REGION"), "{e}");
        let e = classify(generic("404 <Code>NoSuchBucket</Code>"), &cx());
        assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
        let e = classify(generic("error sending request: tcp connect error: Connection refused"), &cx());
        assert!(matches!(e, StoreError::Unreachable { .. }) && e.is_transient(), "{e}");
        let e = classify(object_store::Error::NotFound { path: "k".into(), source: "404".to_string().into() }, &cx());
        assert!(matches!(e, StoreError::NotFound { .. }) && !e.is_transient(), "{e}");
    }

    #[test]
    fn a_full_disk_or_a_permission_is_refused_not_retried() {
        for (msg, hint) in [
            ("Unable to write: No space left on device (os error 28)", "free space"),
            ("Unable to open file /r/x: Permission denied (os error 13)", "permissions"),
            ("Unable to rename: Operation not permitted (os error 1)", "chattr -i"),
            ("Read-only file system (os error 30)", "read-only"),
        ] {
            let e = classify(generic(msg), &Context { bucket: None, ..cx() });
            assert!(matches!(e, StoreError::Refused { .. }) && !e.is_transient(), "{e}");
            assert!(e.to_string().contains(hint), "{e}");
        }
        let io = std::io::Error::from_raw_os_error(28);
        let e = local_io("/r", "put", "k", std::path::Path::new("/r/k"), &io);
        assert!(!e.is_transient() && e.to_string().contains("/r/k"), "{e}");
        // An error nobody recognises may pass: retried.
        let e = classify(generic("something odd"), &Context { bucket: None, ..cx() });
        assert!(e.is_transient(), "{e}");
    }
}

/// Why a fence refuses a write ([`super::Fence`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceError {
    /// Another coordinator took the run, or this one released it.
    #[error("this coordinator lost the run lease ({why}); it writes nothing more")]
    LeaseLost { why: String },
    /// The lease could not be renewed in time: another coordinator may hold
    /// the run by now.
    #[error(
        "the run lease was last renewed {age_s:.0} s ago, past its {ttl_s:.0} s time to live (is the store reachable?); \
         another coordinator may have taken the run, so nothing is written until it is renewed"
    )]
    LeaseExpired { age_s: f64, ttl_s: f64 },
}
