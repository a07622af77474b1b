"""Tests of optiml_jax.data.formatting: layout, delimiters, demonstrations, tokens and truncation."""

import collections
import itertools

import numpy as np
import pytest

from optiml_jax.data import formatting
from optiml_jax.data import records
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data.sources import promptsource
from optiml_jax.data.sources import sni

EOS = 2


@pytest.fixture(scope="module")
def vocabulary():
  return vocab_lib.OPTVocabulary()


def _task(benchmark="sni", definition="Do the thing.", demonstrations=(), kind=records.GENERATION, fmt="sni"):
  return records.TaskSource(name=records.task_name(benchmark, "t1"), benchmark=benchmark, dataset="d", categories=(),
                            definition=definition, demonstrations=tuple(demonstrations), path="/data/t1.json",
                            kind=kind, open_instances=lambda: iter(()), format=fmt)


def test_delimiter_is_deterministic_and_uses_the_whole_list():
  picks = [formatting.choose_delimiter(0, "sni:t1", f"id-{i}") for i in range(400)]
  assert picks == [formatting.choose_delimiter(0, "sni:t1", f"id-{i}") for i in range(400)]
  counts = collections.Counter(picks)
  assert set(counts) == set(formatting.DELIMITERS)
  assert min(counts.values()) > 400 / len(formatting.DELIMITERS) / 3  # roughly uniform
  other_seed = [formatting.choose_delimiter(1, "sni:t1", f"id-{i}") for i in range(400)]
  other_task = [formatting.choose_delimiter(0, "sni:t2", f"id-{i}") for i in range(400)]
  assert picks not in (other_seed, other_task)


def test_sni_layout_definition_demonstrations_then_instance():
  demos = [records.Instance("p0", "2 + 2", ("4",)), records.Instance("p1", "1 + 5 ", ("6 ",))]
  task = _task(definition="  Add the numbers. ", demonstrations=demos)
  source, target = formatting.format_example(task, records.Instance("i7", "3 + 4\n", ("7", "seven")), demos,
                                             "\nAnswer:")
  assert source == ("Add the numbers.\n\n2 + 2\nAnswer: 4\n\n1 + 5\nAnswer: 6\n\n3 + 4\nAnswer:")
  assert target == "7"


def test_promptsource_layout_demonstrations_before_the_example():
  demos = [records.Instance("d0", "Is it red? Options: yes, no", ("yes",))]
  task = _task(benchmark="promptsource", definition="", fmt="p3")
  source, _ = formatting.format_example(task, records.Instance("x", "Is it blue? Options: yes, no", ("no",)), demos,
                                        " A:")
  assert source == "Is it red? Options: yes, no A: yes\n\nIs it blue? Options: yes, no A:"


def test_chat_turns_make_each_demonstration_a_turn_of_the_same_text():
  # For a chat model's few-shot prompt (data/chat.py): each demonstration a user turn and its answer; the
  # definition opens the first user turn (SNI) or the last (demonstrations first: PromptSource, FLAN).
  demos = [records.Instance("p0", "2 + 2", ("4",)), records.Instance("p1", "1 + 5 ", (" 6 ",))]
  task = _task(definition="  Add the numbers. ", demonstrations=demos)
  query = records.Instance("i7", "3 + 4\n", ("7",))
  turns, last = formatting.chat_turns(task, query, demos, "\nAnswer:")
  assert turns == [("Add the numbers.\n\n2 + 2\nAnswer:", "4"), ("1 + 5\nAnswer:", "6")]
  assert last == "3 + 4\nAnswer:"
  joined = "\n\n".join([f"{u} {a}" for u, a in turns] + [last])  # the plain prompt, the same text in turns
  assert joined == formatting.format_example(task, query, demos, "\nAnswer:")[0]
  p3 = _task(benchmark="promptsource", definition="Pick one.", fmt="p3")
  assert formatting.chat_turns(p3, query, demos[:1], " A:") == ([("2 + 2 A:", "4")], "Pick one.\n\n3 + 4 A:")
  # 0-shot: the whole prompt is the one user turn.
  assert formatting.chat_turns(task, query, (), " A:") == ([], "Add the numbers.\n\n3 + 4 A:")
  with pytest.raises(ValueError, match="demonstration d"):
    formatting.chat_turns(task, query, [records.Instance("d", "x")], " A:")


