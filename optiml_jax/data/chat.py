"""Chat templates: the bench's prompts inside a chat model's own turn format, for evaluating it as it was tuned.

Where it sits: beside `formatting.py`, used by `registry.py` when tasks are registered with `chat=` (the evaluator's
`evaluate.chat_template`). The bench's prompts are plain text, the paper's format, and training always uses it. A
chat model (SmolLM2-Instruct, Llama 3 Instruct, Qwen2 Instruct) was tuned on turns instead, so plain text measures
it outside the format it answers in; this module lets an evaluation give it its own.

`ChatFormat.from_tokenizer(folder)` reads the template the tokenizer folder carries (`chat_template.jinja`, or
`chat_template` in tokenizer_config.json) through transformers, renders one user message around a marker with
the generation prompt, and keeps the tokens around it. An example then becomes:

  inputs   head + BPE(source) + tail      the whole bench prompt (definition, demonstrations, input, delimiter)
                                          is the one user message; `tail` ends with the assistant's header
  targets  BPE(target) + [end_of_turn]    the answer starts right after the header, with no joining space, and
                                          ends with the token that closes an assistant turn (SmolLM2: <|im_end|>)
  options  likewise, one per answer candidate (rank classification scores the answer and the end of the turn).

SmolLM2's template, whose head carries its default system message:
  head  <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
        <|im_start|>user\\n
  tail  <|im_end|>\\n<|im_start|>assistant\\n

Built once per tokenizer, the format is checked against transformers' own `apply_chat_template(...,
tokenize=True)` of a user and an assistant message: the tokens above must be its tokens, or the folder is refused
(a tokenizer whose text merges across the template's edges, as sentencepiece-style Llama 2 does with "[INST] ").
Text inside the message is never parsed for special tokens (`vocab.py`), as everywhere in the bench; the template's
own special tokens are. A tokenizer that adds a BOS itself (Llama 3) gets it from the feature converter, so a
template that writes it too does not put it twice. A prompt longer than the context is cut from the left
(`evaluation.batching.cut_from_left`) and then loses the head, as a plain prompt loses its definition.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

_MARK = "\u2063OPTIML_MESSAGE\u2063"  # a marker no template writes (around it: the user message's place)
_PROBE_USER = "Which is larger, 7 or 12?\nAnswer:"  # the message and answer the check renders
_PROBE_ANSWER = "12"


class ChatTemplateError(ValueError):
  """A tokenizer folder without a usable chat template (none, or one our tokens cannot reproduce)."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """A chat template as token ids: `head` + message + `tail`, then the answer and `end_of_turn`."""

  head: tuple[int, ...]  # before the user message (system turn, user header); no BOS the converter adds
  tail: tuple[int, ...]  # after it: the end of the user turn and the assistant's header (the generation prompt)
  end_of_turn: int  # closes the assistant's answer (scored after every option; decoding stops at it)
  source: str  # where the template came from (the tokenizer folder), for reports

  def inputs(self, message_ids: Sequence[int]) -> list[int]:
    """The prompt's token ids: `message_ids` (BPE of the bench's source text) as the one user turn."""
    return [*self.head, *message_ids, *self.tail]

  def answer(self, answer_ids: Sequence[int]) -> list[int]:
    """An answer's token ids as the assistant's turn: `answer_ids` (BPE of the stripped text) + end of turn."""
    return [*answer_ids, self.end_of_turn]

  @classmethod
  def from_tokenizer(cls, tokenizer_dir: str | os.PathLike, vocabulary: Any) -> ChatFormat:
    """The chat format of the tokenizer folder's own template, checked against transformers.

    Args:
      tokenizer_dir: a Hugging Face tokenizer folder with a chat template.
      vocabulary: the bench's vocabulary of that folder (`vocab.HFVocabulary`): message and answer text are
        encoded with it, and its BOS policy says whether the head loses a leading BOS.

    Raises:
      ChatTemplateError: the folder has no chat template, transformers cannot render it, or our tokens differ
        from transformers' for the probe conversation.
    """
    folder = pathlib.Path(tokenizer_dir)
    tokenizer = _hf_tokenizer(folder)
    try:
      prompt = tokenizer.apply_chat_template([{
          "role": "user",
          "content": _MARK
      }], tokenize=False, add_generation_prompt=True)
      turns = tokenizer.apply_chat_template([{
          "role": "user",
          "content": _MARK
      }, {
          "role": "assistant",
          "content": _MARK
      }], tokenize=False)
    except Exception as e:  # pylint: disable=broad-except  # jinja errors, a template that raises on our messages
      raise ChatTemplateError(f"{folder}: its chat template cannot render a user message: {e}") from e
    if not isinstance(prompt, str) or prompt.count(_MARK) != 1 or turns.count(_MARK) != 2:
      raise ChatTemplateError(f"{folder}: its chat template does not write a user message once, as given")
    head_text, tail_text = prompt.split(_MARK)
    after_answer = turns.split(_MARK)[2]

    def specials(text: str) -> list[int]:  # the template's own text: its special tokens are parsed
      return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    head, tail, closing = specials(head_text), specials(tail_text), specials(after_answer)
    bos = getattr(vocabulary, "bos_id", None)
    if head and bos is not None and head[0] == bos:
      head = head[1:]  # the feature converter puts the tokenizer's BOS in front of every example
    special_ids = set(getattr(tokenizer, "all_special_ids", ())) | set(tokenizer.added_tokens_decoder)
    end_of_turn = closing[0] if closing and closing[0] in special_ids else int(vocabulary.eos_id)
    chat = cls(tuple(head), tuple(tail), int(end_of_turn), str(folder))
    chat._check(tokenizer, vocabulary, bos)
    return chat

  def _check(self, tokenizer: Any, vocabulary: Any, bos: int | None) -> None:
    """Ours == transformers' tokens of the probe conversation (user message, assistant answer), up to the end of
    the assistant's turn; else ChatTemplateError naming both."""
    expected = tokenizer.apply_chat_template([{
        "role": "user",
        "content": _PROBE_USER
    }, {
        "role": "assistant",
        "content": _PROBE_ANSWER
    }], tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "keys"):  # transformers 5 may return a BatchEncoding
      expected = expected["input_ids"]
    expected = [int(i) for i in expected]
    if expected and bos is not None and expected[0] == bos and (not self.head or self.head[0] != bos):
      expected = expected[1:]
    ours = self.inputs(vocabulary.encode(_PROBE_USER)) + self.answer(vocabulary.encode(_PROBE_ANSWER))
    if expected[:len(ours)] != ours:
      raise ChatTemplateError(
          f"{self.source}: the chat template's tokens cannot be rebuilt from its parts (transformers: "
          f"{expected[:len(ours) + 4]}, ours: {ours}); the tokenizer merges text across the template's edges, "
          "which only byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2) are known not to do")


def _hf_tokenizer(folder: pathlib.Path) -> Any:
  """transformers' tokenizer of `folder`, which must carry a chat template."""
  try:
    import transformers  # pylint: disable=g-import-not-at-top  (only chat evaluation needs it here)
  except ImportError as e:
    raise ChatTemplateError(f"{folder}: reading a chat template needs transformers ({e})") from e
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
  except Exception as e:  # pylint: disable=broad-except  # any unreadable folder is the same refusal
    raise ChatTemplateError(f"{folder}: transformers cannot read this tokenizer folder: {e}") from e
  if not getattr(tokenizer, "chat_template", None):
    raise ChatTemplateError(f"{folder}: the tokenizer has no chat template (expected chat_template.jinja or "
                            "'chat_template' in tokenizer_config.json)")
  return tokenizer
