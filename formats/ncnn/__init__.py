"""The ncnn format plugin (reader, writers, op table)."""
