//! The integration-test binary: one binary, one module per area (STYLE: one integration-test
//! binary keeps link time down).

mod tidy;
