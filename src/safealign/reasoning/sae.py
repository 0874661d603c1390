"""A top-k sparse autoencoder over residual-stream activations (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z = TopK(ReLU(W_enc (x − b_dec) + b_enc))        x̂ = Σ_i z_i · d_i + b_dec

with decoder directions d_i = W_dec[i] of unit norm (the rows are normalised in every forward
pass while training, and saved normalised). The loss is the reconstruction's fraction of
variance unexplained, FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖², plus α · the auxiliary loss that revives
dead latents: the k_aux largest pre-activations among latents that have not fired for
`dead_after` training tokens reconstruct the residual e = x − x̂, scored as
Σ‖e − ê‖² / Σ‖e − ē‖² (α = 1/32, k_aux = D/2, the paper's choices).

A folder holds `cfg.json` and `sae.safetensors` with `encoder.weight` (L × D), `encoder.bias`
(L), `W_dec` (L × D) and `b_dec` (D): the layout of EleutherAI's `sparsify`, so published
top-k SAEs in that layout load as they are (`load_sae`). Ours add the model, layer and
training figures to `cfg.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safealign.config import ConfigError

CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"


class SAEError(ConfigError):
    """An SAE folder that cannot be read, or settings that cannot work; the message says which."""


@dataclass
class SAEConfig:
    d_in: int
    num_latents: int
    k: int
    normalize_decoder: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # model, layer, training figures

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.num_latents:
            raise SAEError(f"k: must be in 1 … num_latents ({self.num_latents}), got {self.k}")
        if self.d_in < 1:
            raise SAEError(f"d_in: must be at least 1, got {self.d_in}")


@dataclass
class SAEOutput:
    reconstruction: Tensor  # size = (N, D)
    top_acts: Tensor  # size = (N, k)
    top_indices: Tensor  # size = (N, k)
    fvu: Tensor  # scalar
    auxk_loss: Tensor  # scalar (0 without dead latents)


class TopKSAE(nn.Module):
    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.d_in, cfg.num_latents)
        self.encoder.bias.data.zero_()
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("since_fired", torch.zeros(cfg.num_latents, dtype=torch.long))
        with torch.no_grad():
            self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def directions(self) -> Tensor:
        """Decoder rows, unit norm when `normalize_decoder`, size = (L, D)."""
        if not self.cfg.normalize_decoder:
            return self.W_dec
        return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def pre_acts(self, x: Tensor) -> Tensor:
        """ReLU(W_enc (x − b_dec) + b_enc), size = (N, L)."""
        return F.relu(self.encoder(x.to(self.b_dec.dtype) - self.b_dec))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(values, latent indices) of the k largest pre-activations, each size = (N, k)."""
        return self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)

    def decode(self, top_acts: Tensor, top_indices: Tensor, bias: bool = True) -> Tensor:
        """Σ_i z_i · d_i (+ b_dec), size = (N, D)."""
        out = torch.einsum("nk,nkd->nd", top_acts, self.directions()[top_indices])
        return out + self.b_dec if bias else out

    def dense(self, x: Tensor) -> Tensor:
        """The sparse code as a dense matrix (zeros off the top k), size = (N, L)."""
        acts, indices = self.encode(x)
        return torch.zeros(x.size(0), self.cfg.num_latents, dtype=acts.dtype, device=acts.device).scatter_(1, indices, acts)

    def forward(self, x: Tensor, dead: Tensor | None = None) -> SAEOutput:
        x = x.to(self.b_dec.dtype)
        pre = self.pre_acts(x)
        top_acts, top_indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        recon = self.decode(top_acts, top_indices)
        error = x - recon
        total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        fvu = error.pow(2).sum() / total
        auxk = x.new_zeros(())
        if dead is not None and bool(dead.any()):
            k_aux = min(max(1, self.cfg.d_in // 2), int(dead.sum()))
            aux_acts, aux_indices = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
            aux_acts = torch.where(torch.isfinite(aux_acts), aux_acts, torch.zeros_like(aux_acts))
            guess = self.decode(aux_acts, aux_indices, bias=False)
            auxk = (guess - error.detach()).pow(2).sum() / (error.detach() - error.detach().mean(0)).pow(2).sum().clamp_min(1e-12)
        return SAEOutput(recon, top_acts, top_indices, fvu, auxk)

    def note_fired(self, top_acts: Tensor, top_indices: Tensor) -> None:
        """Advance the tokens-since-fired counter by a batch (training)."""
        fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
        fired[top_indices[top_acts > 0]] = True
        self.since_fired += top_acts.size(0)
        self.since_fired[fired] = 0

    def save(self, folder: str | Path) -> Path:
        """Write `cfg.json` and `sae.safetensors` (decoder rows normalised)."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"encoder.weight": self.encoder.weight.data, "encoder.bias": self.encoder.bias.data,
                   "W_dec": self.directions().data, "b_dec": self.b_dec.data}
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
        cfg = asdict(self.cfg)
        meta = cfg.pop("meta")
        (out / CONFIG_FILE).write_text(json.dumps({**cfg, "expansion_factor": self.cfg.num_latents // self.cfg.d_in,
                                                   "safealign": meta}, indent=2))
        return out


def load_sae(folder: str | Path) -> TopKSAE:
    """An SAE from a folder in the layout above (ours, or a published one)."""
    from safetensors.torch import load_file

    root = Path(folder)
    if not (root / CONFIG_FILE).exists() or not (root / WEIGHTS_FILE).exists():
        raise SAEError(f"{root}: not an SAE folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads((root / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise SAEError(f"{root / CONFIG_FILE}: not JSON ({error})") from None
    tensors = load_file(str(root / WEIGHTS_FILE))
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(tensors)
    if missing:
        raise SAEError(f"{root / WEIGHTS_FILE}: missing tensor(s) {sorted(missing)}")
    latents, d_in = tensors["encoder.weight"].shape
    for key in ("k",):
        if key not in raw:
            raise SAEError(f"{root / CONFIG_FILE}: missing field {key!r}")
    if raw.get("d_in", d_in) != d_in or raw.get("num_latents", latents) not in (latents, 0):
        raise SAEError(f"{root}: {CONFIG_FILE} says d_in {raw.get('d_in')}, num_latents {raw.get('num_latents')}; "
                       f"the weights are {latents} × {d_in}")
    if tensors["W_dec"].shape != (latents, d_in) or tensors["b_dec"].shape != (d_in,):
        raise SAEError(f"{root / WEIGHTS_FILE}: W_dec {tuple(tensors['W_dec'].shape)} / b_dec {tuple(tensors['b_dec'].shape)} "
                       f"do not match encoder.weight {latents} × {d_in}")
    sae = TopKSAE(SAEConfig(d_in, latents, int(raw["k"]), bool(raw.get("normalize_decoder", True)), raw.get("safealign", {})))
    with torch.no_grad():
        sae.encoder.weight.copy_(tensors["encoder.weight"])
        sae.encoder.bias.copy_(tensors["encoder.bias"])
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_dec.copy_(tensors["b_dec"])
    return sae.eval()


@torch.no_grad()
def reconstruction_report(sae: TopKSAE, values: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Fraction of variance explained, dead latents (never in a top k here), mean active latents per token."""
    mean = values.mean(0)
    error = total = 0.0
    fired = torch.zeros(sae.cfg.num_latents, dtype=torch.bool)
    active = 0
    for start in range(0, len(values), batch_size):
        x = values[start : start + batch_size]
        acts, indices = sae.encode(x)
        recon = sae.decode(acts, indices)
        error += float((x - recon).pow(2).sum())
        total += float((x - mean).pow(2).sum())
        fired[indices[acts > 0]] = True
        active += int((acts > 0).sum())
    n = max(1, len(values))
    return {"fve": 1.0 - error / max(total, 1e-12), "dead_latents": int((~fired).sum()), "dead_share": float((~fired).float().mean()),
            "active_per_token": active / n, "tokens": len(values)}

