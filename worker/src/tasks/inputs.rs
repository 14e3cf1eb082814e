//! The dataset images a task brings with it (evaluation on the dataset,
//! the two ends of an interpolation), checked and decoded with the
//! decoder the assignment names: a job's dataset may be another than the
//! run's.

use ddpm::data::{DataError, Decoder};
use ddpm::proto;

/// Why a task's dataset images cannot be used; the task fails with it.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the task's dataset decoder is unreadable: {0}")]
    Decoder(serde_json::Error),
    #[error("the task has {got} dataset images, its assignment says {want}")]
    Count { got: usize, want: u64 },
    #[error("dataset images arrived out of order: image {k} is index {got}, expected {want}")]
    Order { k: usize, got: u64, want: u64 },
    #[error("dataset image {position}: {error}")]
    Decode { position: u64, error: DataError },
}

/// The decoder of an assignment, from its JSON.
pub fn decoder(json: &str) -> Result<Decoder, InputError> {
    serde_json::from_str(json).map_err(InputError::Decoder)
}

/// One dataset image, uint8 `[3, R, R]`.
pub fn decode_one(decoder: &Decoder, s: &proto::Sample) -> Result<Vec<u8>, InputError> {
    decoder.decode(&s.data).map_err(|error| InputError::Decode { position: s.position, error })
}

/// The dataset images of an evaluation task, uint8 `[n, 3, R, R]` in index
/// order: exactly the indices `first..first + count`, in order.
pub fn decode_dataset_images(d: &proto::DatasetImages, encoded: &[proto::Sample]) -> Result<Vec<u8>, InputError> {
    let decoder = decoder(&d.decoder_json)?;
    if encoded.len() as u64 != d.count {
        return Err(InputError::Count { got: encoded.len(), want: d.count });
    }
    let mut pixels = Vec::with_capacity(encoded.len() * decoder.sample_len());
    for (k, s) in encoded.iter().enumerate() {
        let want = d.first + k as u64;
        if s.position != want {
            return Err(InputError::Order { k, got: s.position, want });
        }
        pixels.extend(decode_one(&decoder, s)?);
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw `[3, 1, 1]` samples: 3 bytes each.
    const RAW_1PX: &str = r#"{"format":"raw_chw","resolution":1}"#;

    fn images(first: u64, count: u64) -> proto::DatasetImages {
        proto::DatasetImages { first, count, decoder_json: RAW_1PX.into() }
    }

    fn sample(position: u64, data: &[u8]) -> proto::Sample {
        proto::Sample { position, data: data.to_vec().into() }
    }

    #[test]
    fn images_decode_in_index_order() {
        let got = decode_dataset_images(&images(10, 2), &[sample(10, &[1, 2, 3]), sample(11, &[4, 5, 6])]).unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        assert!(decode_dataset_images(&images(0, 0), &[]).unwrap().is_empty());
    }

    #[test]
    fn each_problem_is_named() {
        let bad = proto::DatasetImages { decoder_json: "{".into(), ..images(0, 1) };
        assert!(matches!(decode_dataset_images(&bad, &[sample(0, &[0; 3])]), Err(InputError::Decoder(_))));

        let e = decode_dataset_images(&images(0, 2), &[sample(0, &[0; 3])]).unwrap_err();
        assert!(matches!(e, InputError::Count { got: 1, want: 2 }), "{e}");
        assert_eq!(e.to_string(), "the task has 1 dataset images, its assignment says 2");

        let e = decode_dataset_images(&images(4, 2), &[sample(5, &[0; 3]), sample(4, &[0; 3])]).unwrap_err();
        assert!(matches!(e, InputError::Order { k: 0, got: 5, want: 4 }), "{e}");

        let e = decode_dataset_images(&images(4, 1), &[sample(4, &[0; 2])]).unwrap_err();
        assert!(matches!(e, InputError::Decode { position: 4, .. }), "{e}");
        assert!(e.to_string().starts_with("dataset image 4: "), "{e}");
    }
}
