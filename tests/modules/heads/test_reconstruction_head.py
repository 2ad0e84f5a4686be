import torch

from geogfm.modules.heads.reconstruction_head import ReconstructionHead

B, h, w, p, C, D, Dd = 2, 2, 3, 4, 5, 16, 8
L = h * w


def _head() -> ReconstructionHead:
    torch.manual_seed(0)
    return ReconstructionHead(
        (h, w), p, C, D, decoder_embed_dim=Dd, decoder_depth=1, decoder_num_heads=2
    )


def _shuffle() -> tuple[torch.Tensor, torch.Tensor]:
    ids_shuffle = torch.stack(
        [torch.randperm(L, generator=torch.Generator().manual_seed(b)) for b in range(B)]
    )
    return ids_shuffle, torch.argsort(ids_shuffle, dim=1)


def test_output_shape_and_backward() -> None:
    head = _head()
    _, ids_restore = _shuffle()
    out = head(torch.randn(B, 1 + 2, D), ids_restore)  # class token + 2 kept tokens
    assert out.shape == (B, L, p * p * C)
    out.sum().backward()
    assert head.mask_token.grad is not None


def test_tokens_restored_to_image_order() -> None:
    # the decoder blocks must see: class token, then at image position ids_shuffle[b, j] the kept
    # token j, mask tokens at the removed positions, each plus its position's encoding
    head = _head()
    ids_shuffle, ids_restore = _shuffle()
    n_keep = 2
    latent = torch.randn(B, 1 + n_keep, D)
    seen = {}
    head.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    head(latent, ids_restore)
    x = seen["x"] - head.decoder_pos_embed  # (B, 1 + L, Dd)

    emb = head.decoder_embed(latent)  # (B, 1 + L', Dd)
    for b in range(B):
        torch.testing.assert_close(x[b, 0], emb[b, 0])
        for j in range(n_keep):
            torch.testing.assert_close(x[b, 1 + ids_shuffle[b, j]], emb[b, 1 + j])
        for j in range(n_keep, L):
            torch.testing.assert_close(x[b, 1 + ids_shuffle[b, j]], head.mask_token[0, 0])


def test_ids_pred_predicts_only_those_tokens() -> None:
    # the MAE's training step asks for the removed patches only: the same rows, and the same
    # gradients, as predicting every patch and keeping those rows
    head = _head()
    ids_shuffle, ids_restore = _shuffle()
    latent = torch.randn(B, 1 + 2, D, requires_grad=True)
    ids_pred = ids_shuffle[:, 2:]  # the removed tokens, (B, L - 2)
    full = head(latent, ids_restore)
    want = torch.gather(full, 1, ids_pred[..., None].expand(-1, -1, full.shape[-1]))
    (g_want,) = torch.autograd.grad(want.square().sum(), latent)
    got = head(latent, ids_restore, ids_pred)
    assert got.shape == (B, L - 2, p * p * C)
    (g_got,) = torch.autograd.grad(got.square().sum(), latent)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)
