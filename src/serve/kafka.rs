//! A serving node following the publisher through Kafka (`transport = "kafka"`).
//!
//! On (re)start it reads the control topic to its end, picks the newest full version
//! announced (or the version after the one it holds) with
//! [`odl_ps::publish::announce::plan`], and reads the partitions it owns — plus
//! partition 0, which carries the dense tensors — from the offsets the announces give.
//! Records and announces go into an [`Assembler`], which hands out a version only once
//! its announce and every record it lists on those partitions are in; the version is
//! then built aside and swapped in by the same code as a gRPC subscription
//! ([`Node::feed`]), and confirmed to the PS over gRPC. Confirmations that fail (PS
//! down) are retried; the newest one covers every version before it.
//!
//! The Kafka clients are synchronous, so this runs on a blocking thread.

use super::node::{Building, Node};
use anyhow::{bail, Context};
use odl_proto::publish_rpc::publisher_client::PublisherClient;
use odl_proto::publish_rpc::{update::Body, ConfirmRequest, Update};
use odl_proto::stream::kafka::{partition_count, KafkaSource, Offsets};
use odl_proto::stream::{Poll, RecordSource};
use odl_proto::version::Version;
use odl_ps::publish::announce::{decode_announce, header, plan, Assembler};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Follow the topics until `cancel`, starting over after any failure.
pub fn follow(node: Arc<Node>, cancel: CancellationToken, rt: Handle) {
    let mut confirmer = Confirmer::new(&node, rt);
    while !cancel.is_cancelled() {
        match session(&node, &cancel, &mut confirmer) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "kafka: following the publisher failed; starting over")
            }
        }
        let until = Instant::now() + Duration::from_millis(node.cfg.reconnect_ms);
        while Instant::now() < until && !cancel.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The partitions a node reads: those it owns (all if it lists none) and partition 0.
fn reading(owned: &[u32], count: i32) -> anyhow::Result<BTreeSet<i32>> {
    if owned.is_empty() {
        return Ok((0..count).collect());
    }
    if let Some(p) = owned.iter().find(|&&p| p as i32 >= count) {
        bail!("partition {p} out of range: the update topic has {count} partitions");
    }
    Ok(owned
        .iter()
        .map(|&p| p as i32)
        .chain([odl_ps::publish::announce::DENSE_PARTITION])
        .collect())
}

fn session(
    node: &Arc<Node>,
    cancel: &CancellationToken,
    confirmer: &mut Confirmer,
) -> anyhow::Result<()> {
    let cfg = &node.cfg;
    let k = &cfg.kafka;
    let count = partition_count(k, &cfg.update_topic, METADATA_TIMEOUT)?;
    partition_count(k, &cfg.control_topic, METADATA_TIMEOUT)?;
    let reading = reading(&cfg.partitions, count)?;
    let owned = (!cfg.partitions.is_empty()).then(|| cfg.partitions.iter().copied().collect());

    // Everything announced so far.
    let mut control = KafkaSource::assign(k, &cfg.control_topic, &Offsets::new())?;
    let ends = control.end_offsets()?;
    let mut announces = Vec::new();
    while ends
        .iter()
        .any(|(p, &end)| control.positions().get(p).copied().unwrap_or(0) < end)
    {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if let Poll::Records(rs) = control.poll(1000, Duration::from_millis(200))? {
            for r in rs {
                match decode_announce(&r.value) {
                    Ok(a) => announces.push(a),
                    Err(e) => tracing::warn!(
                        offset = r.position.offset,
                        "kafka: bad announce skipped: {e}"
                    ),
                }
            }
        }
    }
    let held = node.current().map(|c| c.version);
    let plan = plan(&announces, held, &reading);
    let done = match announces.get(plan.start) {
        Some(a) => Version(a.version - 1),
        None => Version(
            announces
                .last()
                .map_or(0, |a| a.version)
                .max(held.map_or(0, |v| v.0)),
        ),
    };
    tracing::info!(
        node = %node.node_id,
        announced = announces.len(),
        from = announces.get(plan.start).map(|a| a.version),
        offsets = ?plan.offsets,
        "kafka: following the publisher"
    );
    let mut asm = Assembler::new(reading, owned, done);
    for a in announces.drain(plan.start..) {
        asm.announce(a);
    }
    let mut updates = KafkaSource::assign_partitions(k, &cfg.update_topic, &plan.offsets)?;
    while !cancel.is_cancelled() {
        if let Poll::Records(rs) = control.poll(100, Duration::from_millis(10))? {
            for r in rs {
                match decode_announce(&r.value) {
                    Ok(a) => asm.announce(a),
                    Err(e) => tracing::warn!(
                        offset = r.position.offset,
                        "kafka: bad announce skipped: {e}"
                    ),
                }
            }
        }
        if let Poll::Records(rs) = updates.poll(2000, Duration::from_millis(100))? {
            for r in rs {
                let (p, o) = (r.position.partition, r.position.offset);
                if let Err(e) = asm.record(p, o, r.key.as_deref(), &r.value) {
                    tracing::warn!("kafka: update record skipped: {e}");
                }
            }
        }
        while let Some(msgs) = asm.next_ready() {
            let latest = asm.latest_announced().map(|a| {
                let ms = header(a).map_or(0, |h| h.created_at_ms);
                (a.version, ms)
            });
            if let Some(v) = apply(node, msgs, latest)? {
                confirmer.applied(v);
            }
        }
        confirmer.flush(node);
    }
    Ok(())
}

