//! How one ring link carries its frames, agreed when it opens: after the
//! hello the sender offers its shared-memory outbox (or says it has none),
//! and the receiver answers whether it mapped it. Either way the frames'
//! order and headers are the same (`plan.rs`, `frame.rs`); only where the
//! payload lies differs. Each link decides alone, so a ring can mix them
//! (hosts with several members each: shared memory within a host, TCP
//! between hosts).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::fault::LinkFault;
use super::shm::{Offer, View};

const NO_OFFER: u8 = 0;
const OFFER: u8 = 1;
const DECLINED: u8 = 0;
const MAPPED: u8 = 1;

/// The sender's side: offers `outbox` (or none) and returns whether the
/// receiver mapped it (then the frames' payloads go through it).
pub async fn offer(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    outbox: Option<&Offer>,
    timeout: Duration,
) -> Result<bool, LinkFault> {
    let mut msg = vec![if outbox.is_some() { OFFER } else { NO_OFFER }];
    if let Some(o) = outbox {
        msg.extend_from_slice(&o.encode());
    }
    let exchange = async {
        stream.write_all(&msg).await.map_err(|e| LinkFault::io("could not be written to", &e))?;
        stream.read_u8().await.map_err(|e| LinkFault::io("closed the connection before answering the link offer", &e))
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkFault::stalled(format!("did not answer the link offer within {:.1} s", timeout.as_secs_f64())))??;
    match reply {
        MAPPED if outbox.is_some() => Ok(true),
        DECLINED => Ok(false),
        b => Err(LinkFault::malformed(format!("answered the link offer with {b}, which is not an answer to it"))),
    }
}

/// The receiver's side: reads the sender's offer and maps the outbox
/// when this member takes shared memory from `dir` (`None`: never) and
/// it has at least `slots` slots of `slot_bytes`. `cached` (the mapping
/// of an earlier attempt) is used again when it is the outbox offered.
pub async fn answer(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    dir: Option<&Path>,
    (slots, slot_bytes): (usize, usize),
    cached: Option<View>,
    timeout: Duration,
) -> Result<Option<View>, LinkFault> {
    let read = async {
        match stream.read_u8().await.map_err(|e| LinkFault::io("closed the connection before its link offer", &e))? {
            NO_OFFER => Ok(None),
            OFFER => Offer::read(stream).await.map(Some),
            b => Err(LinkFault::malformed(format!("sent {b} where a link offer was due"))),
        }
    };
    let offered = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| LinkFault::stalled(format!("sent no link offer within {:.1} s", timeout.as_secs_f64())))??;
    let view = match (offered, dir) {
        (Some(o), Some(dir)) if o.slots as usize >= slots && o.slot_bytes as usize >= slot_bytes => {
            match cached.filter(|v| v.is(&o)).map(Ok).unwrap_or_else(|| View::open(&o, dir)) {
                Ok(v) => Some(v),
                Err(why) => {
                    tracing::debug!("ring link on TCP: the predecessor's shared memory: {why}");
                    None
                }
            }
        }
        (Some(o), Some(_)) => {
            tracing::warn!(offered = o.slots, slots, "ring link on TCP: the predecessor's outbox is too small for this ring");
            None
        }
        _ => None,
    };
    let reply = if view.is_some() { MAPPED } else { DECLINED };
    let send = async {
        stream.write_all(&[reply]).await?;
        stream.flush().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| LinkFault::stalled("did not take the link answer (stalled?)"))?
        .map_err(|e| LinkFault::io("closed the connection before the link answer", &e))?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::super::fault::RingFaultKind;
    use super::super::shm::Outbox;
    use super::*;

    #[tokio::test]
    async fn a_link_takes_shared_memory_only_when_both_sides_can() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::create(dir.path(), 4, 64).unwrap();
        let t = Duration::from_secs(5);
        let run = |offered: Option<Offer>, dir: Option<std::path::PathBuf>, need: (usize, usize)| async move {
            let (mut a, mut b) = tokio::io::duplex(1 << 12);
            let (sent, got) = tokio::join!(offer(&mut a, offered.as_ref(), t), answer(&mut b, dir.as_deref(), need, None, t));
            (sent.unwrap(), got.unwrap().is_some())
        };
        let here = Some(dir.path().to_path_buf());
        assert_eq!(run(Some(outbox.offer()), here.clone(), (4, 64)).await, (true, true));
        assert_eq!(run(None, here.clone(), (4, 64)).await, (false, false));
        // Shared memory off on the receiver, another directory, an outbox too small.
        assert_eq!(run(Some(outbox.offer()), None, (4, 64)).await, (false, false));
        assert_eq!(run(Some(outbox.offer()), Some(std::env::temp_dir()), (4, 64)).await, (false, false));
        assert_eq!(run(Some(outbox.offer()), here, (5, 64)).await, (false, false));
        // A receiver that says nonsense, one that says nothing.
        let (mut a, mut b) = tokio::io::duplex(1 << 12);
        b.write_all(&[7]).await.unwrap();
        let e = offer(&mut a, None, t).await.unwrap_err();
        assert!(e.kind == RingFaultKind::Malformed && e.detail.contains("not an answer"), "{e}");
        let (mut a, _b) = tokio::io::duplex(1 << 12);
        let e = offer(&mut a, None, Duration::from_millis(100)).await.unwrap_err();
        assert!(e.kind == RingFaultKind::Stalled && e.detail.contains("did not answer"), "{e}");
    }
}
