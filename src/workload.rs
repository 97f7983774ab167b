//! Helpers shared by the example workloads: argument parsing, a deterministic generator, digests.
