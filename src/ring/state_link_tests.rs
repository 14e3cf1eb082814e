use super::*;
use crate::ring::RingFaultKind;
use crate::train::param_digest;

/// A state of `n` values per tensor at `step`, its header and its tensors.
fn state(n: usize, step: u64) -> (proto::StateHeader, Vec<Vec<f32>>) {
    let tensors: Vec<Vec<f32>> = (0..4).map(|t| (0..n).map(|i| (t * n + i) as f32 * 0.25 - 3.0).collect()).collect();
    let header = proto::StateHeader {
        step,
        adam_step: step - 1,
        tensors: TRAINING_WITH_EMA.iter().map(|s| s.to_string()).collect(),
        elements: n as u64,
        layout_hash: 0xabc,
        param_checksum: param_digest::of_values(&tensors[0]),
        worker_id: 2,
    };
    (header, tensors)
}

fn expected(n: usize, step: u64, agreed: Option<u64>) -> Expected {
    Expected { step, elements: n as u64, layout_hash: 0xabc, param_checksum: agreed }
}

/// `header` and `tensors` sent through a pipe and received against
/// `want`; the sender is dropped once the receiver is done (one that
/// refused early stops reading).
async fn round_trip(header: &proto::StateHeader, tensors: &[Vec<f32>], want: &Expected) -> Result<Received, LinkFault> {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let (header, tensors) = (header.clone(), tensors.to_vec());
    let sender = tokio::spawn(async move {
        let views: Vec<&[f32]> = tensors.iter().map(|t| &t[..]).collect();
        send(&mut a, &header, &views).await
    });
    let got = receive(&mut b, want).await;
    if got.is_ok() {
        sender.await.unwrap().unwrap();
    } else {
        sender.abort();
    }
    got
}

#[tokio::test]
async fn a_state_arrives_whole_across_several_data_frames() {
    // Over one STATE_CHUNK_BYTES frame per tensor, so tensors straddle frames.
    let n = STATE_CHUNK_BYTES / 4 + 1000;
    let (header, tensors) = state(n, 9);
    let got = round_trip(&header, &tensors, &expected(n, 9, Some(header.param_checksum))).await.unwrap();
    assert_eq!(got.header, header);
    let values: Vec<f32> = got.bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(values, tensors.concat());
}

#[tokio::test]
async fn parameters_that_are_not_the_agreed_ones_are_refused() {
    let (header, mut tensors) = state(100, 9);
    // The sender's claim matches what it sends, but not what the replicas agreed on.
    let agreed = header.param_checksum;
    tensors[0][17] += 1.0;
    let mut lying = header.clone();
    lying.param_checksum = param_digest::of_values(&tensors[0]);
    let e = round_trip(&lying, &tensors, &expected(100, 9, Some(agreed))).await.unwrap_err();
    assert_eq!(e.kind, RingFaultKind::Malformed);
    assert!(e.detail.contains("the replicas agreed on"), "{e}");
    // A claim that does not match its own bytes.
    let e = round_trip(&header, &tensors, &expected(100, 9, None)).await.unwrap_err();
    assert!(e.detail.contains("its header claims"), "{e}");
}

#[tokio::test]
async fn another_step_model_or_tensor_list_is_refused_before_the_data() {
    let (header, tensors) = state(100, 9);
    let e = round_trip(&header, &tensors, &expected(100, 10, None)).await.unwrap_err();
    assert!(e.detail.contains("promised step 10"), "{e}");
    let e = round_trip(&header, &tensors, &expected(101, 9, None)).await.unwrap_err();
    assert!(e.detail.contains("the run's model has 101"), "{e}");
    let mut three = header.clone();
    three.tensors.pop();
    let e = round_trip(&three, &tensors, &expected(100, 9, None)).await.unwrap_err();
    assert!(e.detail.contains("sent tensors"), "{e}");
}

#[tokio::test]
async fn a_sender_that_stops_midway_or_sends_no_header_is_named() {
    let (header, tensors) = state(100, 9);
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    frame::write_frame(&mut a, HEADER_TAG, 0, &header.encode_to_vec()).await.unwrap();
    frame::write_frame(&mut a, DATA_TAG, 0, &[0u8; 40]).await.unwrap();
    drop(a);
    let e = receive(&mut b, &expected(100, 9, None)).await.unwrap_err();
    assert_eq!(e.kind, RingFaultKind::Malformed, "{e}");
    // The right frame, cut short.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    frame::write_frame(&mut a, HEADER_TAG, 0, &header.encode_to_vec()).await.unwrap();
    a.write_all(&frame::header(DATA_TAG, 0, 1600)).await.unwrap();
    a.write_all(&[0u8; 40]).await.unwrap();
    drop(a);
    let e = receive(&mut b, &expected(100, 9, None)).await.unwrap_err();
    assert!(e.kind == RingFaultKind::Closed && e.detail.contains("inside the state's data"), "{e}");
    drop(tensors);
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    a.write_all(&[0xff; 64]).await.unwrap();
    let e = receive(&mut b, &expected(100, 9, None)).await.unwrap_err();
    assert!(e.detail.contains("not a state's header"), "{e}");
}
