"""CDR service: call-ended events from Kafka into ClickHouse, served by an HTTP API."""

__version__ = "0.1.0"
