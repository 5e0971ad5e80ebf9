"""The dual-stream QDM transformer (SPEC section 4).

Input: the normalised latent ``x_in`` (B, Cz, h, w), the timestep ``t`` ((B,) real-valued, or a
per-pixel map (B, 1, h, w) for SDS) and the LR image (B, C, H_lr, W_lr), resized to the latent size
(bicubic when smaller) and concatenated to ``x_in``. The latent is padded (replicate) to a multiple of
16 = 2 x 8 (downstream patch x window) and of the upstream patch, and outputs are cropped back.

- Upstream: DiT on 8x8 patches -> coarse x0 prediction ``up`` and its final hidden states.
- Downstream: 2x2 patches -> tokens in non-overlapping windows of 8x8 tokens (16x16 latent pixels);
  each block does window self-attention + MLP, then cross-attention to the upstream hidden states + MLP.
  Keys/values of the upstream states are projected once per call and shared by all windows.

Conditioning (``cond``): ``"lr"`` concatenates the LR image as in the paper; ``"latent"`` concatenates the
latent ``y`` of the bicubic-upsampled LR instead and adds it to both outputs, so the network predicts the
residual ``x0 - y`` and starts from bicubic quality (zero-initialised output layers). The latter is what
small CPU-trained models need; callers pass :meth:`DualStreamQDM.conditioning` as the ``lr`` argument.

``forward`` (training) runs the downstream everywhere and returns ``(down, up)``. ``forward_sparse``
(inference) gathers the windows holding an active token from the whole batch, runs them in chunks,
scatters them back and returns ``down * m + up * (1 - m)``; a window without active tokens costs nothing.

Sparsity comes in two granularities (``token_sparse``):

- window (the paper's model): a window's tokens attend to each other whatever the mask, so an active
  window is computed whole, inactive tokens included (their outputs are discarded).
- token: a token attends only to the tokens of its window on the same side of the mask (active with
  active, inactive with inactive; the dense path applies this as an attention mask), so an active
  token's output never depends on an inactive one and the sparse path computes the active tokens only.
  Everything else in a block is per token. Models must be trained this way (``forward(token_mask=)``).

The convolutional detail branch is computed on units of 2x2 tokens holding an active token, whatever the
granularity (or over the whole image when most units are active): its valid convolutions give the same pixels
wherever they are cut.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.models import blocks, sparse
from qdm_med.models.blocks import DetailBranch, DiTBlock, FinalLayer, TimestepEmbedder, WindowCrossBlock, sincos_pos_embed_2d
from qdm_med.models.macs import qdm_macs
from qdm_med.models.step_inputs import jump_like, table_at

__all__ = ["QDM_CONFIGS", "DualStreamQDM", "build_qdm"]

#: hidden / depth / heads of both streams (downstream keys default to the upstream's).
QDM_CONFIGS: dict[str, dict[str, Any]] = {
    "S": {"hidden": 384, "depth": 6, "heads": 6},
    "B": {"hidden": 768, "depth": 6, "heads": 12},
    "L": {"hidden": 1024, "depth": 12, "heads": 16},
    # Sizes that train on a 2-core CPU.
    "cpu_small": {"hidden": 128, "depth": 4, "heads": 4, "down_hidden": 96, "down_depth": 2, "down_heads": 4, "detail_channels": 32},
    "tiny": {"hidden": 32, "depth": 2, "heads": 2, "down_hidden": 32, "down_depth": 1, "down_heads": 2},
}


class DualStreamQDM(nn.Module):
    """Dual-stream transformer; see the module docstring. MODEL PROTOCOL of :mod:`qdm_med.diffusion`.

    Args:
        latent_channels: Cz of the first stage's latent.
        lr_channels: channels of the LR image (1 for CT, 3 for photos).
        hidden, depth, heads: upstream DiT size; ``down_*`` the downstream's (default: the same).
        up_patch: upstream patch size (8); down_patch: downstream patch (2); window: tokens per window side (8).
        detail_channels: width of the downstream's convolutional detail branch (0 = none, the paper's model).
            Three 3x3 convolutions on each window's input (plus a halo of 3 latent pixels and the timestep as a
            channel) add pixel-level detail that a linear 2x2-patch embedding learns slowly; the branch runs
            only where the downstream runs, so homogeneous windows still cost nothing.
        detail_blocks: residual blocks (two 3x3 convolutions each) inserted after the branch's first
            convolution, for the local context a plain SR CNN has (the halo grows by 2 per block). New blocks
            start as the identity, so a trained model given more blocks keeps its output
            (:attr:`ADDED_BY_DETAIL_BLOCKS` names their parameters).
        token_sparse: token-level instead of window-level sparsity (module docstring). It changes what the
            model computes (self-attention is split by the mask), not its parameters.
        state_skip_steps: length of a learned gate table g over steps 0..n-1 (0 = none; set it to the
            diffusion's T). Both outputs gain ``g(t) * (x_in - y)``, ``g`` interpolated linearly at real-valued
            (and per-pixel) ``t``: EDM's ``c_skip``. In the x4 probes neither stream learned to copy its state
            at small t, so every plan ended on the image the last call makes from y alone
            (``docs/issue16_probes.md``, twenty-second session). Needs ``cond="latent"``; the gate starts at 0,
            so a trained model given it keeps its output (:attr:`STATE_GATE`).
        jump_conditioning: both streams' modulations also embed the *jump* that made the state: how many steps the
            previous call moved the chain (``t_from - t``; per pixel under SDS). A call of the full chain has jump 1,
            which is what calls without ``jump`` get (the plain training term); a few-step plan's calls get its own
            (TSS-4 on a flat pixel: 1, 0.04, 2.4, 11.6), so training the plan where it runs (``train.unroll``)
            teaches its calls the states its big jumps leave, as shortcut models are conditioned on their step size.
            The embedders start silent (zero output layer), so a trained model given them keeps its output
            (:attr:`JUMP_EMBEDDERS`); the detail branch does not see the jump.
        jump_scale: the jump embedders' output is multiplied by this, so that Adam moves it this many times faster
            than a network weight (as the state gate's scale).
    """

    #: parameter-name prefix of the detail branch's residual blocks (absent from models without them)
    ADDED_BY_DETAIL_BLOCKS = "detail.res."
    #: the state skip's gate table (absent from models without it)
    STATE_GATE = "state_gate"
    #: parameter-name prefixes of the jump embedders (absent from models without them)
    JUMP_EMBEDDERS = ("up_jump.", "down_jump.")
    #: the jump of every call of the full chain, and of calls that pass none
    UNIT_JUMP = 1.0
    #: the gate is stored divided by this, so that Adam's per-step change (about the learning rate) moves it this
    #: many times faster than a network weight: a new gate reaches its value within one fine-tune
    STATE_GATE_SCALE = 10.0
    #: side, in tokens, of the units the sparse path computes the detail branch on (divides the window)
    DETAIL_UNIT = 2
    #: above this fraction of active units the sparse path runs the detail branch over the whole image:
    #: a unit's halo'd block costs 2.4x its own pixels (halo 3), and one large convolution needs no gather
    #: (the same pixels; measured break-even on a 2-core CPU about 0.3, x8 at the shipped threshold)
    DENSE_DETAIL_DENSITY = 0.3
    #: grid lengths of the token-sparse self-attention: a window attends on the shortest holding its tokens
    ATTENTION_LENGTHS = (16, 32)

    def __init__(
        self,
        latent_channels: int,
        lr_channels: int,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        down_hidden: int | None = None,
        down_depth: int | None = None,
        down_heads: int | None = None,
        up_patch: int = 8,
        down_patch: int = 2,
        window: int = 8,
        mlp_ratio: float = 4.0,
        lr_interp: str = "bicubic",
        cond: str = "lr",
        detail_channels: int = 0,
        detail_blocks: int = 0,
        token_sparse: bool = False,
        state_skip_steps: int = 0,
        jump_conditioning: bool = False,
        jump_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if cond not in ("lr", "latent"):
            raise ValueError(f"cond {cond!r}: use 'lr' or 'latent'")
        if state_skip_steps and (cond != "latent" or state_skip_steps < 2):
            raise ValueError(f"state_skip_steps {state_skip_steps}: needs cond='latent' and at least 2 steps (0 = no state skip)")
        self.cond = cond
        self.latent_channels = int(latent_channels)
        self.lr_channels = self.latent_channels if cond == "latent" else int(lr_channels)
        self.hidden, self.depth, self.heads = int(hidden), int(depth), int(heads)
        self.down_hidden = int(down_hidden or hidden)
        self.down_depth = int(down_depth if down_depth is not None else depth)
        self.down_heads = int(down_heads or heads)
        self.up_patch, self.down_patch, self.window = int(up_patch), int(down_patch), int(window)
        self.token_sparse = bool(token_sparse)
        if self.window % self.DETAIL_UNIT:
            raise ValueError(f"window {self.window}: must be a multiple of {self.DETAIL_UNIT} tokens")
        self.mlp_ratio, self.lr_interp = float(mlp_ratio), lr_interp
        self.win_px = self.down_patch * self.window  # latent pixels per window side (16)
        self.multiple = math.lcm(self.up_patch, self.win_px)
        cin = self.latent_channels + self.lr_channels
        # upstream
        self.up_embed = nn.Conv2d(cin, self.hidden, self.up_patch, stride=self.up_patch)
        self.up_t = TimestepEmbedder(self.hidden)
        self.up_blocks = nn.ModuleList([DiTBlock(self.hidden, self.heads, mlp_ratio) for _ in range(self.depth)])
        self.up_final = FinalLayer(self.hidden, self.up_patch, self.latent_channels)
        # downstream
        self.down_embed = nn.Conv2d(cin, self.down_hidden, self.down_patch, stride=self.down_patch)
        self.down_t = TimestepEmbedder(self.down_hidden)
        self.down_blocks = nn.ModuleList(
            [WindowCrossBlock(self.down_hidden, self.hidden, self.down_heads, mlp_ratio) for _ in range(self.down_depth)]
        )
        self.down_final = FinalLayer(self.down_hidden, self.down_patch, self.latent_channels)
        self.detail_channels, self.detail_blocks = int(detail_channels), int(detail_blocks)
        if self.detail_blocks and not self.detail_channels:
            raise ValueError("detail_blocks needs detail_channels > 0")
        self.detail_halo = 3 + 2 * self.detail_blocks  # one pixel per valid 3x3 convolution
        self.detail = None
        if self.detail_channels > 0:
            self.detail = DetailBranch(cin + 1, self.detail_channels, self.latent_channels, self.detail_blocks)
        self.state_skip_steps = int(state_skip_steps)
        self.state_gate = nn.Parameter(torch.zeros(self.state_skip_steps)) if self.state_skip_steps else None
        self.jump_conditioning, self.jump_scale = bool(jump_conditioning), float(jump_scale)
        if self.jump_scale <= 0 or (self.jump_scale != 1.0 and not self.jump_conditioning):
            raise ValueError(f"jump_scale {jump_scale}: must be > 0, and set only with jump_conditioning")
        self.up_jump = TimestepEmbedder(self.hidden) if self.jump_conditioning else None
        self.down_jump = TimestepEmbedder(self.down_hidden) if self.jump_conditioning else None
        # checkpoints written before the branch had named layers load too
        self._register_load_state_dict_pre_hook(lambda sd, prefix, *_: DetailBranch.remap_legacy_keys(sd, prefix))
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------- init
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, zero adaLN and output layers (each block starts as identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.up_embed, self.down_embed):
            nn.init.xavier_uniform_(emb.weight.view(emb.weight.shape[0], -1))
            nn.init.zeros_(emb.bias)
        for te in (self.up_t, self.down_t):
            nn.init.normal_(te.mlp[0].weight, std=0.02)
            nn.init.normal_(te.mlp[2].weight, std=0.02)
        if self.jump_conditioning:  # silent until trained: a model given them keeps its output
            for te in (self.up_jump, self.down_jump):
                nn.init.normal_(te.mlp[0].weight, std=0.02)
                nn.init.zeros_(te.mlp[2].weight)
        for blk in [*self.up_blocks, *self.down_blocks, self.up_final, self.down_final]:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for fin in (self.up_final, self.down_final):
            nn.init.zeros_(fin.linear.weight)
            nn.init.zeros_(fin.linear.bias)
        if self.detail is not None:  # the branch starts silent, like the adaLN-Zero blocks
            nn.init.zeros_(self.detail.conv_out.weight)
            nn.init.zeros_(self.detail.conv_out.bias)

    # ------------------------------------------------------------------------------------- helpers
    def conditioning(self, lr: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What to pass as the model's ``lr`` argument: the LR image, or ``y`` when ``cond="latent"``."""
        return y if self.cond == "latent" else lr

    def _skip(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | float:
        """The residual base added to the outputs: the latent conditioning channels ``y`` (plus the gated state
        ``g(t) * (x_in - y)`` with a state skip), or 0. ``x`` (B, 2Cz, Hp, Wp) and ``t`` as :meth:`_prepare`
        returns them."""
        if self.cond != "latent":
            return 0.0
        y = x[:, self.latent_channels :]
        if self.state_gate is None:
            return y
        return y + self.state_gate_at(t).to(x.dtype) * (x[:, : self.latent_channels] - y)

    def state_gate_at(self, t: torch.Tensor) -> torch.Tensor:
        """The state skip's gate at real-valued steps: (B, 1, 1, 1) for t (B,), (B, 1, Hp, Wp) for a map."""
        return table_at(self.state_gate * self.STATE_GATE_SCALE, t)

    def _prepare(self, x_in: torch.Tensor, t, lr: torch.Tensor, jump=None):
        """Concatenate the resized LR, pad to the stride; returns (x (B,Cin,Hp,Wp), t (B,) or (B,1,Hp,Wp), the jump
        shaped as t (None without ``jump_conditioning``; :attr:`UNIT_JUMP` when not given), (h, w))."""
        b, _, h, w = x_in.shape
        lr = lr.to(x_in.dtype)
        if tuple(lr.shape[-2:]) != (h, w):
            smaller = lr.shape[-2] < h or lr.shape[-1] < w
            mode = self.lr_interp if smaller else "area"
            kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            lr = F.interpolate(lr, size=(h, w), mode=mode, **kw)
        x = torch.cat([x_in, lr], dim=1)
        t = torch.as_tensor(t, dtype=x_in.dtype, device=x_in.device)
        if t.ndim == 0:
            t = t.expand(b)
        hp, wp = -(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple
        pad = (0, wp - w, 0, hp - h)
        if hp != h or wp != w:
            x = F.pad(x, pad, mode="replicate")
        if t.ndim == 4:
            if tuple(t.shape[-2:]) != (h, w):
                raise ValueError(f"timestep map {tuple(t.shape)} does not match the latent size {(h, w)}")
            t = F.pad(t, pad, mode="replicate") if (hp != h or wp != w) else t
        elif t.ndim != 1:
            raise ValueError(f"t must be (B,) or (B, 1, h, w), got {tuple(t.shape)}")
        if not self.jump_conditioning:
            if jump is not None:
                raise ValueError("a jump was given to a model without jump_conditioning")
            return x, t, None, (h, w)
        return x, t, jump_like(self.UNIT_JUMP if jump is None else jump, t, (h, w)), (h, w)

    def _pos(self, dim: int, gh: int, gw: int, ref: torch.Tensor, offset=(0, 0)) -> torch.Tensor:
        return sincos_pos_embed_2d(dim, gh, gw, offset).to(device=ref.device, dtype=ref.dtype)

    def _upstream(self, x: torch.Tensor, t: torch.Tensor, pos_offset=(0, 0), jump: torch.Tensor | None = None):
        """Coarse prediction (B, Cz, Hp, Wp) and final hidden states (B, Nu, D); ``jump`` as :meth:`_prepare` returns it."""
        b, _, hp, wp = x.shape
        p = self.up_patch
        gh, gw = hp // p, wp // p
        tok = self.up_embed(x).flatten(2).transpose(1, 2) + self._pos(self.hidden, gh, gw, x, pos_offset)
        c = self.up_t(t if t.ndim == 1 else F.avg_pool2d(t, p).flatten(1))
        if jump is not None:
            c = c + self.jump_scale * self.up_jump(jump if jump.ndim == 1 else F.avg_pool2d(jump, p).flatten(1))
        for blk in self.up_blocks:
            tok = blk(tok, c)
        out = self.up_final(tok, c)  # (B, Nu, p*p*Cz)
        out = out.view(b, gh, gw, p, p, self.latent_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, self.latent_channels, hp, wp)
        return out, tok

    def _down_conditioning(self, t: torch.Tensor, b: int, hp: int, wp: int, jump: torch.Tensor | None = None):
        """Per-sample modulations [(B, 12D) per block, (B, 2D) final], or per-token timestep windows (B*nWin, 64)
        (with a jump: (B*nWin, 64, 2), the timestep and the jump per token)."""
        if t.ndim == 1:
            c = self.down_t(t) if jump is None else self.down_t(t) + self.jump_scale * self.down_jump(jump)
            return [blk.modulation(c) for blk in self.down_blocks] + [self.down_final.modulation(c)], None
        tw = self._windows(F.avg_pool2d(t, self.down_patch), self.window).flatten(1)  # (B*nWin, 64)
        if jump is None:
            return None, tw
        return None, torch.stack([tw, self._windows(F.avg_pool2d(jump, self.down_patch), self.window).flatten(1)], dim=-1)

    _windows = staticmethod(blocks.window_partition)
    _unwindows = staticmethod(blocks.window_merge)

    #: the timestep enters the detail branch as an input channel t / 10 (t is an unnormalised step index)
    T_INPUT_SCALE = 0.1

    def _t_channel(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, 1, Hp, Wp) the detail branch's timestep channel (an expanded view for a per-sample t)."""
        b, _, hp, wp = x.shape
        tm = t.view(b, 1, 1, 1).expand(b, 1, hp, wp) if t.ndim == 1 else t
        return tm.to(x.dtype) * self.T_INPUT_SCALE

    def _detail_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, Cin+1, Hp+2r, Wp+2r): the input and timestep channel with a replicate halo of r."""
        r = self.detail_halo
        return F.pad(torch.cat([x, self._t_channel(x, t)], dim=1), (r, r, r, r), mode="replicate")

    def _detail_whole(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The detail branch once over the whole padded image -> (B, Cz, Hp, Wp) (the dense path's, and the sparse
        path's when most units are active)."""
        return self.detail(self._detail_input(x, t))

    def _attention_mask(self, win_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Window self-attention mask (n, 1, 64, 64) from the windows' token masks (n, 64): with token
        sparsity a token attends to the tokens on its side of the mask; None for window sparsity."""
        if not self.token_sparse or win_mask is None:
            return None
        return (win_mask[:, :, None] == win_mask[:, None, :])[:, None]

    def _token_grid(self, token_mask, b: int, hp: int, wp: int, device) -> torch.Tensor:
        """The token mask (B, <=Hp/2, <=Wp/2) (None = all active) on the padded token grid (B, Hp/2, Wp/2)."""
        g2h, g2w = hp // self.down_patch, wp // self.down_patch
        if token_mask is None:
            return torch.ones(b, g2h, g2w, dtype=torch.bool, device=device)
        tm = torch.as_tensor(token_mask, device=device).bool()
        if tm.ndim != 3 or tm.shape[0] != b or tm.shape[1] > g2h or tm.shape[2] > g2w:
            raise ValueError(f"token mask {tuple(tm.shape)} does not fit the token grid {(b, g2h, g2w)}")
        grid = torch.zeros(b, g2h, g2w, dtype=torch.bool, device=device)
        grid[:, : tm.shape[1], : tm.shape[2]] = tm
        return grid

    def _token_modulations(self, t_tok: torch.Tensor):
        """Per-token timesteps (...) (with jump conditioning (..., 2): timestep, jump) -> the blocks' and the final
        layer's modulations (..., 12Dd), (..., 2Dd)."""
        jc = self.jump_conditioning
        c = self.down_t(t_tok[..., 0]) + self.jump_scale * self.down_jump(t_tok[..., 1]) if jc else self.down_t(t_tok)
        return [blk.modulation(c) for blk in self.down_blocks], self.down_final.modulation(c)

    def _run_windows(self, tok: torch.Tensor, bidx: torch.Tensor, widx: torch.Tensor, kvs, mods, t_tok, pos_w, halo=None,
                     attn_mask=None) -> torch.Tensor:
        """Downstream blocks on whole windows' tokens (n, 64, Dd) -> pixels (n, Cz, 16, 16).

        ``bidx``/``widx``: batch item and window position of each row; ``kvs``: per block (B, 2, heads, Nu, d);
        ``mods``: per-sample modulations (or None with ``t_tok`` (n, 64) per-token timesteps);
        ``attn_mask``: (n, 1, 64, 64) bool self-attention mask or None.
        """
        tok = tok + pos_w[widx]
        if mods is None:
            block_mods, final_mod = self._token_modulations(t_tok)  # (n, 64, 12Dd), (n, 64, 2Dd)
        else:
            block_mods = [m[bidx] for m in mods[:-1]]
            final_mod = mods[-1][bidx]
        for blk, kv, mod in zip(self.down_blocks, kvs, block_mods):
            tok = blk(tok, kv, mod, bidx, attn_mask)
        out = self.down_final(tok, mod=final_mod)  # (n, 64, 4*Cz)
        n, p, s = tok.shape[0], self.down_patch, self.window
        out = out.view(n, s, s, p, p, self.latent_channels).permute(0, 5, 1, 3, 2, 4).reshape(n, self.latent_channels, s * p, s * p)
        if halo is not None:
            out = out + self.detail(halo)  # valid 3x3 convolutions: (16 + 2r) -> 16
        return out

    def _down_setup(self, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, pos_offset=(0, 0), jump: torch.Tensor | None = None):
        b, _, hp, wp = x.shape
        nwin = (hp // self.win_px) * (wp // self.win_px)
        k = self.up_patch // self.down_patch  # the same shift in downstream tokens
        pos_w = (
            self._windows(
                self._pos(
                    self.down_hidden, hp // self.down_patch, wp // self.down_patch, x, (pos_offset[0] * k, pos_offset[1] * k)
                ).T.reshape(1, self.down_hidden, hp // self.down_patch, wp // self.down_patch),
                self.window,
            )
            .flatten(2)
            .transpose(1, 2)
        )  # (nWin, 64, Dd)
        kvs = [blk.cross.project_kv(hidden) for blk in self.down_blocks]
        mods, t_tok = self._down_conditioning(t, b, hp, wp, jump)
        return nwin, pos_w, kvs, mods, t_tok

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self, x_in: torch.Tensor, t, lr: torch.Tensor, pos_offset: tuple[int, int] = (0, 0), token_mask: torch.Tensor | None = None,
        jump=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense path: ``(down, up)``, both (B, Cz, h, w); the downstream runs on every window.

        ``pos_offset``: (row, column) of the first upstream token in a larger grid. Training on crops draws
        it at random so every position an inference-size image uses has been seen (inference: (0, 0)).
        ``token_mask``: (B, ceil(h/2), ceil(w/2)) bool; with token sparsity it splits the self-attention
        (None = all active); window-sparse models ignore it.
        ``jump``: with ``jump_conditioning``, the steps the chain moved to reach this state (a number, (B,), or
        (B, 1, h, w) with a timestep map; None = 1, a call of the full chain).
        """
        x, t, jump, (h, w) = self._prepare(x_in, t, lr, jump)
        b, _, hp, wp = x.shape
        up, hidden = self._upstream(x, t, pos_offset, jump)
        nwin, pos_w, kvs, mods, t_tok = self._down_setup(x, t, hidden, pos_offset, jump)
        grid = self.down_embed(x)  # (B, Dd, Hp/2, Wp/2), full-image patch embedding
        tok = self._windows(grid, self.window).flatten(2).transpose(1, 2)  # (B*nWin, 64, Dd)
        attn_mask = None
        if self.token_sparse and token_mask is not None:
            tok_mask = self._token_grid(token_mask, b, hp, wp, x.device)
            attn_mask = self._attention_mask(self._windows(tok_mask[:, None], self.window).flatten(1))
        ids = torch.arange(b * nwin, device=x.device)
        down = self._run_windows(tok, ids // nwin, ids % nwin, kvs, mods, t_tok, pos_w, attn_mask=attn_mask)
        down = self._unwindows(down, b, hp, wp)
        if self.detail is not None:  # once over the whole padded image: the same pixels as every window + halo
            down = down + self._detail_whole(x, t)
        skip = self._skip(x, t)
        down, up = down + skip, up + skip
        return down[..., :h, :w], up[..., :h, :w]

    def forward_sparse(self, x_in: torch.Tensor, t, lr: torch.Tensor, token_mask: torch.Tensor | None, chunk_size: int = 64, jump=None):
        """Sparse path, ``(prediction (B, Cz, h, w), info)``: see :func:`qdm_med.models.sparse.forward_sparse`."""
        return sparse.forward_sparse(self, x_in, t, lr, token_mask, chunk_size, jump)

    def forward_window_loop(self, x_in: torch.Tensor, t, lr: torch.Tensor, token_mask: torch.Tensor | None, jump=None) -> torch.Tensor:
        """The reference per-window Python loop, (B, Cz, h, w): see :func:`qdm_med.models.sparse.forward_window_loop`."""
        return sparse.forward_window_loop(self, x_in, t, lr, token_mask, jump)

    # ----------------------------------------------------------------------------------------- MACs
    def macs(self, latent_hw, active_windows: int, batch: int, **counts) -> int:
        """Exact multiply-accumulates of one sparse call on ``active_windows`` windows: :func:`qdm_med.models.macs.qdm_macs`
        (``counts``: its keyword arguments, the tokens, detail units and attention pairs actually computed)."""
        return qdm_macs(self, latent_hw, active_windows, batch, **counts)

    def extra_repr(self) -> str:
        return (
            f"latent={self.latent_channels}, lr={self.lr_channels}, up={self.hidden}/{self.depth}/{self.heads}, "
            f"down={self.down_hidden}/{self.down_depth}/{self.down_heads}, window={self.window}x{self.window} tokens, "
            f"detail={self.detail_channels}x{self.detail_blocks} blocks, {'token' if self.token_sparse else 'window'} sparsity"
            + (f", state skip over {self.state_skip_steps} steps" if self.state_skip_steps else "")
            + (", jump-conditioned" if self.jump_conditioning else "")
        )


def build_qdm(name: str, latent_channels: int, lr_channels: int, **overrides) -> DualStreamQDM:
    """A :class:`DualStreamQDM` from a named config of :data:`QDM_CONFIGS`, with keyword overrides."""
    if name not in QDM_CONFIGS:
        from qdm_med.errors import ConfigError

        raise ConfigError(f"model config {name!r}: use one of {', '.join(QDM_CONFIGS)}")
    return DualStreamQDM(latent_channels, lr_channels, **{**QDM_CONFIGS[name], **overrides})