/// Build and install one complete version. `None`: passed over (an increment with
/// no full version under it).
fn apply(
    node: &Node,
    mut msgs: Vec<Update>,
    latest: Option<(u64, i64)>,
) -> anyhow::Result<Option<Version>> {
    let Some(Update {
        version,
        body: Some(Body::Header(h)),
    }) = msgs.first_mut()
    else {
        bail!("assembled version without a header");
    };
    if h.kind != "full" && node.current().is_none() {
        tracing::warn!(version = *version, kind = %h.kind, "kafka: increment before any full version passed over");
        return Ok(None);
    }
    if let Some((v, ms)) = latest.filter(|(v, _)| *v > *version) {
        h.latest = v;
        h.latest_created_at_ms = ms;
    }
    let mut building: Building = None;
    let mut installed = None;
    for u in msgs {
        installed = node.feed(&mut building, u)?.or(installed);
    }
    installed
        .map(Some)
        .context("assembled version without an end marker")
}

/// Confirmations to the PS over gRPC, retried until one gets through.
struct Confirmer {
    rt: Handle,
    client: Option<PublisherClient<Channel>>,
    /// The newest applied version not yet confirmed.
    pending: Option<Version>,
    next_try: Instant,
}

impl Confirmer {
    fn new(node: &Node, rt: Handle) -> Confirmer {
        let client = if node.cfg.confirm {
            let _g = rt.enter();
            Endpoint::from_shared(node.cfg.ps_grpc.clone())
                .ok()
                .map(|e| {
                    PublisherClient::new(e.connect_timeout(Duration::from_secs(5)).connect_lazy())
                })
        } else {
            None
        };
        Confirmer {
            rt,
            client,
            pending: None,
            next_try: Instant::now(),
        }
    }

    fn applied(&mut self, v: Version) {
        self.pending = Some(v);
        self.next_try = Instant::now();
    }

    fn flush(&mut self, node: &Node) {
        let (Some(v), Some(client)) = (self.pending, self.client.as_mut()) else {
            return;
        };
        if Instant::now() < self.next_try {
            return;
        }
        let req = ConfirmRequest {
            node_id: node.node_id.clone(),
            version: v.0,
        };
        match self.rt.block_on(client.confirm(req)) {
            Ok(_) => {
                if self.pending == Some(v) {
                    self.pending = None;
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                tracing::warn!(version = v.0, error = %s.message(), "the PS does not know the version; not confirming it");
                self.pending = None;
            }
            Err(s) => {
                tracing::warn!(version = v.0, error = %s.message(), "confirming to the PS failed; retrying");
                self.next_try = Instant::now() + Duration::from_millis(node.cfg.reconnect_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_its_partitions_and_the_dense_one() {
        assert_eq!(reading(&[], 3).unwrap(), [0, 1, 2].into());
        assert_eq!(reading(&[2, 3], 4).unwrap(), [0, 2, 3].into());
        assert!(reading(&[4], 4)
            .unwrap_err()
            .to_string()
            .contains("partition 4"));
    }
}
