"""Patch embedding: images (B, C, H, W) or (B, T, C, H, W) -> a token sequence (B, N, D).

A ``p x p`` convolution with stride ``p`` is a Linear layer applied to every non-overlapping patch
of ``p * p * C`` pixels; both forms are here (``PatchEmbed(linear=False | True)``, the same map,
proven equal by the tests), beside ``patchify``, which cuts the patches out for the Linear form and
for the MAE's targets. Any band count ``C`` (13 Sentinel-2 bands, 10, 3, ...) and non-square images
(``image_size=(H, W)``) work.

Several dates: ``T`` frames are cut into tubelets of ``tt`` frames (``tubelet_size``); each
``tt x p x p`` tubelet is one token (a 3-D convolution, as VideoMAE / Prithvi). ``tt = 1`` gives
per-frame tokens, the same 2-D patch embedding applied to every date. Tokens come out
frame-major then row-major: token ``(t * h + i) * w + j`` is tubelet ``t``, row ``i``, column
``j``, with ``h, w = H // p, W // p``, ``L = h * w`` and ``N = T / tt * L``; one date gives
exactly the single-image layout.

``ids_keep`` (B, N') embeds only those tokens (the MAE's visible patches): the patches are cut
out, gathered, and only they go through the Linear form, a quarter of the work at MAE's 75 %
masking. The embedding is linear per patch, so embedding then dropping tokens and dropping then
embedding give the same numbers.

``SpectralPatchEmbed`` builds the kernel of each band from its wavelength (DOFA): the same weights
take any band set, in any order, at run time.

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    Tong et al., "VideoMAE", NeurIPS 2022 (tubelet embedding).
    Xiong et al., "Neural Plasticity-Inspired Multimodal Foundation Model for Earth Observation"
    (DOFA), 2024.
    timm ``layers/patch_embed.py``; facebookresearch/mae ``models_mae.py`` (``patchify``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geogfm.modules.blocks.mlp import Mlp
from geogfm.modules.embeddings.geo_encoding import wavelength_encoding

__all__ = ["PatchEmbed", "SpectralPatchEmbed", "patchify", "unpatchify"]


def patchify(imgs: Tensor, p: int, tubelet_size: int = 1) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), or (B, T, C, H, W) -> (B, T/tt * L, tt*p*p*C).

    Tokens in the order above; the values of a token ordered (frame in tubelet, row, col, band),
    band fastest.
    """
    x = imgs if imgs.ndim == 5 else imgs[:, None]  # (B, T, C, H, W)
    B, T, C, H, W = x.shape
    tt = tubelet_size
    if H % p or W % p:
        raise ValueError(f"image size {(H, W)} is not a multiple of the patch size {p}")
    if T % tt:
        raise ValueError(f"{T} dates are not a multiple of the tubelet size {tt}")
    t, h, w = T // tt, H // p, W // p
    x = x.reshape(B, t, tt, C, h, p, w, p)
    x = torch.einsum("btuchpwq->bthwupqc", x)  # (B, t, h, w, tt, p, p, C)
    return x.reshape(B, t * h * w, tt * p * p * C)  # (B, N, tt*p*p*C)


def unpatchify(
    x: Tensor,
    p: int,
    C: int,
    h: int,
    w: int,
    num_frames: int | None = None,
    tubelet_size: int = 1,
) -> Tensor:
    """The inverse of :func:`patchify`: (B, N, tt*p*p*C) -> (B, C, H, W) or (B, T, C, H, W).

    ``num_frames=None`` gives the single-image (B, C, h*p, w*p); an int ``T`` gives
    (B, T, C, h*p, w*p) (also for ``T = 1``).
    """
    B, N, K = x.shape
    T = 1 if num_frames is None else num_frames
    tt = tubelet_size
    t = T // tt
    if T % tt or t * h * w != N or tt * p * p * C != K:
        raise ValueError(
            f"cannot unpatchify {tuple(x.shape)} with p={p}, C={C}, h={h}, w={w}, "
            f"T={T}, tubelet={tt}: expected (B, {t * h * w}, {tt * p * p * C})"
        )
    x = x.reshape(B, t, h, w, tt, p, p, C)
    x = torch.einsum("bthwupqc->btuchpwq", x)  # (B, t, tt, C, h, p, w, p)
    x = x.reshape(B, T, C, h * p, w * p)  # (B, T, C, H, W)
    return x[:, 0] if num_frames is None else x


