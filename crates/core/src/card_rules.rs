//! What the Hub derives from, and checks in, a repo's card and files, beyond the card's tags:
//! - [`validate_metadata`]: `POST /api/validate-yaml`'s errors and warnings for a README's
//!   front matter — YAML that does not parse, fields of the wrong type, and the `model-index`
//!   (evaluation results) schema, with messages in the Hub's form
//!   (`"model-index[0].results[0].dataset" is required`);
//! - [`transformers_info`]: `model_info().transformersInfo` (`auto_model`, `pipeline_tag`,
//!   `processor`) from `config.json`'s `architectures` and the tokenizer or processor files;
//! - [`widget_data`]: `model_info().widgetData`, the card's `widget` or the pipeline's default
//!   inputs;
//! - [`file_security`] and [`repo_security`]: `securityFileStatus` of a file (tree and
//!   paths-info with `expand`) and `securityRepoStatus` of a model. **This node runs no virus
//!   or pickle scanner**: a file's status says only whether its format can run code when
//!   loaded (`safe` for formats that cannot; `unscanned` for pickle-based ones); `avScan` and
//!   `pickleImportScan` are `null` (not scanned).

use serde_json::{Map, Value, json};

/// The errors and warnings of a README's metadata, as `validate-yaml` answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks a README's front matter as the Hub does before accepting it.
pub fn validate_metadata(readme: &str) -> Validation {
    let card = hub_search::parse_card(readme);
    let mut v = Validation::default();
    if let Some(error) = card.error {
        v.errors.push(error);
        return v;
    }
    let data = &card.card_data;
    for key in ["license", "language", "tags", "datasets", "metrics"] {
        if let Some(value) = data.get(key)
            && !is_string_or_strings(value)
        {
            v.errors
                .push(format!("\"{key}\" must be a string or an array of strings"));
        }
    }
    for key in ["pipeline_tag", "library_name", "base_model_relation"] {
        if let Some(value) = data.get(key)
            && !value.is_string()
        {
            v.errors.push(format!("\"{key}\" must be a string"));
        }
    }
    if let Some(index) = data.get("model-index") {
        check_model_index(index, &mut v);
    }
    if data.contains_key("model-index") && !data.contains_key("license") {
        v.warnings.push(
            "\"license\" is missing: add one so users know how they may use the model".into(),
        );
    }
    v
}

fn is_string_or_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

/// The `model-index` schema: a list of `{name, results: [{task: {type}, dataset: {type,
/// name}, metrics: [{type, value}]}]}`.
fn check_model_index(index: &Value, v: &mut Validation) {
    let Some(models) = index.as_array() else {
        v.errors.push("\"model-index\" must be an array".into());
        return;
    };
    for (i, model) in models.iter().enumerate() {
        let at = format!("model-index[{i}]");
        let Some(model) = object(model, &at, v) else {
            continue;
        };
        string_field(model, &at, "name", true, v);
        let Some(results) = model.get("results") else {
            v.errors.push(format!("\"{at}.results\" is required"));
            continue;
        };
        let Some(results) = results.as_array() else {
            v.errors.push(format!("\"{at}.results\" must be an array"));
            continue;
        };
        for (j, result) in results.iter().enumerate() {
            let at = format!("{at}.results[{j}]");
            let Some(result) = object(result, &at, v) else {
                continue;
            };
            match result.get("task") {
                None => v.errors.push(format!("\"{at}.task\" is required")),
                Some(task) => {
                    if let Some(task) = object(task, &format!("{at}.task"), v) {
                        string_field(task, &format!("{at}.task"), "type", true, v);
                        string_field(task, &format!("{at}.task"), "name", false, v);
                    }
                }
            }
            match result.get("dataset") {
                None => v.errors.push(format!("\"{at}.dataset\" is required")),
                Some(dataset) => {
                    let at = format!("{at}.dataset");
                    if let Some(dataset) = object(dataset, &at, v) {
                        string_field(dataset, &at, "type", true, v);
                        string_field(dataset, &at, "name", true, v);
                        for key in ["config", "split", "revision"] {
                            string_field(dataset, &at, key, false, v);
                        }
                    }
                }
            }
            match result.get("metrics").map(Value::as_array) {
                None => v.errors.push(format!("\"{at}.metrics\" is required")),
                Some(None) => v.errors.push(format!("\"{at}.metrics\" must be an array")),
                Some(Some(metrics)) => {
                    for (k, metric) in metrics.iter().enumerate() {
                        let at = format!("{at}.metrics[{k}]");
                        let Some(metric) = object(metric, &at, v) else {
                            continue;
                        };
                        string_field(metric, &at, "type", true, v);
                        string_field(metric, &at, "name", false, v);
                        match metric.get("value") {
                            None | Some(Value::Null) => {
                                v.errors.push(format!("\"{at}.value\" is required"))
                            }
                            Some(Value::Number(_)) => {}
                            Some(_) => v.warnings.push(format!(
                                "\"{at}.value\" should be a number to be shown in the results"
                            )),
                        }
                    }
                }
            }
        }
    }
}

