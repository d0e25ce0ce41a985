"""Toolkit II strategies against independent references: QPs, hand-computed losses, numpy merges.

Tiny scenarios (Gaussian blobs) built here; torch on one thread as in ``test_strategies.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn
from torch.nn.functional import cross_entropy, mse_loss

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies import GEM, MCSGD, DERpp, IMMMean, IMMMode, Naive, StableSGD
from perennial.strategies.gem import project_to_cone


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_scenario(tasks=((0, 1), (2, 3)), *, n_features=4, per_class=20, seed=0) -> Scenario:
    rng = np.random.default_rng(seed)
    n_classes = max(max(t) for t in tasks) + 1
    centres = rng.normal(0, 3.0, (n_classes, n_features))
    experiences = []
    for index, classes in enumerate(tasks):
        parts = []
        for _ in range(2):
            x = np.vstack([centres[c] + rng.normal(0, 1, (per_class, n_features)) for c in classes])
            y = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
            order = rng.permutation(len(y))
            parts.append((x[order].astype(np.float32), y[order]))
        experiences.append(Experience(index, *parts[0], *parts[1], tuple(classes)))
    return Scenario("test", tuple(experiences), n_classes=n_classes, input_shape=(n_features,))


def weights(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().astype(np.float64).copy() for p in model.parameters()]


def fit_all(strategy, scenario) -> None:
    for experience in scenario:
        strategy.fit_experience(experience, scenario)


# --- GEM -----------------------------------------------------------------------------------------
def test_gem_projection_solves_the_quadratic_program():
    """Against SLSQP on the primal: the closest vector with non-negative dot products."""
    rng = np.random.default_rng(0)
    for trial in range(8):
        t, p = 1 + trial % 4, 12
        G = rng.normal(size=(t, p))
        g = rng.normal(size=p) - 2.0 * G.mean(axis=0)  # against the memories, mostly
        projected = project_to_cone(g, G, margin=0.0, eps=1e-12)
        primal = scipy.optimize.minimize(
            lambda z, g=g: 0.5 * np.sum((z - g) ** 2),
            g,
            jac=lambda z, g=g: z - g,
            constraints=[{"type": "ineq", "fun": lambda z, G=G: G @ z, "jac": lambda z, G=G: G}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        np.testing.assert_allclose(projected, primal.x, atol=1e-6)
        assert np.all(G @ projected >= -1e-9)


def test_gem_margin_is_the_dual_lower_bound():
    """With a margin, the dual is min 1/2 v'(GG'+eps I)v + (Gg)'v over v >= margin (L-BFGS-B)."""
    rng = np.random.default_rng(1)
    G, g = rng.normal(size=(3, 10)), rng.normal(size=10)
    gram = G @ G.T + 1e-3 * np.eye(3)
    dual = scipy.optimize.minimize(
        lambda v: 0.5 * v @ gram @ v + (G @ g) @ v,
        np.ones(3),
        jac=lambda v: gram @ v + G @ g,
        bounds=[(0.5, None)] * 3,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    np.testing.assert_allclose(project_to_cone(g, G, margin=0.5), G.T @ dual.x + g, atol=1e-6)


def test_gem_projects_only_when_a_past_task_would_suffer():
    scenario = make_scenario(tasks=((0, 1), (2, 3), (0, 2)), per_class=15)
    strategy = GEM(memory_per_class=3, margin=0.0, hidden=(8,), lr=0.1)
    strategy.fit_experience(scenario[0], scenario)
    strategy.fit_experience(scenario[1], scenario)
    assert [len(y) for _, y in strategy.memories_] == [6, 6]
    assert strategy.stored_bytes() == 12 * (4 * 4 + 8)
    model, trainer = strategy.model_, strategy.trainer_
    x, y = torch.from_numpy(scenario[2].train_x), torch.from_numpy(scenario[2].train_y)
    outcomes = set()
    for start in range(0, 30, 3):
        model.zero_grad()
        trainer.loss(model(x[start : start + 3]), y[start : start + 3]).backward()
        g = torch.cat([q.grad.flatten() for q in model.parameters()]).double().numpy()
        references = []
        for mx, my in strategy.memories_:  # each past task's gradient, computed apart
            model.zero_grad()
            trainer.loss(model(mx), my).backward()
            references.append(torch.cat([q.grad.flatten() for q in model.parameters()]).numpy())
        model.zero_grad()
        trainer.loss(model(x[start : start + 3]), y[start : start + 3]).backward()
        strategy.after_backward(model)
        after = torch.cat([q.grad.flatten() for q in model.parameters()]).double().numpy()
        G = np.array(references, dtype=np.float64)
        if np.all(G @ g >= 0):
            np.testing.assert_array_equal(after, g.astype(np.float32))
            outcomes.add(False)
        else:
            np.testing.assert_allclose(after, project_to_cone(g, G, 0.0), rtol=1e-4, atol=1e-6)
            assert np.all(G @ after >= -1e-4 * np.linalg.norm(g) * np.linalg.norm(G, axis=1))
            outcomes.add(True)
    assert outcomes == {True, False}


# --- DER++ ---------------------------------------------------------------------------------------
def test_derpp_stores_the_logits_of_the_step_and_adds_both_replay_terms():
    scenario = make_scenario(per_class=10)
    strategy = DERpp(memory_per_class=5, alpha=0.3, beta=0.7, hidden=(8,), lr=0.1)
    strategy.fit_experience(scenario[0], scenario)
    buffer = strategy.buffer_
    assert buffer.size == 10 and buffer.logits.shape == (10, 4)
    assert strategy.stored_bytes() == 10 * (4 * 4 + 8 + 4 * 4)
    # The stored logits are the network's at the step the example was seen, not today's.
    today = strategy.model_(buffer.x).detach()
    assert not torch.allclose(today, buffer.logits)
    # The penalty of one step, recomputed by hand from the same draws.
    model = strategy.model_
    strategy.before_experience(model, scenario[1], None, torch.zeros(20))
    x = torch.from_numpy(scenario[1].train_x[:5])
    y = torch.from_numpy(scenario[1].train_y[:5])
    state = buffer.generator.get_state()
    strategy.batch(x, y)
    term = strategy.penalty(model, x, model(x))
    generator = torch.Generator()
    generator.set_state(state)
    first = torch.randperm(10, generator=generator)[:5]
    second = torch.randperm(10, generator=generator)[:5]
    stored_x, stored_y, stored_z = (t.clone() for t in (buffer.x, buffer.y, buffer.logits))
    expected = 0.3 * mse_loss(model(stored_x[first]), stored_z[first]) + 0.7 * cross_entropy(
        model(stored_x[second]), stored_y[second]
    )
    assert term is not None
    torch.testing.assert_close(term, expected)


def test_derpp_without_replay_weights_trains_like_naive():
    scenario = make_scenario()
    derpp = DERpp(memory_per_class=3, alpha=0.0, beta=0.0, hidden=(8,), lr=0.05, seed=3)
    naive = Naive(hidden=(8,), lr=0.05, seed=3)
    fit_all(derpp, scenario)
    fit_all(naive, scenario)
    for a, b in zip(weights(derpp.model_), weights(naive.model_), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- Stable SGD ----------------------------------------------------------------------------------
def test_stable_sgd_decays_the_rate_and_drops_units_only_in_training():
    scenario = make_scenario(tasks=((0, 1), (2, 3), (0, 3)))
    strategy = StableSGD(hidden=(16,), lr=0.2, decay=0.5, dropout=0.5)
    fit_all(strategy, scenario)
    assert strategy.learning_rates_ == [0.2, 0.1, 0.05]
    assert [g["lr"] for g in strategy.trainer_.optimizer.param_groups] == [0.05]
    model = strategy.model_
    x = torch.from_numpy(scenario[0].test_x)
    model.train()
    assert not torch.equal(model(x), model(x))  # units dropped at random in training
    first = strategy.predict(scenario[0].test_x)
    np.testing.assert_array_equal(first, strategy.predict(scenario[0].test_x))  # not here


def test_stable_sgd_without_dropout_or_decay_is_naive():
    scenario = make_scenario()
    stable = StableSGD(hidden=(8,), lr=0.05, decay=1.0, dropout=0.0, seed=2)
    naive = Naive(hidden=(8,), lr=0.05, seed=2)
    fit_all(stable, scenario)
    fit_all(naive, scenario)
    for a, b in zip(weights(stable.model_), weights(naive.model_), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- MC-SGD --------------------------------------------------------------------------------------
def test_mc_sgd_line_loss_gradient_is_the_weighted_sum_along_the_segment():
    scenario = make_scenario()
    strategy = MCSGD(memory_per_class=2, hidden=(6,), line_samples=4, dropout=0.0)
    strategy.fit_experience(scenario[0], scenario)
    model = strategy.model_
    start = {n: p.detach().clone() + 0.3 for n, p in model.named_parameters()}
    x, y = torch.from_numpy(scenario[0].train_x[:8]), torch.from_numpy(scenario[0].train_y[:8])
    model.zero_grad()
    strategy.line_loss(model, start, x, y).backward()
    got = [p.grad.clone() for p in model.parameters()]
    # By hand: a copy of the network at each point b, its gradient there, times b, averaged.
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for b in (0.0, 0.25, 0.5, 0.75, 1.0):
        point = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
        with torch.no_grad():
            for q, (name, w) in zip(point.parameters(), model.named_parameters(), strict=True):
                q.copy_(start[name] + b * (w - start[name]))
        point.zero_grad()
        cross_entropy(point(x), y).backward()
        for e, q in zip(expected, point.parameters(), strict=True):
            e += b * q.grad / 5
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


def test_mc_sgd_search_starts_midway_and_lowers_the_line_losses():
    scenario = make_scenario(per_class=30)
    strategy = MCSGD(
        memory_per_class=10, hidden=(8,), lr=0.05, mc_epochs=20, alpha=0.5, dropout=0.0, decay=1.0
    )
    strategy.fit_experience(scenario[0], scenario)
    previous = {n: p.detach().clone() for n, p in strategy.model_.named_parameters()}
    found = {}

    def line_losses(model, finetuned, new_x, new_y):
        with torch.no_grad():
            return float(
                strategy.line_loss(model, previous, strategy.memory_x_, strategy.memory_y_)
                + strategy.line_loss(model, finetuned, new_x, new_y)
            )

    original = strategy._connect

    def spy(model, previous_weights, new_x, new_y):
        finetuned = {n: p.detach().clone() for n, p in model.named_parameters()}
        midway = {n: (previous_weights[n] + finetuned[n]) / 2 for n in finetuned}
        original(model, previous_weights, new_x, new_y)
        probe = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 4))
        with torch.no_grad():
            for q, name in zip(probe.parameters(), finetuned, strict=True):
                q.copy_(midway[name])
        found["start"] = line_losses(probe, finetuned, new_x, new_y)
        found["end"] = line_losses(model, finetuned, new_x, new_y)

    strategy._connect = spy  # type: ignore[method-assign]
    strategy.fit_experience(scenario[1], scenario)
    assert strategy.searches_ == 1 and len(strategy.memory_y_) == 40
    assert found["end"] < found["start"]


def test_mc_sgd_trains_its_minima_in_the_stable_regime(monkeypatch):
    # Mirzadeh et al. (2021) train the continual minima with Stable SGD's dropout and decay.
    scenario = make_scenario(tasks=((0, 1), (2, 3), (0, 3)))
    strategy = MCSGD(memory_per_class=2, hidden=(8,), decay=0.5, seed=1)
    assert (strategy.dropout, strategy.decay, strategy.lr) == (0.5, 0.5, 0.1)  # the defaults
    stable = StableSGD(hidden=(8,), decay=0.5, dropout=0.5, seed=1)
    stable.prepare(scenario)  # its optimiser is built before the recording below
    finetuned = []
    original = strategy._connect

    def spy(model, previous_weights, new_x, new_y):
        finetuned.append(weights(model))
        original(model, previous_weights, new_x, new_y)

    strategy._connect = spy  # type: ignore[method-assign]
    rates = []
    real_sgd = torch.optim.SGD

    def recording_sgd(params, lr, **kwargs):
        rates.append(lr)
        return real_sgd(params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", recording_sgd)
    strategy.fit_experience(scenario[0], scenario)
    stable.fit_experience(scenario[0], scenario)
    dropouts = [m.p for m in strategy.model_.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.5]
    # No search after the first experience: the weights are Stable SGD's, dropout draws and all.
    for a, b in zip(weights(strategy.model_), weights(stable.model_), strict=True):
        np.testing.assert_array_equal(a, b)
    strategy.fit_experience(scenario[1], scenario)
    stable.fit_experience(scenario[1], scenario)
    # w^_2 is Stable SGD's second minimum (from the same w_1, at the decayed rate) ...
    for a, b in zip(finetuned[0], weights(stable.model_), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and the search moved away from it.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(weights(strategy.model_), finetuned[0], strict=True)
    )
    strategy.fit_experience(scenario[2], scenario)
    assert strategy.learning_rates_ == [0.1, 0.05, 0.025]
    assert rates == [0.1, 0.05, 0.025]  # the trainer's, then each search at the decayed rate
    assert strategy.searches_ == 2


def test_mc_sgd_without_dropout_or_decay_trains_its_first_task_like_naive():
    scenario = make_scenario()
    mc = MCSGD(hidden=(8,), lr=0.05, decay=1.0, dropout=0.0, seed=2)
    naive = Naive(hidden=(8,), lr=0.05, seed=2)
    mc.fit_experience(scenario[0], scenario)
    naive.fit_experience(scenario[0], scenario)
    for a, b in zip(weights(mc.model_), weights(naive.model_), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_mc_sgd_runs_reproduce_whatever_the_global_random_state():
    # The search trains with dropout, inside Stable SGD's per-experience seeding: its draws must
    # not depend on torch's global generator as it stands, which differs from fit to fit in a
    # Dask worker (one process runs many fits), and the caller's state must be left as it was.
    scenario = make_scenario(tasks=((0, 1), (2, 3), (0, 3)))
    runs = []
    for global_seed in (0, 12345):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        strategy = MCSGD(memory_per_class=2, hidden=(8,), seed=3)
        fit_all(strategy, scenario)
        assert strategy.searches_ == 2
        assert torch.equal(torch.get_rng_state(), state)  # the caller's state is untouched
        runs.append(weights(strategy.model_))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# --- IMM -----------------------------------------------------------------------------------------
def test_imm_mean_predicts_with_the_average_and_trains_on_like_naive():
    scenario = make_scenario(tasks=((0, 1), (2, 3), (1, 2)))
    imm = IMMMean(hidden=(8,), lr=0.05, seed=4)
    naive = Naive(hidden=(8,), lr=0.05, seed=4)
    solutions = []
    for experience in scenario:
        imm.fit_experience(experience, scenario)
        naive.fit_experience(experience, scenario)
        solutions.append(weights(naive.model_))
    # Training goes on from each experience's own weights (weight-transfer): Naive's path.
    for a, b in zip(weights(imm.model_), solutions[-1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert imm.merged_ is not None
    for merged, *each in zip(weights(imm.merged_), *solutions, strict=True):
        np.testing.assert_allclose(merged, np.mean(each, axis=0), rtol=1e-6, atol=1e-7)
    x = scenario[0].test_x
    expected = imm.merged_(torch.from_numpy(x)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(imm.predict(x), expected)


def linear_fisher(W, b, x, y) -> list[np.ndarray]:
    """Empirical Fisher of a linear softmax model, written out: g_z = e_y - p, g_W = g_z x^T."""
    z = x.astype(np.float64) @ W.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    g_z = np.eye(W.shape[0])[y] - p
    return [np.mean((g_z[:, :, None] * x[:, None, :]) ** 2, axis=0), np.mean(g_z**2, axis=0)]


def test_imm_mode_is_the_fisher_weighted_merge():
    scenario = make_scenario(tasks=((0, 1), (2, 3)))
    imm = IMMMode(hidden=(), lr=0.1, seed=1)  # a linear model: the Fisher in closed form
    solutions, fishers = [], []
    for experience in scenario:
        imm.fit_experience(experience, scenario)
        W, b = weights(imm.model_)
        solutions.append((W, b))
        fishers.append(linear_fisher(W, b, experience.train_x, experience.train_y))
    merged = weights(imm.merged_)
    for i in range(2):
        numerator = sum(f[i] * s[i] for f, s in zip(fishers, solutions, strict=True))
        denominator = sum(f[i] for f in fishers)
        mean = (solutions[0][i] + solutions[1][i]) / 2
        expected = np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), mean
        )
        np.testing.assert_allclose(merged[i], expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(merged[0], (solutions[0][0] + solutions[1][0]) / 2, atol=1e-3)


# --- iCaRL ---------------------------------------------------------------------------------------
def numpy_herding(features: np.ndarray, count: int) -> list[int]:
    """Rebuffi et al.'s algorithm 4, a plain loop over candidates."""
    mu = features.mean(axis=0)
    chosen: list[int] = []
    for k in range(1, count + 1):
        best, best_distance = -1, np.inf
        for i in range(len(features)):
            if i in chosen:
                continue
            distance = np.linalg.norm(mu - (features[i] + features[chosen].sum(axis=0)) / k)
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return chosen


def test_herding_matches_the_loop_and_approaches_the_mean():
    from perennial.strategies.icarl import herding

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 5))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    picks = herding(torch.from_numpy(rows), 10).tolist()
    assert picks == numpy_herding(rows, 10)
    mean = rows.mean(axis=0)
    herded = np.linalg.norm(rows[picks].mean(axis=0) - mean)
    random = np.mean(
        [np.linalg.norm(rows[rng.permutation(40)[:10]].mean(axis=0) - mean) for _ in range(50)]
    )
    assert herded < random / 3


def mlp_features(model, x: np.ndarray) -> np.ndarray:
    """The last hidden layer of a one-hidden-layer ReLU MLP, in numpy, L2-normalised."""
    W, b = (p.detach().numpy().astype(np.float64) for p in model[0].parameters())
    h = np.maximum(x.astype(np.float64) @ W.T + b, 0.0)
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def test_icarl_classifies_by_the_nearest_exemplar_mean_and_distils_old_classes(monkeypatch):
    from perennial.strategies import ICaRL
    from perennial.strategies import icarl as module

    scenario = make_scenario(per_class=15)
    strategy = ICaRL(memory_per_class=4, hidden=(8,), lr=0.1, epochs=2)
    strategy.fit_experience(scenario[0], scenario)
    old = [p.detach().clone() for p in strategy.model_.parameters()]
    captured = []
    real = module.binary_cross_entropy_with_logits

    def spy(logits, targets):
        captured.append(targets.clone())
        return real(logits, targets)

    monkeypatch.setattr(module, "binary_cross_entropy_with_logits", spy)
    strategy.fit_experience(scenario[1], scenario)
    # The targets: labels for the new classes, the previous network's sigmoids for the old ones.
    x = torch.cat([torch.from_numpy(scenario[1].train_x), strategy.exemplar_x_[:8]])
    y = torch.cat([torch.from_numpy(scenario[1].train_y), strategy.exemplar_y_[:8]])
    previous = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for q, value in zip(previous.parameters(), old, strict=True):
            q.copy_(value)
        expected_old = torch.sigmoid(previous(x)[:, :2])
    assert captured[0].shape[1] == 4
    everything = torch.cat(captured[: -(-len(y) // 10)])  # the first epoch's targets, shuffled
    assert everything.shape[0] == len(y)
    rows_old = {tuple(np.round(r.numpy(), 5)) for r in expected_old}
    rows_seen = {tuple(np.round(r.numpy(), 5)) for r in everything[:, :2]}
    assert rows_seen == rows_old
    new_targets = everything[:, 2:]
    assert set(new_targets.sum(dim=1).tolist()) == {0.0, 1.0}
    # Exemplars: 4 per class, herded on today's features for the new classes.
    assert [strategy.exemplar_y_.tolist().count(c) for c in range(4)] == [4, 4, 4, 4]
    # Predictions: the nearest class mean of normalised exemplar features, in numpy.
    features = mlp_features(strategy.model_, strategy.exemplar_x_.numpy())
    labels = strategy.exemplar_y_.numpy()
    means = np.array([features[labels == c].mean(axis=0) for c in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    test_x = np.vstack([e.test_x for e in scenario])
    distances = np.linalg.norm(mlp_features(strategy.model_, test_x)[:, None] - means, axis=2)
    np.testing.assert_array_equal(strategy.predict(test_x), distances.argmin(axis=1))


def test_icarl_refuses_a_stream_that_brings_a_class_again():
    from perennial.bench import check_supported
    from perennial.exceptions import InvalidParameterError
    from perennial.strategies import ICaRL

    again = make_scenario(tasks=((0, 1), (2, 3), (3, 0)))
    assert again.recurring_classes == (0, 3)
    assert make_scenario(tasks=((0, 1), (2, 3))).recurring_classes == ()
    strategy = ICaRL(hidden=(4,))
    with pytest.raises(InvalidParameterError, match=r"classes 0, 3 again"):
        strategy.fit_experience(again[0], again)  # refused at once, not when class 3 comes back
    assert getattr(strategy, "trainer_", None) is None
    with pytest.raises(InvalidParameterError, match="icarl is a class-incremental method") as e:
        check_supported(["naive", "icarl"], again)
    assert "classes 0, 3 again" in str(e.value) and "split-mnist" in str(e.value)
    # Ten digits in each of three tasks, as in permuted MNIST: the list is cut short.
    digits = make_scenario(tasks=(tuple(range(10)),) * 3, per_class=2)
    with pytest.raises(InvalidParameterError, match=r"0, 1, 2, 3, 4, \.\.\. \(10 classes\)"):
        check_supported(["icarl", "er"], digits)
    check_supported(["icarl"], make_scenario())  # disjoint classes: accepted
    check_supported(["icarl"], task_scenario())
    check_supported(["naive", "er", "mc-sgd"], again)  # the others take any stream


def test_icarl_answers_a_task_not_learned_yet_within_the_task():
    from perennial.strategies import ICaRL

    scenario = task_scenario(tasks=((0, 1), (2, 3)), per_class=15)
    strategy = ICaRL(memory_per_class=3, hidden=(8,))
    strategy.fit_experience(scenario[0], scenario)
    later = scenario[1]
    # No exemplar mean of classes 2 and 3 yet: the network's argmax over the task's classes.
    logits = strategy.logits(later.test_x).numpy()[:, [2, 3]]
    expected = np.array([2, 3])[logits.argmax(axis=1)]
    np.testing.assert_array_equal(strategy.predict(later.test_x, later), expected)


# --- PackNet and progressive networks: task-incremental, nothing forgotten -------------------------
def task_scenario(**kwargs) -> Scenario:
    plain = make_scenario(**kwargs)
    return Scenario(
        "test-task",
        plain.experiences,
        n_classes=plain.n_classes,
        input_shape=plain.input_shape,
        task_labels=True,
    )


def test_packnet_prunes_freezes_and_answers_old_tasks_exactly_as_before():
    from perennial.strategies import PackNet

    scenario = task_scenario(tasks=((0, 1), (2, 3), (4, 5)), per_class=15)
    strategy = PackNet(hidden=(10,), prune=0.6, lr=0.1, epochs=2, post_epochs=1)
    strategy.fit_experience(scenario[0], scenario)
    first = [layer.weight.detach().clone() for layer in strategy._layers(strategy.model_)]
    biases = [layer.bias.detach().clone() for layer in strategy._layers(strategy.model_)]
    owners = [o.clone() for o in strategy.owners_]
    # Task 1 keeps 40% of each layer's free weights (the output layer: its two rows only).
    assert [int((o == 1).sum()) for o in owners] == [40 - int(0.6 * 40), 20 - int(0.6 * 20)]
    assert torch.all(first[0][owners[0] == 0] == 0)  # released hidden weights are zero
    answers = strategy.predict(scenario[0].test_x, scenario[0])
    logits = strategy.logits_for_task(scenario[0].test_x, 1).clone()
    for experience in scenario.experiences[1:]:
        strategy.fit_experience(experience, scenario)
    after = [layer.weight.detach() for layer in strategy._layers(strategy.model_)]
    for weight, before, owner in zip(after, first, owners, strict=True):
        assert torch.equal(weight[owner == 1], before[owner == 1])  # task 1's weights frozen
    for layer, bias in zip(strategy._layers(strategy.model_), biases, strict=True):
        assert torch.equal(layer.bias, bias)  # biases belong to the first task
    assert {int(v) for o in strategy.owners_ for v in o.unique()} >= {1, 2, 3}
    np.testing.assert_array_equal(strategy.predict(scenario[0].test_x, scenario[0]), answers)
    torch.testing.assert_close(strategy.logits_for_task(scenario[0].test_x, 1), logits)


def test_progressive_columns_compute_with_lateral_connections_and_never_change():
    from perennial.strategies import PNN

    scenario = task_scenario(tasks=((0, 1), (2, 3)), per_class=15)
    strategy = PNN(hidden=(6, 5), lr=0.1, epochs=2)
    strategy.fit_experience(scenario[0], scenario)
    column0 = [p.detach().clone() for p in strategy.model_.columns[0].parameters()]
    answers = strategy.predict(scenario[0].test_x, scenario[0])
    strategy.fit_experience(scenario[1], scenario)
    net = strategy.model_
    for p, before in zip(net.columns[0].parameters(), column0, strict=True):
        assert torch.equal(p, before)
    np.testing.assert_array_equal(strategy.predict(scenario[0].test_x, scenario[0]), answers)

    # Column 1 by hand, in numpy: its own layers plus the laterals from column 0's layers.
    def layer(module, a):
        w = module.weight.detach().numpy().astype(np.float64)
        b = module.bias.detach().numpy() if module.bias is not None else 0.0
        return a @ w.T + b

    x = scenario[1].test_x.astype(np.float64)
    h0 = [np.maximum(layer(net.columns[0][0], x), 0)]
    h0.append(np.maximum(layer(net.columns[0][1], h0[0]), 0))
    h1 = np.maximum(layer(net.columns[1][0], x), 0)
    h1b = np.maximum(layer(net.columns[1][1], h1) + layer(net.laterals[1][0][0], h0[0]), 0)
    out = layer(net.columns[1][2], h1b) + layer(net.laterals[1][1][0], h0[1])
    scores = out[:, [2, 3]]
    np.testing.assert_array_equal(
        strategy.predict(scenario[1].test_x, scenario[1]), np.array([2, 3])[scores.argmax(axis=1)]
    )


def test_task_incremental_strategies_refuse_streams_without_task_labels():
    from perennial.bench import check_supported
    from perennial.exceptions import InvalidParameterError
    from perennial.strategies import PNN, PackNet

    plain = make_scenario()
    for strategy in (PackNet(hidden=(4,)), PNN(hidden=(4,))):
        with pytest.raises(InvalidParameterError, match="task labels"):
            strategy.fit_experience(plain[0], plain)
        assert getattr(strategy, "trainer_", None) is None
    with pytest.raises(InvalidParameterError, match="packnet, pnn need the task"):
        check_supported(["naive", "packnet", "pnn"], plain)
    check_supported(["packnet", "pnn"], task_scenario())


# --- MbPA ----------------------------------------------------------------------------------------
def test_mbpa_adaptation_matches_a_per_query_loop():
    from perennial.strategies.mbpa import adapted_logits

    rng = np.random.default_rng(3)
    keys = torch.from_numpy(rng.normal(size=(30, 5)))
    labels = torch.from_numpy(rng.integers(0, 3, 30))
    weight, bias = torch.from_numpy(rng.normal(size=(3, 5))), torch.from_numpy(rng.normal(size=3))
    queries = torch.from_numpy(rng.normal(size=(4, 5)))
    got = adapted_logits(
        queries, keys, labels, weight, bias, neighbours=6, steps=3, lr=0.2, strength=0.5
    )
    for i in range(4):  # one query at a time, numpy nearest neighbours, hand-written gradients
        q = queries[i].numpy()
        d = ((keys.numpy() - q) ** 2).sum(axis=1)
        near = np.argsort(d, kind="stable")[:6]
        w = 1.0 / (1e-3 + d[near])
        w /= w.sum()
        h, y = keys.numpy()[near], labels.numpy()[near]
        W, b = weight.numpy().copy(), bias.numpy().copy()
        for _ in range(3):
            z = h @ W.T + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            delta = w[:, None] * (p - np.eye(3)[y])  # d loss / d z
            gW = delta.T @ h + 0.5 * (W - weight.numpy())
            gb = delta.sum(axis=0) + 0.5 * (b - bias.numpy())
            W, b = W - 0.2 * gW, b - 0.2 * gb
        np.testing.assert_allclose(got[i].numpy(), W @ q + b, rtol=1e-10, atol=1e-12)
    # No steps: the trained layer itself.
    unadapted = adapted_logits(
        queries, keys, labels, weight, bias, neighbours=6, steps=0, lr=0.2, strength=0.5
    )
    torch.testing.assert_close(unadapted, queries @ weight.T + bias)


def test_mbpa_memory_and_predictions_through_the_strategy():
    from perennial.strategies import MbPA

    scenario = make_scenario(per_class=20)
    strategy = MbPA(memory_per_class=5, neighbours=4, adapt_steps=0, hidden=(8,), lr=0.1)
    naive = Naive(hidden=(8,), lr=0.1)
    fit_all(strategy, scenario)
    fit_all(naive, scenario)
    assert strategy.buffer_.size == 20 and strategy.stored_bytes() == 20 * (4 * 4 + 8)
    x = np.vstack([e.test_x for e in scenario])
    # Without adaptation steps MbPA is the network it trained, which is Naive's.
    np.testing.assert_array_equal(strategy.predict(x), naive.predict(x))
    strategy.adapt_steps = 10
    assert not np.array_equal(strategy.predict(x), naive.predict(x))


# --- VCL -----------------------------------------------------------------------------------------
def test_gaussian_kl_matches_numerical_integration():
    import scipy.integrate
    from scipy import stats

    from perennial.strategies.vcl import gaussian_kl

    for mu_q, var_q, mu_p, var_p in [(0.3, 0.5, -0.2, 2.0), (1.0, 1e-2, 0.0, 1.0), (0, 1, 0, 1)]:
        q, p = stats.norm(mu_q, np.sqrt(var_q)), stats.norm(mu_p, np.sqrt(var_p))
        expected, _ = scipy.integrate.quad(
            lambda t, q=q, p=p: q.pdf(t) * (q.logpdf(t) - p.logpdf(t)), -30, 30, limit=200
        )
        got = gaussian_kl(
            torch.tensor([mu_q], dtype=torch.float64),
            torch.tensor([np.log(var_q)], dtype=torch.float64),
            torch.tensor([mu_p], dtype=torch.float64),
            torch.tensor([np.log(var_p)], dtype=torch.float64),
        )
        assert float(got) == pytest.approx(expected, abs=1e-7)


def test_local_reparameterisation_has_the_moments_of_sampled_weights():
    from perennial.strategies.vcl import BayesianLinear

    layer = BayesianLinear(nn.Linear(3, 2), init_logvar=-1.0)
    with torch.no_grad():
        layer.weight_logvar.copy_(torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -3.0, -1.5]]))
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    draws = 20000
    generator = torch.Generator().manual_seed(1)
    sigma_w = (0.5 * layer.weight_logvar.detach()).exp()
    sigma_b = (0.5 * layer.bias_logvar.detach()).exp()
    W = layer.weight_mu.detach() + sigma_w * torch.randn(draws, 2, 3, generator=generator)
    b = layer.bias_mu.detach() + sigma_b * torch.randn(draws, 2, generator=generator)
    sampled = torch.einsum("dij,j->di", W, x[0]) + b  # weights drawn one by one
    with torch.no_grad():
        local = torch.cat([layer(x) for _ in range(draws)])
    for a, c in ((sampled, local),):
        torch.testing.assert_close(a.mean(dim=0), c.mean(dim=0), atol=0.06, rtol=0)
        torch.testing.assert_close(a.var(dim=0), c.var(dim=0), atol=0, rtol=0.06)
    _, variance = layer.moments(x)
    torch.testing.assert_close(variance[0], sampled.var(dim=0), atol=0, rtol=0.06)


def test_vcl_posterior_becomes_the_prior_and_the_loss_carries_the_kl():
    from perennial.strategies import VCL
    from perennial.strategies.vcl import BayesianLinear

    scenario = make_scenario(per_class=10)
    strategy = VCL(hidden=(6,), epochs=1, lr=0.05)
    strategy.fit_experience(scenario[0], scenario)
    layers = [m for m in strategy.model_.modules() if isinstance(m, BayesianLinear)]
    for layer in layers:
        assert torch.equal(layer.prior_weight_mu, layer.weight_mu.detach())
        assert torch.equal(layer.prior_weight_logvar, layer.weight_logvar.detach())
    assert float(strategy.kl().detach()) == pytest.approx(0.0, abs=1e-9)  # posterior == prior
    # The loss: the minibatch cross-entropy under one draw of the weights plus KL / N, by hand.
    with torch.no_grad():
        for layer in layers:
            layer.weight_mu.add_(0.1)
    x = torch.from_numpy(scenario[1].train_x[:5])
    y = torch.from_numpy(scenario[1].train_y[:5])
    state = strategy._noise.get_state()
    loss = strategy.loss(x, y, 20)
    draws = torch.Generator()
    draws.set_state(state)
    h = x
    kl = torch.zeros((), dtype=torch.float64)
    for i, layer in enumerate(layers):
        w_mu, w_var = layer.weight_mu.detach(), layer.weight_logvar.detach().exp()
        b_mu, b_var = layer.bias_mu.detach(), layer.bias_logvar.detach().exp()
        mean = h @ w_mu.T + b_mu
        sd = ((h * h) @ w_var.T + b_var).sqrt()
        h = mean + sd * torch.randn(mean.shape, generator=draws)
        if i < len(layers) - 1:
            h = torch.relu(h)
        for mu_q, var_q, mu_p, var_p in (
            (w_mu, w_var, layer.prior_weight_mu, layer.prior_weight_logvar.exp()),
            (b_mu, b_var, layer.prior_bias_mu, layer.prior_bias_logvar.exp()),
        ):
            kl += (
                0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1)
            ).sum()
    expected = cross_entropy(h, y) + kl.float() / 20
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert float(kl) > 0
    strategy.fit_experience(scenario[1], scenario)
    # The prior moved to the new posterior; predictions average seeded draws (reproducible).
    probs = strategy.probabilities(scenario[0].test_x)
    torch.testing.assert_close(probs, strategy.probabilities(scenario[0].test_x))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(probs)))


# --- DGR -----------------------------------------------------------------------------------------
def test_dgr_replays_generated_inputs_labelled_by_the_previous_solver():
    from perennial.strategies import DGR

    scenario = make_scenario(per_class=15)
    strategy = DGR(hidden=(8,), gen_hidden=(8,), latent=2, gen_epochs=2, lr=0.1, epochs=2)
    strategy.fit_experience(scenario[0], scenario)
    assert strategy.replayed_ == 0
    solver, generator, classes = strategy._previous
    assert classes.tolist() == [0, 1]
    with torch.no_grad():  # outputs of classes not yet seen are never a replayed label
        solver[-1].bias[2:] += 100.0
    state = strategy._draws.get_state()
    x = torch.from_numpy(scenario[1].train_x[:5])
    y = torch.from_numpy(scenario[1].train_y[:5])
    bx, by = strategy.batch(x, y)
    # The same draws by hand: decode N(0, I) codes, label with the old solver among 0 and 1.
    draws = torch.Generator()
    draws.set_state(state)
    fake = generator.decoder(torch.randn(5, 2, generator=draws)).detach()
    torch.testing.assert_close(bx[5:], fake)
    torch.testing.assert_close(bx[:5], x)
    expected = solver(fake)[:, :2].argmax(dim=1)
    assert torch.equal(by[5:], expected) and torch.equal(by[:5], y)
    strategy.fit_experience(scenario[1], scenario)
    assert strategy.replayed_ == 2 * 30 and strategy.stored_bytes() == 0  # 2 epochs of 30


def test_vae_loss_is_the_negative_elbo_written_out():
    from perennial.strategies.dgr import VAE

    vae = VAE(3, (4,), 2, seed=0, variance=0.5)
    x = torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]])
    state = torch.Generator().manual_seed(5)
    loss = vae.loss(x, state)
    h = torch.relu(vae.encoder[0](x))
    mu, logvar = vae.to_latent(h).chunk(2, dim=1)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    z = mu + torch.exp(logvar / 2) * eps
    rec = vae.decoder(z)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
    expected = (((rec - x) ** 2).sum(dim=1) / (2 * 0.5) + kl).mean()
    torch.testing.assert_close(loss, expected)
    # Pixels: the Bernoulli likelihood, -sum(x log p + (1 - x) log(1 - p)), p = sigmoid(logits).
    pixels = VAE(3, (4,), 2, seed=0, bernoulli=True)
    x = torch.tensor([[0.1, 0.9, 0.3], [1.0, 0.0, 0.5]])
    loss = pixels.loss(x, torch.Generator().manual_seed(5))
    mu, logvar = pixels.to_latent(torch.relu(pixels.encoder[0](x))).chunk(2, dim=1)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    p = torch.sigmoid(pixels.decoder(mu + torch.exp(logvar / 2) * eps))
    nll = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=1)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
    torch.testing.assert_close(loss, (nll + kl).mean())
    samples = pixels.sample(50, torch.Generator().manual_seed(0))
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
