//! Streaming reader for the Hub's NDJSON commit body.
//!
//! `huggingface_hub` sends file content inline, base64 in a JSON string, when preupload says
//! `regular` — which this gateway answers for every file, so that clients with Xet enabled can
//! upload at all (see the `hub` module). A single `file` line can then be gigabytes long. Lines
//! up to [`SMALL_LINE`] bytes are buffered and parsed with serde; a longer line must be a `file`
//! line whose `content` comes first (as every `huggingface_hub` version writes it), and its
//! content is base64-decoded as it arrives and streamed straight into the chunk store. Memory
//! stays at a few body frames whatever the file size.
//!
//! Each line is checked as it arrives, before the rest of the body is read ([`Checker`]): the
//! first line must be the header, and every added file's path must be valid — a body that is
//! bad early is refused early, not after gigabytes were read. The small lines kept for the
//! commit are bounded together by [`MAX_BUFFERED`] (big lines are in the store, not counted).

use crate::error::AppError;
use crate::import::StreamImport;
use axum::body::Body;
use base64::Engine;
use futures::StreamExt;
use hub_store::{FileInfo, Store};
#[cfg(test)]
use std::io::Read;

/// Lines up to this size are parsed whole.
pub(crate) const SMALL_LINE: usize = 1024 * 1024;

/// Most bytes of small lines one commit body may hold (they stay in memory until the commit,
/// with their decoded content); more is 413. Files in longer lines stream into the store and
/// do not count.
pub(crate) const MAX_BUFFERED: usize = 256 * 1024 * 1024;

/// One line of the body: a small line to parse, or a big `file` line already in the store.
#[derive(Debug)]
pub(crate) enum Line {
    Small(Vec<u8>),
    StoredFile { path: String, info: FileInfo },
}

fn bad(msg: impl Into<String>) -> AppError {
    AppError::BadRequest(msg.into())
}

/// Reads the whole body into lines, streaming big file lines into `store`. `max_total` bounds
/// the body; `max_lines` bounds the number of lines (each small line is kept until the commit).
pub(crate) async fn read_lines(
    body: Body,
    store: Store,
    max_total: u64,
    max_lines: usize,
) -> Result<Vec<Line>, AppError> {
    read_lines_within(body, store, max_total, max_lines, MAX_BUFFERED).await
}

/// [`read_lines`] with `max_buffered` bytes of small lines at most.
async fn read_lines_within(
    body: Body,
    store: Store,
    max_total: u64,
    max_lines: usize,
    max_buffered: usize,
) -> Result<Vec<Line>, AppError> {
    let mut checker = Checker::default();
    let mut buffered: usize = 0;
    let mut stream = body.into_data_stream();
    let mut lines = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut big: Option<BigLine> = None;
    let mut total: u64 = 0;
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                drop(big.take());
                return Err(bad(format!("reading the commit body failed: {e}")));
            }
        };
        total = total.saturating_add(frame.len() as u64);
        if total > max_total {
            drop(big.take());
            return Err(AppError::PayloadTooLarge(format!(
                "commit body exceeds {max_total} bytes"
            )));
        }
        let mut data: &[u8] = &frame;
        while !data.is_empty() {
            if let Some(b) = big.as_mut() {
                let (used, done) = b.feed(data).await?;
                data = &data[used..];
                if done {
                    let finished = big.take().map(BigLine::finish);
                    if let Some(f) = finished {
                        let line = f.await?;
                        checker.check(&line)?;
                        lines.push(line);
                    }
                }
                continue;
            }
            // Never buffer more than SMALL_LINE + 1 bytes of one line, whatever the framing.
            let room = (SMALL_LINE + 1).saturating_sub(buf.len()).max(1);
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    buf.extend_from_slice(&window[..i]);
                    data = &data[i + 1..];
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        buffered = buffered.saturating_add(buf.len());
                        if buffered > max_buffered {
                            return Err(AppError::PayloadTooLarge(format!(
                                "commit holds more than {max_buffered} bytes of small lines; \
                                 split it into several commits"
                            )));
                        }
                        let line = Line::Small(std::mem::take(&mut buf));
                        checker.check(&line)?;
                        lines.push(line);
                    }
                    buf.clear();
                }
                None => {
                    buf.extend_from_slice(window);
                    data = &data[window.len()..];
                    if buf.len() > SMALL_LINE {
                        checker.big_line()?;
                        let mut started = BigLine::start(&buf, store.clone())?;
                        buf.clear();
                        let pending = std::mem::take(&mut started.leftover);
                        let (used, done) = started.feed(&pending).await?;
                        big = Some(started);
                        if done {
                            // The line ended inside what was buffered: hand back the rest.
                            let rest = pending[used..].to_vec();
                            let finished = big.take().map(BigLine::finish);
                            if let Some(f) = finished {
                                let line = f.await?;
                                checker.check(&line)?;
                                lines.push(line);
                            }
                            buf = rest;
                        }
                    }
                }
            }
            if lines.len() > max_lines {
                drop(big.take());
                return Err(bad(format!("commit has more than {max_lines} lines")));
            }
        }
    }
    if big.take().is_some() {
        return Err(bad("commit body ends inside a file line"));
    }
    if !buf.iter().all(u8::is_ascii_whitespace) {
        if buffered.saturating_add(buf.len()) > max_buffered {
            return Err(AppError::PayloadTooLarge(format!(
                "commit holds more than {max_buffered} bytes of small lines"
            )));
        }
        let line = Line::Small(buf);
        checker.check(&line)?;
        lines.push(line);
    }
    Ok(lines)
}

