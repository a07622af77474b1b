"""The toy bench: a few dozen synthetic instruction tasks written in Super-NaturalInstructions' format.

Where it sits: a stand-in for the source checkouts on a machine with no downloads (`make quickstart`,
tests). `write(out_dir, seed)` writes `out_dir/tasks/<task>.json` (SNI's JSON task format) and
`out_dir/splits/default/{train,test}_tasks.txt`; the SNI reader and the catalog then treat it exactly like
a natural-instructions checkout, with `tasks/toybench.yaml` as its bench definition (`CONFIG_PATH`).

The tasks are short (inputs of a few words, one- or two-word targets). Categories follow SNI's names;
"Textual Entailment" and "Coreference Resolution" are fully held out (as in SNI), and one task of several seen
categories is in the test split (held-out tasks of seen categories). Output is deterministic for a given seed.

What a tiny model trained from scratch for a minute can learn (`make quickstart`): a label that a word or two
of the input decide. The four core tasks (movie and book sentiment, topic, animal or fruit) are such
classifications and have `CORE_SCALE` times the instances of the others, so the examples-proportional mixture
gives them 70% of the training examples; the others (arithmetic, string edits, lookups) need far more training
and mostly show the generation path. Classification tasks are multiple choice: each instance carries its
answer candidates in an "options" field (not an SNI field; the SNI reader reads it), so the evaluation ranks
them and reports accuracy beside the chance of guessing. Their answers are drawn evenly over the options, so
that chance is 1 / (number of options). The held-out food sentiment task shares the core sentiment tasks'
adjectives and nearly their instruction, about a new subject (meals): the one held-out task a quickstart model
transfers to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
from typing import Callable

from optiml_jax import resources
from optiml_jax import tempfiles

# The bench definition of the toy bench: tasks/toybench.yaml, shipped with the package (optiml_jax.resources).
CONFIG_PATH = resources.task_file("toybench.yaml")
NUM_INSTANCES = 100
CORE_SCALE = 10  # the core tasks have 10x the instances of the others
NUM_DEMONSTRATIONS = 2

_COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
_NAMES = ("Anna", "Tom", "Mia", "Leo", "Sara", "Ben", "Lily", "Max", "Eva", "Sam")
_PLACES = ("kitchen", "garden", "park", "school", "library", "office", "beach", "market")
_OBJECTS = ("ball", "car", "hat", "cup", "box", "kite", "book", "lamp")
_ANIMALS = ("cat", "dog", "horse", "mouse", "lion", "bird", "frog", "sheep", "goat", "duck")
_FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon")
_CONSONANTS = "bdfgklmnprtv"
_FINAL_CONSONANTS = "bdgklmnprt"
_VOWELS = "aeiou"
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SUBJECTS = ("film", "book", "show", "play", "song", "game")
_MEALS = ("dinner", "lunch", "soup", "cake", "pizza", "salad")
_ADVERBS = ("really", "quite", "very", "truly")
_ANTONYMS = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("old", "new"), ("up", "down"),
             ("open", "closed"), ("light", "dark"), ("early", "late"), ("full", "empty"), ("high", "low"),
             ("hard", "soft"), ("wet", "dry"), ("long", "short"), ("rich", "poor"))
_GOOD = ("great", "wonderful", "excellent", "amazing", "lovely", "fantastic")
_BAD = ("terrible", "awful", "boring", "horrible", "dull", "dreadful")
_TOPICS = {
    "sports":
        ("won the match", "scored a goal", "ran a marathon", "played tennis", "trained the team", "swam ten laps"),
    "food":
        ("baked fresh bread", "made hot soup", "cooked pasta", "ate rice and beans", "grilled some fish", "cut a cake"),
    "weather": ("saw heavy rain", "felt the hot sun", "watched the snow fall", "felt a strong wind",
                "heard a storm coming", "saw a cloudy sky"),
}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# An instance: (input, output), or (input, output, option, option, ...) when its answer candidates depend on it.
Generator = Callable[[random.Random], tuple[str, ...]]
_SENTIMENTS = ("positive", "negative")
_YES_NO = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class ToyTask:
  slug: str
  category: str
  definition: str
  generate: Generator
  test: bool = False  # in the test split (a held-out task), else in the train split
  options: tuple[str, ...] = ()  # the answer candidates of every instance (a multiple-choice task), if fixed
  scale: int = 1  # instances: `num_instances` x scale (examples-proportional mixing then samples it more)


def _word(rng: random.Random) -> str:
  """A pronounceable made-up word of 3 to 6 letters ending in a consonant ("bado" is not; "kelim" is)."""
  length = rng.randint(3, 6)
  letters = [rng.choice(_CONSONANTS if (length - k) % 2 else _VOWELS) for k in range(length)]
  letters[-1] = rng.choice(_FINAL_CONSONANTS)
  return "".join(letters)


def _in_order(*options: str) -> tuple[str, ...]:
  """Answer candidates in alphabetical order, so an answer's position says nothing about it."""
  return tuple(sorted(options, key=str.lower))


