//! How many copies of every stream and bucket the cluster keeps, and on which servers: chosen
//! once by the operator (or by default from the server connected to) and applied alike to all
//! that Flotilla creates, so that losing one node loses neither a command, an event nor a run
//! record.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use futures::TryStreamExt;

use crate::BusError;

/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

/// The replica count a cluster gets by default: a majority survives one node lost.
pub const CLUSTER_DEFAULT_REPLICAS: usize = 3;

/// The replica count and placement of everything Flotilla creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub replicas: usize,
    /// Where the streams go (a cluster by name, servers by tag); `None`: wherever the server
    /// places them, and an existing stream's placement is not compared.
    pub placement: Option<stream::Placement>,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            replicas: 1,
            placement: None,
        }
    }
}

impl Replication {
    /// `requested` replicas (or the default for the server `info` describes) placed by
    /// `placement`. The default is [`CLUSTER_DEFAULT_REPLICAS`] on a cluster and 1 on a single
    /// server (or a leaf node alone). It does not count the nodes the server announces: those
    /// are the nodes up, and a node down must not change what is wanted. A cluster too small
    /// for the count refuses the stream; [`Replication::explain`] says so.
    pub fn resolve(
        requested: Option<usize>,
        placement: Option<stream::Placement>,
        info: &async_nats::ServerInfo,
    ) -> Result<Self, BusError> {
        let placement = placement.filter(|p| p.cluster.is_some() || !p.tags.is_empty());
        // Another cluster (a supercluster's) may hold them wherever this server stands.
        let elsewhere = placement.as_ref().is_some_and(|p| p.cluster.is_some());
        // A leaf node alone says it is the cluster named after itself, announcing no peer.
        let alone = info.cluster.is_none()
            || (info.cluster.as_ref() == Some(&info.server_name) && info.connect_urls.is_empty());
        let replicas = match requested {
            Some(n) if !(1..=MAX_REPLICAS).contains(&n) => {
                return Err(BusError::ReplicasOutOfRange { wanted: n });
            }
            Some(n) => n,
            None if alone && !elsewhere => 1,
            None => CLUSTER_DEFAULT_REPLICAS,
        };
        if replicas > 1 && alone && !elsewhere {
            return Err(BusError::TooManyReplicas {
                wanted: replicas,
                nodes: 1,
                cluster: None,
            });
        }
        Ok(Self {
            replicas,
            placement,
        })
    }

    /// Whether the cluster refused a stream of `error` for want of peers (JetStream error
    /// 10005): too few nodes, or a cluster still forming (seen on three nodes a moment after their
    /// meta leader counted every peer current).
    pub fn refused_placement(error: &BusError) -> bool {
        no_suitable_peers(error)
    }

    /// `error`, or, when the cluster refused a stream for want of peers (JetStream error
    /// 10005), the clear error that says how many replicas were asked and what to do.
    pub fn explain(&self, error: BusError, info: &async_nats::ServerInfo) -> BusError {
        if !no_suitable_peers(&error) {
            return error;
        }
        BusError::TooManyReplicas {
            wanted: self.replicas,
            nodes: info.connect_urls.len(),
            cluster: info.cluster.clone().or_else(|| Some("(unnamed)".into())),
        }
    }

    /// `config` with these replicas and placement.
    pub fn stream(&self, config: stream::Config) -> stream::Config {
        stream::Config {
            num_replicas: self.replicas,
            placement: self.placement.clone(),
            ..config
        }
    }

    /// A key-value bucket's `config` with these replicas and placement.
    pub fn kv(&self, config: kv::Config) -> kv::Config {
        kv::Config {
            num_replicas: self.replicas,
            placement: self.placement.clone(),
            ..config
        }
    }

    /// An object store's `config` with these replicas and placement.
    pub fn object_store(&self, config: object_store::Config) -> object_store::Config {
        object_store::Config {
            num_replicas: self.replicas,
            placement: self.placement.clone(),
            ..config
        }
    }
}

/// Whether `error` or one of its sources is JetStream's "no suitable peers for placement".
fn no_suitable_peers(error: &(dyn std::error::Error + 'static)) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<jetstream::context::CreateStreamError>()
            .is_some_and(|e| {
                matches!(e.kind(), Kind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS)
            })
    })
}

