use crate::{id, ids, model, models, open};
use hub_protocol::repo::RepoType;
use hub_search::{ListQuery, RepoDoc, SearchError, SearchIndex, Sort, parse_card};
use std::sync::Arc;

fn with(hub_id: &str, f: impl FnOnce(&mut RepoDoc)) -> RepoDoc {
    let mut doc = model(hub_id);
    f(&mut doc);
    doc
}

#[test]
fn upsert_replace_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    assert!(index.is_empty());
    index.upsert(with("alice/a", |d| d.likes = 1)).unwrap();
    index.upsert(model("bob/b")).unwrap();
    assert_eq!(ids(&index, &models()), ["alice/a", "bob/b"]);

    // Replace by id: one document, the new content.
    index
        .upsert(with("alice/a", |d| {
            d.likes = 7;
            d.sha = "abc".into();
        }))
        .unwrap();
    let page = index.query(&models()).unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items[0].likes, 7);
    assert_eq!(page.items[0].sha, "abc");
    assert_eq!(index.len(), 2);
    let got = index.get(&id(RepoType::Model, "alice/a")).unwrap().unwrap();
    assert_eq!(got.likes, 7);

    index.remove(&id(RepoType::Model, "alice/a")).unwrap();
    assert_eq!(ids(&index, &models()), ["bob/b"]);
    assert_eq!(index.get(&id(RepoType::Model, "alice/a")).unwrap(), None);
    // Removing what is not there is fine.
    index.remove(&id(RepoType::Model, "nobody/x")).unwrap();
}

#[test]
fn kinds_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index.upsert(model("alice/x")).unwrap();
    index
        .upsert(RepoDoc::new(id(RepoType::Dataset, "alice/x")))
        .unwrap();
    index
        .upsert(RepoDoc::new(id(RepoType::Space, "alice/y")))
        .unwrap();
    assert_eq!(ids(&index, &models()), ["alice/x"]);
    assert_eq!(ids(&index, &ListQuery::new(RepoType::Dataset)), ["alice/x"]);
    assert_eq!(ids(&index, &ListQuery::new(RepoType::Space)), ["alice/y"]);
    index.remove(&id(RepoType::Dataset, "alice/x")).unwrap();
    assert_eq!(ids(&index, &models()), ["alice/x"]);
    assert!(ids(&index, &ListQuery::new(RepoType::Dataset)).is_empty());
}

#[test]
fn author_filter() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index
        .upsert_many(["Meta/a", "meta-llama/b", "Meta/c", "other/meta"].map(model))
        .unwrap();
    let mut q = models();
    q.author = Some("meta".into());
    assert_eq!(ids(&index, &q), ["Meta/a", "Meta/c"]);
    q.author = Some("META-LLAMA".into());
    assert_eq!(ids(&index, &q), ["meta-llama/b"]);
    q.author = Some("nobody".into());
    assert!(ids(&index, &q).is_empty());
}

#[test]
fn substring_search() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index
        .upsert_many(
            [
                "meta-llama/Llama-3.1-8B",
                "TheBloke/llama_2.gguf",
                "alice/bert-base",
                "bob/tiny.llm",
            ]
            .map(model),
        )
        .unwrap();
    let search = |s: &str| {
        let mut q = models();
        q.search = Some(s.into());
        ids(&index, &q)
    };
    assert_eq!(
        search("LLAMA"),
        ["TheBloke/llama_2.gguf", "meta-llama/Llama-3.1-8B"]
    );
    assert_eq!(search("3.1-8"), ["meta-llama/Llama-3.1-8B"]);
    assert_eq!(search("a_2."), ["TheBloke/llama_2.gguf"]);
    assert_eq!(search("ert-ba"), ["alice/bert-base"]);
    assert_eq!(search("alice/bert"), ["alice/bert-base"]);
    assert_eq!(search("bloke/"), ["TheBloke/llama_2.gguf"]);
    // `.` is literal, not "any character".
    assert!(search("tiny-llm").is_empty());
    assert_eq!(search("y.l"), ["bob/tiny.llm"]);
    assert!(search("y.x").is_empty());
    // Regex metacharacters and characters no id has: no match, no error.
    for s in [
        ".*", "a|b", "(", ")", "[", "]", "{2}", "^a", "b$", "\\", "+", "?", "ü", "a b", "*",
    ] {
        assert!(search(s).is_empty(), "{s:?}");
    }
    // Blank search means no constraint; an over-long one matches nothing.
    assert_eq!(search("  ").len(), 4);
    assert!(search(&"a".repeat(10_000)).is_empty());
}

