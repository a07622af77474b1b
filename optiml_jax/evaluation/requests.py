"""Evaluation over two machines: requests recorded where seqio runs, answered where the model runs.

Where it sits: at the seam between `seqio.Evaluator` (`evaluator.py`) and the model (`inference.py`). The
evaluator hands a scorer's `score_fn` / `predict_fn` the enumerated model dataset of each Task; here

  Recorder   records each call's rows (scoring) or prompts (greedy decoding) as a request and answers with
             placeholders: `python -m optiml_jax.eval ... --gin.evaluate.record_requests=True` on a machine with
             TensorFlow and seqio, no accelerator needed -> EVAL_OUTPUT_DIR/requests/;
  answer     runs a model on every request (`inference.score_rows`, `greedy_decode`) without TensorFlow, seqio
             or gin: `python -m optiml_jax.answer REQUESTS_DIR --checkpoint PATH --out ANSWERS_DIR` where the
             accelerator is (an image with jax and flax only);
  Replayer   answers each call from ANSWERS_DIR: `python -m optiml_jax.eval` with CHECKPOINT_PATH (or
             BASELINE_PATH) the answers folder, back where seqio runs; metrics, report and inference logs are
             those of a direct evaluation of the answering model.

A request is found again by its digest (`digest`): sha256 of its kind, its settings (length_normalize; or
max_new_tokens and the EOS ids; and the BOS a prompt cut to fit keeps, when the tokenizer has one) and its tokens.
The replaying evaluator (same catalog, tokenizer, shots and instances) thus asks exactly what was recorded; a
request that changed finds no answer and its task fails with a message naming the answers folder. The context
the prompts are cut to is not part of a request, since it does not change what seqio asks, but of the folder: the
recording writes it (`max_length`, the evaluation's context), `answer` answers with it and refuses another, and the
replaying evaluator refuses answers made with another context than its own (`check_replay_context`).

  REQUESTS_DIR/requests.json      {"format_version": 2, "max_length", "requests": {digest: {"kind", "examples",
                                   "settings"}}}; format 1, written before the context was recorded, has no
                                   "max_length" and is still read (answered with the model's context, or
                                   `answer`'s --max_length)
  REQUESTS_DIR/<digest>.npz       score: inputs, targets, weights (concatenated rows), lengths, groups;
                                  predict: prompts (concatenated), lengths
  REQUESTS_DIR/<tokenizer files>  the tokenizer the Tasks were tokenized with (none: OPT's, shipped)
  ANSWERS_DIR/answers.json        {"format_version": 1, "model": {checkpoint, step, format, config}, "settings":
                                   {batch_size, max_length, share_prompts}, "answers": {digest: {"kind",
                                   "stats"}}}, rewritten after every request
  ANSWERS_DIR/<digest>.npz        score: scores float64 [n]; predict: tokens int32 [n, max_new_tokens]
  ANSWERS_DIR/<tokenizer files>   copied from REQUESTS_DIR, so the folder names its tokenizer as a checkpoint does

Every file is written under a temporary name and renamed into place; an interrupted `answer` resumes at the
first request that answers.json does not list, if the same model answers with the same settings (those that change
an answer: `ANSWER_SETTINGS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Sequence
import zipfile

import numpy as np

from optiml_jax import tempfiles
from optiml_jax.checkpoints import discovery
from optiml_jax.data import special_tokens
from optiml_jax.evaluation import decoding
from optiml_jax.evaluation import inference

FORMAT_VERSION = 1  # answers.json's
# requests.json's: 2 records the context (`max_length`); 1, without it, is still read.
REQUESTS_FORMAT_VERSION = 2
REQUESTS_FORMATS = (1, REQUESTS_FORMAT_VERSION)
# The settings of `answer` that change an answer: answers.json's must match them for a run to resume into it.
ANSWER_SETTINGS = ("max_length", "share_prompts")
REQUESTS_FILE = "requests.json"
ANSWERS_FILE = "answers.json"
SCORE, PREDICT = "score", "predict"
# The tokenizer files a requests folder carries (those of a Hugging Face folder's tokenizer, its chat template among
# them: an evaluation in the chat format reads it again from the answers folder).
TOKENIZER_FILES = (discovery.TOKENIZER_JSON, *discovery.BPE_FILES, "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")

Path = str | os.PathLike


class RequestsError(ValueError):
  """A requests or answers folder that cannot be used as asked; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class Request:
  """One `score_fn` or `predict_fn` call of the evaluator: its kind, settings and token arrays."""

  kind: str  # SCORE or PREDICT
  settings: Mapping[str, Any]  # score: {"length_normalize"}; predict: {"max_new_tokens", "eos_ids"}; + {"bos_id"}
  arrays: Mapping[str, np.ndarray]  # see the module docstring

  @property
  def examples(self) -> int:
    return int(self.arrays["lengths"].size)


