//! Helpers for tests of this crate and, with the `fault-injection` feature, of others.

pub mod faulty;
