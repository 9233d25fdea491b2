//! hubmesh's readers for people: what the web pages and the dataset viewer API show of a
//! repo's files, without HTTP.
//!
//! Place in the graph: a leaf (it knows no repos, store or gateway). The gateway finds the
//! files (a dataset's data files, a weight file), hands each as a [`RangeSource`] (the chunk
//! store's reader for LFS files, bytes for small git blobs) and renders what comes back.
//!
//! - [`table`]: a data file as a table: Parquet (footer, then only the row groups a page
//!   touches), CSV/TSV and JSON Lines (read in order); features (column types) in the shape
//!   of the `datasets` library, rows as JSON; Arrow IPC (`.arrow`) batch by batch.
//! - [`splits`]: which data files make which split (`train`, `validation`, `test`), by the
//!   `datasets` library's file-name conventions.
//! - [`query`]: the viewer's `search` (full text) and `filter` (a small SQL-like `where`
//!   clause and `orderby`).
//! - [`headers`]: safetensors and GGUF headers (tensor names, dtypes, shapes, parameter count),
//!   read from the start of the file only.
//!
//! ```
//! use hub_viewer::{MemSource, table::{Format, Table}};
//! use std::sync::Arc;
//! let csv = MemSource::new(b"a,b\n1,x\n2,y\n".to_vec());
//! let table = Table::open(Format::Csv, Arc::new(csv)).unwrap();
//! let rows = table.rows(1, 10).unwrap();
//! assert_eq!(rows[0]["a"], 2);
//! ```

pub mod headers;
pub mod query;
mod source;
pub mod splits;
pub mod table;

pub use source::{MemSource, RangeSource, SeekSource};

/// What can go wrong reading a file for the viewer. Messages are lowercase fragments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewerError {
    #[error("read file")]
    Io(#[from] std::io::Error),
    #[error("read parquet")]
    Parquet(#[source] parquet::errors::ParquetError),
    #[error("read csv line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error("read json line {line}: {message}")]
    Json { line: u64, message: String },
    #[error("malformed {format} header: {message}")]
    Header {
        format: &'static str,
        message: String,
    },
    #[error("read arrow: {0}")]
    Arrow(String),
    #[error("invalid query: {0}")]
    Query(String),
    #[error("too many rows to sort ({0}); narrow the filter")]
    TooManyRows(u64),
}

impl From<parquet::errors::ParquetError> for ViewerError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Parquet(e)
    }
}
