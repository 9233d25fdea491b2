//! A data file as a table: its features (column types, in the `datasets` library's shape) and
//! its rows as JSON objects.
//!
//! Parquet is read by ranges: opening reads the footer (schema, row groups and their row
//! counts), and a page of rows reads only the column chunks of the row groups it overlaps,
//! so 100 rows of a 1 GiB file cost a few row groups, not the file. CSV/TSV and JSON Lines
//! have no index: they are read in order from the start, up to the rows asked for; counting
//! their rows reads them whole. Arrow IPC is read batch by batch ([`arrow`], a submodule).

mod arrow;

use crate::ViewerError;
use crate::source::{RangeSource, SourceReader};
use bytes::Bytes;
use parquet::basic::{ConvertedType, IntType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{ChunkReader, FileReader, Length};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::schema::types::Type;
use serde_json::{Map, Value, json};
use std::io::BufRead;
use std::ops::ControlFlow;
use std::sync::Arc;

/// A row: column name → value.
pub type Row = Map<String, Value>;

/// The data formats the viewer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    Tsv,
    JsonLines,
    /// Arrow IPC, stream or file (`.arrow`).
    Arrow,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Parquet,
        Format::Csv,
        Format::Tsv,
        Format::JsonLines,
        Format::Arrow,
    ];

    /// The format of a file, by its extension.
    pub fn of(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        let ext = lower.rsplit_once('.')?.1;
        Some(match ext {
            "parquet" => Format::Parquet,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "jsonl" | "ndjson" => Format::JsonLines,
            "arrow" => Format::Arrow,
            _ => return None,
        })
    }

    pub(crate) fn rank(self) -> usize {
        Format::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// A column: its name and its type as `datasets` writes it (`{"dtype": "int64", "_type":
/// "Value"}`, `{"feature": …, "_type": "List"}`, or an object of fields for a struct).
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub kind: Value,
}

/// How many rows the text formats look at to decide their column types.
const TYPE_SAMPLE_ROWS: usize = 10_000;
/// The longest line of a text data file.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// An opened data file.
#[derive(Debug)]
pub struct Table {
    features: Vec<Feature>,
    body: Body,
}

enum Body {
    Parquet {
        reader: Box<SerializedFileReader<ParquetSource>>,
        num_rows: u64,
    },
    Text {
        format: Format,
        source: Arc<dyn RangeSource>,
        /// For CSV: the column types decided from the sample (parsing the cells).
        csv_types: Vec<CellType>,
    },
    /// Arrow IPC: batches found by walking message headers, decoded one at a time.
    Arrow(arrow::ArrowFile),
    /// Several files of one split, one after the other.
    Concat(Vec<Table>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Parquet { num_rows, .. } => write!(f, "Parquet({num_rows} rows)"),
            Body::Text { format, .. } => write!(f, "{format:?}"),
            Body::Arrow(a) => write!(f, "{a:?}"),
            Body::Concat(parts) => write!(f, "Concat({} files)", parts.len()),
        }
    }
}

