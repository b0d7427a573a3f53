//! Where a placeholder sits in a file of a known format: inside which kind of string, as a whole
//! bare value, elsewhere outside strings, or in a comment. A small lexer over the template's own
//! text (placeholders are opaque to it); the real parsers check the result afterwards.

use std::path::Path;

/// A file format whose strings the agent knows how to escape and whose parser it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
    Yaml,
    /// `.env` files, as `dotenvy` (and Docker Compose) read them.
    Env,
}

/// The kind of string a placeholder sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    /// `"…"` or `"""…"""`.
    TomlBasic,
    /// `'…'` or `'''…'''`: no escapes exist.
    TomlLiteral,
    Json,
    /// `"…"`.
    YamlDouble,
    /// `'…'`: only `''`, and line breaks fold.
    YamlSingle,
    /// `"…"`.
    EnvDouble,
    /// `'…'`: no escapes exist.
    EnvSingle,
}

/// Where a placeholder sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    String(Quote),
    /// Outside any string, and the whole value of a key or an array element.
    Value,
    /// Outside any string, anywhere else (a key, a table header, part of a bare token).
    Other,
    Comment,
}

/// A piece of a template as the lexer sees it.
pub enum Piece<'a> {
    Text(&'a str),
    Placeholder,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Out,
    /// In a string; `long` for TOML's triple-quoted ones.
    Str {
        quote: Quote,
        long: bool,
    },
    Comment,
}

/// What opened a bracket, so that `[`/`,` can tell an array element from a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bracket {
    Array,
    /// A TOML table header `[x]`, an inline table or an object/mapping.
    Other,
}

struct Scanner {
    format: Format,
    mode: Mode,
    /// The last significant character outside strings; `'\n'` at a line start.
    prev: char,
    /// Whether the character just before was whitespace (YAML and `.env` comments need it).
    after_space: bool,
    escaped: bool,
    brackets: Vec<Bracket>,
}

// === impl Format ===

impl Format {
    /// The format a file's name says it has, or `None` (its placeholders are then written as
    /// they are).
    pub fn of_path(path: &str) -> Option<Self> {
        let name = Path::new(path).file_name()?.to_str()?;
        if name == ".env" || name.starts_with(".env.") || name.ends_with(".env") {
            return Some(Self::Env);
        }
        match Path::new(name).extension()?.to_str()? {
            "toml" => Some(Self::Toml),
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Json => "JSON",
            Self::Yaml => "YAML",
            Self::Env => ".env",
        }
    }

    /// The string a bare value is written as.
    pub fn quote(self) -> Quote {
        match self {
            Self::Toml => Quote::TomlBasic,
            Self::Json => Quote::Json,
            Self::Yaml => Quote::YamlDouble,
            Self::Env => Quote::EnvDouble,
        }
    }
}

/// The position of each placeholder in `pieces`, in order.
pub fn positions(format: Format, pieces: &[Piece<'_>]) -> Vec<Position> {
    let mut scanner = Scanner {
        format,
        mode: Mode::Out,
        prev: '\n',
        after_space: true,
        escaped: false,
        brackets: Vec::new(),
    };
    let mut positions = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(text) => scanner.feed(text),
            Piece::Placeholder => {
                let next = match pieces.get(index + 1) {
                    Some(Piece::Text(text)) => Some(*text),
                    Some(Piece::Placeholder) => None,
                    None => Some(""),
                };
                positions.push(scanner.placeholder(next));
            }
        }
    }
    positions
}

// === impl Scanner ===

