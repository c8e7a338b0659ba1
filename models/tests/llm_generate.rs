//! The generation loop on a tiny synthetic GGUF decoder (runs everywhere, no fetch): the
//! tokenizer and chat template rebuilt from the file, greedy decoding with the KV cache
//! against recomputing every step from scratch, reuse of a cached prefix, seeded sampling,
//! and the limits of the context.

use tandem_models::llm::sampling::{SamplingParams, argmax};
use tandem_models::llm::{Finish, GenerateRequest, Llm, Message};
use tandem_models::testing::{TINY_LLAMA_CONTEXT, tiny_llama_gguf};
use tandem_models::{BackendChoice, Device};
use tandem_runtime::weights::gguf;

fn tiny_llm() -> (tempfile::TempDir, Llm) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let (metadata, tensors) = tiny_llama_gguf();
    std::fs::write(&path, gguf::to_bytes(&metadata, &tensors, 32).unwrap()).unwrap();
    let llm = Llm::load(&path, &Device::open_blocking(BackendChoice::Cpu).unwrap()).unwrap();
    (dir, llm)
}

fn request(prompt_ids: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt_ids, max_tokens, sampling: SamplingParams::default(), ignore_eos: true, top_logits: 3 }
}

#[test]
fn the_tokenizer_and_template_come_from_the_file() {
    let (_dir, llm) = tiny_llm();
    // Bytes are tokens (no merges); the special token's text is one token wherever it is.
    let ids = llm.tokenizer.encode("hé <|im_end|>x").unwrap();
    assert_eq!(ids, [104, 195, 169, 32, 258, 120]);
    assert_eq!(llm.tokenizer.decode(&ids).unwrap(), "hé x");
    assert!(llm.tokenizer.is_end_of_generation(258));
    assert!(llm.tokenizer.is_end_of_generation(256), "<|endoftext|> ends a generation too");
    assert!(!llm.tokenizer.is_end_of_generation(257));
    let prompt = llm.chat_prompt(&[Message::new("user", "hi")]).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    // A character split over two tokens streams out whole, with the second.
    let mut stream = llm.tokenizer.stream();
    assert_eq!(stream.push(195).unwrap(), "");
    assert_eq!(stream.push(169).unwrap(), "é");
    assert_eq!(stream.push(33).unwrap(), "!");
}

#[test]
fn greedy_decoding_with_the_cache_matches_recomputing_every_step() {
    let (_dir, llm) = tiny_llm();
    let prompt = llm.tokenizer.encode("red shoes").unwrap();
    let mut seq = llm.new_sequence(32).unwrap();
    let mut pieces = String::new();
    let generation = llm
        .generate(&mut seq, &request(prompt.clone(), 12), &mut |p| {
            pieces.push_str(p);
            Ok(())
        })
        .unwrap();
    assert_eq!(generation.ids.len(), 12);
    assert_eq!(generation.finish, Finish::Length);
    assert_eq!(pieces, generation.text, "the streamed pieces make the text");
    let mut context = prompt.clone();
    for (i, &id) in generation.ids.iter().enumerate() {
        let mut fresh = llm.new_sequence(32).unwrap();
        let logits = llm.feed(&mut fresh, &context).unwrap();
        assert_eq!(argmax(&logits), id, "token {i}: the cached run chose {id}");
        if i == 0 {
            let best: Vec<u32> = generation.first_top.iter().map(|&(id, _)| id).collect();
            assert_eq!(best[0], id);
            assert_eq!(best.len(), 3);
        }
        context.push(id);
    }
    // The same request again reuses the cached prompt and gives the same tokens.
    let again = llm.generate(&mut seq, &request(prompt, 12), &mut |_| Ok(())).unwrap();
    assert_eq!(again.ids, generation.ids);
}