impl Table {
    /// Opens `source` as `format`: for Parquet, reads its footer; for the text formats, reads
    /// up to [`TYPE_SAMPLE_ROWS`] rows to decide the column types.
    pub fn open(format: Format, source: Arc<dyn RangeSource>) -> Result<Table, ViewerError> {
        match format {
            Format::Parquet => {
                let reader = SerializedFileReader::new(ParquetSource(source))?;
                let meta = reader.metadata();
                let num_rows = u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
                let features = meta
                    .file_metadata()
                    .schema()
                    .get_fields()
                    .iter()
                    .map(|f| Feature {
                        name: f.name().to_owned(),
                        kind: parquet_kind(f),
                    })
                    .collect();
                Ok(Table {
                    features,
                    body: Body::Parquet {
                        reader: Box::new(reader),
                        num_rows,
                    },
                })
            }
            Format::Arrow => {
                let file = arrow::ArrowFile::open(source)?;
                Ok(Table {
                    features: file.features(),
                    body: Body::Arrow(file),
                })
            }
            Format::Csv | Format::Tsv => {
                let (names, csv_types) = csv_sample(format, &source)?;
                let features = names
                    .into_iter()
                    .zip(&csv_types)
                    .map(|(name, t)| Feature {
                        name,
                        kind: value_kind(t.dtype()),
                    })
                    .collect();
                Ok(Table {
                    features,
                    body: Body::Text {
                        format,
                        source,
                        csv_types,
                    },
                })
            }
            Format::JsonLines => {
                let mut features: Vec<(String, JsonType)> = Vec::new();
                scan_jsonl(
                    &source,
                    &mut |_, row| {
                        for (k, v) in row {
                            let t = JsonType::of(&v);
                            match features.iter_mut().find(|(n, _)| *n == k) {
                                Some((_, old)) => *old = old.merge(&t),
                                None => features.push((k, t)),
                            }
                        }
                        ControlFlow::Continue(())
                    },
                    TYPE_SAMPLE_ROWS,
                )?;
                Ok(Table {
                    features: features
                        .into_iter()
                        .map(|(name, t)| Feature {
                            name,
                            kind: t.kind(),
                        })
                        .collect(),
                    body: Body::Text {
                        format,
                        source,
                        csv_types: Vec::new(),
                    },
                })
            }
        }
    }

