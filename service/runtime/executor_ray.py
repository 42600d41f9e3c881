"""Audits on a Ray cluster: the job table stays the truth, the model step runs on warm Ray actors.

``[executor] kind = "ray"`` (and ``address``) makes the pipeline use :class:`RayExecutor`. The
gateway (listener, store, outbox, API) keeps the claim loop of :class:`~service.runtime.executor.InProcessExecutor`
(leases, heartbeats, retries in the job table, one thread per actor): for each claimed job it
reads the study (the pipeline's auditor: its task's read step), puts the arrays into Ray's object
store, and an :class:`AuditActor` returns scores and Grad-CAM heatmaps; the gateway writes the DICOM
results and the outbox rows. Workers share no disk with the gateway: the bundle travels to each
actor as bytes (once, through the object store) and stays loaded there.

One actor per GPU (``num_gpus=1`` when the cluster has GPUs), CPU actors otherwise; the resources
of an actor are configurable (``[executor] resources = {labelqa_gpu = 1}`` pins audits to the
nodes that offer that custom resource). Actors restart on another node when theirs dies
(``max_restarts=-1``) but never retry a call themselves: a call that fails because its worker or
node died hands the job back to the queue (:class:`~service.runtime.executor.JobRetry`), another actor
runs it again, and since only the gateway writes results (with deterministic UIDs) after the model
step, a study gets exactly one result set.

:func:`ray_map` is the Ray-task map for the cross-fit fits of ``labelqa train|evaluate --ray``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

from dicom_io.hooks import checkpoint
from dicom_io.vocabulary import Vocabulary
from models.bundles import BundleInfo, load_bundle, read_bundle_info
from service.runtime.auditor import Auditor, StepOutput
from service.runtime.executor import InProcessExecutor, JobRetry, Outcome, WorkerContext
from service.runtime.jobs import Job, JobStore
from service.settings import ExecutorSettings

if TYPE_CHECKING:  # annotation-only: the pipeline imports this module
    from service.runtime.pipeline import Pipeline

__all__ = [
    "RayUnavailable", "connect", "cluster_nodes", "bundle_archive", "AuditActor", "actor_count",
    "RayExecutor", "RayMap", "ray_map",
]

log = logging.getLogger("labelqa.executor.ray")

T = TypeVar("T")
R = TypeVar("R")


class ActorInfo(TypedDict):
    """Where an audit actor runs and which bundle it holds (:meth:`AuditActor.info`)."""

    node_id: str
    hostname: str
    pid: int
    device: str
    gpu_ids: list[str]
    content_hash: str


class _RemoteMethod(Protocol):
    def remote(self, *args: object) -> object: ...  # a Ray ObjectRef


class _ActorHandle(Protocol):
    """A Ray handle of an :class:`AuditActor`, as used here: its methods are called with ``.remote``."""

    @property
    def info(self) -> _RemoteMethod: ...
    @property
    def infer(self) -> _RemoteMethod: ...


class RayUnavailable(ValueError):
    """Ray is not installed, or the cluster given cannot be reached / cannot place an actor; says what to do."""


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("[executor] kind = \"ray\" needs Ray: pip install 'labelqa[cluster]'") from None
    return ray


def connect(address: str | None, namespace: str = "labelqa") -> bool:
    """Connect this process to the Ray cluster at ``address`` (None: start a local one); True when this
    call connected (and should disconnect), False when Ray was already initialised here."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kw: dict[str, object] = {} if address else {"include_dashboard": False}  # a new local instance only
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray instance"
        raise RayUnavailable(f"cannot connect to the Ray cluster at {where}: {e}. Is `ray start --head` running "
                             "there, and is [executor] address its HOST:PORT?") from None
    return True


def cluster_nodes() -> list[dict[str, object]]:
    """The live nodes of the connected cluster (id, address, resources)."""
    ray = _ray()
    return [{"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"), "resources": n.get("Resources", {})}
            for n in ray.nodes() if n.get("Alive")]


