//! The request bodies `tandem serve` accepts, taken as far as their handlers take them before
//! a model is needed: the entry point of the `http_bodies` fuzz target (fuzz/), which has no
//! model to serve. The handlers need one early (their state holds the encoder, the batcher
//! and the decoder), so instead of a router this runs each route's own parts on the body:
//! the body limit, [`api::parse_json`] into the route's request type, and the route's checks
//! that need no model, with the limits of the default configuration.
//!
//! - `/embed`, `/v1/embeddings`, `/rerank`: the request types and their inputs (the
//!   remaining checks compare fields with the model's id and dimension);
//! - `/relevance`: [`relevance::check_request`] (every item parsed), then the EBRM pipeline
//!   with a model-free encoder: entity extraction, constraints, aggregation, the
//!   interventions, the response lines and the rule plugins' view of the items;
//! - `/v1/chat/completions`, `/v1/completions`: the messages and prompts, then the sampling
//!   and length checks ([`PlanLimits::plan`]) with one token per prompt byte;
//! - `/grade`: the items' texts; `/suggest`: the request type.
//!
//! A refusal is the status and message the route would answer with.

use super::api::{self, EmbedRequest, OpenAiRequest, RerankRequest};
use super::config::Config;
use super::errors::ApiError;
use super::llm::{ChatRequest, CompletionRequest, GradeRequest, Kind, PlanLimits, SuggestRequest, chat_messages};
use super::relevance::{RelevanceRequest, check_request};
use std::sync::LazyLock;
use tandem_ebrm::cli::ranking_lines;
use tandem_ebrm::encoder::NgramEncoder;
use tandem_ebrm::entities::Extractor;
use tandem_ebrm::rules::{candidates, plugin_query};
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, Logic};

/// The routes [`check_body`] knows, each with a JSON body.
pub const ROUTES: &[&str] = &[
    "/embed",
    "/v1/embeddings",
    "/rerank",
    "/relevance",
    "/v1/chat/completions",
    "/v1/completions",
    "/grade",
    "/suggest",
];

/// Checks `body` as `route`'s handler would before its model: `Err` holds the HTTP status and
/// message of the refusal. Panics only on a bug (which is what the fuzz target looks for).
pub fn check_body(route: &str, body: &[u8]) -> Result<(), (u16, String)> {
    check(route, body).map_err(|e| (e.status.as_u16(), e.message))
}

static CONFIG: LazyLock<Config> = LazyLock::new(Config::default);

/// `/relevance`'s pipeline on a hashed-trigram encoder, with a few brands to find in titles.
static ENGINE: LazyLock<Ebrm<NgramEncoder>> = LazyLock::new(|| {
    let brand = |name: &str, aliases: &[&str], nsi: &str| Brand {
        name: name.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        nsi: vec![nsi.into()],
    };
    let brands = BrandList {
        version: "fuzz".into(),
        brands: vec![
            brand("Nike", &[], "shop/shoes"),
            brand("Adidas", &[], "shop/shoes"),
            brand("Apple", &["Apple Inc"], "shop/electronics"),
            brand("Le Creuset", &[], "shop/houseware"),
        ],
    };
    let extractor = Extractor::new(&brands).expect("the fuzz brand list is valid");
    Ebrm::new(NgramEncoder::new(64), extractor, CategorySearch::Keywords)
});

fn check(route: &str, body: &[u8]) -> Result<(), ApiError> {
    let config = &*CONFIG;
    let limit = config.server.max_body_bytes;
    if body.len() > limit {
        return Err(ApiError::too_large(format!("the request body is larger than the limit of {limit} bytes")));
    }
    match route {
        "/embed" => {
            let body: EmbedRequest = api::parse_json(body)?;
            count(body.inputs.into_vec().len(), "inputs")
        }
        "/v1/embeddings" => {
            let body: OpenAiRequest = api::parse_json(body)?;
            count(body.input.into_vec().len(), "input")
        }
        "/rerank" => {
            let body: RerankRequest = api::parse_json(body)?;
            count(body.texts.len(), "texts")
        }
        "/relevance" => {
            let body: RelevanceRequest = api::parse_json(body)?;
            let job = check_request(body, config.relevance.max_items, Logic::Product, false)?;
            // A checked request must rank: an error here would be a 424 for a client's input.
            let ranking = ENGINE.rank(&job.query, &job.items).expect("a checked /relevance request ranks");
            let ranking = ranking.with_logic(job.logic).intervene(&job.interventions);
            ranking_lines(&ranking, job.all_entities).expect("ranking lines");
            let _ = (plugin_query(&ranking), candidates(&ranking, &job.items));
            Ok(())
        }
        "/v1/chat/completions" => {
            let body: ChatRequest = api::parse_json(body)?;
            let (messages, _picture) = chat_messages(&body.messages)?;
            let (max_tokens, logprobs) = body.options()?;
            let tokens = messages.iter().map(|m| m.content.len()).sum();
            plan_limits().plan(Kind::Chat, body.common, vec![vec![0; tokens]], max_tokens, logprobs).map(drop)
        }
        "/v1/completions" => {
            let body: CompletionRequest = api::parse_json(body)?;
            let prompts: Vec<Vec<u32>> = body.prompt.into_vec().iter().map(|p| vec![0; p.len()]).collect();
            count(prompts.len(), "prompt")?;
            let max_tokens = body.common.max_tokens;
            plan_limits().plan(Kind::Completion, body.common, prompts, max_tokens, body.logprobs).map(drop)
        }
        "/grade" => {
            let body: GradeRequest = api::parse_json(body)?;
            for (i, item) in body.items.iter().enumerate() {
                tandem_models::llm::grade::item_text(item)
                    .map_err(|e| ApiError::invalid(format!("`items[{i}]`: {e:#}")))?;
            }
            Ok(())
        }
        "/suggest" => api::parse_json::<SuggestRequest>(body).map(drop),
        other => panic!("check_body: no JSON route {other}"),
    }
}

/// The handlers' `check_count` with the default `server.max_client_batch_size`.
fn count(n: usize, field: &str) -> Result<(), ApiError> {
    let max = CONFIG.server.max_client_batch_size;
    match n {
        0 => Err(ApiError::empty(field)),
        n if n > max => Err(ApiError::too_large(format!("`{field}` has {n} items, more than the limit of {max}"))),
        _ => Ok(()),
    }
}

fn plan_limits() -> PlanLimits<'static> {
    let llm = &CONFIG.llm;
    PlanLimits { id: "fuzz-llm", slot_tokens: llm.slot_tokens, default_max_tokens: llm.default_max_tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written seeds of fuzz/corpus/http_bodies (first line the route, then the
    /// body) named `ok-*` pass every check, so the fuzzer starts deep in each route; those
    /// named `bad-*` are refused with a 4xx.
    #[test]
    fn the_seed_bodies_are_accepted_or_refused_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_bodies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("ok-") || name.starts_with("bad-")) {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let split = data.iter().position(|&b| b == b'\n').unwrap();
            let route = std::str::from_utf8(&data[..split]).unwrap();
            let result = check_body(route, &data[split + 1..]);
            if name.starts_with("ok-") {
                assert_eq!(result, Ok(()), "{name}");
            } else {
                let (status, message) = result.expect_err(&name);
                assert!((400..500).contains(&status), "{name}: {status} {message}");
            }
            seen += 1;
        }
        assert!(seen >= ROUTES.len(), "only {seen} named seeds in {}", dir.display());
    }
}
