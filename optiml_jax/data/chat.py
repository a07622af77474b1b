"""Chat templates: the bench's prompts inside a chat model's own turn format, for evaluating it as it was tuned.

Where it sits: beside `formatting.py`, used by `registry.py` when tasks are registered with `chat=` (the evaluator's
`evaluate.chat_template`). The bench's prompts are plain text, the paper's format, and training always uses it. A
chat model (SmolLM2-Instruct, Llama 3 Instruct, Qwen2 Instruct) was tuned on turns instead, so plain text measures
it outside the format it answers in; this module lets an evaluation give it its own.

`ChatFormat.from_tokenizer(folder)` reads the template the tokenizer folder carries (`chat_template.jinja`, or
`chat_template` in tokenizer_config.json) through transformers, renders a user, an assistant and a user message
around markers with the generation prompt, and keeps the tokens between them. An example then becomes (the texts
from `formatting.chat_turns`; few-shot as a conversation, as lm-evaluation-harness's `--fewshot_as_multiturn`):

  inputs   head + BPE(user_1) + tail + BPE(answer_1) + between + ... + BPE(query) + tail
                                          each message's text stripped at both ends (`message_tokens`)
                                          each demonstration a user turn (the definition opens the first)
                                          answered by an assistant turn, the example's input the last user
                                          turn, `tail` ending with the assistant's header; 0-shot: the whole
                                          prompt is the one user turn, head + BPE(source) + tail
  targets  BPE(target) + [end_of_turn]    the answer starts right after the header, with no joining space, and
                                          ends with the token that closes an assistant turn (SmolLM2: <|im_end|>)
  options  likewise, one per answer candidate (rank classification scores the answer and the end of the turn).

SmolLM2's template, whose head carries its default system message:
  head     <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
           <|im_start|>user\\n
  tail     <|im_end|>\\n<|im_start|>assistant\\n
  between  <|im_end|>\\n<|im_start|>user\\n

Built once per tokenizer, the format is checked against transformers' own `apply_chat_template(...,
tokenize=True)` of a conversation (two demonstrations, a question and its answer): the tokens above must be its
tokens, or the folder is refused (a tokenizer whose text merges across the template's edges, as sentencepiece-style
Llama 2 does with "[INST] "). Text inside a message is never parsed for special tokens (`vocab.py`), as everywhere
in the bench; the template's own special tokens are. A tokenizer that adds a BOS itself (Llama 3) gets it from the
feature converter, so a template that writes it too does not put it twice. A prompt longer than the context is
cut from the left (`evaluation.batching.cut_from_left`) and then loses the head, as a plain prompt loses its
definition.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

_MARK = "\u2063OPTIML_MESSAGE\u2063"  # a marker no template writes (around it: the user message's place)
# The conversation the check renders: two demonstrations (user, assistant), then a question and its answer. Two
# user texts start with whitespace, as real inputs do (SNI task1518's start with two spaces): their messages are
# the stripped texts (`message_tokens`), which a message encoded with its whitespace would not rebuild.
_PROBE = ("Which is larger, 7 or 12?\nAnswer:", "12", "  Which is larger, 30 or 4?\nAnswer:", "30",
          "\n\nWhich is larger, 5 or 9?\nAnswer:", "9")


def message_tokens(vocabulary: Any, text: str) -> list[int]:
  """A message's token ids (a user turn's or an answer's): BPE of its text stripped at both ends, the message's
  content. transformers tokenizes the rendered conversation in one pass, so byte-level BPE would read whitespace at
  a message's edge together with the template's newline beside it ("\\n" + "  The": "\\n ", " The"), where the
  message encoded alone gives "\\n", " ", " The"; a stripped message has no such edge (Llama 3's templates trim
  each message too)."""
  text = text.strip()
  return list(vocabulary.encode(text)) if text else []


class ChatTemplateError(ValueError):
  """A tokenizer folder without a usable chat template (none, or one our tokens cannot reproduce)."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """A chat template as token ids: `head` + message + `tail`, then the answer and `end_of_turn`."""

  head: tuple[int, ...]  # before the first user message (system turn, user header); no BOS the converter adds
  tail: tuple[int, ...]  # after a user message: its end and the assistant's header (the generation prompt)
  between: tuple[int, ...]  # after an assistant's answer: its end of turn and the next user header
  end_of_turn: int  # closes the assistant's answer (scored after every option; decoding stops at it)
  source: str  # where the template came from (the tokenizer folder), for reports

  def inputs(self, message_ids: Sequence[int], turns: Sequence[tuple[Sequence[int], Sequence[int]]] = ()) -> list[int]:
    """The prompt's token ids: `message_ids` as the last user turn, after `turns`, the (user, answer) token ids
    of each demonstration as a user turn and the assistant's reply."""
    ids = list(self.head)
    for user, answer in turns:
      ids += [*user, *self.tail, *answer, *self.between]
    return ids + [*message_ids, *self.tail]

  def answer(self, answer_ids: Sequence[int]) -> list[int]:
    """An answer's token ids as the assistant's turn: `answer_ids` (`message_tokens`) + end of turn."""
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
      prompt = tokenizer.apply_chat_template(_messages(_MARK, _MARK, _MARK), tokenize=False, add_generation_prompt=True)
      turns = tokenizer.apply_chat_template(_messages(_MARK, _MARK), tokenize=False)
    except Exception as e:  # pylint: disable=broad-except  # jinja errors, a template that raises on our messages
      raise ChatTemplateError(f"{folder}: its chat template cannot render a conversation: {e}") from e
    if not isinstance(prompt, str) or prompt.count(_MARK) != 3 or turns.count(_MARK) != 2:
      raise ChatTemplateError(f"{folder}: its chat template does not write each message once, as given")
    head_text, tail_text, between_text, last_tail = prompt.split(_MARK)
    if last_tail != tail_text:
      raise ChatTemplateError(f"{folder}: its chat template ends the first and the last user turn differently "
                              f"({tail_text!r}, {last_tail!r})")
    after_answer = turns.split(_MARK)[2]

    def specials(text: str) -> list[int]:  # the template's own text: its special tokens are parsed
      return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    head, tail, between = specials(head_text), specials(tail_text), specials(between_text)
    closing = specials(after_answer)
    bos = getattr(vocabulary, "bos_id", None)
    if head and bos is not None and head[0] == bos:
      head = head[1:]  # the feature converter puts the tokenizer's BOS in front of every example
    special_ids = set(getattr(tokenizer, "all_special_ids", ())) | set(tokenizer.added_tokens_decoder)
    end_of_turn = closing[0] if closing and closing[0] in special_ids else int(vocabulary.eos_id)
    chat = cls(tuple(head), tuple(tail), tuple(between), int(end_of_turn), str(folder))
    chat._check(tokenizer, vocabulary, bos)
    return chat

  def _check(self, tokenizer: Any, vocabulary: Any, bos: int | None) -> None:
    """Ours == transformers' tokens of the probe conversation (two demonstrations, a question and its answer; the
    messages their stripped texts, as `message_tokens` encodes them), up to the end of the last assistant turn;
    else ChatTemplateError naming both."""
    expected = tokenizer.apply_chat_template(_messages(*(text.strip() for text in _PROBE)), tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "keys"):  # transformers 5 may return a BatchEncoding
      expected = expected["input_ids"]
    expected = [int(i) for i in expected]
    if expected and bos is not None and expected[0] == bos:  # the converter's BOS, which `head` leaves out
      expected = expected[1:]
    ids = [message_tokens(vocabulary, text) for text in _PROBE]
    ours = self.inputs(ids[4], [(ids[0], ids[1]), (ids[2], ids[3])]) + self.answer(ids[5])
    if expected[:len(ours)] != ours:
      raise ChatTemplateError(
          f"{self.source}: the chat template's tokens cannot be rebuilt from its parts (transformers: "
          f"{expected[:len(ours) + 4]}, ours: {ours}); the tokenizer merges text across the template's edges, "
          "which only byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2) are known not to do")


def _messages(*texts: str) -> list[dict[str, str]]:
  """Chat messages of `texts`, alternately the user's and the assistant's, the user first."""
  return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(texts)]


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
