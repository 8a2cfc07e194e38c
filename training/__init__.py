"""Training, block clustering, map building and evaluation for dsformer_ros (imports the runtime, never the reverse)."""
