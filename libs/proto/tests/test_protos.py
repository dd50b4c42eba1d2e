"""The generated proto tree: up to date, importable, styled, and wire-compatible with the
Open Inference Protocol clients users already have (tritonclient)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

REPO_ROOT = Path(__file__).resolve().parents[3]
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"
GENERATED_ROOT = REPO_ROOT / "libs" / "proto" / "src"
OUR_OIP_MODULE = "mlbus.inference.v2.grpc_service_pb2"
# tritonclient has shipped the module under both names.
TRITON_OIP_MODULES = ("tritonclient.grpc.grpc_service_pb2", "tritonclient.grpc.service_pb2")
SERVICE = "inference.GRPCInferenceService"
OIP_METHODS = {
    "ServerLive": ("inference.ServerLiveRequest", "inference.ServerLiveResponse"),
    "ServerReady": ("inference.ServerReadyRequest", "inference.ServerReadyResponse"),
    "ModelReady": ("inference.ModelReadyRequest", "inference.ModelReadyResponse"),
    "ServerMetadata": ("inference.ServerMetadataRequest", "inference.ServerMetadataResponse"),
    "ModelMetadata": ("inference.ModelMetadataRequest", "inference.ModelMetadataResponse"),
    "ModelInfer": ("inference.ModelInferRequest", "inference.ModelInferResponse"),
}

# Runs in a fresh interpreter: tritonclient's grpc_service.proto defines the same
# `inference.*` symbols as ours, and one process's descriptor pool cannot hold both.
# Prints {"messages": {full_name: {field: [number, type, repeated, packed, message type,
# enum type, oneof]}}, "services": {full_name: {method: [input, output, client streaming,
# server streaming]}}} for the first importable module named on the command line.
_DUMP_DESCRIPTORS = r"""
import importlib, json, sys

def fields(message):
    return {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            f.is_packed,
            f.message_type.full_name if f.message_type else "",
            f.enum_type.full_name if f.enum_type else "",
            f.containing_oneof.name if f.containing_oneof else "",
        ]
        for f in message.fields
    }

def walk(message, out):
    out[message.full_name] = fields(message)
    for nested in message.nested_types:
        walk(nested, out)

errors = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        errors.append(repr(exc))
        continue
    file = module.DESCRIPTOR
    messages = {}
    for message in file.message_types_by_name.values():
        walk(message, messages)
    services = {
        s.full_name: {
            m.name: [m.input_type.full_name, m.output_type.full_name,
                     m.client_streaming, m.server_streaming]
            for m in s.methods
        }
        for s in file.services_by_name.values()
    }
    print(json.dumps({"module": name, "messages": messages, "services": services}))
    break
else:
    sys.exit("none of these modules could be imported: " + "; ".join(errors))
"""


def _build_request(pb: Any) -> Any:
    """A ModelInferRequest using every parameter kind, raw and typed contents."""
    req = pb.ModelInferRequest(model_name="churn", model_version="3", id="req-1")
    req.parameters["mlbus.target_variant"].string_param = "blue"
    req.parameters["priority"].int64_param = -2
    req.parameters["sequence_start"].bool_param = True
    req.parameters["temperature"].double_param = 0.25
    req.parameters["timeout"].uint64_param = 2**63 + 5
    x = req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    x.parameters["binary_data_size"].int64_param = 24
    ids = req.inputs.add(name="ids", datatype="INT64", shape=[2])
    ids.contents.int64_contents.extend([7, -8])
    req.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    req.raw_input_contents.append(struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    return req


# Builds _build_request with the first importable module named on the command line and
# prints its deterministic serialization as hex.
_SERIALIZE_REQUEST = (
    "import importlib, struct, sys\nfrom typing import Any\n"
    + inspect.getsource(_build_request)
    + """
errors = []
for name in sys.argv[1:]:
    try:
        pb = importlib.import_module(name)
    except ImportError as exc:
        errors.append(repr(exc))
        continue
    break
else:
    sys.exit("none of these modules could be imported: " + "; ".join(errors))
sys.stdout.write(_build_request(pb).SerializeToString(deterministic=True).hex())
"""
)


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _dump(*modules: str) -> dict[str, Any]:
    result = _run_python(_DUMP_DESCRIPTORS, *modules)
    assert result.returncode == 0, result.stderr
    dumped: dict[str, Any] = json.loads(result.stdout)
    return dumped


def _tritonclient_installed() -> bool:
    # find_spec on the top-level name does not import it (see _DUMP_DESCRIPTORS).
    return importlib.util.find_spec("tritonclient") is not None


needs_tritonclient = pytest.mark.skipif(
    not _tritonclient_installed(), reason="tritonclient[grpc] is not installed (dev group)"
)


def _rpc_closure(messages: dict[str, dict[str, list[Any]]]) -> set[str]:
    """Messages reachable from the six OIP methods' request and response types."""
    pending = [name for pair in OIP_METHODS.values() for name in pair]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in messages:
            continue
        seen.add(name)
        pending.extend(spec[4] for spec in messages[name].values() if spec[4])
    return seen


