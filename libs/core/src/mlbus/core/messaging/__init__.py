"""Everything services use to talk over Kafka: topics, envelope, producer, consumer, DLQs.

Plain aiokafka (Faust apps use the same topic catalogue and envelope). Works unchanged against
the embedded broker and Apache Kafka; see KAFKA_BROKER.md for what the former lacks.
"""

from mlbus.core.messaging.consumer import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_CONSUMER_GROUP,
    H_ERROR,
    H_ERROR_TYPE,
    H_FAILED_AT,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TOPIC,
    Event,
    EventConsumer,
    Handler,
    RetryableError,
    consumer_config,
)
from mlbus.core.messaging.envelope import (
    JSON,
    PROTOBUF,
    Envelope,
    EventDecodeError,
    build_headers,
    decode,
    encode,
)
from mlbus.core.messaging.producer import EventProducer, producer_config
from mlbus.core.messaging.topics import (
    CONTROL_PARTITIONS,
    DATA_PARTITIONS,
    ENDPOINT_PARTITIONS,
    TOPICS,
    Topic,
    TopicCatalogue,
    all_topics,
    async_errors,
    async_requests,
    async_results,
    batch_chunks,
    ensure_topics,
)

__all__ = [
    "CONTROL_PARTITIONS",
    "DATA_PARTITIONS",
    "DLQ_HEADERS",
    "ENDPOINT_PARTITIONS",
    "H_ATTEMPTS",
    "H_CONSUMER_GROUP",
    "H_ERROR",
    "H_ERROR_TYPE",
    "H_FAILED_AT",
    "H_SOURCE_OFFSET",
    "H_SOURCE_PARTITION",
    "H_SOURCE_TOPIC",
    "JSON",
    "PROTOBUF",
    "TOPICS",
    "Envelope",
    "Event",
    "EventConsumer",
    "EventDecodeError",
    "EventProducer",
    "Handler",
    "RetryableError",
    "Topic",
    "TopicCatalogue",
    "all_topics",
    "async_errors",
    "async_requests",
    "async_results",
    "batch_chunks",
    "build_headers",
    "consumer_config",
    "decode",
    "encode",
    "ensure_topics",
    "producer_config",
]
