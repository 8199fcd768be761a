//! Connects to NATS with the pod's projected service-account token, reading the token file again
//! at every connect and reconnect, and exchanges greetings on `<namespace>.greetings`.
//!
//!   NATS_URL=nats://nats.nats.svc.cluster.local:4222 \
//!   NATS_TOKEN_FILE=/var/run/secrets/nats/token NATS_NAMESPACE=team-a \
//!   cargo run -- [--count N]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Auth, AuthError, ConnectOptions, Event};
use futures_util::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let token_file =
        std::env::var("NATS_TOKEN_FILE").unwrap_or_else(|_| "/var/run/secrets/nats/token".into());
    let namespace = std::env::var("NATS_NAMESPACE")?;
    let count: Option<usize> = match std::env::args().skip_while(|a| a != "--count").nth(1) {
        Some(n) => Some(n.parse()?),
        None => None,
    };

    let connects = Arc::new(AtomicUsize::new(0));
    let client = ConnectOptions::with_auth_callback(move |_nonce| {
        // Called before every CONNECT: the kubelet may have rotated the file since the last one.
        let path = token_file.clone();
        async move {
            let token = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| AuthError::new(format!("read {path}: {e}")))?;
            let mut auth = Auth::new();
            auth.token = Some(token.trim().to_string());
            Ok(auth)
        }
    })
    .name("token-file-example")
    .max_reconnects(None) // never give up
    .retry_on_initial_connect()
    .reconnect_delay_callback(|attempts| Duration::from_millis(500 * attempts.min(10) as u64))
    .event_callback(move |event| {
        let connects = connects.clone();
        async move {
            match event {
                Event::Connected if connects.fetch_add(1, Ordering::SeqCst) == 0 => {
                    println!("connected")
                }
                Event::Connected => println!("reconnected"),
                Event::Disconnected => println!("disconnected"),
                Event::Draining | Event::Closed => {} // our own shutdown
                other => println!("event: {other}"),
            }
        }
    })
    .connect(url.as_str())
    .await?;

    let subject = format!("{namespace}.greetings");
    let mut sub = client.subscribe(subject.clone()).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = signal(SignalKind::terminate())?;
    let (mut sent, mut received) = (0u64, 0usize);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sent += 1;
                // Published while disconnected, a message waits in the client's buffer.
                client.publish(subject.clone(), format!("hello {sent} from rust").into()).await?;
            }
            Some(msg) = sub.next() => {
                received += 1;
                println!("received {}: {}", msg.subject, String::from_utf8_lossy(&msg.payload));
                if count.is_some_and(|n| received >= n) {
                    break;
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.drain().await?;
    println!("stopped");
    Ok(())
}
