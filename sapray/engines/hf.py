"""Hugging Face transformers engine: batched, left-padded, float32 on CPU and bf16 on GPU.

It is also the reference the vLLM engine is checked against. With ``share_contexts`` (default on),
requests whose context ids are identical (every strategy's response after one question's SAP context)
compute that context once, on one of two paths:
- ``packed``: one forward per batch of packed rows, each a context followed by all its continuations
  under a 4D attention mask (each continuation sees the context and itself, never another; position ids
  restart after the context; ``sapray.core.packing``), several contexts per row; only the positions that
  predict a continuation token go through the LM head;
- ``flex`` (``packed`` and ``flex``): the same segments without padding or a dense mask: concatenated into
  rows of up to ``max_batch_tokens`` tokens, one row per forward, attention restricted by a FlexAttention
  ``BlockMask`` built from the layout's tiles (``packing.block_structure``: tiles where one continuation
  would see another are skipped, not masked). Layouts are built in a thread while the device runs, and a
  call copies its scores to the host once. With ``compile`` each decoder layer is compiled (one graph per
  row width, widths bucketed to at most 8; ``warmup_s`` records each width's first forward). The model's
  SDPA attention is routed (``route_block_masks``): a BlockMask goes to FlexAttention, every other mask to
  SDPA as before;
- cached (``packed=False``): the context runs once, keeps its KV cache, and the continuations are
  scored together on copies of that cache, two or more small forwards per distinct context;
- requests alone with their context (and all requests with ``share_contexts=False``) are sorted by
  length and packed into left-padded batches under a padded-token budget; with left padding every
  continuation ends at the last position, so only the last ``max continuation + 1`` positions go
  through the LM head (``logits_to_keep``), which keeps memory and time off the 49k-wide vocabulary
  projection. (On the packed path they are packed rows like the rest.)

Which path is the default depends on the device, by measurement: packed on GPUs (on one H200, 2.10x the
cached path's scored tokens/s for the Llama-3-8B shape at a block of 36 requests, 4.7x for SmolLM2's;
docs/scaling.md, "GPU"), cached on CPUs (on this project's 2-core AVX2 CPU the packed path ran at 0.71x:
a dense 4D mask makes SDPA compute every masked position, docs/benchmarks.md, "Shared contexts").
``engine_args: {packed: true|false}`` picks one.

``max_padding`` (off by default) also closes a batch before its padding would exceed that share of
the positions it runs: length buckets instead of one wide batch, where padded positions cost as much as
real ones (benchmarks/bench_gpu.py measures both). It applies to the padded batches of the cached and
unshared paths, not to packed rows (whose padding is the rows' ends: first-fit into the widest segment).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from sapray.core import packing
from sapray.core.scoring import RANK_CLIP, EncodedRequest, TokenScores
from sapray.engines.base import DEFAULT_MAX_LENGTH, Generation, SamplingConfig


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def batch_budgets(device: str) -> tuple[int, int]:
    """Default (max_batch_tokens, max_logit_rows) for a device.

    Measured on an H100 (docs/scaling.md, "GPU"): with the CPU budgets a block of 36 requests
    runs in 4-row batches and shared-context scoring of an 8B model takes 1.9x longer than with
    32768 / 8192; on CPU the larger budgets only add padding to each forward pass.
    """
    return (32768, 8192) if device.startswith("cuda") else (8192, 1024)


ROUTED_ATTENTION = "sapray_sdpa_or_flex"  # SDPA, or FlexAttention where the mask is a BlockMask


def packable(model: Any, max_length: int) -> bool:
    """Whether a packed forward computes exactly what plain forwards do for this model: attention through
    SDPA or eager (they take a custom 4D mask), no sliding window shorter than a row, and logits that are
    the output embedding's product alone (no soft-capping or scaling after it)."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and getattr(config, "use_sliding_window", True) and window < max_length
    return (getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager", ROUTED_ATTENTION)
            and not uses_window
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None
            and model.get_output_embeddings() is not None)


