"""The local stack (Kafka, Postgres, fake provisioner) without Docker, for dev and tests."""