#[test]
fn filters_are_anded_and_match_pipeline_and_library() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let card = parse_card(
        "---\nlicense: mit\nlanguage: [en]\nlibrary_name: transformers\n\
         pipeline_tag: text-generation\ntags: [llama]\n---\n",
    );
    index
        .upsert(with("a/one", |d| {
            d.tags = card.tags.clone();
            d.pipeline_tag = card.pipeline_tag.clone();
            d.library_name = card.library_name.clone();
            d.card_data = card.card_data.clone();
        }))
        .unwrap();
    // Not in `tags`, only in pipeline_tag / library_name fields.
    index
        .upsert(with("b/two", |d| {
            d.tags = vec!["license:mit".into()];
            d.pipeline_tag = Some("text-to-image".into());
            d.library_name = Some("diffusers".into());
        }))
        .unwrap();
    let filter = |f: &[&str]| {
        let mut q = models();
        q.filters = f.iter().map(|s| s.to_string()).collect();
        ids(&index, &q)
    };
    assert_eq!(filter(&["license:mit"]), ["a/one", "b/two"]);
    assert_eq!(filter(&["license:mit", "en"]), ["a/one"]);
    assert_eq!(filter(&["diffusers"]), ["b/two"]);
    assert_eq!(filter(&["text-to-image", "license:mit"]), ["b/two"]);
    assert!(filter(&["text-to-image", "en"]).is_empty());
    assert!(filter(&["License:MIT"]).is_empty());
    assert!(filter(&["nothing"]).is_empty());
    let page = index.query(&models()).unwrap();
    assert_eq!(page.items[0].card_data["license"], "mit");

    let mut q = models();
    q.filters = vec!["x".into(); 1000];
    assert!(matches!(index.query(&q), Err(SearchError::InvalidQuery(_))));
}

#[test]
fn each_sort_order() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    // (id, downloads, likes, created, modified)
    let rows = [
        ("c/c", 10, 3, -100, 50),
        ("a/a", 30, 1, 200, 10),
        ("b/b", 20, 2, 100, 30),
        ("d/d", 20, 0, 0, 40),
    ];
    index
        .upsert_many(rows.map(|(n, dl, lk, cr, md)| {
            with(n, |d| {
                d.downloads = dl;
                d.likes = lk;
                d.created_at = cr;
                d.last_modified = md;
            })
        }))
        .unwrap();
    let sorted = |sort| {
        let mut q = models();
        q.sort = sort;
        ids(&index, &q)
    };
    assert_eq!(sorted(None), ["a/a", "b/b", "c/c", "d/d"]);
    // Ties (b/b and d/d at 20) by id.
    assert_eq!(sorted(Some(Sort::Downloads)), ["a/a", "b/b", "d/d", "c/c"]);
    assert_eq!(sorted(Some(Sort::Likes)), ["c/c", "b/b", "a/a", "d/d"]);
    assert_eq!(sorted(Some(Sort::CreatedAt)), ["a/a", "b/b", "d/d", "c/c"]);
    assert_eq!(
        sorted(Some(Sort::LastModified)),
        ["c/c", "d/d", "b/b", "a/a"]
    );
}

