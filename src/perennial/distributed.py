"""Fit one model on a Dask cluster: each partition's statistics on a worker, summed in a tree.

A model's learned state is a sum of statistics, so the model of all the data is the merge of the
models of its parts. :func:`fit_distributed` cuts the data into contiguous partitions, has Dask
workers encode and learn one partition each (:func:`learn_partition`), adds the results pairwise
in a balanced tree on the workers (:func:`merge_pair`) and brings back one model: the model a
single process would have learned from the whole data, up to rounding, with its classes in the
same order (first appearance in the data).

Failures: a worker that dies is replaced (by its nanny) and Dask runs its tasks again elsewhere;
a task whose workers keep dying fails after ``distributed.scheduler.allowed-failures`` deaths
(default 3) and the fit raises :class:`~perennial.exceptions.ClusterError`. Nothing is saved by
this module: the caller saves the returned model, so a fit that fails leaves no model behind.

Dask (``pip install 'perennial[distributed]'``) is imported only when a cluster is used; the
workers need perennial and the encoder's packages installed too.
"""

from __future__ import annotations

import copy
import itertools
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from perennial.encoders.base import Encoder, as_encoder
from perennial.exceptions import (
    ClusterError,
    EmptyInputError,
    InputTypeError,
    InvalidParameterError,
)
from perennial.heads import Head, RidgeHead
from perennial.heads.base import Label, check_labels
from perennial.learner import LifelongClassifier
from perennial.progress import ProgressBar

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = [
    "check_address",
    "dask_client",
    "fit_distributed",
    "learn_partition",
    "merge_pair",
    "partition_bounds",
]

#: Rows learned at a time inside a partition: bounds the memory of a task (the ridge head's random
#: features of a chunk are ``chunk x n_features`` float64) whatever the partition's size.
CHUNK_ROWS = 2048
#: With ``partitions=None``, no partition holds more rows than this (and there are at least two
#: partitions per worker thread, so that a slow or restarted worker delays little).
MAX_PARTITION_ROWS = 10_000

Progress = Callable[[str], None]