    /// The files of one split as one table, in order; the features are the first file's.
    pub fn concat(mut parts: Vec<Table>) -> Table {
        if parts.len() == 1 {
            return parts.remove(0);
        }
        Table {
            features: parts
                .first()
                .map(|t| t.features.clone())
                .unwrap_or_default(),
            body: Body::Concat(parts),
        }
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The number of rows: from the footer for Parquet; the text formats are read whole.
    pub fn num_rows(&self) -> Result<u64, ViewerError> {
        match &self.body {
            Body::Parquet { num_rows, .. } => Ok(*num_rows),
            Body::Arrow(a) => a.num_rows(),
            Body::Concat(parts) => parts.iter().map(Table::num_rows).sum(),
            Body::Text { .. } => {
                let mut n = 0;
                self.scan(&mut |_, _| {
                    n += 1;
                    ControlFlow::Continue(())
                })?;
                Ok(n)
            }
        }
    }

    /// Rows `offset..offset + length` (fewer at the end).
    pub fn rows(&self, offset: u64, length: usize) -> Result<Vec<Row>, ViewerError> {
        let mut out = Vec::new();
        if length == 0 {
            return Ok(out);
        }
        match &self.body {
            Body::Parquet { reader, .. } => {
                let mut start = 0u64;
                for i in 0..reader.num_row_groups() {
                    let n = u64::try_from(reader.metadata().row_group(i).num_rows()).unwrap_or(0);
                    let end = start + n;
                    if end > offset {
                        let group = reader.get_row_group(i)?;
                        let skip = usize::try_from(offset.saturating_sub(start)).unwrap_or(0);
                        for row in group.get_row_iter(None)?.skip(skip) {
                            out.push(parquet_row(&row?));
                            if out.len() == length {
                                return Ok(out);
                            }
                        }
                    }
                    start = end;
                }
            }
            Body::Concat(parts) => {
                let mut start = 0u64;
                for part in parts {
                    let n = part.num_rows()?;
                    if start + n > offset {
                        let skip = offset.saturating_sub(start);
                        out.extend(part.rows(skip, length - out.len())?);
                        if out.len() == length {
                            break;
                        }
                    }
                    start += n;
                }
            }
            Body::Arrow(a) => {
                a.scan_from(offset, &mut |_, row| {
                    out.push(row);
                    if out.len() == length {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
            }
            Body::Text { .. } => {
                self.scan(&mut |i, row| {
                    if i >= offset {
                        out.push(row);
                    }
                    if out.len() == length {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
            }
        }
        Ok(out)
    }

    /// Calls `f` with every row and its index, in order, until it breaks.
    pub fn scan(&self, f: &mut dyn FnMut(u64, Row) -> ControlFlow<()>) -> Result<(), ViewerError> {
        match &self.body {
            Body::Parquet { reader, .. } => {
                let mut i = 0;
                for g in 0..reader.num_row_groups() {
                    let group = reader.get_row_group(g)?;
                    for row in group.get_row_iter(None)? {
                        if f(i, parquet_row(&row?)).is_break() {
                            return Ok(());
                        }
                        i += 1;
                    }
                }
                Ok(())
            }
            Body::Arrow(a) => a.scan_from(0, f),
            Body::Concat(parts) => {
                let mut base = 0u64;
                for part in parts {
                    let mut stop = false;
                    let mut n = 0;
                    part.scan(&mut |i, row| {
                        n = i + 1;
                        if f(base + i, row).is_break() {
                            stop = true;
                            return ControlFlow::Break(());
                        }
                        ControlFlow::Continue(())
                    })?;
                    if stop {
                        break;
                    }
                    base += n;
                }
                Ok(())
            }
            Body::Text {
                format: Format::JsonLines,
                source,
                ..
            } => {
                // Every row has every column, missing ones null (as `datasets` fills them).
                let names: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
                scan_jsonl(
                    source,
                    &mut |i, pairs| {
                        let mut row: Row = pairs.into_iter().collect();
                        for name in &names {
                            if !row.contains_key(*name) {
                                row.insert((*name).to_owned(), Value::Null);
                            }
                        }
                        f(i, row)
                    },
                    usize::MAX,
                )
            }
            Body::Text {
                format,
                source,
                csv_types,
                ..
            } => scan_csv(*format, source, csv_types, &self.features, f),
        }
    }
}

/// The chunk reader parquet reads through: every read is a range of the source.
struct ParquetSource(Arc<dyn RangeSource>);

impl Length for ParquetSource {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ChunkReader for ParquetSource {
    type T = SourceReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<SourceReader> {
        Ok(SourceReader::new(self.0.clone(), start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let bytes = self
            .0
            .read_at(start, length)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        if bytes.len() != length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "range {start}+{length} past the end of the file"
            )));
        }
        Ok(Bytes::from(bytes))
    }
}

fn parquet_row(row: &parquet::record::Row) -> Row {
    match row.to_json_value() {
        Value::Object(map) => map,
        _ => Row::new(),
    }
}

fn value_kind(dtype: &str) -> Value {
    json!({"dtype": dtype, "_type": "Value"})
}

/// A Parquet column's type as a `datasets` feature.
fn parquet_kind(t: &Type) -> Value {
    if t.is_group() {
        let fields = t.get_fields();
        let is_list = matches!(
            t.get_basic_info().logical_type_ref(),
            Some(LogicalType::List)
        ) || t.get_basic_info().converted_type() == ConvertedType::LIST;
        if is_list {
            // LIST → repeated group list { element }: the element's type.
            let inner = fields
                .first()
                .map(|g| {
                    if g.is_group() && g.get_fields().len() == 1 {
                        parquet_kind(&g.get_fields()[0])
                    } else {
                        parquet_kind(g)
                    }
                })
                .unwrap_or(Value::Null);
            return json!({"feature": inner, "_type": "List"});
        }
        let mut map = Map::new();
        for f in fields {
            map.insert(f.name().to_owned(), parquet_kind(f));
        }
        return Value::Object(map);
    }
    let info = t.get_basic_info();
    let logical = info.logical_type_ref();
    let dtype = match (t.get_physical_type(), logical, info.converted_type()) {
        (_, Some(LogicalType::String), _) | (_, _, ConvertedType::UTF8) => "string",
        (
            _,
            Some(LogicalType::Integer(IntType {
                bit_width,
                is_signed,
            })),
            _,
        ) => match (*bit_width, *is_signed) {
            (8, true) => "int8",
            (16, true) => "int16",
            (32, true) => "int32",
            (8, false) => "uint8",
            (16, false) => "uint16",
            (32, false) => "uint32",
            (64, false) => "uint64",
            _ => "int64",
        },
        (_, Some(LogicalType::Timestamp(_)), _) => "timestamp[us]",
        (_, Some(LogicalType::Date), _) => "date32",
        (PhysicalType::BOOLEAN, ..) => "bool",
        (PhysicalType::INT32, ..) => "int32",
        (PhysicalType::INT64, ..) => "int64",
        (PhysicalType::FLOAT, ..) => "float32",
        (PhysicalType::DOUBLE, ..) => "float64",
        _ => "binary",
    };
    value_kind(dtype)
}

/// A CSV column's type, decided from the sample as pandas does for `datasets`' CSV loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellType {
    Null,
    Int,
    Float,
    Bool,
    Str,
}

impl CellType {
    fn of(cell: &str) -> CellType {
        if cell.is_empty() {
            CellType::Null
        } else if cell.parse::<i64>().is_ok() {
            CellType::Int
        } else if cell.parse::<f64>().is_ok() {
            CellType::Float
        } else if matches!(cell, "True" | "False" | "true" | "false" | "TRUE" | "FALSE") {
            CellType::Bool
        } else {
            CellType::Str
        }
    }

    fn merge(self, other: CellType) -> CellType {
        use CellType::*;
        match (self, other) {
            (Null, x) | (x, Null) => x,
            (a, b) if a == b => a,
            (Int, Float) | (Float, Int) => Float,
            _ => Str,
        }
    }

    fn dtype(self) -> &'static str {
        match self {
            CellType::Null => "null",
            CellType::Int => "int64",
            CellType::Float => "float64",
            CellType::Bool => "bool",
            CellType::Str => "string",
        }
    }

    fn value(self, cell: &str) -> Value {
        // An empty cell is missing (pandas' NaN, `None` in `datasets`), whatever the column.
        if cell.is_empty() {
            return Value::Null;
        }
        match self {
            CellType::Null => Value::Null,
            CellType::Int => cell.parse::<i64>().map_or(Value::Null, Value::from),
            CellType::Float => cell
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            CellType::Bool => Value::Bool(cell.eq_ignore_ascii_case("true")),
            CellType::Str => Value::String(cell.to_owned()),
        }
    }
}

fn csv_reader(format: Format, source: &Arc<dyn RangeSource>) -> csv::Reader<SourceReader> {
    csv::ReaderBuilder::new()
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .flexible(true)
        .from_reader(SourceReader::new(source.clone(), 0))
}

fn csv_error(e: &csv::Error) -> ViewerError {
    ViewerError::Csv {
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    }
}

fn csv_sample(
    format: Format,
    source: &Arc<dyn RangeSource>,
) -> Result<(Vec<String>, Vec<CellType>), ViewerError> {
    let mut reader = csv_reader(format, source);
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(&e))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut types = vec![CellType::Null; names.len()];
    let mut record = csv::StringRecord::new();
    for _ in 0..TYPE_SAMPLE_ROWS {
        if !reader.read_record(&mut record).map_err(|e| csv_error(&e))? {
            break;
        }
        check_line(
            record.as_slice().len(),
            record.position().map_or(0, |p| p.line()),
        )?;
        for (t, cell) in types.iter_mut().zip(record.iter()) {
            *t = t.merge(CellType::of(cell));
        }
    }
    Ok((names, types))
}

fn check_line(len: usize, line: u64) -> Result<(), ViewerError> {
    if len > MAX_LINE {
        return Err(ViewerError::Csv {
            line,
            message: format!("row longer than {MAX_LINE} bytes"),
        });
    }
    Ok(())
}

fn scan_csv(
    format: Format,
    source: &Arc<dyn RangeSource>,
    types: &[CellType],
    features: &[Feature],
    f: &mut dyn FnMut(u64, Row) -> ControlFlow<()>,
) -> Result<(), ViewerError> {
    let mut reader = csv_reader(format, source);
    let mut record = csv::StringRecord::new();
    let mut i = 0;
    while reader.read_record(&mut record).map_err(|e| csv_error(&e))? {
        check_line(
            record.as_slice().len(),
            record.position().map_or(0, |p| p.line()),
        )?;
        let mut row = Row::new();
        for (k, (feature, t)) in features.iter().zip(types).enumerate() {
            let cell = record.get(k).unwrap_or("");
            row.insert(feature.name.clone(), t.value(cell));
        }
        if f(i, row).is_break() {
            break;
        }
        i += 1;
    }
    Ok(())
}

/// A JSON value's type as a `datasets` feature (ints and floats together are floats).
#[derive(Debug, Clone, PartialEq)]
enum JsonType {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<JsonType>),
    Struct(Vec<(String, JsonType)>),
}

impl JsonType {
    fn of(v: &Value) -> JsonType {
        match v {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Bool,
            Value::Number(n) if n.is_i64() || n.is_u64() => JsonType::Int,
            Value::Number(_) => JsonType::Float,
            Value::String(_) => JsonType::Str,
            Value::Array(items) => JsonType::List(Box::new(
                items
                    .iter()
                    .map(JsonType::of)
                    .fold(JsonType::Null, |a, b| a.merge(&b)),
            )),
            Value::Object(map) => JsonType::Struct(
                map.iter()
                    .map(|(k, v)| (k.clone(), JsonType::of(v)))
                    .collect(),
            ),
        }
    }

    fn merge(&self, other: &JsonType) -> JsonType {
        use JsonType::*;
        match (self, other) {
            (Null, x) | (x, Null) => x.clone(),
            (Int, Float) | (Float, Int) => Float,
            (List(a), List(b)) => List(Box::new(a.merge(b))),
            (Struct(a), Struct(b)) => {
                let mut out = a.clone();
                for (k, t) in b {
                    match out.iter_mut().find(|(n, _)| n == k) {
                        Some((_, old)) => *old = old.merge(t),
                        None => out.push((k.clone(), t.clone())),
                    }
                }
                Struct(out)
            }
            (a, b) if a == b => a.clone(),
            _ => Str,
        }
    }

    fn kind(&self) -> Value {
        match self {
            JsonType::Null => value_kind("null"),
            JsonType::Bool => value_kind("bool"),
            JsonType::Int => value_kind("int64"),
            JsonType::Float => value_kind("float64"),
            JsonType::Str => value_kind("string"),
            JsonType::List(t) => json!({"feature": t.kind(), "_type": "List"}),
            JsonType::Struct(fields) => {
                Value::Object(fields.iter().map(|(k, t)| (k.clone(), t.kind())).collect())
            }
        }
    }
}

/// A JSON object's members in the order they are written (`Row` sorts them; the columns of a
/// JSON Lines file are in the order of first appearance, as pyarrow reads them).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Ordered;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    out.push(member);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Members)
    }
}

fn scan_jsonl(
    source: &Arc<dyn RangeSource>,
    f: &mut dyn FnMut(u64, Vec<(String, Value)>) -> ControlFlow<()>,
    max_rows: usize,
) -> Result<(), ViewerError> {
    let mut reader = std::io::BufReader::new(SourceReader::new(source.clone(), 0));
    let mut line = Vec::new();
    let (mut i, mut number) = (0u64, 0u64);
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.len() > MAX_LINE {
            return Err(ViewerError::Json {
                line: number,
                message: format!("line longer than {MAX_LINE} bytes"),
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ordered(row) = serde_json::from_slice(&line).map_err(|e| ViewerError::Json {
            line: number,
            message: e.to_string(),
        })?;
        if f(i, row).is_break() || i + 1 >= max_rows as u64 {
            break;
        }
        i += 1;
    }
    Ok(())
}

use std::io::Read as _;
