"""Input perturbation (Bai et al. 2021) as a training defense: the target trains on the upload that
`protect_data` makes from its training records, so the battery and ``compare`` judge it like any other
training defense, and the aware attacker's shadow models are trained on uploads made the same way
(same generator, eps and alpha)."""
from __future__ import annotations

from typing import Optional

from ...training.target import train_target
from ..base import TrainingDefense, register_defense
from ..perturbation import (Feedback, LeakageEvaluator, Simulator, check_protection_args,
                            create_generator, parse_generator_params, protect_data)


def default_eps(dims: int) -> float:
    """The paper's MNIST threshold (squared L2 100 on 784 pixels) scaled to ``dims`` dimensions."""
    return 100.0 * dims / 784


@register_defense
class InputPerturbation(TrainingDefense):
    """Hyperparameters: ``generator`` (fgsm, advgan, optmargin) with ``generator_params`` ("key=value
    key=value", e.g. "epochs=2" for AdvGAN); ``eps``, a squared L2 distance on the data's [0, 1] scale
    by default (None: the paper's MNIST threshold of Figs. 4-5 and 7, 100 on 784 pixels, scaled to the
    record's size: 100 * D / 784); ``alpha``, the share of records perturbed; ``rounds`` (m);
    ``candidates`` (K); ``simulators``, the simulator's models; ``simulator_epochs`` (default: the
    target's epochs); ``strength``, the starting floor as a fraction of the eps radius; ``distance``,
    ``fallback``, ``label_reference`` (see `protect_data`); ``tau`` / ``gap_max``, the feedback's
    target. Needs reference records (the evaluator's X_infer)."""

    name = "input-perturbation"
    description = "upload perturbed training data chosen against a simulator (Bai et al. 2021)"
    uses = frozenset({"reference", "engine"})

    def __init__(self, *, generator: str = "fgsm", generator_params: str = "", eps: Optional[float] = None,
                 alpha: float = 1.0, rounds: int = 3, candidates: int = 8, simulators: int = 5,
                 simulator_epochs: Optional[int] = None, strength: float = 0.25, distance: str = "squared-l2",
                 fallback: str = "original", label_reference: str = "simulator", tau: float = 0.02,
                 gap_max: float = 0.05):
        parse_generator_params(generator, generator_params)  # an unknown generator or parameter fails here
        check_protection_args(1.0 if eps is None else eps, alpha, rounds, candidates, distance, fallback,
                              label_reference)
        if simulators < 1 or (simulator_epochs is not None and simulator_epochs < 1) or not 0 < strength <= 1:
            raise ValueError("input-perturbation: simulators >= 1, simulator_epochs >= 1 and strength in (0, 1]")
        Feedback(tau=tau, gap_max=gap_max)
        self.generator, self.generator_params, self.eps, self.alpha = generator, generator_params, eps, alpha
        self.rounds, self.candidates, self.simulators, self.simulator_epochs = rounds, candidates, simulators, \
            simulator_epochs
        self.strength, self.distance, self.fallback, self.label_reference = strength, distance, fallback, \
            label_reference
        self.tau, self.gap_max = tau, gap_max
        self.last_protection = None

    def make_generator(self):
        return create_generator(self.generator, **parse_generator_params(self.generator, self.generator_params))

    def simulator(self, model, *, epochs: int, lr: float, seed: int, device="cpu", engine=None) -> Simulator:
        """A new simulator of ``model``'s architecture, trained like the target (``epochs``, ``lr``), its
        models units of ``engine`` (default: this process)."""
        return Simulator(model, num_models=self.simulators, epochs=self.simulator_epochs or epochs, lr=lr, seed=seed,
                         device=device, engine=engine)

    def protect(self, model, x, y, reference, *, epochs: int, lr: float, seed: int, device="cpu", progress=False,
                log=None, simulator: Optional[Simulator] = None, constrained: bool = True, engine=None):
        """`protect_data` on (x, y) with ``reference`` as X_infer and a simulator of ``model``'s
        architecture trained on ``engine`` (or ``simulator``, already fitted on the originals)."""
        eps = self.eps if self.eps is not None else default_eps(x[0].numel())
        simulator = simulator or self.simulator(model, epochs=epochs, lr=lr, seed=seed, device=device, engine=engine)
        return protect_data(x, y, *reference, generator=self.make_generator(), simulator=simulator,
                            evaluator=LeakageEvaluator(seed=seed), feedback=Feedback(tau=self.tau, gap_max=self.gap_max),
                            eps=eps, alpha=self.alpha, rounds=self.rounds, candidates=self.candidates,
                            distance=self.distance, strength=self.strength, fallback=self.fallback,
                            label_reference=self.label_reference, constrained=constrained, seed=seed, log=log,
                            progress=progress)

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference, engine=None) -> dict:
        protection = self.protect(model, x, y, reference, epochs=epochs, lr=lr, seed=seed, device=device,
                                  progress=progress, engine=engine)
        self.last_protection = protection
        history = train_target(model, protection.x, y, epochs=epochs, lr=lr, seed=seed, device=device,
                               progress=progress, desc="target (input perturbation)")
        summary = protection.summary()
        history["input_perturbation"] = {k: summary[k] for k in ("selected", "perturbed", "fallbacks",
                                                                  "mean_distance", "before", "after")}
        return history