impl Scanner {
    fn feed(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let ahead = |n: usize| chars.get(i + n).copied();
            match self.mode {
                Mode::Comment => {
                    if c == '\n' {
                        self.mode = Mode::Out;
                        self.newline();
                    }
                }
                Mode::Str { quote, long } => {
                    if self.escaped {
                        self.escaped = false;
                    } else if c == '\\' && quote.has_escapes() {
                        self.escaped = true;
                    } else if quote == Quote::YamlSingle && c == '\'' && ahead(1) == Some('\'') {
                        i += 1;
                    } else if c == quote.delimiter()
                        && (!long || (ahead(1) == Some(c) && ahead(2) == Some(c)))
                    {
                        if long {
                            i += 2;
                        }
                        self.mode = Mode::Out;
                        self.prev = c;
                        self.after_space = false;
                    }
                }
                Mode::Out => {
                    if c == '\n' {
                        self.newline();
                    } else if c.is_whitespace() {
                        self.after_space = true;
                    } else {
                        if self.starts_comment(c) {
                            self.mode = Mode::Comment;
                        } else if let Some(quote) = self.opens_string(c) {
                            let long = self.format == Format::Toml
                                && ahead(1) == Some(c)
                                && ahead(2) == Some(c);
                            if long {
                                i += 2;
                            }
                            self.mode = Mode::Str { quote, long };
                        } else {
                            self.bracket(c);
                            self.prev = c;
                        }
                        self.after_space = false;
                    }
                }
            }
            i += 1;
        }
    }

    /// The position of a placeholder here; `next` is the text after it (`None`: another
    /// placeholder follows at once).
    fn placeholder(&mut self, next: Option<&str>) -> Position {
        match self.mode {
            Mode::Str { quote, .. } => Position::String(quote),
            Mode::Comment => Position::Comment,
            Mode::Out => {
                let whole = self.value_starts_here() && next.is_some_and(|t| self.ends_value(t));
                // Whatever it was, what follows is not at the start of a value.
                self.prev = 'v';
                self.after_space = false;
                if whole {
                    Position::Value
                } else {
                    Position::Other
                }
            }
        }
    }

    fn newline(&mut self) {
        self.after_space = true;
        // Inside an array or inline collection, a line break is only whitespace.
        if self.format != Format::Json && self.brackets.is_empty() {
            self.prev = '\n';
        }
    }

    fn in_array(&self) -> bool {
        self.brackets.last() == Some(&Bracket::Array)
    }

    fn value_starts_here(&self) -> bool {
        let element = self.in_array() && matches!(self.prev, '[' | ',');
        element
            || match self.format {
                Format::Toml | Format::Env => self.prev == '=',
                Format::Json => self.prev == ':',
                Format::Yaml => matches!(self.prev, ':' | '-'),
            }
    }

    /// Whether `text`, following a bare value, ends it.
    fn ends_value(&self, text: &str) -> bool {
        match text.trim_start_matches([' ', '\t']).chars().next() {
            None | Some('\n' | '\r') => true,
            Some('#') => self.format != Format::Json,
            Some(',' | ']' | '}') => self.format != Format::Env,
            Some(_) => false,
        }
    }

    fn starts_comment(&self, c: char) -> bool {
        c == '#'
            && match self.format {
                Format::Toml => true,
                Format::Json => false,
                Format::Yaml | Format::Env => self.after_space,
            }
    }

    fn opens_string(&self, c: char) -> Option<Quote> {
        let quote = match (self.format, c) {
            (Format::Toml, '"') => Quote::TomlBasic,
            (Format::Toml, '\'') => Quote::TomlLiteral,
            (Format::Json, '"') => Quote::Json,
            (Format::Yaml, '"') => Quote::YamlDouble,
            (Format::Yaml, '\'') => Quote::YamlSingle,
            (Format::Env, '"') => Quote::EnvDouble,
            (Format::Env, '\'') => Quote::EnvSingle,
            _ => return None,
        };
        // In YAML a quote opens a string only where a scalar starts; elsewhere it is text.
        let yaml_scalar_start = matches!(self.prev, '\n' | ':' | '-' | '?' | '[' | '{' | ',');
        (self.format != Format::Yaml || yaml_scalar_start).then_some(quote)
    }

    fn bracket(&mut self, c: char) {
        let yaml_flow =
            self.format != Format::Yaml || matches!(self.prev, '\n' | ':' | '-' | '[' | '{' | ',');
        match (self.format, c) {
            (Format::Env, _) => {}
            (Format::Toml, '[') => {
                let kind = if self.value_starts_here() {
                    Bracket::Array
                } else {
                    Bracket::Other
                };
                self.brackets.push(kind);
            }
            (_, '[') if yaml_flow => self.brackets.push(Bracket::Array),
            (_, '{') if yaml_flow => self.brackets.push(Bracket::Other),
            (_, ']' | '}') => {
                self.brackets.pop();
            }
            _ => {}
        }
    }
}

// === impl Quote ===

impl Quote {
    fn delimiter(self) -> char {
        match self {
            Self::TomlBasic | Self::Json | Self::YamlDouble | Self::EnvDouble => '"',
            Self::TomlLiteral | Self::YamlSingle | Self::EnvSingle => '\'',
        }
    }

    fn has_escapes(self) -> bool {
        self.delimiter() == '"'
    }

    /// How the docs and errors name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TomlBasic => "a TOML basic string",
            Self::TomlLiteral => "a TOML literal string ('…'), which has no escapes",
            Self::Json => "a JSON string",
            Self::YamlDouble => "a YAML double-quoted string",
            Self::YamlSingle => {
                "a YAML single-quoted string ('…'), which cannot hold every character"
            }
            Self::EnvDouble => "a .env double-quoted value",
            Self::EnvSingle => "a .env single-quoted value ('…'), which has no escapes",
        }
    }
}
