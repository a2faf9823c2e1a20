"""Deploy hooks: tell a statically built website to rebuild when its content changes, through an outbox table."""
