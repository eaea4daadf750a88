"""Developer tooling: the local stack, the fake provisioner, the bench, the demo and workload."""
