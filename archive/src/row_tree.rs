//! The Merkle tree over the rows of one events file, whose root the manifest record names
//! (`rows_root`): one event is then proven with its row, a path to that root, and the
//! record's path to a signed checkpoint. Specified in `archive/FORMAT.md` §8.
//!
//! A row's leaf is RFC 6962's leaf hash of its canonical encoding: the SHA-256 of the file's
//! column names (each followed by a newline), which binds every value to its column, then
//! each column's value in order: `0x00` null; `0x01` u32 length and UTF-8 bytes; `0x02` a
//! 64-bit big-endian integer (Int32 and Timestamp(µs) alike); `0x03` u32 count and that many
//! values (a list). The same bytes come from the row as JSON (strings, integers, arrays,
//! null), so a verifier needs no Arrow. (The names are hashed once per file, not per row:
//! spelled out in every row they were 40% of the bytes hashed.)

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, TimestampMicrosecondType};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::merkle::{self, Hash};
use crate::tlog::Edge;

/// Rows per leaf group: the file's tree is built from perfect subtrees of this many rows,
/// whose roots the Parquet footer keeps, so proving one row reads one group only.
pub const LEAF_GROUP_ROWS: u64 = 1 << 16;
/// Parquet key-value metadata key holding the group roots (base64, 32 bytes each).
pub const GROUP_ROOTS_KEY: &str = "auditlake.row_group_roots";

/// Why rows could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("row tree: {0}")]
pub struct RowTreeError(pub String);

/// A column read once per batch, in the shape its encoding needs.
enum Column<'a> {
    Utf8(&'a arrow::array::StringArray),
    Int32(&'a arrow::array::PrimitiveArray<Int32Type>),
    Micros(&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>),
    Utf8List(&'a arrow::array::ListArray, &'a arrow::array::StringArray),
}

fn columns(batch: &RecordBatch) -> Result<Vec<(&str, Column<'_>)>, RowTreeError> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| column(field.name(), array).map(|c| (field.name().as_str(), c)))
        .collect()
}

fn column<'a>(name: &str, array: &'a ArrayRef) -> Result<Column<'a>, RowTreeError> {
    Ok(match array.data_type() {
        DataType::Utf8 => Column::Utf8(array.as_string::<i32>()),
        DataType::Int32 => Column::Int32(array.as_primitive::<Int32Type>()),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
            Column::Micros(array.as_primitive::<TimestampMicrosecondType>())
        }
        DataType::List(item) if item.data_type() == &DataType::Utf8 => {
            let list = array.as_list::<i32>();
            Column::Utf8List(list, list.values().as_string::<i32>())
        }
        other => {
            return Err(RowTreeError(format!(
                "column {name} has type {other}, which rows are not hashed for"
            )));
        }
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(0x01);
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    out.push(0x02);
    out.extend_from_slice(&v.to_be_bytes());
}

