//! hub-viewer's integration tests: Parquet files written by the parquet crate's own writer,
//! read through a source that counts the bytes it hands out.

mod arrow;

use hub_viewer::table::{Format, Table};
use hub_viewer::{MemSource, RangeSource, query};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source that counts the bytes read from it.
struct Counting {
    inner: MemSource,
    read: AtomicU64,
}

impl RangeSource for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let out = self.inner.read_at(offset, len)?;
        self.read.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
}

/// A Parquet file of `groups` row groups of `per_group` rows: `id` (0, 1, …) and `text`
/// (80 bytes that do not compress), snappy-compressed.
fn parquet_file(groups: u64, per_group: u64) -> Vec<u8> {
    let schema = Arc::new(
        parse_message_type("message m { REQUIRED INT64 id; REQUIRED BYTE_ARRAY text (UTF8); }")
            .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for g in 0..groups {
        let ids: Vec<i64> = (g * per_group..(g + 1) * per_group)
            .map(|i| i as i64)
            .collect();
        let texts: Vec<ByteArray> = ids
            .iter()
            .map(|i| {
                let mut s = format!("row {i} ");
                while s.len() < 80 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    s.push(char::from(b'a' + (state % 26) as u8));
                }
                ByteArray::from(s.as_str())
            })
            .collect();
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&texts, None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
    out
}

#[test]
fn a_page_of_a_large_parquet_file_reads_only_its_row_groups() {
    let file = parquet_file(64, 2_000);
    let size = file.len() as u64;
    assert!(size > 8 * 1024 * 1024, "fixture is {size} bytes");
    let source = Arc::new(Counting {
        inner: MemSource::new(file),
        read: AtomicU64::new(0),
    });
    let table = Table::open(Format::Parquet, source.clone()).unwrap();
    assert_eq!(table.num_rows().unwrap(), 128_000);
    let names: Vec<_> = table.features().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["id", "text"]);
    assert_eq!(table.features()[1].kind["dtype"], "string");

    let rows = table.rows(0, 100).unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[99]["id"], 99);
    let first = source.read.load(Ordering::Relaxed);
    assert!(
        first < size / 20,
        "read {first} of {size} bytes for the first page"
    );

    // A page in the middle, across two row groups: two groups' worth more.
    let rows = table.rows(63_950, 100).unwrap();
    assert_eq!(rows[0]["id"], 63_950);
    assert_eq!(rows[99]["id"], 64_049);
    let second = source.read.load(Ordering::Relaxed) - first;
    assert!(
        second < size / 20,
        "read {second} of {size} bytes for a middle page"
    );

    // Past the end: nothing, and no error.
    assert!(table.rows(128_000, 10).unwrap().is_empty());
    assert_eq!(table.rows(127_995, 10).unwrap().len(), 5);
}

#[test]
fn parquet_rows_can_be_filtered_and_searched() {
    let table = Table::open(
        Format::Parquet,
        Arc::new(MemSource::new(parquet_file(3, 100))),
    )
    .unwrap();
    let m = query::filter(&table, "id >= 150 AND id < 160", "id DESC", 2, 3).unwrap();
    assert_eq!(m.total, 10);
    let ids: Vec<_> = m
        .rows
        .iter()
        .map(|(_, r)| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [157, 156, 155]);
    let m = query::search(&table, "ROW 42 ", 0, 10).unwrap();
    assert_eq!(m.rows[0].1["id"], 42);
}

#[test]
fn a_truncated_or_garbage_parquet_file_is_an_error() {
    let file = parquet_file(2, 10);
    for bad in [
        file[..file.len() - 20].to_vec(),
        b"PAR1garbagePAR1".to_vec(),
        Vec::new(),
    ] {
        assert!(Table::open(Format::Parquet, Arc::new(MemSource::new(bad))).is_err());
    }
    // A footer that claims more than the file holds.
    let mut lying = file.clone();
    let n = lying.len();
    lying[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Table::open(Format::Parquet, Arc::new(MemSource::new(lying))).is_err());
}

#[test]
fn csv_and_json_lines_rows_and_types() {
    let csv = "a,b,c,d\n1,x,1.5,True\n2,,2,False\n";
    let t = Table::open(
        Format::Csv,
        Arc::new(MemSource::new(csv.as_bytes().to_vec())),
    )
    .unwrap();
    let kinds: Vec<_> = t
        .features()
        .iter()
        .map(|f| f.kind["dtype"].clone())
        .collect();
    assert_eq!(kinds, ["int64", "string", "float64", "bool"]);
    let rows = t.rows(0, 10).unwrap();
    assert_eq!(rows[1]["b"], serde_json::Value::Null);
    assert_eq!(rows[1]["c"], 2.0);
    assert_eq!(t.num_rows().unwrap(), 2);

    let jsonl = "{\"q\": \"hi\", \"n\": 1, \"tags\": [\"a\"]}\n\n{\"q\": \"yo\", \"n\": 2.5, \"extra\": {\"k\": true}}\n";
    let t = Table::open(
        Format::JsonLines,
        Arc::new(MemSource::new(jsonl.as_bytes().to_vec())),
    )
    .unwrap();
    let names: Vec<_> = t.features().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["q", "n", "tags", "extra"]);
    assert_eq!(t.features()[1].kind["dtype"], "float64");
    assert_eq!(t.features()[2].kind["_type"], "List");
    assert_eq!(t.rows(1, 1).unwrap()[0]["q"], "yo");

    let broken = "{\"q\": 1}\n{nope\n";
    let t = Table::open(
        Format::JsonLines,
        Arc::new(MemSource::new(broken.as_bytes().to_vec())),
    );
    let err = t.expect_err("a bad line is an error").to_string();
    assert!(err.contains("line 2"), "{err}");
}
