"""Change capture from the sources: logical replication (pgoutput) and, later, read-only polling."""
