//! Ferry scheduler (being built).