def test_generated_tree_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_files_only_in_version_directories() -> None:
    # mlbus and mlbus.<domain> are namespace packages shared with the services.
    inits = sorted(
        p.parent.relative_to(GENERATED_ROOT).as_posix() for p in GENERATED_ROOT.rglob("__init__.py")
    )
    assert inits, "no generated packages"
    for package in inits:
        parts = package.split("/")
        assert len(parts) == 3, package
        assert parts[0] == "mlbus", package
        assert parts[2] in {"v1", "v2"}, package
        assert (GENERATED_ROOT / package / "py.typed").is_file(), package


def test_every_generated_module_imports() -> None:
    modules = sorted(
        ".".join(p.relative_to(GENERATED_ROOT).with_suffix("").parts)
        for p in GENERATED_ROOT.rglob("*_pb2*.py")
    )
    assert OUR_OIP_MODULE in modules
    assert "mlbus.inference.v2.grpc_service_pb2_grpc" in modules
    for name in modules:
        importlib.import_module(name)


def test_mlbus_enums_start_unspecified_and_prefix_their_values() -> None:
    from google.protobuf.descriptor import EnumDescriptor, FileDescriptor

    def enums_of(file: FileDescriptor) -> list[EnumDescriptor]:
        found = list(file.enum_types_by_name.values())
        pending = list(file.message_types_by_name.values())
        while pending:
            message = pending.pop()
            found.extend(message.enum_types)
            pending.extend(message.nested_types)
        return found

    checked = 0
    for path in GENERATED_ROOT.rglob("*_pb2.py"):
        module = importlib.import_module(
            ".".join(path.relative_to(GENERATED_ROOT).with_suffix("").parts)
        )
        file = module.DESCRIPTOR
        if not file.package.startswith("mlbus."):
            continue
        for enum in enums_of(file):
            prefix = "".join(
                f"_{c}" if c.isupper() and i else c for i, c in enumerate(enum.name)
            ).upper()
            assert enum.values[0].number == 0, enum.full_name
            assert enum.values[0].name == f"{prefix}_UNSPECIFIED", enum.full_name
            for value in enum.values:
                assert value.name.startswith(f"{prefix}_"), f"{enum.full_name}.{value.name}"
            checked += 1
    assert checked >= 8


# Field numbers and types of the Open Inference Protocol gRPC spec
# (kserve/open-inference-protocol, specification/protocol/open_inference_grpc.proto),
# written out by hand so this holds even where tritonclient is not installed.
_T = {
    "bool": FieldDescriptor.TYPE_BOOL,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "float": FieldDescriptor.TYPE_FLOAT,
    "double": FieldDescriptor.TYPE_DOUBLE,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "message": FieldDescriptor.TYPE_MESSAGE,
}
_SPEC: dict[str, dict[str, tuple[int, str, bool]]] = {
    "inference.ServerLiveRequest": {},
    "inference.ServerLiveResponse": {"live": (1, "bool", False)},
    "inference.ServerReadyRequest": {},
    "inference.ServerReadyResponse": {"ready": (1, "bool", False)},
    "inference.ModelReadyRequest": {"name": (1, "string", False), "version": (2, "string", False)},
    "inference.ModelReadyResponse": {"ready": (1, "bool", False)},
    "inference.ServerMetadataRequest": {},
    "inference.ServerMetadataResponse": {
        "name": (1, "string", False),
        "version": (2, "string", False),
        "extensions": (3, "string", True),
    },
    "inference.ModelMetadataRequest": {
        "name": (1, "string", False),
        "version": (2, "string", False),
    },
    "inference.ModelMetadataResponse": {
        "name": (1, "string", False),
        "versions": (2, "string", True),
        "platform": (3, "string", False),
        "inputs": (4, "message", True),
        "outputs": (5, "message", True),
    },
    "inference.ModelMetadataResponse.TensorMetadata": {
        "name": (1, "string", False),
        "datatype": (2, "string", False),
        "shape": (3, "int64", True),
    },
    "inference.ModelInferRequest": {
        "model_name": (1, "string", False),
        "model_version": (2, "string", False),
        "id": (3, "string", False),
        "parameters": (4, "message", True),
        "inputs": (5, "message", True),
        "outputs": (6, "message", True),
        "raw_input_contents": (7, "bytes", True),
    },
    "inference.ModelInferRequest.InferInputTensor": {
        "name": (1, "string", False),
        "datatype": (2, "string", False),
        "shape": (3, "int64", True),
        "parameters": (4, "message", True),
        "contents": (5, "message", False),
    },
    "inference.ModelInferRequest.InferRequestedOutputTensor": {
        "name": (1, "string", False),
        "parameters": (2, "message", True),
    },
    "inference.ModelInferResponse": {
        "model_name": (1, "string", False),
        "model_version": (2, "string", False),
        "id": (3, "string", False),
        "parameters": (4, "message", True),
        "outputs": (5, "message", True),
        "raw_output_contents": (6, "bytes", True),
    },
    "inference.ModelInferResponse.InferOutputTensor": {
        "name": (1, "string", False),
        "datatype": (2, "string", False),
        "shape": (3, "int64", True),
        "parameters": (4, "message", True),
        "contents": (5, "message", False),
    },
    "inference.InferParameter": {
        "bool_param": (1, "bool", False),
        "int64_param": (2, "int64", False),
        "string_param": (3, "string", False),
        "double_param": (4, "double", False),
        "uint64_param": (5, "uint64", False),
    },
    "inference.InferTensorContents": {
        "bool_contents": (1, "bool", True),
        "int_contents": (2, "int32", True),
        "int64_contents": (3, "int64", True),
        "uint_contents": (4, "uint32", True),
        "uint64_contents": (5, "uint64", True),
        "fp32_contents": (6, "float", True),
        "fp64_contents": (7, "double", True),
        "bytes_contents": (8, "bytes", True),
    },
}


