//! A Space's build and run logs: the last lines kept in memory, and a broadcast for followers
//! (`GET /api/spaces/{id}/logs/{build,run}` as SSE).
//!
//! Bounded both ways: at most [`MAX_LINES`] lines of at most [`MAX_LINE`] bytes are kept, and a
//! follower that falls behind the broadcast loses lines rather than holding memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Lines kept per log.
pub const MAX_LINES: usize = 2000;
/// Longest line kept, in bytes; longer lines are cut.
pub const MAX_LINE: usize = 4096;

/// One line with the time it was logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: SystemTime,
    pub text: String,
}

/// A bounded log with followers.
#[derive(Debug)]
pub struct Log {
    lines: Mutex<VecDeque<LogLine>>,
    follow: broadcast::Sender<LogLine>,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    pub fn new() -> Self {
        Self {
            lines: Mutex::new(VecDeque::new()),
            follow: broadcast::channel(256).0,
        }
    }

    /// Appends `text` (one line; cut at [`MAX_LINE`] bytes on a character boundary).
    pub fn push(&self, text: &str) {
        let mut end = text.len().min(MAX_LINE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let line = LogLine {
            time: SystemTime::now(),
            text: text[..end].trim_end_matches(['\r', '\n']).to_owned(),
        };
        {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() == MAX_LINES {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        // No followers is fine.
        let _ = self.follow.send(line);
    }

    /// Forgets every line (a new build starts a new build log).
    pub fn clear(&self) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The lines kept, and a receiver of the lines logged after them.
    pub fn snapshot(&self) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // Subscribed under the lock: no line falls between the snapshot and the receiver.
        (lines.iter().cloned().collect(), self.follow.subscribe())
    }

    /// The text of every line kept, newline-joined (tests, error messages).
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_cut_to_size() {
        let log = Log::new();
        for i in 0..MAX_LINES + 5 {
            log.push(&format!("line {i}\n"));
        }
        let (lines, _) = log.snapshot();
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0].text, "line 5");
        log.push(&"é".repeat(MAX_LINE));
        let (lines, _) = log.snapshot();
        assert!(lines.last().unwrap().text.len() <= MAX_LINE);
    }

    #[tokio::test]
    async fn followers_get_new_lines() {
        let log = Log::new();
        log.push("old");
        let (lines, mut rx) = log.snapshot();
        assert_eq!(lines.len(), 1);
        log.push("new");
        assert_eq!(rx.recv().await.unwrap().text, "new");
    }
}
