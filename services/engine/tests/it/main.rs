//! The one integration-test binary: each module is a suite.

mod http_api;
mod http_export;
mod support;
