//! `odl dashboard`: one page that shows the pipeline live. This process polls the
//! services named in its config (joiners, PS shards, trainer workers, serving nodes) on
//! their HTTP ports every `poll_interval_ms`, keeps each one's latest answers and a
//! bounded history of the series the charts plot, and serves `GET /api/state` plus the
//! page and its assets, which are compiled into the binary (no CDN: it works offline).
//! A service that does not answer is shown as down with the reason; the rest of the
//! page keeps working.

mod assets;
pub mod config;
mod history;
mod poll;
mod series;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use config::{ServiceAddr, ServiceKind};
use history::{History, HistorySlice};
use poll::{Fetched, Poller};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use config::DashboardConfig;

/// Whether a service answered its last poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not polled yet (the dashboard just started).
    Pending,
    /// At least one endpoint answered with an HTTP status.
    Up,
    /// No endpoint answered; `error` says why.
    Down,
}

struct Service {
    kind: ServiceKind,
    name: String,
    base: String,
    health: Health,
    error: Option<String>,
    polled_at_ms: Option<u64>,
    endpoints: BTreeMap<&'static str, Fetched>,
    history: History,
    rates: series::Rates,
}

impl Service {
    fn new(kind: ServiceKind, addr: &ServiceAddr, capacity: usize) -> anyhow::Result<Service> {
        Ok(Service {
            kind,
            name: addr.name.clone(),
            base: config::base_uri(&addr.url).map_err(anyhow::Error::msg)?,
            health: Health::Pending,
            error: None,
            polled_at_ms: None,
            endpoints: BTreeMap::new(),
            history: History::new(capacity),
            rates: series::Rates::default(),
        })
    }

    fn record(&mut self, t_ms: u64, endpoints: BTreeMap<&'static str, Fetched>) {
        let answered = endpoints
            .values()
            .any(|f| matches!(f, Fetched::Answer { .. }));
        self.health = if answered { Health::Up } else { Health::Down };
        self.error = (!answered)
            .then(|| {
                endpoints.values().find_map(|f| match f {
                    Fetched::Failed { error } => Some(error.clone()),
                    Fetched::Answer { .. } => None,
                })
            })
            .flatten();
        self.polled_at_ms = Some(t_ms);
        let mut point = series::extract(self.kind, &endpoints);
        self.rates.derive(t_ms, &mut point);
        self.history.push(t_ms, point);
        self.endpoints = endpoints;
    }
}

struct Dashboard {
    poll_interval_ms: u64,
    history_secs: u64,
    services: RwLock<Vec<Service>>,
}

/// `GET /api/state`: every service's health, latest answers and history after `since`.
#[derive(Serialize)]
struct StateView<'a> {
    now_ms: u64,
    poll_interval_ms: u64,
    history_secs: u64,
    services: Vec<ServiceView<'a>>,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    kind: ServiceKind,
    url: &'a str,
    health: Health,
    error: Option<&'a str>,
    polled_at_ms: Option<u64>,
    endpoints: &'a BTreeMap<&'static str, Fetched>,
    history: HistorySlice,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    /// Only history points newer than this (ms since the epoch): the page asks for
    /// what it has not seen yet instead of the whole hour every poll.
    since: Option<u64>,
}

/// Serves the dashboard on `listener` and polls the services until `cancel`.
pub async fn serve(
    cfg: DashboardConfig,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    cfg.validate()?;
    let capacity = cfg.history_points();
    let services = cfg
        .services()
        .map(|(kind, addr)| Service::new(kind, addr, capacity))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dash = Arc::new(Dashboard {
        poll_interval_ms: cfg.poll_interval_ms,
        history_secs: cfg.history_secs,
        services: RwLock::new(services),
    });
    let poller = Poller::new(Duration::from_millis(cfg.request_timeout_ms));
    let polling = tokio::spawn(poll_forever(dash.clone(), poller, cancel.clone()));
    let app = Router::new()
        .route("/api/state", get(state))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(dash)
        .merge(assets::router());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    polling.abort();
    Ok(served?)
}

async fn poll_forever(dash: Arc<Dashboard>, poller: Poller, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(dash.poll_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => poll_once(&dash, &poller).await,
        }
    }
}

/// Polls every endpoint of every service concurrently, then records them all at once,
/// stamped with the time the poll started: every answer is at least as new as that.
async fn poll_once(dash: &Dashboard, poller: &Poller) {
    let t = now_ms();
    let targets: Vec<(ServiceKind, String)> = {
        let services = dash.services.read().unwrap_or_else(|e| e.into_inner());
        services.iter().map(|s| (s.kind, s.base.clone())).collect()
    };
    let mut jobs = tokio::task::JoinSet::new();
    for (i, (kind, base)) in targets.into_iter().enumerate() {
        for &path in kind.endpoints() {
            let (poller, base) = (poller.clone(), base.clone());
            jobs.spawn(async move { (i, path, poller.get(&base, path).await) });
        }
    }
    let mut answers: Vec<BTreeMap<&'static str, Fetched>> = Vec::new();
    while let Some(done) = jobs.join_next().await {
        let Ok((i, path, fetched)) = done else {
            continue;
        };
        if answers.len() <= i {
            answers.resize_with(i + 1, BTreeMap::new);
        }
        answers[i].insert(path, fetched);
    }
    let mut services = dash.services.write().unwrap_or_else(|e| e.into_inner());
    for (s, endpoints) in services.iter_mut().zip(
        answers
            .into_iter()
            .chain(std::iter::repeat_with(BTreeMap::new)),
    ) {
        s.record(t, endpoints);
    }
    // A debug line per round lets an operator see a slow round (and a test wait for
    // one) without polling /api/state.
    tracing::debug!(services = services.len(), ms = now_ms().saturating_sub(t), "dashboard poll recorded");
}

async fn state(
    State(dash): State<Arc<Dashboard>>,
    Query(q): Query<StateQuery>,
) -> Json<serde_json::Value> {
    let services = dash.services.read().unwrap_or_else(|e| e.into_inner());
    let view = StateView {
        now_ms: now_ms(),
        poll_interval_ms: dash.poll_interval_ms,
        history_secs: dash.history_secs,
        services: services
            .iter()
            .map(|s| ServiceView {
                name: &s.name,
                kind: s.kind,
                url: &s.base,
                health: s.health,
                error: s.error.as_deref(),
                polled_at_ms: s.polled_at_ms,
                endpoints: &s.endpoints,
                history: s.history.since(q.since.unwrap_or(0)),
            })
            .collect(),
    };
    Json(serde_json::to_value(view).unwrap_or_default())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