def test_no_delimiter_when_the_text_ends_with_a_colon():
  task = _task(definition="")
  source, _ = formatting.format_example(task, records.Instance("x", "Question: who?\nAnswer:  ", ("me",)), (),
                                        " Output:")
  assert source == "Question: who?\nAnswer:"
  demo = records.Instance("d", "Q: why?\nA:", ("because",))
  source, _ = formatting.format_example(task, records.Instance("x", "Q: how?", ("so",)), [demo], "\noutput:")
  assert source == "Q: why?\nA: because\n\nQ: how?\noutput:"


def test_lm_task_has_no_source_and_trains_on_the_whole_text(vocabulary):
  task = _task(benchmark="pretraining", definition="", kind=records.LANGUAGE_MODELING, fmt="text")
  text = "The cat sat on the mat.\n"
  assert formatting.format_example(task, records.Instance("x", text), (), " A:") == ("", text)
  inputs, targets = formatting.tokenize_example(vocabulary, "", text)
  assert inputs.size == 0
  assert targets.tolist() == vocabulary.encode("The cat sat on the mat.") + [EOS]


def test_missing_target_is_an_error_naming_task_and_instance():
  with pytest.raises(ValueError, match=r"/data/t1.json: task sni:t1, instance i3: field 'targets' is empty"):
    formatting.format_example(_task(), records.Instance("i3", "text"), (), " A:")


def test_demonstrations_are_deterministic_and_never_the_instance_itself():
  pool = [records.Instance(f"p{i}", f"in {i}", (f"out {i}",)) for i in range(10)]
  pool.append(records.Instance("no-target", "x"))
  for instance_id in ("p3", "q"):
    picks = formatting.choose_demonstrations(7, "sni:t1", instance_id, pool, 5)
    assert picks == formatting.choose_demonstrations(7, "sni:t1", instance_id, pool, 5)
    assert len(picks) == 5 and len({p.id for p in picks}) == 5
    assert all(p.id not in (instance_id, "no-target") for p in picks)
  draws = {formatting.choose_demonstrations(7, "sni:t1", f"i{j}", pool, 2) for j in range(30)}
  assert len(draws) > 5  # varies with the instance
  assert formatting.choose_demonstrations(7, "sni:t1", "p1", pool[:3], 5) == tuple(
      p for p in formatting.choose_demonstrations(7, "sni:t1", "p1", pool[:3], 5))
  assert len(formatting.choose_demonstrations(7, "sni:t1", "p1", pool[:3], 5)) == 2
  assert formatting.choose_demonstrations(7, "sni:t1", "p1", pool, 0) == ()
  # Too few own demonstrations: all of them, then the rest from the fallback pool.
  own = pool[:2]
  fallback = [records.Instance(f"f{i}", f"train {i}", (f"t {i}",)) for i in range(6)]
  picks = formatting.choose_demonstrations(7, "sni:t1", "x", own, 5, fallback)
  assert len(picks) == 5 and set(own) <= set(picks) and set(picks) - set(own) <= set(fallback)
  assert formatting.choose_demonstrations(7, "sni:t1", "x", pool, 2, fallback)[0] in pool


def test_demonstrations_never_repeat_the_instance_under_another_id():
  """Sources repeat an instance under another id (an SNI positive example that is also an instance, a P3 prompt on
  two lines): such a candidate would show the example's own answer in its prompt."""
  pool = [records.Instance(f"p{i}", f"in {i}", (f"out {i}",)) for i in range(6)]
  copy = records.Instance("task-7", "  in 3\n", ("out 3",))  # pool's p3, another id, other outer whitespace
  fallback = [records.Instance(f"f{i}", "in 3" if i == 0 else f"train {i}", (f"t {i}",)) for i in range(4)]
  for seed in range(40):
    picks = formatting.choose_demonstrations(seed, "sni:t1", copy.id, pool, 6, fallback, copy.input)
    assert len(picks) == 6 and all(p.input.strip() != "in 3" for p in picks)
  # Without the text only the id is compared (the instance's own id still excluded).
  assert any(p.id == "p3" for p in formatting.choose_demonstrations(0, "sni:t1", copy.id, pool, 6))


