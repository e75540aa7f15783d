//! STUB: `assemble` turns a `CallRecord` into a `Span`. Implementation in progress.

use super::Span;
use crate::tap::CallRecord;

/// Knobs for assembly.
#[derive(Debug, Clone, Default)]
pub struct AssembleOptions {}

/// Builds the span for one proxied call. Never fails: what cannot be parsed is kept raw.
pub fn assemble(_record: CallRecord, _opts: &AssembleOptions) -> Span {
    unimplemented!()
}
