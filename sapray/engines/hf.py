"""Hugging Face transformers engine: batched, left-padded, float32 on CPU and bf16 on GPU.

It is also the reference the vLLM engine is checked against. Requests are sorted by length and
packed into batches under a padded-token budget; with left padding every continuation ends at the
last position, so only the last ``max continuation + 1`` positions go through the LM head
(``logits_to_keep``), which keeps memory and time off the 49k-wide vocabulary projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sapray.engines import Generation, SamplingConfig
from sapray.scoring import EncodedRequest


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_tokens: int = 8192,
        max_length: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or default_device()
        # CPUs here lack bf16 hardware: float32 there, bf16 on GPUs.
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.max_length = max_length or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        batches, current, longest = [], [], 0
        for i in order:
            longest_if_added = max(longest, lengths[i])
            if current and longest_if_added * (len(current) + 1) > self.max_batch_tokens:
                batches.append(current)
                current, longest_if_added = [], lengths[i]
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def sequence_logprobs(self, requests: Sequence[EncodedRequest]) -> list[list[float]]:
        lengths = [len(r.input_ids) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lengths[i], reverse=True)
        out: list[list[float]] = [[] for _ in requests]
        for batch in self._batches(order, lengths):
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
            ).logits.float()
            # logits[:, j] predicts the token at position width - keep + j + 1.
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = ids[:, width - keep + 1:].to(self.device)
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            for row, i in enumerate(batch):
                n = len(requests[i].continuation_ids)
                out[i] = picked[row, keep - 1 - n:].tolist()
        return out

    @torch.inference_mode()
    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig) -> list[Generation]:
        """Generate from token-id prompts (already rendered by the caller's chat template)."""
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
                texts, counts = [], []
                for seq in generated[row * sampling.n:(row + 1) * sampling.n].tolist():
                    seq = _until_eos(seq, self.tokenizer.eos_token_id, self.pad_id)
                    texts.append(_cut_at_stop(self.tokenizer.decode(seq, skip_special_tokens=True), sampling.stop))
                    counts.append(len(seq))
                results.append(Generation(texts=texts, prompt_tokens=len(p), completion_tokens=counts))
        return results


def _until_eos(seq: list[int], eos: int | None, pad: int) -> list[int]:
    for j, token in enumerate(seq):
        if token == eos or token == pad:
            return seq[:j]
    return seq


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """vLLM drops the stop string from the output; do the same."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
