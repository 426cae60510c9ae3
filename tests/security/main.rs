//! The attack corpus (issue 13 item 8): hostile requests against a real
//! `portcullis`, one family per module, each module with its own portcullis
//! (a bearer deployment, a cookie-login deployment and one without
//! authentication, all behind a relay that records every byte reaching the
//! backend). Every refused case asserts its exact status and reason, and
//! that nothing reached the backend; every module ends by scanning its
//! portcullis's log for the secrets it used.

#[path = "../common/mod.rs"]
mod common;

mod cookies;
mod fixture;
mod handshake;
mod jwt;
mod origins;
mod smuggling;
mod spoofing;
