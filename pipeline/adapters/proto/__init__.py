"""Generated gRPC code for ``schemas/provisioner.proto``.

Regenerate with ``python -m pipeline.adapters.proto.generate``; ``--check`` (and a unit
test) fail when
the committed files are stale.
"""
