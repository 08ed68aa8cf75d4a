//! How far each projector's consumer group is behind the topics it reads: per group, over
//! every partition of the topics it has committed offsets on, the records between its
//! committed offset and the partition's end. Read from the broker (blocking calls: run them
//! off the async threads).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// [`consumer_group_lags`] of the brokers of `kafka`, off the async threads: each broker call
/// bounded by `timeout`, the whole by twice that.
///
/// # Errors
///
/// When no brokers are configured, or the broker does not answer in time.
pub async fn read(
    kafka: &crate::configuration::KafkaSettings,
    timeout: Duration,
) -> anyhow::Result<Vec<GroupLag>> {
    let kafka = kafka.clone();
    let read = tokio::task::spawn_blocking(move || {
        let config = kafka
            .client_config()
            .ok_or_else(|| anyhow::anyhow!("no brokers configured"))?;
        consumer_group_lags(
            &config,
            (&kafka.topic_prefix, &kafka.consumer_group_prefix),
            timeout,
        )
    });
    tokio::time::timeout(timeout * 2, read)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not answer within {:?}", timeout * 2))??
}

/// A projector's consumer group: its read model, the records it has not read, and the sum of
/// its committed offsets (which moves while it makes progress).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupLag {
    pub model: String,
    pub lag: i64,
    pub committed: i64,
}

/// The lag of each consumer group named `<topic_prefix><group_prefix>.<model>`, sorted by
/// model.
///
/// # Errors
///
/// When the broker does not answer within `timeout` a call.
pub fn consumer_group_lags(
    config: &ClientConfig,
    (topic_prefix, group_prefix): (&str, &str),
    timeout: Duration,
) -> anyhow::Result<Vec<GroupLag>> {
    let probe: BaseConsumer = config.create()?;
    let metadata = probe.fetch_metadata(None, timeout)?;
    let topics: Vec<(String, Vec<i32>)> = metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(topic_prefix))
        .map(|t| {
            let partitions = t.partitions().iter().map(|p| p.id()).collect();
            (t.name().to_owned(), partitions)
        })
        .collect();
    let group_start = format!("{topic_prefix}{group_prefix}.");
    let groups: Vec<String> = probe
        .fetch_group_list(None, timeout)?
        .groups()
        .iter()
        .map(|g| g.name().to_owned())
        .filter(|g| g.starts_with(&group_start))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for (topic, partitions) in &topics {
        for partition in partitions {
            wanted.add_partition(topic, *partition);
        }
    }
    let mut lags = Vec::new();
    for group in groups {
        let consumer: BaseConsumer = config.clone().set("group.id", &group).create()?;
        let committed = consumer.committed_offsets(wanted.clone(), timeout)?;
        let (mut lag, mut total) = (0, 0);
        for (topic, partitions) in &topics {
            let offsets: Vec<Option<i64>> = partitions
                .iter()
                .map(
                    |p| match committed.find_partition(topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(n)) => Some(n),
                        _ => None,
                    },
                )
                .collect();
            // A topic the group does not read has no committed offset at all.
            if offsets.iter().all(Option::is_none) {
                continue;
            }
            for (partition, offset) in partitions.iter().zip(offsets) {
                let (low, high) = probe.fetch_watermarks(topic, *partition, timeout)?;
                let at = offset.unwrap_or(low).max(low);
                lag += high - at;
                total += at;
            }
        }
        lags.push(GroupLag {
            model: group[group_start.len()..].to_owned(),
            lag: lag.max(0),
            committed: total,
        });
    }
    lags.sort();
    Ok(lags)
}