#[test]
fn pagination_with_next_offset() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let names: Vec<String> = (0..25).map(|i| format!("ns/m{i:02}")).collect();
    index
        .upsert_many(names.iter().map(|n| with(n, |d| d.downloads = 7)))
        .unwrap();
    let mut q = models();
    q.sort = Some(Sort::Downloads);
    q.limit = 10;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = index.query(&q).unwrap();
        assert_eq!(page.total, 25);
        seen.extend(page.items.iter().map(|d| d.id.hub_id()));
        pages += 1;
        match page.next_offset {
            Some(next) => q.offset = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, names);

    q.offset = 20;
    let page = index.query(&q).unwrap();
    assert_eq!(page.items.len(), 5);
    assert_eq!(page.next_offset, None);
    q.offset = 1000;
    let page = index.query(&q).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_offset, None);
    q.offset = 0;
    q.limit = usize::MAX;
    assert_eq!(index.query(&q).unwrap().items.len(), 25);
}

#[test]
fn private_repos_hidden_unless_namespace_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index
        .upsert_many([
            model("alice/public"),
            with("alice/secret", |d| d.private = true),
            with("acme/internal", |d| d.private = true),
            with("Alice2/secret", |d| d.private = true),
        ])
        .unwrap();
    let visible = |allowed: &[&str]| {
        let mut q = models();
        q.include_private_of = allowed.iter().map(|s| s.to_string()).collect();
        ids(&index, &q)
    };
    assert_eq!(visible(&[]), ["alice/public"]);
    assert_eq!(visible(&["alice"]), ["alice/public", "alice/secret"]);
    assert_eq!(
        visible(&["alice", "acme"]),
        ["acme/internal", "alice/public", "alice/secret"]
    );
    // Exact names only: no prefix or case games.
    assert_eq!(visible(&["ALICE", "alic", "acme/"]), ["alice/public"]);
    // Other filters do not widen visibility.
    let mut q = models();
    q.author = Some("acme".into());
    q.search = Some("internal".into());
    assert!(ids(&index, &q).is_empty());
    let mut q = models();
    q.sort = Some(Sort::Downloads);
    assert_eq!(index.query(&q).unwrap().total, 1);
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rows = || {
        let mut q = models();
        q.sort = Some(Sort::Downloads);
        q.search = Some("m".into());
        q
    };
    let before;
    {
        let index = open(&dir);
        index
            .upsert_many((0..5).map(|i| with(&format!("ns/m{i}"), |d| d.downloads = i)))
            .unwrap();
        index.upsert(with("ns/m0", |d| d.downloads = 100)).unwrap();
        index.remove(&id(RepoType::Model, "ns/m3")).unwrap();
        // Pending only in memory until drop folds it in.
        index
            .set_downloads(&id(RepoType::Model, "ns/m1"), 50)
            .unwrap();
        before = index.query(&rows()).unwrap();
        assert_eq!(ids(&index, &rows()), ["ns/m0", "ns/m1", "ns/m4", "ns/m2"]);
    }
    let index = open(&dir);
    let after = index.query(&rows()).unwrap();
    assert_eq!(after, before);
    assert_eq!(after.items[1].downloads, 50);
}

#[test]
fn second_open_of_same_dir_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _index = open(&dir);
    let err = SearchIndex::open(&dir.path().join("search")).unwrap_err();
    assert!(matches!(err, SearchError::Open { .. }), "{err:?}");
}

