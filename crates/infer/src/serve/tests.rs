use std::time::Duration;

use super::*;

fn tiny(engine: EngineConfig, max_position_embeddings: usize) -> ModelHandle {
    tiny_on(engine, max_position_embeddings, 0)
}

fn tiny_on(engine: EngineConfig, max_position_embeddings: usize, threads: usize) -> ModelHandle {
    let dir = tempfile::tempdir().unwrap();
    fixture::write(dir.path(), max_position_embeddings).unwrap();
    let loaded = LoadedModel::from_dir(dir.path()).unwrap();
    assert!(loaded.template.is_some());
    ModelHandle::spawn(
        loaded,
        ServeConfig {
            engine,
            command_queue: 8,
            threads,
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
async fn engines_run_on_the_configured_thread_budget() {
    let default = tiny(EngineConfig::default(), 256);
    assert_eq!(default.threads(), crate::threads::default_threads());
    let (one, three) = (
        tiny_on(EngineConfig::default(), 256, 1),
        tiny_on(EngineConfig::default(), 256, 3),
    );
    assert_eq!((one.threads(), three.threads()), (1, 3));
    // Same tokens whatever the pool: the split over workers does not change the arithmetic.
    let mut texts = Vec::new();
    for m in [&default, &one, &three] {
        let s = m
            .submit_text(request(vec![3, 4, 5, 9], 8, true), vec![])
            .await
            .unwrap();
        texts.push(collect(s).await.1);
    }
    assert_eq!(texts[0], texts[1]);
    assert_eq!(texts[1], texts[2]);
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
    let dir = tempfile::tempdir().unwrap();
    fixture::write(dir.path(), 256).unwrap();
    let one = estimate_memory(
        &LoadedModel::from_dir(dir.path()).unwrap().model,
        &EngineConfig::default(),
    );
    // Room for two models, not three.
    let registry = Registry::new(RegistryConfig {
        memory_budget: 2 * one + one / 2,
        serve: ServeConfig::default(),
    });
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
    assert_eq!(registry.memory_used(), 2 * one);
}

#[test]
fn registry_keeps_busy_models_and_refuses_what_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    fixture::write(dir.path(), 256).unwrap();
    let load = || LoadedModel::from_dir(dir.path());
    let one = estimate_memory(&load().unwrap().model, &EngineConfig::default());
    let key = |c: &str| ModelKey {
        repo: "ns/tiny".into(),
        commit: c.into(),
    };
    let registry = Registry::new(RegistryConfig {
        memory_budget: one + one / 2,
        serve: ServeConfig::default(),
    });
    // `a` is held (a request in flight): `b` cannot evict it.
    let a = registry.get_or_load(&key("a"), load).unwrap();
    assert_eq!(a.memory_bytes(), one);
    let busy = registry.get_or_load(&key("b"), load);
    assert!(
        matches!(busy, Err(RegistryError::Busy { needed, .. }) if needed == one),
        "{busy:?}"
    );
    assert_eq!(registry.loaded(), vec![key("a")]);
    // Once `a` is idle it is evicted for `b`.
    drop(a);
    registry.get_or_load(&key("b"), load).unwrap();
    assert_eq!(registry.loaded(), vec![key("b")]);
    assert!(registry.get(&key("a")).is_none());
    assert!(registry.get(&key("b")).is_some());
    // A model larger than the whole budget is an error, and evicts nothing.
    let small = Registry::new(RegistryConfig {
        memory_budget: one - 1,
        serve: ServeConfig::default(),
    });
    let too_large = small.get_or_load(&key("a"), load);
    assert!(
        matches!(too_large, Err(RegistryError::TooLarge { needed, budget }) if needed == one && budget == one - 1),
        "{too_large:?}"
    );
    assert!(small.loaded().is_empty());
}

#[test]
fn eviction_plan_takes_least_recently_used_idle_models_first() {
    let r = |bytes, idle| Resident { bytes, idle };
    let plan = |loaded: &[Resident], reserved, needed, budget| {
        plan_eviction::<()>(loaded, reserved, needed, budget)
    };
    let loaded = [r(30, true), r(30, false), r(30, true), r(10, true)];
    // Fits already: nothing goes.
    assert_eq!(plan(&loaded, 0, 0, 100).unwrap(), Vec::<usize>::new());
    // 100 used + 20 needed > 110: the LRU idle one (index 0) is enough.
    assert_eq!(plan(&loaded, 0, 20, 110).unwrap(), vec![0]);
    // Busy index 1 is skipped for the next idle one.
    assert_eq!(plan(&loaded, 0, 50, 100).unwrap(), vec![0, 2]);
    // Reserved bytes of engines still starting count as used.
    assert_eq!(plan(&loaded, 20, 50, 100).unwrap(), vec![0, 2, 3]);
    assert!(matches!(
        plan(&loaded, 0, 80, 100),
        Err(RegistryError::Busy {
            needed: 80,
            available: 70
        })
    ));
    assert!(matches!(
        plan(&[], 0, 101, 100),
        Err(RegistryError::TooLarge {
            needed: 101,
            budget: 100
        })
    ));
}

#[test]
fn mem_total_is_read_from_meminfo() {
    let text = "MemTotal:       24589400 kB\nMemFree:         1000 kB\n";
    assert_eq!(parse_mem_total(text), Some(24589400 * 1024));
    assert_eq!(parse_mem_total("MemFree: 3 kB\n"), None);
    assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
    assert!(default_memory_budget() > 0);
}

#[tokio::test(flavor = "current_thread")]
async fn greedy_logprobs_are_the_max_and_prompt_logprobs_cover_the_prompt() {
    let m = tiny(EngineConfig::default(), 256);
    let prompt = vec![3, 8, 11, 4, 9, 20, 7];
    let mut req = request(prompt.clone(), 6, true);
    req.sampling.top_logprobs = 5;
    req.sampling.prompt_logprobs = true;
    let (chunks, _) = collect(m.submit_text(req, Vec::new()).await.unwrap()).await;
    assert_eq!(chunks.len(), 6);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.top_logprobs.len(), 5);
        // Greedy: the generated token is the most likely one, with the same log-probability.
        assert_eq!(c.top_logprobs[0].token, c.token);
        assert_eq!(c.top_logprobs[0].logprob, c.logprob);
        assert!(
            c.top_logprobs
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob)
        );
        let mass: f32 = c.top_logprobs.iter().map(|t| t.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "{mass}");
        assert!(c.logprob <= 0.0);
        assert_eq!(c.prompt_logprobs.is_some(), i == 0);
    }
    let lps = chunks[0].prompt_logprobs.as_ref().unwrap();
    assert_eq!(lps.len(), prompt.len() - 1);
    assert!(lps.iter().all(|l| l.is_finite() && *l <= 0.0), "{lps:?}");
    // The same prompt chunked over several prefill steps gives the same values.
    let chunked = tiny(
        EngineConfig {
            max_batched_tokens: 3,
            ..EngineConfig::default()
        },
        256,
    );
    let mut req = request(prompt.clone(), 1, true);
    req.sampling.prompt_logprobs = true;
    let (c2, _) = collect(chunked.submit_text(req, Vec::new()).await.unwrap()).await;
    let lps2 = c2[0].prompt_logprobs.as_ref().unwrap();
    assert_eq!(lps2.len(), lps.len());
    for (a, b) in lps.iter().zip(lps2) {
        assert!((a - b).abs() < 1e-4, "{lps:?} vs {lps2:?}");
    }
    assert!(c2[0].top_logprobs.is_empty());
}
