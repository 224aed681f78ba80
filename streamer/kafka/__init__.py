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

Hostile input and topology (issue 9), through the interface too:

- `limits`: the topics' record limits, read at start-up (``max.message.bytes``), checked, and the batch size.
- `routing`: the murmur2 partitioner check; `topology`: partitions added to the input (changelog extended).
- `membership`: static membership (instance ids, leaving on SIGTERM, the fenced line).

Security (issue 10), for both clients:

- `failures`: a client's error as one line for the user, or None (retry); `probe`: one connection the
  client's way to say why a bootstrap fails; `acls`: what each role needs, the start-up ACL check;
  `secrets`: password files, refused password flags, secrets masked in every log record.

The client interface and its implementations (``--kafka-client``):

- `client`: the interface (`Consumer`, `Producer`, `Reader`, `Admin`, `Clients`, `RebalanceListener`, `Batch`,
  `TopicSpec`), the errors (`ClientError`, `FatalClientError`, `Fenced`, `DeliveryError`, `ClientTimeout`) and
  `make_clients(name, connection, tuning, topic, metrics, needs)`.
- `kafka_python`: kafka-python (the default); `compat`: its 3.0.x rejoin work-around.
- `confluent`: confluent-kafka on librdkafka (the ``rnn-streamer[confluent]`` extra).

Nothing here imports TensorFlow; only the chosen client's module imports its library.
"""
