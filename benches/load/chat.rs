//! `load chat`: the throughput of one busy WebSocket through a proxy. Binary
//! messages of a fixed size go out as fast as the window allows (or at a
//! fixed byte rate), the echo backend returns them, and each echo's round
//! trip is timed from a send stamp inside the message. With `--pid`, the
//! proxy's CPU time over the run is read from `/proc`, so a rate-limited run
//! (say 1 MB/s) compares what the same traffic costs two proxies.
//! Prints one `chat …` line.

use super::*;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures_util::SinkExt;
use tokio::sync::Semaphore;

#[derive(clap::Args)]
pub(crate) struct ChatRun {
    /// The WebSocket URL, e.g. ws://127.0.0.1:18080/v1/chat?deploymentId=d.
    #[arg(long)]
    url: Url,
    #[arg(long)]
    origin: Option<String>,
    /// Extra handshake header, `Name: value` (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Bytes per message (at least 16: a sequence number and a send stamp).
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    message_size: u32,
    /// Bytes sent per second; 0 sends as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes sent but not yet echoed, at most.
    #[arg(long, default_value_t = 1 << 20)]
    window: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// The proxy's pid, to report the CPU time it spent during the run.
    #[arg(long)]
    pid: Option<u32>,
}

/// Seconds of CPU process `pid` has used, summed over its threads from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds; `/proc/<pid>/stat` counts
/// 10 ms ticks, too coarse for a run that uses a few hundred ms).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut nanos = 0_u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
    {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing is simply gone.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        nanos += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("unexpected {}", path.display()))?;
    }
    Ok(nanos as f64 / 1e9)
}

/// A message's bytes after its sequence number and send stamp: a pattern
/// that depends on the sequence number, so an echo that lost, repeated or
/// reordered bytes is caught.
fn fill_pattern(sequence: u64, body: &mut [u8]) {
    for (i, byte) in body.iter_mut().enumerate() {
        *byte = (sequence as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

pub(crate) async fn chat(run: ChatRun) -> Result<()> {
    let target = WsTarget::new(run.url.clone(), run.origin.clone(), &run.header).await?;
    let ws = target.open().await?;
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    let size = run.message_size as usize;
    let window = Arc::new(Semaphore::new(run.window.max(run.message_size) as usize));
    let started = Instant::now();
    let sending_for = Duration::from_secs(run.duration);
    let cpu_before = run.pid.map(cpu_seconds).transpose()?;
    let sent = Arc::new(AtomicU64::new(0));

    let sender = {
        let window = window.clone();
        let sent = sent.clone();
        let rate = run.rate;
        tokio::spawn(async move {
            let mut payload = vec![0x5a_u8; size];
            let mut sequence = 0_u64;
            while started.elapsed() < sending_for {
                if rate > 0 {
                    // Stay at or under `rate` bytes per second since the start.
                    let due =
                        Duration::from_secs_f64((sequence * size as u64) as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let permit = window.acquire_many(size as u32).await?;
                permit.forget();
                payload[..8].copy_from_slice(&sequence.to_le_bytes());
                fill_pattern(sequence, &mut payload[16..]);
                let stamp = started.elapsed().as_nanos() as u64;
                payload[8..16].copy_from_slice(&stamp.to_le_bytes());
                sink.send(Message::binary(payload.clone())).await?;
                sequence += 1;
                sent.store(sequence, Relaxed);
            }
            anyhow::Ok(sink)
        })
    };

    let mut echoed = 0_u64;
    let mut out_of_order = 0_u64;
    let mut round_trips_us: Vec<u32> = Vec::new();
    let drain_limit = sending_for + Duration::from_secs(5);
    loop {
        let sender_done = sender.is_finished();
        if sender_done && echoed >= sent.load(Relaxed) {
            break;
        }
        let Some(left) = drain_limit.checked_sub(started.elapsed()) else {
            break;
        };
        let next =
            match tokio::time::timeout(left.min(Duration::from_millis(200)), stream.next()).await {
                Err(_) => continue,
                Ok(None) => bail!("the proxy ended the stream after {echoed} echoes"),
                Ok(Some(message)) => message.context("reading an echo")?,
            };
        // The backend greets each socket with a text message: only our own
        // binary messages are echoes.
        let Message::Binary(data) = next else {
            continue;
        };
        if data.len() != size {
            bail!("an echo of {} bytes, sent {size}", data.len());
        }
        let sequence = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let stamp = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        if sequence != echoed {
            out_of_order += 1;
        }
        let mut expected = vec![0_u8; size - 16];
        fill_pattern(sequence, &mut expected);
        if data[16..] != expected[..] {
            bail!("the echo of message {sequence} differs from what was sent");
        }
        let now = started.elapsed().as_nanos() as u64;
        round_trips_us.push(u32::try_from(now.saturating_sub(stamp) / 1_000).unwrap_or(u32::MAX));
        echoed += 1;
        window.add_permits(size);
    }
    let elapsed = started.elapsed();
    let cpu = match (run.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    let sink = sender.await.context("the sender panicked")??;
    let ws = sink.reunite(stream).context("reuniting the socket")?;
    let _ = close(ws).await;

    round_trips_us.sort_unstable();
    let bytes = echoed * size as u64;
    let seconds = elapsed.as_secs_f64();
    let megabytes = bytes as f64 / 1e6;
    let mut line = format!(
        "chat message_size={size} sent={} echoed={echoed} out_of_order={out_of_order} seconds={seconds:.2} \
         mb_per_s={:.2} messages_per_s={:.0} p50_us={} p99_us={}",
        sent.load(Relaxed),
        megabytes / seconds,
        echoed as f64 / seconds,
        percentile(&round_trips_us, 0.50),
        percentile(&round_trips_us, 0.99),
    );
    if let Some(cpu) = cpu {
        line += &format!(
            " proxy_cpu_s={cpu:.2} proxy_cpu_ms_per_mb={:.2}",
            if megabytes > 0.0 {
                1e3 * cpu / megabytes
            } else {
                0.0
            }
        );
    }
    println!("{line}");
    if echoed < sent.load(Relaxed) {
        bail!(
            "{} messages sent were never echoed",
            sent.load(Relaxed) - echoed
        );
    }
    Ok(())
}
