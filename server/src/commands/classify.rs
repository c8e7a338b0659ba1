//! `tandem classify IMAGE... [--backend ...] [--top 5] [--json]`: each photo's top ImageNet
//! classes by MobileNetV2 (fetched on first use), as a readable list or one JSON line per photo.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use tandem_models::BackendChoice;
use tandem_models::registry::known_model;
use tandem_models::vision::mobilenet::ImageClassifier;

/// A larger file is refused before it is read (the decoder bounds pixels separately).
const MAX_IMAGE_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// cpu, wgpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// A MobileNetV2 folder holding mobilenet_v2-b0353104.pth (default: fetched on first use).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// One JSON object per line instead of a readable list.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.top == 0 || args.top > 1000 {
        bail!("--top must be 1 to 1000, not {}", args.top);
    }
    let dir = match args.model {
        Some(dir) => dir,
        None => tandem_models::fetch::ensure(known_model("mobilenetv2")?)?,
    };
    let classifier = ImageClassifier::load(&dir, args.backend)?;
    let mut out = std::io::stdout().lock();
    for path in &args.images {
        let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if len > MAX_IMAGE_BYTES {
            bail!("{}: {len} bytes, over the limit of {MAX_IMAGE_BYTES}", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let top = classifier.top(&bytes, args.top).with_context(|| path.display().to_string())?;
        if args.json {
            let line = serde_json::json!({"image": path, "backend": classifier.backend_name(), "top": top});
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
            continue;
        }
        writeln!(out, "{} ({})", path.display(), classifier.backend_name())?;
        for class in &top {
            writeln!(out, "  {:6.2}%  {} (class {})", class.probability * 100.0, class.name, class.class)?;
        }
    }
    Ok(())
}
