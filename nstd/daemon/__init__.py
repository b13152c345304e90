"""The daemon: inbox -> journal -> scheduler -> worker -> outbox."""
