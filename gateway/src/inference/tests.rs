//! Router tests of the inference routes, on a tiny random Llama committed to a repository.

use super::*;
use crate::testing::{Fixture, Reply, fixture, send};
use base64::Engine as _;
use futures::StreamExt;
use hub_infer::engine::EngineConfig;
use hub_infer::serve::{ServeConfig, fixture as model_fixture};
use tower::ServiceExt;

const MODEL: &str = "admin/tiny";

/// A fixture with inference enabled and `admin/tiny` committed (plus `admin/secret`, private).
async fn setup(engine: EngineConfig) -> (Fixture, tempfile::TempDir) {
    let f = fixture().await;
    let cache = tempfile::tempdir().unwrap();
    assert!(f.state.enable_inference(InferenceConfig {
        cache_dir: cache.path().to_owned(),
        registry: RegistryConfig {
            max_models: 2,
            serve: ServeConfig {
                engine,
                command_queue: 16,
            },
        },
    }));
    for (name, private) in [("tiny", false), ("secret", true)] {
        let r = post(
            &f,
            "/api/repos/create",
            Some(&f.admin),
            json!({"name": name, "organization": null, "private": private}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let mut lines =
            vec![json!({"key": "header", "value": {"summary": "tiny model", "description": ""}})];
        for (path, bytes) in model_fixture::files(4096) {
            let content = base64::engine::general_purpose::STANDARD.encode(bytes);
            lines.push(json!({"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}}));
        }
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let r = send(
            &f.app,
            "POST",
            &format!("/api/models/admin/{name}/commit/main"),
            Some(&f.admin),
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    (f, cache)
}

async fn post(f: &Fixture, uri: &str, token: Option<&str>, body: Value) -> Reply {
    send(
        &f.app,
        "POST",
        uri,
        token,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(r: &Reply) -> Vec<String> {
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    r.text()
        .split("\n\n")
        .filter_map(|frame| {
            frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "w10 w11 w12"}],
        "temperature": 0,
        "max_tokens": 12,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn chat_completion_stream_equals_non_stream() {
    let (f, _cache) = setup(EngineConfig::default()).await;
    let r = post(&f, "/v1/chat/completions", None, chat(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_owned();
    let finish = choice["finish_reason"].as_str().unwrap();
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion));
    assert_eq!(finish == "length", completion == 12, "{v}");
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + completion
    );

    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let data = sse_data(&r);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion);
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    assert!(
        chunks[..chunks.len() - 2]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // The loaded model is listed.
    let r = send(&f.app, "GET", "/v1/models", None, &[], "").await;
    assert_eq!(r.json()["data"][0]["id"], MODEL);
}

#[tokio::test]
async fn completions_tgi_and_hf_routes_agree() {
    let (f, _cache) = setup(EngineConfig::default()).await;
    let prompt = "w20 w21 w22 w23";
    let r = post(
        &f,
        "/v1/completions",
        None,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_owned();

    let r = post(
        &f,
        "/v1/completions",
        None,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0, "stream": true}),
    )
    .await;
    let data = sse_data(&r);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    assert!(!chunks.last().unwrap()["choices"][0]["finish_reason"].is_null());

    // TGI: greedy by default; the same text.
    let tgi = json!({"model": MODEL, "inputs": prompt, "parameters": {"max_new_tokens": 6, "details": true}});
    let r = post(&f, "/generate", None, tgi.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["generated_text"], text);
    let details = &v["details"];
    assert!(["length", "eos_token"].contains(&details["finish_reason"].as_str().unwrap()));
    assert_eq!(
        details["tokens"].as_array().unwrap().len() as u64,
        details["generated_tokens"].as_u64().unwrap()
    );

    let r = post(&f, "/generate_stream", None, tgi).await;
    let data = sse_data(&r);
    assert!(data.iter().all(|d| d != "[DONE]"));
    let events: Vec<Value> = data
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], text);
    assert_eq!(last["details"]["generated_tokens"], events.len());
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["generated_text"].is_null())
    );

    let r = post(
        &f,
        &format!("/models/{MODEL}"),
        None,
        json!({"inputs": prompt, "parameters": {"max_new_tokens": 6}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!([{"generated_text": text}]));
}

#[tokio::test]
async fn errors_use_each_apis_shape() {
    let (f, cache) = setup(EngineConfig::default()).await;
    let openai = |r: &Reply, status: StatusCode, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        assert!(v["error"]["type"].is_string());
    };
    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"model": "admin/nope"})),
    )
    .await;
    openai(&r, StatusCode::NOT_FOUND, "admin/nope");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // A private model is not found without access, and found with it.
    let secret = chat(json!({"model": "admin/secret"}));
    let r = post(&f, "/v1/chat/completions", None, secret.clone()).await;
    openai(&r, StatusCode::NOT_FOUND, "admin/secret");
    let r = post(&f, "/v1/chat/completions", Some(&f.admin), secret).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"model": "admin/tiny:nobranch"})),
    )
    .await;
    openai(&r, StatusCode::NOT_FOUND, "nobranch");
    let r = post(&f, "/v1/chat/completions", None, json!({"model": MODEL})).await;
    openai(&r, StatusCode::BAD_REQUEST, "messages");
    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"temperature": 5})),
    )
    .await;
    openai(&r, StatusCode::BAD_REQUEST, "temperature");
    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"max_tokens": 1_000_000})),
    )
    .await;
    openai(
        &r,
        StatusCode::BAD_REQUEST,
        "maximum context length is 4096",
    );
    let r = post(
        &f,
        "/v1/completions",
        None,
        json!({"model": MODEL, "prompt": ["a", "b"]}),
    )
    .await;
    openai(&r, StatusCode::BAD_REQUEST, "one prompt");
    let r = send(&f.app, "POST", "/v1/completions", None, &[], "{not json").await;
    openai(&r, StatusCode::BAD_REQUEST, "invalid request body");

    // A repository without model files cannot be served; the reply names no paths.
    let r = post(
        &f,
        "/api/repos/create",
        Some(&f.admin),
        json!({"name": "empty", "organization": null}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post(
        &f,
        "/v1/chat/completions",
        None,
        chat(json!({"model": "admin/empty"})),
    )
    .await;
    openai(&r, StatusCode::UNPROCESSABLE_ENTITY, "cannot be served");
    assert!(!r.text().contains(cache.path().to_str().unwrap()));

    let tgi = |r: &Reply, status: StatusCode, kind: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error_type"], kind, "{v}");
        assert!(v["error"].is_string());
    };
    let r = post(&f, "/generate", None, json!({"inputs": "w5"})).await;
    tgi(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let r = post(
        &f,
        "/generate",
        None,
        json!({"model": "admin/nope", "inputs": "w5"}),
    )
    .await;
    tgi(&r, StatusCode::NOT_FOUND, "not_found");
    let r = post(
        &f,
        "/generate",
        None,
        json!({"model": MODEL, "inputs": "w5", "parameters": {"max_new_tokens": 10_000}}),
    )
    .await;
    tgi(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let r = post(
        &f,
        "/models/admin/tiny",
        None,
        json!({"inputs": "w5", "parameters": {"temperature": -1.0}}),
    )
    .await;
    tgi(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation");
}

#[tokio::test]
async fn full_queue_is_429_and_disabled_inference_is_503() {
    let (f, _cache) = setup(EngineConfig {
        max_waiting: 0,
        ..EngineConfig::default()
    })
    .await;
    let r = post(&f, "/v1/chat/completions", None, chat(json!({}))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "overloaded");
    let r = post(
        &f,
        "/generate",
        None,
        json!({"model": MODEL, "inputs": "w5"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["error_type"], "overloaded");

    let plain = fixture().await;
    let r = post(&plain, "/v1/chat/completions", None, chat(json!({}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
}

#[tokio::test]
async fn client_disconnect_cancels_and_frees_blocks() {
    let (f, _cache) = setup(EngineConfig::default()).await;
    let body = chat(json!({"stream": true, "max_tokens": 4000}));
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut frames = resp.into_body().into_data_stream();
    let first = frames.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    let inference = f.state.inference().unwrap().clone();
    let id = RepoId::parse(RepoType::Model, MODEL).unwrap();
    let commit = f.state.repos().resolve(&id, "main").unwrap();
    let key = ModelKey {
        repo: MODEL.into(),
        commit,
    };
    let handle = inference
        .registry
        .get_or_load(&key, || -> Result<LoadedModel, LoadFailure> {
            panic!("the model is loaded")
        })
        .unwrap();
    let busy = handle.stats().await.unwrap();
    assert_eq!(busy.running + busy.waiting, 1, "{busy:?}");
    drop(frames);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = handle.stats().await.unwrap();
        if s.cancelled == 1 {
            assert_eq!(s.free_blocks, s.total_blocks);
            assert_eq!((s.running, s.waiting), (0, 0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never cancelled: {s:?}"
        );
        tokio::task::yield_now().await;
    }
}
