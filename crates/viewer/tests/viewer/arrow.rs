//! Arrow IPC files (stream and file format) written by `arrow-ipc`'s own writers.

use super::Counting;
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    types::Int32Type,
};
use arrow_ipc::writer::{FileWriter, StreamWriter};
use arrow_schema::{DataType, Field, Schema};
use hub_viewer::table::{Format, Table};
use hub_viewer::{MemSource, query};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `batches` batches of `per_batch` rows: `id`, `text` (80 bytes), `ok`, `x` (null every
/// 5th), `tags` (a list), `label` (dictionary-encoded).
fn batches(n: usize, per_batch: usize) -> (Arc<Schema>, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("ok", DataType::Boolean, false),
        Field::new("x", DataType::Float64, true),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new(
            "label",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
    ]));
    let out = (0..n)
        .map(|b| {
            let ids: Vec<i64> = (0..per_batch).map(|i| (b * per_batch + i) as i64).collect();
            let text: Vec<String> = ids.iter().map(|i| format!("{i:0>80}")).collect();
            let mut builder =
                arrow_array::builder::ListBuilder::new(arrow_array::builder::StringBuilder::new());
            for i in &ids {
                for k in 0..(i % 3) {
                    builder.values().append_value(format!("t{k}"));
                }
                builder.append(true);
            }
            let label: DictionaryArray<Int32Type> = ids
                .iter()
                .map(|i| ["cat", "dog"][(*i % 2) as usize])
                .collect();
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from(text)),
                Arc::new(BooleanArray::from(
                    ids.iter().map(|i| i % 2 == 0).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    ids.iter()
                        .map(|i| (i % 5 != 0).then_some(*i as f64 / 4.0))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(builder.finish()),
                Arc::new(label),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect();
    (schema, out)
}

fn stream(n: usize, per_batch: usize) -> Vec<u8> {
    let (schema, batches) = batches(n, per_batch);
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

fn file(n: usize, per_batch: usize) -> Vec<u8> {
    let (schema, batches) = batches(n, per_batch);
    let mut out = Vec::new();
    let mut w = FileWriter::try_new(&mut out, &schema).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

#[test]
fn arrow_stream_and_file_rows_types_and_paging_across_batches() {
    for (what, bytes) in [("stream", stream(5, 100)), ("file", file(5, 100))] {
        let table = Table::open(Format::Arrow, Arc::new(MemSource::new(bytes))).unwrap();
        let kinds: Vec<_> = table
            .features()
            .iter()
            .map(|f| (f.name.as_str(), f.kind.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("id", json!({"dtype": "int64", "_type": "Value"})),
                ("text", json!({"dtype": "string", "_type": "Value"})),
                ("ok", json!({"dtype": "bool", "_type": "Value"})),
                ("x", json!({"dtype": "float64", "_type": "Value"})),
                (
                    "tags",
                    json!({"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"})
                ),
                ("label", json!({"dtype": "string", "_type": "Value"})),
            ],
            "{what}"
        );
        assert_eq!(table.num_rows().unwrap(), 500, "{what}");
        // A page across the end of one batch and the start of the next.
        let rows = table.rows(95, 10).unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, (95..105).collect::<Vec<_>>(), "{what}");
        let r = &rows[5]; // row 100
        assert_eq!(r["x"], json!(null));
        assert_eq!(r["ok"], json!(true));
        assert_eq!(r["tags"], json!(["t0"]));
        assert_eq!(r["label"], json!("cat"));
        assert_eq!(table.rows(101, 1).unwrap()[0]["x"], json!(25.25));
        assert_eq!(table.rows(498, 10).unwrap().len(), 2);
        assert!(table.rows(500, 10).unwrap().is_empty());
        // filter and search read the same rows.
        let q = query::filter(&table, "ok = false AND id > 480", "id DESC", 0, 3).unwrap();
        assert_eq!(q.total, 10, "{what}"); // 481, 483, …, 499
        let ids: Vec<u64> = q.rows.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, [499, 497, 495], "{what}");
    }
}

#[test]
fn a_page_of_a_large_arrow_file_reads_only_its_batches() {
    // 64 batches of 1 000 rows (~6 MiB): the first page reads one batch and a header.
    let bytes = stream(64, 1000);
    let len = bytes.len() as u64;
    let source = Arc::new(Counting {
        inner: MemSource::new(bytes),
        read: Default::default(),
    });
    let table = Table::open(Format::Arrow, source.clone()).unwrap();
    let rows = table.rows(0, 100).unwrap();
    assert_eq!(rows.len(), 100);
    let read = source.read.load(Ordering::Relaxed);
    assert!(
        read * 100 < len * 5,
        "read {read} of {len} bytes for 100 rows"
    );
    // Counting the rows reads the headers only.
    source.read.store(0, Ordering::Relaxed);
    let table = Table::open(Format::Arrow, source.clone()).unwrap();
    assert_eq!(table.num_rows().unwrap(), 64_000);
    let read = source.read.load(Ordering::Relaxed);
    assert!(
        read * 100 < len * 5,
        "read {read} of {len} bytes to count rows"
    );
}

#[test]
fn truncated_or_garbage_arrow_files_are_errors() {
    let bytes = stream(3, 50);
    for cut in [0, 3, 7, 40, bytes.len() / 2, bytes.len() - 9] {
        let source = Arc::new(MemSource::new(bytes[..cut].to_vec()));
        let result =
            Table::open(Format::Arrow, source).and_then(|t| t.num_rows().and(t.rows(0, 200)));
        assert!(result.is_err(), "cut at {cut}");
    }
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert!(Table::open(Format::Arrow, Arc::new(MemSource::new(garbage))).is_err());
    let mut huge = vec![0xff; 4];
    huge.extend(0x7fff_fff0u32.to_le_bytes());
    assert!(Table::open(Format::Arrow, Arc::new(MemSource::new(huge))).is_err());
}
