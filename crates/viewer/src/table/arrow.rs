//! Arrow IPC data files (`.arrow`): the stream format the `datasets` library writes
//! (`save_to_disk`, its cache) and the file format (`ARROW1` magic and padding, a stream
//! inside, a footer this reader does not need).
//!
//! Read by ranges, batch by batch: the reader walks the stream's message headers (a prefix
//! and a small flatbuffer each; record batch bodies are skipped by their length), so it
//! knows each batch's offset and row count without reading its body, and a page of rows
//! decodes only the batches it overlaps (`arrow-ipc`'s `FileDecoder`). The walk goes only as
//! far as a request needs (counting the rows walks every header). Dictionary batches are
//! decoded when the walk meets them, before the record batches that use them. Compressed
//! bodies (LZ4/ZSTD) are refused with a clear error: `arrow-ipc` is built without codecs.
//!
//! Column types come from the schema's `huggingface` metadata when `datasets` wrote it (its
//! own features, exactly), else from the Arrow types.

use super::{Feature, Row};
use crate::ViewerError;
use crate::source::RangeSource;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::{Block, MessageHeader, MetadataVersion};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex, PoisonError};

/// The largest message header (flatbuffer) read.
const MAX_META: u64 = 16 * 1024 * 1024;
/// The largest record batch body decoded at once.
const MAX_BODY: u64 = 512 * 1024 * 1024;
const CONTINUATION: [u8; 4] = [0xff; 4];
/// The most zero padding skipped after a file's magic.
const MAX_PADDING: u64 = 4096;

fn bad(message: impl Into<String>) -> ViewerError {
    ViewerError::Arrow(message.into())
}

fn arrow_err(e: arrow_schema::ArrowError) -> ViewerError {
    ViewerError::Arrow(e.to_string())
}

/// One record batch of the stream, found by the walk.
#[derive(Debug, Clone, Copy)]
struct BatchRef {
    /// Where its message starts (the prefix), and its prefix + header length.
    offset: u64,
    meta_len: u64,
    body_len: u64,
    /// The index of its first row, and its rows.
    first_row: u64,
    rows: u64,
}

struct Walk {
    decoder: FileDecoder,
    batches: Vec<BatchRef>,
    /// The offset of the next message to read; `None` once the stream ended.
    next: Option<u64>,
    rows: u64,
}

/// An opened Arrow IPC file.
pub(crate) struct ArrowFile {
    source: Arc<dyn RangeSource>,
    schema: SchemaRef,
    walk: Mutex<Walk>,
}

impl std::fmt::Debug for ArrowFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arrow({} columns)", self.schema.fields().len())
    }
}

/// A message's header: where it starts, its prefix + flatbuffer length, the flatbuffer.
struct Header {
    meta_len: u64,
    flatbuffer: Vec<u8>,
}

/// Reads the message header at `offset`; `None` at the end of the stream (an end marker, a
/// footer, or the end of the file).
fn read_header(source: &dyn RangeSource, offset: u64) -> Result<Option<Header>, ViewerError> {
    let len = source.len();
    if offset + 4 > len {
        return Ok(None);
    }
    let prefix = source.read_at(offset, 8.min((len - offset) as usize))?;
    let (size, skip) = if prefix[..4] == CONTINUATION {
        if prefix.len() < 8 {
            return Err(bad("truncated message prefix"));
        }
        (
            u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]),
            8u64,
        )
    } else {
        // The format before 0.15: a bare length.
        (
            u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]),
            4u64,
        )
    };
    if size == 0 || prefix[..4] == *b"ARRO" {
        return Ok(None);
    }
    let size = u64::from(size);
    if size > MAX_META || offset + skip + size > len {
        return Err(bad(format!(
            "message header of {size} bytes at {offset} runs past the file"
        )));
    }
    let flatbuffer = source.read_at(offset + skip, size as usize)?;
    if flatbuffer.len() as u64 != size {
        return Err(bad("short read of a message header"));
    }
    Ok(Some(Header {
        meta_len: skip + size,
        flatbuffer,
    }))
}

/// A block's bytes (prefix, header, body) as `FileDecoder` takes them.
fn read_block(source: &dyn RangeSource, b: &BatchRef) -> Result<(Block, Buffer), ViewerError> {
    let total = b.meta_len + b.body_len;
    let bytes = source.read_at(b.offset, total as usize)?;
    if bytes.len() as u64 != total {
        return Err(bad("the file ends inside a record batch"));
    }
    let block = Block::new(
        i64::try_from(b.offset).map_err(|_| bad("offset too large"))?,
        i32::try_from(b.meta_len).map_err(|_| bad("header too large"))?,
        i64::try_from(b.body_len).map_err(|_| bad("body too large"))?,
    );
    Ok((block, Buffer::from_vec(bytes)))
}

