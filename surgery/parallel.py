"""``convert``'s work split across processes: ``--jobs N`` on one machine, the ranks of a ``torchrun`` job on several.

What is split is the writing of the output, in parts (``surgery.parts``): the
shards of a sharded safetensors output, the runs of tensors of a single
safetensors file (whose header fixed their offsets before any data was read), or
the data files of a DCP folder. Each part is read, converted and written by one
process from its own reading of the source: the work handed out is file names,
offsets and tensor keys, never tensors, so each process holds about one tensor
(two with read-ahead) whatever the model's size. The process that began the work
(the parent, or rank 0) chooses the names, writes the index, the header or the
``.metadata``, and commits with its rename, exactly as a one-process write does.

``--jobs`` uses a pool of spawned worker processes. Under ``torchrun`` the ranks
are coordinated by ``torch.distributed`` (gloo, CPU): rank 0 hands out the parts
with a broadcast, every rank writes its own, the outcome of each comes back with
an all-gather, and rank 0 commits and tells the others how it ended.
Every rank reaches every collective whatever fails, so a failure on one rank is
an error on all, never a hang.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, NamedTuple

from . import formats
from .errors import SurgeryError
from .graph import LayerGraph, Param
from .io import full_disk_is_an_error
from .parts import Part
from .stream import read_ahead

Progress = Callable[[int], Any]


class Source(NamedTuple):
    """How a worker reads the source for itself: what ``surgery.load`` was given."""

    path: str
    format: str
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()


def source_of(graph: LayerGraph, unsafe_pickle: bool = False) -> Source:
    from .formats.torch import state_dict

    if not graph.path:
        raise SurgeryError("work can be split across processes only for a source read from a file")
    return Source(graph.path, graph.format, unsafe_pickle, tuple(sorted(state_dict.ALLOWED_GLOBALS)))


def torchrun_world() -> tuple[int, int] | None:
    """``(rank, world size)`` when this process is one of several ranks a ``torchrun`` started, else None."""
    try:
        size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    return (rank, size) if size > 1 and "MASTER_ADDR" in os.environ else None


def assign(work: list[Part], count: int) -> list[list[Part]]:
    """Parts dealt to ``count`` processes, largest first to the least loaded (bytes as even as they come)."""
    shares: list[list[Part]] = [[] for _ in range(count)]
    loads = [0] * count
    for part in sorted(work, key=lambda w: -w.nbytes):
        least = loads.index(min(loads))
        shares[least].append(part)
        loads[least] += part.nbytes
    return shares


Expected = list[tuple[str, tuple[int, ...], str]]


def expected(table: dict[str, Param], part: Part) -> Expected:
    """What each key of a part holds in the reading that planned it (``table``): another reading must agree."""
    return [(key, table[key].shape, table[key].dtype) for key in part.keys]


def write_planned(table: dict[str, Param], source: str, part: Part, want: Expected) -> Any:
    """Write one part from this process's own reading of the source, checked against the plan's; its result."""
    tensors = []
    for key, shape, dtype in want:
        param = table.get(key)
        if param is None or param.shape != shape or param.dtype != dtype:
            found = "nothing" if param is None else f"{param.dtype}{list(param.shape)}"
            raise SurgeryError(f"{source}: {key} was {dtype}{list(shape)} when the conversion was planned and is "
                               f"{found} now: did the checkpoint change while it was being converted?")
        tensors.append((key, param))
    tensors, ahead = read_ahead(tensors)
    try:
        with full_disk_is_an_error(part.name):
            return write_part(part, tensors)
    finally:
        ahead.close()


def write_part(part: Part, tensors: list[tuple[str, Param]]) -> Any:
    """Write one part with ``tensors`` (its keys, from this process's reading); what the leading process needs back."""
    from .formats import safetensors

    if part.kind == "records":
        from .formats.torch import dcp

        return dcp.write_records(part.path, tensors)
    if part.kind == "run":
        assert part.offset is not None
        return safetensors.write_into(part.path, part.offset, tensors)
    return safetensors.write_shard(part.path, tensors)


# --- worker processes (--jobs) ---------------------------------------------------------------

_READ: dict[Source, dict[str, Param]] = {}


def _tensors(source: Source) -> dict[str, Param]:
    """The source as this worker read it (once per worker, headers only)."""
    if source not in _READ:
        from .formats.torch import state_dict

        state_dict.ALLOWED_GLOBALS.update(source.allow_globals)
        options = {"unsafe_pickle": True} if source.unsafe_pickle else {}
        _READ[source] = dict(formats.read(source.path, format=source.format, **options).tensors())
    return _READ[source]


def _bound_to_parent(parent: int) -> None:
    """A worker dies with the process that started it (Linux): a killed convert leaves no
    worker renaming a shard into the folder after the next write has chosen its names."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above: go now
        os._exit(1)


def _work(source: Source, part: Part, want: Expected) -> Any:
    return write_planned(_tensors(source), source.path, part, want)


class Workers:
    """Writes the parts of a split write with ``jobs`` spawned worker processes, the largest first."""

    def __init__(self, graph: LayerGraph, source: Source, jobs: int) -> None:
        self.table, self.source, self.jobs = dict(graph.tensors()), source, jobs

    @property
    def processes(self) -> int:
        return self.jobs

    def __call__(self, work: list[Part], progress: Progress = lambda n: None) -> list[Any]:
        if not work:
            return []
        context = multiprocessing.get_context("spawn")  # a fork would copy this process's threads and locks
        error: BaseException | None = None
        results: list[Any] = [None] * len(work)
        with ProcessPoolExecutor(min(self.jobs, len(work)), mp_context=context, initializer=_bound_to_parent,
                                 initargs=(os.getpid(),)) as pool:
            pending = {pool.submit(_work, self.source, work[i], expected(self.table, work[i])): i
                       for i in sorted(range(len(work)), key=lambda i: -work[i].nbytes)}
            waiting = set(pending)
            while waiting and error is None:
                done, waiting = wait(waiting, return_when=FIRST_EXCEPTION)
                for future in done:
                    try:
                        results[pending[future]] = future.result()
                        progress(work[pending[future]].nbytes)
                    except BrokenProcessPool:
                        error = SurgeryError(f"{self.source.path}: a worker process died while converting "
                                             "(out of memory?); nothing was committed")
                    except BaseException as e:  # noqa: BLE001 (re-raised below, once the others stop)
                        error = error or e
            for future in waiting:
                future.cancel()
        # leaving the pool waited for the parts being written: none is renamed after the caller cleans up
        if error is not None:
            raise error
        return results


# --- ranks of a torchrun job -----------------------------------------------------------------

class Ranks:
    """This process as one rank of a ``torchrun`` job; rank 0 leads, the others follow.

    Every rank runs the same command. Collectives, in order, the same on every rank:
    ``agree`` (all-gather: each rank's reading of the source, or its error), then on
    rank 0's call the work (broadcast: each rank's parts, or why there
    are none), the parts' outcomes (all-gather), and the end (broadcast: None, or
    the error that stopped rank 0).
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.owned = not dist.is_initialized()
        if self.owned:
            dist.init_process_group("gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.table: dict[str, Param] = {}   # this rank's reading of the source (``agree``)
        self.path = "?"
        self._sent = False

    @property
    def processes(self) -> int:
        return self.size

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave together: a rank that tore down its connections while another still used them would abort it."""
        if self.owned and self.dist.is_initialized():
            try:
                self.dist.barrier()
            finally:
                self.dist.destroy_process_group()

    def _gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, value)
        return out

    def _broadcast(self, value: Any) -> Any:
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, read: Callable[[], LayerGraph]) -> LayerGraph:
        """``read()`` on every rank; if it failed on any, the same error on all, naming the rank."""
        graph, problem = None, None
        try:
            graph = read()
        except SurgeryError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 (the others wait in the gather below: reach it)
            problem = f"{type(e).__name__}: {e}"
        _raise_first(self._gather(problem))
        assert graph is not None
        self.table, self.path = dict(graph.tensors()), graph.path or "?"
        return graph

    def __call__(self, work: list[Part], progress: Progress = lambda n: None) -> list[Any]:
        """Rank 0: deal the parts, write its own, wait for every rank's outcome; each part's result, in order."""
        shares = assign(work, self.size)
        dealt = [[(part, expected(self.table, part)) for part in share] for share in shares]
        self._broadcast(dealt)
        self._sent = True
        outcomes = self._gather(self._write(dealt[0], progress))
        for share, (problem, _) in zip(shares[1:], outcomes[1:]):
            if problem is None:
                progress(sum(part.nbytes for part in share))
        _raise_first([problem for problem, _ in outcomes])
        placed = {id(part): result for share, (_, results) in zip(shares, outcomes) for part, result in zip(share, results)}
        return [placed[id(part)] for part in work]

    def lead(self, run: Callable[["Ranks"], list[str]]) -> list[str]:
        """Rank 0: ``run`` the write with this as its part writer, then tell the others how it ended."""
        try:
            files = run(self)
        except BaseException as e:
            self._end(f"{e}" if isinstance(e, SurgeryError) else f"rank 0: {type(e).__name__}: {e}")
            raise
        self._end(None)
        return files

    def _end(self, problem: str | None) -> None:
        if not self._sent:  # stopped before dealing the work: the others wait for it, and take a str as the end
            problem = problem or "rank 0 ended before dealing out the parts"
        self._broadcast(problem)

    def follow(self) -> None:
        """Any other rank: write the parts rank 0 deals to it, report, and learn how the write ended."""
        dealt = self._broadcast(None)
        if isinstance(dealt, str):
            raise SurgeryError(dealt)
        self._gather(self._write(dealt[self.rank], lambda n: None))
        ended = self._broadcast(None)
        if ended is not None:
            raise SurgeryError(ended)

    def _write(self, mine: list[tuple[Part, Expected]], progress: Progress) -> tuple[str | None, list[Any]]:
        """This rank's parts, written: the problem as a message for the others (or None), and each part's result."""
        results: list[Any] = []
        try:
            for part, want in mine:
                results.append(write_planned(self.table, self.path, part, want))
                progress(part.nbytes)
        except SurgeryError as e:
            return f"rank {self.rank}: {e}", []
        except OSError as e:
            return f"rank {self.rank}: {e.filename or ''}: {e.strerror or e}", []
        except Exception as e:  # noqa: BLE001 (a bug still reaches the collectives: the others must not hang)
            return f"rank {self.rank}: {type(e).__name__}: {e}", []
        return None, results


def _raise_first(problems: list[str | None]) -> None:
    for rank, problem in enumerate(problems):
        if problem is not None:
            raise SurgeryError(problem if problem.startswith("rank ") else f"rank {rank}: {problem}")
