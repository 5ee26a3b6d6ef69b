"""The ingestor: call-ended events from Kafka into ClickHouse, invalid ones to a DLQ."""