def _kept_patches(x: Tensor, p: int, tt: int, ids_keep: Tensor | None) -> Tensor:
    """Patches of ``x`` (B, T, C, H, W) as (B, N, tt*p*p*C), only the ``ids_keep`` (B, N') ones."""
    patches = patchify(x, p, tt)  # (B, N, tt*p*p*C)
    if ids_keep is None:
        return patches
    K = patches.shape[-1]
    return torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, K))  # (B, N', K)


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    h, w = x
    return int(h), int(w)


class _PatchGrid(nn.Module):
    """Sizes and input checks shared by the patch embeddings."""

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int,
        num_frames: int = 1,
        tubelet_size: int = 1,
    ) -> None:
        super().__init__()
        H, W = _pair(image_size)
        p = patch_size
        if H % p or W % p:
            raise ValueError(
                f"image_size={(H, W)} is not a multiple of patch_size={p}; choose an image size "
                f"divisible by the patch size (e.g. {(H // p * p, W // p * p)})"
            )
        if num_frames % tubelet_size:
            raise ValueError(
                f"num_frames={num_frames} is not a multiple of tubelet_size={tubelet_size}"
            )
        self.image_size = (H, W)
        self.patch_size = p
        self.num_frames = num_frames  # T
        self.tubelet_size = tubelet_size  # tt
        self.frames = num_frames // tubelet_size  # T / tt token frames
        self.grid_size = (H // p, W // p)  # (h, w)
        self.num_patches = self.grid_size[0] * self.grid_size[1]  # L, per token frame
        self.num_tokens = self.frames * self.num_patches  # N

    def _frames(self, x: Tensor, in_chans: int | None) -> Tensor:
        """Check ``x`` (B, C, H, W) or (B, T, C, H, W) and return it as (B, T, C, H, W)."""
        if x.ndim not in (4, 5):
            raise ValueError(
                f"expected images (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}"
            )
        x = x if x.ndim == 5 else x[:, None]
        B, T, C, H, W = x.shape
        p = self.patch_size
        if in_chans is not None and in_chans != C:
            raise ValueError(
                f"input has {C} bands but the model was built for in_chans={in_chans}; "
                f"set model.in_chans (from data.bands) to {C} or select {in_chans} bands"
            )
        if self.num_frames != T:
            raise ValueError(
                f"input has {T} date(s) but the model was built for num_frames="
                f"{self.num_frames}; set model.num_frames to {T} or pass {self.num_frames} dates"
            )
        if H % p or W % p:
            raise ValueError(
                f"input size {(H, W)} is not a multiple of patch_size={p}; crop or pad the "
                f"images to a multiple of {p}"
            )
        if self.image_size != (H, W):
            raise ValueError(
                f"input size {(H, W)} differs from the configured image_size={self.image_size}; "
                f"set model.image_size to the chip size or resize the inputs"
            )
        return x


class PatchEmbed(_PatchGrid):
    """Images to patch (or tubelet) tokens, by a strided convolution or a Linear layer.

    Args:
        image_size: ``H`` (square) or ``(H, W)``, pixels; the only input size accepted.
        patch_size: side ``p`` of a square patch, pixels; must divide ``H`` and ``W``.
        in_chans: number of bands ``C``.
        embed_dim: token width ``D``.
        num_frames: dates ``T`` per sample (1: (B, C, H, W) inputs also accepted).
        tubelet_size: dates ``tt`` per token; must divide ``num_frames``.
        linear: ``nn.Linear`` on :func:`patchify`'d pixels instead of the convolution.

    Raises:
        ValueError: if ``image_size`` is not a multiple of ``patch_size`` or ``num_frames`` not
            a multiple of ``tubelet_size``.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        *,
        num_frames: int = 1,
        tubelet_size: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__(image_size, patch_size, num_frames, tubelet_size)
        p, tt = patch_size, tubelet_size
        self.in_chans = in_chans
        self.linear = linear
        if linear:  # weight (D, tt*p*p*C), columns in patchify's (frame, row, col, band) order
            self.proj = nn.Linear(tt * p * p * in_chans, embed_dim)
        elif tt == 1:  # per-frame tokens: one 2-D convolution applied to every date
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=p, stride=p)
        else:  # tubelets: a 3-D convolution over (time, y, x)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tt, p, p), stride=(tt, p, p))

    def linear_weight(self) -> Tensor:
        """The projection as a Linear weight (D, tt*p*p*C), columns in :func:`patchify`'s order."""
        w = self.proj.weight  # Linear (D, K); Conv2d (D, C, p, p); Conv3d (D, C, tt, p, p)
        if self.linear:
            return w
        w = w if w.ndim == 5 else w[:, :, None]  # (D, C, tt, p, p)
        return w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)  # (D, tt*p*p*C), band fastest

    def forward(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Embed ``x`` (B, C, H, W) or (B, T, C, H, W) into (B, N, D); ValueError on bad sizes.

        ``ids_keep`` (B, N'): embed only these tokens, (B, N', D), by the Linear form.
        """
        x = self._frames(x, self.in_chans)  # (B, T, C, H, W)
        B, T, C, H, W = x.shape
        if self.linear or ids_keep is not None:
            patches = _kept_patches(x, self.patch_size, self.tubelet_size, ids_keep)  # (B, N', K)
            return F.linear(patches, self.linear_weight(), self.proj.bias)  # (B, N', D)
        if self.tubelet_size == 1:
            x = self.proj(x.flatten(0, 1))  # (B*T, D, h, w)
            x = x.unflatten(0, (B, T)).transpose(1, 2)  # (B, D, T, h, w)
        else:
            x = self.proj(x.transpose(1, 2))  # (B, C, T, H, W) -> (B, D, T/tt, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), frame-major then row-major


class SpectralPatchEmbed(_PatchGrid):
    """Patch tokens from any band set: each band's kernel is generated from its wavelength.

    A small MLP maps the sine-cosine encoding of a band's centre wavelength to that band's
    ``D x tt x p x p`` kernel; the kernels of the ``C`` bands present form the ``(D, tt*p*p*C)``
    weight of a Linear patch embedding, scaled by ``1 / sqrt(C)`` so that the tokens keep their
    scale whatever the band count. Permuting the bands together with their wavelengths gives the
    same tokens; a band set never seen in training still gets kernels.

    Args:
        image_size: ``H`` or ``(H, W)``, pixels.
        patch_size: ``p``.
        embed_dim: ``D``.
        wavelengths: the default band set's centre wavelengths, micrometres (``C`` of them).
        num_frames: dates ``T`` per sample.
        tubelet_size: dates ``tt`` per token.
        wave_dim: width of the wavelength encoding.
        hidden_dim: hidden width of the kernel generator.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int,
        embed_dim: int,
        wavelengths: list[float],
        *,
        num_frames: int = 1,
        tubelet_size: int = 1,
        wave_dim: int = 128,
        hidden_dim: int = 256,
    ) -> None:
        super().__init__(image_size, patch_size, num_frames, tubelet_size)
        self.embed_dim = embed_dim
        self.in_chans = len(wavelengths)
        self.wave_dim = wave_dim
        wl = torch.tensor(wavelengths, dtype=torch.float32)  # (C,)
        self.register_buffer("wavelengths", wl, persistent=False)  # from the config
        k = tubelet_size * patch_size * patch_size  # tt*p*p pixels of one band
        self.kernel_generator = Mlp(wave_dim, hidden_dim, embed_dim * k)
        self.bias = nn.Parameter(torch.zeros(embed_dim))

    def forward(
        self, x: Tensor, wavelengths: Tensor | None = None, ids_keep: Tensor | None = None
    ) -> Tensor:
        """Embed ``x`` (B, [T,] C, H, W) into (B, N, D).

        ``wavelengths`` (C,): the bands' centre wavelengths in µm; default the configured ones.
        ``ids_keep`` (B, N'): embed only these tokens, (B, N', D).
        """
        wl = self.wavelengths if wavelengths is None else wavelengths.to(self.bias.device)
        x = self._frames(x, None)  # (B, T, C, H, W)
        C = x.shape[2]
        if wl.shape != (C,):
            raise ValueError(
                f"input has {C} bands but {tuple(wl.shape)} wavelengths were given; pass "
                f"wavelengths= one per band, in micrometres"
            )
        D = self.embed_dim
        kernels = self.kernel_generator(wavelength_encoding(wl, self.wave_dim))  # (C, D*tt*p*p)
        weight = kernels.reshape(C, D, -1).permute(1, 2, 0)  # (D, tt*p*p, C): band fastest
        weight = weight.reshape(D, -1) / C**0.5  # (D, tt*p*p*C), patchify's column order
        patches = _kept_patches(x, self.patch_size, self.tubelet_size, ids_keep)  # (B, N', K)
        return F.linear(patches, weight, self.bias)  # (B, N', D)
