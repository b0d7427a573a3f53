//! A wave's `pause`: what the run does after the wave succeeded, before the next one starts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The shortest bake accepted: a pause is a decision made by people, not a poll interval.
const MIN_BAKE: Duration = Duration::from_secs(1);

/// After a wave, before the next: bake for a while, or wait for `flotilla promote RUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pause {
    /// Wait this long (`pause = "10m"`), then go on; `promote` ends it early.
    Bake(Duration),
    /// Stop the run `paused` until `flotilla promote RUN` (`pause = "manual"`).
    Manual,
}

/// A `pause` that is neither `"manual"` nor a duration of at least a second.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither \"manual\" nor a duration of at least 1s (\"30s\", \"10m\")")]
pub struct PauseError(String);

// === impl Pause ===

impl FromStr for Pause {
    type Err = PauseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "manual" {
            return Ok(Pause::Manual);
        }
        match humantime::parse_duration(text) {
            Ok(d) if d >= MIN_BAKE => Ok(Pause::Bake(d)),
            _ => Err(PauseError(text.to_owned())),
        }
    }
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pause::Bake(d) => write!(f, "{}", humantime::format_duration(*d)),
            Pause::Manual => f.write_str("manual"),
        }
    }
}

impl TryFrom<String> for Pause {
    type Error = PauseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Pause> for String {
    fn from(pause: Pause) -> Self {
        pause.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_manual_or_a_duration_and_reads_back_as_written() {
        assert_eq!("manual".parse::<Pause>().unwrap(), Pause::Manual);
        let bake: Pause = "10m".parse().unwrap();
        assert_eq!(bake, Pause::Bake(Duration::from_secs(600)));
        assert_eq!(bake.to_string().parse::<Pause>().unwrap(), bake);
        for bad in ["", "later", "500ms", "-1s"] {
            assert!(bad.parse::<Pause>().is_err(), "{bad}");
        }
    }
}
