"""The committed gRPC stubs must match schemas/provisioner.proto."""

from __future__ import annotations

from pipeline.adapters.proto import generate


def test_generated_code_is_fresh() -> None:
    stale = generate.stale_files()
    assert not stale, (
        f"stale generated files {stale}: "
        "run `python -m pipeline.adapters.proto.generate` and commit"
    )


def test_generated_grpc_module_imports_as_a_package() -> None:
    from pipeline.adapters.proto import provisioner_pb2, provisioner_pb2_grpc

    # The generator rewrites protoc's top-level import into a package import.
    assert vars(provisioner_pb2_grpc)["provisioner__pb2"] is provisioner_pb2
    assert set(provisioner_pb2.DESCRIPTOR.services_by_name["Provisioner"].methods_by_name) == {
        "RegradeResource",
        "SuspendResource",
        "ResumeResource",
        "ApplyBatch",
    }
