//! Wiring of sharded models (hub-models' `Shards`): the `/hubmesh/shard/1` server, the
//! placements API's state, and the `[[inference.placement]]` entries of the config, placed
//! once enough nodes advertise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hub_models::{Compute, Models, PlaceError, Shards, ShardsConfig};
use hub_protocol::repo::{RepoId, RepoType};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often a configured placement that cannot be made yet (too few nodes advertise) is
/// tried again.
const RETRY: Duration = Duration::from_secs(2);

pub(crate) fn start(
    config: &Config,
    state: &hub_gateway::AppState,
    models: Arc<Models>,
    compute: Arc<Compute>,
    p2p: &hub_net::P2p,
    cancel: &CancellationToken,
) {
    let shards = Arc::new(Shards::new(
        models,
        compute,
        state.hub().mesh().clone(),
        p2p.clone(),
        ShardsConfig {
            step_timeout: Duration::from_secs(config.inference.shard_step_timeout_secs.max(1)),
            ..ShardsConfig::default()
        },
    ));
    shards.start();
    state.enable_shards(shards.clone());
    for entry in config.inference.placement.clone() {
        let id = match RepoId::parse(RepoType::Model, &entry.model) {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(model = entry.model, %error, "placement in the config ignored");
                continue;
            }
        };
        let (shards, cancel) = (shards.clone(), cancel.child_token());
        tokio::spawn(async move {
            let rtts = HashMap::new();
            loop {
                let placed = shards.place(
                    &id,
                    "main",
                    entry.tensor_parallel,
                    entry.pipeline_parallel,
                    entry.sync,
                    &rtts,
                );
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    outcome = placed => outcome,
                };
                match outcome {
                    Ok(signed) => {
                        tracing::info!(model = %id, seq = signed.placement.seq, "configured placement serving");
                        return;
                    }
                    // Nodes not advertising yet, or not reachable yet: try again.
                    Err(PlaceError::Plan(_) | PlaceError::Worker { .. }) => {}
                    Err(error) => {
                        tracing::warn!(model = %id, error = %hub_models::error_chain(&error), "configured placement failed");
                        return;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        });
    }
}