def token_scores(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """For each ``i``, ``tokens[i]``'s log-prob under ``logits[rows[i]]`` (logits [n, vocabulary]; log-softmax in
    float32) and its clipped strict rank, min(1 + #{v: z_v > z_token}, RANK_CLIP) (ties count in the token's
    favour, as the reference rank-surprisal ratio's do): a (2, len(rows)) float32 tensor on their device, so one
    copy to the host carries both. Every scoring path reads its scores here, and only here."""
    picked = logits[rows].float()
    chosen = picked.gather(-1, tokens[:, None])
    logprobs = torch.log_softmax(picked, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    # Only the RANK_CLIP largest logits can lift the rank below the clip, so counting among them is exact after
    # clipping; as the reference counts, and on a CPU a third of a full-row comparison's time (docs/concepts/rsr.md).
    top = torch.topk(picked, min(RANK_CLIP, picked.shape[-1]), dim=-1).values
    ranks = ((top > chosen).sum(-1) + 1).clamp_(max=RANK_CLIP)
    return torch.stack((logprobs, ranks.float()))


def _scores(values: list[list[float]]) -> TokenScores:
    """A request's (2, tokens) host values as its TokenScores (ranks are whole numbers below 2^24: exact)."""
    return TokenScores(values[0], [int(r) for r in values[1]])


def _sdpa_or_flex(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' FlexAttention for a BlockMask (the flex path), its SDPA for anything else, unchanged."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations import flex_attention, sdpa_attention

    if isinstance(attention_mask, BlockMask):
        return flex_attention.flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention.sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def route_block_masks(model: Any) -> bool:
    """Let an SDPA model take a FlexAttention BlockMask as its attention mask (every other mask still goes to
    SDPA, built as before). Whether the model now routes them (an eager or flash model does not)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if model.config._attn_implementation == "sdpa":
        AttentionInterface.register(ROUTED_ATTENTION, _sdpa_or_flex)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ROUTED_ATTENTION, sdpa_mask)
        model.config._attn_implementation = ROUTED_ATTENTION
    return model.config._attn_implementation == ROUTED_ATTENTION


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_tokens: int | None = None,
        max_logit_rows: int | None = None,
        max_length: int | None = None,
        share_contexts: bool = True,
        adapter: str | None = None,
        max_padding: float | None = None,
        packed: bool | None = None,
        flex: bool | None = None,
        compile: bool | None = None,
        own_process: bool = False,  # every engine's keyword (``load_engine``): hf runs in its caller's process alike
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or default_device()
        # CPUs here lack bf16 hardware: float32 there, bf16 on GPUs.
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        if adapter:  # a LoRA adapter (peft) on this base, merged for plain forward passes
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self._setup(model.to(device), tokenizer, device, max_batch_tokens, max_logit_rows, max_length, share_contexts,
                    max_padding, packed, flex, compile)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        max_batch_tokens: int | None = None,
        max_logit_rows: int | None = None,
        max_length: int | None = None,
        share_contexts: bool = True,
        max_padding: float | None = None,
        packed: bool | None = None,
        flex: bool | None = None,
        compile: bool | None = None,
    ) -> HFEngine:
        """An engine around a model already in memory, on its device and in its dtype.

        benchmarks/bench_gpu.py builds random-weight models from a config directly on the GPU this
        way, so no weight files need to travel to the GPU machine.
        """
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, str(model.device), max_batch_tokens, max_logit_rows, max_length,
                      share_contexts, max_padding, packed, flex, compile)
        return engine

    def _setup(self, model: Any, tokenizer: Any, device: str, max_batch_tokens: int | None,
               max_logit_rows: int | None, max_length: int | None, share_contexts: bool,
               max_padding: float | None, packed: bool | None, flex: bool | None = None,
               compile: bool | None = None) -> None:
        self.device = device
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = min(max_length or DEFAULT_MAX_LENGTH,
                              int(getattr(self.model.config, "max_position_embeddings", DEFAULT_MAX_LENGTH)))
        default_tokens, default_rows = batch_budgets(device)
        self.max_batch_tokens = default_tokens if max_batch_tokens is None else max_batch_tokens
        self.max_logit_rows = default_rows if max_logit_rows is None else max_logit_rows
        self.share_contexts = share_contexts
        self.max_padding = max_padding
        if packed is None:  # measured per device: docs/scaling.md, "GPU"
            packed = device.startswith("cuda")
        self.packed = packed and packable(self.model, self.max_length)
        # packed rows without padding or a dense mask (FlexAttention); CUDA by the issue-41 plan, CPU by measurement
        self.flex = device.startswith("cuda") if flex is None else flex
        self.compile = device.startswith("cuda") if compile is None else compile  # the flex path's decoder
        self._compiled: Any = None
        # the flex path: "compiled|eager <row width>" -> the seconds of its first forward (compiling)
        self.warmup_s: dict[str, float] = {}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _fits(self, rows: int, longest_sequence: int, longest_continuation: int) -> bool:
        """A batch stays under the padded-token budget and the logits budget (rows x vocabulary floats)."""
        return (rows * longest_sequence <= self.max_batch_tokens
                and rows * (longest_continuation + 1) <= self.max_logit_rows)

    def _dense_enough(self, rows: int, width: int, real_positions: int) -> bool:
        """With ``max_padding`` set, padding stays under that share of the rows x width positions run."""
        return self.max_padding is None or rows * width - real_positions <= self.max_padding * rows * width

    def sequence_logprobs(self, requests: Sequence[EncodedRequest]) -> list[list[float]]:
        """The continuation tokens' log-probs alone."""
        return [s.logprobs for s in self.sequence_scores(requests)]

    @torch.inference_mode()
    def sequence_scores(self, requests: Sequence[EncodedRequest]) -> list[TokenScores]:
        out: list[TokenScores] = [TokenScores([], []) for _ in requests]
        if self.share_contexts and self.packed:
            if self.flex and route_block_masks(self.model):
                self._score_flex(requests, out)
            else:
                self._score_packed(requests, out)
            return out
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.context_ids), []).append(i)
        alone = []
        for members in groups.values():
            if self.share_contexts and len(members) > 1:
                self._score_shared_context(requests, members, out)
            else:
                alone.extend(members)
        self._score_padded(requests, alone, out)
        return out

    def _score_packed(self, requests: Sequence[EncodedRequest], out: list[TokenScores]) -> None:
        """Every request in packed rows (``sapray.core.packing``): a segment per context of at most
        ``max_length`` tokens, rows as wide as the longest segment, as many rows per forward as the
        padded-token budget holds."""
        if not requests:
            return
        continuations = [r.continuation_ids for r in requests]
        segments = packing.segments([r.context_ids for r in requests], continuations, self.max_length)
        lengths = [s.length(continuations) for s in segments]
        rows = packing.rows_of(lengths, lengths[0])
        per_pass = max(1, self.max_batch_tokens // lengths[0])
        for start in range(0, len(rows), per_pass):
            batch = [[segments[k] for k in row] for row in rows[start:start + per_pass]]
            width = max(sum(lengths[k] for k in row) for row in rows[start:start + per_pass])
            self._packed_forward(packing.layout(batch, continuations, width, self.pad_id), out)

    def _score_flex(self, requests: Sequence[EncodedRequest], out: list[TokenScores]) -> None:
        """Every request in packed rows without padding or a dense mask: segments (``sapray.core.packing``)
        concatenated into rows of up to ``max_batch_tokens`` tokens, one row per forward, attention restricted
        to the allowed tiles by a FlexAttention BlockMask. A row's width is rounded up to a multiple of 128
        tokens, or with ``compile`` to one of 8 widths (multiples of an eighth of the budget): a compiled
        decoder compiles once per width. The layouts are built in a thread while the device runs the earlier
        rows, and the scores of every row stay on the device until one copy at the end of the call."""
        if not requests:
            return
        continuations = [r.continuation_ids for r in requests]
        # a context with more continuations than a row holds is repeated in as many segments as it needs
        segments = packing.segments([r.context_ids for r in requests], continuations,
                                    min(self.max_length, self.max_batch_tokens))
        lengths = [s.length(continuations) for s in segments]
        rows = packing.rows_of(lengths, max(self.max_batch_tokens, lengths[0]))

        def prepare(row: list[int]) -> tuple[packing.PackedLayout, list[int], list[Any], list[torch.Tensor]]:
            packed = packing.layout([[segments[k] for k in row]], continuations,
                                    self._flex_width(sum(lengths[k] for k in row)), self.pad_id)
            owners, chunks = _targets(packed, self.max_logit_rows)
            arrays = [packed.input_ids, packed.positions, packed.segment[0], packed.branch[0], packed.predictors[:, 1],
                      *packing.block_structure(packed.segment[0], packed.branch[0])]
            return packed, owners, chunks, [self._to_host_tensor(a) for a in arrays]

        values, handed = [], []
        with ThreadPoolExecutor(max_workers=1) as builder:
            for packed, owners, chunks, tensors in builder.map(prepare, rows):
                chunks = [(start, *(self._to_device(torch.from_numpy(a)) for a in arrays))
                          for start, *arrays in chunks]
                values.append(self._flex_forward([self._to_device(t) for t in tensors], chunks))
                handed.append((owners, packed))
        flat = torch.cat(values, dim=1).cpu().tolist()  # the call's one device-to-host copy: the scores alone
        offset = 0
        for owners, packed in handed:
            n = sum(len(packed.targets[i]) for i in owners)
            _spread([flat[0][offset:offset + n], flat[1][offset:offset + n]], owners, packed, out)
            offset += n

    def _flex_width(self, tokens: int) -> int:
        quantum = packing.BLOCK
        if self.compile:  # at most 8 widths up to the budget
            quantum = max(quantum, -(-self.max_batch_tokens // (8 * packing.BLOCK)) * packing.BLOCK)
        return -(-tokens // quantum) * quantum

    def _to_host_tensor(self, array: np.ndarray) -> torch.Tensor:
        """Pinned on CUDA, so its copy to the device does not wait for the kernels already queued."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.pin_memory() if self.device.startswith("cuda") else tensor

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=tensor.is_pinned())

    def _flex_forward(self, tensors: list[torch.Tensor], chunks: list[tuple[Any, ...]]) -> torch.Tensor:
        """One row's forward under its BlockMask (``tensors`` as ``_score_flex``'s ``prepare`` lists them); its
        targets' log-probs, left on the device."""
        from torch.nn.attention.flex_attention import BlockMask

        ids, positions, segment, branch, predictors, *tiles = tensors
        width = ids.shape[1]
        block_mask = BlockMask.from_kv_blocks(*(t[None, None] for t in tiles), BLOCK_SIZE=packing.BLOCK,
                                              mask_mod=packing.mask_mod(segment, branch), seq_lengths=(width, width))
        decoder = self.model.get_decoder()
        shape = f"{'compiled' if self.compile else 'eager'} {width}"
        first = shape not in self.warmup_s
        start = time.perf_counter()
        if self.compile:
            # Each layer compiled, not the whole decoder: the layers share one compiled graph per width (PyTorch's
            # regional compilation), so warming up costs one layer's compilation. They stand in for the eager
            # layers during this forward only; every other path, and plain forwards, run the model as it is.
            if self._compiled is None:
                self._compiled = torch.nn.ModuleList(torch.compile(layer, dynamic=False) for layer in decoder.layers)
            eager, decoder.layers = decoder.layers, self._compiled
        try:
            hidden = decoder(input_ids=ids, attention_mask=block_mask, position_ids=positions).last_hidden_state
        finally:
            if self.compile:
                decoder.layers = eager
        if first:  # the first forward of a width compiles (transformers compiles FlexAttention even when eager)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.warmup_s[shape] = time.perf_counter() - start
        return self._scores(hidden[0, predictors], chunks)

    def _packed_forward(self, packed: packing.PackedLayout, out: list[TokenScores]) -> None:
        # Every host array goes to the device before the forward starts: a copy from pageable host memory
        # waits for the queued kernels, so one issued mid-pass would leave the GPU idle while the host catches up.
        owners, chunks = _targets(packed, self.max_logit_rows)
        chunks = [(start, *(torch.from_numpy(a).to(self.device) for a in arrays)) for start, *arrays in chunks]
        ids, positions, segment, branch, predictors = (
            torch.from_numpy(a).to(self.device)
            for a in (packed.input_ids, packed.positions, packed.segment, packed.branch, packed.predictors))
        dtype = next(self.model.parameters()).dtype
        allowed = packing.allowed(segment, branch, torch.arange(segment.shape[1], device=self.device))
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill_(~allowed,
                                                                                          torch.finfo(dtype).min)
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask[:, None],
                                          position_ids=positions).last_hidden_state
        values = self._scores(hidden[predictors[:, 0], predictors[:, 1]], chunks)
        _spread(values.cpu().tolist(), owners, packed, out)  # the one device-to-host copy: the scores alone

    def _scores(self, predicting: torch.Tensor, chunks: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """Every target's log-prob and clipped rank (2, targets), on the device: the LM head on at most
        max_logit_rows predicting positions at once (the logits budget); ``chunks`` from ``_targets``."""
        head = self.model.get_output_embeddings()
        values = torch.empty((2, int(sum(len(index) for _, index, _, _ in chunks))), device=predicting.device)
        for start, index, rows, tokens in chunks:
            values[:, index] = token_scores(head(predicting[start:start + self.max_logit_rows]), rows, tokens)
        return values

    def _score_shared_context(self, requests: Sequence[EncodedRequest], members: list[int],
                              out: list[TokenScores]) -> None:
        """Run the common context once, then the continuations right-padded on copies of its KV cache."""
        from transformers import DynamicCache

        context = torch.tensor([requests[members[0]].context_ids], device=self.device)
        n_ctx = context.shape[1]
        first = self.model(input_ids=context, past_key_values=DynamicCache(config=self.model.config),
                           use_cache=True, logits_to_keep=1)
        first_logits = first.logits[0, -1:]  # [1, vocabulary]: every continuation's first token
        members = sorted(members, key=lambda i: len(requests[i].continuation_ids), reverse=True)
        chunk: list[int] = []
        real = 0  # continuation tokens in the chunk
        for i in [*members, None]:
            longest = len(requests[chunk[0]].continuation_ids) if chunk else 0
            n = len(requests[i].continuation_ids) if i is not None else 0
            if chunk and (i is None or not (self._fits(len(chunk) + 1, n_ctx + longest, longest)
                                            and self._dense_enough(len(chunk) + 1, longest, real + n))):
                self._score_continuations(requests, chunk, first.past_key_values, first_logits, n_ctx, out)
                chunk, real = [], 0
            if i is not None:
                chunk.append(i)
                real += n

    def _score_continuations(self, requests, chunk, context_cache, first_logits, n_ctx, out) -> None:
        width = len(requests[chunk[0]].continuation_ids)  # chunk is sorted longest first
        ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n_ctx + width), dtype=torch.long)
        mask[:, :n_ctx] = 1
        for row, i in enumerate(chunk):
            cont = requests[i].continuation_ids
            ids[row, :len(cont)] = torch.tensor(cont)
            mask[row, n_ctx:n_ctx + len(cont)] = 1
        cache = copy.deepcopy(context_cache)
        cache.batch_repeat_interleave(len(chunk))
        positions = torch.arange(n_ctx, n_ctx + width).expand(len(chunk), width)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), past_key_values=cache,
                            use_cache=True).logits
        # The context's last position predicts the first continuation token; position j the token j+1.
        first = token_scores(first_logits, torch.zeros(len(chunk), dtype=torch.long, device=self.device),
                             ids[:, 0].to(self.device))
        rows = (torch.arange(len(chunk))[:, None] * width + torch.arange(width - 1)).flatten()
        picked = token_scores(logits.reshape(-1, logits.shape[-1]), rows.to(self.device),
                              ids[:, 1:].flatten().to(self.device)).view(2, len(chunk), width - 1)
        scores = torch.cat([first[:, :, None], picked], dim=2).cpu()  # one device-to-host copy per chunk
        for row, i in enumerate(chunk):
            out[i] = _scores(scores[:, row, :len(requests[i].continuation_ids)].tolist())

    def _score_padded(self, requests: Sequence[EncodedRequest], indices: list[int], out: list[TokenScores]) -> None:
        lengths = {i: len(requests[i].input_ids) for i in indices}
        order = sorted(indices, key=lambda i: lengths[i], reverse=True)
        batches: list[list[int]] = []
        real = 0  # tokens in the last batch
        for i in order:  # longest first, so a batch's first row is its widest
            if batches and self._fits(len(batches[-1]) + 1, lengths[batches[-1][0]],
                                      max(len(requests[j].continuation_ids) for j in [*batches[-1], i])) \
                    and self._dense_enough(len(batches[-1]) + 1, lengths[batches[-1][0]], real + lengths[i]):
                batches[-1].append(i)
                real += lengths[i]
            else:
                batches.append([i])
                real = lengths[i]
        for batch in batches:
            width = max(lengths[i] for i in batch)
            keep = max(len(requests[i].continuation_ids) for i in batch) + 1
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - lengths[i]:] = torch.tensor(requests[i].input_ids)
                mask[row, width - lengths[i]:] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                logits_to_keep=keep,
            ).logits
            # logits[:, j] predicts the token at position width - keep + j + 1.
            rows = (torch.arange(len(batch))[:, None] * keep + torch.arange(keep - 1)).flatten()
            picked = token_scores(logits.reshape(-1, logits.shape[-1]), rows.to(self.device),
                                  ids[:, width - keep + 1:].flatten().to(self.device))
            picked = picked.view(2, len(batch), keep - 1).cpu()
            for row, i in enumerate(batch):
                n = len(requests[i].continuation_ids)
                out[i] = _scores(picked[:, row, keep - 1 - n:].tolist())

    @torch.inference_mode()
    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig) -> list[Generation]:
        """Generate from token-id prompts (already rendered by the caller's chat template).

        Seeded sampling draws each prompt's samples from the seed alone, as vLLM's per-request seed
        does: a prompt gets the same samples whatever its batch-mates, so a job's output does not
        depend on how Ray Data cut the blocks or how many actors ran."""
        if sampling.seed is not None and sampling.temperature > 0 and len(prompts) > 1:
            return [g for p in prompts for g in self.generate([p], sampling)]
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        results = []
        self.tokenizer.padding_side = "left"
        step = max(1, self.max_batch_tokens // max(1, max(len(p) for p in prompts) + sampling.max_tokens))
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "num_return_sequences": sampling.n,
                                      "pad_token_id": self.pad_id}
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampling.stop:
                kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
            generated = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                            **kwargs)[:, width:].cpu()
            for row, p in enumerate(chunk):
                texts, counts, reasons = [], [], []
                for seq in generated[row * sampling.n:(row + 1) * sampling.n].tolist():
                    seq = _until_eos(seq, self.tokenizer.eos_token_id, self.pad_id)
                    full = self.tokenizer.decode(seq, skip_special_tokens=True)
                    texts.append(_cut_at_stop(full, sampling.stop))
                    counts.append(len(seq))
                    ended = len(seq) < sampling.max_tokens or texts[-1] != full
                    reasons.append("stop" if ended else "length")
                results.append(Generation(texts=texts, prompt_tokens=len(p), completion_tokens=counts,
                                          finish_reasons=reasons))
        return results