def _plural(noun: str) -> str:
  return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _digit_list(rng: random.Random) -> list[int]:
  return [rng.randrange(10) for _ in range(rng.randint(3, 5))]


def _add_small(rng: random.Random) -> tuple[str, str]:
  a, b = rng.randint(0, 19), rng.randint(0, 19)
  return f"{a} + {b}", str(a + b)


def _add_large(rng: random.Random) -> tuple[str, str]:
  a, b = rng.randint(10, 49), rng.randint(10, 49)
  return f"{a} plus {b}", str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
  a = rng.randint(0, 19)
  b = rng.randint(0, a)
  return f"{a} - {b}", str(a - b)


def _double(rng: random.Random) -> tuple[str, str]:
  a = rng.randint(0, 499)
  return str(a), str(2 * a)


def _successor(rng: random.Random) -> tuple[str, str]:
  a = rng.randint(0, 199)
  return str(a), str(a + 1)


def _on_word(transform: Callable[[str], str]) -> Generator:

  def generate(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, transform(word)

  return generate


def _on_digits(transform: Callable[[list[int]], str]) -> Generator:

  def generate(rng: random.Random) -> tuple[str, str]:
    digits = _digit_list(rng)
    return " ".join(map(str, digits)), transform(digits)

  return generate


def _joined(digits: list[int]) -> str:
  return " ".join(map(str, digits))


def _extreme_digit(largest: bool) -> Generator:
  """A list whose largest (or smallest) digit is drawn uniformly first, so every answer is equally likely."""

  def generate(rng: random.Random) -> tuple[str, str]:
    answer = rng.randrange(10)
    others = range(answer + 1) if largest else range(answer, 10)
    digits = [rng.choice(others) for _ in range(rng.randint(3, 5))]
    digits[rng.randrange(len(digits))] = answer
    return _joined(digits), str(answer)

  return generate


def _sentiment(subjects: tuple[str, ...]) -> Generator:

  def generate(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    adjective = rng.choice(_GOOD if positive else _BAD)
    text = f"{rng.choice(_NAMES)} said the {rng.choice(subjects)} was {rng.choice(_ADVERBS)} {adjective}."
    return text, "positive" if positive else "negative"

  return generate


def _topic(rng: random.Random) -> tuple[str, str]:
  topic = rng.choice(sorted(_TOPICS))
  return f"On {rng.choice(_DAYS)}, {rng.choice(_NAMES)} {rng.choice(_TOPICS[topic])}.", topic


def _animal_or_fruit(rng: random.Random) -> tuple[str, str]:
  word = rng.choice(_ANIMALS + _FRUITS)
  return f"{rng.choice(_NAMES)} has a {rng.choice(_COLORS)} {word}.", "animal" if word in _ANIMALS else "fruit"


def _antonym(reverse: bool) -> Generator:

  def generate(rng: random.Random) -> tuple[str, ...]:
    a, b = rng.choice(_ANTONYMS)
    word, answer = (b, a) if reverse else (a, b)
    return f"{rng.choice(_NAMES)}'s {rng.choice(_OBJECTS)} is {word}.", answer

  return generate


def _color_question(rng: random.Random) -> tuple[str, str]:
  name, obj, color = rng.choice(_NAMES), rng.choice(_OBJECTS), rng.choice(_COLORS)
  return f"{name}'s {obj} is {color}. What color is {name}'s {obj}?", color


def _owner_question(rng: random.Random) -> tuple[str, str]:
  name, color, animal = rng.choice(_NAMES), rng.choice(_COLORS), rng.choice(_ANIMALS)
  return f"{name} has a {color} {animal}. Who has a {color} {animal}?", name


def _place_question(rng: random.Random) -> tuple[str, str]:
  name, place, animal = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_ANIMALS)
  return f"{name} is in the {place} with a {animal}. Where is {name}?", place


def _number_blank(rng: random.Random) -> tuple[str, str]:
  start = rng.randint(0, 195)
  numbers = [str(start + k) for k in range(4)]
  k = rng.randrange(4)
  answer, numbers[k] = numbers[k], "___"
  return " ".join(numbers), answer


def _letter_blank(rng: random.Random) -> tuple[str, str]:
  length = rng.randint(2, 5)
  start = rng.randint(0, 25 - length)
  letters = _LETTERS if rng.random() < 0.5 else _LETTERS.upper()
  return " ".join(letters[start:start + length]) + " ___", letters[start + length]


def _entail_color(rng: random.Random) -> tuple[str, str]:
  name, obj, color = rng.choice(_NAMES), rng.choice(_OBJECTS), rng.choice(_COLORS)
  other = color if rng.random() < 0.5 else rng.choice([c for c in _COLORS if c != color])
  return (f"Premise: {name} has a {color} {obj}. Hypothesis: {name} has a {other} {obj}.",
          "yes" if other == color else "no")


def _entail_place(rng: random.Random) -> tuple[str, str]:
  name, place = rng.choice(_NAMES), rng.choice(_PLACES)
  other = place if rng.random() < 0.5 else rng.choice([p for p in _PLACES if p != place])
  return (f"Premise: {name} is in the {place}. Hypothesis: {name} is in the {other}.",
          "yes" if other == place else "no")


def _entail_count(rng: random.Random) -> tuple[str, str]:
  name, fruit, n, m = rng.choice(_NAMES), rng.choice(_FRUITS), rng.randint(2, 9), rng.randint(1, 9)
  return (f"Premise: {name} has {n} {_plural(fruit)}. Hypothesis: {name} has more than {m}.", "yes" if n > m else "no")


def _coref_animal(rng: random.Random) -> tuple[str, ...]:
  name, animal = rng.choice(_NAMES), rng.choice(_ANIMALS)
  if rng.random() < 0.5:
    return f"{name} saw the {animal}. It ran away. What ran away?", animal, *_in_order(name, animal)
  return f"{name} saw the {animal}. They waved. Who waved?", name, *_in_order(name, animal)


def _coref_object(rng: random.Random) -> tuple[str, ...]:
  name, color, obj = rng.choice(_NAMES), rng.choice(_COLORS), rng.choice(_OBJECTS)
  if rng.random() < 0.5:
    return f"{name} dropped the {color} {obj}. It broke. What does it refer to?", obj, *_in_order(name, obj)
  return f"{name} dropped the {color} {obj}. They cried. Who does they refer to?", name, *_in_order(name, obj)


TASKS: tuple[ToyTask, ...] = (
    ToyTask("add_small", "Mathematics", "Add the two numbers. Answer with the sum.", _add_small),
    ToyTask("subtract", "Mathematics", "Subtract the second number from the first.", _subtract),
    ToyTask("double", "Mathematics", "Double the number.", _double),
    ToyTask("successor", "Mathematics", "What number comes right after the given number?", _successor),
    ToyTask("add_large", "Mathematics", "Compute the sum of the two numbers.", _add_large, test=True),
    ToyTask("count_letters", "Mathematics", "How many letters does the word have?", _on_word(lambda w: str(len(w)))),
    ToyTask("reverse_word", "Program Execution", "Write the word backwards.", _on_word(lambda w: w[::-1])),
    ToyTask("uppercase", "Program Execution", "Write the word in capital letters.", _on_word(str.upper)),
    ToyTask("first_letter", "Program Execution", "Give the first letter of the word.", _on_word(lambda w: w[0])),
    ToyTask("last_letter", "Program Execution", "Give the last letter of the word.", _on_word(lambda w: w[-1])),
    ToyTask("sort_ascending", "Program Execution", "Sort the digits from smallest to largest.",
            _on_digits(lambda d: _joined(sorted(d)))),
    ToyTask("sort_descending", "Program Execution", "Sort the digits from largest to smallest.",
            _on_digits(lambda d: _joined(sorted(d, reverse=True))), test=True),
    ToyTask("list_max", "Program Execution", "Find the largest digit in the list.", _extreme_digit(largest=True)),
    ToyTask("list_min", "Program Execution", "Find the smallest digit in the list.", _extreme_digit(largest=False)),
    ToyTask("copy_word", "Misc.", "Copy the input exactly.", _on_word(lambda w: w)),
    ToyTask("repeat_twice", "Misc.", "Repeat the word two times.", _on_word(lambda w: f"{w} {w}")),
    ToyTask("movie_sentiment", "Sentiment Analysis", "Is the review positive or negative?", _sentiment(_SUBJECTS[:3]),
            options=_SENTIMENTS, scale=CORE_SCALE),
    ToyTask("book_sentiment", "Sentiment Analysis", "Classify the sentiment of the sentence as positive or negative.",
            _sentiment(_SUBJECTS[3:]), options=_SENTIMENTS, scale=CORE_SCALE),
    ToyTask("food_sentiment",
            "Sentiment Analysis", "Classify the sentiment of the sentence about food as positive or negative.",
            _sentiment(_MEALS), test=True, options=_SENTIMENTS),
    ToyTask("topic", "Text Categorization", "Is the sentence about sports, food or weather?", _topic,
            options=tuple(sorted(_TOPICS)), scale=CORE_SCALE),
    ToyTask("animal_or_fruit", "Text Categorization", "Is the thing in the sentence an animal or a fruit?",
            _animal_or_fruit, options=("animal", "fruit"), scale=CORE_SCALE),
    ToyTask("antonym", "Word Semantics", "Give the opposite of the adjective in the sentence.",
            _antonym(reverse=False)),
    ToyTask("antonym_reverse", "Word Semantics", "Write the antonym of the last word.", _antonym(reverse=True)),
    ToyTask("plural", "Word Semantics", "Write the plural of the made-up noun.", _on_word(_plural)),
    ToyTask("color_question", "Question Answering", "Answer the question using the sentence.", _color_question),
    ToyTask("owner_question", "Question Answering", "Read the sentence and answer the question.", _owner_question),
    ToyTask("place_question", "Question Answering", "Answer the question about where someone is.", _place_question,
            test=True),
    ToyTask("number_blank", "Fill in The Blank", "Fill in the missing number.", _number_blank),
    ToyTask("letter_blank", "Fill in The Blank", "Write the letter that comes next.", _letter_blank),
    ToyTask("entail_color", "Textual Entailment", "Does the premise entail the hypothesis? Answer yes or no.",
            _entail_color, test=True),
    ToyTask("entail_place", "Textual Entailment", "Is the hypothesis true given the premise? Answer yes or no.",
            _entail_place, test=True, options=_YES_NO),
    ToyTask("entail_count", "Textual Entailment", "Does the hypothesis follow from the premise? Answer yes or no.",
            _entail_count, test=True, options=_YES_NO),
    ToyTask("coref_animal", "Coreference Resolution", "Answer the question about the pronoun.", _coref_animal,
            test=True),
    ToyTask("coref_object", "Coreference Resolution", "Say who or what the pronoun refers to.", _coref_object,
            test=True),
)


def task_names() -> list[str]:
  """Local SNI-style names of the toy tasks, in order ("task001_toy_add_small", ...)."""
  return [f"task{i:03d}_toy_{t.slug}" for i, t in enumerate(TASKS, 1)]


def _instances(task: ToyTask, rng: random.Random, count: int) -> list[tuple[str, str, tuple[str, ...]]]:
  """Up to `count` (input, output, options) with distinct inputs (fewer when the task has fewer distinct inputs).

  `options` are the task's fixed candidates, those the generator gave, or () for a generation task.
  """
  triples, seen = [], set()
  for _ in range(count * 20):
    text, target, *options = task.generate(rng)
    if text not in seen:
      seen.add(text)
      triples.append((text, target, tuple(options) or task.options))
      if len(triples) == count:
        break
  return triples


def _instance(name: str, k: int, text: str, target: str, options: tuple[str, ...]) -> dict:
  instance = {"id": f"{name}-{k}", "input": text, "output": [target]}
  if options:
    instance["options"] = list(options)
  return instance


def task_json(task: ToyTask, name: str, seed: int, num_instances: int = NUM_INSTANCES) -> dict:
  """One task in SNI's JSON format (the fields every SNI v2 task file carries)."""
  rng = random.Random(f"{seed}:{name}")
  triples = _instances(task, rng, num_instances * task.scale + NUM_DEMONSTRATIONS)
  demos, instances = triples[:NUM_DEMONSTRATIONS], triples[NUM_DEMONSTRATIONS:]
  return {
      "Contributors": ["optiml-jax toy bench"],
      "Source": [f"toy_{task.slug}"],
      "URL": [],
      "Categories": [task.category],
      "Reasoning": [],
      "Definition": [task.definition],
      "Input_language": ["English"],
      "Output_language": ["English"],
      "Instruction_language": ["English"],
      "Domains": ["Synthetic"],
      "Positive Examples": [{
          "input": i,
          "output": o,
          "explanation": "This is the correct answer."
      } for i, o, _ in demos],
      "Negative Examples": [],
      "Instances": [_instance(name, k, *triple) for k, triple in enumerate(instances)],
      "Instance License": ["Apache 2.0"],
  }


def write(out_dir: str | os.PathLike, seed: int = 0, num_instances: int = NUM_INSTANCES) -> pathlib.Path:
  """Writes the toy bench as a natural-instructions checkout; returns `out_dir`.

  Layout: `tasks/<name>.json` per task, `splits/default/train_tasks.txt` and `test_tasks.txt`. The folder is
  written beside `out_dir` and then put in its place, so it must be new, empty or an earlier toy bench.

  Raises:
    ValueError: `out_dir` holds anything else (it would be replaced), or is a file.
  """
  out = pathlib.Path(out_dir).resolve()
  _check_out_dir(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfiles.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    (staging / "tasks").mkdir()
    (staging / "splits" / "default").mkdir(parents=True)
    names = task_names()
    for task, name in zip(TASKS, names):
      with open(staging / "tasks" / f"{name}.json", "w", encoding="utf-8") as f:
        json.dump(task_json(task, name, seed, num_instances), f, indent=1)
    for split, in_test in (("train", False), ("test", True)):
      listed = [n for t, n in zip(TASKS, names) if t.test == in_test]
      (staging / "splits" / "default" / f"{split}_tasks.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
    tempfiles.replace_dir(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging)
  return out


# What an earlier toy bench holds: its folders, task files and split lists.
_TOY_FILE = re.compile(
    r"tasks|tasks/task\d{3}_toy_\w+\.json|splits|splits/default|splits/default/(train|test)_tasks\.txt")


def _check_out_dir(out: pathlib.Path) -> None:
  """ValueError unless `out` is absent, an empty folder or an earlier toy bench."""
  if out.exists() and not out.is_dir():
    raise ValueError(f"{out}: is a file; the toy bench is a folder (tasks/ and splits/)")
  blocking = tempfiles.file_in_the_way(out)
  if blocking is not None:
    raise ValueError(f"{out}: cannot hold the toy bench: {blocking} is a file, not a folder")
  if out.is_dir():
    other = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    other = [name for name in other if not _TOY_FILE.fullmatch(name)]
    if other:
      shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
      raise ValueError(f"{out}: holds files that are not the toy bench's ({shown}); it is replaced as a whole, so "
                       "pass a new or empty folder, or an earlier toy bench's")
