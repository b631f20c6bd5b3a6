"""Results in SQLite keyed by full configuration, their aggregation and the published reference
numbers."""
