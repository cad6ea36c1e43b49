//! Lexicons: the document model, the compiled catalog, and record validation.

pub mod catalog;
pub mod schema;
pub mod validate;

pub use catalog::{Catalog, LoadError, RecordType};
pub use schema::{Field, ObjectSchema, StringSchema};
pub use validate::ValidationError;
