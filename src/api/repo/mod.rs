//! The generic, lexicon-driven XRPC methods: records as their repositories
//! would answer (`records`), Constellation's backlinks (`backlinks`), SQL
//! query methods (`queries`) and full-text search (`search`).

pub mod backlinks;
pub mod queries;
pub mod records;
pub mod search;