impl ArrowFile {
    /// Opens `source`: the stream's schema message (after the `ARROW1` magic of the file
    /// format).
    pub(crate) fn open(source: Arc<dyn RangeSource>) -> Result<Self, ViewerError> {
        let mut start = 0;
        if source.len() >= 8 && source.read_at(0, 6)? == b"ARROW1" {
            // The magic, then zeros up to the writer's alignment (8 for pyarrow, 64 for
            // arrow-rs), then the stream.
            start = 8;
            while start < MAX_PADDING && source.read_at(start, 8)? == [0u8; 8] {
                start += 8;
            }
        }
        let header = read_header(source.as_ref(), start)?
            .ok_or_else(|| bad("no schema message: not an Arrow IPC file"))?;
        let message = arrow_ipc::root_as_message(&header.flatbuffer)
            .map_err(|e| bad(format!("malformed schema message: {e}")))?;
        let fb_schema = message
            .header_as_schema()
            .ok_or_else(|| bad("the first message is not a schema"))?;
        let schema = Arc::new(arrow_ipc::convert::try_fb_to_schema(fb_schema).map_err(arrow_err)?);
        let version: MetadataVersion = message.version();
        let body = u64::try_from(message.bodyLength()).unwrap_or(0);
        Ok(Self {
            walk: Mutex::new(Walk {
                decoder: FileDecoder::new(schema.clone(), version),
                batches: Vec::new(),
                next: Some(start + header.meta_len + body),
                rows: 0,
            }),
            source,
            schema,
        })
    }

    /// The columns as `datasets` features.
    pub(crate) fn features(&self) -> Vec<Feature> {
        let hf: Option<Map<String, Value>> = self
            .schema
            .metadata()
            .get("huggingface")
            .and_then(|m| serde_json::from_str::<Value>(m).ok())
            .and_then(|v| v["info"]["features"].as_object().cloned());
        self.schema
            .fields()
            .iter()
            .map(|f| Feature {
                name: f.name().clone(),
                kind: hf
                    .as_ref()
                    .and_then(|h| h.get(f.name()).cloned())
                    .unwrap_or_else(|| kind(f)),
            })
            .collect()
    }

    /// Walks headers until `rows` rows are known (`u64::MAX`: to the end).
    fn walk_to(&self, walk: &mut Walk, rows: u64) -> Result<(), ViewerError> {
        let source = self.source.as_ref();
        while walk.rows < rows {
            let Some(offset) = walk.next else {
                return Ok(());
            };
            let Some(header) = read_header(source, offset)? else {
                walk.next = None;
                return Ok(());
            };
            let message = arrow_ipc::root_as_message(&header.flatbuffer)
                .map_err(|e| bad(format!("malformed message at {offset}: {e}")))?;
            let body_len =
                u64::try_from(message.bodyLength()).map_err(|_| bad("negative body length"))?;
            if body_len > MAX_BODY {
                return Err(bad(format!(
                    "a batch of {body_len} bytes is too large to show"
                )));
            }
            let batch = BatchRef {
                offset,
                meta_len: header.meta_len,
                body_len,
                first_row: walk.rows,
                rows: 0,
            };
            match message.header_type() {
                MessageHeader::RecordBatch => {
                    let header = message
                        .header_as_record_batch()
                        .ok_or_else(|| bad("malformed record batch header"))?;
                    if header.compression().is_some() {
                        return Err(bad("compressed Arrow batches (LZ4/ZSTD) are not supported"));
                    }
                    let rows =
                        u64::try_from(header.length()).map_err(|_| bad("negative row count"))?;
                    walk.batches.push(BatchRef { rows, ..batch });
                    walk.rows += rows;
                }
                MessageHeader::DictionaryBatch => {
                    let (block, buf) = read_block(source, &batch)?;
                    walk.decoder
                        .read_dictionary(&block, &buf)
                        .map_err(arrow_err)?;
                }
                other => return Err(bad(format!("unexpected {other:?} message at {offset}"))),
            }
            walk.next = Some(offset + header.meta_len + body_len);
        }
        Ok(())
    }

    pub(crate) fn num_rows(&self) -> Result<u64, ViewerError> {
        let mut walk = self.walk.lock().unwrap_or_else(PoisonError::into_inner);
        self.walk_to(&mut walk, u64::MAX)?;
        Ok(walk.rows)
    }

