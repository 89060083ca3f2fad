//! Input side: decoding rindexer envelopes.
pub mod decode;