# -- the bundle on the gateway and on the workers --------------------------------------------------
def bundle_archive(path: Path | str) -> bytes:
    """The bundle directory as an uncompressed tar in memory (what travels to the actors)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname="bundle")
    return buf.getvalue()


class AuditActor:
    """A Ray actor holding one loaded bundle (on its GPU, or the CPU): the model step of audits."""

    def __init__(self, archive: bytes, auditor: Auditor, device: str = "auto", batch_size: int = 64) -> None:
        from models.train import resolve_device  # torch: only on the Ray actor, which runs the model step

        self._dir = tempfile.mkdtemp(prefix="labelqa-bundle-")
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(self._dir, filter="data")
        self.bundle = load_bundle(Path(self._dir) / "bundle")
        self.device = str(resolve_device(device))
        self.batch_size = batch_size
        self.auditor = auditor
        auditor.warm_up(self.bundle, self.device)
        import ray

        ctx = ray.get_runtime_context()
        self._where: ActorInfo = {"node_id": ctx.get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid(),
                       "device": self.device, "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                       "content_hash": self.bundle.content_hash}

    def info(self) -> ActorInfo:
        """Where this actor runs and which bundle it holds."""
        return self._where.copy()

    def infer(self, batch: object) -> StepOutput:
        """The bundle's task's model step for a batch of arrays (labels: scores, heatmaps; masks: consensus,
        Dice, regions)."""
        checkpoint("model-step")  # test hook (dicom_io.hooks); inert unless configured
        result = self.auditor.model_step(self.bundle, batch, device=self.device, batch_size=self.batch_size)
        result.worker = dict(self.info())
        return result


# -- the actors, as the gateway sees them ---------------------------------------------------------
def _lost_errors() -> tuple[type[BaseException], ...]:
    """Ray errors meaning the worker (process or node) went away, not that the job is bad."""
    ex = _ray().exceptions
    names = ("RayActorError", "ObjectLostError", "NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


class _ActorPool:
    """Free actors for the gateway's threads; an actor whose call failed is watched until it answers again."""

    def __init__(self, stop: threading.Event) -> None:
        self._cv = threading.Condition()
        self._free: list[_ActorHandle] = []
        self._stop = stop
        self.ready: dict[int, ActorInfo] = {}  # id(handle) -> its info(), while it answers
        self.errors: list[str] = []

    def acquire(self) -> _ActorHandle | None:
        """A free actor, waiting for one; None when the executor stops."""
        with self._cv:
            while not self._free:
                if self._stop.is_set():
                    return None
                self._cv.wait(0.5)
            return self._free.pop(0)

    def release(self, handle: _ActorHandle) -> None:
        with self._cv:
            self._free.append(handle)
            self._cv.notify()

    def watch(self, handle: _ActorHandle) -> None:
        """Return ``handle`` to the pool once it answers (after a (re)start, possibly on another node)."""
        self.ready.pop(id(handle), None)
        threading.Thread(target=self._watch, args=(handle,), name="labelqa-ray-watch", daemon=True).start()

    def _watch(self, handle: _ActorHandle) -> None:
        ray = _ray()
        while not self._stop.is_set():
            ref = handle.info.remote()
            while not self._stop.is_set():
                done, _ = ray.wait([ref], timeout=1.0)
                if done:
                    break
            if self._stop.is_set():
                return
            try:
                info = ray.get(ref)
            except _lost_errors() as e:  # restarting (or dead for good): ask again in a moment
                log.debug("audit actor not available yet: %s", type(e).__name__)
                time.sleep(1.0)
                continue
            except Exception as e:  # noqa: BLE001 - the constructor failed: a bad bundle, out of memory
                msg = f"audit actor failed to start: {type(e).__name__}: {str(e)[-500:]}"
                self.errors.append(msg)
                log.error(msg)
                time.sleep(5.0)
                continue
            self.ready[id(handle)] = info
            log.info("audit actor ready on node %s (%s, device %s)", info["node_id"][:12], info["hostname"],
                     info["device"])
            self.release(handle)
            return


def actor_count(settings: ExecutorSettings, cluster: dict[str, float], num_gpus: float) -> int:
    """Actors to start: ``settings.actors``, else one per unit of the per-actor resources in the cluster."""
    if settings.actors:
        return int(settings.actors)
    counts = [math.floor(cluster.get(k, 0.0) / v) for k, v in settings.resources.items() if v > 0]
    if num_gpus > 0:
        counts.append(math.floor(cluster.get("GPU", 0.0) / num_gpus))
    return max(1, min(counts)) if counts else 1