    /// Calls `f` with each row from row `from` on, in order, until it breaks; reads only
    /// the batches it goes through.
    pub(crate) fn scan_from(
        &self,
        from: u64,
        f: &mut dyn FnMut(u64, Row) -> std::ops::ControlFlow<()>,
    ) -> Result<(), ViewerError> {
        let mut i = 0usize;
        loop {
            let (batch, record) = {
                let mut walk = self.walk.lock().unwrap_or_else(PoisonError::into_inner);
                // The next batch that holds a row at or after `from`, walking on as needed.
                loop {
                    if let Some(b) = walk.batches.get(i) {
                        if b.rows > 0 && b.first_row + b.rows > from {
                            break;
                        }
                        i += 1;
                        continue;
                    }
                    let known = walk.batches.len();
                    let want = walk.rows.saturating_add(1);
                    self.walk_to(&mut walk, want)?;
                    if walk.batches.len() == known {
                        return Ok(());
                    }
                }
                let batch = walk.batches[i];
                let (block, buf) = read_block(self.source.as_ref(), &batch)?;
                let record = walk
                    .decoder
                    .read_record_batch(&block, &buf)
                    .map_err(arrow_err)?
                    .ok_or_else(|| bad("an empty message where a batch was"))?;
                (batch, record)
            };
            let skip = from.saturating_sub(batch.first_row);
            for r in skip..batch.rows.min(record.num_rows() as u64) {
                if f(batch.first_row + r, row(&record, r as usize)).is_break() {
                    return Ok(());
                }
            }
            i += 1;
        }
    }
}

/// Row `i` of a batch as JSON.
fn row(batch: &RecordBatch, i: usize) -> Row {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), value(c.as_ref(), i)))
        .collect()
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One value of an array as JSON (as `datasets` turns it into Python: numbers, strings,
/// lists, dicts; dates and times as ISO text; bytes as their size).
fn value(a: &dyn Array, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => json!(a.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => json!(a.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => json!(a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => json!(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => json!(a.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => json!(a.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => json!(a.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => json!(a.as_primitive::<UInt64Type>().value(i)),
        DataType::Float16 => number(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => number(f64::from(a.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => number(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).to_owned()),
        DataType::Binary => json!(format!("<{} bytes>", a.as_binary::<i32>().value(i).len())),
        DataType::LargeBinary => {
            json!(format!("<{} bytes>", a.as_binary::<i64>().value(i).len()))
        }
        DataType::Date32 => text(a.as_primitive::<Date32Type>().value_as_date(i)),
        DataType::Date64 => text(a.as_primitive::<Date64Type>().value_as_date(i)),
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => text(a.as_primitive::<TimestampSecondType>().value_as_datetime(i)),
            TimeUnit::Millisecond => text(
                a.as_primitive::<TimestampMillisecondType>()
                    .value_as_datetime(i),
            ),
            TimeUnit::Microsecond => text(
                a.as_primitive::<TimestampMicrosecondType>()
                    .value_as_datetime(i),
            ),
            TimeUnit::Nanosecond => text(
                a.as_primitive::<TimestampNanosecondType>()
                    .value_as_datetime(i),
            ),
        },
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref()),
        DataType::FixedSizeList(..) => list(a.as_fixed_size_list().value(i).as_ref()),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), value(c.as_ref(), i)))
                    .collect(),
            )
        }
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            match d.normalized_keys().get(i) {
                Some(&k) if k < d.values().len() => value(d.values().as_ref(), k),
                _ => Value::Null,
            }
        }
        other => Value::String(format!("<{other}>")),
    }
}

fn text<T: ToString>(v: Option<T>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn list(a: &dyn Array) -> Value {
    Value::Array((0..a.len()).map(|i| value(a, i)).collect())
}

/// An Arrow field's type as a `datasets` feature.
fn kind(f: &Field) -> Value {
    let dtype = match f.data_type() {
        DataType::List(inner) | DataType::LargeList(inner) | DataType::FixedSizeList(inner, _) => {
            return json!({"feature": kind(inner), "_type": "List"});
        }
        DataType::Struct(fields) => {
            return Value::Object(fields.iter().map(|f| (f.name().clone(), kind(f))).collect());
        }
        DataType::Dictionary(_, values) => {
            return kind(&Field::new(f.name(), values.as_ref().clone(), true));
        }
        DataType::Null => "null".to_owned(),
        DataType::Boolean => "bool".to_owned(),
        DataType::Utf8 | DataType::Utf8View => "string".to_owned(),
        DataType::LargeUtf8 => "large_string".to_owned(),
        DataType::Binary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "binary".to_owned()
        }
        DataType::LargeBinary => "large_binary".to_owned(),
        DataType::Timestamp(unit, _) => format!(
            "timestamp[{}]",
            match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            }
        ),
        other => other.to_string().to_ascii_lowercase(),
    };
    json!({"dtype": dtype, "_type": "Value"})
}