def _targets(packed: packing.PackedLayout, max_logit_rows: int) -> tuple[list[int], list[tuple[Any, ...]]]:
    """The requests a layout scores, in output order, and per chunk of at most ``max_logit_rows`` predicting
    positions: (first position, the outputs it fills, and for each its row within the chunk and its token id)."""
    owners = sorted(packed.targets)
    pairs = np.array([p for i in owners for p in packed.targets[i]], dtype=np.int64).reshape(-1, 2)
    chunks = []
    for start in range(0, len(packed.predictors), max_logit_rows):
        here = np.flatnonzero((pairs[:, 0] >= start) & (pairs[:, 0] < start + max_logit_rows))
        chunks.append((start, here, pairs[here, 0] - start, pairs[here, 1]))
    return owners, chunks


def _spread(flat: list[list[float]], owners: list[int], packed: packing.PackedLayout, out: list[TokenScores]) -> None:
    """Hand each owner its run of ``flat`` (log-probs and ranks, targets in ``_targets``' order)."""
    offset = 0
    for i in owners:
        n = len(packed.targets[i])
        out[i] = _scores([flat[0][offset:offset + n], flat[1][offset:offset + n]])
        offset += n


def _until_eos(seq: list[int], eos: int | None, pad: int) -> list[int]:
    for j, token in enumerate(seq):
        if token == eos or token == pad:
            return seq[:j]
    return seq


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """vLLM drops the stop string from the output; do the same."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