def partition_bounds(n: int, partitions: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into ``partitions`` contiguous ``(start, stop)`` slices, sizes within one.

    The first ``n % partitions`` slices are one row longer, like ``numpy.array_split``; the cut
    depends on nothing else, so a fit is reproducible.

    Examples
    --------
    >>> partition_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    >>> partition_bounds(2, 2)
    [(0, 1), (1, 2)]
    """
    for name, value, low in (("n", n, 1), ("partitions", partitions, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
    if partitions > n:
        raise InvalidParameterError(
            f"cannot cut {n} examples into {partitions} partitions; expected at most {n}"
        )
    size, extra = divmod(n, partitions)
    bounds, start = [], 0
    for index in range(partitions):
        stop = start + size + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def learn_partition(
    encoder: Any,
    head: Head,
    inputs: Any,
    labels: Sequence[Label],
    *,
    chunk_size: int = CHUNK_ROWS,
) -> LifelongClassifier:
    """A new model (``head``'s parameters, nothing it learned) that has learned one partition.

    This is the task a Dask worker runs: the inputs are encoded here, ``chunk_size`` rows at a
    time, so a partition of any size needs the memory of one chunk.

    Examples
    --------
    >>> from perennial.heads import NCMHead
    >>> model = learn_partition(
    ...     None, NCMHead(), [[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]], ["a", "b", "a"], chunk_size=2
    ... )
    >>> model.classes_, model.n_seen_, model.head.means_.tolist()
    (['a', 'b'], 3, [[0.75, 0.0], [0.0, 1.0]])
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidParameterError(f"chunk_size must be a positive int, got {chunk_size!r}")
    model = LifelongClassifier(encoder=encoder, head=head.clone())
    for start in range(0, len(labels), chunk_size):
        stop = start + chunk_size
        model.learn_many(inputs[start:stop], labels[start:stop])
    return model


def merge_pair(first: LifelongClassifier, second: LifelongClassifier) -> LifelongClassifier:
    """A new model holding what both models learned; neither argument changes.

    ``first``'s classes come first, then those new in ``second``, in ``second``'s order. The
    arguments are not merged in place: Dask may hand the same stored result to a task twice (a
    task run again after its worker died), and an input changed in place would count twice.

    Examples
    --------
    >>> from perennial.heads import NCMHead
    >>> first = learn_partition(None, NCMHead(), [[1.0, 0.0]], ["cat"])
    >>> second = learn_partition(None, NCMHead(), [[0.0, 1.0], [3.0, 0.0]], ["dog", "cat"])
    >>> both = merge_pair(first, second)
    >>> both.classes_, both.n_seen_, first.n_seen_
    (['cat', 'dog'], 3, 1)
    """
    merged = copy.deepcopy(first)
    merged.merge(second)
    return merged


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_timeout(timeout: Any) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidParameterError(
            f"timeout must be a positive number of seconds, got {timeout!r}"
        )
    return float(timeout)


def check_address(scheduler: Any, name: str = "scheduler") -> str:
    """``scheduler`` stripped, or an error naming ``name`` unless it reads as a Dask address.

    Only the form is checked (nothing is contacted), so a command can refuse a mistyped
    address before it loads any data.

    >>> check_address(" tcp://10.0.0.5:8786 ")
    'tcp://10.0.0.5:8786'
    """
    expected = f"{name} must be an address such as 'tcp://10.0.0.5:8786', got {scheduler!r}"
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise InvalidParameterError(expected)
    _import_distributed()
    from distributed.comm.addressing import get_address_host_port

    try:
        get_address_host_port(scheduler.strip())
    except ValueError as error:
        raise InvalidParameterError(f"{expected} ({error})") from None
    return scheduler.strip()


def _import_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as error:
        raise ClusterError(
            f"distributed fitting needs Dask: pip install 'perennial[distributed]' ({error})"
        ) from error


@contextmanager
def dask_client(
    scheduler: str | None = None, *, workers: int | None = None, timeout: float = 30.0
) -> Iterator[Client]:
    """A Dask client: joins the cluster at ``scheduler``, or starts a local one; closes on exit.

    Parameters
    ----------
    scheduler
        Address of a running Dask scheduler (``tcp://host:port``). None: start a
        ``distributed.LocalCluster`` of ``workers`` processes, one thread each, and close it on
        exit (its workers run with one BLAS/torch thread each, Dask's default).
    workers
        Worker processes of the local cluster (default 2); not allowed with ``scheduler``.
    timeout
        Seconds to wait for the scheduler to answer, and then for at least one worker.

    Raises
    ------
    ClusterError
        Dask is not installed, no scheduler answered at ``scheduler`` within ``timeout`` (the
        message names the address), the scheduler has no worker, or the local cluster did not
        start.

    Examples
    --------
    >>> with dask_client(workers=2) as client:  # doctest: +SKIP
    ...     model = fit_distributed(X, y, client=client)
    """
    timeout = _check_timeout(timeout)
    if scheduler is not None and workers is not None:
        raise InvalidParameterError(
            "give either scheduler (join a running cluster) or workers (start a local one), "
            f"not both; got scheduler={scheduler!r}, workers={workers!r}"
        )
    _import_distributed()
    from distributed import Client, LocalCluster

    with ExitStack() as stack:
        if scheduler is None:
            n_workers = 2 if workers is None else _check_positive_int(workers, "workers")
            try:
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            except (OSError, RuntimeError, TimeoutError) as error:
                raise ClusterError(
                    f"could not start a local Dask cluster of {n_workers} workers: {error}"
                ) from error
            stack.callback(_close_quietly, cluster)
            client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        else:
            address = check_address(scheduler)
            try:
                client = Client(  # type: ignore[no-untyped-call]
                    address, timeout=timeout, set_as_default=False
                )
            except (OSError, TimeoutError) as error:
                raise ClusterError(
                    f"no Dask scheduler answered at {address!r} within {timeout:g} s ({error})"
                ) from error
        stack.callback(client.close)
        _wait_for_a_worker(client, timeout)
        yield client


def _close_quietly(cluster: Any) -> None:
    """Close a local cluster without the nannies' "still alive, killing" warnings."""
    from perennial.progress import quiet_dask_shutdown

    with quiet_dask_shutdown():
        cluster.close()


def _wait_for_a_worker(client: Client, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as error:
        address = getattr(client.scheduler, "address", None)
        raise ClusterError(
            f"the Dask scheduler at {address!r} has no worker after {timeout:g} s"
        ) from error


def _default_partitions(n: int, threads: int) -> int:
    return min(n, max(2 * threads, -(-n // MAX_PARTITION_ROWS)))


def fit_distributed(
    inputs: Any,
    labels: Any,
    *,
    encoder: Any = None,
    head: Head | None = None,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    partitions: int | None = None,
    retries: int = 0,
    progress: Progress | TextIO | None = None,
    timeout: float = 30.0,
) -> LifelongClassifier:
    """Learn ``inputs`` on a Dask cluster: the model one process would learn, up to rounding.

    The data are cut into contiguous partitions (:func:`partition_bounds`) and sent with the
    tasks; each worker encodes its partitions and learns them into fresh models
    (:func:`learn_partition`); the models are added pairwise in a balanced tree on the workers
    (:func:`merge_pair`), left to right, so the classes keep their order of first appearance in
    the data. Only the final model comes back. The encoder travels to the workers once (as the
    result of a task, so it can be made again if a worker dies) and loads there on first use.

    Parameters
    ----------
    inputs, labels
        The training batch, as for :meth:`LifelongClassifier.learn_many`. Labels are checked
        here before anything is sent.
    encoder
        As for :class:`LifelongClassifier`: an encoder, a registry name, a callable or None. It
        must pickle (the packaged encoders send their settings only).
    head
        The head to use: its parameters, not what it has learned. Default ``RidgeHead()``.
    client, scheduler, workers
        Where to run, at most one of them: a ``distributed.Client`` (left open), the address
        of a scheduler to join, or the number of local worker processes to start (default 2,
        see :func:`dask_client`).
    partitions
        Number of partitions; None: two per worker thread, more if that leaves over
        ``MAX_PARTITION_ROWS`` rows in one, never more than the examples.
    retries
        Extra attempts for a task that raises an exception (a task whose worker dies is run
        again by Dask itself, see the module documentation).
    progress
        Where to report examples learned, rate and time left as partitions finish (a
        :class:`perennial.progress.ProgressBar`): a text stream (drawn in place on a
        terminal) or a callable taking one line of text.
    timeout
        Seconds to wait for the scheduler to answer and for a first worker to join.

    Returns
    -------
    LifelongClassifier
        The model of all the data; its encoder is a copy of ``encoder`` that loads on first use.

    Raises
    ------
    ClusterError
        The cluster could not be reached or started (see :func:`dask_client`), or lost work it
        could not redo (a task whose workers kept dying, a lost scheduler).
    PerennialError
        Bad inputs or labels, raised as by ``learn_many``, here or from the worker that met them.

    Examples
    --------
    >>> model = fit_distributed(X, y, head=RidgeHead(n_features=256), workers=2)  # doctest: +SKIP
    >>> model.save("model-dir")  # doctest: +SKIP
    """
    if client is not None and (scheduler is not None or workers is not None):
        raise InvalidParameterError(
            "give at most one of client, scheduler and workers; got "
            f"client={client!r}, scheduler={scheduler!r}, workers={workers!r}"
        )
    timeout = _check_timeout(timeout)
    if partitions is not None:
        _check_positive_int(partitions, "partitions")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidParameterError(f"retries must be a non-negative int, got {retries!r}")
    if progress is not None and not callable(progress) and not hasattr(progress, "write"):
        raise InvalidParameterError(
            f"progress must be a callable, a text stream or None, got {progress!r}"
        )
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__"):
        raise InputTypeError(
            f"expected a batch (a list or array of inputs), got {type(inputs).__name__}"
        )
    n = len(inputs)
    checked_labels = check_labels(labels, n)
    if n == 0:
        raise EmptyInputError("expected at least one example to fit, got an empty batch")
    resolved = as_encoder(encoder)
    if head is None:
        head = RidgeHead()
    elif not isinstance(head, Head):
        raise InputTypeError(f"expected a head from perennial.heads, got {type(head).__name__}")
    blank = head.clone()
    if client is not None:
        _import_distributed()
        _wait_for_a_worker(client, timeout)
        return _fit_on(
            client, inputs, checked_labels, resolved, blank, partitions, retries, progress
        )
    with dask_client(scheduler, workers=workers, timeout=timeout) as own_client:
        return _fit_on(
            own_client, inputs, checked_labels, resolved, blank, partitions, retries, progress
        )


def _fit_on(
    client: Client,
    inputs: Any,
    labels: list[Label],
    encoder: Encoder,
    head: Head,
    partitions: int | None,
    retries: int,
    progress: Progress | TextIO | None,
) -> LifelongClassifier:
    from distributed import CancelledError, as_completed
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    n = len(labels)
    threads = sum(client.nthreads().values())  # type: ignore[no-untyped-call]
    count = _default_partitions(n, max(threads, 1)) if partitions is None else min(partitions, n)
    bounds = partition_bounds(n, count)
    run = uuid.uuid4().hex[:8]
    # The encoder as a task result rather than scattered data: scattered data has no lineage, so
    # a worker dying with the only copy would lose it; a task result is computed again.
    shared_encoder = client.submit(_same, encoder, key=f"perennial-encoder-{run}", pure=False)
    leaves: list[Future[LifelongClassifier]] = []
    sizes: dict[str, int] = {}
    described: dict[str, str] = {}  # task key -> what it does, for error messages
    submitted = itertools.count()  # priorities 0, -1, -2, ...: first submitted, first run

    def learn(index: int) -> Future[LifelongClassifier]:
        start, stop = bounds[index]
        future = client.submit(
            learn_partition,
            shared_encoder,
            head,
            inputs[start:stop],
            labels[start:stop],
            key=f"perennial-learn-{run}-{index}",
            priority=-next(submitted),
            retries=retries,
            pure=False,
        )
        leaves.append(future)
        sizes[str(future.key)] = stop - start
        described[str(future.key)] = (
            f"partition {index + 1} of {count} (examples {start} to {stop - 1})"
        )
        return future

    def reduce(low: int, high: int) -> Future[LifelongClassifier]:
        # Depth first: the merge of two partitions is submitted (and so prioritised) before the
        # partitions after them, so a worker merges what is done before it learns more, and at
        # most a few partitions' statistics wait in memory at any time.
        if high - low == 1:
            return learn(low)
        middle = (low + high) // 2
        left, right = reduce(low, middle), reduce(middle, high)
        key = f"perennial-merge-{run}-{low}-{high}"
        described[key] = f"the merge of partitions {low + 1} to {high}"
        return client.submit(
            merge_pair,
            left,
            right,
            key=key,
            priority=-next(submitted),
            retries=retries,
            pure=False,
        )

    final = reduce(0, count)
    try:
        if progress is not None:
            finished = as_completed(leaves, loop=client.loop)  # type: ignore[no-untyped-call]
            leaves.clear()  # as_completed holds them until they finish; then they can go
            with ProgressBar(n, "fit", unit="examples", output=progress) as bar:
                for done, future in enumerate(finished, start=1):
                    if future.status != "finished":
                        break  # an error or a cancellation: final.result() below raises it
                    bar.update(sizes[str(future.key)], note=f"partitions learned: {done}/{count}")
        else:
            leaves.clear()
        result = final.result()
    except KilledWorker as error:
        what = described.get(str(error.task), f"task {error.task!r}")
        raise ClusterError(
            f"the fit failed and made no model: {error.allowed_failures + 1} worker processes "
            f"died running {what}, and Dask gives up after "
            f"distributed.scheduler.allowed-failures={error.allowed_failures}; the last was "
            f"{error.last_worker.address} (its log says why: out of memory?)"
        ) from error
    except (CancelledError, CommClosedError) as error:
        raise ClusterError(
            f"the fit did not finish: the Dask cluster went away ({type(error).__name__}: {error})"
        ) from error
    finally:
        final.release()  # type: ignore[no-untyped-call]
        shared_encoder.release()  # type: ignore[no-untyped-call]
    if not isinstance(result, LifelongClassifier):  # pragma: no cover - a foreign cluster
        raise ClusterError(f"the cluster returned a {type(result).__name__}, not a model")
    return result


def _same(value: Any) -> Any:
    """Identity: makes ``value`` the result of a task (see :func:`fit_distributed`)."""
    return value
