//! A count or a percentage: `size = 2`, `size = "25%"`, `failure_budget = "10%"`.

use serde::{Deserialize, Serialize};

/// A number of services (or agents), or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Amount {
    Count(u32),
    /// Between 0 and 100.
    Percent(f64),
}

// === impl Amount ===

impl Amount {
    /// How many of `total` this is. A share is rounded up when `round_up` (a wave of "10%" of
    /// three services still takes one), down otherwise (a budget of "10%" of three tolerates none).
    pub fn of(self, total: usize, round_up: bool) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => {
                let exact = p / 100.0 * total as f64;
                let n = if round_up {
                    exact.ceil()
                } else {
                    exact.floor()
                };
                n.max(0.0) as usize
            }
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a count (e.g. 2) or a percentage (e.g. \"25%\")")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                u32::try_from(v)
                    .map(Amount::Count)
                    .map_err(|_| E::custom(format!("{v} is not a count (0 or more)")))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                u32::try_from(v)
                    .map(Amount::Count)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                let number = v.trim().strip_suffix('%').ok_or_else(|| {
                    E::custom(format!(
                        "{v:?} is not a percentage: write a count (2) or a share (\"25%\")"
                    ))
                })?;
                match number.trim().parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Ok(Amount::Percent(p)),
                    _ => Err(E::custom(format!(
                        "{v:?} is not a percentage between 0% and 100%"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
