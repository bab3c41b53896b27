"""One shard end to end inside an actor, callable without Ray: settings, model loading, clip encoding,
scoring, previews, and `ShardEncoder`, which turns a shard into a committed cache file."""
