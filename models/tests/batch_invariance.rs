//! A sequence's logits are the same bits however it is run: its whole prompt at once, the
//! prompt's last tokens after a cached (or copied) prefix, or beside other sequences in one
//! batch. Without this, a server's greedy text would depend on its load and on its prefix
//! cache (8-bit activations turn any reordered f32 sum into flipped roundings, which grow
//! through the layers: 0.54 on SmolLM2's logits before the kernels were made invariant).
//! On the CPU's default path (integer dot products, causal attention row by row).

use tandem_models::BackendChoice;
use tandem_models::llm::Llm;

#[test]
fn smollm2_rows_do_not_depend_on_the_batch() {
    let llm = Llm::open("smollm2", BackendChoice::Cpu, false).unwrap();
    let ids = llm.tokenizer.encode("Name three things to pack for a beach holiday, in a list of single words").unwrap();
    let other = llm.tokenizer.encode("Waterproof hiking boots for men, size 10, brown leather").unwrap();
    let n = ids.len();
    let mut cache = llm.new_cache(3, 128).unwrap();
    let whole = llm.feed_batch(&mut cache, &[ids.clone(), Vec::new(), Vec::new()]).unwrap().remove(0);
    for split in [n - 1, n / 2, 1] {
        // Slot 1: the prefix alone, then the rest beside another sequence's prompt in slot 2.
        cache.truncate(1, 0);
        cache.truncate(2, 0);
        llm.feed_batch(&mut cache, &[Vec::new(), ids[..split].to_vec(), Vec::new()]).unwrap();
        let mut feeds = vec![Vec::new(), ids[split..].to_vec(), other.clone()];
        let parts = llm.feed_batch(&mut cache, &feeds).unwrap();
        assert!(parts[1] == whole, "split at {split} of {n}: the logits differ from the whole prompt's");
        // And a copied prefix continues alike.
        llm.copy_prefix(&mut cache, 1, 2, split).unwrap();
        feeds[1].clear();
        feeds[2] = ids[split..].to_vec();
        let copied = llm.feed_batch(&mut cache, &feeds).unwrap();
        assert!(copied[2] == whole, "split at {split} of {n}: a copied prefix gives other logits");
    }
}
