//! The `.npy` format (numpy's `format.py`, versions 1.0 to 3.0): a magic
//! string, a little-endian header length, a Python-literal header dict
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }` and
//! the raw data. Read: float64, float32 and uint8, either byte order, C or
//! Fortran order (returned in C order). Written: version 1.0, C order,
//! little-endian, header padded to 64 bytes as numpy does.

use std::io::Write;

/// The element types the evaluation files use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    U8,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::U8 => 1,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::F64 => "<f8",
            Dtype::F32 => "<f4",
            Dtype::U8 => "|u1",
        }
    }
}

/// An array's values in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F64(Vec<f64>),
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// One array of an `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// The values as float64 (uint8 and float32 widen exactly).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F64(v) => v.clone(),
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The dtype as numpy would print it.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            NpyData::F64(_) => "float64",
            NpyData::F32(_) => "float32",
            NpyData::U8(_) => "uint8",
        }
    }
}

/// Parses a whole `.npy` file; the error is a sentence about what is wrong.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v}.{} is not supported (1.0-3.0 are)", bytes[7])),
    };
    let header = bytes.get(start..start + header_len).ok_or("the .npy header is truncated")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let (dtype, big_endian) = parse_descr(&dict_value(header, "descr")?)?;
    let fortran = match dict_value(header, "fortran_order")?.as_str() {
        "True" => true,
        "False" => false,
        other => return Err(format!("fortran_order is {other:?}, not True or False")),
    };
    let shape = parse_shape(&dict_value(header, "shape")?)?;
    let count = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or("the shape is too large")?;
    let data = &bytes[start + header_len..];
    let need = count.checked_mul(dtype.size()).ok_or("the shape is too large")?;
    if data.len() != need {
        return Err(format!(
            "shape {shape:?} of {} needs {need} bytes of data, the file has {} (truncated or altered)",
            dtype.descr(),
            data.len()
        ));
    }
    let mut values = match dtype {
        Dtype::F64 => NpyData::F64(data.chunks_exact(8).map(|c| f64_from(c, big_endian)).collect()),
        Dtype::F32 => NpyData::F32(data.chunks_exact(4).map(|c| f32_from(c, big_endian)).collect()),
        Dtype::U8 => NpyData::U8(data.to_vec()),
    };
    if fortran && shape.len() > 1 {
        values = match values {
            NpyData::F64(v) => NpyData::F64(fortran_to_c(&v, &shape)),
            NpyData::F32(v) => NpyData::F32(fortran_to_c(&v, &shape)),
            NpyData::U8(v) => NpyData::U8(fortran_to_c(&v, &shape)),
        };
    }
    Ok(NpyArray { shape, data: values })
}

fn f64_from(c: &[u8], big: bool) -> f64 {
    let b: [u8; 8] = c.try_into().expect("8 bytes");
    if big {
        f64::from_be_bytes(b)
    } else {
        f64::from_le_bytes(b)
    }
}

fn f32_from(c: &[u8], big: bool) -> f32 {
    let b: [u8; 4] = c.try_into().expect("4 bytes");
    if big {
        f32::from_be_bytes(b)
    } else {
        f32::from_le_bytes(b)
    }
}

/// The text of `'key': VALUE` in a header dict, VALUE ending at the next
/// top-level comma or closing brace.
fn dict_value(header: &str, key: &str) -> Result<String, String> {
    let pat = format!("'{key}':");
    let at = header.find(&pat).ok_or_else(|| format!("the .npy header has no '{key}' ({header:?})"))?;
    let rest = header[at + pat.len()..].trim_start();
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim().to_string()),
            _ => {}
        }
    }
    Err(format!("the .npy header's '{key}' is not terminated ({header:?})"))
}

fn parse_descr(v: &str) -> Result<(Dtype, bool), String> {
    let s = v.trim_matches(|c| c == '\'' || c == '"');
    if s.len() != 3 || s.len() + 2 != v.len() {
        return Err(format!("dtype {v} is not supported: use float64, float32 or uint8 arrays"));
    }
    let big = match &s[..1] {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(format!("dtype {v}: unknown byte order")),
    };
    let dtype = match &s[1..] {
        "f8" => Dtype::F64,
        "f4" => Dtype::F32,
        "u1" => Dtype::U8,
        _ => return Err(format!("dtype {v} is not supported: use float64, float32 or uint8 arrays")),
    };
    Ok((dtype, big))
}

fn parse_shape(v: &str) -> Result<Vec<usize>, String> {
    let inner = v.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("shape {v} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("shape {v} has a bad dimension {s:?}")))
        .collect()
}

/// Fortran-ordered values of `shape` in C order.
fn fortran_to_c<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
    // Fortran strides: the first axis varies fastest.
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..v.len() {
        out.push(v[idx.iter().zip(&fstride).map(|(i, s)| i * s).sum::<usize>()]);
        // Next C-order index: the last axis varies fastest.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// The version-1.0 header of a C-order little-endian array, padded with
/// spaces so that the data starts at a multiple of 64 bytes.
pub fn npy_header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}", dtype.descr());
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes a whole float64 array (header and data).
pub fn write_f64(w: &mut impl Write, shape: &[usize], values: &[f64]) -> std::io::Result<()> {
    w.write_all(&npy_header(Dtype::F64, shape))?;
    let mut buf = Vec::with_capacity(values.len() * 8);
    values.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_and_parses_back() {
        for shape in [vec![7usize], vec![3, 4], vec![2, 3, 4, 3], vec![]] {
            let h = npy_header(Dtype::F64, &shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            let n: usize = shape.iter().product();
            let mut file = h.clone();
            file.extend(std::iter::repeat_n(0u8, n * 8));
            let a = parse_npy(&file).unwrap();
            assert_eq!(a.shape, shape);
        }
    }

    #[test]
    fn fortran_order_is_transposed() {
        // np.asfortranarray([[1, 2, 3], [4, 5, 6]]) stores 1 4 2 5 3 6.
        assert_eq!(fortran_to_c(&[1, 4, 2, 5, 3, 6], &[2, 3]), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn bad_headers_are_refused_with_a_reason() {
        assert!(parse_npy(b"PK\x03\x04").unwrap_err().contains("magic"));
        let mut f = npy_header(Dtype::F64, &[4]);
        f.extend([0u8; 8]);
        assert!(parse_npy(&f).unwrap_err().contains("needs 32 bytes"));
        let mut h = npy_header(Dtype::F64, &[2]);
        let at = h.windows(3).position(|w| w == b"<f8").unwrap();
        h[at..at + 3].copy_from_slice(b"<c8");
        h.extend([0u8; 16]);
        assert!(parse_npy(&h).unwrap_err().contains("not supported"));
    }
}
