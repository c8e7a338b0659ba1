//! SentencePiece's `precompiled_charsmap` built from a table of per-character replacements,
//! for the `tokenizers` crate's `Precompiled` normalizer (what XLM-R's tokenizer.json holds).
//!
//! The format, as `spm_precompiled` reads it: a u32 byte length of the trie, the trie as a
//! darts-clone double array of u32 units, then the replacement strings, each ended by a NUL.
//! The trie maps a key's UTF-8 bytes to the offset of its replacement. In the double array,
//! the children of a node whose unit holds offset `o` at index `p` sit at `p ^ o ^ byte`, each
//! unit holding its byte as a label (bits 0-7), a has-leaf flag (bit 8) and its own offset
//! (bits 10-30); a node with a value has a leaf child at `p ^ o`, whose unit is the value with
//! bit 31 set (so its label never equals a byte).

use anyhow::{Result, bail};
use std::collections::BTreeMap;

const HAS_LEAF: u32 = 1 << 8;
const IS_LEAF: u32 = 1 << 31;
/// Offsets are stored in bits 10-30 (bit 9, which would scale them by 256, stays clear).
const MAX_OFFSET: usize = 1 << 21;

#[derive(Default)]
struct Node {
    children: BTreeMap<u8, usize>,
    value: Option<u32>,
}

/// The charsmap that replaces each `from` by its `to` (an empty `to` deletes it). `from`
/// must not be NUL (the trie stops at a NUL byte) and `to` must not contain one.
pub fn build(replacements: &[(char, String)]) -> Result<Vec<u8>> {
    let mut strings = Vec::new();
    let mut trie = vec![Node::default()];
    for (from, to) in replacements {
        if *from == '\0' || to.contains('\0') {
            bail!("a replacement of {from:?} by {to:?}: NUL has no place in a charsmap");
        }
        let mut node = 0;
        for byte in from.to_string().bytes() {
            node = match trie[node].children.get(&byte) {
                Some(&child) => child,
                None => {
                    trie.push(Node::default());
                    let child = trie.len() - 1;
                    trie[node].children.insert(byte, child);
                    child
                }
            };
        }
        if trie[node].value.is_some() {
            bail!("{from:?} is replaced twice");
        }
        trie[node].value = Some(strings.len() as u32);
        strings.extend(to.bytes());
        strings.push(0);
    }
    let units = double_array(&trie)?;
    let mut out = Vec::with_capacity(4 + units.len() * 4 + strings.len());
    out.extend(((units.len() * 4) as u32).to_le_bytes());
    units.iter().for_each(|u| out.extend(u.to_le_bytes()));
    out.extend(strings);
    Ok(out)
}

/// Lays the trie out as a double array, breadth first: for each node, the first base whose
/// child slots (`base ^ label`) are all free, every base used once (distinct bases are what
/// keep a lookup from reading another node's child as its own).
fn double_array(trie: &[Node]) -> Result<Vec<u32>> {
    let mut units: Vec<u32> = vec![0; 256];
    let mut used: Vec<bool> = vec![false; 256];
    let mut bases = std::collections::HashSet::new();
    used[0] = true; // the root
    // The lowest slot that may still be free: the search for a base starts there.
    let mut first_free = 1;
    let mut queue = std::collections::VecDeque::from([(0usize, 0usize)]);
    while let Some((node, at)) = queue.pop_front() {
        let n = &trie[node];
        let labels: Vec<u8> = n.value.map(|_| 0).into_iter().chain(n.children.keys().copied()).collect();
        if labels.is_empty() {
            continue;
        }
        while used[first_free] {
            first_free += 1;
        }
        // Slots are tried from the lowest free one; the base puts the first label there.
        let base = (first_free..)
            .filter(|&slot| !used.get(slot).copied().unwrap_or(false))
            .map(|slot| slot ^ usize::from(labels[0]))
            .find(|&base| {
                base != 0
                    && !bases.contains(&base)
                    && labels.iter().all(|&l| !used.get(base ^ usize::from(l)).copied().unwrap_or(false))
            })
            .expect("an unbounded search ends beyond the used slots");
        let offset = at ^ base;
        if offset >= MAX_OFFSET {
            bail!("the charsmap's trie is too large for a double array ({offset} ≥ {MAX_OFFSET})");
        }
        bases.insert(base);
        // Every byte a lookup may try from this node lands inside the array.
        let end = (base | 0xFF) + 1;
        if units.len() < end {
            units.resize(end, 0);
            used.resize(end, false);
        }
        units[at] |= (offset as u32) << 10 | if n.value.is_some() { HAS_LEAF } else { 0 };
        if let Some(value) = n.value {
            units[base] = IS_LEAF | value;
            used[base] = true;
        }
        for (&byte, &child) in &n.children {
            let slot = base ^ usize::from(byte);
            units[slot] = u32::from(byte);
            used[slot] = true;
            queue.push_back((child, slot));
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::normalizers::Precompiled;

    #[test]
    fn every_replacement_is_found_and_nothing_else() {
        // Keys of one to four UTF-8 bytes sharing prefixes, deletions and expansions.
        let mut table: Vec<(char, String)> = vec![
            ('\t', " ".into()),
            ('\u{a0}', " ".into()),
            ('\u{ad}', String::new()),
            ('\u{3000}', " ".into()),
            ('\u{ff21}', "A".into()),
            ('\u{fdfa}', "صلى الله عليه وسلم".into()),
            ('\u{1d400}', "A".into()),
            ('\u{2460}', "1".into()),
        ];
        table.extend(
            (0xff10..0xff1a)
                .map(|c| (char::from_u32(c).unwrap(), char::from_u32(c - 0xff10 + 0x30).unwrap().to_string())),
        );
        let p = Precompiled::from(&build(&table).unwrap()).unwrap();
        for (from, to) in &table {
            assert_eq!(p.transform(&from.to_string()), Some(to.as_str()), "{from:?}");
        }
        for other in ['a', ' ', 'é', '中', '\u{ff20}', '\u{1d401}', '\u{2461}', '😀', '\u{ff}'] {
            assert_eq!(p.transform(&other.to_string()), None, "{other:?}");
        }
        // Every byte value after every prefix stays inside the array.
        for c in (0..0x11_0000).filter_map(char::from_u32).step_by(7) {
            let _ = p.transform(&c.to_string());
        }
        assert_eq!(p.normalize_string("Ａ\u{3000}１\u{ad}２"), "A 12");
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(build(&[('a', "x".into()), ('a', "y".into())]).unwrap_err().to_string().contains("twice"));
        assert!(build(&[('a', "\0".into())]).is_err());
        assert!(build(&[]).is_ok());
    }
}
