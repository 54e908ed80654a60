"""Networks and optimisers shared by the algorithms: the tanh-squashed Gaussian actor
(:class:`MLPActor`), an ensemble of Q-networks evaluated in one batched pass (:class:`EnsembleCritic`),
fused Adam, the space check for vector observations and the CPU allocator tuning.

Speed notes (the trainer spends its life in these): weights are stored ``(in, out)`` and applied with
``addmm``/``baddbmm`` (the layouts BLAS is fast at), ``ParameterList`` iteration is avoided on the hot
path, the critic's one-unit output layer is a multiply-and-sum instead of a degenerate matmul.
"""
from __future__ import annotations

import ctypes
import math
import sys
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..actor import ActorModule

__all__ = ["MLPActor", "EnsembleCritic", "fused_adam", "check_vector_spaces", "tune_cpu_allocator"]

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# the allocator
# ------------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def tune_cpu_allocator(trim_threshold: int = 256 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed ``malloc`` memory in the process instead of returning it to the OS at once.

    Each SAC update allocates and frees a few MB of activations and gradients (0.5 MB per
    ``(2, 256, 256)`` tensor). glibc serves blocks over 128 KB with ``mmap`` and trims the top of
    the heap as soon as 128 KB-1 MB is free there, so every update pays for the same memory again
    as ~200 page faults. Raising both thresholds (``mallopt``) makes those blocks come from a heap
    that stays mapped. Process-wide and idempotent; returns whether it is in effect (false off
    glibc, e.g. macOS, Windows, musl). Equivalent to starting Python with
    ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=...``.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                            and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _allocator_tuned


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# spaces
# ------------------------------------------------------------------------------------------------
def check_vector_spaces(observation_space, action_space, algorithm: str = "SAC") -> tuple[int, int]:
    """Return ``(obs_dim, act_dim)``; refuse what the actor-critics written here (SAC, TD3) cannot
    handle, with messages naming ``algorithm``."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Box):
        raise TypeError(f"{algorithm} needs a continuous gymnasium.spaces.Box action space, got "
                        f"{action_space!r}; discretise nothing, use a Box (or another algorithm)")
    if len(action_space.shape) != 1:
        raise ValueError(f"{algorithm} needs a 1-D Box action space, got shape {action_space.shape}; "
                         f"flatten the actions with a wrapper")
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"{algorithm} squashes actions into the Box bounds, which must be finite with "
                         f"high > low; got low={action_space.low}, high={action_space.high}. "
                         f"Wrap the environment with bounded actions (e.g. RescaleAction)")
    if not isinstance(observation_space, spaces.Box):
        raise TypeError(f"{algorithm} needs vector observations (a 1-D gymnasium.spaces.Box), got "
                        f"{observation_space!r}; flatten them, e.g. with gymnasium's "
                        f"FlattenObservation wrapper")
    if len(observation_space.shape) != 1:
        raise ValueError(f"{algorithm} needs vector observations (a 1-D Box), got an observation space of "
                         f"shape {observation_space.shape}; flatten them, e.g. with gymnasium's "
                         f"FlattenObservation wrapper")
    return int(observation_space.shape[0]), int(action_space.shape[0])


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# the policy
# ------------------------------------------------------------------------------------------------
class BoxMLPPolicy(ActorModule):
    """What the MLP policies for Box actions share: the layers, the action bounds, and the
    one-observation path of ``act``.

    Weights are stored (in, out) and applied with addmm, whose weight gradient is then
    input^T @ grad: BLAS runs that shape several times faster than nn.Linear's grad^T @ input for
    the skinny first layer. Initialised like nn.Linear. ``weights()`` holds only the network
    parameters: the rescaling is derived from the action space.
    """

    def __init__(self, observation_space, action_space, hidden_sizes: Sequence[int], out_dim: int,
                 algorithm: str = "SAC"):
        super().__init__(observation_space, action_space)
        obs_dim, act_dim = check_vector_spaces(observation_space, action_space, algorithm)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        sizes = [obs_dim, *map(int, hidden_sizes), out_dim]
        self.kernels = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.kernels.append(nn.Parameter(torch.empty(fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(fan_out).uniform_(-bound, bound)))
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2.0, persistent=False)
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        # (kernel, bias) pairs as a plain tuple: iterating a ParameterList costs ~10 us per call,
        # as much as the rest of act() on a small network.
        self._layers = tuple(zip(self.kernels, self.biases))
        self._on_cpu = self.action_scale.device.type == "cpu"

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_layers()  # .to()/.cuda() may replace the parameter objects
        return out

    def scale_action(self, action: torch.Tensor) -> torch.Tensor:
        """Squashed [-1, 1] actions -> environment units."""
        return torch.addcmul(self.action_bias, action, self.action_scale)

    def _observation_row(self, obs) -> torch.Tensor:
        """One observation as a ``(1, obs_dim)`` float32 tensor on the policy's device."""
        array = np.asarray(obs, dtype=np.float32)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
            array = array.copy()
        x = torch.from_numpy(array).reshape(1, -1)
        return x if self._on_cpu else x.to(self.action_scale.device)

    def _environment_action(self, squashed: torch.Tensor) -> np.ndarray:
        """A ``(1, act_dim)`` squashed action -> one float32 environment action within the bounds
        (tanh may round to exactly +-1 and the rescale then overshoot a bound by an ulp)."""
        action = torch.clamp(self.scale_action(squashed), self.action_low, self.action_high)
        return action.reshape(-1).cpu().numpy()


