"""The cache format and everything that reads or rewrites it: the schema, the atomic shard writer, the
manifest, the output lock, the training reader, the `where` language, filter, report and summary."""
