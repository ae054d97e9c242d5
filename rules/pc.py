"""Predictive coding: blocks relax latent states, then learn from their own errors.

A chain of blocks holds latent states ``z_1 .. z_L`` above the clamped data
``z_0``. The body ``f_i`` of block ``i`` predicts its state from the state
below, and the block owns the energy of its prediction error (Whittington and
Bogacz, Neural Computation 2017):

    mu_i = f_i(z_{i-1}),    e_i = z_i - mu_i,
    E_i = 1/(2B) sum_b ||e_i[b]||^2

half the squared error summed over units and averaged over the ``B`` samples
of the batch. Inference lowers ``E = sum_i E_i`` by gradient descent on the
free states, each sample on its own (so the step size ``gamma`` does not
depend on the batch size):

    z_i <- z_i - gamma * (e_i - J_{i+1}^T e_{i+1}),   J_{i+1} = df_{i+1}/dz_i

where ``J_{i+1}^T e_{i+1}`` is the message block ``i+1`` sends down, detached.
After ``T`` steps every block learns from its own energy with its input
detached, ``dW_i = -eta dE_i/dW_i``; for a linear body followed by ``phi``
this is ``eta/B sum_b (e_i * phi') z_{i-1}^T``: error times presynaptic
activity. The loop itself lives in :mod:`localearn.inference`.

Where the nonlinearity sits. The body is the whole map from the state below to
the prediction, so the network's ``split`` chooses the form:

* blocks ``[linear, gelu]`` predict ``mu_i = gelu(W_i z_{i-1} + b_i)``: states
  are activities after the nonlinearity, as in PCX's MLP (Pinchetti et al.,
  2024, "Benchmarking predictive coding networks -- made simple");
* blocks that start with the nonlinearity, ``[gelu, linear]``, predict
  ``mu_i = W_i gelu(z_{i-1}) + b_i``: states are pre-activations, the form of
  Whittington and Bogacz (2017).

Both have the same feedforward pass, which is what probes and the readout use.

Modes:

* ``supervised``: data and label clamped; the last block's state is the
  one-hot label, so its energy is ``1/(2B) sum_b ||onehot_b - f_L(z_{L-1})||^2``.
  With predictions held at their feedforward values during inference
  (``fixed_prediction``), the errors settle on backprop's gradients and the
  weight updates equal backprop's on :meth:`PredictiveCoding.reference_loss`
  (Millidge, Tschantz and Buckley, 2020, "Predictive coding approximates
  backprop along arbitrary computation graphs"; Song et al., NeurIPS 2020,
  "Can the brain do backpropagation? Exact implementation of backpropagation
  in predictive coding networks", Z-IL).
* ``generative``: only the data is clamped. Predictions that run only upward
  would then relax to zero error everywhere (each state settles on its
  feedforward prediction) and nothing would be learned; the data has to be
  predicted. So each block also owns a decoder head ``g_i`` that predicts
  the state below from its own, the top-down direction of Rao and Ballard
  (Nature Neuroscience 1999) and of Bogacz's tutorial (Journal of
  Mathematical Psychology 2017). The body stays in the energy as the
  amortised, bottom-up path of hybrid predictive coding (Tschantz, Millidge,
  Seth and Buckley, PLOS Computational Biology 2023): it starts inference and
  learns to predict the states inference settles on, so the feedforward pass
  that probes read learns too. The block's energy is

      E_i = 1/(2B) sum_b (||z_i - f_i(z_{i-1})||^2 + ||z_{i-1} - g_i(z_i)||^2)

  with ``g_i(z) = V_i h(z) + c_i`` (``h`` is ``decoder_activation``), a
  linear map for vector states and, for convolutional states, nearest
  upsampling to the input's grid followed by a 3x3 convolution.

Incremental predictive coding (``incremental``) updates the weights at every
inference step instead of once after it (Salvatori et al., ICLR 2024, "A
stable, fast, and fully automatic learning algorithm for predictive coding
networks").

Example:
    >>> import torch
    >>> from localearn.network import Network
    >>> from localearn.schedulers import SchedulerConfig, Trainer
    >>> net = Network.from_config(
    ...     {"layers": [{"type": "linear", "out": 16}, {"type": "gelu"},
    ...                 {"type": "linear", "out": 3}],
    ...      "split": [2], "rule": {"name": "pc", "inference_steps": 4}},
    ...     in_shape=(5,), n_classes=3)
    >>> x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    >>> _ = Trainer(net, SchedulerConfig(epochs=1, batch_size=16), x, y).run()
    >>> len(net.blocks["block2"].rule.traces()["energy"])
    5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from localearn.errors import ShapeError
from localearn.inference import InferenceRecord, gaussian_energy
from localearn.rule import BlockContext, EnergyRule, require

MODES = ("supervised", "generative")
ACTIVATIONS = {
    "none": nn.Identity,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def one_hot_target(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot labels shaped and typed like ``like`` (``(B, n_classes)``)."""
    return F.one_hot(labels, like.shape[1]).to(like.dtype)