class RayExecutor:
    """The pipeline's audits with the model step on Ray actors; same interface as ``InProcessExecutor``.

    ``pipeline`` is the :class:`service.runtime.pipeline.Pipeline` (its settings name the bundle, the
    vocabulary and the audit options; its ``audit_job`` does the read and write steps here).
    """

    def __init__(self, jobs: JobStore, pipeline: Pipeline, settings: ExecutorSettings, *, poll_s: float = 2.0) -> None:
        self.jobs = jobs
        self.pipeline = pipeline
        self.settings = settings
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._pool = _ActorPool(self._stop)
        self._actors: list[_ActorHandle] = []
        self._archive: object = None  # ObjectRef of the bundle bytes
        self._inner: InProcessExecutor | None = None
        self._connected = False
        self.card: BundleInfo | None = None
        self.vocabulary: Vocabulary | None = None
        self.jobs_by_node: Counter[str] = Counter()
        self._in_flight: dict[int, str] = {}  # job id -> node id of the actor running its model step
        self._lock = threading.Lock()

    # -- interface -----------------------------------------------------------------------------
    def start(self) -> None:
        ray = _ray()
        audit = self.pipeline.settings.audit
        if audit.bundle is None:
            raise RuntimeError("no model bundle configured: set [audit] bundle (made by `labelqa train`)")
        self.card = read_bundle_info(audit.bundle)
        self.vocabulary = self.pipeline.load_vocabulary(self.card)
        self._stop.clear()
        self._connected = connect(self.settings.address, self.settings.namespace)
        cluster = ray.cluster_resources()
        num_gpus = self.settings.num_gpus
        if num_gpus is None:
            num_gpus = 1.0 if cluster.get("GPU", 0.0) >= 1 else 0.0
        n = actor_count(self.settings, cluster, num_gpus)
        missing = {k: v for k, v in self.settings.resources.items() if cluster.get(k, 0.0) < v}
        if missing:
            log.warning("no node offers the actor resources %s yet (cluster: %s); audits wait for one", missing,
                        {k: v for k, v in cluster.items() if not k.startswith("node:")})
        # kept referenced for the executor's life: an actor restarted on another node reads it again
        self._archive = archive = ray.put(bundle_archive(audit.bundle))
        opts: dict[str, object] = {"num_cpus": self.settings.num_cpus, "max_restarts": -1, "max_task_retries": 0,
                                "max_concurrency": 1}
        if num_gpus:
            opts["num_gpus"] = num_gpus
        if self.settings.resources:
            opts["resources"] = dict(self.settings.resources)
        cls = ray.remote(AuditActor)
        self._actors = [cls.options(**opts).remote(archive, self.pipeline.auditor, audit.device, audit.batch_size)
                        for _ in range(n)]
        for a in self._actors:
            self._pool.watch(a)
        log.info("starting %d audit actor(s) on the Ray cluster (%s per actor)", n, opts)
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not self._pool.ready and time.monotonic() < deadline:
            time.sleep(0.2)
        if not self._pool.ready:
            why = f"; {self._pool.errors[-1]}" if self._pool.errors else ""
            self.stop(0)
            raise RayUnavailable(f"no audit actor started within {self.settings.start_timeout_s:.0f} s{why} "
                                 f"(actor resources {opts}; cluster {cluster})")
        self._inner = InProcessExecutor(self.jobs, self._run_job, workers=n, poll_s=self.poll_s,
                                        on_finished=self.pipeline._finished)
        self._inner.start()

    def notify(self) -> None:
        if self._inner is not None:
            self._inner.notify()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._inner is not None:
            self._inner.stop(timeout)
            self._inner = None
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        self._archive = None
        if self._connected and ray.is_initialized():
            ray.shutdown()
            self._connected = False

    def status(self) -> dict[str, object]:
        inner = self._inner.status() if self._inner is not None else {}
        try:
            nodes = len(cluster_nodes()) if _ray().is_initialized() else 0
        except Exception:  # noqa: BLE001 - the cluster is unreachable right now
            nodes = 0
        with self._lock:
            by_node = dict(self.jobs_by_node)
        return {
            "kind": "ray", "address": self.settings.address, "nodes": nodes, "actors": len(self._actors),
            "actors_ready": len(self._pool.ready), "workers": inner.get("workers", 0), "busy": inner.get("busy", 0),
            "models_loaded": bool(self._pool.ready), "warmup_error": self._pool.errors[-1] if self._pool.errors
            else None, "jobs_by_node": by_node,
            "actor_nodes": sorted({i["node_id"] for i in self._pool.ready.values()}),
            "in_flight": {str(k): v for k, v in list(self._in_flight.items())},
        }

    # -- one job -------------------------------------------------------------------------------
    def _run_job(self, job: Job, ctx: WorkerContext) -> Outcome:
        actor = self._pool.acquire()
        if actor is None:
            raise JobRetry("the service is stopping")
        where: dict[str, object] = {}

        def remote_infer(batch: object) -> StepOutput:
            info = self._pool.ready.get(id(actor))
            node = "?" if info is None else info["node_id"]
            self._in_flight[job.id] = node
            try:
                result = self._call(actor, batch)
            finally:
                self._in_flight.pop(job.id, None)
            where.update(result.worker or {})
            return result

        assert self.card is not None and self.vocabulary is not None  # set by start(), before any job runs
        try:
            outcome = self.pipeline.audit_job(job, self.card, self.vocabulary, infer_fn=remote_infer)
        except _WorkerLost as e:
            self._pool.watch(actor)
            raise JobRetry(f"Ray worker lost during the model step: {e}") from None
        except BaseException:
            self._pool.release(actor)
            raise
        self._pool.release(actor)
        if where:
            if outcome.result is not None:
                outcome.result["worker"] = where
            with self._lock:
                self.jobs_by_node[str(where["node_id"])] += 1
        return outcome

    def _call(self, actor: _ActorHandle, batch: object) -> StepOutput:
        """The model step on ``actor``: the batch's arrays go through the object store."""
        ray = _ray()
        try:
            ref = actor.infer.remote(ray.put(batch))
            while True:
                done, _ = ray.wait([ref], timeout=1.0)
                if done:
                    break
                if self._stop.is_set():
                    ray.cancel(ref, force=True)
                    raise JobRetry("the service is stopping")
            return ray.get(ref)
        except _lost_errors() as e:
            raise _WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