def test_demonstrations_of_one_prompt_are_distinct_worked_examples():
  """Sources repeat a worked example under other ids (an SNI positive example that is also one of the task's
  instances, a P3 line repeated): one k-shot prompt shows each worked example once, input and first answer
  compared with surrounding whitespace aside, and still k of them where the pools hold k distinct ones."""
  own = [records.Instance(f"pos-{i}", f"in {i}", (f"out {i}",)) for i in range(3)]
  fallback = [
      records.Instance("task-a", " in 0\n", ("out 0 ",)),  # own pos-0 as an instance
      records.Instance("line-1", "train 1", ("t 1",)),
      records.Instance("line-1b", "train 1", ("t 1",)),
      records.Instance("line-2", "train 2", ("t 2",)),
      records.Instance("line-3", "train 3", ("t 3",)),
      records.Instance("line-4", "train 3", ("another answer",)),  # same input, other answer: another example
  ]
  contents = {(d.input.strip(), d.targets[0].strip()) for d in own + fallback}
  for instance_id in (f"q{j}" for j in range(60)):
    for k in (4, 5, 7, 8):
      picks = formatting.choose_demonstrations(3, "sni:t1", instance_id, own, k, fallback)
      shown = [(d.input.strip(), d.targets[0].strip()) for d in picks]
      assert len(set(shown)) == len(shown) == min(k, len(contents)), (instance_id, k, [d.id for d in picks])
      assert set(own) <= set(picks)  # the task's own first
    # Repeats within one pool too: three distinct examples among four candidates give all three.
    picks = formatting.choose_demonstrations(3, "p3:t1", instance_id, fallback[1:5], 3)
    assert sorted(d.input for d in picks) == ["train 1", "train 2", "train 3"], instance_id


def test_real_sni_demonstration_equal_to_an_eval_instance_is_not_drawn(shared_dir):
  """task697 of the sample: its positive example 1 is also its instance task697-454de825... (one of the first 20,
  held out for evaluation): its 5-shot prompt must not hold its own answer."""
  task = sni.read_task(shared_dir / "data" / "natural-instructions" / "tasks" /
                       "task697_mmmlu_answer_generation_formal_logic.json")
  instance = next(i for i in task.instances() if i.id == "task697-454de825a3bf470f801d509cf06e8d2c")
  assert any(d.input.strip() == instance.input.strip() for d in task.demonstrations)  # the sample's repeat
  for shots in (1, 2, 5):
    demos = formatting.choose_demonstrations(0, task.name, instance.id, task.demonstrations, shots, (), instance.input)
    assert len(demos) == min(shots, len(task.demonstrations) - 1)
    source, _ = formatting.format_example(task, instance, demos, " A:")
    assert source.count(instance.input.strip()) == 1, shots


def test_tokens_are_bpe_of_joined_text_plus_eos(vocabulary):
  inputs, targets = formatting.tokenize_example(vocabulary, "Is it red?\nAnswer: ", "yes \n")
  joined = vocabulary.encode("Is it red?\nAnswer: yes")
  assert inputs.tolist() + targets.tolist() == joined + [EOS]
  assert targets.tolist() == vocabulary.encode(" yes") + [EOS]
  assert inputs.dtype == np.int32 and targets.dtype == np.int32
  # The recipe only right-strips the target: a leading space stays (two spaces after the source).
  inputs, targets = formatting.tokenize_example(vocabulary, "Q:", " no")
  assert inputs.tolist() + targets.tolist() == vocabulary.encode("Q:  no") + [EOS]
  inputs, targets = formatting.tokenize_example(vocabulary, "Q:", "")
  assert targets.tolist() == [EOS]


def _positions(inputs, targets, with_bos):
  """Row positions an example takes: every token but the last is read, with a BOS in front when there is one."""
  return len(inputs) + len(targets) - (0 if with_bos else 1)


