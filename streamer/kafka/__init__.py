"""Serving from Kafka: `streamer serve` in a consumer group, with durable per-stream state.

- `config`: kafka-python client settings (bootstrap servers, TLS, SASL) from flags and environment.
- `topics`: the topic names of one deployment (input, output, dead letters, changelog) and their creation.
- `changelog`: the changelog record codec (key = stream id, value = `StreamRecord` bytes, None = tombstone).
- `checkpoint`: `Checkpoint`, the one object that owns the commit order.
- `restore`: reading a changelog partition to its end and loading it into the engine's state store.
- `service`: the poll loop and the rebalance listener.
- `metrics`: `KafkaMetrics` (prefix ``streamer_kafka_``) on the engine's registry.

Nothing here imports TensorFlow.
"""
