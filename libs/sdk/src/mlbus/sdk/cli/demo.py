"""``mlbus demo``: the whole story on the embedded defaults, on data that ships with mlbus.

1. start a local stack (broker + seven services) in its own home, on free ports;
2. train a classifier on ``examples/churn.csv`` (trainer: child process, ONNX export with
   a parity check, baseline statistics) — it lands in the registry PENDING_MANUAL_APPROVAL;
3. approve it as a second person; create an endpoint; the router's controller starts a
   worker and the endpoint becomes ready;
4. serve it real-time (Predictor), asynchronously (AsyncPredictor, through Kafka and the
   object store) and as a batch transform over the whole file (Transformer);
5. stop the stack (``--keep`` leaves it running, for ``mlbus status`` and more commands).
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from pathlib import Path

import click

from mlbus.sdk.cli._common import RegistryCommand, console

_DATA = Path(__file__).resolve().parents[6] / "examples" / "churn.csv"
_TARGET = "churned"


def _step(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{text}[/]")


def _features_csv(path: Path) -> tuple[bytes, list[list[float]]]:
    with path.open() as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    keep = [i for i, name in enumerate(header) if name != _TARGET]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([header[i] for i in keep])
    features = [[float(r[i]) for i in keep] for r in body]
    for r in body:
        writer.writerow([r[i] for i in keep])
    return out.getvalue().encode(), features


@click.command(cls=RegistryCommand)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the demo stack keeps its state (default: a new temporary directory).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"Training CSV (default: the shipped {_DATA.name}, label '{_TARGET}').",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the stack running at the end (stop it with `mlbus down --home ...`).",
)
def demo(home: Path | None, data_path: Path | None, keep: bool) -> None:
    """Train, register, approve, deploy and serve a model: real-time, async and batch."""
    import asyncio

    import numpy as np

    from mlbus.core.settings import StorageSettings
    from mlbus.core.storage import open_object_store
    from mlbus.sdk import AsyncPredictor, Predictor, Transformer
    from mlbus.sdk.local.stack import LocalStack, StackError
    from mlbus.sdk.registry import RegistryClient
    from mlbus.sdk.trainer.client import TrainerClient
    from mlbus.trainer.v1 import events_pb2 as tev

    data = (data_path or _DATA).resolve()
    home = (home or Path(tempfile.mkdtemp(prefix="mlbus-demo-"))).resolve()
    started = time.monotonic()
    _step(1, f"local stack in {home}")
    stack = LocalStack(home, free_ports=True, echo=lambda line: console.print(f"   {line}"))
    try:
        state = stack.start()
    except StackError as exc:  # e.g. a stack already runs from this home
        raise click.ClickException(str(exc)) from None
    ports = {p.name: p.grpc_port for p in state.services}
    address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    console.print(
        f"   broker {state.bootstrap_servers}; " + ", ".join(f"{n} {a}" for n, a in address.items())
    )
    try:
        _step(2, f"train a random forest on {data.name} (label '{_TARGET}')")
        with TrainerClient(address["trainer"], actor="data-scientist") as trainer:
            job = trainer.submit_training(
                tev.JobSpec(
                    algorithm="random-forest-classifier",
                    hyperparameters={"n_estimators": "50", "max_depth": "6"},
                    input_uri=str(data),
                    target_column=_TARGET,
                    model_group="churn",
                    seed=7,
                ),
                experiment="churn-demo",
            )
            console.print(f"   job {job.job_id} submitted")
            job = trainer.wait(job.job_id, timeout=600)
        if not job.model_version:
            raise click.ClickException(f"training did not register a model: {job.reason or job}")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(job.metrics.items()))
        console.print(f"   registered churn version {job.model_version} ({metrics})")

        _step(3, "approve it (as another person) and deploy it")
        with RegistryClient(address["registry"], actor="reviewer") as registry:
            registry.approve("churn", job.model_version, reason="demo: metrics look right")
            console.print(f"   churn/{job.model_version} APPROVED by reviewer")
            registry.create_endpoint(
                "churn-demo",
                [{"name": "blue", "model_group": "churn", "model_version": job.model_version}],
            )
        with Predictor("churn-demo", address["router"]) as predictor:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if predictor.ready():
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise click.ClickException("the endpoint did not become ready within 120 s")
                time.sleep(0.3)
            console.print("   endpoint churn-demo serving (worker loaded, verified and warmed)")

            batch_bytes, features = _features_csv(data)
            _step(4, "real-time predictions (gRPC, Open Inference Protocol v2)")
            rows = np.array(features[:5], dtype=np.float32)
            result = predictor.predict(rows)
            for row, label in zip(features[:5], result["label"].tolist(), strict=True):
                console.print(f"   {row} → churn={label}")
            console.print(
                f"   served by variant {result.variant}, model version {result.model_version}"
            )

        _step(5, "asynchronous inference (request topic, object store, notification)")
        with AsyncPredictor("churn-demo", address["router"], poll_interval=0.1) as async_predictor:
            queued = async_predictor.invoke(np.array(features[:100], dtype=np.float32))
            console.print(f"   queued {queued.inference_id} → {queued.output_uri}")
            done = async_predictor.result(queued.inference_id, timeout=120)
            labels = done.prediction["label"] if done.prediction is not None else []
            console.print(
                f"   {done.status}: {int(sum(labels))} of {len(labels)} predicted to churn"
            )

        _step(6, f"batch transform of all {len(features):,} rows")

        async def upload() -> tuple[str, str]:
            store = await open_object_store(StorageSettings(root=home / "objects"))
            try:
                ref = await store.put(
                    "demo/input/customers.csv", batch_bytes, content_type="text/csv"
                )
                return ref.uri, store.uri_for_prefix("demo/output/")
            finally:
                await store.aclose()

        input_uri, output_uri = asyncio.run(upload())
        with Transformer("churn-demo", address["router"], poll_interval=0.2) as transformer:
            tjob = transformer.transform(
                input_uri,
                output_uri,
                join_input=True,
                records_per_chunk=500,
                wait=True,
                wait_timeout=600,
            )
        console.print(
            f"   {tjob.status}: {tjob.records_done:,} records ({tjob.records_failed} failed) "
            f"at {tjob.records_per_second:,.0f} records/s"
        )
        for uri in tjob.outputs:
            console.print(f"   output: {uri}")
            with open(uri.removeprefix("file://"), encoding="utf-8") as fh:
                first = [next(fh).strip() for _ in range(2)]
            console.print("   first rows (input columns, then label and probabilities):")
            for line in first:
                console.print(f"     {line}")
        console.print(f"\n[bold green]done[/] in {time.monotonic() - started:.0f} s")
    finally:
        if keep:
            console.print(
                f"\nthe stack keeps running: `mlbus status --home {home}`, `mlbus down --home {home}`"
            )
        else:
            stack.stop()
            console.print("stack stopped")
