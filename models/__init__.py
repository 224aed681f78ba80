"""Training, offline prediction and conversion of Keras RNNs on variable-length sequences.

Nothing in this package knows about Kafka.
"""