def make_decoder(
    state_shape: tuple[int, ...], input_shape: tuple[int, ...], activation: str
) -> nn.Module:
    """Top-down head ``g(z) = V h(z) + c`` from a block's state to its input.

    Args:
        state_shape: per-sample shape of the block's state (its output).
        input_shape: per-sample shape of the block's input.
        activation: ``h``, a key of :data:`ACTIVATIONS`.

    Returns:
        For two convolutional shapes of the same rank, nearest upsampling to
        the input's grid then a 3x3 convolution; otherwise a linear map of the
        flattened state, reshaped to the input.

    Example:
        >>> make_decoder((8, 4, 4), (1, 8, 8), "relu")(torch.zeros(2, 8, 4, 4)).shape
        torch.Size([2, 1, 8, 8])
    """
    act = ACTIVATIONS[activation]()
    if len(state_shape) == len(input_shape) and len(state_shape) in (2, 3):
        conv = nn.Conv2d if len(state_shape) == 3 else nn.Conv1d
        return nn.Sequential(
            act,
            nn.Upsample(size=tuple(input_shape[1:]), mode="nearest"),
            conv(state_shape[0], input_shape[0], 3, padding=1),
        )
    return nn.Sequential(
        act,
        nn.Flatten(),
        nn.Linear(math.prod(state_shape), math.prod(input_shape)),
        nn.Unflatten(1, tuple(input_shape)),
    )


@dataclass
class PCConfig:
    """Hyperparameters of :class:`PredictiveCoding`.

    Attributes:
        mode: ``supervised`` (data and label clamped) or ``generative`` (only
            the data clamped; each block adds a top-down decoder head).
        inference_steps: ``T``, inference steps per batch (PCX's MLP: 8).
        inference_lr: ``gamma``, the step size of the state updates.
        inference_momentum: heavy-ball momentum of the state updates.
        inference_tolerance: stop inference once a step lowers the total
            energy by less than this fraction of it; 0 always runs T steps.
        inference_backoff: when a step raises the total energy, undo it and
            multiply the step size by this factor for the rest of the batch;
            1 never backs off.
        max_energy_ratio: raise :class:`~localearn.errors.DivergenceError` when
            the total energy grows past this multiple of its initial value.
        incremental: update the weights at every inference step (iPC).
        fixed_prediction: hold predictions and their Jacobians at the
            feedforward pass during inference (the fixed-prediction limit);
            with ``inference_lr`` 1 and T at least the number of blocks minus
            one, the weight updates equal backprop's gradients.
        decoder_activation: generative mode: ``h`` in ``g(z) = V h(z) + c``,
            one of ``none``, ``relu``, ``gelu``, ``tanh``, ``sigmoid``.
    """

    mode: str = "supervised"
    inference_steps: int = 8
    inference_lr: float = 0.1
    inference_momentum: float = 0.0
    inference_tolerance: float = 0.0
    inference_backoff: float = 0.5
    max_energy_ratio: float = 1e4
    incremental: bool = False
    fixed_prediction: bool = False
    decoder_activation: str = "none"


