"""Context layouts (METHOD.md §1): the text the target model sees before a response.

Two layouts exist:
- ``paper``: the authors' Llama-2 style wrapper (or Mistral's), continuation ``' ' + response``,
  tokenized with the ``joint`` boundary rule, to reproduce their numbers;
- ``chat`` (default): the same user text through the target's own chat template with the
  generation prompt, continuation = the response, ``split`` boundary rule.

Three context kinds are built from a question: ``sap`` (with exemplars), ``ppl`` (the plain
question) and ``empty`` (nothing, for the IFD denominator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sapray.core.scoring import Context, ScoreRequest

LayoutName = Literal["paper", "chat"]
ContextKind = Literal["sap", "ppl", "empty"]
CONTEXT_KINDS: tuple[ContextKind, ...] = ("sap", "ppl", "empty")

SAP_TEMPLATE_HEAD = (
    "Question: {question}\n\n"
    "We have inference examples below to show you how to solve the problem. "
    "please follow the inference style and solve the problem\n\n"
)
SAP_TEMPLATE_EXEMPLAR = "inference example: {exemplar}\n\n"
# The authors' closing line keeps a trailing space after "problem." and two empty lines.
SAP_TEMPLATE_TAIL = "now, according to the inference examples, please solve the problem. \n\n\n"

PAPER_WRAPPER_DEFAULT = "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n{user} [/INST]"
PAPER_WRAPPER_MISTRAL = "[INST] {user} [/INST]"


def sap_user_text(question: str, exemplars: Sequence[str]) -> str:
    """The SAP user message: question, the model's own answers as examples, the closing ask."""
    body = "".join(SAP_TEMPLATE_EXEMPLAR.format(exemplar=e) for e in exemplars)
    return SAP_TEMPLATE_HEAD.format(question=question) + body + SAP_TEMPLATE_TAIL


def paper_wrapper(model_name: str) -> str:
    """The authors chose Mistral's bare [INST] wrapper for Mistral and the Llama-2 system wrapper otherwise."""
    return PAPER_WRAPPER_MISTRAL if "mistral" in model_name.lower() else PAPER_WRAPPER_DEFAULT


@dataclass(frozen=True)
class Layout:
    """How a user text and a response become a (context, continuation) pair."""

    name: LayoutName = "chat"
    model_name: str = ""

    @property
    def boundary(self) -> str:
        return "joint" if self.name == "paper" else "split"

    def context(self, user_text: str | None) -> Context:
        """``None`` means the empty context (only the model's start token)."""
        if user_text is None:
            return ""
        if self.name == "paper":
            return paper_wrapper(self.model_name).format(user=user_text)
        return [{"role": "user", "content": user_text}]

    def continuation(self, response: str) -> str:
        return " " + response if self.name == "paper" else response


def user_text_for(kind: ContextKind, question: str, exemplars: Sequence[str]) -> str | None:
    if kind == "sap":
        return sap_user_text(question, exemplars)
    if kind == "ppl":
        return question
    return None


def build_requests(
    layout: Layout,
    row_id: str,
    question: str,
    response: str,
    exemplars: Sequence[str],
    kinds: Sequence[ContextKind] = CONTEXT_KINDS,
    question_id: str | None = None,
) -> list[ScoreRequest]:
    """One request per context kind for one candidate response.

    ``context_key`` is the same for every response to the same question and kind, so an engine
    can see which requests share a context (the SAP context is shared by every strategy).
    """
    group = question_id if question_id is not None else row_id
    return [
        ScoreRequest(
            request_id=f"{row_id}/{kind}",
            context=layout.context(user_text_for(kind, question, exemplars)),
            continuation=layout.continuation(response) if isinstance(response, str) else response,
            # The empty context is the same for every question.
            context_key="empty" if kind == "empty" else f"{group}/{kind}",
        )
        for kind in kinds
    ]
