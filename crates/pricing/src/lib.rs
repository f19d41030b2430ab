//! What a request costs: a built-in price table for the current models of OpenAI,
//! Anthropic, Google, Mistral and Meta, overridable and extendable from config, and
//! the per-request cost arithmetic in integer micro-dollars.
//!
//! Units. Every rate is **micro-dollars per million tokens** (`u64`): $2.50 per
//! million tokens is `2_500_000`. A request's cost is
//! `Σ tokens × rate / 1_000_000` micro-dollars, summed exactly in `u128` and rounded
//! half up once per request (never per token class, so three half-micro-dollar parts
//! cannot round up three times), saturating at `u64::MAX`.
//!
//! Rules, as the providers bill them:
//! - *Cached input*: `cached_tokens` are the part of `prompt_tokens` that the provider
//!   served from its prompt cache (OpenAI's `prompt_tokens_details.cached_tokens`);
//!   they are billed at the cached rate, the rest of the prompt at the input rate.
//!   Cache *writes* (Anthropic's 1.25× surcharge) are not modelled: the
//!   OpenAI-compatible usage block does not report them.
//! - *Long context*: some models switch the *whole request* (input, cached input and
//!   output) to higher rates once the prompt is longer than a threshold (Gemini 1.5
//!   Pro/Flash above 128k prompt tokens, Gemini 2.5 Pro and Claude Sonnet 4/4.5 above
//!   200k). The threshold is compared with all prompt tokens, cached ones included.
//! - *Unknown models* get the table's default price and `known: false`, so the caller
//!   can warn: never a silent zero.
//!
//! Model lookup is case-insensitive: the exact id first, then the longest known
//! prefix that ends at a `-`, `@` or `:` (dated snapshots and variants map to their
//! family: `gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-sonnet@20240620` →
//! `claude-3-5-sonnet`), then the same two steps on the part after the last `/`
//! (`openai/gpt-4o`, `meta-llama/Llama-3.3-70B-Instruct-Turbo`). Prefixes stop at
//! those separators only, so `gpt-4.5-preview` never inherits `gpt-4`'s price.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The built-in table's version; bump it whenever a built-in price changes, so the
/// ledger's `price_version` tells which prices produced a stored cost.
pub const BUILTIN_VERSION: &str = "builtin-2026-11";

/// Rates of one model, in micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub input_per_mtok_micros: u64,
    pub cached_input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
    /// Higher rates for the whole request once the prompt is long, if the provider
    /// prices long prompts differently.
    pub long_context: Option<LongContextTier>,
}

/// The rates that apply to a whole request whose prompt has more than
/// `above_prompt_tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongContextTier {
    pub above_prompt_tokens: u64,
    pub input_per_mtok_micros: u64,
    pub cached_input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
}

/// The cost of one request, in micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// What the request costs.
    pub micros: u64,
    /// What it would have cost had no input token been served from cache (same tier).
    pub uncached_micros: u64,
}

impl Cost {
    /// What the prompt cache saved on this request.
    pub fn saved_micros(&self) -> u64 {
        self.uncached_micros.saturating_sub(self.micros)
    }
}

/// A price found for a model name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceLookup {
    pub price: ModelPrice,
    /// `false` when the model is unknown and `price` is the table's default.
    pub known: bool,
}

impl ModelPrice {
    /// A price with no cache discount and no long-context tier.
    pub const fn flat(input_per_mtok_micros: u64, output_per_mtok_micros: u64) -> Self {
        Self {
            input_per_mtok_micros,
            cached_input_per_mtok_micros: input_per_mtok_micros,
            output_per_mtok_micros,
            long_context: None,
        }
    }

    /// A price with a cached-input rate and no long-context tier.
    pub const fn cached(input: u64, cached_input: u64, output: u64) -> Self {
        Self {
            input_per_mtok_micros: input,
            cached_input_per_mtok_micros: cached_input,
            output_per_mtok_micros: output,
            long_context: None,
        }
    }

    /// The same price with a long-context tier.
    pub const fn with_long_context(mut self, tier: LongContextTier) -> Self {
        self.long_context = Some(tier);
        self
    }

