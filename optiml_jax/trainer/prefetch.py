"""A background thread that prepares the next batches while the device runs the current step.

Sits between the batch stream (`data.pipeline.BatchStream`, or any iterator with `state()` and `restore()`)
and the loop. The stream's position is what a checkpoint must record, and a prefetching thread runs ahead of
the loop, so each batch travels with the stream state taken right after it was produced: `state()` here
reports the position of the last batch the loop actually took, never of the batches waiting in the queue.

    stream = Prefetcher(pipeline.BatchStream(...), depth=2)
    batch = next(stream)          # produced in the background
    saved = stream.state()        # == the inner stream's state right after producing `batch`
    stream.close()                # stops the thread and releases the inner stream (and its tf.data iterator)
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Iterator, Mapping

_DONE = object()


class Prefetcher(Iterator[Any]):
  """Iterates `stream` in a daemon thread, `depth` batches ahead (see the module docstring).

  Args:
    stream: an iterator with `state() -> JSON-able` (restore it before wrapping; `restore` is not offered
      here because the thread has already run ahead).
    depth: batches kept ready; at least 1.
  """

  def __init__(self, stream: Any, depth: int = 2):
    if depth < 1:
      raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
    self._stream = stream
    self._state = stream.state()
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
    self._thread.start()

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        try:
          batch = next(self._stream)
        except StopIteration:
          self._put((_DONE, None))
          return
        self._put((batch, self._stream.state()))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._put((_DONE, e))

  def _put(self, item: tuple[Any, Any]) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self) -> Any:
    if self._finished:
      raise StopIteration
    batch, state = self._queue.get()
    if batch is _DONE:
      self._finished = True
      if state is not None:
        raise state
      raise StopIteration
    self._state = state
    return batch

  def state(self) -> Mapping[str, Any]:
    """The inner stream's position after the last batch handed out by `next()`."""
    return self._state

  def close(self) -> None:
    """Stops the thread and drops the inner stream, so its resources go before the interpreter does."""
    self._stop.set()
    while self._thread.is_alive():
      with contextlib.suppress(queue.Empty):
        self._queue.get(timeout=0.1)
      self._thread.join(timeout=0.1)
    inner_close = getattr(self._stream, "close", None)
    if callable(inner_close):
      inner_close()
    self._stream = None
    self._finished = True
