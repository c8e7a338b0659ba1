//! The TypeScript types of the API's options and results, so that `tandem_web.d.ts` is typed.
//! The Rust side reads these objects field by field (see `lib.rs`) and rejects what does not
//! fit with a `TandemError` of code "bad_input".

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Which backend `Tandem.create` opens. "auto": WebGPU when the browser gives a hardware adapter, else the CPU (a software adapter such as SwiftShader only when "webgpu" is asked for). */
export type TandemBackend = "auto" | "webgpu" | "cpu";

export interface TandemOptions {
  backend?: TandemBackend;
  /** Threads that embed a batch on the CPU backend: this instance and Web Workers, each with its own copy of the text model. 1 by default; "max" is navigator.hardwareConcurrency; at most 16. Ignored on WebGPU. */
  threads?: number | "max";
}

/** A sentence-transformers BERT (all-MiniLM-L6-v2): a folder URL, or the bytes of its three files. */
export type TextModelSource =
  | { baseUrl: string }
  | { config: Uint8Array; tokenizer: Uint8Array; weights: Uint8Array };

/** torchvision's MobileNetV2 checkpoint (mobilenet_v2-b0353104.pth): a URL, or its bytes. */
export type ImageModelSource = { url: string } | { bytes: Uint8Array; name?: string };

/** One ImageNet class of a photo. */
export interface ClassScore {
  /** ImageNet-1k class index, 0 to 999. */
  class: number;
  name: string;
  /** Softmax over the 1000 classes. */
  probability: number;
  logit: number;
  /** The Google product taxonomy path of the class, or null when it is not a product. */
  category: string | null;
}

export type TandemErrorCode =
  | "bad_image"
  | "image_too_large"
  | "download_failed"
  | "bad_model"
  | "not_loaded"
  | "device_lost"
  | "bad_input"
  | "webgpu_unavailable"
  | "internal";

/** What every promise of the API rejects with. */
export interface TandemError extends Error {
  name: "TandemError";
  code: TandemErrorCode;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "TandemOptions")]
    pub type TandemOptions;

    #[wasm_bindgen(typescript_type = "TextModelSource")]
    pub type TextModelSource;

    #[wasm_bindgen(typescript_type = "ImageModelSource")]
    pub type ImageModelSource;

    #[wasm_bindgen(typescript_type = "string[]")]
    pub type TextList;

    #[wasm_bindgen(typescript_type = "Float32Array[]")]
    pub type VectorList;

    #[wasm_bindgen(typescript_type = "ClassScore[]")]
    pub type ClassScoreList;
}