fn object<'a>(v: &'a Value, at: &str, out: &mut Validation) -> Option<&'a Map<String, Value>> {
    let o = v.as_object();
    if o.is_none() {
        out.errors.push(format!("\"{at}\" must be of type object"));
    }
    o
}

fn string_field(o: &Map<String, Value>, at: &str, key: &str, required: bool, v: &mut Validation) {
    match o.get(key) {
        None | Some(Value::Null) if required => {
            v.errors.push(format!("\"{at}.{key}\" is required"))
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => v.errors.push(format!("\"{at}.{key}\" must be a string")),
    }
}

/// `transformersInfo` for a model whose root `config.json` is `config` and whose root files
/// are `files`: the auto class and pipeline of its first architecture, and its processor.
/// `None` when the config names no architecture.
pub fn transformers_info(config: &Map<String, Value>, files: &[&str]) -> Option<Value> {
    let arch = config.get("architectures")?.as_array()?.first()?.as_str()?;
    const HEADS: [(&str, &str, &str); 12] = [
        ("ForCausalLM", "AutoModelForCausalLM", "text-generation"),
        ("LMHeadModel", "AutoModelForCausalLM", "text-generation"),
        (
            "ForSequenceClassification",
            "AutoModelForSequenceClassification",
            "text-classification",
        ),
        (
            "ForTokenClassification",
            "AutoModelForTokenClassification",
            "token-classification",
        ),
        (
            "ForQuestionAnswering",
            "AutoModelForQuestionAnswering",
            "question-answering",
        ),
        ("ForMaskedLM", "AutoModelForMaskedLM", "fill-mask"),
        (
            "ForConditionalGeneration",
            "AutoModelForSeq2SeqLM",
            "text2text-generation",
        ),
        (
            "ForImageClassification",
            "AutoModelForImageClassification",
            "image-classification",
        ),
        (
            "ForObjectDetection",
            "AutoModelForObjectDetection",
            "object-detection",
        ),
        (
            "ForSpeechSeq2Seq",
            "AutoModelForSpeechSeq2Seq",
            "automatic-speech-recognition",
        ),
        ("ForCTC", "AutoModelForCTC", "automatic-speech-recognition"),
        ("Model", "AutoModel", "feature-extraction"),
    ];
    let (auto_model, pipeline) = HEADS
        .iter()
        .find(|(suffix, _, _)| arch.ends_with(suffix))
        .map_or(("AutoModel", None), |(_, auto, pipe)| (*auto, Some(*pipe)));
    let has = |name: &str| files.contains(&name);
    let processor = if has("processor_config.json") {
        Some("AutoProcessor")
    } else if has("tokenizer.json") || has("tokenizer_config.json") {
        Some("AutoTokenizer")
    } else if has("preprocessor_config.json") {
        Some("AutoImageProcessor")
    } else {
        None
    };
    let mut info = json!({ "auto_model": auto_model });
    if let Some(p) = pipeline {
        info["pipeline_tag"] = json!(p);
    }
    if let Some(p) = processor {
        info["processor"] = json!(p);
    }
    Some(info)
}

/// `widgetData`: the card's `widget` list when it has one, else the default inputs of the
/// pipeline (text pipelines only), else `None`.
pub fn widget_data(card: &Map<String, Value>, pipeline: Option<&str>) -> Option<Value> {
    if let Some(widget) = card.get("widget").filter(|w| w.is_array()) {
        return Some(widget.clone());
    }
    let texts: &[&str] = match pipeline? {
        "text-generation" | "text2text-generation" => &[
            "My name is Julien and I like to",
            "Paris is an amazing place to visit,",
            "Once upon a time,",
        ],
        "fill-mask" => &["Paris is the [MASK] of France."],
        "text-classification" | "sentiment-analysis" => &["I like you. I love you"],
        "token-classification" => &["My name is Wolfgang and I live in Berlin"],
        "feature-extraction" | "sentence-similarity" => &["Today is a sunny day."],
        "summarization" | "translation" => {
            &["The tower is 324 metres tall, about the same height as an 81-storey building."]
        }
        _ => return None,
    };
    Some(Value::Array(
        texts.iter().map(|t| json!({ "text": t })).collect(),
    ))
}

/// Extensions of formats that are pickles (loading one can run code).
const PICKLE_EXTENSIONS: [&str; 8] = ["bin", "pt", "pth", "pkl", "pickle", "ckpt", "joblib", "npy"];

/// Whether a file's format is pickle-based (by its extension).
pub fn is_pickle(path: &str) -> bool {
    path.rsplit_once('.').is_some_and(|(_, ext)| {
        PICKLE_EXTENSIONS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(ext))
    })
}

