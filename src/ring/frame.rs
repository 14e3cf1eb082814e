//! The bytes on a ring link: the handshake a connecting neighbour opens
//! with, then frames of one chunk each (a 12-byte header, the chunk's
//! encoded values). Both ends know every frame's tag, chunk and size in
//! advance (`plan.rs`), so anything else is the sender's fault.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::fault::{LinkFault, RingFaultKind};

/// First bytes of every ring connection (the version is in the name).
pub const MAGIC: &[u8; 8] = b"DDPMRNG1";

/// The attempt secret's length.
pub const KEY_BYTES: usize = 32;

const HELLO_BYTES: usize = 8 + 8 + 8 + KEY_BYTES;

/// What a connecting neighbour says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The attempt (RingPlan.epoch).
    pub epoch: u64,
    /// The connecting worker's id.
    pub from: u64,
    /// The attempt's secret (RingPlan.key).
    pub key: [u8; KEY_BYTES],
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.from.to_le_bytes());
        b[24..].copy_from_slice(&self.key);
        b
    }

    /// Reads a hello; `Err` says what was wrong with the bytes.
    pub async fn read(r: &mut (impl AsyncRead + Unpin)) -> Result<Self, LinkFault> {
        let mut b = [0u8; HELLO_BYTES];
        r.read_exact(&mut b).await.map_err(|e| LinkFault::io("ended before its hello", &e))?;
        if &b[..8] != MAGIC {
            return Err(LinkFault::malformed("is not a ddpm ring connection (wrong magic bytes; another program or version?)"));
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Hello { epoch: word(8), from: word(16), key: b[24..].try_into().expect("key bytes") })
    }
}

/// A frame header: tag (phase step), chunk index, payload bytes.
pub const HEADER_BYTES: usize = 12;

pub fn header(tag: u32, chunk: u32, len: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..4].copy_from_slice(&tag.to_le_bytes());
    h[4..8].copy_from_slice(&chunk.to_le_bytes());
    h[8..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// Writes one frame.
pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), tag: u32, chunk: u32, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&header(tag, chunk, payload.len())).await?;
    w.write_all(payload).await
}

/// Reads the header of the next frame and checks it is `(tag, chunk, len)`.
pub async fn read_header(r: &mut (impl AsyncRead + Unpin), tag: u32, chunk: u32, len: usize) -> Result<(), LinkFault> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h).await.map_err(|e| LinkFault::io("the connection ended or failed", &e))?;
    let got = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let (t, c, l) = (got(0), got(4), got(8));
    if (t, c, l as usize) != (tag, chunk, len) {
        return Err(LinkFault::malformed(format!(
            "sent frame (step {t}, chunk {c}, {l} bytes) where (step {tag}, chunk {chunk}, {len} bytes) was due"
        )));
    }
    Ok(())
}

/// Reads exactly `len` payload bytes into `buf`, resized to `len` without
/// zeroing when its length is already right: the ring's frame buffers are
/// reused step after step, so a step does not fault in fresh pages.
pub async fn read_payload(r: &mut (impl AsyncRead + Unpin), len: usize, buf: &mut Vec<u8>) -> Result<(), LinkFault> {
    if buf.len() != len {
        buf.resize(len, 0);
    }
    let mut got = 0;
    while got < len {
        let n = r.read(&mut buf[got..]).await.map_err(|e| LinkFault::io("the connection failed", &e))?;
        if n == 0 {
            return Err(ended_inside(got, len));
        }
        got += n;
    }
    Ok(())
}

/// The stream ended `got` bytes into a frame of `len`.
pub(super) fn ended_inside(got: usize, len: usize) -> LinkFault {
    LinkFault::new(RingFaultKind::Closed, format!("the connection ended {got} bytes into a {len}-byte frame"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_and_frames_round_trip_and_anything_else_is_named() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = Hello { epoch: 7, from: 3, key: [9; KEY_BYTES] };
        a.write_all(&hello.encode()).await.unwrap();
        assert_eq!(Hello::read(&mut b).await.unwrap(), hello);
        write_frame(&mut a, 1, 2, &[1, 2, 3, 4]).await.unwrap();
        read_header(&mut b, 1, 2, 4).await.unwrap();
        let mut buf = Vec::new();
        read_payload(&mut b, 4, &mut buf).await.unwrap();
        assert_eq!(&buf[..], &[1, 2, 3, 4]);
        write_frame(&mut a, 1, 3, &[0; 8]).await.unwrap();
        let e = read_header(&mut b, 1, 2, 8).await.unwrap_err();
        assert_eq!(e.kind, RingFaultKind::Malformed);
        assert!(e.detail.contains("chunk 3") && e.detail.contains("chunk 2"), "{e}");
        a.write_all(b"GET / HTTP/1.1\r\n\r\n0123456789012345678901234567890123456789").await.unwrap();
        let (mut c, mut d) = tokio::io::duplex(1 << 16);
        c.write_all(b"GET / HTTP/1.1\r\n\r\n0123456789012345678901234567890123456789").await.unwrap();
        let e = Hello::read(&mut d).await.unwrap_err();
        assert!(e.kind == RingFaultKind::Malformed && e.detail.contains("magic"), "{e}");
        drop(c);
        let (e, mut f) = tokio::io::duplex(16);
        drop(e);
        let e = read_payload(&mut f, 4, &mut buf).await.unwrap_err();
        assert!(e.kind == RingFaultKind::Closed && e.detail.contains("ended"), "{e}");
    }
}
