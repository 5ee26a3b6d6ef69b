"""The CDR query API (spec/API.md): a thin Starlette reader over the store."""
