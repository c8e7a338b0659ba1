//! Query–item relevance in the page: EBRM (tandem-ebrm) over the loaded text model, answering
//! in the shape of the server's `POST /relevance` (without rule plugins, which run on the
//! server only).
//!
//! EBRM encodes synchronously; a browser's GPU answers through the event loop. So the engine
//! reads vectors from a [`TableEncoder`]: a request runs until it needs texts the table lacks,
//! those are embedded (awaited) and inserted, and the request runs again. EBRM caches nothing
//! from a failed call, so a request takes a few rounds cold and one warm. The soft-logic
//! aggregate runs on the page's backend (WebGPU or the wasm CPU), awaited
//! ([`Ebrm::rank_async`]).
//!
//! The brand list and the taxonomy embeddings come from the server (`/data/brands.json`,
//! `/data/taxonomy-minilm.emb`), so the page does not embed 5,561 taxonomy paths itself; they
//! must have been made with the same text model the page loaded.

use std::rc::Rc;

use js_sys::{JSON, Reflect};
use serde_json::{Value, json};
use tandem_ebrm::encoder::{MissingTexts, TableEncoder};
use tandem_ebrm::entities::taxonomy::EmbeddedTaxonomy;
use tandem_ebrm::vocab::BrandList;
use tandem_ebrm::{CategorySearch, Ebrm, Extractor, Item, Logic};
use wasm_bindgen::prelude::*;

use crate::{Tandem, code, error, fetch};

/// Most items per `relevance` call (the server's default `relevance.max_items`).
pub const MAX_ITEMS: usize = 1000;
/// Vectors the engine's table keeps before it starts over (the QE cache keeps the scores).
const TABLE_VECTORS: usize = 20_000;
/// A request needs at most one round per encoding step (query, titles, categories, QE pairs):
/// more means no progress.
const MAX_ROUNDS: usize = 8;

/// The relevance engine of a `Tandem`.
pub(crate) type Engine = Ebrm<TableEncoder>;

#[wasm_bindgen(typescript_custom_section)]
const RELEVANCE_TYPES: &str = r#"
/** Where `loadRelevanceData` gets EBRM's data: URLs, or the files' bytes. */
export type RelevanceDataSource =
  | { brandsUrl: string; taxonomyUrl: string; modelId?: string }
  | { brands: Uint8Array; taxonomy: Uint8Array; modelId?: string };
/** A product: a title plus attributes (brand, color, material, size, model, category, ...). */
export interface RelevanceItem { title: string; id?: string; [attribute: string]: unknown }
export interface RelevanceOptions {
  /** "product" (default), "goedel" or "lukasiewicz". */
  logic?: "product" | "goedel" | "lukasiewicz";
  /** Deciding entities and explanation lines (default true). */
  explain?: boolean;
  /** Every entity of each item, not only the deciding ones (default false). */
  allEntities?: boolean;
}
export interface ScoredEntity {
  kind: "brand" | "category" | "color" | "material" | "size" | "model" | "other";
  value: string;
  /** An attribute of the item, its title, the query, or a stand-in for a kind the item lacks. */
  source: "explicit" | "title" | "query" | "missing";
  /** The query names this kind. */
  constrained: boolean;
  essential: boolean;
  /** The encoder's raw cosine (absent for stand-ins of missing kinds). */
  cosine?: number;
  /** The calibrated query-entity score. */
  qe: number;
  /** Score with this entity minus score without it. */
  contribution: number;
}
export interface RelevanceResult {
  index: number; id?: string | null; title: string; score: number; final_score: number; rank: number;
  grade: "Exact" | "Substitute" | "Complement" | "Irrelevant";
  deciding?: ScoredEntity[]; explanation?: string[]; entities?: ScoredEntity[];
}
export interface RelevanceAnswer {
  query: { text: string; entities: { kind: string; value: string }[]; category_similarity?: number };
  logic: string;
  /** Texts this call embedded (0 when everything was cached). */
  encoded_texts: number;
  /** Rounds of embedding the call took. */
  rounds: number;
  /** The backend the soft-logic aggregate ran on: the page's ("wgpu" on WebGPU, else "cpu"). */
  aggregated_on: "wgpu" | "cpu";
  results: RelevanceResult[];
}
"#;

#[wasm_bindgen]
impl Tandem {
    /// Loads what EBRM needs besides the text model: the brand list and the taxonomy paths
    /// embedded by the same model. Call after `loadTextModel`.
    #[wasm_bindgen(js_name = loadRelevanceData)]
    pub async fn load_relevance_data(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RelevanceDataSource")] source: JsValue,
    ) -> Result<(), JsValue> {
        let model_id = crate::optional_string(&source, "modelId")?.unwrap_or_else(|| "minilm".into());
        let (brands, taxonomy) = match crate::optional_string(&source, "brandsUrl")? {
            Some(brands_url) => {
                let taxonomy_url = crate::optional_string(&source, "taxonomyUrl")?
                    .ok_or_else(|| error(code::BAD_INPUT, "`taxonomyUrl` is missing"))?;
                (fetch::bytes(&brands_url).await?, fetch::bytes(&taxonomy_url).await?)
            }
            None => (crate::required_bytes(&source, "brands")?, crate::required_bytes(&source, "taxonomy")?),
        };
        let brands = BrandList::from_json(&brands).map_err(|e| error(code::BAD_MODEL, format!("brand list: {e:#}")))?;
        let extractor = Extractor::new(&brands).map_err(|e| error(code::BAD_MODEL, format!("brand list: {e:#}")))?;
        let taxonomy = EmbeddedTaxonomy::from_bytes(&taxonomy)
            .map_err(|e| error(code::BAD_MODEL, format!("taxonomy embeddings: {e:#}")))?;
        if let Some(text) = self.text.borrow().as_ref()
            && text.dim() != taxonomy.dim()
        {
            return Err(error(
                code::BAD_MODEL,
                format!(
                    "the taxonomy embeddings have {} dimensions but the text model gives {}: they were made by another model",
                    taxonomy.dim(),
                    text.dim()
                ),
            ));
        }
        let engine = Ebrm::new(
            TableEncoder::new(model_id, TABLE_VECTORS),
            extractor,
            CategorySearch::Embedding { cache_dir: None },
        )
        .with_embedded_taxonomy(taxonomy)
        .with_device(&self.device);
        self.relevance.replace(Some(Rc::new(engine)));
        Ok(())
    }

