"""Deep generative replay (Shin et al., 2017): a generator replays past inputs, the old solver labels them."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Unpack

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy, check_int, check_number
from perennial.strategies.trainer import Progress

__all__ = ["DGR", "VAE"]


class VAE(nn.Module):
    """A variational autoencoder on feature rows: MLP encoder and decoder, Gaussian latent.

    :meth:`loss` is the negative evidence lower bound per example (Kingma & Welling, 2014) with
    a Bernoulli likelihood (``bernoulli=True``: inputs in [0, 1], such as pixels; the decoder
    gives logits) or a Gaussian one of variance ``variance`` (the squared error over
    ``2 variance``). A unit variance on [0, 1] pixels makes the reconstruction term so weak
    against the KL term that the decoder learns the mean image whatever the code (posterior
    collapse), which is why pixels get the Bernoulli likelihood.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int],
        latent: int,
        seed: int,
        *,
        bernoulli: bool = False,
        variance: float = 1.0,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            widths = [n_features, *hidden]
            encoder: list[nn.Module] = []
            for a, b in itertools.pairwise(widths):
                encoder += [nn.Linear(a, b), nn.ReLU()]
            self.encoder = nn.Sequential(*encoder)
            self.to_latent = nn.Linear(widths[-1], 2 * latent)
            back = [latent, *reversed(hidden)]
            decoder: list[nn.Module] = []
            for a, b in itertools.pairwise(back):
                decoder += [nn.Linear(a, b), nn.ReLU()]
            decoder.append(nn.Linear(back[-1], n_features))
            self.decoder = nn.Sequential(*decoder)
        self.latent = latent
        self.bernoulli = bernoulli
        self.variance = variance

    def loss(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Mean over rows of ``-log p(x | z) + KL(q(z|x) || N(0, I))`` (one draw of ``z``)."""
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
        decoded = self.decoder(z)
        if self.bernoulli:
            reconstruction = binary_cross_entropy_with_logits(decoded, x, reduction="none").sum(
                dim=1
            )
        else:
            reconstruction = ((decoded - x) ** 2).sum(dim=1) / (2.0 * self.variance)
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=1)
        loss: Tensor = (reconstruction + kl).mean()
        return loss

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` rows decoded from latent codes drawn from ``N(0, I)`` (their means)."""
        with torch.no_grad():
            rows: Tensor = self.decoder(torch.randn(count, self.latent, generator=generator))
        return torch.sigmoid(rows) if self.bernoulli else rows


class DGR(GradientStrategy):
    """Deep generative replay: the solver and a generator both rehearse generated past inputs.

    No example is stored. From the second experience on, every minibatch of real examples is
    joined by as many inputs drawn from the previous generator and labelled by the previous
    solver (its most likely class among those seen): the "scholar" of "Continual Learning with
    Deep Generative Replay" (Shin, Lee, Kim & Kim, 2017, NeurIPS), with real and replayed data
    mixed one to one. The generator, a :class:`VAE` (Shin et al. used a GAN; van de Ven,
    Siegelmann & Tolias, 2020, showed a VAE works for the same scheme), is trained the same way
    on real and replayed inputs, for ``gen_epochs`` passes with Adam. Its likelihood is chosen
    from the first experience's data: Bernoulli for inputs in [0, 1] (pixels), else Gaussian
    with the data's mean per-feature variance.

    Parameters
    ----------
    gen_hidden
        Hidden widths of the generator's encoder (the decoder mirrors them); default (256, 256).
    latent
        Latent dimensions; default 32.
    gen_epochs
        Passes over each experience for the generator; default 2.
    gen_lr
        Adam's learning rate for the generator; default 1e-3.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = DGR(hidden=(16,), gen_hidden=(16,), latent=4, epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.replayed_, strategy.stored_bytes()  # one replayed input per real one, 2 epochs
    (120, 0)
    """

    def __init__(
        self,
        *,
        gen_hidden: Sequence[int] = (256, 256),
        latent: int = 32,
        gen_epochs: int = 2,
        gen_lr: float = 1e-3,
        **common: Unpack[CommonParams],
    ) -> None:
        super().__init__(**common)
        self.gen_hidden = gen_hidden
        self.latent = latent
        self.gen_epochs = gen_epochs
        self.gen_lr = gen_lr

    def check_params(self) -> None:
        super().check_params()
        for width in self.gen_hidden:
            check_int("each gen_hidden width", width, 1)
        check_int("latent", self.latent, 1)
        check_int("gen_epochs", self.gen_epochs, 1)
        check_number("gen_lr", self.gen_lr, 0.0, strict=True)

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.generator_: VAE | None = None  # built on the first data: its likelihood
            self._draws = torch.Generator().manual_seed(self.seed + 1)
            self._previous: tuple[nn.Module, VAE, Tensor] | None = None
            self.seen_classes_: list[int] = []
            self.replayed_ = 0  # replayed inputs the solver trained on in the last experience

    def replay(self, count: int) -> tuple[Tensor, Tensor]:
        """``count`` generated inputs and the previous solver's labels for them."""
        assert self._previous is not None
        solver, generator, classes = self._previous
        x = generator.sample(count, self._draws)
        with torch.no_grad():
            scores = solver(x)[:, classes]
        return x, classes[scores.argmax(dim=1)]

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._previous is None:
            return x, y
        fake_x, fake_y = self.replay(int(y.shape[0]))
        self.replayed_ += int(fake_y.shape[0])
        return torch.cat([x, fake_x]), torch.cat([y, fake_y])

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        self.replayed_ = 0
        super()._fit(experience, x, y, progress)
        self._train_generator(x)
        self.seen_classes_ = sorted(set(self.seen_classes_) | {int(c) for c in experience.classes})
        model = copy.deepcopy(self.trainer_.model).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        assert self.generator_ is not None  # built by _train_generator
        frozen = copy.deepcopy(self.generator_).eval()
        self._previous = (model, frozen, torch.tensor(self.seen_classes_, dtype=torch.int64))

    def _train_generator(self, x: Tensor) -> None:
        if self.generator_ is None:
            # Pixels in [0, 1]: Bernoulli likelihood; anything else: Gaussian with the data's
            # mean variance per feature (so the reconstruction term is on the data's scale).
            pixels = bool(x.min() >= 0.0) and bool(x.max() <= 1.0)
            variance = max(float(x.var(dim=0).mean()), 1e-6)
            self.generator_ = VAE(
                self.n_features_,
                tuple(self.gen_hidden),
                int(self.latent),
                self.seed,
                bernoulli=pixels,
                variance=variance,
            )
        vae = self.generator_
        optimizer = torch.optim.Adam(vae.parameters(), lr=float(self.gen_lr))
        n, size = int(x.shape[0]), int(self.batch_size)
        shuffle = torch.Generator().manual_seed(self.seed + 3 + len(self.seen_classes_))
        vae.train()
        for _ in range(int(self.gen_epochs)):
            order = torch.randperm(n, generator=shuffle)
            for start in range(0, n, size):
                rows = x[order[start : start + size]]
                if self._previous is not None:
                    rows = torch.cat([rows, self._previous[1].sample(len(rows), self._draws)])
                loss = vae.loss(rows, self._draws)
                optimizer.zero_grad()
                torch.autograd.backward(loss)
                optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
            from perennial.exceptions import TrainingDivergedError

            raise TrainingDivergedError(
                f"{self!r}: the generator's weights are no longer finite; lower gen_lr"
            )
