//! RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs.
//!
//! Proof *generation* asks for hashes of perfect subtrees (a node at `level`, `index`:
//! leaves `index << level .. (index + 1) << level`), which the caller reads from tiles;
//! [`needed_nodes`] lists them first so an async caller can fetch them all, then runs the
//! same function on the fetched map. Proof *verification* needs nothing but the proof.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A perfect subtree: `(level, index)`, covering leaves `index << level .. (index + 1) << level`.
pub type NodeId = (u8, u64);

/// The hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The hash of a perfect subtree over `2^k` consecutive nodes of one height.
pub fn perfect_root(nodes: &[Hash]) -> Hash {
    debug_assert!(nodes.len().is_power_of_two());
    let mut layer: Vec<Hash> = nodes.to_vec();
    while layer.len() > 1 {
        layer = layer.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    layer.first().copied().unwrap_or_else(empty_root)
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The perfect subtrees that make up leaves `lo..hi`, largest first. Every range a proof
/// or a root asks for starts at a multiple of a power of two at least its length (it comes
/// from splitting `0..n` at powers of two), so its hash is these folded from the right.
fn perfect_parts(lo: u64, hi: u64) -> Vec<NodeId> {
    let mut parts = Vec::new();
    let mut start = lo;
    let mut rest = hi - lo;
    while rest > 0 {
        let level = 63 - rest.leading_zeros() as u8;
        parts.push((level, start >> level));
        start += 1u64 << level;
        rest -= 1u64 << level;
    }
    parts
}

/// The hash of consecutive perfect subtrees, left to right and largest first, as RFC 6962
/// joins them: folded from the right. The empty tree's root when there are none.
pub fn fold_right(parts: impl DoubleEndedIterator<Item = Hash>) -> Hash {
    let mut iter = parts.rev();
    let Some(mut acc) = iter.next() else {
        return empty_root();
    };
    for p in iter {
        acc = node_hash(&p, &acc);
    }
    acc
}

/// The hash of leaves `lo..hi` (`lo < hi`, `lo` aligned as in [`perfect_parts`]).
fn range_hash(lo: u64, hi: u64, node: &mut dyn FnMut(NodeId) -> Hash) -> Hash {
    let parts: Vec<Hash> = perfect_parts(lo, hi).into_iter().map(node).collect();
    fold_right(parts.into_iter())
}

/// The root of a tree of `size` leaves.
pub fn root(size: u64, node: &mut dyn FnMut(NodeId) -> Hash) -> Hash {
    if size == 0 {
        return empty_root();
    }
    range_hash(0, size, node)
}

/// RFC 9162 §2.1.3.1: the audit path of leaf `index` in the tree of leaves `lo..hi`.
fn path(index: u64, lo: u64, hi: u64, node: &mut dyn FnMut(NodeId) -> Hash, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        path(index, lo, lo + k, node, out);
        out.push(range_hash(lo + k, hi, node));
    } else {
        path(index - k, lo + k, hi, node, out);
        out.push(range_hash(lo, lo + k, node));
    }
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(index: u64, size: u64, node: &mut dyn FnMut(NodeId) -> Hash) -> Vec<Hash> {
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, node, &mut out);
    }
    out
}

/// RFC 9162 §2.1.4.1: SUBPROOF(m, D[lo:hi], b).
fn subproof(
    m: u64,
    lo: u64,
    hi: u64,
    complete: bool,
    node: &mut dyn FnMut(NodeId) -> Hash,
    out: &mut Vec<Hash>,
) {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(range_hash(lo, hi, node));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, complete, node, out);
        out.push(range_hash(lo + k, hi, node));
    } else {
        subproof(m - k, lo + k, hi, false, node, out);
        out.push(range_hash(lo, lo + k, node));
    }
}

/// The consistency proof from the tree of `old` leaves to the tree of `new` leaves.
pub fn consistency_proof(old: u64, new: u64, node: &mut dyn FnMut(NodeId) -> Hash) -> Vec<Hash> {
    let mut out = Vec::new();
    if 0 < old && old < new {
        subproof(old, 0, new, true, node, &mut out);
    }
    out
}

