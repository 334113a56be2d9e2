//! Numbers as little-endian byte strings: how the parameter server's RPCs
//! (`proto/ps.proto`) carry keys, rows and dense tensors. A packed `repeated float` is
//! encoded and decoded value by value; a byte string is one copy each way, and with
//! `bytes::Bytes` fields the received buffer is sliced, not copied, and a retried
//! request is cloned by refcount.
//!
//! Decoding checks only the length (a whole number of values); what the values mean
//! (finite, the right count for a table's dim) is checked where they are used.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{field}: {len} bytes is not a whole number of {width}-byte values")]
    Partial {
        field: &'static str,
        len: usize,
        width: usize,
    },
    #[error("{field}: {got} values where {want} were expected")]
    Count {
        field: &'static str,
        got: usize,
        want: usize,
    },
}

/// `values` as 4-byte little-endian floats.
pub fn f32s_to_bytes(values: &[f32]) -> Bytes {
    let mut b = BytesMut::with_capacity(values.len() * 4);
    for v in values {
        b.put_f32_le(*v);
    }
    b.freeze()
}

/// `values` as 8-byte little-endian integers.
pub fn u64s_to_bytes(values: impl ExactSizeIterator<Item = u64>) -> Bytes {
    let mut b = BytesMut::with_capacity(values.len() * 8);
    for v in values {
        b.put_u64_le(v);
    }
    b.freeze()
}

/// How many `width`-byte values `bytes` holds, or why it holds no whole number.
fn count(field: &'static str, bytes: &[u8], width: usize) -> Result<usize, WireError> {
    if bytes.len() % width != 0 {
        return Err(WireError::Partial {
            field,
            len: bytes.len(),
            width,
        });
    }
    Ok(bytes.len() / width)
}

/// The floats of `bytes` (named `field` in the error).
pub fn bytes_to_f32s(field: &'static str, bytes: &[u8]) -> Result<Vec<f32>, WireError> {
    count(field, bytes, 4)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Decodes `bytes` into `out`, which must hold exactly as many floats.
pub fn f32s_into(field: &'static str, bytes: &[u8], out: &mut [f32]) -> Result<(), WireError> {
    let got = count(field, bytes, 4)?;
    if got != out.len() {
        return Err(WireError::Count {
            field,
            got,
            want: out.len(),
        });
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// The integers of `bytes` (named `field` in the error).
pub fn bytes_to_u64s(field: &'static str, bytes: &[u8]) -> Result<Vec<u64>, WireError> {
    count(field, bytes, 8)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// How many floats `bytes` holds.
pub fn f32_count(field: &'static str, bytes: &[u8]) -> Result<usize, WireError> {
    count(field, bytes, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pins_the_byte_order() {
        let f = [1.0f32, -0.5, f32::MAX, 0.0];
        let b = f32s_to_bytes(&f);
        assert_eq!(&b[..4], &[0, 0, 0x80, 0x3f], "1.0f32 little-endian");
        assert_eq!(bytes_to_f32s("v", &b).unwrap(), f);
        let mut out = [0f32; 4];
        f32s_into("v", &b, &mut out).unwrap();
        assert_eq!(out, f);
        let k = [1u64, u64::MAX, 0x0102_0304_0506_0708];
        let b = u64s_to_bytes(k.iter().copied());
        assert_eq!(&b[16..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(bytes_to_u64s("k", &b).unwrap(), k);
        assert_eq!(f32_count("v", &[0; 12]).unwrap(), 3);
    }

    #[test]
    fn a_partial_value_is_an_error_naming_the_field() {
        let e = bytes_to_f32s("grads", &[0; 7]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "grads: 7 bytes is not a whole number of 4-byte values"
        );
        assert!(bytes_to_u64s("keys", &[0; 12]).is_err());
        let e = f32s_into("values", &[0; 8], &mut [0.0; 3]).unwrap_err();
        assert_eq!(e.to_string(), "values: 2 values where 3 were expected");
    }
}