def _bos_setting(bos_id: int | None) -> dict[str, int]:
  """{"bos_id": id} when the tokenizer has a BOS (a prompt cut to fit keeps it), else nothing."""
  return {} if bos_id is None else {"bos_id": int(bos_id)}


def score_request(rows: Sequence[inference.ScoreRow], length_normalize: bool, bos_id: int | None = None) -> Request:
  """The request of scoring `rows` (`inference.score_rows_of`): their arrays concatenated, groups numbered."""
  groups: dict[Any, int] = {}
  return Request(SCORE, {
      "length_normalize": bool(length_normalize),
      **_bos_setting(bos_id)
  }, {
      "inputs": _concat([r.inputs for r in rows], np.int32),
      "targets": _concat([r.targets for r in rows], np.int32),
      "weights": _concat([r.weights for r in rows], np.float32),
      "lengths": np.asarray([len(r.inputs) for r in rows], np.int64),
      "groups": np.asarray([groups.setdefault(r.group, len(groups)) for r in rows], np.int64),
  })


def predict_request(prompts: Sequence[np.ndarray], max_new_tokens: int, eos_ids: Sequence[int],
                    bos_id: int | None = None) -> Request:
  """The request of greedy decoding from `prompts` (`inference.prompts_of`)."""
  return Request(PREDICT, {
      "max_new_tokens": int(max_new_tokens),
      "eos_ids": [int(i) for i in eos_ids],
      **_bos_setting(bos_id)
  }, {
      "prompts": _concat(prompts, np.int32),
      "lengths": np.asarray([len(p) for p in prompts], np.int64)
  })


def _concat(arrays: Sequence[Any], dtype: Any) -> np.ndarray:
  return np.concatenate([np.asarray(a, dtype).reshape(-1) for a in arrays]) if arrays else np.zeros(0, dtype)


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
  return np.split(flat, np.cumsum(lengths)[:-1]) if lengths.size else []


def score_rows_of_request(request: Request) -> list[inference.ScoreRow]:
  a = request.arrays
  return [
      inference.ScoreRow(x, y, w, int(g))
      for x, y, w, g in zip(_split(a["inputs"], a["lengths"]), _split(a["targets"], a["lengths"]),
                            _split(a["weights"], a["lengths"]), a["groups"])
  ]


def prompts_of_request(request: Request) -> list[np.ndarray]:
  return _split(request.arrays["prompts"], request.arrays["lengths"])


def digest(request: Request) -> str:
  """sha256 of the request's kind, settings and arrays (names, dtypes, shapes, little-endian bytes)."""
  h = hashlib.sha256(json.dumps({"kind": request.kind, "settings": dict(request.settings)}, sort_keys=True).encode())
  for name in sorted(request.arrays):
    array = np.ascontiguousarray(request.arrays[name])
    h.update(f"{name}:{array.dtype.newbyteorder('<').str}:{array.shape}".encode())
    h.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
  return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------
# Files: written under a temporary name, renamed into place.


def _write_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  fd, tmp = tempfiles.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  with os.fdopen(fd, "wb") as f:
    # numpy's stub types savez's keyword arrays as its `allow_pickle` flag.
    np.savez(f, **dict(arrays))  # type: ignore[arg-type]
  os.replace(tmp, path)