    /// Scores items for a query with EBRM: `{ query, logic, encoded_texts, rounds, results }`,
    /// results best first, as the server's `POST /relevance` answers.
    pub async fn relevance(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] query: JsValue,
        #[wasm_bindgen(unchecked_param_type = "RelevanceItem[]")] items: JsValue,
        #[wasm_bindgen(unchecked_param_type = "RelevanceOptions | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let engine = self.relevance.borrow().clone().ok_or_else(|| {
            error(code::NOT_LOADED, "no relevance data: call loadRelevanceData (after loadTextModel) first")
        })?;
        let query = crate::text_arg(&query, "the query")?;
        if query.trim().is_empty() {
            return Err(error(code::BAD_INPUT, "the query is empty"));
        }
        let items = parse_items(&items)?;
        let logic = match crate::optional_string(&options, "logic")? {
            None => engine.config().logic,
            Some(name) => Logic::from_name(&name).ok_or_else(|| {
                error(code::BAD_INPUT, format!("`logic`: expected product, goedel or lukasiewicz, not {name:?}"))
            })?,
        };
        let explain = optional_bool(&options, "explain")?.unwrap_or(true);
        let all_entities = optional_bool(&options, "allEntities")?.unwrap_or(false);

        let mut rounds = 0;
        let mut encoded = 0;
        let ranking = loop {
            match engine.rank_async(&query, &items).await {
                Ok(ranking) => break ranking,
                Err(e) => {
                    let Some(MissingTexts(missing)) = MissingTexts::in_error(&e).cloned() else {
                        return Err(crate::model_error(&self.device, e));
                    };
                    rounds += 1;
                    if rounds > MAX_ROUNDS {
                        return Err(error(
                            code::INTERNAL,
                            format!("relevance made no progress in {MAX_ROUNDS} rounds"),
                        ));
                    }
                    let texts: Vec<&str> = missing.iter().map(String::as_str).collect();
                    let vectors = self.embed_texts(&texts).await?;
                    encoded += missing.len();
                    engine.encoder().insert(missing, vectors);
                }
            }
        };
        let ranking = if logic == ranking.config.logic {
            ranking
        } else {
            ranking.with_logic_async(logic).await.map_err(|e| crate::model_error(&self.device, e))?
        };
        let mut lines = tandem_ebrm::cli::ranking_lines(&ranking, all_entities)
            .map_err(|e| error(code::INTERNAL, format!("{e:#}")))?;
        for (line, scored) in lines.iter_mut().zip(&ranking.items) {
            let obj = line.as_object_mut().expect("ranking lines are objects");
            obj.remove("logic");
            if !explain {
                obj.remove("explanation");
                obj.remove("deciding");
            }
            // No rule plugins in the page: the final score is EBRM's.
            obj.insert("final_score".into(), json!(scored.score));
        }
        lines.sort_by_key(|l| l["rank"].as_u64());
        let q = &ranking.query;
        let answer = json!({
            "query": {"text": q.text, "entities": q.entities, "category_similarity": q.category_similarity},
            "logic": ranking.config.logic,
            "encoded_texts": encoded,
            "rounds": rounds,
            "aggregated_on": ranking.aggregated_on(),
            "results": lines,
        });
        JSON::parse(&answer.to_string()).map_err(|_| error(code::INTERNAL, "cannot hand the answer to JavaScript"))
    }
}

/// The items argument: an array of objects, each with a `title`, as the server takes them.
fn parse_items(items: &JsValue) -> Result<Vec<Item>, JsValue> {
    if !js_sys::Array::is_array(items) {
        return Err(error(code::BAD_INPUT, "`items` must be an array of { title, ...attributes }"));
    }
    let json = JSON::stringify(items)
        .map_err(|_| error(code::BAD_INPUT, "`items` cannot be read as JSON"))?
        .as_string()
        .unwrap_or_default();
    let values: Vec<Value> =
        serde_json::from_str(&json).map_err(|e| error(code::BAD_INPUT, format!("`items`: {e}")))?;
    if values.is_empty() {
        return Err(error(code::BAD_INPUT, "`items` is empty"));
    }
    if values.len() > MAX_ITEMS {
        return Err(error(code::BAD_INPUT, format!("`items` has {} items, more than {MAX_ITEMS}", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Item::from_value(v).map_err(|e| error(code::BAD_INPUT, format!("`items[{i}]`: {e:#}"))))
        .collect()
}

fn optional_bool(options: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let v = Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_bool().map(Some).ok_or_else(|| error(code::BAD_INPUT, format!("`{key}` must be true or false")))
}