    /// The cost of one request. `cached_tokens` is the part of `prompt_tokens` served
    /// from cache (more than `prompt_tokens` is treated as all of them).
    pub fn cost(&self, prompt_tokens: u64, cached_tokens: u64, completion_tokens: u64) -> Cost {
        let (input, cached_input, output) = match self.long_context {
            Some(tier) if prompt_tokens > tier.above_prompt_tokens => {
                (tier.input_per_mtok_micros, tier.cached_input_per_mtok_micros, tier.output_per_mtok_micros)
            }
            _ => (self.input_per_mtok_micros, self.cached_input_per_mtok_micros, self.output_per_mtok_micros),
        };
        let cached_tokens = cached_tokens.min(prompt_tokens);
        let fresh_tokens = prompt_tokens - cached_tokens;
        let output_part = mul(completion_tokens, output);
        let micros =
            mul(fresh_tokens, input).saturating_add(mul(cached_tokens, cached_input)).saturating_add(output_part);
        let uncached = mul(prompt_tokens, input).saturating_add(output_part);
        Cost { micros: round_to_micros(micros), uncached_micros: round_to_micros(uncached) }
    }
}

/// tokens × micro-dollars per million tokens, in millionths of a micro-dollar. A
/// product of two u64 always fits a u128; only the sums can saturate.
fn mul(tokens: u64, per_mtok_micros: u64) -> u128 {
    u128::from(tokens) * u128::from(per_mtok_micros)
}

/// Millionths of a micro-dollar to micro-dollars, half up, saturating.
fn round_to_micros(millionths: u128) -> u64 {
    let micros = millionths / 1_000_000 + u128::from(millionths % 1_000_000 >= 500_000);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

/// A price as configuration gives it (`[prices."my-model"]` in TOML). All rates are
/// integer **micro-dollars per million tokens**: $0.15 per million tokens is
/// `input_per_mtok_micros = 150000`. Floats are refused, so money never goes
/// through binary fractions.
///
/// ```toml
/// [prices."my-model"]
/// input_per_mtok_micros = 1000000          # $1.00 per million prompt tokens
/// cached_input_per_mtok_micros = 250000    # optional, defaults to the input rate
/// output_per_mtok_micros = 4000000         # $4.00 per million completion tokens
/// [prices."my-model".long_context]         # optional
/// above_prompt_tokens = 200000
/// input_per_mtok_micros = 2000000
/// output_per_mtok_micros = 8000000
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub input_per_mtok_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_micros: Option<u64>,
    pub output_per_mtok_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextOverride>,
}

/// The long-context tier of a [`PriceOverride`], in the same units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextOverride {
    pub above_prompt_tokens: u64,
    pub input_per_mtok_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_micros: Option<u64>,
    pub output_per_mtok_micros: u64,
}

impl PriceOverride {
    /// The rates this entry stands for; a missing cached rate is the input rate
    /// (no cache discount).
    pub fn to_price(&self) -> ModelPrice {
        ModelPrice {
            input_per_mtok_micros: self.input_per_mtok_micros,
            cached_input_per_mtok_micros: self.cached_input_per_mtok_micros.unwrap_or(self.input_per_mtok_micros),
            output_per_mtok_micros: self.output_per_mtok_micros,
            long_context: self.long_context.as_ref().map(|t| LongContextTier {
                above_prompt_tokens: t.above_prompt_tokens,
                input_per_mtok_micros: t.input_per_mtok_micros,
                cached_input_per_mtok_micros: t.cached_input_per_mtok_micros.unwrap_or(t.input_per_mtok_micros),
                output_per_mtok_micros: t.output_per_mtok_micros,
            }),
        }
    }
}

impl From<ModelPrice> for PriceOverride {
    fn from(p: ModelPrice) -> Self {
        PriceOverride {
            input_per_mtok_micros: p.input_per_mtok_micros,
            cached_input_per_mtok_micros: Some(p.cached_input_per_mtok_micros),
            output_per_mtok_micros: p.output_per_mtok_micros,
            long_context: p.long_context.map(|t| LongContextOverride {
                above_prompt_tokens: t.above_prompt_tokens,
                input_per_mtok_micros: t.input_per_mtok_micros,
                cached_input_per_mtok_micros: Some(t.cached_input_per_mtok_micros),
                output_per_mtok_micros: t.output_per_mtok_micros,
            }),
        }
    }
}

/// Model ids to prices, a default for unknown models, and the version that names
/// this exact set of prices.
#[derive(Clone, Debug)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
    default: ModelPrice,
    /// The overrides and default as given, kept to derive the version.
    overrides: BTreeMap<String, ModelPrice>,
    default_overridden: bool,
    version: String,
}

/// The default for unknown models: gpt-4o's rates, a mid-range price that neither
/// gives an unknown model away nor blocks a budget at the first call.
pub const BUILTIN_DEFAULT_PRICE: ModelPrice = ModelPrice::cached(2_500_000, 1_250_000, 10_000_000);