/// How long [`update`] waits for the new replicas to catch up before saying they have not.
pub const CATCH_UP: Duration = Duration::from_secs(60);

/// Changes only the replica count (and the placement, when `wanted` has one) of the existing
/// stream `wanted.name`, in place: the JetStream stream update API keeps every message and
/// copies them to the new replicas. Then waits, up to [`CATCH_UP`], until the stream and its
/// consumers have every replica current: until then one node lost can still stop them.
/// Returns whether they caught up.
pub async fn update(js: &jetstream::Context, wanted: &stream::Config) -> Result<bool, BusError> {
    let inspect = |e: Box<dyn std::error::Error + Send + Sync>| BusError::Inspect {
        name: wanted.name.clone(),
        source: e,
    };
    let mut found = js
        .get_stream(&wanted.name)
        .await
        .map_err(|e| inspect(Box::new(e)))?;
    let mut config = found
        .info()
        .await
        .map_err(|e| inspect(Box::new(e)))?
        .config
        .clone();
    config.num_replicas = wanted.num_replicas;
    if wanted.placement.is_some() {
        config.placement = wanted.placement.clone();
    }
    js.update_stream(config)
        .await
        .map_err(|source| BusError::Update {
            name: wanted.name.clone(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while tokio::time::Instant::now() < deadline {
        if caught_up(&mut found, wanted.num_replicas.max(1))
            .await
            .map_err(inspect)?
        {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Whether `stream` and each of its consumers that follows its replica count have a leader
/// and `replicas` peers, all current.
async fn caught_up(
    stream: &mut stream::Stream,
    replicas: usize,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let info = stream.info().await?;
    if !info.cluster.as_ref().is_some_and(|c| current(c, replicas)) {
        return Ok(false);
    }
    let mut consumers = stream.consumers();
    while let Some(consumer) = consumers.try_next().await? {
        let follows = consumer.config.num_replicas == 0;
        let needed = if follows {
            replicas
        } else {
            consumer.config.num_replicas
        };
        if !consumer
            .cluster
            .as_ref()
            .is_some_and(|c| current(c, needed))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A leader and `replicas - 1` other peers, each current and online.
fn current(cluster: &stream::ClusterInfo, replicas: usize) -> bool {
    cluster.leader.is_some()
        && cluster.replicas.len() + 1 == replicas
        && cluster.replicas.iter().all(|p| p.current && !p.offline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(cluster: Option<&str>, nodes: usize) -> async_nats::ServerInfo {
        async_nats::ServerInfo {
            cluster: cluster.map(str::to_owned),
            connect_urls: (0..nodes)
                .map(|i| format!("127.0.0.1:{}", 4222 + i))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_is_three_on_a_cluster_and_one_on_a_single_server() {
        let resolve = |info| Replication::resolve(None, None, &info).unwrap().replicas;
        assert_eq!(resolve(server(None, 0)), 1);
        assert_eq!(resolve(server(Some("c"), 3)), 3);
        assert_eq!(
            resolve(server(Some("c"), 2)),
            3,
            "a node down changes nothing"
        );
        assert_eq!(resolve(server(Some("c"), 0)), 3, "peers not advertised");
        let leaf = async_nats::ServerInfo {
            server_name: "site-a".into(),
            ..server(Some("site-a"), 0)
        };
        assert_eq!(resolve(leaf), 1, "a leaf node alone");
    }

    #[test]
    fn more_than_one_replica_on_a_single_server_or_more_than_five_is_refused() {
        let error = Replication::resolve(Some(3), None, &server(None, 0)).unwrap_err();
        assert!(
            matches!(
                error,
                BusError::TooManyReplicas {
                    wanted: 3,
                    nodes: 1,
                    ..
                }
            ),
            "{error}"
        );
        let error = Replication::resolve(Some(6), None, &server(Some("c"), 3)).unwrap_err();
        assert!(matches!(error, BusError::ReplicasOutOfRange { wanted: 6 }));
        let error = Replication::resolve(Some(0), None, &server(None, 0)).unwrap_err();
        assert!(matches!(error, BusError::ReplicasOutOfRange { wanted: 0 }));
        assert_eq!(
            Replication::resolve(Some(5), None, &server(Some("c"), 3))
                .unwrap()
                .replicas,
            5,
            "the cluster itself says whether it can place them"
        );
    }
}
