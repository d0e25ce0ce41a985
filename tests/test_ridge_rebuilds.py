"""Rebuilding the ridge head's decomposition off the publishing path (issue 14, finding 7).

A head that defers its rebuilds keeps taking examples as exact pending updates on its last
decomposition while a new one is computed on another thread; when it adopts the new one, the
examples learned meanwhile become pending updates on it. At every step the head must equal the
closed form ``(G + lam I)^-1 C`` computed here with numpy from all the examples, for the ``lam``
in use; with ``ridge="auto"`` that ``lam`` is GCV's choice for the examples the rebuild started
from (an explicit hat-matrix reference).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from perennial.exceptions import NotFittedError, ReadOnlyHeadError
from perennial.heads import RidgeHead
from perennial.heads import ridge as ridge_module
from perennial.service import refresher as refresher_module
from perennial.service.store import ModelStore
from test_service_support import clusters

GRID = 10.0 ** np.linspace(-6.0, 2.0, 33)


def blobs(seed: int, n_classes: int = 5, per_class: int = 40, dim: int = 6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (n_classes, dim))
    X = np.vstack([c + rng.normal(0, 1, (per_class, dim)) for c in centers])
    y = [f"c{k}" for k in range(n_classes) for _ in range(per_class)]
    order = rng.permutation(len(y))
    return X[order], [y[i] for i in order]


def expanded(head: RidgeHead, X: np.ndarray) -> np.ndarray:
    R = np.random.default_rng(head.seed).standard_normal((X.shape[1], head.n_features))
    return np.maximum(X @ R, 0)


def targets(head: RidgeHead, y) -> np.ndarray:
    return np.array([[1.0 if label == c else 0.0 for c in head.classes_] for label in y])


def closed_form(head: RidgeHead, X, y, X_eval, lam) -> np.ndarray:
    """Scores of ``X_eval`` under ``W = (H^T H + lam I)^-1 H^T Y`` of the examples ``X, y``."""
    H = expanded(head, X)
    W = np.linalg.solve(H.T @ H + lam * np.eye(head.n_features), H.T @ targets(head, y))
    return expanded(head, X_eval) @ W


def gcv_choice(head: RidgeHead, X, y) -> float:
    """The grid strength minimising GCV, from the explicit hat matrix of the examples."""
    H = expanded(head, X)
    Y = np.array([[1.0 if label == c else 0.0 for c in sorted(set(y))] for label in y])
    n, m = H.shape
    scale = np.trace(H.T @ H) / m
    best, best_lam = np.inf, None
    for relative in GRID:
        lam = scale * relative
        hat = H @ np.linalg.solve(H.T @ H + lam * np.eye(m), H.T)
        residual = n - np.trace(hat)
        if residual < 1.0:
            continue
        score = n * np.sum((Y - hat @ Y) ** 2) / residual**2
        if score < best * (1 - 1e-9):
            best, best_lam = score, lam
        elif score <= best * (1 + 1e-9):
            best, best_lam = min(best, score), lam
    return float(best_lam)


def gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


#: (head parameters, examples learned before the deferral): a dual head rebuilding its kernel,
#: a dual head past its limit forming G and C, and a primal head rebuilding G.
KINDS = {
    "dual": ({"n_features": 256, "max_pending": 8}, 24),
    "convert": ({"n_features": 128, "max_dual_examples": 30, "max_pending": 8}, 24),
    "primal": ({"n_features": 48, "max_dual_examples": 0, "max_pending": 8}, 40),
}


def held_after_decomposing(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make a rebuild's work wait, once decomposed, until released: (decomposed, release)."""
    decomposed, release = threading.Event(), threading.Event()
    catch_up = ridge_module._Rebuild.catch_up

    def held(job: ridge_module._Rebuild) -> None:
        if threading.current_thread() is not threading.main_thread() and not decomposed.is_set():
            decomposed.set()
            assert release.wait(60)
        catch_up(job)

    monkeypatch.setattr(ridge_module._Rebuild, "catch_up", held)
    return decomposed, release


