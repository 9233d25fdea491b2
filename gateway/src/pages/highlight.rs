//! A small syntax highlighter for the file view: per line, it marks comments, strings,
//! numbers and the keywords of the languages a model repo holds (Python, Rust, JavaScript /
//! TypeScript, C / C++, Go, shell, JSON, YAML, TOML, Markdown headings). Tokens are plain text
//! that the template escapes; an unknown extension is one plain token per line.
//!
//! Why not `syntect`: it needs its regex engine (onig, C, or fancy-regex) and ships its
//! syntax sets as a few MB of dumps, for a view that people mostly use on `config.json`,
//! `README.md` and a Python file. Its state is per line: a string or comment that spans
//! lines is coloured on its first line only.

/// The token classes (`tok-…` in the stylesheet).
pub(crate) type Token = (&'static str, String);

struct Lang {
    line_comment: &'static [&'static str],
    keywords: &'static [&'static str],
}

const PY: Lang = Lang {
    line_comment: &["#"],
    keywords: &[
        "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
        "elif", "else", "except", "False", "finally", "for", "from", "if", "import", "in", "is",
        "lambda", "None", "not", "or", "pass", "raise", "return", "True", "try", "while", "with",
        "yield", "self",
    ],
};
const RS: Lang = Lang {
    line_comment: &["//"],
    keywords: &[
        "as", "async", "await", "break", "const", "continue", "crate", "else", "enum", "false",
        "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
        "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
        "unsafe", "use", "where", "while",
    ],
};
const C_LIKE: Lang = Lang {
    line_comment: &["//"],
    keywords: &[
        "auto",
        "break",
        "case",
        "catch",
        "class",
        "const",
        "continue",
        "default",
        "delete",
        "do",
        "else",
        "enum",
        "export",
        "extends",
        "false",
        "for",
        "func",
        "function",
        "go",
        "if",
        "import",
        "interface",
        "let",
        "new",
        "null",
        "package",
        "return",
        "static",
        "struct",
        "switch",
        "this",
        "throw",
        "true",
        "try",
        "type",
        "typedef",
        "var",
        "void",
        "while",
        "int",
        "float",
        "double",
        "char",
        "bool",
        "include",
        "namespace",
        "template",
    ],
};
const SH: Lang = Lang {
    line_comment: &["#"],
    keywords: &[
        "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "case", "esac",
        "function", "return", "export", "local", "set",
    ],
};
const DATA: Lang = Lang {
    line_comment: &["#"],
    keywords: &["true", "false", "null", "True", "False", "None"],
};
const JSON: Lang = Lang {
    line_comment: &[],
    keywords: &["true", "false", "null"],
};

fn lang(ext: &str) -> Option<&'static Lang> {
    Some(match ext {
        "py" | "pyi" => &PY,
        "rs" => &RS,
        "js" | "mjs" | "ts" | "tsx" | "jsx" | "c" | "h" | "cc" | "cpp" | "hpp" | "cu" | "go"
        | "java" | "kt" | "swift" => &C_LIKE,
        "sh" | "bash" => &SH,
        "yaml" | "yml" | "toml" | "cfg" | "ini" => &DATA,
        "json" | "jsonl" => &JSON,
        _ => return None,
    })
}

/// The lines of `text` as tokens, for a file with extension `ext`.
pub(crate) fn highlight(ext: &str, text: &str) -> Vec<Vec<Token>> {
    let markdown = matches!(ext, "md" | "markdown");
    let lang = lang(ext);
    text.lines()
        .map(|line| match lang {
            Some(lang) => tokens(lang, line),
            None if markdown && line.starts_with('#') => vec![("kw", line.to_owned())],
            None => vec![("", line.to_owned())],
        })
        .collect()
}

fn tokens(lang: &Lang, line: &str) -> Vec<Token> {
    let chars: Vec<char> = line.chars().collect();
    let mut out: Vec<Token> = Vec::new();
    let mut plain = String::new();
    let flush = |plain: &mut String, out: &mut Vec<Token>| {
        if !plain.is_empty() {
            out.push(("", std::mem::take(plain)));
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest: String = chars[i..].iter().take(2).collect();
        if lang.line_comment.iter().any(|m| rest.starts_with(m)) {
            flush(&mut plain, &mut out);
            out.push(("com", chars[i..].iter().collect()));
            break;
        }
        if c == '"' || c == '\'' || c == '`' {
            flush(&mut plain, &mut out);
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
            out.push(("str", chars[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
        {
            flush(&mut plain, &mut out);
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            out.push(("num", chars[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if lang.keywords.contains(&word.as_str()) {
                flush(&mut plain, &mut out);
                out.push(("kw", word));
            } else {
                plain.push_str(&word);
            }
            continue;
        }
        plain.push(c);
        i += 1;
    }
    flush(&mut plain, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tokens() {
        let lines = highlight(
            "py",
            "def f(x):  # add one\n    return x + 1.5 if 'a' else \"b\\\"c\"",
        );
        assert_eq!(lines[0][0], ("kw", "def".to_owned()));
        assert_eq!(lines[0].last().unwrap(), &("com", "# add one".to_owned()));
        assert!(lines[1].contains(&("num", "1.5".to_owned())));
        assert!(lines[1].contains(&("str", "'a'".to_owned())));
        assert!(lines[1].contains(&("str", "\"b\\\"c\"".to_owned())));
        // Every character is kept, in order.
        let joined: String = lines[1].iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(joined, "    return x + 1.5 if 'a' else \"b\\\"c\"");
    }

    #[test]
    fn unknown_and_unterminated_are_safe() {
        assert_eq!(highlight("bin", "x<y"), vec![vec![("", "x<y".to_owned())]]);
        let lines = highlight("json", "{\"a\": \"unterminated");
        let joined: String = lines[0].iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(joined, "{\"a\": \"unterminated");
        assert_eq!(highlight("rs", "").len(), 0);
    }
}
