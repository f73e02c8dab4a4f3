"""Log-probabilities of responses under a causal LM, with or without its LoRA adapter: the chunked LM head that never holds a (batch x length x vocab) logits tensor, and the precision choice for CPU autocast. Used by training, POPI's summary scoring and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from idiolect.core.training.data import (
    Example,
)

LOGIT_CHUNK = 1024  # response tokens per LM-head chunk


HEAD_MEMORY_BUDGET = (
    2 * 2**30
)  # bytes of saved head activations (logits + log-softmax, fp32) kept for backward


def cpu_has_native_bf16() -> bool:
    from idiolect.core.models.loading import cpu_flags

    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


AUTO_BF16_MIN_PARAMS = 100_000_000  # below this, the casts cost more than bf16 matmuls save


def autocast_dtype(precision: str, device: str, n_params: int = 0):
    """The autocast dtype for forward passes, or None (no autocast). On CUDA the base already computes in
    bf16 (QLoRA's compute dtype), so autocast is for the CPU only; ``auto`` takes bf16 where the CPU has it
    natively and the model is large enough for it to pay (measured: docs/benchmarks.md)."""
    if device != "cpu" or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and cpu_has_native_bf16() and n_params >= AUTO_BF16_MIN_PARAMS:
        return torch.bfloat16
    return None


def decoder_and_head(model):
    """(decoder, lm_head) of a causal LM, PEFT-wrapped or not (LoRA layers live inside both)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def logit_transform(model) -> tuple[float | None, float | None]:
    """What the model applies to its LM head's output before the softmax, from its config: a final logit
    softcap (Gemma 2/3: ``cap * tanh(logits / cap)``) and a logit scale (Cohere). The chunked head applies the
    same, so its log-probs equal ``log_softmax(model(...).logits)``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base.config, "get_text_config", lambda: base.config)()
    return getattr(config, "final_logit_softcapping", None), getattr(config, "logit_scale", None)


def _chunk_logps(
    lm_head,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.gather(F.log_softmax(logits, dim=-1), 1, targets[:, None])[:, 0]


def response_logps(
    model,
    examples: list[Example],
    device,
    pad_id: int,
    *,
    autocast=None,
    recompute_head: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the sum of log p(response token | prefix) over response tokens, and the token count.
    ``autocast``: a dtype for the forward pass (bf16 on CPUs that have it). ``recompute_head``: recompute the LM
    head chunks in the backward pass instead of keeping their logits (None: only when they would exceed
    :data:`HEAD_MEMORY_BUDGET`)."""
    if autocast is not None:
        with torch.autocast(device_type=str(device).split(":")[0], dtype=autocast):
            return response_logps(model, examples, device, pad_id, recompute_head=recompute_head)
    longest = max(e.length for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), longest), dtype=torch.long)
    resp = torch.zeros((len(examples), longest), dtype=torch.bool)
    for b, e in enumerate(examples):
        seq = e.prompt_ids + e.response_ids
        ids[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
        resp[b, len(e.prompt_ids) : len(seq)] = True
    ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
    decoder, lm_head = decoder_and_head(model)
    softcap, scale = logit_transform(model)
    hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state
    select = resp[:, 1:]  # token t is predicted at position t-1
    h = hidden[:, :-1][select]
    targets = ids[:, 1:][select]
    rows = torch.arange(len(examples), device=device)[:, None].expand_as(select)[select]
    if recompute_head is None:
        vocab = lm_head.weight.shape[0]
        recompute_head = 2 * 4 * h.shape[0] * vocab > HEAD_MEMORY_BUDGET
    pieces = []
    for start in range(0, h.shape[0], LOGIT_CHUNK):
        hs, ts = h[start : start + LOGIT_CHUNK], targets[start : start + LOGIT_CHUNK]
        if recompute_head and torch.is_grad_enabled() and hs.requires_grad:
            pieces.append(
                torch.utils.checkpoint.checkpoint(
                    _chunk_logps, lm_head, hs, ts, softcap, scale, use_reentrant=False
                )
            )
        else:
            pieces.append(_chunk_logps(lm_head, hs, ts, softcap, scale))
    token_lp = torch.cat(pieces) if pieces else h.new_zeros(0)
    sums = torch.zeros(len(examples), device=device, dtype=torch.float32).index_add(0, rows, token_lp)
    counts = torch.zeros(len(examples), device=device, dtype=torch.float32).index_add(
        0, rows, torch.ones_like(token_lp)
    )
    return sums, counts


def batched(examples: list[Example], max_tokens: int):
    """Length-sorted batches of at most ``max_tokens`` padded tokens (for no-grad passes)."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * examples[i].length > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def logps_of(
    model,
    examples: list[Example],
    device,
    pad_id: int,
    *,
    adapter: bool,
    max_tokens: int = 2048,
    autocast=None,
):
    """Sums and counts for many examples without gradients; ``adapter=False`` = the frozen base."""
    sums = torch.zeros(len(examples))
    counts = torch.zeros(len(examples))
    if not examples:
        return sums, counts
    was_training = model.training
    model.eval()
    try:
        for idx in batched(examples, max_tokens):
            chunk = [examples[i] for i in idx]
            if adapter or not hasattr(model, "disable_adapter"):
                s, c = response_logps(model, chunk, device, pad_id, autocast=autocast)
            else:
                with model.disable_adapter():
                    s, c = response_logps(model, chunk, device, pad_id, autocast=autocast)
            sums[idx], counts[idx] = s.float().cpu(), c.float().cpu()
    finally:
        model.train(was_training)
    return sums, counts


def mean_token_ll(model, examples, device, pad_id, *, adapter: bool, autocast=None) -> float | None:
    if not examples:
        return None
    s, c = logps_of(model, examples, device, pad_id, adapter=adapter, autocast=autocast)
    return float(s.sum() / c.sum())
