"""``sidecar account ...``: filled in by the charging work."""
