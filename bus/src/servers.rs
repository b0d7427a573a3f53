//! The NATS nodes a client may use, and how long it waits between attempts to reach one.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// One or more NATS URLs. Configuration gives them as a TOML array or as one string of
/// comma-separated URLs (the form an environment variable or a flag takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList(Vec<String>);

/// Why a server list was refused.
#[derive(Debug, thiserror::Error)]
#[error("a NATS URL list must name at least one server")]
pub struct EmptyServerList;

impl ServerList {
    /// Splits `text` at commas; blanks around each URL are dropped.
    pub fn parse(text: &str) -> Result<Self, EmptyServerList> {
        Self::new(text.split(',').map(str::to_owned))
    }

    /// The URLs given, with blanks and empty entries dropped.
    pub fn new(urls: impl IntoIterator<Item = String>) -> Result<Self, EmptyServerList> {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(EmptyServerList);
        }
        Ok(Self(urls))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Default for ServerList {
    fn default() -> Self {
        Self(vec!["nats://127.0.0.1:4222".to_owned()])
    }
}

impl std::fmt::Display for ServerList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl std::str::FromStr for ServerList {
    type Err = EmptyServerList;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl<'de> serde::Deserialize<'de> for ServerList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            One(String),
            Many(Vec<String>),
        }
        let list = match Given::deserialize(deserializer)? {
            Given::One(text) => ServerList::parse(&text),
            Given::Many(urls) => ServerList::new(urls),
        };
        list.map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ServerList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The wait before connection attempt number `attempts` (1 for the first): none for the first,
/// then doubling from 2 ms up to 4 s, as async-nats does, plus up to as much again at random
/// (backon's jitter), so that a fleet cut off at once does not come back at once.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    // async-nats asks by attempt number; backon's schedule is a sequence, so take its
    // element. Past the 12th doubling the ceiling holds, so the walk stays short.
    let step = (attempts - 2).min(RECONNECT_DOUBLINGS);
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_FIRST_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(step)
        .unwrap_or(RECONNECT_MAX_DELAY)
}

/// The first wait after a lost connection.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(2);
/// The longest wait between attempts (async-nats's own ceiling).
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(4);
/// Doublings from the first wait to the ceiling (2 ms * 2^11 > 4 s).
const RECONNECT_DOUBLINGS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_comes_from_commas_or_an_array() {
        let one: ServerList = "nats://a:4222".parse().unwrap();
        assert_eq!(one.as_slice(), ["nats://a:4222"]);
        let two: ServerList = " nats://a:4222 , nats://b:4222,".parse().unwrap();
        assert_eq!(two.as_slice(), ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(two.to_string(), "nats://a:4222,nats://b:4222");

        #[derive(serde::Deserialize)]
        struct Holder {
            url: ServerList,
        }
        let from_array: Holder =
            toml::from_str(r#"url = ["nats://a:4222", "nats://b:4222"]"#).unwrap();
        assert_eq!(from_array.url, two);
        let from_string: Holder = toml::from_str(r#"url = "nats://a:4222,nats://b:4222""#).unwrap();
        assert_eq!(from_string.url, two);
        assert!(toml::from_str::<Holder>(r#"url = [] "#).is_err());
        assert!(" , ".parse::<ServerList>().is_err());
    }

    #[test]
    fn the_delay_grows_to_a_ceiling_with_jitter() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempts in 2..40 {
            let base = Duration::from_millis(2_u64.pow((attempts as u32 - 1).min(12)))
                .min(Duration::from_secs(4));
            let delay = reconnect_delay(attempts);
            assert!(delay >= base && delay <= base * 2, "{attempts}: {delay:?}");
        }
        // Jitter: a fleet's delays differ.
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| reconnect_delay(30)).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }
}