/// The checks a line passes as soon as it is read (the commit handler checks everything
/// again, and more, before it commits): the header comes first, and a file that is added
/// has a valid path.
#[derive(Debug, Default)]
struct Checker {
    lines: usize,
}

impl Checker {
    fn check(&mut self, line: &Line) -> Result<(), AppError> {
        self.lines += 1;
        let n = self.lines;
        match line {
            Line::Small(raw) => {
                #[derive(serde::Deserialize)]
                struct Peek {
                    key: String,
                    value: PeekValue,
                }
                #[derive(serde::Deserialize)]
                struct PeekValue {
                    path: Option<String>,
                }
                let peek: Peek = serde_json::from_slice(raw)
                    .map_err(|e| bad(format!("commit body line {n}: invalid JSON: {e}")))?;
                if n == 1 && peek.key != "header" {
                    return Err(header_first());
                }
                if matches!(peek.key.as_str(), "file" | "lfsFile") {
                    let path = peek.value.path.unwrap_or_default();
                    check_path(&path)?;
                }
                Ok(())
            }
            Line::StoredFile { path, .. } => {
                if n == 1 {
                    return Err(header_first());
                }
                check_path(path)
            }
        }
    }

    /// A line too long to buffer starts: it cannot be the header.
    fn big_line(&self) -> Result<(), AppError> {
        if self.lines == 0 {
            return Err(header_first());
        }
        Ok(())
    }
}

fn header_first() -> AppError {
    bad("commit body must start with a header line")
}

fn check_path(path: &str) -> Result<(), AppError> {
    hub_protocol::repo::validate_repo_path(path).map_err(|e| {
        // A path can be long; the message shows its start.
        let shown: String = path.chars().take(200).collect();
        // A path the Hub refuses: 422, like every other path check.
        AppError::Unprocessable(format!("invalid path {shown:?}: {e}"))
    })
}

/// Skips JSON whitespace.
fn ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Expects `lit` at `i` (after whitespace); returns the index after it.
fn expect(s: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    let i = ws(s, i);
    s.get(i..i + lit.len())
        .filter(|got| *got == lit)
        .map(|_| i + lit.len())
}

/// The prefix of a big line: `{"key": "file", "value": {"content": "`. Returns the index of
/// the first content character.
fn content_start(prefix: &[u8]) -> Option<usize> {
    let mut i = expect(prefix, 0, b"{")?;
    i = expect(prefix, i, b"\"key\"")?;
    i = expect(prefix, i, b":")?;
    i = expect(prefix, i, b"\"file\"")?;
    i = expect(prefix, i, b",")?;
    i = expect(prefix, i, b"\"value\"")?;
    i = expect(prefix, i, b":")?;
    i = expect(prefix, i, b"{")?;
    i = expect(prefix, i, b"\"content\"")?;
    i = expect(prefix, i, b":")?;
    expect(prefix, i, b"\"")
}

enum Phase {
    /// Inside the base64 string; `escape` after a backslash.
    Content { escape: bool },
    /// After the closing quote, up to the newline.
    Tail,
}

/// A `file` line too long to buffer, streaming into the store.
struct BigLine {
    phase: Phase,
    /// Base64 characters not yet decoded (fewer than 4 after each feed).
    b64: Vec<u8>,
    tail: Vec<u8>,
    /// Bytes of the started line after the content's opening quote, fed on start.
    leftover: Vec<u8>,
    /// Dropped before [`BigLine::finish`] (bad content, a body error, a client that went
    /// away), the import fails and records nothing.
    import: StreamImport,
}

