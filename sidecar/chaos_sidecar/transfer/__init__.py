"""State transfer: snapshot format, rate limiting, shard server and the parallel puller."""