/// SHA-256 of the column names, each followed by a newline.
fn columns_digest<'a>(names: impl Iterator<Item = &'a str>) -> Hash {
    let mut h = Sha256::new();
    for name in names {
        h.update(name.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

fn encode_row(cols: &[(&str, Column<'_>)], digest: &Hash, row: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(digest);
    for (_, c) in cols {
        match c {
            Column::Utf8(a) if a.is_valid(row) => put_str(out, a.value(row)),
            Column::Int32(a) if a.is_valid(row) => put_int(out, i64::from(a.value(row))),
            Column::Micros(a) if a.is_valid(row) => put_int(out, a.value(row)),
            Column::Utf8List(list, values) if list.is_valid(row) => {
                let offsets = list.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                out.push(0x03);
                out.extend_from_slice(&((end - start) as u32).to_be_bytes());
                for i in start..end {
                    if values.is_valid(i) {
                        put_str(out, values.value(i));
                    } else {
                        out.push(0x00);
                    }
                }
            }
            _ => out.push(0x00),
        }
    }
}

/// The leaf hashes of every row of `batch`, appended to `out`.
pub fn row_leaves(batch: &RecordBatch, out: &mut Vec<Hash>) -> Result<(), RowTreeError> {
    let cols = columns(batch)?;
    let digest = columns_digest(cols.iter().map(|(name, _)| *name));
    let mut buf = Vec::with_capacity(2048);
    out.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        encode_row(&cols, &digest, row, &mut buf);
        out.push(merkle::leaf_hash(&buf));
    }
    Ok(())
}

/// Row `row` of `batch` as `[name, value]` pairs in column order (the proof's form).
pub fn row_json(batch: &RecordBatch, row: usize) -> Result<serde_json::Value, RowTreeError> {
    use serde_json::Value;
    let cols = columns(batch)?;
    let pairs = cols
        .iter()
        .map(|(name, c)| {
            let v = match c {
                Column::Utf8(a) if a.is_valid(row) => Value::from(a.value(row)),
                Column::Int32(a) if a.is_valid(row) => Value::from(a.value(row)),
                Column::Micros(a) if a.is_valid(row) => Value::from(a.value(row)),
                Column::Utf8List(list, values) if list.is_valid(row) => {
                    let offsets = list.value_offsets();
                    Value::Array(
                        (offsets[row] as usize..offsets[row + 1] as usize)
                            .map(|i| {
                                if values.is_valid(i) {
                                    Value::from(values.value(i))
                                } else {
                                    Value::Null
                                }
                            })
                            .collect(),
                    )
                }
                _ => Value::Null,
            };
            Value::Array(vec![Value::from(*name), v])
        })
        .collect();
    Ok(Value::Array(pairs))
}

fn encode_json_value(v: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), RowTreeError> {
    use serde_json::Value;
    match v {
        Value::Null => out.push(0x00),
        Value::String(s) => put_str(out, s),
        Value::Number(n) => put_int(
            out,
            n.as_i64()
                .ok_or_else(|| RowTreeError(format!("{n} is not a 64-bit integer")))?,
        ),
        Value::Array(items) => {
            out.push(0x03);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                if item.is_array() {
                    return Err(RowTreeError("a list inside a list".into()));
                }
                encode_json_value(item, out)?;
            }
        }
        other => return Err(RowTreeError(format!("{other} is not a column value"))),
    }
    Ok(())
}

/// The leaf hash of a row given as `[name, value]` pairs ([`row_json`]'s form).
pub fn json_leaf(row: &serde_json::Value) -> Result<Hash, RowTreeError> {
    let pairs = row
        .as_array()
        .ok_or_else(|| RowTreeError("the row is not a list of [name, value] pairs".into()))?;
    let mut names = Vec::with_capacity(pairs.len());
    let mut values = Vec::new();
    for pair in pairs {
        let (Some(name), Some(value)) = (
            pair.get(0).and_then(|n| n.as_str()),
            pair.get(1)
                .filter(|_| pair.as_array().is_some_and(|p| p.len() == 2)),
        ) else {
            return Err(RowTreeError(format!("{pair} is not a [name, value] pair")));
        };
        names.push(name);
        encode_json_value(value, &mut values)?;
    }
    let mut buf = columns_digest(names.into_iter()).to_vec();
    buf.extend_from_slice(&values);
    Ok(merkle::leaf_hash(&buf))
}

/// Builds the tree of one file's rows as they are written: memory stays one group's edge
/// and one root per group.
#[derive(Debug, Default, Clone)]
pub struct RowTree {
    group: Edge,
    group_roots: Vec<Hash>,
}

impl RowTree {
    /// Adds the leaves of the next rows.
    pub fn extend(&mut self, leaves: &[Hash]) {
        let mut sink = Vec::new();
        for leaf in leaves {
            self.group.push(*leaf, &mut sink);
            sink.clear();
            if self.group.size() == LEAF_GROUP_ROWS {
                self.group_roots.push(self.group.root());
                self.group = Edge::default();
            }
        }
    }

    /// The root over every row, and the group roots for the file's footer.
    pub fn finish(mut self) -> (Hash, Vec<Hash>) {
        if self.group.size() > 0 {
            self.group_roots.push(self.group.root());
        }
        (nodes_root(&self.group_roots), self.group_roots)
    }
}

/// The RFC 6962 root over `nodes` standing for consecutive perfect subtrees of one height
/// (the last may be smaller): the file root over its group roots.
pub fn nodes_root(nodes: &[Hash]) -> Hash {
    merkle::root(nodes.len() as u64, &mut merkle::over(nodes))
}

/// The group roots as kept in the footer.
pub fn encode_group_roots(roots: &[Hash]) -> String {
    B64.encode(roots.concat())
}

/// The group roots read back from the footer.
pub fn decode_group_roots(text: &str) -> Option<Vec<Hash>> {
    let raw = B64.decode(text).ok()?;
    if raw.len() % 32 != 0 {
        return None;
    }
    Some(
        raw.chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect(),
    )
}

/// The inclusion path of row `index` of a file of `rows` rows: its path inside its group
/// (from the group's leaves), then the group's path among the group roots. Together they
/// are RFC 6962's path in the tree over all rows, because groups are perfect subtrees.
pub fn row_path(index: u64, rows: u64, group_leaves: &[Hash], group_roots: &[Hash]) -> Vec<Hash> {
    let g = index / LEAF_GROUP_ROWS;
    let within = index % LEAF_GROUP_ROWS;
    let mut path = merkle::inclusion_proof(
        within,
        group_leaves.len() as u64,
        &mut merkle::over(group_leaves),
    );
    let groups = rows.div_ceil(LEAF_GROUP_ROWS);
    path.extend(merkle::inclusion_proof(
        g,
        groups,
        &mut merkle::over(group_roots),
    ));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_path_is_the_rfc_6962_path_over_all_rows() {
        // Three groups and a bit, small groups standing in: the shapes are the same.
        let rows = 2 * LEAF_GROUP_ROWS + 70;
        let leaves: Vec<Hash> = (0..rows)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        let mut tree = RowTree::default();
        tree.extend(&leaves[..1000]);
        tree.extend(&leaves[1000..]);
        let (root, groups) = tree.finish();
        assert_eq!(groups.len(), 3);
        let mut from_leaves = merkle::over(&leaves);
        assert_eq!(root, merkle::root(rows, &mut from_leaves));
        for index in [0, 5, LEAF_GROUP_ROWS - 1, LEAF_GROUP_ROWS + 3, rows - 1] {
            let g = (index / LEAF_GROUP_ROWS) as usize;
            let lo = g * LEAF_GROUP_ROWS as usize;
            let hi = (lo + LEAF_GROUP_ROWS as usize).min(rows as usize);
            let path = row_path(index, rows, &leaves[lo..hi], &groups);
            assert_eq!(path, merkle::inclusion_proof(index, rows, &mut from_leaves));
            assert!(merkle::verify_inclusion(
                index,
                rows,
                &leaves[index as usize],
                &path,
                &root
            ));
        }
    }
}
