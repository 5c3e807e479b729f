"""Store layer: durable state in one SQLite file in the state directory."""
