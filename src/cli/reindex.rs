//! `lexview reindex --search`: rebuilds the full-text search index from the
//! store.

use std::path::Path;

/// Rebuilds the search index of the store in `data` for the record types
/// of `lexicons`, with `search_config`'s fields; returns the records indexed.
pub fn search(data: &Path, lexicons: &Path, search_config: &Path) -> anyhow::Result<usize> {
    let catalog = super::load_catalog(lexicons)?;
    let fields = super::search_fields(&catalog, search_config)?;
    Ok(crate::index::search::reindex(data, &fields)? as usize)
}
