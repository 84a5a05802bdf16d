//! `ferry-scheduler` (being built).
fn main() {}
