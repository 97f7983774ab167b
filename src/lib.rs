//! Support code shared by the top-level examples, tests and benchmarks.