class _WorkerLost(Exception):
    """The actor's process or node died during a call (the job runs again elsewhere)."""


# -- distributed fitting ------------------------------------------------------------------------
def _call_fn(fn: Callable[[T], R], item: T) -> tuple[R, str]:
    return fn(item), _ray().get_runtime_context().get_node_id()


class RayMap:
    """A ``map_fn`` for ``models.train.fit_ensemble``: one Ray task per item, results in order.

    The function (with the training arrays it closes over) goes to the object store once; each
    task gets ``num_gpus`` (default: 1 when the cluster has GPUs) and ``num_cpus``. A task whose
    node dies is retried (a fit is a pure function of its seed and data). ``progress``: a bar over
    finished fits. ``nodes`` lists the node id each task of the last call ran on.
    """

    def __init__(self, address: str | None, *, num_cpus: float = 1.0, num_gpus: float | None = None,
                 resources: dict[str, float] | None = None, progress: bool = False,
                 namespace: str = "labelqa") -> None:
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.resources, self.progress, self.namespace = dict(resources or {}), progress, namespace
        self.nodes: list[str] = []

    def __call__(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        ray = _ray()
        own = connect(self.address, self.namespace)
        try:
            gpus = self.num_gpus
            if gpus is None:
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
            opts: dict[str, object] = {"num_cpus": self.num_cpus, "num_gpus": gpus, "max_retries": 3}
            if self.resources:
                opts["resources"] = dict(self.resources)
            task = ray.remote(_call_fn).options(**opts)
            fn_ref = ray.put(fn)
            refs = [task.remote(fn_ref, item) for item in items]
            if self.progress:
                from tqdm import tqdm

                pending = list(refs)
                with tqdm(total=len(refs), desc="fits on Ray", unit="fit") as bar:
                    while pending:
                        done, pending = ray.wait(pending, num_returns=1)
                        bar.update(len(done))
            out = ray.get(refs)
        finally:
            if own:
                ray.shutdown()
        self.nodes = [node for _, node in out]
        return [r for r, _ in out]


def ray_map(address: str | None, *, num_cpus: float = 1.0, num_gpus: float | None = None,
            resources: dict[str, float] | None = None, progress: bool = False, namespace: str = "labelqa") -> RayMap:
    """The Ray-task ``map_fn`` for ``labelqa train|evaluate --ray ADDRESS`` (see :class:`RayMap`)."""
    return RayMap(address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, progress=progress,
                  namespace=namespace)