def test_oip_messages_match_the_spec_table() -> None:
    ours = _dump(OUR_OIP_MODULE)
    assert ours["services"] == {
        SERVICE: {m: [i, o, False, False] for m, (i, o) in OIP_METHODS.items()}
    }
    # Our own messages, minus the map entry types protoc synthesises.
    messages = {n: f for n, f in ours["messages"].items() if not n.endswith("Entry")}
    assert set(messages) == set(_SPEC)
    for name, spec in _SPEC.items():
        got = {f: (s[0], s[1], s[2]) for f, s in messages[name].items()}
        want = {f: (num, _T[kind], rep) for f, (num, kind, rep) in spec.items()}
        assert got == want, name
    oneof = {f: s[6] for f, s in messages["inference.InferParameter"].items()}
    assert set(oneof.values()) == {"parameter_choice"}


@needs_tritonclient
def test_oip_fields_are_wire_identical_to_tritonclient() -> None:
    ours = _dump(OUR_OIP_MODULE)
    theirs = _dump(*TRITON_OIP_MODULES)
    our_msgs, their_msgs = ours["messages"], theirs["messages"]

    # Every field we define matches theirs exactly, in every message both define.
    shared = set(our_msgs) & set(their_msgs)
    assert shared >= {n for pair in OIP_METHODS.values() for n in pair}
    for name in sorted(shared):
        for field, spec in our_msgs[name].items():
            assert field in their_msgs[name], f"{name}.{field} is not in {theirs['module']}"
            assert spec == their_msgs[name][field], f"{name}.{field}"

    # Every field they send or expect in the six RPCs' messages exists in ours.
    for name in sorted(_rpc_closure(their_msgs)):
        assert name in our_msgs, f"{name} ({theirs['module']}) is missing"
        missing = set(their_msgs[name]) - set(our_msgs[name])
        assert not missing, f"{name} lacks {sorted(missing)} that {theirs['module']} has"

    # Same service, same six methods with the same types; no Triton-only methods.
    our_methods = ours["services"][SERVICE]
    their_methods = theirs["services"][SERVICE]
    assert set(our_methods) == set(OIP_METHODS)
    for method, signature in our_methods.items():
        assert signature == their_methods[method], method


@needs_tritonclient
def test_tritonclient_and_mlbus_encode_a_request_to_the_same_bytes() -> None:
    from mlbus.inference.v2 import grpc_service_pb2 as pb

    theirs = _run_python(_SERIALIZE_REQUEST, *TRITON_OIP_MODULES)
    assert theirs.returncode == 0, theirs.stderr
    ours = _build_request(pb).SerializeToString(deterministic=True)
    assert bytes.fromhex(theirs.stdout) == ours


def test_model_infer_request_round_trip() -> None:
    from mlbus.inference.v2 import grpc_service_pb2 as pb

    wire = _build_request(pb).SerializeToString()
    parsed = pb.ModelInferRequest.FromString(wire)

    assert (parsed.model_name, parsed.model_version, parsed.id) == ("churn", "3", "req-1")
    params = parsed.parameters
    assert params["mlbus.target_variant"].string_param == "blue"
    assert params["priority"].int64_param == -2
    assert params["sequence_start"].bool_param is True
    assert params["temperature"].double_param == 0.25
    assert params["timeout"].WhichOneof("parameter_choice") == "uint64_param"
    assert params["timeout"].uint64_param == 2**63 + 5
    x, ids = parsed.inputs
    assert (x.name, x.datatype, list(x.shape)) == ("x", "FP32", [2, 3])
    assert x.parameters["binary_data_size"].int64_param == 24
    assert not x.HasField("contents")
    assert list(ids.contents.int64_contents) == [7, -8]
    assert parsed.outputs[0].parameters["classification"].int64_param == 2
    assert len(parsed.raw_input_contents) == 1
    assert struct.unpack("<6f", parsed.raw_input_contents[0]) == (1, 2, 3, 4, 5, 6)
    assert parsed == _build_request(pb)
