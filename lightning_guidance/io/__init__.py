"""File boundary: atomic writes, sample shards, checkpoint loading."""