/// `securityFileStatus` of a file (see the module's note: no scanner runs here).
pub fn file_security(path: &str) -> Value {
    let status = if is_pickle(path) { "unscanned" } else { "safe" };
    json!({ "status": status, "avScan": null, "pickleImportScan": null })
}

/// `securityRepoStatus` of a repo whose files are `files`: the pickle-based ones are listed
/// as not scanned.
pub fn repo_security<'a>(files: impl IntoIterator<Item = &'a str>) -> Value {
    let unscanned: Vec<&str> = files.into_iter().filter(|p| is_pickle(p)).collect();
    json!({ "scansDone": unscanned.is_empty(), "filesWithIssues": [], "unscannedFiles": unscanned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_index_is_checked_like_the_hubs() {
        let good = "---\nlicense: mit\nmodel-index:\n- name: m\n  results:\n  - task: {type: text-generation}\n    dataset: {type: wikitext, name: WikiText}\n    metrics:\n    - {type: perplexity, value: 12.5}\n---\n";
        assert_eq!(validate_metadata(good), Validation::default());
        let bad = "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: text-generation}\n    metrics:\n    - {type: 3, value: high}\n---\n";
        let v = validate_metadata(bad);
        assert_eq!(
            v.errors,
            [
                "\"model-index[0].results[0].dataset\" is required",
                "\"model-index[0].results[0].metrics[0].type\" must be a string",
            ]
        );
        assert_eq!(v.warnings.len(), 2, "{:?}", v.warnings);
        assert_eq!(
            validate_metadata("---\nmodel-index: 3\n---\n").errors,
            ["\"model-index\" must be an array"]
        );
        assert_eq!(validate_metadata("---\na: [\n---\n").errors.len(), 1);
        assert_eq!(
            validate_metadata("---\nlicense: {a: 1}\n---\n").errors,
            ["\"license\" must be a string or an array of strings"]
        );
    }

    #[test]
    fn transformers_info_and_widgets_follow_the_architecture() {
        let config: Map<String, Value> =
            serde_json::from_value(json!({ "architectures": ["LlamaForCausalLM"] })).unwrap();
        assert_eq!(
            transformers_info(&config, &["config.json", "tokenizer.json"]),
            Some(
                json!({ "auto_model": "AutoModelForCausalLM", "pipeline_tag": "text-generation", "processor": "AutoTokenizer" })
            )
        );
        assert_eq!(transformers_info(&Map::new(), &[]), None);
        assert_eq!(
            widget_data(&Map::new(), Some("text-generation")).unwrap()[0]["text"],
            "My name is Julien and I like to"
        );
        let card: Map<String, Value> =
            serde_json::from_value(json!({ "widget": [{ "text": "hi" }] })).unwrap();
        assert_eq!(
            widget_data(&card, Some("fill-mask")),
            Some(json!([{ "text": "hi" }]))
        );
        assert_eq!(file_security("model.safetensors")["status"], "safe");
        assert_eq!(file_security("pytorch_model.bin")["status"], "unscanned");
    }
}
