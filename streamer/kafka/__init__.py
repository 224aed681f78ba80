"""Serving from Kafka: `streamer serve` in a consumer group, with durable per-stream state.

Written once, above the client interface:

- `service`: `KafkaService`, the serve loop (`run`: `_recover` -> `_restore_pending` -> consume -> `_process`
  -> `_checkpoint`/`_finish_checkpoint`) and the rebalance listener the consumer calls (`revoke_checkpoint`,
  `revoke_done`, `assigned`, `unassigned`, `lost`); `retrying`, `Backoff`, `ServeSettings`.
- `checkpoint`: `Checkpoint`, the one object that owns the commit order (outputs -> changelog ->
  acknowledged -> offsets; or one transaction) and the producer everything goes through.
- `restore`: reading a changelog partition to its end and loading it into the engine's state store.
- `topics`: the topic names of one deployment (input, output, dead letters, changelog) and their creation.
- `changelog`: the changelog record codec (key = stream id, value = `StreamRecord` bytes, None = tombstone).
- `config`: connection settings (TLS, SASL) for both clients, the serve loop's `ClientTuning`, the flags.
- `metrics`: `KafkaMetrics` (prefix ``streamer_kafka_``) on the engine's registry.

The client interface and its implementations (``--kafka-client``):

- `client`: the interface (`Consumer`, `Producer`, `Reader`, `Admin`, `Clients`, `RebalanceListener`, `Batch`,
  `TopicSpec`), the errors (`ClientError`, `FatalClientError`, `DeliveryError`, `ClientTimeout`) and
  `make_clients(name, connection, tuning, topic, metrics)`.
- `kafka_python`: kafka-python (the default); `compat`: its 3.0.x rejoin work-around.
- `confluent`: confluent-kafka on librdkafka (the ``rnn-streamer[confluent]`` extra).

Nothing here imports TensorFlow; only the chosen client's module imports its library.
"""