/// The perfect subtrees `f` asks for, to be fetched before running it for real.
pub fn needed_nodes(f: impl FnOnce(&mut dyn FnMut(NodeId) -> Hash)) -> Vec<NodeId> {
    let mut wanted = Vec::new();
    f(&mut |id| {
        wanted.push(id);
        [0u8; 32]
    });
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

/// A node lookup over consecutive nodes of one height held in memory: node `(level, i)` is
/// the perfect subtree over `nodes[i << level .. (i + 1) << level]`.
pub fn over(nodes: &[Hash]) -> impl FnMut(NodeId) -> Hash + '_ {
    move |(level, index)| {
        let lo = (index << level) as usize;
        perfect_root(&nodes[lo..lo + (1usize << level)])
    }
}

/// A SHA-256 written as hex (the manifest's form), or `None` when it is not one.
pub fn hash_from_hex(text: &str) -> Option<Hash> {
    hex::decode(text).ok()?.try_into().ok()
}

/// A node lookup over fetched hashes; a node that was not fetched is a bug of the caller
/// (it fetched [`needed_nodes`] of the same call), answered with zeros so the proof fails.
pub fn lookup(fetched: &HashMap<NodeId, Hash>) -> impl FnMut(NodeId) -> Hash + '_ {
    move |id| fetched.get(&id).copied().unwrap_or([0u8; 32])
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `leaf` at `index` in the tree of `size`
/// leaves whose root is `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree of `old` leaves with root `old_root`
/// is a prefix of the tree of `new` leaves with root `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        // Every tree extends the empty one.
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's MTH, written straight from its definition: the oracle.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn from_leaves(all: &[Hash]) -> impl FnMut(NodeId) -> Hash + '_ {
        move |(level, index)| {
            let lo = (index << level) as usize;
            mth(&all[lo..lo + (1usize << level)])
        }
    }

    #[test]
    fn roots_match_the_definition() {
        let all = leaves(70);
        for n in 0..=70u64 {
            assert_eq!(
                root(n, &mut from_leaves(&all)),
                mth(&all[..n as usize]),
                "n={n}"
            );
        }
    }

    #[test]
    fn the_empty_root_is_rfc_6962s() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn inclusion_proofs_verify_and_reject_anything_else() {
        let all = leaves(41);
        for n in 1..=40u64 {
            let r = mth(&all[..n as usize]);
            for i in 0..n {
                let p = inclusion_proof(i, n, &mut from_leaves(&all));
                assert!(
                    verify_inclusion(i, n, &all[i as usize], &p, &r),
                    "{i} in {n}"
                );
                // Another leaf, another index, another root: rejected.
                let other = leaf_hash(b"other");
                assert!(!verify_inclusion(i, n, &other, &p, &r));
                if n > 1 {
                    assert!(!verify_inclusion((i + 1) % n, n, &all[i as usize], &p, &r));
                }
                let bigger = mth(&all[..n as usize + 1]);
                assert!(!verify_inclusion(i, n + 1, &all[i as usize], &p, &bigger));
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject_a_rewritten_history() {
        let all = leaves(40);
        let mut forged = all.clone();
        forged[3] = leaf_hash(b"rewritten");
        for new in 1..=40u64 {
            let new_root = mth(&all[..new as usize]);
            for old in 1..=new {
                let old_root = mth(&all[..old as usize]);
                let p = consistency_proof(old, new, &mut from_leaves(&all));
                assert!(
                    verify_consistency(old, new, &old_root, &new_root, &p),
                    "{old} -> {new}"
                );
                if old > 3 && old < new {
                    let forged_root = mth(&forged[..old as usize]);
                    assert!(!verify_consistency(old, new, &forged_root, &new_root, &p));
                }
                if old < new {
                    assert!(!verify_consistency(old, new, &old_root, &old_root, &p));
                }
            }
        }
    }

    #[test]
    fn needed_nodes_are_all_a_proof_reads() {
        let all = leaves(37);
        let wanted = needed_nodes(|node| {
            inclusion_proof(5, 37, node);
        });
        let fetched: HashMap<NodeId, Hash> = wanted
            .iter()
            .map(|&id| (id, from_leaves(&all)(id)))
            .collect();
        let p = inclusion_proof(5, 37, &mut lookup(&fetched));
        assert!(verify_inclusion(5, 37, &all[5], &p, &mth(&all)));
    }
}
