//! Input side: decoding rindexer envelopes.
pub mod decode;
pub mod json;
pub mod letter;
pub mod publish;
pub mod stream;
mod value;
