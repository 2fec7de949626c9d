//! The peer of `benches/kafka_load.sh`: librdkafka's consumer (the same librdkafka
//! auditlake links) reading every message of a topic from the beginning and discarding it,
//! so the ratio shows what auditlake adds over Kafka itself. (kcat from Debian links
//! librdkafka 2.0, which cannot parse tansu's ApiVersion answer.)
//!
//!   kafka_bare_consume BROKERS TOPIC MESSAGES
//!
//! Prints the seconds from start (the group join included), the messages, the bytes, and
//! the seconds from the first message (reading only).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, messages] = args.as_slice() else {
        bail!("usage: kafka_bare_consume BROKERS TOPIC MESSAGES");
    };
    let want: u64 = messages.parse().context("MESSAGES")?;
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let deadline = started + Duration::from_secs(600);
    while n < want {
        if Instant::now() > deadline {
            bail!("only {n} of {want} messages after 600 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    let reading = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!(
        "{:.3} {n} {bytes} {reading:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
