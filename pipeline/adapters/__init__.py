"""Drivers other than Postgres: gRPC provisioner client, Kafka helpers, library compat shims."""
