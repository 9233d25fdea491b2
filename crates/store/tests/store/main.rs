//! Integration tests of hub-store: the one test binary of this crate.

mod compose;
mod crash;
mod failed;
mod files;
mod maintenance;
mod serving;
mod util;
mod verified;
