//! The engine's one integration-test binary (one link, one place to look).

mod support;

mod cli;
mod conformance;
mod crash;
mod http_api;
mod http_export;
mod recovery;
