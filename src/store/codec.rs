//! Encoding of stored values, and the error for a record that does not decode.

use super::*;

pub(super) fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

pub(super) fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt {
        key: show_key(key),
        message: message.to_string(),
    }
}

pub(super) fn encode_json<T: Serialize>(value: &T, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    // Sized for a typical span up front: growing from serde_json's default by doubling cost
    // about a tenth of a write in reallocations.
    let mut out = Vec::with_capacity(2048);
    serde_json::to_writer(&mut out, value)
        .map(|()| out)
        .map_err(|e| StoreError::Corrupt {
            key: show_key(key),
            message: format!("cannot encode: {e}"),
        })
}

pub(super) fn decode_json<T: for<'de> Deserialize<'de>>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: show_key(key),
        message: e.to_string(),
    })
}

/// Decodes a compact binary record (see [`Enc`]); `None` from `read` means it is truncated or
/// malformed.
pub(super) fn decode_bin<'a, T>(
    key: &[u8],
    value: &'a [u8],
    read: impl FnOnce(&mut Dec<'a>) -> Option<T>,
) -> Result<T, StoreError> {
    let mut dec = Dec::new(value);
    match read(&mut dec) {
        Some(v) if dec.rest().is_empty() => Ok(v),
        Some(_) => Err(corrupt(key, "record has trailing bytes")),
        None => Err(corrupt(key, "record is truncated or malformed")),
    }
}

pub(super) use crate::varint::{Dec, Enc};
