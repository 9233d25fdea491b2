//! A collector that gathers every match with its key and sort value, for sorting in Rust
//! (see the parent module's docs for why).

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, TantivyError};

/// Which fast field to sort by.
#[derive(Debug, Clone, Copy)]
pub(super) enum SortValue {
    /// No value: every hit gets 0, so the order is by key alone.
    None,
    U64(&'static str),
    /// Mapped to `u64` preserving order.
    I64(&'static str),
}

#[derive(Debug)]
pub(super) struct Hit {
    /// Larger sorts first.
    pub value: u64,
    pub key: String,
    pub address: DocAddress,
}

pub(super) struct SortCollector {
    pub key: &'static str,
    pub value: SortValue,
}

enum ValueColumn {
    None,
    U64(Column<u64>),
    I64(Column<i64>),
}

pub(super) struct SegmentSortCollector {
    segment: SegmentOrdinal,
    keys: StrColumn,
    values: ValueColumn,
    hits: Vec<Hit>,
    /// A document without a key (never written by us) or a dictionary read error.
    error: Option<String>,
}

impl Collector for SortCollector {
    type Fruit = Vec<Hit>;
    type Child = SegmentSortCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        let fast = reader.fast_fields();
        let keys = fast
            .str(self.key)?
            .ok_or_else(|| TantivyError::SchemaError(format!("fast field {} missing", self.key)))?;
        let values = match self.value {
            SortValue::None => ValueColumn::None,
            SortValue::U64(name) => ValueColumn::U64(fast.u64(name)?),
            SortValue::I64(name) => ValueColumn::I64(fast.i64(name)?),
        };
        Ok(SegmentSortCollector {
            segment,
            keys,
            values,
            hits: Vec::new(),
            error: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<tantivy::Result<Vec<Hit>>>) -> tantivy::Result<Vec<Hit>> {
        let mut all = Vec::with_capacity(fruits.iter().flatten().map(Vec::len).sum());
        for fruit in fruits {
            all.extend(fruit?);
        }
        Ok(all)
    }
}

impl SegmentCollector for SegmentSortCollector {
    type Fruit = tantivy::Result<Vec<Hit>>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if self.error.is_some() {
            return;
        }
        let Some(ord) = self.keys.term_ords(doc).next() else {
            self.error = Some(format!("document {doc} has no key"));
            return;
        };
        let mut key = String::new();
        match self.keys.ord_to_str(ord, &mut key) {
            Ok(true) => {}
            Ok(false) => {
                self.error = Some(format!("key ordinal {ord} not in dictionary"));
                return;
            }
            Err(e) => {
                self.error = Some(format!("read key dictionary: {e}"));
                return;
            }
        }
        let value = match &self.values {
            ValueColumn::None => 0,
            ValueColumn::U64(column) => column.first(doc).unwrap_or(0),
            ValueColumn::I64(column) => column.first(doc).map_or(0, order_preserving),
        };
        self.hits.push(Hit {
            value,
            key,
            address: DocAddress::new(self.segment, doc),
        });
    }

    fn harvest(self) -> Self::Fruit {
        match self.error {
            Some(e) => Err(TantivyError::InternalError(e)),
            None => Ok(self.hits),
        }
    }
}

/// Maps `i64` to `u64` keeping the order (`i64::MIN` → 0).
fn order_preserving(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::order_preserving;

    #[test]
    fn i64_order_is_kept() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in values.windows(2) {
            assert!(order_preserving(pair[0]) < order_preserving(pair[1]));
        }
    }
}