class MLPActor(BoxMLPPolicy):
    """Tanh-squashed Gaussian policy: ``a = tanh(mu + std * eps)``, rescaled to the Box bounds.

    ``forward`` works in the squashed space [-1, 1] (what the learner needs); ``act`` returns
    environment actions. The last layer outputs the mean and the log-std together (one matmul for
    both).
    """

    def __init__(self, observation_space, action_space, hidden_sizes: Sequence[int] = (256, 256)):
        act_dim = int(np.prod(getattr(action_space, "shape", None) or (0,)))
        super().__init__(observation_space, action_space, hidden_sizes, 2 * act_dim)
        self._logprob_const = self.act_dim * (_HALF_LOG_2PI + 2.0 * _LOG_2)

    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std of the pre-tanh Gaussian, for a batch ``(B, obs_dim)``."""
        *hidden, (w_out, b_out) = self._layers
        h = obs
        for w, b in hidden:
            h = torch.addmm(b, h, w).relu_()  # in place: addmm's backward needs no output
        mu, log_std = torch.addmm(b_out, h, w_out).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, obs: torch.Tensor, test: bool = False, with_logprob: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(action in [-1, 1], log-probability of that action or None)`` for a batch ``(B, obs_dim)``.

        ``test=True`` is deterministic (``tanh(mu)``); ``generator`` draws the noise (default: torch's
        global generator). The log-probability includes the tanh
        change of variables, in its numerically stable form
        ``log(1 - tanh(u)^2) = 2 log 2 - 2 logaddexp(u, -u)``.
        """
        if obs.dim() == 1:  # one observation: answer for a batch of one, without the batch dim
            action, logprob = self.forward(obs.unsqueeze(0), test, with_logprob, generator)
            return action[0], (None if logprob is None else logprob[0])
        mu, log_std = self._dist(obs)
        if test:
            u = mu
            gauss = -log_std
        else:
            noise = (torch.randn_like(mu) if generator is None else
                     torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device))
            u = torch.addcmul(mu, log_std.exp(), noise)
            # log N(u; mu, std) + log(2 pi)/2 = -noise^2/2 - log_std, with noise = (u - mu) / std
            gauss = noise.square().mul_(-0.5) - log_std
        action = torch.tanh(u)
        if not with_logprob:
            return action, None
        # log(1 - tanh(u)^2) = 2 log 2 - 2 log(e^u + e^-u): exact and stable for any u.
        per_dim = torch.add(gauss, torch.logaddexp(u, -u), alpha=2.0)
        logprob = per_dim.sum(dim=-1) - self._logprob_const
        return action, logprob

    def act(self, obs, test: bool = False) -> np.ndarray:
        """One environment action (float32, within the Box bounds) for one observation."""
        with torch.no_grad():
            mu, log_std = self._dist(self._observation_row(obs))
            u = mu if test else torch.addcmul(mu, log_std.exp_(), torch.randn_like(mu))
            return self._environment_action(u.tanh_())


# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# the critics
# ------------------------------------------------------------------------------------------------
class EnsembleCritic(nn.Module):
    """``n`` independent Q-network MLPs evaluated in one pass with batched matmuls.

    Layer ``i`` has weight ``(n, in, out)`` and bias ``(n, 1, out)``, initialised like
    ``nn.Linear`` (uniform in ``+-1/sqrt(in)``), so each member is an ordinary MLP. The output
    layer (``out = 1``) is computed as a multiply-and-sum instead of a matmul: BLAS is slow on
    such degenerate shapes (``k = 1`` outer products in the backward pass cost 15x more).

    Options for the regularised critics of DroQ and CrossQ, applied in each hidden layer after its
    linear map and before the ReLU (after the ReLU with ``norm_after_activation``, CrossQ's order),
    each member with its own parameters and statistics:
    ``dropout`` (the probability, active in ``train()`` mode only), ``layer_norm`` (normalised over
    the features, with a learned per-member scale and shift) and ``batch_norm`` (normalised over the
    batch with running statistics for ``eval()`` mode, ``batch_norm_momentum`` their update rate).
    All off by default: the plain critic runs the code path it always did.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (256, 256),
                 n: int = 2, *, dropout: float = 0.0, layer_norm: bool = False,
                 batch_norm: bool = False, batch_norm_momentum: float = 0.01, eps: float = 1e-5,
                 norm_after_activation: bool = False):
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if layer_norm and batch_norm:
            raise ValueError("choose layer_norm or batch_norm, not both")
        if not 0.0 < float(batch_norm_momentum) <= 1.0:
            raise ValueError(f"batch_norm_momentum must be in (0, 1], got {batch_norm_momentum!r}")
        self.n = n
        self.dropout, self.layer_norm, self.batch_norm = float(dropout), bool(layer_norm), bool(batch_norm)
        self.batch_norm_momentum, self.eps = float(batch_norm_momentum), float(eps)
        self.norm_after_activation = bool(norm_after_activation)
        sizes = [obs_dim + act_dim, *map(int, hidden_sizes), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norm_scales = nn.ParameterList()
        self.norm_shifts = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
            if (self.layer_norm or self.batch_norm) and i < len(sizes) - 2:
                self.norm_scales.append(nn.Parameter(torch.ones(n, 1, fan_out)))
                self.norm_shifts.append(nn.Parameter(torch.zeros(n, 1, fan_out)))
                if self.batch_norm:
                    self.register_buffer(f"running_mean_{i}", torch.zeros(n, 1, fan_out))
                    self.register_buffer(f"running_var_{i}", torch.ones(n, 1, fan_out))
        self._plain = not (self.dropout or self.layer_norm or self.batch_norm)
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        self._layers = tuple(zip(self.weights, self.biases))  # ParameterList iteration is slow
        self._norms = tuple(zip(self.norm_scales, self.norm_shifts))

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_layers()
        return out

    def _regularise(self, h: torch.Tensor, i: int, detach_params: bool) -> torch.Tensor:
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        if self._norms:
            scale, shift = self._norms[i]
            if detach_params:
                scale, shift = scale.detach(), shift.detach()
            if self.layer_norm:
                h = nn.functional.layer_norm(h, h.shape[-1:], eps=self.eps)
            else:  # batch norm, per member over the batch
                mean_buf, var_buf = getattr(self, f"running_mean_{i}"), getattr(self, f"running_var_{i}")
                if self.training:
                    var, mean = torch.var_mean(h, dim=1, keepdim=True, unbiased=False)
                    with torch.no_grad():
                        mean_buf.lerp_(mean, self.batch_norm_momentum)
                        var_buf.lerp_(var, self.batch_norm_momentum)
                else:
                    mean, var = mean_buf, var_buf
                h = (h - mean) * torch.rsqrt(var + self.eps)
            h = torch.addcmul(shift, h, scale)
        return h

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach_params: bool = False,
                members: torch.Tensor | None = None) -> torch.Tensor:
        """Q-values ``(n, B)`` of ``(obs, action)`` (both ``(B, ·)``).

        ``detach_params=True`` lets gradients flow to the inputs only (for the actor loss).
        ``members`` (a 1-D index tensor, plain critics only) evaluates only those members, giving
        ``(len(members), B)``: REDQ's random subset of target critics, at that subset's cost.
        """
        x = torch.cat((obs, action), dim=-1)
        layers = self._layers
        if members is not None:
            if not self._plain:
                raise ValueError("members= is for plain critics (no dropout or normalisation)")
            layers = tuple((w[members], b[members]) for w, b in layers)
        n = layers[0][0].shape[0]
        h = x.unsqueeze(0).expand(n, *x.shape)
        if detach_params:
            layers = tuple((w.detach(), b.detach()) for w, b in layers)
        *hidden, (w_out, b_out) = layers
        for i, (w, b) in enumerate(hidden):
            h = torch.baddbmm(b, h, w)
            if self.norm_after_activation:  # linear -> ReLU -> dropout/norm (CrossQ's order)
                h = self._regularise(h.relu_(), i, detach_params)
                continue
            if not self._plain:
                h = self._regularise(h, i, detach_params)
            h = h.relu_()  # in place: neither baddbmm's nor the norms' backward needs this output
        # (n, B, H) * (n, 1, H) summed over H, plus the (n, 1) bias
        q = torch.mul(h, w_out.transpose(1, 2)).sum(dim=-1)
        return q + b_out.view(n, 1)


# ------------------------------------------------------------------------------------------------


def fused_adam(params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
          weight_decay: float) -> torch.optim.Adam:
    """Fused Adam (one kernel for all tensors) where this torch has it for the parameters' device,
    else the multi-tensor (foreach) one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)
