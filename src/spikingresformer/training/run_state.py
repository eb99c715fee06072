"""The run folder and the state in it: checkpoints, metrics, the lock, repair after a kill (docs/training.md)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .. import fileio
from ..checkpoint import CheckpointError, read_checkpoint_file, safetensors_metadata
from ..model import DSSA
from .distributed import DistInfo
from .errors import RunError

__all__ = ["Logger", "RunFolder", "epoch_of", "load_training_checkpoint", "output_folder", "rate_flags",
           "set_rate_flags", "write_file"]

#: Files that make a folder hold a run (a fresh start there must be asked for explicitly).
RUN_FILES = ("last.pth", "best.pth", "best.safetensors", "metrics.jsonl")
#: Everything a run writes (what ``overwrite`` removes before a fresh start).
_OWN_FILES = RUN_FILES + ("recipe.yaml", "log.txt", "energy.json", "tensorboard", "config.json", "model.safetensors")


def output_folder(output: Optional[str], model: str, dataset: str) -> Path:
    """The run folder: ``output``, or ``runs/<model>-<dataset>`` when it is not set."""
    return Path(output or f"runs/{model}-{dataset}")


class Logger:
    """Prints on rank 0 and, once a file is attached, appends the same lines to it (earlier lines included)."""

    def __init__(self, dist: DistInfo) -> None:
        self.enabled = dist.is_main
        self.file: Optional[Path] = None
        self._pending: List[str] = []

    def attach(self, file: Path) -> None:
        """Start appending to ``file`` (with every line logged so far)."""
        if not self.enabled:
            return
        self.file = file
        if self._pending:
            _append(file, "".join(line + "\n" for line in self._pending))
            self._pending = []

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if self.file is None:
            self._pending.append(line)
        else:
            _append(self.file, line + "\n")


def _append(path: Path, text: str, sync: bool = False) -> None:
    """Append ``text`` to ``path`` (flushed to disk with ``sync``); a failure becomes a :class:`RunError`."""
    try:
        with open(path, "a") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise RunError(f"could not append to {path}: {e.strerror or e}") from None


def write_file(path: Path, data: bytes) -> None:
    """Atomically write ``data``; a failure (disk full, permissions) becomes a :class:`RunError`."""
    try:
        fileio.atomic_write_bytes(path, data)
    except OSError as e:
        raise RunError(f"could not write {path}: {e.strerror or e}; the previous {path.name} is unchanged") from None


def load_training_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a training checkpoint (``model``, ``optimizer``, ``epoch``, ...); else a :class:`CheckpointError`."""
    ckpt = read_checkpoint_file(path)
    missing = [k for k in ("model", "optimizer", "epoch") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = f"a dict with keys {sorted(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a training checkpoint: it holds {what}, without {missing} "
            f"(weights-only files can start a run with --transfer, not continue one with --resume)"
        )
    return ckpt


def rate_flags(model: nn.Module) -> Dict[str, bool]:
    """The DSSA 'first training forward done' flags, which live outside the state dict."""
    return {
        f"{name}.{key}": bool(flag)
        for name, m in model.named_modules()
        if isinstance(m, DSSA)
        for key, flag in zip(DSSA.RATE_NAMES, m.rates_seen.tolist())
    }


def set_rate_flags(model: nn.Module, flags: Dict[str, bool]) -> None:
    """Restore the flags saved by :func:`rate_flags`."""
    for name, m in model.named_modules():
        if isinstance(m, DSSA):
            kept = zip(DSSA.RATE_NAMES, m.rates_seen.tolist())
            m.rates_seen.copy_(torch.tensor([bool(flags.get(f"{name}.{key}", old)) for key, old in kept]))


