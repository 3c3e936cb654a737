//! Concierge's backend: implements the `app` crate's seam and wires the HTTP server.
pub mod accounts;
pub mod alerts;
pub mod bootstrap;
pub mod catalog;
pub mod config;
pub mod fleet;
pub mod hypervisor;
pub mod metering;
pub mod notifications;
pub mod platform;
pub mod provisioning;
pub mod reclamation;
pub mod state;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

/// A server bound to its address, ready to run.
pub struct Server {
    pub addr: SocketAddr,
    pub state: state::AppState,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Migrates the database, creates the first admin if needed and binds the listener.
    pub async fn build(
        config: config::Config,
        clock: Arc<dyn platform::clock::Clock>,
    ) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4();
        let pool = platform::db::prepare(&config.database_url, config.db_connections, id).await?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let replica = platform::cluster::Replica::register(&pool, &addr.to_string(), id).await?;
        let state = state::AppState::new(config, pool, clock, Arc::new(replica))?;
        if let Some(password) = bootstrap::first_admin(&state).await? {
            // Printed once, to the console of whoever started the first run.
            println!(
                "\n  First fleet admin: {}\n  One-time password: {}\n  (you will be asked to change it at first sign-in)\n",
                state.config.admin_email, password
            );
        }
        if state.config.demo {
            bootstrap::demo(&state).await?;
        }
        if state.config.local_host {
            bootstrap::local_host(&state).await?;
        }
        state.hypervisors.claim_now().await?;
        if state.config.demo {
            bootstrap::demo_catalog(&state).await?;
        }
        Ok(Server {
            addr,
            state,
            listener,
        })
    }

    /// Serves until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `stop` completes, then stops gracefully: `/healthz` answers 503 and the
    /// replica is marked stopped (the others stop counting on it at once), its host actors
    /// stop and their leases are handed back; it keeps serving for `--shutdown-drain-seconds`
    /// while load balancers notice, then the listener closes and requests in flight get up to
    /// `--shutdown-grace-seconds` to finish (open event streams never do, so the grace period
    /// bounds the wait).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let pool = self.state.pool.clone();
        let clock = self.state.clock.clone();
        let state = &self.state;
        // Housekeeping: age out old sign-in failures and abandoned image uploads.
        let images = state.images.clone();
        let abandon = time::Duration::hours(state.config.upload_abandon_hours.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
            loop {
                tick.tick().await;
                if let Err(e) = accounts::throttle::prune(&pool, clock.now()).await {
                    tracing::warn!(error = %e, "pruning sign-in failures");
                }
                match images.reap_abandoned_uploads(clock.now(), abandon).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(uploads = n, "abandoned image uploads removed"),
                    Err(e) => tracing::warn!(error = %e, "removing abandoned image uploads"),
                }
            }
        });
        let (actors, hypervisors) = (state.accounts.cache.clone(), state.hypervisors.clone());
        state.live.spawn_listener(state.pool.clone(), move |what| {
            if matches!(
                what,
                platform::cluster::ACTORS | platform::cluster::EVERYTHING
            ) {
                actors.invalidate_all();
            }
            hypervisors.on_cluster(what);
        });
        state.replica.spawn_heartbeat();
        state.hypervisors.spawn_rounds();
        platform::jobs::spawn_workers(
            state.pool.clone(),
            state.queue.clone(),
            state.provisioner.clone(),
            state.config.job_workers,
            std::time::Duration::from_secs(state.config.job_lease_seconds.max(3)),
            state.replica.id,
        );
        state.leases.clone().spawn(std::time::Duration::from_secs(
            state.config.lease_check_seconds.max(1),
        ));
        state
            .reclaimer
            .clone()
            .spawn(std::time::Duration::from_secs(
                state.config.reclamation_check_seconds.max(1),
            ));
        state
            .audit_checkpoints
            .clone()
            .spawn(std::time::Duration::from_secs(
                state.config.audit_checkpoint_seconds.max(1),
            ));
        {
            // Usage rollup: complete hours since the last run, every five minutes.
            let (pool, clock) = (state.pool.clone(), state.clock.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
                loop {
                    tick.tick().await;
                    match metering::usage::rollup(&pool, clock.now(), 24 * 31).await {
                        Ok(0) => {}
                        Ok(h) => tracing::info!(hours = h, "usage rolled up"),
                        Err(e) => tracing::warn!(error = %e, "usage rollup"),
                    }
                }
            });
        }
        {
            // Metrics rollup and retention: every minute (a few seconds of work at most).
            let (pool, clock) = (state.pool.clone(), state.clock.clone());
            let retention = metering::metrics::Retention {
                raw: time::Duration::hours(state.config.raw_metrics_hours.max(1)),
                ..Default::default()
            };
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    if let Err(e) = metering::metrics::rollup(&pool, clock.now(), retention).await {
                        tracing::warn!(error = %e, "metrics rollup");
                    }
                }
            });
        }
        let replica = self.state.replica.clone();
        let hypervisors = self.state.hypervisors.clone();
        let draining = self.state.draining.clone();
        let drain = std::time::Duration::from_secs(self.state.config.shutdown_drain_seconds);
        let grace = std::time::Duration::from_secs(self.state.config.shutdown_grace_seconds);
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let stopping = stopping.clone();
            async move {
                stop.await;
                // Draining: /healthz answers 503 so load balancers send no new requests,
                // while this replica still serves whatever reaches it.
                draining.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(seconds = drain.as_secs(), "stopping: draining");
                if let Err(e) = replica.stop().await {
                    tracing::warn!(error = %e, "could not mark this replica stopped");
                }
                // Hosts go to the other replicas at their next round, not after the leases
                // run out.
                match hypervisors.leave().await {
                    Ok(n) => tracing::info!(hosts = n, "host leases handed back"),
                    Err(e) => tracing::warn!(error = %e, "could not hand host leases back"),
                }
                tokio::time::sleep(drain).await;
                tracing::info!("stopping: finishing requests in flight");
                stopping.notify_one();
            }
        };
        let app = web::router(self.state);
        // Without TCP_NODELAY a response written in two parts (headers, then a body that was
        // not ready yet) waits for the client's delayed ACK: 40 ms on one request in eight.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal);
        tokio::select! {
            served = std::future::IntoFuture::into_future(serve) => served?,
            _ = async {
                stopping.notified().await;
                tokio::time::sleep(grace).await;
            } => tracing::info!("stopped after the grace period"),
        }
        Ok(())
    }
}