def _write_json(path: pathlib.Path, value: Any) -> None:
  fd, tmp = tempfiles.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _read_json(path: pathlib.Path, what: str, versions: Sequence[int] = (FORMAT_VERSION,)) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise RequestsError(f"{path.parent}: not {what} (no {path.name})") from e
  except (OSError, ValueError) as e:
    raise RequestsError(f"{path}: unreadable ({e})") from e
  if not isinstance(value, dict) or value.get("format_version") not in versions:
    raise RequestsError(f"{path}: format {value.get('format_version') if isinstance(value, dict) else None!r}, this "
                        f"version reads {' or '.join(map(str, versions))}")
  return value


def _read_requests(requests_dir: Path, what: str = "a requests folder") -> dict[str, Any]:
  """requests.json of `requests_dir` (either format: `REQUESTS_FORMATS`)."""
  return _read_json(pathlib.Path(requests_dir) / REQUESTS_FILE, what, REQUESTS_FORMATS)


def _read_npz(path: pathlib.Path, names: Sequence[str]) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [n for n in names if n not in data.files]
      if missing:
        raise RequestsError(f"{path}: no array {missing[0]!r} (expected {', '.join(names)})")
      return {n: data[n] for n in names}
  except FileNotFoundError as e:
    raise RequestsError(f"{path}: missing (the folder was copied incompletely?)") from e
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # cut short, not an .npz
    raise RequestsError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


REQUEST_ARRAYS = {SCORE: ("inputs", "targets", "weights", "lengths", "groups"), PREDICT: ("prompts", "lengths")}
TOKEN_ARRAYS = ("inputs", "targets", "prompts")  # the arrays of token ids a model embeds or scores


def copy_tokenizer(source: Path | None, target: Path) -> list[str]:
  """Copies the tokenizer files of folder `source` (none: OPT's, shipped) into `target`; returns their names."""
  if source is None:
    return []
  names = [n for n in TOKENIZER_FILES if (pathlib.Path(source) / n).is_file()]
  for name in names:
    shutil.copyfile(pathlib.Path(source) / name, pathlib.Path(target) / name)
  return names


def _tokenizer_files(folder: Path | None) -> dict[str, bytes]:
  """The tokenizer files (TOKENIZER_FILES) of a folder and their bytes; {} for None (OPT's, shipped)."""
  if folder is None:
    return {}
  return {n: (pathlib.Path(folder) / n).read_bytes() for n in TOKENIZER_FILES if (pathlib.Path(folder) / n).is_file()}


def tokenizer_dir(folder: Path) -> pathlib.Path | None:
  """`folder` when it holds tokenizer files (a requests or answers folder made with a tokenizer), else None."""
  folder = pathlib.Path(folder)
  return folder if special_tokens.is_tokenizer_folder(folder) else None


# ---------------------------------------------------------------------------------------------------------
# Recording.


