"""What every stage runs on: configuration, storage (local and s3://), schemas, committed outputs, the Spark stage runner."""
