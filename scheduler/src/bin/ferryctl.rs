//! `ferryctl` (being built).
fn main() {}