class Recorder:
  """A scorer for `evaluator.evaluate_tasks` that records each call as a request in `out_dir` and answers with
  placeholders (scores 0, predictions of EOS only), so the seqio evaluation runs through without a model.

  `max_length` is the context the answering model will have: the recording side's checks use it, and requests.json
  records it for `answer`; a folder recorded with another context is refused. `eos_ids` end a greedy decoding
  (recorded in each predict request). The evaluator reports no score for a task it runs with a scorer whose
  `placeholder_outputs` is true.
  """

  placeholder_outputs = True

  def __init__(self, out_dir: Path, max_length: int, eos_ids: Sequence[int], tokenizer_folder: Path | None = None):
    self.out_dir = pathlib.Path(out_dir)
    self.max_length = int(max_length)
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.stats = inference.InferenceStats()
    self.index = recorded(self.out_dir)
    if self.index and _tokenizer_files(self.out_dir) != _tokenizer_files(tokenizer_folder):
      ours = tokenizer_folder if tokenizer_folder is not None else "OPT's (shipped)"
      raise RequestsError(f"{self.out_dir}: holds requests recorded with another tokenizer than this run's ({ours}); "
                          "record into a new folder")
    earlier = recorded_max_length(self.out_dir) if self.index else None  # format 1 recorded none: adopts ours
    if earlier is not None and earlier != self.max_length:
      raise RequestsError(f"{self.out_dir}: holds requests recorded for a context of {earlier} tokens, this run's is "
                          f"{self.max_length} (evaluate.max_length): record into a new folder, or with the same "
                          "evaluate.max_length")
    self.out_dir.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(tokenizer_folder, self.out_dir)

  def record(self, request: Request) -> str:
    """Writes the request (once; a request recorded before is kept) and lists it in requests.json."""
    key = digest(request)
    if key not in self.index:
      _write_npz(self.out_dir / f"{key}.npz", request.arrays)
      self.index[key] = {"kind": request.kind, "examples": request.examples, "settings": dict(request.settings)}
      _write_json(self.out_dir / REQUESTS_FILE, {
          "format_version": REQUESTS_FORMAT_VERSION,
          "max_length": self.max_length,
          "requests": self.index
      })
    return key

  def score_fn(self, length_normalize: bool = False,
               bos_id: int | None = None) -> Callable[..., inference.IndexedResult]:

    def score_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> inference.IndexedResult:
      del model_feature_shapes
      indices, rows = inference.score_rows_of(dataset)
      self.record(score_request(rows, length_normalize, bos_id))
      return [(i, 0.0) for i in indices]

    return score_fn

  def predict_fn(self, max_new_tokens: int = inference.DEFAULT_MAX_NEW_TOKENS,
                 eos_id: int | Sequence[int] | None = None,
                 bos_id: int | None = None) -> Callable[..., inference.IndexedResult]:
    eos = self.eos_ids if eos_id is None else decoding.eos_tuple(eos_id)

    def predict_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> inference.IndexedResult:
      del model_feature_shapes
      indices, prompts = inference.prompts_of(dataset)
      self.record(predict_request(prompts, max_new_tokens, eos, bos_id))
      return list(zip(indices, inference.fixed_length([[]] * len(prompts), max_new_tokens, eos)))

    return predict_fn


# ---------------------------------------------------------------------------------------------------------
# Answering (no TensorFlow, seqio or gin).


def load_request(requests_dir: Path, key: str, entry: Mapping[str, Any]) -> Request:
  kind = entry.get("kind")
  if kind not in REQUEST_ARRAYS:
    raise RequestsError(f"{requests_dir}/{REQUESTS_FILE}: request {key} has kind {kind!r}, expected {SCORE!r} or "
                        f"{PREDICT!r}")
  request = Request(kind, dict(entry.get("settings") or {}),
                    _read_npz(pathlib.Path(requests_dir) / f"{key}.npz", REQUEST_ARRAYS[kind]))
  if digest(request) != key:
    raise RequestsError(f"{requests_dir}/{key}.npz: its content does not match its digest (a damaged or edited file); "
                        "record the requests again")
  return request


def largest_token_id(requests_dir: Path) -> tuple[int, str] | None:
  """(the largest token id the recorded requests feed or score, the digest of a request holding it); None when
  they hold no token. Reads every request's token arrays (not its digest: `load_request` checks that)."""
  index = _read_requests(requests_dir)["requests"]
  largest: tuple[int, str] | None = None
  for key in sorted(index):
    kind = index[key].get("kind")
    if kind not in REQUEST_ARRAYS:
      raise RequestsError(f"{requests_dir}/{REQUESTS_FILE}: request {key} has kind {kind!r}, expected {SCORE!r} or "
                          f"{PREDICT!r}")
    names = [n for n in REQUEST_ARRAYS[kind] if n in TOKEN_ARRAYS]
    for array in _read_npz(pathlib.Path(requests_dir) / f"{key}.npz", names).values():
      if array.size and (largest is None or int(array.max()) > largest[0]):
        largest = (int(array.max()), key)
  return largest


def check_vocab_covers(requests_dir: Path, vocab_size: int, model: str) -> None:
  """Raises RequestsError when a model of `vocab_size` embedding rows cannot embed every token id of the recorded
  requests (it would answer with NaN scores and garbage tokens). `model` names the model in the message."""
  largest = largest_token_id(requests_dir)
  if largest is None or largest[0] < int(vocab_size):
    return
  raise RequestsError(f"{model}: vocab_size {int(vocab_size)} cannot embed the requests in {requests_dir}, whose token "
                      f"ids go up to {largest[0]} (request {largest[1]}): they were recorded with another tokenizer; "
                      "answer them with the model they were recorded for, or record them again with this model")


