"""The long-running roles: relay, worker, projector, and the lag monitor they share."""
