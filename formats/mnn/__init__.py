"""The mnn format plugin (reader, writers, op table)."""