#[test]
fn set_downloads_affects_sort_and_survives_writes() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index
        .upsert_many([
            with("a/a", |d| d.downloads = 10),
            with("b/b", |d| d.downloads = 20),
            with("c/c", |d| d.downloads = 30),
        ])
        .unwrap();
    let mut q = models();
    q.sort = Some(Sort::Downloads);
    assert_eq!(ids(&index, &q), ["c/c", "b/b", "a/a"]);

    index
        .set_downloads(&id(RepoType::Model, "a/a"), 100)
        .unwrap();
    assert_eq!(ids(&index, &q), ["a/a", "c/c", "b/b"]);
    assert_eq!(index.query(&q).unwrap().items[0].downloads, 100);
    assert_eq!(
        index
            .get(&id(RepoType::Model, "a/a"))
            .unwrap()
            .unwrap()
            .downloads,
        100
    );

    // Another write folds the pending count into the index; still the same answer.
    index.upsert(with("d/d", |d| d.downloads = 5)).unwrap();
    assert_eq!(ids(&index, &q), ["a/a", "c/c", "b/b", "d/d"]);
    index
        .set_downloads(&id(RepoType::Model, "b/b"), 1000)
        .unwrap();
    index.flush().unwrap();
    assert_eq!(ids(&index, &q), ["b/b", "a/a", "c/c", "d/d"]);

    // An upsert's own count replaces an older pending one.
    index
        .set_downloads(&id(RepoType::Model, "c/c"), 2000)
        .unwrap();
    index.upsert(with("c/c", |d| d.downloads = 1)).unwrap();
    assert_eq!(ids(&index, &q), ["b/b", "a/a", "d/d", "c/c"]);

    // Unknown repos are ignored, and many updates fold on their own.
    index
        .set_downloads(&id(RepoType::Model, "zz/none"), 9)
        .unwrap();
    for i in 0..(hub_search::DOWNLOADS_FLUSH_THRESHOLD as u64 + 5) {
        index.set_downloads(&id(RepoType::Model, "d/d"), i).unwrap();
        index
            .set_downloads(&id(RepoType::Model, &format!("x/n{i}")), i)
            .unwrap();
    }
    assert_eq!(ids(&index, &q), ["d/d", "b/b", "a/a", "c/c"]);
    assert_eq!(index.len(), 4);
}

#[test]
fn concurrent_readers_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(open(&dir));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let index = Arc::clone(&index);
            std::thread::spawn(move || {
                for i in 0..10 {
                    let name = format!("t{t}/m{i}");
                    index.upsert(with(&name, |d| d.downloads = i)).unwrap();
                    index
                        .set_downloads(&id(RepoType::Model, &name), i * 10)
                        .unwrap();
                    let mut q = models();
                    q.author = Some(format!("t{t}"));
                    assert_eq!(index.query(&q).unwrap().total, i as usize + 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut q = models();
    q.sort = Some(Sort::Downloads);
    let page = index.query(&q).unwrap();
    assert_eq!(page.total, 40);
    assert_eq!(page.items[0].downloads, 90);
}

#[test]
fn rejects_unreadable_documents() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let mut deep = serde_json::Value::Null;
    for _ in 0..200 {
        deep = serde_json::Value::Array(vec![deep]);
    }
    let doc = with("a/deep", |d| {
        d.card_data.insert("x".into(), deep);
    });
    assert!(matches!(
        index.upsert(doc),
        Err(SearchError::InvalidDoc { .. })
    ));
    assert!(index.is_empty());
}

/// Substring search agrees with a naive `to_lowercase().contains()` over many ids and needles,
/// metacharacters included.
#[test]
fn substring_search_matches_naive_model() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let parts = ["Llama", "a.b", "x-y", "q_r", "GPT2", "m0", "a", "B-"];
    let mut hub_ids = Vec::new();
    for (i, ns) in ["org", "Org.A", "u_1", "x-y"].iter().enumerate() {
        for (j, p) in parts.iter().enumerate() {
            let name = format!("{p}{}{}", parts[(i + j) % parts.len()], j);
            hub_ids.push(format!("{ns}/{}", name.trim_end_matches('.')));
        }
    }
    index.upsert_many(hub_ids.iter().map(|n| model(n))).unwrap();
    let mut needles: Vec<String> = [
        ".", "-", "_", "/", "a.", ".b", "o/", "/l", "LLAMA", "2m", "y/", "-y/", "a.b-", "[a]",
        "a+", "a*", "a?", "(a)", "{1}", "\\.", "^o", "2$", "a|b", "%", "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every substring (up to 6 bytes) of a few ids.
    for id in hub_ids.iter().step_by(5) {
        for start in 0..id.len() {
            for end in start + 1..=(start + 6).min(id.len()) {
                needles.push(id[start..end].to_string());
            }
        }
    }
    let mut q = models();
    for needle in needles {
        q.search = Some(needle.clone());
        let mut expected: Vec<String> = hub_ids
            .iter()
            .filter(|id| {
                needle.trim().is_empty() || id.to_lowercase().contains(&needle.to_lowercase())
            })
            .cloned()
            .collect();
        expected.sort();
        assert_eq!(ids(&index, &q), expected, "search {needle:?}");
    }
}