#[test]
fn a_seed_fixes_the_sample_and_eos_stops_it() {
    let (_dir, llm) = tiny_llm();
    let prompt = llm.tokenizer.encode("query: running shoes").unwrap();
    let sampled = |seed| {
        let mut req = request(prompt.clone(), 16);
        req.sampling = SamplingParams { temperature: 1.5, top_k: 40, top_p: 0.95, seed, ..Default::default() };
        let mut seq = llm.new_sequence(40).unwrap();
        llm.generate(&mut seq, &req, &mut |_| Ok(())).unwrap().ids
    };
    assert_eq!(sampled(3), sampled(3));
    assert_ne!(sampled(3), sampled(4));
    // Stopping at end-of-generation: find a run that emits one when not ignored.
    let mut req = request(prompt.clone(), 16);
    req.ignore_eos = false;
    req.sampling = SamplingParams { temperature: 1.0, ..Default::default() };
    for seed in 0..200 {
        req.sampling.seed = seed;
        let mut seq = llm.new_sequence(40).unwrap();
        let g = llm.generate(&mut seq, &req, &mut |_| Ok(())).unwrap();
        if g.finish == Finish::EndOfGeneration {
            assert!(llm.tokenizer.is_end_of_generation(*g.ids.last().unwrap()));
            assert!(g.ids[..g.ids.len() - 1].iter().all(|&id| !llm.tokenizer.is_end_of_generation(id)));
            return;
        }
        assert_eq!(g.ids.len(), 16);
    }
    panic!("no seed of 200 sampled an end-of-generation token");
}

#[test]
fn the_context_bounds_the_sequence() {
    let (_dir, llm) = tiny_llm();
    assert_eq!(llm.config.context, TINY_LLAMA_CONTEXT);
    let e = llm.new_sequence(TINY_LLAMA_CONTEXT + 1).err().unwrap().to_string();
    assert!(e.contains("context of 128"), "{e}");
    let mut seq = llm.new_sequence(16).unwrap();
    let e = llm.generate(&mut seq, &request(vec![65; 10], 8), &mut |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("need 18 positions") && e.contains("16"), "{e}");
    let e = llm.feed(&mut seq, &[100_000]).unwrap_err().to_string();
    assert!(e.contains("past the vocabulary"), "{e}");
}

#[test]
fn sequences_in_one_batch_give_what_they_give_alone() {
    let (_dir, llm) = tiny_llm();
    let prompts: Vec<Vec<u32>> =
        ["a", "blue denim jacket", "xyz 42"].iter().map(|t| llm.tokenizer.encode(t).unwrap()).collect();
    let mut batch = llm.new_cache(3, 24).unwrap();
    let mut feeds = prompts.clone();
    // Slot 1 waits a step: a slot with nothing new is skipped.
    feeds[1].clear();
    let first = llm.feed_batch(&mut batch, &feeds).unwrap();
    assert!(first[1].is_empty());
    let second = llm.feed_batch(&mut batch, &[vec![7], prompts[1].clone(), vec![9]]).unwrap();
    for (slot, (ids, got)) in [
        ([prompts[0].clone(), vec![7]].concat(), &second[0]),
        (prompts[1].clone(), &second[1]),
        ([prompts[2].clone(), vec![9]].concat(), &second[2]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut alone = llm.new_sequence(24).unwrap();
        let want = llm.feed(&mut alone, &ids).unwrap();
        let diff = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "slot {slot}: batched logits differ by {diff}");
        assert_eq!(batch.cached(slot), ids.as_slice());
    }
    let e = llm.feed_batch(&mut batch, &[vec![1]]).unwrap_err().to_string();
    assert!(e.contains("1 feeds and 1 sampling rows for a cache of 3 slots"), "{e}");
}

#[test]
fn a_prefix_copied_to_another_slot_continues_as_if_computed_there() {
    let (_dir, llm) = tiny_llm();
    let shared = llm.tokenizer.encode("query: red running shoes; item: ").unwrap();
    let item = llm.tokenizer.encode("trail sneaker").unwrap();
    let mut cache = llm.new_cache(3, 64).unwrap();
    // Slot 2 computes the whole prompt itself; slot 0 the prefix, copied to slot 1.
    let full: Vec<u32> = shared.iter().chain(&item).copied().collect();
    let want = llm.feed_batch(&mut cache, &[Vec::new(), Vec::new(), full.clone()]).unwrap().remove(2);
    llm.feed(&mut cache, &shared).unwrap();
    llm.copy_prefix(&mut cache, 0, 1, shared.len()).unwrap();
    assert_eq!(cache.cached(1), &shared[..]);
    let got = llm.feed_batch(&mut cache, &[Vec::new(), item.clone(), Vec::new()]).unwrap().remove(1);
    assert_eq!(cache.cached(1), &full[..]);
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "logits after a copied prefix differ by {diff}");
    // Copies that make no sense are refused.
    assert!(llm.copy_prefix(&mut cache, 0, 0, 1).is_err());
    assert!(llm.copy_prefix(&mut cache, 0, 3, 1).is_err());
    assert!(llm.copy_prefix(&mut cache, 0, 1, shared.len() + 1).is_err());
}
