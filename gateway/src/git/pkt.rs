//! pkt-lines (gitprotocol-common): a 4-hex-digit length that counts itself, then data;
//! `0000` flush, `0001` delimiter, `0002` response end. And the receive-pack request's
//! command list built from them.

use hub_repo::RefCommand;
use std::io::Read;

/// Largest pkt-line, length prefix included (gitprotocol-common).
pub(crate) const MAX_PKT_LEN: usize = 65520;

/// Most ref updates one push may carry.
pub(crate) const MAX_COMMANDS: usize = 1000;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pkt {
    Flush,
    Delim,
    ResponseEnd,
    Data(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PktError {
    #[error("read request")]
    Io(#[from] std::io::Error),
    #[error("bad pkt-line length")]
    BadLength,
    #[error("request ended inside a pkt-line")]
    Truncated,
    #[error("bad command line")]
    BadCommand,
    #[error("ref name with control characters")]
    ControlInRefName,
    #[error("too many ref updates (limit {MAX_COMMANDS})")]
    TooManyCommands,
    #[error("no ref updates")]
    NoCommands,
}

/// Reads one pkt-line; `None` at a clean end of input.
pub(crate) fn read_pkt(r: &mut dyn Read) -> Result<Option<Pkt>, PktError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(PktError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let text = std::str::from_utf8(&len).map_err(|_| PktError::BadLength)?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PktError::BadLength);
    }
    let n = usize::from_str_radix(text, 16).map_err(|_| PktError::BadLength)?;
    match n {
        0 => Ok(Some(Pkt::Flush)),
        1 => Ok(Some(Pkt::Delim)),
        2 => Ok(Some(Pkt::ResponseEnd)),
        3 => Err(PktError::BadLength),
        n if n > MAX_PKT_LEN => Err(PktError::BadLength),
        n => {
            let mut data = vec![0u8; n - 4];
            r.read_exact(&mut data).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => PktError::Truncated,
                _ => PktError::Io(e),
            })?;
            Ok(Some(Pkt::Data(data)))
        }
    }
}

/// Appends one data pkt-line.
pub(crate) fn write_pkt(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() + 4 <= MAX_PKT_LEN);
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

pub(crate) fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// The command list of a receive-pack request: ref updates, the client's capabilities, and
/// the `shallow` lines a shallow client sends first (ignored: the checks stop at objects the
/// repository already has).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PushRequest {
    pub commands: Vec<RefCommand>,
    pub capabilities: Vec<String>,
}

