//! The future that resolves when the process is asked to stop (SIGTERM or SIGINT).

use std::future::Future;

/// Resolves on the first SIGTERM or SIGINT.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives between "listening" and the first poll must start a drain, not kill the
/// process with the default action. Call it before binding (it needs a Tokio runtime).
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        async move {
            let (mut interrupt, mut terminate) = match streams {
                (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!(signal = "Ctrl-C", "stop requested");
        }
    }
}