impl PriceTable {
    /// The built-in prices, version [`BUILTIN_VERSION`].
    pub fn builtin() -> Self {
        let mut models = HashMap::with_capacity(BUILTIN.len() * 2);
        for (ids, price) in BUILTIN {
            for id in *ids {
                models.insert((*id).to_owned(), *price);
            }
        }
        Self {
            models,
            default: BUILTIN_DEFAULT_PRICE,
            overrides: BTreeMap::new(),
            default_overridden: false,
            version: BUILTIN_VERSION.to_owned(),
        }
    }

    /// The built-in prices with config entries on top: an entry replaces a built-in
    /// model of the same id (case-insensitive) as a whole, or adds a new one. Its
    /// snapshots map to it like a built-in family's (`my-model-2026-01` → `my-model`).
    pub fn with_overrides<I, K>(entries: I) -> Self
    where
        I: IntoIterator<Item = (K, PriceOverride)>,
        K: AsRef<str>,
    {
        let mut table = Self::builtin();
        for (id, entry) in entries {
            let id = id.as_ref().trim().to_ascii_lowercase();
            let price = entry.to_price();
            table.models.insert(id.clone(), price);
            table.overrides.insert(id, price);
        }
        table.version = table.compute_version();
        table
    }

    /// The same table with another price for unknown models (part of the version).
    pub fn with_default_price(mut self, price: ModelPrice) -> Self {
        self.default = price;
        self.default_overridden = true;
        self.version = self.compute_version();
        self
    }

    /// Names this exact set of prices: [`BUILTIN_VERSION`] alone, or followed by `+`
    /// and 12 hex digits of a hash of the overrides and default price. The hash is
    /// FNV-1a over a canonical text (sorted ids, every rate), so it is the same on
    /// every machine, build and run for the same configuration.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The price for `model`, or the default with `known: false`.
    pub fn price(&self, model: &str) -> PriceLookup {
        match self.find(model) {
            Some(price) => PriceLookup { price, known: true },
            None => PriceLookup { price: self.default, known: false },
        }
    }

    /// Every model id the table prices (built-in and configured), in no order: the
    /// bounded set `/metrics` labels models by.
    pub fn model_ids(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The default price for unknown models.
    pub fn default_price(&self) -> ModelPrice {
        self.default
    }

    fn find(&self, model: &str) -> Option<ModelPrice> {
        let model = model.trim();
        // Lower-casing allocates only for names that have capitals.
        let model: Cow<'_, str> = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(model.to_ascii_lowercase())
        } else {
            Cow::Borrowed(model)
        };
        if let Some(price) = self.find_family(&model) {
            return Some(price);
        }
        match model.rsplit_once('/') {
            Some((_, bare)) if !bare.is_empty() => self.find_family(bare),
            _ => None,
        }
    }

    /// Exact id, then the longest prefix ending at a separator.
    fn find_family(&self, id: &str) -> Option<ModelPrice> {
        if let Some(price) = self.models.get(id) {
            return Some(*price);
        }
        let mut end = id.len();
        while let Some(cut) = id[..end].rfind(['-', '@', ':']) {
            if let Some(price) = self.models.get(&id[..cut]) {
                return Some(*price);
            }
            end = cut;
        }
        None
    }

