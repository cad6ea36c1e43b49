//! Accounts as the generic APIs see them: an at-identifier (DID or handle)
//! to a DID, whether an account is visible, and verified handles by DID
//! (cached until a committed batch changes the DID's identity or status).

use std::collections::HashMap;

use duckdb::params;

use super::cache::{Lookup, ViewCache};
use super::{AppState, XrpcError};
use crate::index::event::{Change, IndexEvent};
use crate::syntax::{is_valid_did, is_valid_handle};

/// The DID for an at-identifier: a DID as is, a handle through the actors table.
pub async fn resolve_repo(state: &AppState, repo: &str) -> Result<String, XrpcError> {
    if is_valid_did(repo) {
        return Ok(repo.to_string());
    }
    let handle = repo.to_string();
    let found = state
        .readers
        .with(move |c| did_for_handle(c, &handle))
        .await?;
    found.ok_or_else(|| XrpcError::invalid_request(format!("Could not find repo: {repo}")))
}

/// The DID whose current handle is `handle` (case-insensitive), if any.
pub fn did_for_handle(c: &duckdb::Connection, handle: &str) -> duckdb::Result<Option<String>> {
    let mut stmt = c.prepare_cached("SELECT did FROM actors WHERE lower(handle) = ? LIMIT 1")?;
    let mut rows = stmt.query(params![handle.to_ascii_lowercase()])?;
    match rows.next()? {
        Some(r) => Ok(Some(r.get(0)?)),
        None => Ok(None),
    }
}

/// The error the Bluesky AppView gives for an account that is not active:
/// `AccountTakedown` for a takedown or suspension, `AccountDeactivated` for
/// anything else (deactivated, deleted, ...).
pub async fn account_visible(state: &AppState, did: &str) -> Result<(), XrpcError> {
    let key = did.to_string();
    let status = state
        .readers
        .with(move |c| {
            let mut stmt = c.prepare_cached("SELECT active, status FROM actors WHERE did = ?")?;
            let mut rows = stmt.query(params![key])?;
            Ok(match rows.next()? {
                Some(r) => Some((r.get::<_, bool>(0)?, r.get::<_, Option<String>>(1)?)),
                None => None,
            })
        })
        .await?;
    match status {
        Some((false, status)) => match status.as_deref() {
            Some("takendown") | Some("suspended") => Err(XrpcError::named(
                "AccountTakedown",
                "Account has been suspended",
            )),
            _ => Err(XrpcError::named(
                "AccountDeactivated",
                "Account is deactivated",
            )),
        },
        _ => Ok(()),
    }
}

/// Verified handles by DID (`None`: the DID has none, or it does not
/// verify), for answers that name a record's author.
pub struct Handles(ViewCache<String, Option<String>>);

impl Default for Handles {
    fn default() -> Self {
        Handles(ViewCache::new(50_000))
    }
}

impl Handles {
    /// Forgets every DID whose handle or status `batch` changed.
    pub fn invalidate(&self, batch: &[IndexEvent]) {
        let dids: Vec<&String> = batch
            .iter()
            .flat_map(|ev| &ev.changes)
            .filter_map(|change| match change {
                Change::Identity { did, .. }
                | Change::HandleChecked { did, .. }
                | Change::Account { did, .. } => Some(did),
                _ => None,
            })
            .collect();
        if !dids.is_empty() {
            self.0.remove(dids);
        }
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.0.stats()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The verified handle of each of `dids` that has one.
    pub async fn of(
        &self,
        state: &AppState,
        dids: &[String],
    ) -> Result<HashMap<String, Option<String>>, XrpcError> {
        let Lookup {
            found: mut out,
            missing,
            epoch,
        } = self.0.get_many(dids);
        if missing.is_empty() {
            return Ok(out);
        }
        let asked = missing.clone();
        let mut found = state
            .readers
            .with(move |c| crate::index::store::handles_of(c, asked.iter().map(String::as_str)))
            .await?;
        let mut fresh = Vec::with_capacity(missing.len());
        for did in missing {
            let handle = found
                .remove(&did)
                .filter(|h| h != "handle.invalid" && is_valid_handle(h));
            fresh.push((did.clone(), handle.clone()));
            out.insert(did, handle);
        }
        // Kept only if no batch was committed since the lookup (cache.rs).
        self.0.put_all(epoch, fresh);
        Ok(out)
    }
}
