//! Shared-memory ring links: when a member and its successor share a
//! `/dev/shm` (processes of one host, or of one pod), the gradient bytes do
//! not go through the kernel's TCP stack. The sender writes each frame
//! into a slot of its *outbox*, a file in shared memory that the successor
//! maps read-only, and the TCP connection carries only the 12-byte frame
//! headers one way and "slots taken" counts the other. The receiver reads
//! the slot where it is: a reduce-scatter frame is summed with its own
//! part straight into its own outbox, an all-gather frame copied into its
//! gradient (and its outbox, to pass on). That is about half the memory
//! traffic of the TCP ring, which copies every byte into and out of the
//! kernel (`allreduce_links.rs` has the algorithm).
//!
//! Trust: an outbox is a 0600 file of this user, so only processes of the
//! same user (which could already read this process's memory) can map it;
//! a successor opens only files named like an outbox in its own shared
//! memory directory, not through a symlink, and only after the offer came
//! over the attempt's authenticated connection. Its random token, in the
//! file and in the offer, proves the file is the one offered.
//!
//! Lifetime: each worker keeps one outbox for its life (its peer listener
//! holds it), with an exclusive `flock` on it, and removes it when it
//! ends. A worker killed with -9 cannot, but its lock goes with it: the
//! next outbox created on that host removes every outbox nobody locks.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use super::fault::LinkFault;

/// Where outboxes live: the host's shared memory.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// Every outbox's file name starts with this.
const PREFIX: &str = "ddpm-ring-";
const MAGIC: &[u8; 8] = b"DDPMSHM1";
const TOKEN_BYTES: usize = 16;
/// The header page: magic, token, slots, slot bytes.
const HEADER_BYTES: usize = 4096;
/// Slots start on cache lines (and f32 boundaries).
const SLOT_ALIGN: usize = 64;

fn stride(slot_bytes: usize) -> usize {
    slot_bytes.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// What a sender tells its successor about its outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub path: String,
    pub token: [u8; TOKEN_BYTES],
    pub slots: u32,
    pub slot_bytes: u64,
}

impl Offer {
    /// The most bytes an offer takes on the wire (a path up to 255 bytes).
    pub const MAX_PATH: usize = 255;

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + TOKEN_BYTES + 4 + 8 + 1 + self.path.len());
        b.extend_from_slice(&self.token);
        b.extend_from_slice(&self.slots.to_le_bytes());
        b.extend_from_slice(&self.slot_bytes.to_le_bytes());
        b.push(self.path.len() as u8);
        b.extend_from_slice(self.path.as_bytes());
        b
    }

    /// Reads an offer's fields (after its flag byte).
    pub async fn read(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<Self, LinkFault> {
        use tokio::io::AsyncReadExt;
        let ended = |e: io::Error| LinkFault::io("ended the connection inside its shared-memory offer", &e);
        let mut fixed = [0u8; TOKEN_BYTES + 4 + 8 + 1];
        r.read_exact(&mut fixed).await.map_err(ended)?;
        let token: [u8; TOKEN_BYTES] = fixed[..TOKEN_BYTES].try_into().expect("token bytes");
        let slots = u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes"));
        let slot_bytes = u64::from_le_bytes(fixed[20..28].try_into().expect("8 bytes"));
        let mut path = vec![0u8; fixed[28] as usize];
        r.read_exact(&mut path).await.map_err(ended)?;
        let path = String::from_utf8(path).map_err(|_| LinkFault::malformed("offered a shared-memory path that is not UTF-8"))?;
        Ok(Self { path, token, slots, slot_bytes })
    }
}

