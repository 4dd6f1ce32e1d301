//! Pure read models over the core's books: operator query answers, reconciliation of two
//! nodes' views, and the audit that replays a journal from its bytes. They read a ledger or
//! entries they are given; they never open a file, a socket or a session.

pub mod audit;
pub mod queries;
pub mod reconcile;