def answer_request(request: Request, scorer: inference.Scorer) -> dict[str, np.ndarray]:
  """The model's answer to one request: {"scores"} or {"tokens"} (int32 [n, max_new_tokens])."""
  bos_id = request.settings.get("bos_id")
  bos_id = None if bos_id is None else int(bos_id)
  if request.kind == SCORE:
    rows = score_rows_of_request(request)
    scores = inference.score_rows(scorer.model, scorer.params, rows, bool(request.settings["length_normalize"]),
                                  share_prompts=scorer.share_prompts, bos_id=bos_id, **_settings(scorer))
    return {"scores": np.asarray(scores, np.float64)}
  max_new_tokens = int(request.settings["max_new_tokens"])
  eos_ids = tuple(request.settings["eos_ids"]) or scorer.eos_ids
  outputs = inference.greedy_decode(scorer.model, scorer.params, prompts_of_request(request), max_new_tokens, eos_ids,
                                    bos_id=bos_id, **_settings(scorer))
  return {"tokens": inference.fixed_length(outputs, max_new_tokens, eos_ids)}


def _settings(scorer: inference.Scorer) -> dict[str, Any]:
  return dict(batch_size=scorer.batch_size, max_length=scorer.max_length, mesh=scorer.mesh, stats=scorer.stats,
              progress=scorer.progress)


