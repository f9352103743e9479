//! The command line: its options, and the two ways besides a plain run in
//! which it runs a scenario (against a server started in this process, or
//! against herald and a baseline in turn).

pub(crate) mod embedded;
pub(crate) mod options;
pub(crate) mod vs;
