"""Where clips come from: shard URLs, tar streaming (no pickle), packing folders into shards, video
decoding into clips, the input identity a resume compares, and the sample footage the demo uses."""
