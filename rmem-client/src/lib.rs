//! Remote-memory pool client (placeholder until issue #5 lands).
