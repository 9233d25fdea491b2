use std::time::Duration;

use super::*;

fn tiny(engine: EngineConfig, max_position_embeddings: usize) -> ModelHandle {
    let dir = tempfile::tempdir().unwrap();
    fixture::write(dir.path(), max_position_embeddings).unwrap();
    let loaded = LoadedModel::from_dir(dir.path()).unwrap();
    assert!(loaded.template.is_some());
    ModelHandle::spawn(
        loaded,
        ServeConfig {
            engine,
            command_queue: 8,
        },
    )
    .unwrap()
}

fn request(prompt: Vec<u32>, max_tokens: usize, ignore_eos: bool) -> SubmitRequest {
    SubmitRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos,
    }
}

async fn collect(mut s: TextStream) -> (Vec<TextChunk>, String) {
    let mut chunks = Vec::new();
    while let Some(c) = s.next().await {
        chunks.push(c.unwrap());
    }
    let text = chunks.iter().map(|c| c.text.as_str()).collect();
    (chunks, text)
}

/// Waits (bounded) until the engine's counters satisfy `ok`.
async fn wait_stats(m: &ModelHandle, ok: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = m.stats().await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never settled: {s:?}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn streams_text_equal_to_decoding_and_stops_at_length() {
    let m = tiny(EngineConfig::default(), 256);
    let s = m
        .submit_text(request(vec![3, 4, 5, 9], 12, true), vec![])
        .await
        .unwrap();
    let (chunks, text) = collect(s).await;
    assert_eq!(chunks.len(), 12);
    assert_eq!(chunks.last().unwrap().finish, Some(Finish::Length));
    assert!(chunks[..11].iter().all(|c| c.finish.is_none()));
    let ids: Vec<u32> = chunks.iter().map(|c| c.token).collect();
    assert_eq!(text, m.tokenizer().decode(&ids, true).unwrap());
    // Greedy is deterministic across runs.
    let again = m
        .submit_text(request(vec![3, 4, 5, 9], 12, true), vec![])
        .await
        .unwrap();
    assert_eq!(collect(again).await.1, text);
}

#[tokio::test(flavor = "current_thread")]
async fn stop_string_truncates_text_and_cancels() {
    let m = tiny(EngineConfig::default(), 256);
    let full = collect(
        m.submit_text(request(vec![3, 4, 5, 9], 20, true), vec![])
            .await
            .unwrap(),
    )
    .await
    .1;
    // Stop at the fourth word of the greedy answer.
    let words: Vec<&str> = full.split(' ').filter(|w| !w.is_empty()).collect();
    let stop = format!(" {}", words[3]);
    let at = full.find(&stop).unwrap();
    let s = m
        .submit_text(request(vec![3, 4, 5, 9], 20, true), vec![stop.clone()])
        .await
        .unwrap();
    let (chunks, text) = collect(s).await;
    assert_eq!(text, full[..at]);
    assert_eq!(chunks.last().unwrap().finish, Some(Finish::StopSequence));
    assert!(chunks.len() < 20);
    let stats = wait_stats(&m, |s| s.running == 0 && s.waiting == 0).await;
    assert_eq!(stats.free_blocks, stats.total_blocks);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_stream_cancels_and_frees_blocks() {
    let m = tiny(EngineConfig::default(), 4096);
    let mut s = m
        .submit_text(request(vec![3; 40], 4000, true), vec![])
        .await
        .unwrap();
    s.next().await.unwrap().unwrap();
    let busy = m.stats().await.unwrap();
    assert!(busy.free_blocks < busy.total_blocks, "{busy:?}");
    drop(s);
    // The request was cancelled (not finished: 4000 tokens are far off) and its blocks freed.
    let stats = wait_stats(&m, |s| s.cancelled == 1).await;
    assert_eq!(stats.free_blocks, stats.total_blocks);
    assert_eq!((stats.running, stats.waiting), (0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_and_impossible_requests_are_refused_at_once() {
    let config = EngineConfig {
        max_running: 1,
        max_waiting: 1,
        ..EngineConfig::default()
    };
    let m = tiny(config, 4096);
    // A runs (and keeps running), B waits, C finds the queue full.
    let mut a = m
        .submit_text(request(vec![3; 4], 4000, true), vec![])
        .await
        .unwrap();
    a.next().await.unwrap().unwrap();
    let _b = m.submit(request(vec![3; 4], 4, true)).await.unwrap();
    let c = m.submit(request(vec![3; 4], 4, true)).await;
    assert_eq!(c.unwrap_err(), SubmitError::QueueFull);
    let too_long = m.submit(request(vec![3; 4], 5000, true)).await;
    assert!(matches!(
        too_long,
        Err(SubmitError::Invalid(AddError::TooLong { .. }))
    ));
    let empty = m.submit(request(vec![], 4, true)).await;
    assert!(matches!(
        empty,
        Err(SubmitError::Invalid(AddError::EmptyPrompt))
    ));
}

#[test]
fn registry_loads_once_and_evicts_least_recently_used() {
    let registry = Registry::new(RegistryConfig {
        max_models: 2,
        serve: ServeConfig::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    fixture::write(dir.path(), 256).unwrap();
    let key = |c: &str| ModelKey {
        repo: "ns/tiny".into(),
        commit: c.into(),
    };
    let loads = std::cell::Cell::new(0);
    let load = || {
        loads.set(loads.get() + 1);
        LoadedModel::from_dir(dir.path())
    };
    registry.get_or_load(&key("a"), load).unwrap();
    registry.get_or_load(&key("b"), load).unwrap();
    registry.get_or_load(&key("a"), load).unwrap();
    assert_eq!(loads.get(), 2);
    registry.get_or_load(&key("c"), load).unwrap();
    assert_eq!(registry.loaded(), vec![key("c"), key("a")]);
    let failed = registry.get_or_load(&key("d"), || {
        Err::<LoadedModel, _>(std::io::Error::other("no weights"))
    });
    assert!(matches!(failed, Err(RegistryError::Load(_))));
    assert_eq!(registry.loaded(), vec![key("c"), key("a")]);
    registry.get_or_load(&key("a"), load).unwrap();
    assert_eq!(loads.get(), 3);
}
