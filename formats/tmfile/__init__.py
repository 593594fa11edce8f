"""The tmfile format plugin (reader, writers, op table)."""