    fn compute_version(&self) -> String {
        if self.overrides.is_empty() && !self.default_overridden {
            return BUILTIN_VERSION.to_owned();
        }
        let mut canonical = String::new();
        for (id, price) in &self.overrides {
            canonical.push_str(id);
            canonical.push('=');
            push_price(&mut canonical, price);
            canonical.push('\n');
        }
        if self.default_overridden {
            canonical.push_str("*default=");
            push_price(&mut canonical, &self.default);
            canonical.push('\n');
        }
        format!("{BUILTIN_VERSION}+{:012x}", fnv1a64(canonical.as_bytes()) >> 16)
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

fn push_price(out: &mut String, p: &ModelPrice) {
    use std::fmt::Write;
    let _ = write!(out, "{},{},{}", p.input_per_mtok_micros, p.cached_input_per_mtok_micros, p.output_per_mtok_micros);
    if let Some(t) = p.long_context {
        let _ = write!(
            out,
            ";>{}:{},{},{}",
            t.above_prompt_tokens, t.input_per_mtok_micros, t.cached_input_per_mtok_micros, t.output_per_mtok_micros
        );
    }
}

/// FNV-1a, 64 bits: tiny, and unlike `std`'s hasher, fixed forever.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Dollars per million tokens → micro-dollars per million tokens, for readability of
/// the table below (`usd(2, 500_000)` is $2.50). Integer only.
const fn usd(dollars: u64, micros: u64) -> u64 {
    dollars * 1_000_000 + micros
}

const fn tier(above_prompt_tokens: u64, input: u64, cached_input: u64, output: u64) -> LongContextTier {
    LongContextTier {
        above_prompt_tokens,
        input_per_mtok_micros: input,
        cached_input_per_mtok_micros: cached_input,
        output_per_mtok_micros: output,
    }
}

const fn c(input: u64, cached_input: u64, output: u64) -> ModelPrice {
    ModelPrice::cached(input, cached_input, output)
}

const fn f(input: u64, output: u64) -> ModelPrice {
    ModelPrice::flat(input, output)
}

/// Claude Sonnet 4 and 4.5: above 200k prompt tokens (1M-context beta) the whole
/// request is billed at $6 / $0.60 / $22.50.
const SONNET_4: ModelPrice = c(usd(3, 0), usd(0, 300_000), usd(15, 0)).with_long_context(tier(
    200_000,
    usd(6, 0),
    usd(0, 600_000),
    usd(22, 500_000),
));

/// The built-in prices (USD per million tokens, written as micro-dollars), as the
/// providers' public price pages list them for standard (not batch, not priority)
/// processing, text input. Ids are lower-case; every id of a row shares the row's
/// price. Sources and assumptions are in docs and the report of issue 3:
/// - OpenAI: platform.openai.com/docs/pricing. Cached input is OpenAI's automatic
///   prompt caching rate. `gpt-4o-2024-05-13` kept its launch price ($5/$15).
/// - Anthropic: anthropic.com/pricing. Cached input is the cache *read* rate (0.1×).
/// - Google: ai.google.dev/gemini-api/docs/pricing (Gemini API, paid tier). Cached
///   input is the context-caching rate for the same prompt-size tier.
/// - Mistral: mistral.ai/pricing (La Plateforme); no cache discount.
///   `mistral-large` is Mistral Large 24.11 ($2/$6); `mistral-large-2512` (Large 3)
///   is listed apart at its own, lower price.
/// - Meta publishes no API price: Llama rows are Together AI's serverless "Turbo"
///   prices (one rate for input and output), a common reference; override them with
///   your host's price.
const BUILTIN: &[(&[&str], ModelPrice)] = &[
    // ---- OpenAI ----
    (&["gpt-4o"], c(usd(2, 500_000), usd(1, 250_000), usd(10, 0))),
    (&["chatgpt-4o-latest"], f(usd(5, 0), usd(15, 0))),
    (&["gpt-4o-2024-05-13"], f(usd(5, 0), usd(15, 0))),
    (&["gpt-4o-mini"], c(usd(0, 150_000), usd(0, 75_000), usd(0, 600_000))),
    (&["gpt-4.1"], c(usd(2, 0), usd(0, 500_000), usd(8, 0))),
    (&["gpt-4.1-mini"], c(usd(0, 400_000), usd(0, 100_000), usd(1, 600_000))),
    (&["gpt-4.1-nano"], c(usd(0, 100_000), usd(0, 25_000), usd(0, 400_000))),
    (&["gpt-5"], c(usd(1, 250_000), usd(0, 125_000), usd(10, 0))),
    (&["gpt-5-mini"], c(usd(0, 250_000), usd(0, 25_000), usd(2, 0))),
    (&["gpt-5-nano"], c(usd(0, 50_000), usd(0, 5_000), usd(0, 400_000))),
    (&["gpt-5-pro"], f(usd(15, 0), usd(120, 0))),
    (&["o1", "o1-preview"], c(usd(15, 0), usd(7, 500_000), usd(60, 0))),
    (&["o1-mini"], c(usd(1, 100_000), usd(0, 550_000), usd(4, 400_000))),
    (&["o1-pro"], f(usd(150, 0), usd(600, 0))),
    (&["o3"], c(usd(2, 0), usd(0, 500_000), usd(8, 0))),
    (&["o3-mini"], c(usd(1, 100_000), usd(0, 550_000), usd(4, 400_000))),
    (&["o3-pro"], f(usd(20, 0), usd(80, 0))),
    (&["o3-deep-research"], c(usd(10, 0), usd(2, 500_000), usd(40, 0))),
    (&["o4-mini"], c(usd(1, 100_000), usd(0, 275_000), usd(4, 400_000))),
    (&["o4-mini-deep-research"], c(usd(2, 0), usd(0, 500_000), usd(8, 0))),
    (&["gpt-4-turbo", "gpt-4-1106-preview", "gpt-4-0125-preview", "gpt-4-vision-preview"], f(usd(10, 0), usd(30, 0))),
    (&["gpt-4"], f(usd(30, 0), usd(60, 0))),
    (&["gpt-4-32k"], f(usd(60, 0), usd(120, 0))),
    (&["gpt-3.5-turbo"], f(usd(0, 500_000), usd(1, 500_000))),
    (&["gpt-3.5-turbo-instruct"], f(usd(1, 500_000), usd(2, 0))),
    (&["text-embedding-3-small"], f(usd(0, 20_000), 0)),
    (&["text-embedding-3-large"], f(usd(0, 130_000), 0)),
    (&["text-embedding-ada-002"], f(usd(0, 100_000), 0)),
    // ---- Anthropic ----
    (&["claude-3-5-sonnet", "claude-3.5-sonnet"], c(usd(3, 0), usd(0, 300_000), usd(15, 0))),
    (&["claude-3-7-sonnet", "claude-3.7-sonnet"], c(usd(3, 0), usd(0, 300_000), usd(15, 0))),
    (&["claude-sonnet-4", "claude-4-sonnet", "claude-sonnet-4-0"], SONNET_4),
    (&["claude-sonnet-4-5", "claude-sonnet-4.5"], SONNET_4),
    (&["claude-3-haiku"], c(usd(0, 250_000), usd(0, 30_000), usd(1, 250_000))),
    (&["claude-3-5-haiku", "claude-3.5-haiku"], c(usd(0, 800_000), usd(0, 80_000), usd(4, 0))),
    (&["claude-haiku-4-5", "claude-haiku-4.5"], c(usd(1, 0), usd(0, 100_000), usd(5, 0))),
    (&["claude-3-opus"], c(usd(15, 0), usd(1, 500_000), usd(75, 0))),
    (&["claude-opus-4", "claude-4-opus", "claude-opus-4-0"], c(usd(15, 0), usd(1, 500_000), usd(75, 0))),
    (&["claude-opus-4-1", "claude-opus-4.1"], c(usd(15, 0), usd(1, 500_000), usd(75, 0))),
    (&["claude-opus-4-5", "claude-opus-4.5"], c(usd(5, 0), usd(0, 500_000), usd(25, 0))),
    // ---- Google ----
    (
        &["gemini-1.5-pro"],
        c(usd(1, 250_000), usd(0, 312_500), usd(5, 0)).with_long_context(tier(
            128_000,
            usd(2, 500_000),
            usd(0, 625_000),
            usd(10, 0),
        )),
    ),
    (
        &["gemini-1.5-flash"],
        c(usd(0, 75_000), usd(0, 18_750), usd(0, 300_000)).with_long_context(tier(
            128_000,
            usd(0, 150_000),
            usd(0, 37_500),
            usd(0, 600_000),
        )),
    ),
    (
        &["gemini-1.5-flash-8b"],
        c(usd(0, 37_500), usd(0, 10_000), usd(0, 150_000)).with_long_context(tier(
            128_000,
            usd(0, 75_000),
            usd(0, 20_000),
            usd(0, 300_000),
        )),
    ),
    (&["gemini-2.0-flash"], c(usd(0, 100_000), usd(0, 25_000), usd(0, 400_000))),
    (&["gemini-2.0-flash-lite"], f(usd(0, 75_000), usd(0, 300_000))),
    (
        &["gemini-2.5-pro"],
        c(usd(1, 250_000), usd(0, 125_000), usd(10, 0)).with_long_context(tier(
            200_000,
            usd(2, 500_000),
            usd(0, 250_000),
            usd(15, 0),
        )),
    ),
    (&["gemini-2.5-flash"], c(usd(0, 300_000), usd(0, 30_000), usd(2, 500_000))),
    (&["gemini-2.5-flash-lite"], c(usd(0, 100_000), usd(0, 10_000), usd(0, 400_000))),
    // ---- Mistral ----
    (&["mistral-large"], f(usd(2, 0), usd(6, 0))),
    (&["mistral-large-2512"], f(usd(0, 500_000), usd(1, 500_000))),
    (&["mistral-medium"], f(usd(0, 400_000), usd(2, 0))),
    (&["mistral-small"], f(usd(0, 100_000), usd(0, 300_000))),
    (&["codestral"], f(usd(0, 300_000), usd(0, 900_000))),
    // ---- Meta (Together AI serverless prices) ----
    (
        &["llama-3.1-8b", "llama-3-8b", "llama3-8b", "llama3.1-8b", "meta-llama-3-8b", "meta-llama-3.1-8b"],
        f(usd(0, 180_000), usd(0, 180_000)),
    ),
    (
        &[
            "llama-3.1-70b",
            "llama-3-70b",
            "llama-3.3-70b",
            "llama3-70b",
            "llama3.1-70b",
            "llama3.3-70b",
            "meta-llama-3-70b",
            "meta-llama-3.1-70b",
            "meta-llama-3.3-70b",
        ],
        f(usd(0, 880_000), usd(0, 880_000)),
    ),
    (&["llama-3.1-405b", "llama3.1-405b", "meta-llama-3.1-405b"], f(usd(3, 500_000), usd(3, 500_000))),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(model: &str, prompt: u64, cached: u64, completion: u64) -> Cost {
        let lookup = PriceTable::builtin().price(model);
        assert!(lookup.known, "{model} should be in the built-in table");
        lookup.price.cost(prompt, cached, completion)
    }

    #[test]
    fn gpt_4o_costs_its_list_price() {
        // 1,000 prompt tokens at $2.50/M = 2,500 µ$; 500 completion at $10/M = 5,000 µ$.
        assert_eq!(cost("gpt-4o", 1_000, 0, 500), Cost { micros: 7_500, uncached_micros: 7_500 });
        // A million of each is exactly $12.50.
        assert_eq!(cost("gpt-4o", 1_000_000, 0, 1_000_000).micros, 12_500_000);
    }

    #[test]
    fn gpt_4o_mini_bills_cached_input_at_half_price() {
        // 10,000 prompt tokens of which 6,000 cached, 1,000 completion:
        // 4,000 × 0.15 + 6,000 × 0.075 + 1,000 × 0.60 = 600 + 450 + 600 = 1,650 µ$.
        // Without the cache: 10,000 × 0.15 + 600 = 2,100 µ$.
        let c = cost("gpt-4o-mini", 10_000, 6_000, 1_000);
        assert_eq!(c, Cost { micros: 1_650, uncached_micros: 2_100 });
        assert_eq!(c.saved_micros(), 450);
        // More cached than prompt tokens is clamped to the prompt.
        assert_eq!(cost("gpt-4o-mini", 100, 1_000, 0), cost("gpt-4o-mini", 100, 100, 0));
    }

    #[test]
    fn claude_sonnet_4_long_context_switches_the_whole_request() {
        // At 200,000 prompt tokens: still the base tier. 200,000 × $3 + 1,000 × $15.
        assert_eq!(cost("claude-sonnet-4-20250514", 200_000, 0, 1_000).micros, 600_000 + 15_000);
        // One more token: every token at $6 / $22.50, output included.
        assert_eq!(cost("claude-sonnet-4-20250514", 200_001, 0, 1_000).micros, 1_200_006 + 22_500);
        // Cached reads follow the tier too: 100,001 × $6 + 100,000 × $0.60 + 0 output.
        assert_eq!(
            cost("claude-sonnet-4-5", 200_001, 100_000, 0),
            Cost { micros: 600_006 + 60_000, uncached_micros: 1_200_006 }
        );
        // Claude 3.5 Sonnet has no tier.
        assert_eq!(cost("claude-3-5-sonnet-20241022", 300_000, 0, 0).micros, 900_000);
    }

    #[test]
    fn gemini_pro_switches_tier_above_its_threshold() {
        // Gemini 1.5 Pro: 128,000 prompt tokens at $1.25, 1,000 output at $5.
        assert_eq!(cost("gemini-1.5-pro", 128_000, 0, 1_000).micros, 160_000 + 5_000);
        // 128,001: $2.50 and $10 for everything.
        assert_eq!(cost("gemini-1.5-pro-002", 128_001, 0, 1_000).micros, 320_003 + 10_000);
        // Gemini 2.5 Pro: threshold 200k; $1.25/$10 below, $2.50/$15 above.
        assert_eq!(cost("gemini-2.5-pro", 200_000, 0, 2_000).micros, 250_000 + 20_000);
        assert_eq!(cost("gemini-2.5-pro", 200_002, 0, 2_000).micros, 500_005 + 30_000);
        // Cached input in the high tier: 100,002 × 2.50 + 100,000 × 0.25 + 0.
        assert_eq!(cost("gemini-2.5-pro", 200_002, 100_000, 0).micros, 250_005 + 25_000);
    }

    #[test]
    fn unknown_models_get_the_default_price_and_say_so() {
        let table = PriceTable::builtin();
        let lookup = table.price("acme-llm-9000");
        assert!(!lookup.known);
        assert_eq!(lookup.price, BUILTIN_DEFAULT_PRICE);
        assert_eq!(lookup.price.cost(1_000, 0, 500).micros, 7_500, "never a silent zero");
        // gpt-4.5 is not priced by gpt-4's row: prefixes stop at separators.
        assert!(!table.price("gpt-4.5-preview").known);
        assert!(!table.price("").known);
        let custom = ModelPrice::flat(1_000_000, 2_000_000);
        let table = PriceTable::builtin().with_default_price(custom);
        assert_eq!(table.price("acme-llm-9000"), PriceLookup { price: custom, known: false });
        assert_ne!(table.version(), BUILTIN_VERSION);
    }

    #[test]
    fn snapshots_and_provider_prefixes_map_to_their_family() {
        let t = PriceTable::builtin();
        let p = |m: &str| {
            let l = t.price(m);
            assert!(l.known, "{m}");
            l.price
        };
        assert_eq!(p("gpt-4o-2024-08-06"), p("gpt-4o"));
        assert_eq!(p("gpt-4o-mini-2024-07-18"), p("gpt-4o-mini"));
        assert_ne!(p("gpt-4o-mini"), p("gpt-4o"));
        assert_eq!(p("gpt-4o-2024-05-13").input_per_mtok_micros, 5_000_000, "an exact snapshot row wins");
        assert_eq!(p("claude-3-5-sonnet-20241022"), p("claude-3-5-sonnet"));
        assert_eq!(p("claude-3-5-sonnet@20240620"), p("claude-3-5-sonnet"));
        assert_eq!(p("claude-3-5-sonnet-latest"), p("claude-3-5-sonnet"));
        assert_eq!(p("claude-sonnet-4-5-20250929"), SONNET_4);
        assert_eq!(p("claude-opus-4-5-20251101").input_per_mtok_micros, 5_000_000);
        assert_eq!(p("claude-opus-4-1-20250805").input_per_mtok_micros, 15_000_000);
        assert_eq!(p("gpt-4.1-mini-2025-04-14"), p("gpt-4.1-mini"));
        assert_eq!(p("o1-pro-2025-03-19"), p("o1-pro"));
        assert_eq!(p("gemini-2.5-flash-lite-preview-06-17"), p("gemini-2.5-flash-lite"));
        assert_eq!(p("openai/gpt-4o"), p("gpt-4o"));
        assert_eq!(p("OpenAI/GPT-4o-2024-11-20"), p("gpt-4o"));
        assert_eq!(p("models/gemini-2.0-flash-001"), p("gemini-2.0-flash"));
        assert_eq!(p("meta-llama/Llama-3.3-70B-Instruct-Turbo"), p("llama-3.1-70b"));
        assert_eq!(p("llama-3.1-8b-instant"), p("llama-3.1-8b"));
        assert_eq!(p("mistral-large-latest"), p("mistral-large"));
        assert_eq!(p("codestral-2501"), p("codestral"));
        assert_eq!(p("text-embedding-3-small").output_per_mtok_micros, 0);
    }

    #[test]
    fn overrides_replace_and_add_models_and_change_the_version() {
        let builtin = PriceTable::builtin();
        assert_eq!(builtin.version(), "builtin-2026-11");
        let entries: BTreeMap<String, PriceOverride> =
            toml_like(&[("GPT-4o", 1_000_000, None, 2_000_000), ("my-model", 500_000, Some(100_000), 1_500_000)]);
        let table = PriceTable::with_overrides(entries.clone());
        let gpt = table.price("gpt-4o-2024-08-06");
        assert!(gpt.known);
        assert_eq!(gpt.price, ModelPrice::flat(1_000_000, 2_000_000), "the override replaces the whole row");
        assert_eq!(table.price("my-model").price, ModelPrice::cached(500_000, 100_000, 1_500_000));
        assert_eq!(table.price("my-model-v2").price, ModelPrice::cached(500_000, 100_000, 1_500_000));
        assert_eq!(table.price("gpt-4o-mini"), builtin.price("gpt-4o-mini"), "other rows untouched");
        // Same overrides, any order: same version; another price: another version.
        let version = table.version().to_owned();
        assert!(version.starts_with("builtin-2026-11+") && version.len() == "builtin-2026-11+".len() + 12);
        let reversed: Vec<_> = entries.clone().into_iter().rev().collect();
        assert_eq!(PriceTable::with_overrides(reversed).version(), version);
        let mut changed = entries;
        if let Some(e) = changed.get_mut("my-model") {
            e.output_per_mtok_micros += 1;
        }
        assert_ne!(PriceTable::with_overrides(changed).version(), version);
        // No overrides at all is the built-in version.
        assert_eq!(PriceTable::with_overrides(Vec::<(String, PriceOverride)>::new()).version(), "builtin-2026-11");
    }

    #[test]
    fn the_version_hash_is_stable_across_builds() {
        // Pinned: if this changes, every stored price_version stops matching.
        let table = PriceTable::with_overrides([(
            "my-model",
            PriceOverride {
                input_per_mtok_micros: 1_000_000,
                cached_input_per_mtok_micros: None,
                output_per_mtok_micros: 4_000_000,
                long_context: None,
            },
        )]);
        assert_eq!(table.version(), "builtin-2026-11+f4a4fe9bdaa9");
        assert_eq!(format!("{:012x}", fnv1a64(b"my-model=1000000,1000000,4000000\n") >> 16), "f4a4fe9bdaa9");
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn config_overrides_deserialize_from_integer_micros_only() {
        let json = r#"{"input_per_mtok_micros": 1000000, "output_per_mtok_micros": 4000000,
            "long_context": {"above_prompt_tokens": 200000, "input_per_mtok_micros": 2000000,
                             "output_per_mtok_micros": 8000000}}"#;
        let entry: PriceOverride = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        let price = entry.to_price();
        assert_eq!(price.cached_input_per_mtok_micros, 1_000_000, "no cached rate given: the input rate");
        assert_eq!(price.long_context.map(|t| t.cached_input_per_mtok_micros), Some(2_000_000));
        assert_eq!(price.cost(200_001, 0, 0).micros, 400_002);
        // Dollars as floats, or unknown fields, are refused rather than misread.
        assert!(serde_json::from_str::<PriceOverride>(r#"{"input": 1.0, "output": 2.0}"#).is_err());
        assert!(
            serde_json::from_str::<PriceOverride>(r#"{"input_per_mtok_micros": 1.5, "output_per_mtok_micros": 2}"#)
                .is_err()
        );
        // And it serializes back to the same shape (config dumps).
        let back = serde_json::to_string(&entry).unwrap_or_default();
        assert_eq!(serde_json::from_str::<PriceOverride>(&back).ok(), Some(entry));
    }

    #[test]
    fn rounding_is_half_up_once_per_request_and_saturates() {
        let p = ModelPrice::flat(1, 1); // 1 µ$ per million tokens
        assert_eq!(p.cost(499_999, 0, 0).micros, 0);
        assert_eq!(p.cost(500_000, 0, 0).micros, 1, "exactly half rounds up");
        assert_eq!(p.cost(1_499_999, 0, 0).micros, 1);
        // Three parts of 0.4 µ$ each: 1.2 µ$ once, not 0 + 0 + 0 or 1 + 1 + 1.
        let q = ModelPrice::cached(4, 4, 4);
        assert_eq!(q.cost(200_000, 100_000, 100_000).micros, 1);
        // Two parts of 0.4 µ$: 0.8 → 1, where rounding each part would give 0.
        assert_eq!(q.cost(100_000, 0, 100_000).micros, 1);
        assert_eq!(ModelPrice::flat(1, 1).cost(100_000, 0, 100_000).micros, 0); // 0.2 → 0
        // gpt-4o-mini: 7 prompt tokens at $0.15/M is 1.05 µ$ → 1; 3 output at $0.60/M
        // is 1.8 µ$; together 2.85 µ$ → 3 (rounding each part would give 1 + 2 = 3 too,
        // but 4 prompt + 1 output = 0.6 + 0.6 = 1.2 → 1, where per-part rounding gives 2).
        assert_eq!(cost("gpt-4o-mini", 7, 0, 3).micros, 3);
        assert_eq!(cost("gpt-4o-mini", 4, 0, 1).micros, 1);
        let huge = ModelPrice::flat(u64::MAX, u64::MAX);
        assert_eq!(huge.cost(u64::MAX, 0, u64::MAX), Cost { micros: u64::MAX, uncached_micros: u64::MAX });
    }

    #[test]
    fn every_builtin_row_is_sane() {
        for (ids, price) in BUILTIN {
            for id in *ids {
                assert_eq!(*id, id.to_ascii_lowercase(), "ids are stored lower-case");
                assert!(price.input_per_mtok_micros > 0, "{id} has an input price");
                assert!(price.cached_input_per_mtok_micros <= price.input_per_mtok_micros, "{id}");
                if let Some(t) = price.long_context {
                    assert!(t.input_per_mtok_micros > price.input_per_mtok_micros, "{id}");
                }
            }
        }
        let ids: Vec<&str> = BUILTIN.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "an id appears in two rows");
    }

    fn toml_like(rows: &[(&str, u64, Option<u64>, u64)]) -> BTreeMap<String, PriceOverride> {
        rows.iter()
            .map(|(id, input, cached, output)| {
                (
                    (*id).to_owned(),
                    PriceOverride {
                        input_per_mtok_micros: *input,
                        cached_input_per_mtok_micros: *cached,
                        output_per_mtok_micros: *output,
                        long_context: None,
                    },
                )
            })
            .collect()
    }
}
