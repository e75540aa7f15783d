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
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
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
