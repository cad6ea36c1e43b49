//! The commands: each wires subsystems together for one job and holds no
//! subsystem logic of its own. The binary (`src/main.rs`) parses flags into
//! their configs.

pub mod audit;
pub mod backfill;
pub mod export;
pub mod reindex;
pub mod serve;
pub mod sql;

use anyhow::Context;

use crate::index::search::{SearchConfig, SearchFields};
use crate::lexicon::Catalog;

/// The searched fields of `catalog` with the config at `config_path`, and
/// the app.bsky room's parent link (posts by the post they reply to).
pub fn search_fields(
    catalog: &Catalog,
    config_path: &std::path::Path,
) -> anyhow::Result<SearchFields> {
    let config = SearchConfig::load(config_path)?;
    Ok(SearchFields::new(catalog, &config).with_parent(crate::api::bsky::thread_parent()))
}

/// Whether commits are verified before they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `full` for network sources (a firehose for `serve`, `--host` for
    /// `backfill`), `none` for recordings and local files (and Jetstream,
    /// which carries nothing to verify).
    Auto,
    /// Check each commit's signature against its DID document, its DID,
    /// its rev order and (with `prevData`) its Sync 1.1 proof.
    Full,
    /// Trust the source.
    None,
}

/// Loads the lexicon directory, reporting every file that failed.
pub fn load_catalog(dir: &std::path::Path) -> anyhow::Result<Catalog> {
    let (catalog, errors) = Catalog::load_dir(dir)
        .with_context(|| format!("cannot read lexicon directory {}", dir.display()))?;
    for e in &errors {
        tracing::error!("lexicon not loaded: {e}");
    }
    let unresolved = catalog.unresolved_refs();
    for (from, to) in &unresolved {
        tracing::warn!(
            from,
            to,
            "lexicon ref points at a def that is not loaded; values there will not validate"
        );
    }
    tracing::info!(
        documents = catalog.len(),
        record_types = catalog.records().count(),
        failed = errors.len(),
        "lexicons loaded from {}",
        dir.display()
    );
    Ok(catalog)
}
