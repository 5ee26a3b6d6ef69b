"""Data shared by ingest and API: the call-ended event and the stored CDR."""
