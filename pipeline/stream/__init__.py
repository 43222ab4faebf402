"""The Kafka path: the conversation_sample.v1 contract, the producer, and the stream worker."""