impl BigLine {
    fn start(prefix: &[u8], store: Store) -> Result<Self, AppError> {
        let at = content_start(prefix).ok_or_else(|| {
            bad(format!(
                "a commit line longer than {SMALL_LINE} bytes must be a file line with its content first"
            ))
        })?;
        Ok(Self {
            phase: Phase::Content { escape: false },
            b64: Vec::with_capacity(256 * 1024),
            tail: Vec::new(),
            leftover: prefix[at..].to_vec(),
            import: StreamImport::start(store),
        })
    }

    /// Consumes bytes of the line; returns how many were used and whether the line ended.
    async fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), AppError> {
        let mut i = 0;
        while i < data.len() {
            match &mut self.phase {
                Phase::Content { escape } => {
                    if *escape {
                        if data[i] != b'/' {
                            return Err(bad("file content may only escape '/'"));
                        }
                        *escape = false;
                        self.b64.push(b'/');
                        i += 1;
                        continue;
                    }
                    // Take the run up to the next quote or backslash in one go.
                    let run_end = data[i..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\')
                        .map_or(data.len(), |p| i + p);
                    let run = &data[i..run_end];
                    if !run
                        .iter()
                        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
                    {
                        return Err(bad("file content is not base64"));
                    }
                    self.b64.extend_from_slice(run);
                    i = run_end;
                    if self.b64.len() >= 256 * 1024 {
                        self.decode(false).await?;
                    }
                    if i < data.len() {
                        let c = data[i];
                        i += 1;
                        if c == b'\\' {
                            if let Phase::Content { escape } = &mut self.phase {
                                *escape = true;
                            }
                        } else {
                            self.decode(true).await?;
                            self.phase = Phase::Tail;
                        }
                    }
                }
                Phase::Tail => {
                    if let Some(nl) = data[i..].iter().position(|&c| c == b'\n') {
                        self.tail.extend_from_slice(&data[i..i + nl]);
                        return Ok((i + nl + 1, true));
                    }
                    self.tail.extend_from_slice(&data[i..]);
                    if self.tail.len() > 64 * 1024 {
                        return Err(bad("file line has too much after its content"));
                    }
                    return Ok((data.len(), false));
                }
            }
        }
        Ok((data.len(), false))
    }

    /// Decodes whole base64 quads (all of them when `last`) and sends them to the import.
    async fn decode(&mut self, last: bool) -> Result<(), AppError> {
        let n = if last {
            self.b64.len()
        } else {
            self.b64.len() / 4 * 4
        };
        if n == 0 {
            return Ok(());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&self.b64[..n])
            .map_err(|e| bad(format!("file content is not valid base64: {e}")))?;
        self.b64.drain(..n);
        self.import.send(decoded).await?;
        Ok(())
    }

    /// Ends the line: closes the import and parses what followed the content.
    async fn finish(self) -> Result<Line, AppError> {
        let Self { tail, import, .. } = self;
        let info = import.finish().await?;
        // The tail is `, "path": "…", "encoding": "base64"}}`: the rest of the value object,
        // then the line's closing brace.
        let tail = String::from_utf8(tail).map_err(|_| bad("file line is not UTF-8"))?;
        let inner = tail
            .trim()
            .strip_suffix('}')
            .map(str::trim_end)
            .and_then(|t| t.strip_prefix(','))
            .ok_or_else(|| bad("malformed file line after its content"))?;
        #[derive(serde::Deserialize)]
        struct Rest {
            path: String,
            encoding: Option<String>,
        }
        let rest: Rest = serde_json::from_str(&format!("{{{inner}"))
            .map_err(|e| bad(format!("malformed file line after its content: {e}")))?;
        if rest.encoding.as_deref() != Some("base64") {
            return Err(bad("a long file line must be base64-encoded"));
        }
        Ok(Line::StoredFile {
            path: rest.path,
            info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn body_in_chunks(data: Vec<u8>, chunk: usize) -> Body {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(chunk.max(1)).map(|c| Ok(c.to_vec())).collect();
        Body::from_stream(stream::iter(parts))
    }

    fn file_line(path: &str, content: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        // Exactly as Python's json.dumps writes it.
        format!(
            "{{\"key\": \"file\", \"value\": {{\"content\": \"{b64}\", \"path\": \"{path}\", \"encoding\": \"base64\"}}}}\n"
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn big_lines_stream_into_the_store_whatever_the_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut body = b"{\"key\": \"header\", \"value\": {\"summary\": \"s\"}}\n".to_vec();
        body.extend(file_line("w/model.bin", &content));
        body.extend(file_line("small.txt", b"tiny"));
        for chunk in [1000, 65_536, 777_777, 10_000_000] {
            let lines = read_lines(
                body_in_chunks(body.clone(), chunk),
                store.clone(),
                u64::MAX,
                100,
            )
            .await
            .unwrap();
            assert_eq!(lines.len(), 3, "chunk {chunk}");
            assert!(matches!(&lines[0], Line::Small(_)));
            match &lines[1] {
                Line::StoredFile { path, info } => {
                    assert_eq!(path, "w/model.bin");
                    assert_eq!(info.size, content.len() as u64);
                    let mut back = Vec::new();
                    store
                        .open_file(&info.sha256)
                        .unwrap()
                        .read_to_end(&mut back)
                        .unwrap();
                    assert_eq!(back, content);
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(&lines[2], Line::Small(l) if l.ends_with(b"}}")));
        }
    }

    /// A body that sends `head`, then nothing, forever (a client still sending).
    fn endless_body(head: Vec<u8>) -> Body {
        let first = stream::iter([Ok::<_, std::io::Error>(head)]);
        Body::from_stream(first.chain(stream::pending()))
    }

    async fn refused_early(head: Vec<u8>) -> AppError {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let read = read_lines(endless_body(head), store, u64::MAX, 100);
        match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
            Ok(Ok(lines)) => panic!("accepted {} lines", lines.len()),
            Ok(Err(e)) => e,
            Err(_) => panic!("waited for the rest of the body instead of refusing"),
        }
    }

    #[tokio::test]
    async fn bad_lines_are_refused_before_the_rest_of_the_body() {
        let header = b"{\"key\": \"header\", \"value\": {\"summary\": \"s\"}}\n".to_vec();
        let long_path = "a/".repeat(3000);
        for bad_line in [
            file_line(&long_path, b"x"),
            file_line("../up", b"x"),
            b"{\"key\": \"lfsFile\", \"value\": {\"path\": \".git/config\", \"oid\": \"00\"}}\n"
                .to_vec(),
            b"{\"key\": \"file\", \"value\": {\"content\": \"eA==\"}}\n".to_vec(),
        ] {
            let mut head = header.clone();
            head.extend(bad_line);
            let err = refused_early(head).await;
            assert!(
                matches!(&err, AppError::Unprocessable(m) if m.contains("invalid path")),
                "{err:?}"
            );
        }
        // The header comes first, also before a file line too long to buffer.
        let err = refused_early(file_line("a.txt", b"x")).await;
        assert!(
            matches!(&err, AppError::BadRequest(m) if m.contains("header")),
            "{err:?}"
        );
        let mut big = file_line("a.bin", &vec![7u8; SMALL_LINE]);
        big.truncate(SMALL_LINE + 100);
        let err = refused_early(big).await;
        assert!(
            matches!(&err, AppError::BadRequest(m) if m.contains("header")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn small_lines_are_bounded_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut body = b"{\"key\": \"header\", \"value\": {\"summary\": \"s\"}}\n".to_vec();
        for i in 0..100 {
            body.extend(file_line(&format!("f{i}.txt"), &[b'x'; 1000]));
        }
        let within = read_lines_within(
            body_in_chunks(body.clone(), 4096),
            store.clone(),
            u64::MAX,
            1000,
            200_000,
        )
        .await;
        assert_eq!(within.unwrap().len(), 101);
        let over =
            read_lines_within(body_in_chunks(body, 4096), store, u64::MAX, 1000, 50_000).await;
        assert!(
            matches!(over, Err(AppError::PayloadTooLarge(_))),
            "{over:?}"
        );
    }

    #[tokio::test]
    async fn malformed_big_lines_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big = "A".repeat(SMALL_LINE + 10);
        let cases = vec![
            // Not a file line.
            format!("{{\"key\": \"lfsFile\", \"value\": {{\"content\": \"{big}\"}}}}\n"),
            // Content not first.
            format!(
                "{{\"key\": \"file\", \"value\": {{\"path\": \"a\", \"content\": \"{big}\"}}}}\n"
            ),
            // Not base64.
            format!(
                "{{\"key\": \"file\", \"value\": {{\"content\": \"{big}!!\", \"path\": \"a\", \"encoding\": \"base64\"}}}}\n"
            ),
            // Truncated.
            format!("{{\"key\": \"file\", \"value\": {{\"content\": \"{big}"),
        ];
        // Each after a header line, so that each is refused for what it is.
        let header = "{\"key\": \"header\", \"value\": {\"summary\": \"s\"}}\n";
        for case in cases {
            match read_lines(
                body_in_chunks(format!("{header}{case}").into_bytes(), 65_536),
                store.clone(),
                u64::MAX,
                10,
            )
            .await
            {
                Ok(lines) => panic!("accepted a malformed line ({} lines)", lines.len()),
                Err(err) => assert!(matches!(err, AppError::BadRequest(_)), "{err:?}"),
            }
        }
        assert!(
            store.files().unwrap().is_empty(),
            "nothing half-imported is visible"
        );
        // A complete content with a bad tail is refused too (its bytes are stored but
        // referenced by nothing, so gc removes them).
        let missing_path = format!(
            "{{\"key\": \"file\", \"value\": {{\"content\": \"{big}\", \"encoding\": \"base64\"}}}}\n"
        );
        match read_lines(
            body_in_chunks(format!("{header}{missing_path}").into_bytes(), 65_536),
            store.clone(),
            u64::MAX,
            10,
        )
        .await
        {
            Ok(lines) => panic!("accepted a file line without path ({} lines)", lines.len()),
            Err(err) => assert!(matches!(err, AppError::BadRequest(_)), "{err:?}"),
        }
        let too_big = read_lines(
            body_in_chunks(vec![b'x'; 5000], 100),
            store.clone(),
            4000,
            10,
        )
        .await;
        assert!(matches!(too_big, Err(AppError::PayloadTooLarge(_))));
    }

    /// Reads `body` cut into the given chunk sizes, on a runtime of its own (proptest cases
    /// are plain functions).
    fn read_chunked(body: &[u8], cuts: &[usize]) -> Result<Vec<Line>, AppError> {
        let mut parts: Vec<Result<Vec<u8>, std::io::Error>> = Vec::new();
        let mut rest = body;
        for &cut in cuts.iter().cycle().take(body.len() + 1) {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(cut.clamp(1, rest.len()));
            parts.push(Ok(a.to_vec()));
            rest = b;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(read_lines_within(
            Body::from_stream(stream::iter(parts)),
            store,
            1 << 20,
            64,
            1 << 16,
        ))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Arbitrary bytes, and bodies made of JSON-ish fragments (keys, paths, base64, braces,
        /// quotes, escapes, newlines), in arbitrary chunkings: the reader answers lines or a
        /// 4xx, never panics, and never returns more lines than its bound.
        #[test]
        fn the_ndjson_reader_never_panics(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "{\"key\":\"header\",\"value\":{\"summary\":\"s\"}}\n",
                    "{\"key\": \"file\", \"value\": {\"content\": \"",
                    "eA==", "\", \"path\": \"", "a/b.txt", "../x", "\\u0000", "\\\"",
                    "\", \"encoding\": \"base64\"}}\n", "{", "}", "\"", "\n", "\r\n", ":", ",",
                    "{\"key\":\"deletedFile\",\"value\":{\"path\":\"a\"}}\n",
                ]),
                0..40,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let structured: Vec<u8> = pieces.concat().into_bytes();
            for body in [&raw, &structured] {
                match read_chunked(body, &cuts) {
                    Ok(lines) => proptest::prop_assert!(lines.len() <= 64),
                    Err(e) => proptest::prop_assert!(
                        matches!(
                            e,
                            AppError::BadRequest(_)
                                | AppError::Unprocessable(_)
                                | AppError::PayloadTooLarge(_)
                        ),
                        "{e:?}"
                    ),
                }
            }
        }

        /// A valid body reads the same whatever its chunking.
        #[test]
        fn chunking_does_not_change_what_is_read(cuts in proptest::collection::vec(1usize..200, 1..8)) {
            let mut body = b"{\"key\": \"header\", \"value\": {\"summary\": \"s\"}}\n".to_vec();
            body.extend(file_line("d/a.txt", b"hello"));
            body.extend(b"{\"key\": \"deletedFile\", \"value\": {\"path\": \"d/b.txt\"}}\n");
            let whole = read_chunked(&body, &[body.len()]).unwrap();
            let cut = read_chunked(&body, &cuts).unwrap();
            let small = |lines: &[Line]| -> Vec<Vec<u8>> {
                lines
                    .iter()
                    .map(|l| match l {
                        Line::Small(b) => b.clone(),
                        Line::StoredFile { path, .. } => path.as_bytes().to_vec(),
                    })
                    .collect()
            };
            proptest::prop_assert_eq!(small(&whole), small(&cut));
        }
    }
}
