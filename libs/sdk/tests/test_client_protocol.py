"""The clients' side of the wire, against a registry double that misbehaves on purpose
(corrupt downloads, chosen errors) — things the real registry never does. Behaviour with
the real registry is in test_registry_integration.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbus.sdk.errors import DataLoss, Internal, NotFound, Unavailable, Unimplemented
from mlbus.sdk.local.broker import free_port
from mlbus.sdk.registry import CHUNK_SIZE, AsyncRegistryClient, RegistryClient

GOOD = b"\x08\x07" * 300_000  # 600 kB: a header and a few chunks
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
GROUPS = [f"group-{i}" for i in range(7)]


class RegistryDouble(registry_pb2_grpc.RegistryServiceServicer):
    """Answers a few RPCs the way a test needs; everything else is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.registrations: list[list[registry_pb2.RegisterModelVersionRequest]] = []
        self.metadata: list[dict[str, Any]] = []
        self.list_requests: list[registry_pb2.ListModelGroupsRequest] = []

    def GetModelGroup(self, request: Any, context: Any) -> Any:
        context.set_trailing_metadata((("mlbus-model_group", request.name),))
        context.abort(grpc.StatusCode.NOT_FOUND, f"model group {request.name!r} not found")

    def ListModelGroups(self, request: Any, context: Any) -> Any:
        self.list_requests.append(request)
        if request.name_prefix == "loop":
            return registry_pb2.ListModelGroupsResponse(
                page=common_pb2.PageResponse(next_page_token="same")
            )
        start = int(request.page.page_token or 0)
        end = start + (request.page.page_size or 3)
        return registry_pb2.ListModelGroupsResponse(
            model_groups=[registry_pb2.ModelGroup(name=n) for n in GROUPS[start:end]],
            page=common_pb2.PageResponse(next_page_token=str(end) if end < len(GROUPS) else ""),
        )

    def RegisterModelVersion(self, request_iterator: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        messages = list(request_iterator)
        self.registrations.append(messages)
        data = b"".join(m.chunk for m in messages[1:])
        sha = (
            "ff" * 32
            if messages[0].header.description == "lie"
            else hashlib.sha256(data).hexdigest()
        )
        return registry_pb2.RegisterModelVersionResponse(
            model_version=registry_pb2.ModelVersion(
                model_group=messages[0].header.model_group,
                version=1,
                artifact=common_pb2.ObjectRef(uri="file:///x", sha256=sha, size_bytes=len(data)),
            )
        )

    def DownloadArtifact(self, request: Any, context: Any) -> Iterator[Any]:
        body = GOOD
        sha = GOOD_SHA
        if request.model_group == "corrupt":
            body = GOOD[:-1] + b"\x00"
        elif request.model_group == "truncated":
            body = GOOD[: len(GOOD) // 2]
        elif request.model_group == "dies":
            yield registry_pb2.DownloadArtifactResponse(
                artifact=common_pb2.ObjectRef(uri="file:///x", sha256=sha, size_bytes=len(body))
            )
            yield registry_pb2.DownloadArtifactResponse(chunk=body[:1000])
            context.abort(grpc.StatusCode.INTERNAL, "internal error; trace id abc")
        yield registry_pb2.DownloadArtifactResponse(
            artifact=common_pb2.ObjectRef(uri="file:///x", sha256=sha, size_bytes=len(GOOD))
        )
        for i in range(0, len(body), 100_000):
            yield registry_pb2.DownloadArtifactResponse(chunk=body[i : i + 100_000])


@pytest.fixture(scope="module")
def double() -> Iterator[tuple[RegistryDouble, str]]:
    servicer = RegistryDouble()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def client(double: tuple[RegistryDouble, str]) -> Iterator[RegistryClient]:
    with RegistryClient(double[1], actor="alice", timeout=10) as c:
        yield c


def test_not_found_carries_message_and_details(client: RegistryClient) -> None:
    with pytest.raises(NotFound) as info:
        client.get_group("churn")
    assert info.value.message == "model group 'churn' not found"
    assert info.value.details["model_group"] == "churn"
    assert info.value.details["target"] == client.target


def test_unimplemented(client: RegistryClient) -> None:
    with pytest.raises(Unimplemented):
        client.get_endpoint("x")


def test_nobody_listening_is_unavailable_with_a_hint() -> None:
    target = f"127.0.0.1:{free_port()}"
    with RegistryClient(target, timeout=5) as client, pytest.raises(Unavailable) as info:
        client.get_group("churn")
    assert f"registry at {target} is unavailable" in info.value.message
    assert "is the registry running?" in info.value.message
    assert "mlbus up" in info.value.message


def test_pages_are_fetched_as_you_iterate(
    client: RegistryClient, double: tuple[RegistryDouble, str]
) -> None:
    servicer, _ = double
    servicer.list_requests.clear()
    assert [g.name for g in client.list_groups(page_size=2)] == GROUPS
    assert [r.page.page_token for r in servicer.list_requests] == ["", "2", "4", "6"]

    servicer.list_requests.clear()
    assert [g.name for g in client.list_groups(page_size=2, limit=3)] == GROUPS[:3]
    assert len(servicer.list_requests) == 2  # never asks for a page it does not need


def test_a_server_repeating_a_page_token_does_not_loop_forever(client: RegistryClient) -> None:
    with pytest.raises(Internal, match="same page token twice"):
        list(client.list_groups(prefix="loop"))


def test_register_sends_header_first_with_sha_then_1_mib_chunks(
    client: RegistryClient, double: tuple[RegistryDouble, str], tmp_path: Path
) -> None:
    servicer, _ = double
    data = b"m" * (CHUNK_SIZE * 2 + 10)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    progress: list[tuple[int, int | None]] = []
    version = client.register(
        path, group="churn", metrics={"auc": 0.9}, progress=lambda d, t: progress.append((d, t))
    )
    assert version.artifact is not None
    assert version.artifact.size_bytes == len(data)
    header, *chunks = servicer.registrations[-1]
    assert header.WhichOneof("part") == "header"
    assert header.header.expected_sha256 == hashlib.sha256(data).hexdigest()
    assert header.header.actor.name == "alice"
    assert [len(c.chunk) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 10]
    assert servicer.metadata[-1]["x-mlbus-actor"] == "alice"
    assert progress[0] == (0, len(data))
    assert progress[-1] == (len(data), len(data))


def test_register_checks_what_the_registry_stored(client: RegistryClient) -> None:
    with pytest.raises(DataLoss, match="stored sha256"):
        client.register(b"abc", group="churn", description="lie")


class _FailingStream(io.RawIOBase):
    """Non-seekable; the second read fails like a disk or network error."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return b"x" * 100


def test_a_read_error_during_upload_is_raised_as_itself(client: RegistryClient) -> None:
    with pytest.raises(OSError, match="Input/output error"):
        client.register(_FailingStream(), group="churn")  # type: ignore[arg-type]


def test_register_needs_exactly_one_source(client: RegistryClient) -> None:
    with pytest.raises(ValueError, match="either a source"):
        client.register(group="churn")
    with pytest.raises(ValueError, match="either a source"):
        client.register(b"x", group="churn", artifact_uri="file:///x")


def test_download_good_into_a_directory(client: RegistryClient, tmp_path: Path) -> None:
    result = client.download("good", 3, dest=tmp_path)
    assert result.path == tmp_path / "good-v3.onnx"
    assert result.path.read_bytes() == GOOD
    assert result.artifact.sha256 == GOOD_SHA
    assert client.read_artifact("good", alias="production") == GOOD


@pytest.mark.parametrize("group", ["corrupt", "truncated"])
def test_bad_download_raises_and_leaves_nothing(
    client: RegistryClient, tmp_path: Path, group: str
) -> None:
    with pytest.raises(DataLoss):
        client.download(group, 1, dest=tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_server_failure_mid_download_leaves_nothing(client: RegistryClient, tmp_path: Path) -> None:
    with pytest.raises(Internal, match="trace id abc"):
        client.download("dies", 1, dest=tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


async def test_async_client_same_behaviour(
    double: tuple[RegistryDouble, str], tmp_path: Path
) -> None:
    async with AsyncRegistryClient(double[1], actor="svc", timeout=10) as client:
        names = [g.name async for g in client.list_groups(page_size=3)]
        assert names == GROUPS
        with pytest.raises(NotFound, match="not found") as info:
            await client.get_group("churn")
        assert info.value.details["model_group"] == "churn"

        version = await client.register(GOOD, group="churn")
        assert version.artifact is not None
        assert version.artifact.sha256 == GOOD_SHA

        result = await client.download("good", 1, dest=tmp_path / "m.onnx")
        assert result.path.read_bytes() == GOOD
        with pytest.raises(DataLoss):
            await client.download("corrupt", 1, dest=tmp_path / "bad.onnx")
        assert sorted(p.name for p in await asyncio.to_thread(tmp_path.iterdir)) == ["m.onnx"]


def test_an_unavailable_the_server_answered_keeps_its_reason_without_the_hint() -> None:
    from grpc.aio import AioRpcError, Metadata

    from mlbus.sdk.errors import from_rpc_error

    answered = AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        Metadata(),
        Metadata(),
        details="endpoint 'churn' is not serving yet: revision 1 is being deployed",
    )
    error = from_rpc_error(answered, target="127.0.0.1:50051", service="router")
    assert isinstance(error, Unavailable)
    assert error.message == (
        "router at 127.0.0.1:50051: endpoint 'churn' is not serving yet: revision 1 is being "
        "deployed"
    )
    unreachable = AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        Metadata(),
        Metadata(),
        details="failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1",
    )
    message = from_rpc_error(unreachable, target="127.0.0.1:1", service="trainer").message
    assert message.startswith("trainer at 127.0.0.1:1 is unavailable (failed to connect")
    assert "is the trainer running?" in message
