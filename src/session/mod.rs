//! Browser sessions: sealed cookies (`cookie`). The session records, their
//! stores and the login flow build on this.

pub mod cookie;