@pytest.mark.parametrize("with_bos", [True, False])
def test_fit_to_row_keeps_the_whole_target_and_cuts_the_prompt_from_the_left(with_bos):
  inputs = np.arange(10, 30, dtype=np.int32)  # a 20-token prompt
  targets = np.asarray([5, 6, 7, 8, 9, EOS], np.int32)
  # Rows of 16 positions: with a BOS, 16 tokens fit (the paper's 2048 + its leading </s>); without, 17.
  cut_inputs, cut_targets = formatting.fit_to_row(inputs, targets, 16, EOS, with_bos)
  budget = 16 if with_bos else 17
  assert cut_targets is targets  # whole, although longer than any "targets" budget of the old 12 / 4 split
  assert cut_inputs.tolist() == list(range(30 - (budget - 6), 30))  # the prompt's end stays
  assert _positions(cut_inputs, cut_targets, with_bos) == 16
  # Only the sum counts: the same example in any inputs / targets split of 16 gives this.
  short = np.asarray([5, EOS], np.int32)
  assert formatting.fit_to_row(inputs, short, 16, EOS, with_bos)[0].tolist() == list(range(30 - (budget - 2), 30))
  # An example that fits is left as it is.
  same = formatting.fit_to_row(inputs[:3], targets, 16, EOS, with_bos)
  assert same[0].tolist() == [10, 11, 12] and same[1] is targets
  # A target longer than the row by itself: cut from the end, keeping its EOS; no prompt is left.
  long_targets = np.arange(40, 40 + 30, dtype=np.int32)
  long_targets[-1] = EOS
  cut_inputs, cut_targets = formatting.fit_to_row(inputs, long_targets, 16, EOS, with_bos)
  assert cut_inputs.size == 0
  assert cut_targets.tolist() == list(range(40, 40 + budget - 1)) + [EOS]
  assert _positions(cut_inputs, cut_targets, with_bos) == 16
  with pytest.raises(ValueError, match="sequence length must be >= 1"):
    formatting.fit_to_row(inputs, targets, 0, EOS)


@pytest.mark.parametrize("with_bos", [True, False])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 25, 33])
def test_split_text_predicts_every_token_once_in_row_sized_chunks(with_bos, n):
  length = 8
  text = np.arange(100, 100 + n, dtype=np.int32)
  text[-1] = EOS
  chunks = formatting.split_text(text, length, with_bos)
  assert all(_positions([], c, with_bos) <= length for c in chunks)
  assert all(c.size for c in chunks)
  # The tokens each chunk predicts (all of them with a BOS; all but the first without) tile the text once.
  predicted = np.concatenate([c if with_bos else c[1:] for c in chunks])
  assert predicted.tolist() == (text if with_bos else text[1:]).tolist()
  # Chunks follow the text in order; without a BOS each starts with the token the chunk before ended on.
  assert np.concatenate([chunks[0]] + [c if with_bos else c[1:] for c in chunks[1:]]).tolist() == text.tolist()
  if len(chunks) > 1:
    assert all(_positions([], c, with_bos) == length for c in chunks[:-1])  # full rows but the last
    assert not any(EOS in c for c in chunks[:-1]) and chunks[-1][-1] == EOS
  else:
    assert chunks[0] is text
  # What the Task preprocessor does: text is split, an example with a prompt is fitted, never split.
  assert [t.tolist() for _, t in formatting.row_examples(text[:0], text, length, EOS, with_bos)
         ] == [c.tolist() for c in chunks]
  fitted = formatting.row_examples(np.asarray([3, 4], np.int32), text, length, EOS, with_bos)
  assert len(fitted) == 1 and _positions(*fitted[0], with_bos) <= length


def test_truncate_tokens_for_decoding_keeps_two_budgets():
  inputs = np.arange(10, 30, dtype=np.int32)
  targets = np.asarray([5, 6, EOS], np.int32)
  cut_inputs, cut_targets = formatting.truncate_tokens(inputs, targets, 8, 4, EOS)
  assert cut_inputs.tolist() == list(range(22, 30))  # the last 8 tokens: the end of the prompt stays
  assert cut_targets.tolist() == [5, 6, EOS]
  long_targets = np.asarray([5, 6, 7, 8, 9, EOS], np.int32)
  _, cut_targets = formatting.truncate_tokens(inputs, long_targets, 8, 4, EOS)
  assert cut_targets.tolist() == [5, 6, 7, EOS]
  same = formatting.truncate_tokens(inputs, targets, None, None, EOS)
  assert same[0] is inputs and same[1] is targets
  with pytest.raises(ValueError, match="targets length must be >= 1"):
    formatting.truncate_tokens(inputs, long_targets, 8, 0, EOS)


SNI_SAMPLE = ("task1292_yelp_review_full_text_categorization", "task1759_gsm", "task1761_svamp")