impl PushRequest {
    /// A flush-only body: git's probe before a large push. It changes nothing.
    pub fn is_probe(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

fn is_hex40(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the commands up to the flush; the pack (if any) follows in `r`. A body that is only
/// a flush is git's probe (sent before it streams a pack larger than `http.postBuffer`, to
/// check credentials first): it comes back as a request with no commands.
pub(crate) fn read_push_request(r: &mut dyn Read) -> Result<PushRequest, PktError> {
    let mut req = PushRequest::default();
    loop {
        let line = match read_pkt(r)? {
            Some(Pkt::Flush) => break,
            Some(Pkt::Data(line)) => line,
            Some(_) => return Err(PktError::BadCommand),
            None if req.commands.is_empty() => return Err(PktError::NoCommands),
            None => return Err(PktError::Truncated),
        };
        let (line, caps) = match line.iter().position(|&b| b == 0) {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (&line[..], None),
        };
        let line = std::str::from_utf8(line).map_err(|_| PktError::BadCommand)?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(oid) = line.strip_prefix("shallow ") {
            if !is_hex40(oid) || !req.commands.is_empty() {
                return Err(PktError::BadCommand);
            }
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PktError::BadCommand);
        };
        if !is_hex40(old) || !is_hex40(new) || name.is_empty() || name.contains(' ') {
            return Err(PktError::BadCommand);
        }
        // git refuses these in ref names (check-ref-format); refused here, before the name
        // could reach a pkt-line of the report or a log.
        if name.chars().any(char::is_control) {
            return Err(PktError::ControlInRefName);
        }
        if let Some(caps) = caps {
            if !req.commands.is_empty() {
                return Err(PktError::BadCommand);
            }
            let caps = std::str::from_utf8(caps).map_err(|_| PktError::BadCommand)?;
            req.capabilities = caps.split_whitespace().map(str::to_owned).collect();
        }
        if req.commands.len() == MAX_COMMANDS {
            return Err(PktError::TooManyCommands);
        }
        req.commands.push(RefCommand {
            old: old.to_ascii_lowercase(),
            new: new.to_ascii_lowercase(),
            name: name.to_owned(),
        });
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_pkt(&mut out, s.as_bytes());
        out
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn reads_flush_delim_data() {
        let mut input: &[u8] = b"0000000100020008abcd";
        assert_eq!(read_pkt(&mut input).unwrap(), Some(Pkt::Flush));
        assert_eq!(read_pkt(&mut input).unwrap(), Some(Pkt::Delim));
        assert_eq!(read_pkt(&mut input).unwrap(), Some(Pkt::ResponseEnd));
        assert_eq!(
            read_pkt(&mut input).unwrap(),
            Some(Pkt::Data(b"abcd".to_vec()))
        );
        assert_eq!(read_pkt(&mut input).unwrap(), None);
    }

    #[test]
    fn rejects_bad_lengths() {
        for bad in [&b"0003"[..], b"zzzz", b"fff1", b"000", b"0009abc", b"+00a"] {
            let mut input = bad;
            assert!(read_pkt(&mut input).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_push_commands_and_capabilities() {
        let mut body = pkt(&format!(
            "{}  {A} refs/heads/main\0report-status side-band-64k agent=git/2.47\n",
            "0".repeat(40)
        ));
        body.extend(pkt(&format!("{A} {B} refs/heads/dev\n")));
        body.extend(b"0000PACK");
        let mut input = &body[..];
        // Two spaces after the old id: not a valid command.
        assert!(matches!(
            read_push_request(&mut input),
            Err(PktError::BadCommand)
        ));

        let mut body = pkt(&format!("shallow {A}"));
        body.extend(pkt(&format!(
            "{} {A} refs/heads/main\0report-status side-band-64k\n",
            "0".repeat(40)
        )));
        body.extend(pkt(&format!("{A} {B} refs/heads/dev\n")));
        body.extend(b"0000PACK");
        let mut input = &body[..];
        let req = read_push_request(&mut input).unwrap();
        assert_eq!(req.commands.len(), 2);
        assert!(req.commands[0].is_create());
        assert_eq!(req.commands[1].name, "refs/heads/dev");
        assert!(req.has("side-band-64k") && req.has("report-status"));
        assert_eq!(input, b"PACK");
    }

    #[test]
    fn push_request_bounds() {
        // An empty body is no request.
        let mut input: &[u8] = b"";
        assert!(matches!(
            read_push_request(&mut input),
            Err(PktError::NoCommands)
        ));
        // A flush alone is git's probe.
        let mut input: &[u8] = b"0000";
        assert!(read_push_request(&mut input).unwrap().is_probe());
        let mut body = Vec::new();
        for _ in 0..=MAX_COMMANDS {
            body.extend(pkt(&format!("{A} {B} refs/heads/x\n")));
        }
        body.extend(b"0000");
        let mut input = &body[..];
        assert!(matches!(
            read_push_request(&mut input),
            Err(PktError::TooManyCommands)
        ));
        // Truncated before the flush.
        let body = pkt(&format!("{A} {B} refs/heads/x\n"));
        let mut input = &body[..];
        assert!(matches!(
            read_push_request(&mut input),
            Err(PktError::Truncated)
        ));
    }

    #[test]
    fn refuses_control_characters_in_ref_names() {
        for name in [
            "refs/heads/a\nb",
            "refs/heads/a\rb",
            "refs/heads/\u{1b}[31m",
            "refs/heads/\u{7f}",
        ] {
            let body = pkt(&format!("{A} {B} {name}\0report-status\n"));
            let mut input = &body[..];
            assert!(
                matches!(
                    read_push_request(&mut input),
                    Err(PktError::ControlInRefName)
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        // A small deterministic generator (no proptest in this crate's dev-dependencies).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = round % 97;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Bias towards hex digits so lengths parse often.
                    if i % 3 == 0 {
                        b"0123456789abcdef"[(x % 16) as usize]
                    } else {
                        x as u8
                    }
                })
                .collect();
            let mut input = &bytes[..];
            let _ = read_push_request(&mut input);
            let mut input = &bytes[..];
            while let Ok(Some(_)) = read_pkt(&mut input) {}
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes, and sequences of length-prefixed lines whose declared lengths lie
        /// (short, long, under 4, past the end): the parsers answer Ok or an error, never
        /// panic, and never claim more than the input holds.
        #[test]
        fn pkt_parsers_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            lines in proptest::collection::vec(
                (0u16..=0xffff, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)),
                0..12,
            ),
        ) {
            let mut input = &raw[..];
            let _ = read_push_request(&mut input);
            let mut input = &raw[..];
            while let Ok(Some(_)) = read_pkt(&mut input) {}
            let mut framed = Vec::new();
            for (len, data) in &lines {
                framed.extend(format!("{len:04x}").as_bytes());
                framed.extend(data);
            }
            let mut input = &framed[..];
            let mut seen = 0usize;
            while let Ok(Some(pkt)) = read_pkt(&mut input) {
                if let Pkt::Data(d) = pkt {
                    seen += d.len();
                }
            }
            proptest::prop_assert!(seen <= framed.len());
            let mut input = &framed[..];
            let _ = read_push_request(&mut input);
        }
    }
}