def epoch_of(path: Path) -> Optional[int]:
    """The epoch a training checkpoint (``last.pth``, ``best.pth``) holds, or None when it is missing or unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


def _safetensors_epoch(path: Path) -> Optional[int]:
    try:
        return int(safetensors_metadata(path).get("epoch", ""))
    except ValueError:
        return None


class RunFolder:
    """One run's output folder: lock it, check what it holds, append metrics, write and repair checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: Optional[int] = None
        self.created = False

    def run_files(self) -> List[str]:
        """The run files present (``last.pth``, ``best.pth``, ``best.safetensors``, ``metrics.jsonl``)."""
        return [n for n in RUN_FILES if (self.path / n).exists()]

    def describe(self) -> str:
        """A short account of the run in the folder, for messages."""
        epoch = epoch_of(self.path / "last.pth")
        held = "a run" if epoch is None else f"a run whose last.pth holds epoch {epoch}"
        return f"{held} ({', '.join(self.run_files())})"

    def resume_source(self, resume: Optional[str], overwrite: bool) -> Optional[Path]:
        """The checkpoint to continue from (recipe keys ``resume``, ``overwrite``), or None for a fresh start."""
        last = self.path / "last.pth"
        present = self.run_files()
        if resume == "auto":
            if last.is_file():
                return last
            if present and not overwrite:
                raise RunError(
                    f"--resume auto: {self.path} holds a run without last.pth ({', '.join(present)}), so there is "
                    f"nothing to continue; start over there with --overwrite true, or choose another --output"
                )
            return None
        if resume:
            path = Path(resume)
            if present and path.resolve() != last.resolve():
                raise RunError(
                    f"{self.path} already holds {self.describe()}; resuming {path} there would mix two runs. "
                    f"Choose another --output (or --overwrite true to delete that run first)"
                )
            return path
        if present and not overwrite:
            raise RunError(
                f"{self.path} already holds {self.describe()}. Continue it with --resume auto, or start over "
                f"with --overwrite true (this deletes its checkpoints and metrics), or choose another --output"
            )
        return None

    def lock(self) -> None:
        """Take the folder's lock (an ``flock`` on ``.lock``, dropped when its process dies) or name its holder."""
        import fcntl

        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created = True
        lock_path = self.path / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"process {info['pid']} on host {info['host']} (since {info['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunError(
                f"output folder {self.path} is in use by {who}; two runs in one folder would mix their "
                f"results. Wait for it to end, or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._lock_fd = fd

    def release(self, remove_if_new: bool = False) -> None:
        """Drop the lock; with ``remove_if_new`` also remove the folder if this run created it and left it empty."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if remove_if_new and self.created:
            try:
                (self.path / ".lock").unlink()
                self.path.rmdir()
            except OSError:
                pass

    def clear(self) -> None:
        """Remove everything an earlier run wrote (an explicit ``overwrite``)."""
        for name in _OWN_FILES:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def append_metrics(self, metrics: Dict[str, Any]) -> None:
        """Append one epoch's line to ``metrics.jsonl`` and flush it to disk."""
        _append(self.path / "metrics.jsonl", json.dumps(metrics) + "\n", sync=True)

    def save_epoch(self, ckpt: Dict[str, Any], *, last: bool, best: bool, best_meta: Dict[str, str]) -> None:
        """Write ``last.pth`` (the commit point), then, for a new best, ``best.pth`` and ``best.safetensors``."""
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
        if last:
            write_file(self.path / "last.pth", data)
        if best:
            write_file(self.path / "best.pth", data)
            self._export_best(ckpt["model"], best_meta, ckpt.get("recipe"))

    def _export_best(self, state: Dict[str, torch.Tensor], meta: Dict[str, str],
                     recipe: Optional[Dict[str, Any]] = None) -> None:
        from ..hub import save_described_weights

        try:  # with the recipe: also config.json and model.safetensors, the model folder of the best epoch
            save_described_weights(self.path / "best.safetensors", state, meta, recipe)
        except OSError as e:
            raise RunError(f"could not write {self.path / 'best.safetensors'}: {e.strerror or e}") from None

    def repair(self, ckpt: Dict[str, Any], log: Callable[[str], None]) -> None:
        """Make the folder agree with ``last.pth`` (``ckpt``) after a kill; log each repair."""
        epoch = int(ckpt["epoch"])
        self._repair_metrics(epoch, log)
        best_epoch = int(ckpt.get("best_epoch", -1))
        if best_epoch < 0:
            return
        best = self.path / "best.pth"
        held = epoch_of(best) if best.is_file() else None
        if held != best_epoch:
            if best_epoch != epoch:
                raise RunError(
                    f"{best} holds epoch {held} but last.pth says the best epoch is {best_epoch}; it cannot be "
                    f"rebuilt from last.pth (epoch {epoch}). Start over with --overwrite true"
                )
            log(f"repair: best.pth held epoch {held}, but the best epoch is {best_epoch} (a kill came between "
                f"writing last.pth and best.pth); rebuilt it from last.pth")
            write_file(best, (self.path / "last.pth").read_bytes())
        sft = self.path / "best.safetensors"
        if _safetensors_epoch(sft) != best_epoch or _safetensors_epoch(self.path / "model.safetensors") != best_epoch:
            log(f"repair: best.safetensors / model.safetensors did not hold epoch {best_epoch}; rewritten from best.pth")
            self._export_best(load_training_checkpoint(best)["model"],
                              {"epoch": str(best_epoch), "top1": str(ckpt.get("max_acc1"))}, ckpt.get("recipe"))

    def _repair_metrics(self, epoch: int, log: Callable[[str], None]) -> None:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                ok = isinstance(entry, dict) and int(entry["epoch"]) <= epoch
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            write_file(path, "".join(x + "\n" for x in kept).encode())
            log(f"repair: removed {dropped} line(s) of metrics.jsonl that last.pth (epoch {epoch}) does not hold "
                f"(their epochs run again)")