@pytest.mark.parametrize("ridge", ["auto", 0.3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_rebuild_on_another_thread_with_examples_arriving_meanwhile_is_exact(
    kind, ridge, monkeypatch
):
    params, start = KINDS[kind]
    X, y = blobs(1)
    y = [label if i < 120 else "late" for i, label in enumerate(y)]  # a class that comes later
    probe = X[:6]
    head = RidgeHead(ridge=ridge, **params)
    head.defer_rebuilds()
    head.learn_many(X[:start], y[:start])
    head.decision_scores(probe)  # the first decomposition, made at once: there is none
    lam = head.ridge_
    n = start
    while not head.rebuild_due:  # past the window (and the dual limit): no rebuild while learning
        head.learn_one(X[n], y[n])
        n += 1
        assert head.ridge_ == lam
        assert gap(head.decision_scores(probe), closed_form(head, X[:n], y[:n], probe, lam)) < 1e-9
        assert n < 60
    assert head.form_ == ("primal" if kind == "primal" else "dual")
    snapshot = n
    expected_lam = gcv_choice(head, X[:snapshot], y[:snapshot]) if ridge == "auto" else ridge
    decomposed, release = held_after_decomposing(monkeypatch)
    work = head.start_rebuild()
    assert head.rebuilding_ and not head.rebuild_due
    head.learn_many(X[n : n + 3], y[n : n + 3])  # before the work starts
    n += 3
    thread = threading.Thread(target=work)
    thread.start()
    assert decomposed.wait(60)
    for _ in range(5):  # while it runs, on the old decomposition, exactly
        head.learn_one(X[n], y[n])
        n += 1
        assert head.ridge_ == lam
        assert gap(head.decision_scores(probe), closed_form(head, X[:n], y[:n], probe, lam)) < 1e-9
    assert not head.finish_rebuild()  # not done yet: nothing changes
    assert head.rebuilding_ and head.ridge_ == lam
    release.set()
    thread.join()
    head.learn_many(X[n : n + 2], y[n : n + 2])  # after the work ended, before the adoption
    head.learn_many(X[120:124], y[120:124])  # and a new class
    rows = list(range(n + 2)) + list(range(120, 124))
    assert head.finish_rebuild()
    assert not head.rebuilding_
    assert head.form_ == ("dual" if kind == "dual" else "primal")
    assert head.ridge_ == pytest.approx(expected_lam, rel=1e-12)  # chosen from the snapshot
    labels = [y[i] for i in rows]
    assert gap(head.decision_scores(X), closed_form(head, X[rows], labels, X, expected_lam)) < 1e-9
    assert gap(head.coef_, closed_form_weights(head, X[rows], labels, expected_lam)) < 1e-9
    if kind == "convert":  # the statistics the rebuild formed replaced the rows
        H = expanded(head, X[rows])
        assert head.features_ is None
        assert gap(np.triu(head.gram_), np.triu(H.T @ H)) < 1e-12
        assert gap(head.targets_, H.T @ targets(head, labels)) < 1e-12
    # Learning goes on from there exactly, and a refresh chooses lam from everything.
    head.learn_many(X[124:130], y[124:130])
    rows += list(range(124, 130))
    labels = [y[i] for i in rows]
    assert gap(head.decision_scores(X), closed_form(head, X[rows], labels, X, expected_lam)) < 1e-9
    head.refresh()
    lam = gcv_choice(head, X[rows], labels) if ridge == "auto" else ridge
    assert head.ridge_ == pytest.approx(lam, rel=1e-12)
    assert gap(head.decision_scores(X), closed_form(head, X[rows], labels, X, lam)) < 1e-8


def closed_form_weights(head: RidgeHead, X, y, lam) -> np.ndarray:
    H = expanded(head, X)
    return np.linalg.solve(H.T @ H + lam * np.eye(head.n_features), H.T @ targets(head, y))


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_weights_updated_example_by_example_stay_the_closed_form(form):
    # Published versions read W, which learning updates in place of forming it again; over many
    # pending updates on one decomposition it must not drift from the closed form.
    X, y = blobs(2, n_classes=12, per_class=25)
    limit = 400 if form == "dual" else 0
    head = RidgeHead(n_features=96, ridge="auto", max_dual_examples=limit)
    head.defer_rebuilds()  # never rebuilt: every example after the first 20 is pending
    head.learn_many(X[:20], y[:20])
    head.coef_  # noqa: B018 - formed once, then updated
    lam = head.ridge_
    for i in range(20, 300):
        head.learn_one(X[i], y[i])
        if i % 40 == 0 or i == 299:
            weights = closed_form_weights(head, X[: i + 1], y[: i + 1], lam)
            assert gap(head.coef_, weights) < 1e-9
    assert head.form_ == form and head.ridge_ == lam and head.rebuild_due


@pytest.mark.parametrize(
    "change",
    [
        lambda head, X, y: head.unlearn_many(X[:2], y[:2]),
        lambda head, X, y: head.forget(y[0]),
        lambda head, X, y: head.merge(copy.deepcopy(head)),
        lambda head, X, y: head.refresh(),
    ],
    ids=["unlearn", "forget", "merge", "refresh"],
)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_rebuild_is_abandoned_when_the_statistics_change_otherwise(kind, change):
    params, start = KINDS[kind]
    X, y = blobs(3)
    head = RidgeHead(ridge=0.3, **params)
    head.defer_rebuilds()
    head.learn_many(X[:start], y[:start])
    head.decision_scores(X[:1])
    n = start
    while not head.rebuild_due:
        head.learn_one(X[n], y[n])
        n += 1
    work = head.start_rebuild()
    change(head, X, y)
    work()  # the work still runs to its end, on statistics that are no longer the head's
    assert not head.finish_rebuild()
    assert not head.rebuilding_
    twin = RidgeHead(ridge=0.3, **params)  # the same changes, without any rebuild
    twin.learn_many(X[:n], y[:n])
    change(twin, X, y)
    assert gap(head.decision_scores(X), twin.decision_scores(X)) < 1e-9


def test_a_failed_rebuild_leaves_the_head_to_rebuild_when_it_next_solves():
    params, start = KINDS["primal"]
    X, y = blobs(4)
    head = RidgeHead(**params)
    head.defer_rebuilds()
    head.learn_many(X[:start], y[:start])
    head.decision_scores(X[:1])
    n = start
    while not head.rebuild_due:
        head.learn_one(X[n], y[n])
        n += 1

    def broken(gram):
        raise np.linalg.LinAlgError("eigenvalues did not converge")

    head.start_rebuild(broken)()
    assert not head.finish_rebuild()
    assert not head.rebuilding_ and not head.rebuild_due
    lam = gcv_choice(head, X[:n], y[:n])  # solved again from all of it
    assert head.ridge_ == pytest.approx(lam, rel=1e-12)
    assert gap(head.decision_scores(X), closed_form(head, X[:n], y[:n], X, lam)) < 1e-8


def test_copies_of_a_head_that_rebuilds_take_neither_the_rebuild_nor_the_deferral():
    params, start = KINDS["primal"]
    X, y = blobs(5)
    head = RidgeHead(ridge=0.3, **params)
    head.defer_rebuilds()
    head.learn_many(X[: start + 20], y[: start + 20])
    head.decision_scores(X[:1])
    head.learn_many(X[start + 20 : start + 30], y[start + 20 : start + 30])
    work = head.start_rebuild()
    twin = copy.deepcopy(head)
    assert head.rebuilding_ and not twin.rebuilding_
    twin.learn_many(X[100:140], y[100:140])  # not deferred: past the window it drops it
    assert twin._primal is None  # and rebuilds when it next solves
    work()
    assert head.finish_rebuild()
    rows = list(range(start + 30)) + list(range(100, 140))
    expected = closed_form(twin, X[rows], [y[i] for i in rows], X, 0.3)
    assert gap(twin.decision_scores(X), expected) < 1e-9


def test_only_a_learning_head_with_examples_rebuilds():
    with pytest.raises(NotFittedError, match="nothing to rebuild"):
        RidgeHead(n_features=16).start_rebuild()
    head = RidgeHead(n_features=16)
    head.learn_many(*blobs(6, per_class=3))
    frozen = head.prediction_copy()
    assert not frozen.rebuild_due
    with pytest.raises(ReadOnlyHeadError, match="cannot rebuild"):
        frozen.start_rebuild()


# --- the service: publishing never waits for a rebuild ------------------------------------------
N_FEATURES = 64


def hold_decompositions(
    monkeypatch, only_rebuilds: bool
) -> tuple[threading.Event, threading.Event]:
    """Hold every eigendecomposition of a G once armed, until released: (armed, release).

    numpy's and SciPy's ``eigh`` in this process and the refresher's child process for it; with
    ``only_rebuilds``, only those the refresher's rebuild thread asks for.
    """
    armed, release = threading.Event(), threading.Event()

    def held(real):
        def eigh(a, *args, **kwargs):
            rebuilding = threading.current_thread().name == "perennial-rebuild"
            mine = rebuilding or not only_rebuilds
            if mine and armed.is_set() and np.shape(a) == (N_FEATURES, N_FEATURES):
                assert release.wait(120)
            return real(a, *args, **kwargs)

        return eigh

    monkeypatch.setattr(np.linalg, "eigh", held(np.linalg.eigh))
    monkeypatch.setattr(scipy.linalg, "eigh", held(scipy.linalg.eigh))
    elsewhere = getattr(refresher_module, "decompose_in_idle_process", None)
    if elsewhere is not None:
        monkeypatch.setattr(refresher_module, "decompose_in_idle_process", held(elsewhere))
    return armed, release


class Examples:
    """Examples as the store journals them (float32), and the closed form of the first ``n``."""

    def __init__(self, n: int) -> None:
        X, y = clusters(np.random.default_rng(0), ["a", "b", "c"], n // 3 + 1)
        order = np.random.default_rng(1).permutation(len(y))
        self.X = X[order].astype(np.float32).astype(np.float64)
        self.y = [y[i] for i in order]
        self.probe = RidgeHead(n_features=N_FEATURES)  # for its projection only
        self.probe.learn_many(self.X[:1], self.y[:1])

    def learn(self, store: ModelStore, start: int, stop: int):
        version = store.learn(self.X[start:stop], self.y[start:stop])
        return store.wait_served(version, timeout=60)

    def assert_closed_form(self, served, n: int) -> None:
        assert served.model is not None
        classes = served.model.classes_
        H = expanded(self.probe, self.X[:n])
        Y = np.array([[1.0 if label == c else 0.0 for c in classes] for label in self.y[:n]])
        W = np.linalg.solve(H.T @ H + 0.5 * np.eye(N_FEATURES), H.T @ Y)
        expected = expanded(self.probe, self.X) @ W
        assert gap(served.model.decision_scores(self.X), expected) < 1e-8


def open_store(path: Path, max_pending: int, **options) -> ModelStore:
    params = {
        "n_features": N_FEATURES,
        "ridge": 0.5,
        "max_dual_examples": 0,
        "max_pending": max_pending,
    }
    return ModelStore.open(path, encoder="identity", head_params=params, isolate=False, **options)


@pytest.mark.parametrize("idle", [False, True])
def test_versions_are_published_while_the_decomposition_is_rebuilt(
    tmp_path: Path, monkeypatch, caplog, idle: bool
):
    # Every eigendecomposition of G after the first is held until released. Publishing must go
    # on meanwhile, past the pending window, with each published version the closed form of every
    # acknowledged example; once released, the refresher adopts the new decomposition.
    if not sys.platform.startswith("linux"):
        pytest.skip("thread priorities are Linux's")
    caplog.set_level(logging.INFO, logger="perennial.service")
    armed, release = hold_decompositions(monkeypatch, only_rebuilds=False)
    examples = Examples(120)
    store = open_store(tmp_path / "model", 32, background_nice=3, background_idle=idle)
    try:
        examples.learn(store, 0, 40)
        armed.set()
        for n in range(41, 90):  # the window holds 32: a rebuild starts, and is held
            served = examples.learn(store, n - 1, n)
        examples.assert_closed_form(served, 89)
        rebuilding = [t for t in threading.enumerate() if t.name == "perennial-rebuild"]
        assert len(rebuilding) == 1 and rebuilding[0].is_alive()
        # The rebuild runs below the refresher, and neither under SCHED_IDLE: that would let
        # a starved thread holding the GIL stop the refresher (with ``idle`` the decomposition
        # runs in a process of its own under SCHED_IDLE).
        refresher = store._link._thread
        assert refresher is not None and refresher.native_id is not None
        threads = refresher.native_id, rebuilding[0].native_id
        assert os.getpriority(os.PRIO_PROCESS, threads[1]) == 19
        assert os.getpriority(os.PRIO_PROCESS, threads[0]) < 19
        if hasattr(os, "SCHED_IDLE"):
            assert all(os.sched_getscheduler(t) != os.SCHED_IDLE for t in threads)
        release.set()
        rebuilding[0].join(60)
        deadline = time.monotonic() + 60
        n = 89
        while "rebuilt" not in caplog.text:  # adopted at the next update the refresher applies
            assert time.monotonic() < deadline and n < 120
            n += 1
            served = examples.learn(store, n - 1, n)
        examples.assert_closed_form(served, n)
    finally:
        release.set()
        store.close()


def test_a_rebuild_starved_of_cpu_time_is_redone_on_the_refresher_thread(
    tmp_path: Path, monkeypatch, caplog
):
    # A rebuild that never gets to run must not let pending updates pile up without end: past
    # PENDING_CAP windows the refresher rebuilds on its own thread, and publishing goes on.
    caplog.set_level(logging.INFO, logger="perennial.service")
    armed, release = hold_decompositions(monkeypatch, only_rebuilds=True)
    examples = Examples(240)
    store = open_store(tmp_path / "model", 8, background_idle=True)  # cap: 4 * 32 pending
    try:
        examples.learn(store, 0, 40)
        armed.set()
        n = 40
        while "too little CPU time" not in caplog.text:
            assert n < 200
            n += 1
            served = examples.learn(store, n - 1, n)
        examples.assert_closed_form(served, n)
        for end in range(n + 1, n + 11):  # and it goes on from the new decomposition
            served = examples.learn(store, end - 1, end)
        examples.assert_closed_form(served, end)
    finally:
        release.set()
        store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_decomposition_in_an_idle_process_is_numpys():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((48, 60))
    G = np.asfortranarray(A @ A.T)
    G[np.tril_indices(48, -1)] = 1e6  # only the upper triangle counts
    s, V = refresher_module.decompose_in_idle_process(G)
    upper = np.triu(G) + np.triu(G, 1).T
    assert np.allclose(V @ np.diag(s) @ V.T, upper, rtol=0, atol=1e-10 * np.abs(upper).max())
    assert np.allclose(V.T @ V, np.eye(48), rtol=0, atol=1e-12)
    reference = np.linalg.eigh(upper)[0]
    assert np.allclose(s, np.maximum(reference, 0), rtol=0, atol=1e-10 * reference.max())


@pytest.mark.parametrize("exact_forget", [False, True])
def test_the_state_size_is_counted_without_forming_the_arrays(exact_forget):
    # Publishing reports the state size; forming the symmetric G to count it cost a second.
    X, y = blobs(8)
    head = RidgeHead(n_features=40, max_dual_examples=10, exact_forget=exact_forget)
    head.learn_many(X[:5], y[:5])
    for n in (5, 60):
        if n > 5:
            head.learn_many(X[5:n], y[5:n])
        assert head.state_bytes == sum(array.nbytes for array in head.get_state()[1].values())
    assert head.form_ == "primal"


@pytest.mark.parametrize("m", [1, 7, 255, 256, 257, 600])
def test_symmetric_mirrors_the_upper_triangle(m):
    from perennial.heads.statistics import symmetric

    upper = np.asfortranarray(np.random.default_rng(m).standard_normal((m, m)))
    expected = np.triu(upper) + np.triu(upper, 1).T
    np.testing.assert_array_equal(symmetric(upper), expected)


# --- the saved decomposition: a restart serves at once -------------------------------------------


def deferred_primal_head(ridge, pending: int) -> tuple[RidgeHead, np.ndarray, list[str]]:
    """A deferring primal head with ``pending`` examples learned on its last decomposition."""
    X, y = blobs(11, per_class=30)
    head = RidgeHead(n_features=48, max_dual_examples=0, max_pending=64, ridge=ridge)
    head.learn_many(X[:100], y[:100])
    head.predict_many(X[:2])  # decomposed here
    head.defer_rebuilds()
    for i in range(100, 100 + pending):
        head.learn_many(X[i : i + 1], y[i : i + 1])
    assert head.n_pending_ == pending
    return head, X, y


def no_decomposition(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("G was decomposed")

    monkeypatch.setattr(ridge_module, "_decompose", refused)


@pytest.mark.parametrize("ridge", ["auto", 0.3])
@pytest.mark.parametrize("pending", [0, 7])
def test_a_deferring_head_saves_its_decomposition_and_loads_it_without_decomposing(
    monkeypatch, ridge, pending
):
    head, X, y = deferred_primal_head(ridge, pending)
    lam, scores = head.ridge_, head.decision_scores(X)
    meta, arrays = head.get_state()
    assert meta["solution"]["k"] == pending and "solution.V" in arrays
    assert head.state_bytes == sum(array.nbytes for array in arrays.values())
    no_decomposition(monkeypatch)
    loaded = RidgeHead(**head.get_params())
    loaded.set_state(meta, arrays)
    assert loaded.ridge_ == lam  # the saved strength, not one chosen again from G
    assert gap(loaded.decision_scores(X), scores) < 1e-12  # W formed anew, not updated
    n = 100 + pending
    assert gap(scores, closed_form(head, X[:n], y[:n], X, lam)) < 1e-9
    loaded.learn_many(X[n : n + 3], y[n : n + 3])  # pending updates on the loaded decomposition
    assert gap(loaded.decision_scores(X), closed_form(head, X[: n + 3], y[: n + 3], X, lam)) < 1e-9


def test_a_head_that_does_not_defer_saves_only_its_statistics():
    head = deferred_primal_head(0.3, 3)[0]
    head.defer_rebuilds(False)
    meta, arrays = head.get_state()
    assert "solution" not in meta and not any(name.startswith("solution.") for name in arrays)
    assert head.state_bytes == sum(array.nbytes for array in arrays.values())


@pytest.mark.parametrize("damage", ["V", "s", "factor", "lam"])
def test_a_saved_decomposition_that_does_not_solve_the_statistics_is_dropped(caplog, damage):
    head, X, y = deferred_primal_head("auto", 5)
    meta, arrays = head.get_state()
    meta = copy.deepcopy(meta)
    arrays = {name: array.copy() for name, array in arrays.items()}
    if damage == "lam":
        meta["solution"]["lam"] *= 1.001
    else:
        array = arrays[f"solution.{damage}"]
        array[(-1,) * array.ndim] *= 1.001  # s: the largest eigenvalue (lam hides small ones)
    loaded = RidgeHead(**head.get_params())
    with caplog.at_level(logging.WARNING, logger="perennial.heads.ridge"):
        loaded.set_state(meta, arrays)
    assert "dropped" in caplog.text
    # Decomposed again at the next solve: GCV's choice for all the examples, as after any load.
    lam = gcv_choice(head, X[:105], y[:105])
    assert loaded.ridge_ == pytest.approx(lam, rel=1e-9)
    assert gap(loaded.decision_scores(X), closed_form(head, X[:105], y[:105], X, lam)) < 1e-8


def test_a_restarted_service_serves_its_saved_decomposition_without_decomposing(
    tmp_path: Path, monkeypatch
):
    examples = Examples(120)
    store = open_store(tmp_path / "model", 16)
    try:
        served = examples.learn(store, 0, 60)
        for n in range(61, 70):
            served = examples.learn(store, n - 1, n)
    finally:
        store.close()  # the last snapshot holds G and its decomposition
    no_decomposition(monkeypatch)
    store = open_store(tmp_path / "model", 16)
    try:
        served = store.wait_served(store.status()["version"], timeout=60)
        examples.assert_closed_form(served, 69)
        served = examples.learn(store, 69, 72)
        examples.assert_closed_form(served, 72)
    finally:
        store.close()


# --- unlearning on a deferring head: a downdate, not a new decomposition -------------------------


@pytest.mark.parametrize("exact_forget", [False, True])
@pytest.mark.parametrize("ridge", ["auto", 0.3])
def test_a_deferring_head_unlearns_by_downdating_its_decomposition(
    monkeypatch, ridge, exact_forget
):
    X, y = blobs(12, per_class=30)
    head = RidgeHead(
        n_features=48, max_dual_examples=0, max_pending=64, ridge=ridge, exact_forget=exact_forget
    )
    head.learn_many(X[:100], y[:100])
    head.predict_many(X[:2])  # decomposed here
    head.defer_rebuilds()
    head.learn_many(X[100:104], y[100:104])
    lam = head.ridge_
    no_decomposition(monkeypatch)
    kept = list(range(104))
    # Two examples, then one more, then a whole class (its column goes), all at the same lam.
    for step in range(3):
        removed = [[3, 50], [101], [i for i in kept if y[i] == y[7]]][step]
        head.unlearn_many(X[removed], [y[i] for i in removed])
        kept = [i for i in kept if i not in removed]
        assert head.rebuild_due and head.ridge_ == lam
        expected = closed_form(head, X[kept], [y[i] for i in kept], X, lam)
        assert gap(head.decision_scores(X), expected) < 1e-8
    assert y[7] not in head.classes_
    head.learn_many(X[104:110], y[104:110])  # learning goes on from the downdated solution
    kept += list(range(104, 110))
    expected = closed_form(head, X[kept], [y[i] for i in kept], X, lam)
    assert gap(head.decision_scores(X), expected) < 1e-8
    meta, arrays = head.get_state()  # saved with its signs, loaded as it was
    loaded = RidgeHead(**head.get_params())
    loaded.set_state(meta, arrays)
    assert loaded.ridge_ == lam and gap(loaded.decision_scores(X), expected) < 1e-8
    monkeypatch.undo()
    head.start_rebuild()()  # the rebuild that was due chooses lam again, as retraining would
    assert head.finish_rebuild()
    lam = gcv_choice(head, X[kept], [y[i] for i in kept]) if ridge == "auto" else 0.3
    assert head.ridge_ == pytest.approx(lam, rel=1e-9) and not head.rebuild_due
    expected = closed_form(head, X[kept], [y[i] for i in kept], X, lam)
    assert gap(head.decision_scores(X), expected) < 1e-8


def test_a_head_that_does_not_defer_decomposes_again_after_unlearning(monkeypatch):
    X, y = blobs(13, per_class=30)
    head = RidgeHead(n_features=48, max_dual_examples=0)
    head.learn_many(X[:100], y[:100])
    head.predict_many(X[:2])
    head.unlearn_many(X[:5], y[:5])
    lam = gcv_choice(head, X[5:100], y[5:100])
    assert head.ridge_ == pytest.approx(lam, rel=1e-9)  # chosen again: the library's contract
    assert gap(head.decision_scores(X), closed_form(head, X[5:100], y[5:100], X, lam)) < 1e-8


def test_a_service_publishes_an_unlearning_without_decomposing(tmp_path: Path, monkeypatch):
    examples = Examples(120)
    armed, release = hold_decompositions(monkeypatch, only_rebuilds=False)
    store = open_store(tmp_path / "model", 16)
    try:
        served = examples.learn(store, 0, 60)
        for n in range(61, 66):
            served = examples.learn(store, n - 1, n)
        armed.set()  # from now on a decomposition would hold publishing
        version = store.unlearn(examples.X[:3], examples.y[:3])
        served = store.wait_served(version, timeout=60)
        assert served.model is not None
        kept = slice(3, 65)
        H = expanded(examples.probe, examples.X[kept])
        classes = served.model.classes_
        Y = np.array([[1.0 if label == c else 0.0 for c in classes] for label in examples.y[kept]])
        W = np.linalg.solve(H.T @ H + 0.5 * np.eye(N_FEATURES), H.T @ Y)
        expected = expanded(examples.probe, examples.X) @ W
        assert gap(served.model.decision_scores(examples.X), expected) < 1e-8
    finally:
        release.set()
        store.close()


@pytest.mark.parametrize("ridge", ["auto", 0.3])
def test_a_deferring_dual_head_unlearns_without_eigenvalues_of_the_kernel(monkeypatch, ridge):
    X, y = blobs(14, per_class=30)
    head = RidgeHead(n_features=256, max_pending=64, ridge=ridge)
    head.learn_many(X[:40], y[:40])
    head.predict_many(X[:2])
    head.defer_rebuilds()
    head.learn_many(X[40:44], y[40:44])
    assert head.form_ == "dual"
    lam = head.ridge_

    def refused(*args, **kwargs):
        raise AssertionError("the kernel was decomposed")

    monkeypatch.setattr(np.linalg, "eigh", refused)
    kept = list(range(44))
    for step in range(2):
        removed = [[5, 41], [i for i in kept if y[i] == y[0]]][step]
        head.unlearn_many(X[removed], [y[i] for i in removed])
        kept = [i for i in kept if i not in removed]
        assert head.rebuild_due and head.ridge_ == lam
        expected = closed_form(head, X[kept], [y[i] for i in kept], X, lam)
        assert gap(head.decision_scores(X), expected) < 1e-8
    head.learn_many(X[44:48], y[44:48])
    kept += list(range(44, 48))
    assert (
        gap(head.decision_scores(X), closed_form(head, X[kept], [y[i] for i in kept], X, lam))
        < 1e-8
    )
    monkeypatch.undo()
    head.start_rebuild()()
    assert head.finish_rebuild() and not head.rebuild_due
    lam = gcv_choice(head, X[kept], [y[i] for i in kept]) if ridge == "auto" else 0.3
    assert head.ridge_ == pytest.approx(lam, rel=1e-9)
    assert (
        gap(head.decision_scores(X), closed_form(head, X[kept], [y[i] for i in kept], X, lam))
        < 1e-8
    )


@pytest.mark.parametrize(("n", "r"), [(1, 1), (9, 1), (40, 3), (40, 0)])
def test_the_cholesky_update_is_the_factor_of_the_sum(n, r):
    rng = np.random.default_rng(n + r)
    A = rng.standard_normal((n, n + 2))
    lower = np.linalg.cholesky(A @ A.T)
    columns = rng.standard_normal((n, r))
    columns[: n // 3] = 0.0  # as the removed columns of a triangular factor: zeros on top
    expected = np.linalg.cholesky(lower @ lower.T + columns @ columns.T)
    np.testing.assert_allclose(
        ridge_module._cholesky_updated(lower, columns), expected, rtol=0, atol=1e-12 * n
    )


def test_a_dual_head_unlearns_a_row_learned_with_negative_zero():
    # Rows match by float equality: -0.0 == 0.0.
    head = RidgeHead(n_features=32)
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    head.learn_many(X, ["a", "b", "a"])
    head.unlearn_many(np.array([[-0.0, 1.0]]), ["a"])
    assert head.n_seen_ == 2 and head.features_.shape[0] == 2
