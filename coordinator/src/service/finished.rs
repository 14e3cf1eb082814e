//! The Coordinator service of a run that is already finished: every call is
//! answered "the run is over" (the `Stop` directive), so that workers
//! started with a coordinator on a finished run (a Kubernetes Job applied
//! again) exit 0 instead of retrying until their connect timeout and
//! failing. It holds nothing and writes nothing: no lease, no state, no
//! tokens (the answer tells a stranger only that the run ended).

use std::time::Duration;

use ddpm::proto::{self, coordinator_server::Coordinator, coordinator_server::CoordinatorServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use super::errors::RpcError;
use super::streams::BoxStream;

/// Counts the workers told (their Register calls), so that the answering
/// ends once the world size has heard it.
#[derive(Default)]
pub struct FinishedRun {
    told: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

fn over<T>() -> Result<T, Status> {
    Err(RpcError::RunOver.into())
}

#[tonic::async_trait]
impl Coordinator for FinishedRun {
    async fn register(&self, _: Request<proto::RegisterRequest>) -> Result<Response<proto::RegisterReply>, Status> {
        self.told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
        over()
    }
    async fn ready(&self, _: Request<proto::ReadyRequest>) -> Result<Response<proto::ReadyReply>, Status> {
        over()
    }
    async fn heartbeat(&self, _: Request<proto::HeartbeatRequest>) -> Result<Response<proto::HeartbeatReply>, Status> {
        over()
    }
    type AttachStream = BoxStream<proto::HeartbeatReply>;
    async fn attach(&self, _: Request<Streaming<proto::HeartbeatRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        over()
    }
    type FetchStateStream = BoxStream<proto::StateChunk>;
    async fn fetch_state(&self, _: Request<proto::FetchStateRequest>) -> Result<Response<Self::FetchStateStream>, Status> {
        over()
    }
    async fn sync_from_peer(&self, _: Request<proto::PeerSyncRequest>) -> Result<Response<proto::PeerSyncReply>, Status> {
        over()
    }
    type NextWorkStream = BoxStream<proto::WorkMessage>;
    async fn next_work(&self, _: Request<proto::NextWorkRequest>) -> Result<Response<Self::NextWorkStream>, Status> {
        over()
    }
    type ReduceGradientsStream = BoxStream<proto::ReducedMessage>;
    async fn reduce_gradients(
        &self,
        _: Request<Streaming<proto::GradientMessage>>,
    ) -> Result<Response<Self::ReduceGradientsStream>, Status> {
        over()
    }
    async fn feed_shadow(&self, _: Request<Streaming<proto::GradientMessage>>) -> Result<Response<proto::FeedShadowReply>, Status> {
        over()
    }
    async fn push_state(&self, _: Request<Streaming<proto::StateChunk>>) -> Result<Response<proto::PushStateReply>, Status> {
        over()
    }
    async fn report_shard(&self, _: Request<proto::ShardReport>) -> Result<Response<proto::ShardReportReply>, Status> {
        over()
    }
    async fn nccl_unique_id(&self, _: Request<proto::NcclIdRequest>) -> Result<Response<proto::NcclIdReply>, Status> {
        over()
    }
    async fn submit_result(&self, _: Request<Streaming<proto::ResultMessage>>) -> Result<Response<proto::SubmitResultReply>, Status> {
        over()
    }
    async fn get_status(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        over()
    }
}

/// Answers on `listener` (with the run's TLS when it has one) until
/// `workers` registrations were answered, `linger` passed, or `shutdown`.
pub async fn answer_for(
    listener: TcpListener,
    tls: Option<&ddpm::wire::tls::ServerTls>,
    workers: usize,
    linger: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if linger.is_zero() {
        return Ok(());
    }
    tracing::info!("telling workers that connect in the next {:.0} s that the run is over (--finished-linger)", linger.as_secs_f64());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config())?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = std::sync::Arc::new(FinishedRun::default());
    let all_told = {
        let service = service.clone();
        async move {
            loop {
                let changed = service.changed.notified();
                if service.told.load(std::sync::atomic::Ordering::SeqCst) >= workers {
                    return;
                }
                changed.await;
            }
        }
    };
    builder
        .add_service(CoordinatorServer::from_arc(service.clone()))
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = shutdown => {}
                _ = all_told => {
                    // Let the last answer leave before the server goes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .await?;
    tracing::info!(told = service.told.load(std::sync::atomic::Ordering::SeqCst), "done telling workers the run is over");
    Ok(())
}
