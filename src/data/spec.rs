//! The dataset spec users write after `--data` and in config files.
//!
//! ```text
//! SPEC       := KIND ":" LOCATION [":" SPLIT] ["@" RESOLUTION]
//! KIND       := cifar10 | lsun | folder | synthetic
//! SPLIT      := train | test          (cifar10 and synthetic only; default train)
//! RESOLUTION := side in pixels of the square images the model sees
//! ```
//!
//! - `cifar10:PATH[:train|:test]`: PATH is `cifar-10-batches-bin/` or
//!   `cifar-10-batches-py/` (or a folder holding one of them), or the
//!   downloaded `cifar-10-binary.tar.gz` / `cifar-10-python.tar.gz`.
//!   Images are 32x32; `@32` is accepted, other sizes are refused.
//! - `lsun:PATH[@R]`: an LSUN LMDB directory such as
//!   `church_outdoor_train_lmdb/` (or its `data.mdb`). Images are
//!   center-cropped to a square and resized to R (default 256).
//! - `folder:PATH[@R]`: every `.png`, `.jpg`, `.jpeg` and `.webp` below PATH,
//!   sorted by path; center crop and resize as for LSUN. R defaults to the
//!   smaller side of the first image.
//! - `synthetic:shapes[:train|:test][@R]`: built-in coloured shapes, 32x32
//!   by default (see `synthetic.rs`).
//!
//! The resolution may also come from the config (`OpenOptions::resolution`);
//! giving both with different values is an error. A path that itself ends in
//! `@` and digits cannot be written as a spec: rename it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::DataError;

/// The largest resolution a spec may ask for.
pub const MAX_RESOLUTION: usize = 4096;

/// Which reader a spec names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    Cifar10,
    Lsun,
    Folder,
    Synthetic,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 4] = [Self::Cifar10, Self::Lsun, Self::Folder, Self::Synthetic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Lsun => "lsun",
            Self::Folder => "folder",
            Self::Synthetic => "synthetic",
        }
    }

    fn takes_split(self) -> bool {
        matches!(self, Self::Cifar10 | Self::Synthetic)
    }
}

/// A dataset's train or test part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A parsed `--data` value; see the module documentation for the grammar.
/// Serialized as the plain string it was written as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    /// A path for cifar10, lsun and folder; the dataset's name for synthetic.
    pub location: String,
    /// The split as written; `None` means the default (train) where a split applies.
    pub split: Option<Split>,
    /// The resolution as written after `@`.
    pub resolution: Option<usize>,
}

/// The names `synthetic:NAME` accepts.
pub const SYNTHETIC_NAMES: [&str; 1] = ["shapes"];

const EXAMPLES: &str = "e.g. cifar10:/data/cifar-10-batches-bin, cifar10:/data/cifar-10-python.tar.gz:test, \
     lsun:/data/church_outdoor_train_lmdb@256, folder:/data/images@64, synthetic:shapes";

impl DatasetSpec {
    pub fn path(&self) -> &Path {
        Path::new(&self.location)
    }

    /// The split this spec reads: the one written, or train where splits apply.
    pub fn effective_split(&self) -> Option<Split> {
        if self.kind.takes_split() {
            Some(self.split.unwrap_or(Split::Train))
        } else {
            None
        }
    }
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, DataError> {
        let (body, resolution) = match spec.rsplit_once('@') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                let r: usize = tail.parse().map_err(|_| DataError::spec(spec, format!("resolution '{tail}' is too large")))?;
                if !(1..=MAX_RESOLUTION).contains(&r) {
                    return Err(DataError::spec(spec, format!("resolution {r} must be between 1 and {MAX_RESOLUTION}")));
                }
                (head, Some(r))
            }
            _ => (spec, None),
        };
        let Some((kind_str, rest)) = body.split_once(':') else {
            return Err(DataError::spec(spec, format!("expected KIND:LOCATION with KIND one of {}; {EXAMPLES}", kinds_list())));
        };
        let kind = DatasetKind::ALL.into_iter().find(|k| k.as_str() == kind_str).ok_or_else(|| {
            DataError::spec(spec, format!("unknown dataset kind '{kind_str}'; expected one of {}; {EXAMPLES}", kinds_list()))
        })?;
        let (location, split) = if kind.takes_split() {
            match rest.rsplit_once(':') {
                Some((loc, "train")) => (loc, Some(Split::Train)),
                Some((loc, "test")) => (loc, Some(Split::Test)),
                _ => (rest, None),
            }
        } else {
            (rest, None)
        };
        if location.is_empty() {
            let what = if kind == DatasetKind::Synthetic { "a name (shapes)" } else { "a path" };
            return Err(DataError::spec(spec, format!("{} needs {what} after '{}:'; {EXAMPLES}", kind.as_str(), kind.as_str())));
        }
        if kind == DatasetKind::Synthetic && !SYNTHETIC_NAMES.contains(&location) {
            return Err(DataError::spec(
                spec,
                format!("unknown synthetic dataset '{location}'; available: {}", SYNTHETIC_NAMES.join(", ")),
            ));
        }
        Ok(DatasetSpec { kind, location: location.to_string(), split, resolution })
    }
}

fn kinds_list() -> String {
    DatasetKind::ALL.map(DatasetKind::as_str).join(", ")
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.location)?;
        if let Some(split) = self.split {
            write!(f, ":{}", split.as_str())?;
        }
        if let Some(r) = self.resolution {
            write!(f, "@{r}")?;
        }
        Ok(())
    }
}

impl Serialize for DatasetSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DatasetSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        for s in [
            "cifar10:/data/cifar-10-batches-bin",
            "cifar10:/data/cifar-10-python.tar.gz:test",
            "cifar10:rel/dir:train@32",
            "lsun:/data/church_outdoor_train_lmdb",
            "lsun:/data/church@128",
            "folder:/data/imgs",
            "folder:C:/weird:test",
            "synthetic:shapes",
            "synthetic:shapes:test@64",
        ] {
            assert_eq!(parse(s).to_string(), s);
        }
        let s = parse("cifar10:/d/x.tar.gz:test@32");
        assert_eq!(
            (s.kind, s.location.as_str(), s.split, s.resolution),
            (DatasetKind::Cifar10, "/d/x.tar.gz", Some(Split::Test), Some(32))
        );
        // Folders and LSUN have no split: the suffix stays part of the path.
        assert_eq!(parse("folder:/x:test").location, "/x:test");
        assert_eq!(parse("lsun:/a@b/c@64").location, "/a@b/c");
        assert_eq!(parse("synthetic:shapes").effective_split(), Some(Split::Train));
        assert_eq!(parse("folder:/x").effective_split(), None);
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (s, want) in [
            ("imagenet:/data", "unknown dataset kind 'imagenet'"),
            ("/data/cifar", "expected KIND:LOCATION"),
            ("cifar10:", "needs a path"),
            ("synthetic:circles", "unknown synthetic dataset 'circles'"),
            ("lsun:/x@0", "between 1 and 4096"),
            ("lsun:/x@99999999999999999999999", "too large"),
        ] {
            let e = s.parse::<DatasetSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(e.contains(s), "error should quote the spec: {e}");
        }
    }

    #[test]
    fn serde_is_a_plain_string() {
        let s = parse("cifar10:/d:test");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"cifar10:/d:test\"");
        assert_eq!(serde_json::from_str::<DatasetSpec>(&j).unwrap(), s);
        assert!(serde_json::from_str::<DatasetSpec>("\"nope:/x\"").is_err());
    }
}
