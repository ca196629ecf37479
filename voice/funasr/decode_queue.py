"""The decode thread of one FunASR engine: the only place with threads, urgent work (finals) first."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class _Job:
    function: Callable[..., Any]
    arguments: tuple
    future: Future
    owner: object | None


class DecodeQueue:
    """One worker thread that runs an engine's decodes, urgent work first.

    Urgent work is what a caller is waiting for: the final transcript at the end of a turn (and the speculative one at
    a pause). Streaming chunks only refresh partials, so under load they wait and the finals overtake them; a stream
    whose turn has ended is `expedite`d, which moves its queued chunk to the urgent lane (its final needs it first).
    """

    def __init__(self, name: str = "funasr") -> None:
        self._name = name
        self._condition = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._streaming: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, function: Callable[..., Any], *arguments: Any, urgent: bool = False,
               owner: object | None = None) -> Future:
        job = _Job(function, arguments, Future(), owner)
        with self._condition:
            if self._closed:
                raise RuntimeError("the decode queue is shut down")
            (self._urgent if urgent else self._streaming).append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify()
        return job.future

    def expedite(self, owner: object) -> None:
        """Move `owner`'s waiting jobs to the urgent lane, in their order."""
        with self._condition:
            moving = [job for job in self._streaming if job.owner is owner]
            if moving:
                self._streaming = deque(job for job in self._streaming if job.owner is not owner)
                self._urgent.extend(moving)

    def depth(self) -> tuple[int, int]:
        """Jobs waiting: (urgent, streaming)."""
        with self._condition:
            return self._waiting(self._urgent), self._waiting(self._streaming)

    @staticmethod
    def _waiting(lane: deque[_Job]) -> int:
        return sum(not job.future.cancelled() for job in lane)

    def shutdown(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._urgent and not self._streaming and not self._closed:
                    self._condition.wait()
                if not self._urgent and not self._streaming:
                    return
                job = (self._urgent or self._streaming).popleft()
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = job.function(*job.arguments)
            except BaseException as error:  # handed to the awaiting coroutine, which decides
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
