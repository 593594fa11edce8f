"""The tnn format plugin (reader, writers, op table)."""
