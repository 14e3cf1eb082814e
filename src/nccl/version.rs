//! An NCCL release's version, decoded from `ncclGetVersion`'s code; below
//! both the loader (which checks it) and the errors (which report it).

/// An NCCL version, as `ncclGetVersion` encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Decodes `NCCL_VERSION_CODE`: `X*1000 + Y*100 + Z` up to 2.8, then
    /// `X*10000 + Y*100 + Z` (nccl.h's `NCCL_VERSION` macro), so 2.4.2 is
    /// 2402 and 2.28.9 is 22809.
    pub fn from_code(code: i32) -> Self {
        let c = code.max(0) as u32;
        if c >= 10_000 {
            Self { major: c / 10_000, minor: (c % 10_000) / 100, patch: c % 100 }
        } else {
            Self { major: c / 1000, minor: (c % 1000) / 100, patch: c % 100 }
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