def test_real_sni_tasks_format_and_tokenize_like_hugging_face(shared_dir, opt_tokenizer_dir, vocabulary):
  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(str(opt_tokenizer_dir))
  tasks_dir = shared_dir / "data" / "natural-instructions" / "tasks"
  paths = [tasks_dir / f"{name}.json" for name in SNI_SAMPLE]
  paths += sorted(tasks_dir.glob("*.json"))[:12]
  checked = 0
  for path in paths:
    task = sni.read_task(path)
    assert task.definition
    instances = list(itertools.islice(task.instances(), 4))
    for instance in instances:
      delimiter = formatting.choose_delimiter(0, task.name, instance.id)
      demos = formatting.choose_demonstrations(0, task.name, instance.id, task.demonstrations, 2)
      source, target = formatting.format_example(task, instance, demos, delimiter)
      assert source.startswith(task.definition.strip())
      assert source.endswith(":")
      if not instance.input.rstrip().endswith(":"):
        assert source.endswith(instance.input.rstrip() + delimiter)
      for demo in demos:
        position = source.index(demo.input.rstrip())
        assert len(task.definition.strip()) <= position < source.rindex(instance.input.rstrip())
      assert target == instance.targets[0] and isinstance(target, str)
      inputs, targets = formatting.tokenize_example(vocabulary, source, target)
      expected = hf(source.rstrip(" ") + " " + target.rstrip())["input_ids"]
      assert expected[0] == EOS  # Hugging Face's OPT tokenizer starts with </s> as BOS
      assert [EOS] + inputs.tolist() + targets.tolist() == expected + [EOS], (task.name, instance.id)
      checked += 1
  assert checked >= 50


def test_real_sni_examples_fit_the_row_with_their_whole_target(shared_dir, vocabulary):
  """Real SNI tasks with long prompts (yelp reviews, math word problems), 2-shot, in rows of 128 positions:
  the fitted example is the end of BPE(source + " " + target) + </s>, target whole, prompt cut at its start."""
  tasks_dir = shared_dir / "data" / "natural-instructions" / "tasks"
  cut = 0
  for name in SNI_SAMPLE:
    task = sni.read_task(tasks_dir / f"{name}.json")
    for instance in itertools.islice(task.instances(), 6):
      delimiter = formatting.choose_delimiter(0, task.name, instance.id)
      demos = formatting.choose_demonstrations(0, task.name, instance.id, task.demonstrations, 2)
      source, target = formatting.format_example(task, instance, demos, delimiter)
      inputs, targets = formatting.tokenize_example(vocabulary, source, target)
      fitted_inputs, fitted_targets = formatting.fit_to_row(inputs, targets, 128, EOS)
      whole = inputs.tolist() + targets.tolist()
      if len(targets) <= 128:
        assert fitted_targets.tolist() == targets.tolist()
        assert fitted_inputs.tolist() + fitted_targets.tolist() == whole[-min(len(whole), 128):]
        assert vocabulary.decode(fitted_inputs.tolist()) in source  # the end of the prompt, delimiter included
      cut += len(inputs) + len(targets) > 128
  assert cut >= 10  # most of these prompts are longer than the row


def test_real_text_split_into_chunks_decodes_back_to_the_document(shared_dir, vocabulary):
  """Real reviews (SNI's yelp task) read as pre-training text: chunks of a 64-position row, BOS first."""
  task = sni.read_task(shared_dir / "data" / "natural-instructions" / "tasks" / f"{SNI_SAMPLE[0]}.json")
  lm = _task(benchmark="pretraining", definition="", kind=records.LANGUAGE_MODELING, fmt="text")
  split = 0
  for instance in itertools.islice(task.instances(), 8):
    source, target = formatting.format_example(lm, records.Instance(instance.id, instance.input), ())
    inputs, targets = formatting.tokenize_example(vocabulary, source, target)
    assert inputs.size == 0
    pieces = formatting.row_examples(inputs, targets, 64, EOS)
    assert all(i.size == 0 and t.size <= 64 for i, t in pieces)
    tokens = np.concatenate([t for _, t in pieces])
    assert tokens.tolist() == targets.tolist() and tokens[-1] == EOS
    assert vocabulary.decode(tokens[:-1].tolist()) == instance.input.strip()
    split += len(pieces) > 1
  assert split >= 4


def test_real_p3_template_has_no_definition_and_keeps_the_prompt(shared_dir):
  folder = shared_dir / "data" / "p3" / "data_per_template"
  task = promptsource.read_task(sorted(folder.glob("*.jsonl"))[0])
  instance = next(task.instances())
  source, target = formatting.format_example(task, instance, (), "\nAnswer:")
  assert formatting.demonstrations_first(task)
  assert source.startswith(instance.input.rstrip()[:50])
  assert target == instance.targets[0]


# --- Other tokenizers: their own BOS policy and EOS ------------------------------------------------------------