/// This worker's outbox: `slots` frames of up to `slot_bytes` each, in a
/// locked file in shared memory that the successor maps.
pub struct Outbox {
    path: PathBuf,
    /// Holds the lock that tells a sweep the outbox is alive.
    _file: File,
    map: MmapMut,
    token: [u8; TOKEN_BYTES],
    slots: usize,
    slot_bytes: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).field("slots", &self.slots).field("slot_bytes", &self.slot_bytes).finish()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Outbox {
    /// A new outbox in `dir`, its memory reserved now (so that a full
    /// shared memory is an error here, not a SIGBUS in the middle of a
    /// step), after removing the outboxes of workers that are gone.
    pub fn create(dir: &Path, slots: usize, slot_bytes: usize) -> io::Result<Self> {
        sweep(dir);
        // Another worker's sweep may take a new file's lock before its
        // creator does (it then removes it): a fresh name each time.
        let mut tries = 0;
        loop {
            match Self::create_once(dir, slots, slot_bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn create_once(dir: &Path, slots: usize, slot_bytes: usize) -> io::Result<Self> {
        let mut token = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut token).map_err(|e| io::Error::other(format!("no random bytes for the outbox token: {e}")))?;
        let name: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{PREFIX}{}-{name}", std::process::id()));
        if path.as_os_str().len() > Offer::MAX_PATH {
            return Err(io::Error::other(format!("the outbox path {} is longer than {} bytes", path.display(), Offer::MAX_PATH)));
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?
        };
        // From here on the file is ours to remove, whatever fails.
        let cleanup = |e: io::Error| {
            let _ = std::fs::remove_file(&path);
            e
        };
        // A sweep that opened the new file first owns the lock: start again.
        file.try_lock().map_err(|e| {
            cleanup(match e {
                std::fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
                std::fs::TryLockError::Error(e) => e,
            })
        })?;
        // A sweep may have removed the file and let go of its lock before
        // ours: then the name is no longer this file, and nobody could map it.
        {
            use std::os::unix::fs::MetadataExt;
            let ours = file.metadata().map_err(cleanup)?.ino();
            if std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(ours) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let len = HEADER_BYTES + slots * stride(slot_bytes);
        reserve(&file, len).map_err(cleanup)?;
        // SAFETY: the file is ours (0600, locked, just created); nobody
        // else writes it, and it never shrinks while mapped.
        let mut map = unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(cleanup)?;
        map[..8].copy_from_slice(MAGIC);
        map[8..24].copy_from_slice(&token);
        map[24..28].copy_from_slice(&(slots as u32).to_le_bytes());
        map[28..36].copy_from_slice(&(slot_bytes as u64).to_le_bytes());
        Ok(Self { path, _file: file, map, token, slots, slot_bytes })
    }

    /// Whether this outbox can carry `slots` frames of `slot_bytes`.
    pub fn fits(&self, slots: usize, slot_bytes: usize) -> bool {
        self.slots >= slots && self.slot_bytes >= slot_bytes
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn offer(&self) -> Offer {
        Offer { path: self.path.display().to_string(), token: self.token, slots: self.slots as u32, slot_bytes: self.slot_bytes as u64 }
    }

    /// Slot `i`'s first `len` bytes, to be written.
    pub fn slot_mut(&mut self, i: usize, len: usize) -> &mut [u8] {
        assert!(i < self.slots && len <= self.slot_bytes, "slot {i} of {len} bytes in {self:?}");
        let at = HEADER_BYTES + i * stride(self.slot_bytes);
        &mut self.map[at..at + len]
    }
}

/// Reserves `len` bytes of shared memory for `file` (tmpfs allocates on
/// write otherwise, and a full one kills the writer with SIGBUS).
fn reserve(file: &File, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    file.set_len(len as u64)?;
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Removes the outboxes in `dir` that no live worker holds locked.
pub fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = e.path();
        if let Ok(f) = File::open(&path) {
            if f.try_lock().is_ok() {
                tracing::info!(path = %path.display(), "removing the shared-memory outbox of a worker that is gone");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The predecessor's outbox, mapped read-only.
pub struct View {
    offer: Offer,
    map: Mmap,
}

/// Why a predecessor's outbox cannot be mapped here (the link then stays
/// on TCP, which is no fault of anybody's).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{path} is not an outbox in {}", dir.display())]
    NotAnOutbox { path: String, dir: PathBuf },
    /// Opening or mapping it failed: another host's, or another shared memory.
    #[error("{path} cannot be opened or mapped here ({source}): another host or shared memory")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a {len}-byte outbox of this user")]
    NotThisUsers { path: String, len: usize },
    #[error("{path} is not the outbox offered (its token differs)")]
    TokenDiffers { path: String },
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("offer", &self.offer).finish()
    }
}

impl View {
    /// Maps the outbox `offer` names, if it is one in `dir` and is the one
    /// offered; `Err` says why not (the link then stays on TCP).
    pub fn open(offer: &Offer, dir: &Path) -> Result<Self, ViewError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = Path::new(&offer.path);
        let named = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(PREFIX));
        if !named || path.parent() != Some(dir) {
            return Err(ViewError::NotAnOutbox { path: offer.path.clone(), dir: dir.to_path_buf() });
        }
        let io = |source| ViewError::Io { path: offer.path.clone(), source };
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let len = HEADER_BYTES + offer.slots as usize * stride(offer.slot_bytes as usize);
        if !meta.is_file() || meta.uid() != uid || meta.len() < len as u64 {
            return Err(ViewError::NotThisUsers { path: offer.path.clone(), len });
        }
        // SAFETY: a read-only mapping of a file of this user that its
        // owner never shrinks; its contents change only in slots the
        // protocol has handed to the writer, which this side does not read.
        let map = unsafe { MmapOptions::new().len(len).populate().map(&file) }.map_err(io)?;
        if &map[..8] != MAGIC || map[8..24] != offer.token {
            return Err(ViewError::TokenDiffers { path: offer.path.clone() });
        }
        Ok(Self { offer: offer.clone(), map })
    }

    /// Whether this is the mapping of `offer`.
    pub fn is(&self, offer: &Offer) -> bool {
        &self.offer == offer
    }

    pub fn slots(&self) -> usize {
        self.offer.slots as usize
    }

    pub fn slot_bytes(&self) -> usize {
        self.offer.slot_bytes as usize
    }

    /// Slot `i`'s first `len` bytes.
    pub fn slot(&self, i: usize, len: usize) -> &[u8] {
        assert!(i < self.slots() && len <= self.slot_bytes(), "slot {i} of {len} bytes in {self:?}");
        let at = HEADER_BYTES + i * stride(self.slot_bytes());
        &self.map[at..at + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_is_seen_through_its_offer_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::create(dir.path(), 3, 10).unwrap();
        o.slot_mut(2, 10).copy_from_slice(b"0123456789");
        let offer = o.offer();
        let v = View::open(&offer, dir.path()).unwrap();
        assert_eq!(v.slot(2, 10), b"0123456789");
        assert!(v.is(&offer) && v.slots() == 3 && v.slot_bytes() == 10);
        // Another token, another directory, a longer outbox than the file, a symlink.
        let wrong = Offer { token: [0; TOKEN_BYTES], ..offer.clone() };
        assert!(matches!(View::open(&wrong, dir.path()), Err(ViewError::TokenDiffers { .. })));
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(View::open(&offer, other.path()), Err(ViewError::NotAnOutbox { .. })));
        let big = Offer { slots: 1000, ..offer.clone() };
        assert!(matches!(View::open(&big, dir.path()), Err(ViewError::NotThisUsers { .. })));
        let link = dir.path().join(format!("{PREFIX}link"));
        std::os::unix::fs::symlink(&offer.path, &link).unwrap();
        let via = Offer { path: link.display().to_string(), ..offer.clone() };
        assert!(matches!(View::open(&via, dir.path()), Err(ViewError::Io { .. })));
        let path = offer.path.clone();
        drop(o);
        assert!(!Path::new(&path).exists(), "a dropped outbox is removed");
    }

    /// More than the shared memory holds is refused when the outbox is
    /// made (not a SIGBUS at the first write far into it), and leaves no file.
    #[test]
    fn an_outbox_larger_than_the_memory_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Outbox::create(dir.path(), 1 << 20, 1 << 30).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(Outbox::create(&dir.path().join("missing"), 1, 8).is_err());
    }

    #[test]
    fn a_sweep_removes_only_the_outboxes_nobody_holds() {
        let dir = tempfile::tempdir().unwrap();
        let live = Outbox::create(dir.path(), 1, 8).unwrap();
        // What a worker killed with -9 leaves: the file, no lock.
        let dead = dir.path().join(format!("{PREFIX}1-dead"));
        std::fs::write(&dead, b"x").unwrap();
        let unrelated = dir.path().join("other-file");
        std::fs::write(&unrelated, b"x").unwrap();
        sweep(dir.path());
        assert!(!dead.exists());
        assert!(Path::new(&live.offer().path).exists() && unrelated.exists());
    }

    #[tokio::test]
    async fn offers_round_trip() {
        let o = Offer { path: "/dev/shm/ddpm-ring-1-ab".into(), token: [7; TOKEN_BYTES], slots: 9, slot_bytes: 1 << 22 };
        let bytes = o.encode();
        assert_eq!(Offer::read(&mut &bytes[..]).await.unwrap(), o);
        let e = Offer::read(&mut &bytes[..10]).await.unwrap_err();
        assert!(e.kind == super::super::fault::RingFaultKind::Closed && e.detail.contains("ended"), "{e}");
    }
}
