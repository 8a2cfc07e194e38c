"""Maps from drives: GPS/odometry tracks and keyframes, `build-map` (resumable, sharded), `merge-maps`, `bench-map`."""
