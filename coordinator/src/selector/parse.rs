//! The selector's tokens and grammar:
//!
//! ```text
//! selector    = requirement { "," requirement }
//! requirement = "!" key | key [ ("=" | "==" | "!=") value | ("in" | "notin") "(" value { "," value } ")" ]
//! ```

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::vec::IntoIter;

use super::{Op, Problem, Requirement, SelectorError, check_key, check_value};

/// One token and its 1-based character column.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Comma,
    Open,
    Close,
    Equals,
    NotEquals,
    Bang,
}

type Tokens = Peekable<IntoIter<(usize, Token)>>;

/// A problem at a column, before the selector's text is attached.
type Failure = (usize, Problem);

/// Parses the requirements of `text`.
pub(super) fn selector(text: &str) -> Result<Vec<Requirement>, SelectorError> {
    let end = text.chars().count() + 1;
    parse_all(lex(text), end).map_err(|(column, problem)| SelectorError {
        text: text.to_owned(),
        column,
        problem,
    })
}

fn parse_all(tokens: Vec<(usize, Token)>, end: usize) -> Result<Vec<Requirement>, Failure> {
    if tokens.is_empty() {
        return Err((1, Problem::Empty));
    }
    let mut tokens = tokens.into_iter().peekable();
    let mut requirements = Vec::new();
    loop {
        requirements.push(requirement(&mut tokens, end)?);
        match tokens.next() {
            None => return Ok(requirements),
            Some((_, Token::Comma)) => {}
            Some((column, other)) => {
                return Err((column, Problem::ExpectedComma(show(&other))));
            }
        }
    }
}

fn requirement(tokens: &mut Tokens, end: usize) -> Result<Requirement, Failure> {
    if let Some((_, Token::Bang)) = tokens.peek() {
        tokens.next();
        let key = key(tokens, end)?;
        return Ok(Requirement {
            key,
            op: Op::Absent,
        });
    }
    let key = key(tokens, end)?;
    let op = match tokens.peek().cloned() {
        None | Some((_, Token::Comma)) => Op::Exists,
        Some((_, Token::Equals)) => {
            tokens.next();
            Op::Equals(value(tokens)?)
        }
        Some((_, Token::NotEquals)) => {
            tokens.next();
            Op::NotEquals(value(tokens)?)
        }
        Some((_, Token::Word(w))) if w == "in" => {
            tokens.next();
            Op::In(set(tokens, end, "in")?)
        }
        Some((_, Token::Word(w))) if w == "notin" => {
            tokens.next();
            Op::NotIn(set(tokens, end, "notin")?)
        }
        Some((column, other)) => return Err((column, Problem::UnexpectedOperator(show(&other)))),
    };
    Ok(Requirement { key, op })
}

/// A key, checked.
fn key(tokens: &mut Tokens, end: usize) -> Result<String, Failure> {
    match tokens.next() {
        Some((column, Token::Word(key))) => {
            check_key(&key).map_err(|p| (column, p))?;
            Ok(key)
        }
        Some((column, _)) => Err((column, Problem::ExpectedKey)),
        None => Err((end, Problem::ExpectedKey)),
    }
}

/// The value after `=` or `!=`: a word, or nothing (`k=` asks for an empty value, as in
/// Kubernetes).
fn value(tokens: &mut Tokens) -> Result<String, Failure> {
    match tokens.peek().cloned() {
        Some((column, Token::Word(value))) => {
            tokens.next();
            check_value(&value).map_err(|p| (column, p))?;
            Ok(value)
        }
        None | Some((_, Token::Comma)) => Ok(String::new()),
        Some((column, _)) => Err((column, Problem::ExpectedValue)),
    }
}

/// `( value {, value} )`.
fn set(tokens: &mut Tokens, end: usize, op: &'static str) -> Result<BTreeSet<String>, Failure> {
    match tokens.next() {
        Some((_, Token::Open)) => {}
        Some((column, _)) => return Err((column, Problem::ExpectedOpenParen(op))),
        None => return Err((end, Problem::ExpectedOpenParen(op))),
    }
    let mut values = BTreeSet::new();
    loop {
        match tokens.next() {
            Some((column, Token::Word(value))) => {
                check_value(&value).map_err(|p| (column, p))?;
                values.insert(value);
            }
            Some((column, Token::Close)) if values.is_empty() => {
                return Err((column, Problem::EmptySet(op)));
            }
            Some((column, _)) => return Err((column, Problem::ExpectedValue)),
            None => return Err((end, Problem::ExpectedValue)),
        }
        match tokens.next() {
            Some((_, Token::Comma)) => {}
            Some((_, Token::Close)) => return Ok(values),
            Some((column, _)) => return Err((column, Problem::ExpectedCommaOrClose)),
            None => return Err((end, Problem::ExpectedCommaOrClose)),
        }
    }
}

/// Splits `text` into tokens, each with its 1-based character column; whitespace separates
/// tokens and is otherwise ignored.
fn lex(text: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let (token, width) = match chars[i] {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ',' => (Token::Comma, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            '=' if next == Some('=') => (Token::Equals, 2),
            '=' => (Token::Equals, 1),
            '!' if next == Some('=') => (Token::NotEquals, 2),
            '!' => (Token::Bang, 1),
            _ => {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| !is_delimiter(**c))
                    .collect();
                let width = word.chars().count();
                (Token::Word(word), width)
            }
        };
        tokens.push((column, token));
        i += width;
    }
    tokens
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!')
}

/// A token as written, for an error.
fn show(token: &Token) -> String {
    match token {
        Token::Word(w) => w.clone(),
        Token::Comma => ",".into(),
        Token::Open => "(".into(),
        Token::Close => ")".into(),
        Token::Equals => "=".into(),
        Token::NotEquals => "!=".into(),
        Token::Bang => "!".into(),
    }
}
