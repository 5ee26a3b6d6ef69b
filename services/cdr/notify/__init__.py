"""`cdr notify`: the change feed pushed to each tenant's webhook endpoints (README, "Webhooks")."""