class PredictiveCoding(EnergyRule):
    """Predictive coding: relax latent states, then learn from local errors.

    Each block's body predicts its latent state from the state below; the
    states relax by inference (:mod:`localearn.inference`), then every block
    learns from its own prediction error. See the module docstring for the
    equations, the two modes and the papers.

    Args:
        config: the hyperparameters, a :class:`PCConfig`.
    """

    Config = PCConfig
    needs_labels = True
    example = {
        "in_shape": (1, 8, 8),
        "network": {
            "layers": [
                {"type": "linear", "out": 16},
                {"type": "gelu"},
                {"type": "linear", "out": 12},
                {"type": "gelu"},
                {"type": "linear", "out": 10},
            ],
            "split": [2, 4],
        },
        "rule": {"inference_steps": 4},
    }
    invalid = [
        {"mode": "unsupervised"},
        {"inference_steps": 0},
        {"inference_lr": -0.1},
        {"inference_momentum": 1.0},
        {"inference_backoff": 1.5},
        {"max_energy_ratio": 0.5},
        {"decoder_activation": "softmax"},
        {"fixed_prediction": True, "incremental": True},
    ]

    def __init__(self, config: PCConfig) -> None:
        super().__init__(config)
        self.decoder: nn.Module | None = None
        self._last: InferenceRecord | None = None
        self._since: list[InferenceRecord] = []

    def needs_labels_now(self) -> bool:
        return self.config.mode == "supervised"

    def validate(self) -> None:
        c = self.config
        require(c.mode in MODES, "pc", f"mode must be one of {MODES}, got {c.mode!r}")
        require(
            c.inference_steps >= 1,
            "pc",
            f"inference_steps must be >= 1, got {c.inference_steps}",
        )
        require(
            c.inference_lr > 0, "pc", f"inference_lr must be > 0, got {c.inference_lr}"
        )
        require(
            0 <= c.inference_momentum < 1,
            "pc",
            f"inference_momentum must be in [0, 1), got {c.inference_momentum}",
        )
        require(
            c.inference_tolerance >= 0,
            "pc",
            f"inference_tolerance must be >= 0, got {c.inference_tolerance}",
        )
        require(
            0 < c.inference_backoff <= 1,
            "pc",
            f"inference_backoff must be in (0, 1], got {c.inference_backoff}",
        )
        require(
            c.max_energy_ratio > 1,
            "pc",
            f"max_energy_ratio must be > 1, got {c.max_energy_ratio}",
        )
        require(
            c.decoder_activation in ACTIVATIONS,
            "pc",
            f"decoder_activation must be one of {tuple(ACTIVATIONS)}, got "
            f"{c.decoder_activation!r}",
        )
        require(
            not (c.fixed_prediction and c.incremental),
            "pc",
            "fixed_prediction holds the predictions of the weights before "
            "inference, which incremental changes at every step; set one of them",
        )
        require(
            not (c.fixed_prediction and c.mode == "generative"),
            "pc",
            "fixed_prediction is the supervised limit in which predictive coding "
            "equals backprop; it is not defined for mode 'generative'",
        )

    def setup(self, context: BlockContext, body: nn.Module) -> None:
        super().setup(context, body)
        if self.config.mode == "generative":
            self.decoder = make_decoder(
                context.out_shape, context.in_shape, self.config.decoder_activation
            )

    # -- the energy -----------------------------------------------------------

    def predictor(self, body: nn.Module) -> nn.Module:
        """The bottom-up prediction ``mu = f(x)`` of the block's state: its body."""
        return body

    def input_predictor(self) -> nn.Module | None:
        """The top-down prediction ``g(z)`` of the block's input (generative)."""
        return self.decoder

    def energy(self, body: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Half the squared prediction errors, summed over units, batch mean."""
        x_hat = self.decoder(z) if self.decoder is not None else None
        return gaussian_energy(z, body(x), x, x_hat)

    def clamp(
        self, z: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The one-hot label, for the top block of a supervised chain."""
        if self.config.mode != "supervised":
            return None
        ctx = self.context
        if not ctx.is_last:
            raise NotImplementedError(
                f"rule 'pc' (supervised) of block '{ctx.name}': this block is the top "
                "of its inference chain but not the network's last block, so no label "
                "reaches it; every block above it, up to the last, must be an energy "
                "block reading only the one below, so that inference can carry the "
                "label's error down"
            )
        return one_hot_target(labels, self._check_top(z, labels))

    def reference_loss(
        self, y: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Backprop's loss on the same network, the fixed-prediction limit.

        For the last block of a supervised chain ``1/(2B) sum_b ||onehot_b -
        y_b||^2``, the top block's energy with every state at its feedforward
        value; zero for the other blocks, whose errors are then zero.
        """
        if self.config.mode != "supervised":
            raise NotImplementedError(
                "rule 'pc' in mode 'generative' has no reference loss: its energy "
                "needs the data, which reference_loss(y, labels) does not see; "
                "compare a supervised pc network against backprop instead "
                "(evaluate.reference: false here)"
            )
        if not self.context.is_last:
            return y.sum() * 0.0
        return gaussian_energy(one_hot_target(labels, self._check_top(y, labels)), y)

    def _check_top(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        ctx = self.context
        n = ctx.n_classes
        if z.dim() != 2 or z.shape[1] != n:
            raise ShapeError(
                f"rule 'pc' (supervised) of block '{ctx.name}': the last block's "
                f"state is clamped to one-hot labels of {n} classes, but the block "
                f"outputs per-sample shape {tuple(z.shape[1:])}; end the network with "
                f"a linear layer of {n} outputs, or use mode 'generative'"
            )
        if labels is None or len(labels) != len(z):
            found = None if labels is None else len(labels)
            raise ShapeError(
                f"rule 'pc' (supervised) of block '{ctx.name}': {len(z)} states but "
                f"{found} labels; a patch grid gives each image several states, which "
                "supervised predictive coding does not support"
            )
        return z

    # -- what the report shows ------------------------------------------------

    def observe(self, record: InferenceRecord) -> None:
        """Keep the inference record of the last batch (called by the loop)."""
        self._last = record
        self._since.append(record)

    def diagnostics(self) -> dict[str, float]:
        """Energy after inference, averaged over the batches since the last call.

        The scheduler calls this once per epoch, so the figures are epoch means:
        ``energy`` (after inference), ``energy_start`` (at the feedforward
        state), ``inference_steps`` taken, ``inference_lr`` at the end, and
        ``backoffs`` (a total).
        """
        records = self._since or ([self._last] if self._last is not None else [])
        self._since = []
        if not records:
            return {}
        n = len(records)
        return {
            "energy": sum(r.energy[-1] for r in records) / n,
            "energy_start": sum(r.energy[0] for r in records) / n,
            "inference_steps": sum(r.steps for r in records) / n,
            "inference_lr": sum(r.lr for r in records) / n,
            "backoffs": float(sum(r.backoffs for r in records)),
        }

    def traces(self) -> dict[str, list[float]]:
        """The block's energy over the inference steps of the last batch."""
        return {"energy": list(self._last.energy)} if self._last is not None else {}

    def receptive_fields(self, body: nn.Module) -> torch.Tensor | None:
        """Weights of the body's first layer when it reads an image."""
        ctx = self.context
        for layer in body.modules():
            if isinstance(layer, nn.Conv2d):
                return layer.weight.detach()
            if isinstance(layer, nn.Linear):
                if ctx is None or len(ctx.in_shape) != 3:
                    return None
                return layer.weight.detach().reshape(-1, *ctx.in_shape)
        return None