def check_answers_folder(requests_dir: Path, out_dir: Path, model: Mapping[str, Any] | None = None,
                         name: str = "answers folder", settings: Mapping[str, Any] | None = None) -> None:
  """Raises RequestsError unless `out_dir` can receive `model`'s answers to the requests of `requests_dir`.

  Refused: a file, a path under a file, the requests folder itself (an answer is stored under its request's
  name), a folder holding answers of another model (those of `model`'s fields that answers.json records
  differently), and one holding answers made with other `settings` (those of `ANSWER_SETTINGS` it gives that
  answers.json records differently: the earlier answers would be listed under settings they were not made with).
  `name` says what `out_dir` is in the message (e.g. the flag `--out`).
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise RequestsError(f"{name} {out}: exists and is not a folder; name a new folder, or an interrupted run's")
  blocking = tempfiles.file_in_the_way(out)
  if blocking is not None:
    raise RequestsError(f"{name} {out}: {blocking} is a file, not a folder")
  if out.resolve() == pathlib.Path(requests_dir).resolve():
    raise RequestsError(f"{name} {out}: is the requests folder; answers go into a folder of their own")
  if model is not None and (out / ANSWERS_FILE).is_file():
    earlier = _read_json(out / ANSWERS_FILE, "an answers folder").get("model") or {}
    if any(earlier.get(key) != value for key, value in model.items()):
      raise RequestsError(f"{name} {out}: holds the answers of another model ({earlier.get('checkpoint')}); answer "
                          "into an empty folder")
  if settings is not None and (out / ANSWERS_FILE).is_file():
    made = _read_json(out / ANSWERS_FILE, "an answers folder").get("settings") or {}
    changed = [
        f"{key} {made.get(key)!r} (this run: {settings[key]!r})" for key in ANSWER_SETTINGS
        if key in settings and made.get(key) != settings[key]
    ]
    if changed:
      raise RequestsError(f"{name} {out}: holds answers made with other settings: {', '.join(changed)}; answer into "
                          "an empty folder, or resume with the same settings")


def recorded_max_length(requests_dir: Path) -> int | None:
  """The context requests.json says the requests were recorded for; None for format 1, which has none."""
  value = _read_requests(requests_dir).get("max_length")
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 2:
    raise RequestsError(f"{requests_dir}/{REQUESTS_FILE}: 'max_length' is {value!r}, expected a context of at least 2 "
                        "tokens")
  return value


def check_requests_fit(requests_dir: Path, max_length: int, name: str = "max_length") -> None:
  """Raises RequestsError unless every predict request of `requests_dir` decodes fewer new tokens than
  `max_length` (the prompt keeps at least one token). Reads requests.json only, so it is said before a model is read;
  `name` says where `max_length` came from in the message (e.g. the flag `--max_length`)."""
  index = _read_requests(requests_dir)["requests"]
  for key in sorted(index):
    if index[key].get("kind") != PREDICT:
      continue
    wanted = int((index[key].get("settings") or {}).get("max_new_tokens", 0))
    if not 1 <= wanted < max_length:
      raise RequestsError(f"{name} {max_length}: the predict request {key} in {requests_dir} decodes {wanted} new "
                          f"token(s), which needs a context of at least {wanted + 1} tokens")


def answer(requests_dir: Path, scorer: inference.Scorer, out_dir: Path, model: Mapping[str, Any],
           log: Callable[[str], None] = print) -> dict[str, Any]:
  """Answers every request of `requests_dir` with `scorer`'s model into `out_dir`; returns answers.json's content.

  `model`: what answers.json records of the model ({"checkpoint", "step", "format", "config"}: the Hugging Face
  config dict, from which the replaying evaluator rebuilds the model's config). Requests already answered in
  `out_dir` by the same model with the same settings are skipped (an interrupted run resumes); another model's
  answers there are refused, as are answers made with other settings (`ANSWER_SETTINGS`), a scorer whose context is
  not the one the requests were recorded for, a predict request that the context cannot hold
  (`check_requests_fit`), and a model whose vocabulary cannot embed the requests' token ids
  (`check_vocab_covers`), each before any request is answered.
  """
  requests_dir, out_dir = pathlib.Path(requests_dir), pathlib.Path(out_dir)
  check_answers_folder(requests_dir, out_dir)
  index = _read_requests(
      requests_dir, "a requests folder (record one with `python -m optiml_jax.eval "
      "... --gin.evaluate.record_requests=True`)")["requests"]
  settings = {"batch_size": scorer.batch_size, "max_length": scorer.max_length, "share_prompts": scorer.share_prompts}
  check_answers_folder(requests_dir, out_dir, settings=settings)
  context = recorded_max_length(requests_dir)
  if context is not None and context != scorer.max_length:
    raise RequestsError(f"{requests_dir}: the requests were recorded for a context of {context} tokens, the scorer's "
                        f"is {scorer.max_length}")
  check_requests_fit(requests_dir, scorer.max_length)
  check_vocab_covers(requests_dir, scorer.model.config.vocab_size, f"the model ({model.get('checkpoint')})")
  out_dir.mkdir(parents=True, exist_ok=True)
  answered: dict[str, Any] = {}
  state = {"format_version": FORMAT_VERSION, "model": dict(model), "settings": settings, "answers": answered}
  if (out_dir / ANSWERS_FILE).is_file():
    earlier = _read_json(out_dir / ANSWERS_FILE, "an answers folder")
    if earlier.get("model") != state["model"]:
      raise RequestsError(f"{out_dir}: holds the answers of another model ({earlier.get('model', {}).get('checkpoint')}"
                          f"); answer into an empty folder")
    answered.update(earlier.get("answers") or {})
  copy_tokenizer(tokenizer_dir(requests_dir), out_dir)
  todo = [k for k in sorted(index) if k not in answered]
  log(f"{len(index)} request(s) in {requests_dir}, {len(index) - len(todo)} answered before")
  for i, key in enumerate(todo):
    request = load_request(requests_dir, key, index[key])
    before = dataclasses.replace(scorer.stats)
    start = time.time()
    arrays = answer_request(request, scorer)
    _write_npz(out_dir / f"{key}.npz", arrays)
    stats = {k: v - getattr(before, k) for k, v in scorer.stats.as_dict().items()}
    answered[key] = {"kind": request.kind, "examples": request.examples, "stats": stats}
    _write_json(out_dir / ANSWERS_FILE, state)
    log(f"[{i + 1}/{len(todo)}] {request.kind} {key}: {request.examples} example(s), {time.time() - start:.1f} s")
  _write_json(out_dir / ANSWERS_FILE, state)
  return state


# ---------------------------------------------------------------------------------------------------------
# Replaying.


def is_answers_folder(path: Path) -> bool:
  return (pathlib.Path(path) / ANSWERS_FILE).is_file()


def answered_model(answers_dir: Path) -> dict[str, Any]:
  """answers.json's record of the model that answered: {"checkpoint", "step", "format", "config"}."""
  model = _read_json(pathlib.Path(answers_dir) / ANSWERS_FILE, "an answers folder")["model"]
  if not isinstance(model, dict):
    raise RequestsError(f"{answers_dir}/{ANSWERS_FILE}: 'model' is not an object")
  return model


def recorded(requests_dir: Path) -> dict[str, Any]:
  """requests.json's requests: {digest: {"kind", "examples", "settings"}} ({} for a folder without requests)."""
  path = pathlib.Path(requests_dir) / REQUESTS_FILE
  return _read_requests(requests_dir)["requests"] if path.is_file() else {}


class Replayer:
  """A scorer for `evaluator.evaluate_tasks` that answers each call from an answers folder (`answer`'s).

  `eos_ids`: as the Recorder's (a predict request's digest covers them). Its `stats` add up the answering run's
  counters of the requests it replays (truncated prompts, tokens, seconds, ...). `max_length` is the context the
  answers were made with (answers.json's settings): the replaying evaluation's must be the same
  (`check_replay_context`).
  """

  def __init__(self, answers_dir: Path, eos_ids: Sequence[int]):
    self.answers_dir = pathlib.Path(answers_dir)
    self.state = _read_json(self.answers_dir / ANSWERS_FILE, "an answers folder (`python -m optiml_jax.answer`)")
    self.max_length = int(self.state["settings"]["max_length"])
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.stats = inference.InferenceStats()

  def _answer(self, request: Request, name: str) -> np.ndarray:
    key = digest(request)
    entry = self.state["answers"].get(key)
    if entry is None:
      raise RequestsError(
          f"{self.answers_dir}: no answer to this {request.kind} request ({request.examples} example(s), digest {key}):"
          " the requests were recorded with other tasks, instances, shots, tokenizer or settings, or answering "
          "stopped before it; record and answer them again")
    for field, value in entry.get("stats", {}).items():
      setattr(self.stats, field, getattr(self.stats, field) + value)
    return _read_npz(self.answers_dir / f"{key}.npz", (name,))[name]

  def score_fn(self, length_normalize: bool = False,
               bos_id: int | None = None) -> Callable[..., inference.IndexedResult]:

    def score_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> inference.IndexedResult:
      del model_feature_shapes
      indices, rows = inference.score_rows_of(dataset)
      scores = self._answer(score_request(rows, length_normalize, bos_id), "scores")
      return [(i, float(s)) for i, s in zip(indices, scores)]

    return score_fn

  def predict_fn(self, max_new_tokens: int = inference.DEFAULT_MAX_NEW_TOKENS,
                 eos_id: int | Sequence[int] | None = None,
                 bos_id: int | None = None) -> Callable[..., inference.IndexedResult]:
    eos = self.eos_ids if eos_id is None else decoding.eos_tuple(eos_id)

    def predict_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> inference.IndexedResult:
      del model_feature_shapes
      indices, prompts = inference.prompts_of(dataset)
      tokens = self._answer(predict_request(prompts, max_new_tokens, eos, bos_id), "tokens")
      return list(zip(indices, tokens))

    return predict_fn


def check_replay_context(replayer: Replayer, max_length: int, name: str = "max_length", unset: bool = False) -> None:
  """Raises RequestsError unless `max_length`, the context the replaying evaluation asks for, is the one the
  answers were made with: a direct evaluation with that setting cuts prompts to it, so answers made with another
  context would be reported as its results. `name` names the setting in the message; `unset`: it was not set, and
  `max_length` is the model's whole context."""
  if max_length != replayer.max_length:
    asked = f"unset, the model's whole context of {max_length} tokens" if unset else f"{max_length}"
    raise RequestsError(f"{name}: {asked}, but the answers in {replayer.answers_dir} were made with a context of "
                        f"{replayer.max_length} tokens: set {name}={replayer.max_length} to replay them (as they were "
                        "recorded), or record and answer the requests again")