PAIRS = [("Is it red?\nAnswer:", "yes \n"), ("Q:", " no"), ("What is 40 + 2?\nA:", "42"),
         ("Review: great!\nOutput:", "5"), ("", "Plain pre-training text, the whole of it a target."),
         ("Say nothing:", "")]


def _sni_examples(shared_dir, count):
  tasks_dir = shared_dir / "data" / "natural-instructions" / "tasks"
  for path in [tasks_dir / f"{name}.json" for name in SNI_SAMPLE] + sorted(tasks_dir.glob("*.json"))[:count]:
    task = sni.read_task(path)
    for instance in itertools.islice(task.instances(), 3):
      delimiter = formatting.choose_delimiter(0, task.name, instance.id)
      demos = formatting.choose_demonstrations(0, task.name, instance.id, task.demonstrations, 2)
      yield formatting.format_example(task, instance, demos, delimiter)


def _assert_tokens_match(vocab, reference, source, target):
  """[BOS where the tokenizer adds one] + inputs + targets == transformers' ids of the joined text + [EOS]."""
  inputs, targets = formatting.tokenize_example(vocab, source, target)
  joined = (source.rstrip(" ") + " " + target.rstrip()) if source and target.strip() else source + target.rstrip()
  assert list(
      vocab.prefix_ids) + inputs.tolist() + targets.tolist() == reference(joined)["input_ids"] + [vocab.eos_id], (
          source[-40:], target)
  assert targets[-1] == vocab.eos_id


@pytest.mark.parametrize("style", ["smollm2", "llama3", "llama2"])
def test_tokens_follow_each_tokenizers_own_bos_and_eos(tiny_tokenizer, style):
  transformers = pytest.importorskip("transformers")
  folder = tiny_tokenizer(style)
  vocab = vocab_lib.HFVocabulary(folder)
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  assert reference.eos_token_id == vocab.eos_id
  for source, target in PAIRS:
    _assert_tokens_match(vocab, reference, source, target)


@pytest.mark.parametrize("style", ["smollm2", "llama3", "llama2"])
def test_real_sni_tasks_tokenize_like_hugging_face_with_other_tokenizers(shared_dir, tiny_tokenizer, style):
  transformers = pytest.importorskip("transformers")
  folder = tiny_tokenizer(style)
  vocab = vocab_lib.HFVocabulary(folder)
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  examples = list(_sni_examples(shared_dir, 8))
  for source, target in examples:
    _assert_tokens_match(vocab, reference, source, target)
  assert len(examples) >= 25


@pytest.mark.slow
def test_real_sni_tasks_tokenize_like_hugging_face_with_smollm2(shared_dir, smollm2_tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  vocab = vocab_lib.HFVocabulary(smollm2_tokenizer_dir)
  reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
  assert vocab.prefix_ids == () and vocab.eos_id == reference.eos_token_id == 2
  examples = list(_sni_examples(shared_dir, 12)) + PAIRS
  for source, target in examples:
    _assert_tokens_match(vocab, reference, source, target)


def test_a_target_is_tokenized_as_it_follows_its_source(tiny_tokenizer, vocabulary):
  # Sentencepiece-style tokenizers prepend "▁" to any text: " yes" alone gets a stray "▁" that the joined text
  # has not. The target's tokens are the joined encoding's tail.
  llama2 = vocab_lib.HFVocabulary(tiny_tokenizer("llama2"))
  assert not llama2.continuations_encode_alone and vocabulary.continuations_encode_alone
  assert all(
      vocab_lib.HFVocabulary(tiny_tokenizer(style)).continuations_encode_alone for style in ("smollm2", "llama3"))
  inputs, targets = formatting.tokenize_example(llama2, "Answer:", "yes")
  tail = llama2.encode("Answer: yes")[len(inputs):]
  assert targets.tolist() == tail + [llama2.eos_id] and llama2.encode(" yes") != tail
  assert formatting.continuation_tokens(llama2, "Answer:", inputs.tolist(), " yes") == tail
  # A boundary the source's own tokens do not survive: the text is encoded alone.
  assert formatting.continuation_tokens(llama2, "Answer:", [1, 2], " yes") == llama2.encode(" yes")
  assert formatting.continuation_tokens(vocabulary, "", [], " yes") == vocabulary.encode(" yes")
  assert formatting.continuation_tokens(vocabulary, "Answer:", vocabulary.encode("Answer:"), "") == []
