//! The root package of odl: the `odl` command line, the event simulator, the serving
//! node and the dashboard. It depends on every service crate (joiner, trainer, ps), so
//! this is where they are wired together.

pub mod cli;
pub mod dashboard;
pub mod run;
pub mod serve;
pub mod simulate;
