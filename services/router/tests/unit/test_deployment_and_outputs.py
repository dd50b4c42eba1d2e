"""Deployment plans (worker environment, rejected versions) and the shadow comparison."""

from __future__ import annotations

import math
import struct

import numpy as np

from mlbus.core.settings import KafkaSettings, ServiceSettings, shared_env
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.api.outputs import decode_outputs, max_abs_diff
from mlbus.router.domain.deployment import EndpointPlan, VariantMode, VariantPlan, WorkerSpec


def spec(variant: str = "blue", version: int = 3, **kw: object) -> WorkerSpec:
    return WorkerSpec(
        endpoint="churn",
        variant=variant,
        model_group="churn",
        model_version=version,
        artifact_uri="file:///x",
        artifact_sha256="a" * 64,
        **kw,  # type: ignore[arg-type]
    )


def test_worker_env_carries_the_spec() -> None:
    env = spec(
        max_batch_size=8,
        max_queue_delay_us=500,
        max_concurrency=4,
        capture_percent=5.0,
        shadow=True,
    ).env()
    assert env["INFERENCE_MODEL_NAME"] == "churn"
    assert env["INFERENCE_VARIANT"] == "blue"
    assert env["INFERENCE_MODEL_VERSION"] == "3"
    assert env["INFERENCE_MAX_BATCH_SIZE"] == "8"
    assert env["INFERENCE_MAX_QUEUE_DELAY_US"] == "500"
    assert env["INFERENCE_MAX_CONCURRENT_REQUESTS"] == "4"
    assert env["INFERENCE_CAPTURE_PERCENT"] == "5.0"
    assert env["INFERENCE_SHADOW"] == "true"
    assert "INFERENCE_MAX_CONCURRENT_REQUESTS" not in spec().env()


def test_equal_specs_are_interchangeable() -> None:
    assert spec() == spec()
    assert hash(spec()) == hash(spec())
    assert spec() != spec(version=4)


def test_serverless_runs_one_instance_and_realtime_at_least_one() -> None:
    assert VariantPlan(spec(), 1.0, 0, VariantMode.SERVERLESS).instances_wanted == 1
    assert VariantPlan(spec(), 1.0, 3).instances_wanted == 3
    assert VariantPlan(spec(), 1.0, 0).instances_wanted == 1


def test_rejected_version_leaves_the_plan_and_blocks_when_nothing_is_left() -> None:
    plan = EndpointPlan(
        "churn",
        5,
        (VariantPlan(spec("blue", 3), 1, 1), VariantPlan(spec("green", 4), 1, 1)),
        shadow=VariantPlan(spec("next", 3, shadow=True), 0, 1),
        shadow_percent=10,
    )
    cut = plan.without_version("churn", 3, "rejected")
    assert [v.name for v in cut.variants] == ["green"]
    assert cut.shadow is None
    assert cut.shadow_percent == 0
    assert not cut.blocked_reason
    blocked = cut.without_version("churn", 4, "version 4 was rejected")
    assert blocked.variants == ()
    assert blocked.blocked_reason == "version 4 was rejected"
    assert blocked.revision == 5


def test_shared_env_round_trips_through_settings() -> None:
    settings = ServiceSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1234", topic_namespace="t1")
    )
    env = shared_env(settings)
    assert env["MLBUS_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1234"
    assert env["MLBUS_KAFKA_TOPIC_NAMESPACE"] == "t1"
    assert env["MLBUS_KAFKA_CREATE_TOPICS"] == "true"
    rebuilt = KafkaSettings.model_validate(
        {
            k.removeprefix("MLBUS_KAFKA_").lower(): v
            for k, v in env.items()
            if k.startswith("MLBUS_KAFKA_")
        }
    )
    assert rebuilt == settings.kafka


def _response(raw: bool, y: np.ndarray, labels: list[bytes]) -> pb.ModelInferResponse:
    r = pb.ModelInferResponse(model_name="churn")
    t = r.outputs.add(name="y", datatype="FP32", shape=list(y.shape))
    s = r.outputs.add(name="label", datatype="BYTES", shape=[len(labels)])
    if raw:
        r.raw_output_contents.append(y.astype(np.float32).tobytes())
        r.raw_output_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in labels))
    else:
        t.contents.fp32_contents.extend(y.ravel().tolist())
        s.contents.bytes_contents.extend(labels)
    return r


def test_outputs_decode_raw_and_typed_alike() -> None:
    y = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    for raw in (True, False):
        out = decode_outputs(_response(raw, y, [b"a", b"bc"]))
        assert np.array_equal(out["y"], y)  # type: ignore[arg-type]
        assert out["label"].tolist() == [b"a", b"bc"]


def test_max_abs_diff() -> None:
    y = np.array([[0.25, 0.75]], dtype=np.float32)
    a = decode_outputs(_response(True, y, [b"a"]))
    assert max_abs_diff(a, a) == 0.0
    b = decode_outputs(_response(False, y + np.float32(0.5), [b"a"]))
    assert abs(max_abs_diff(a, b) - 0.5) < 1e-6
    c = decode_outputs(_response(True, y, [b"z"]))
    assert max_abs_diff(a, c) == 1.0
    d = decode_outputs(_response(True, np.zeros((2, 2), np.float32), [b"a"]))
    assert math.isinf(max_abs_diff(a, d))


def test_idle_shutdown_by_mode_and_setting() -> None:
    realtime = VariantPlan(spec=spec(), weight=1, instance_count=2)
    assert realtime.idle_shutdown_s(300) == 0  # always on
    assert realtime.instances_wanted == 2
    scaled = VariantPlan(spec=spec(), weight=1, instance_count=2, scale_to_zero_after_s=60)
    assert scaled.idle_shutdown_s(300) == 60
    assert scaled.instances_wanted == 2  # while up
    serverless = VariantPlan(spec=spec(), weight=1, instance_count=0, mode=VariantMode.SERVERLESS)
    assert serverless.idle_shutdown_s(300) == 300  # the router's default
    assert serverless.instances_wanted == 1
    own = VariantPlan(
        spec=spec(),
        weight=1,
        instance_count=0,
        mode=VariantMode.SERVERLESS,
        scale_to_zero_after_s=5,
    )
    assert own.idle_shutdown_s(300) == 5
    shadow = VariantPlan(
        spec=spec(shadow=True), weight=0, instance_count=1, scale_to_zero_after_s=5
    )
    assert shadow.idle_shutdown_s(300) == 0  # mirrored traffic only: never scaled
