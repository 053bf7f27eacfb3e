"""One run per output folder: a lock file that names its holder and survives a killed holder.

Two runs writing to one `train.output_dir` delete each other's temporary checkpoints and mix
their `metrics.json` and `log.txt`. The main process of a run creates `<output_dir>/train_net.lock`
(atomically, O_CREAT | O_EXCL) holding its pid, host, start time and SLURM job, keeps its
modification time fresh from a background thread, and removes it at the end. A second run
refuses to start and names the holder. A lock whose holder is gone (killed with SIGKILL, a node
that died) is taken over with a warning; it is judged stale when

* the holder ran on this host and its pid is no longer alive (or now belongs to a newer process);
* the holder is an earlier run of this same SLURM job (a requeued job keeps its job id);
* the holder ran on another host and has not refreshed the lock for `stale_after_s` seconds.
"""
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional, Tuple

from .errors import OutputDirBusyError

LOCK_NAME = "train_net.lock"


def _process_start_ticks(pid: int) -> Optional[str]:
    """The start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class OutputDirLock:
    """`with OutputDirLock(output_dir) as lock:` -- see the module docstring.

    Args:
        output_dir: the folder (created if missing).
        heartbeat_s: how often the holder refreshes the lock file's modification time.
        stale_after_s: a lock from another host older than this is taken over.
    """

    def __init__(self, output_dir: str, heartbeat_s: float = 30.0, stale_after_s: float = 300.0):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.taken_over: Optional[str] = None  # the warning, when a stale lock was taken over
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _holder_record(self) -> dict:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "pid_start": _process_start_ticks(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "token": self._token,
        }

    def _read(self) -> Tuple[dict, float]:
        with open(self.path) as f:
            text = f.read()
        age = time.time() - os.path.getmtime(self.path)
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), age

    def _stale_reason(self, holder: dict, age: float) -> Optional[str]:
        """Why the lock's holder is gone, or None when it may still be running."""
        if not holder.get("pid"):
            return "the lock file is unreadable or empty" if age > self.stale_after_s else None
        pid, host = int(holder["pid"]), holder.get("host", "")
        job = os.environ.get("SLURM_JOB_ID", "")
        if job and holder.get("slurm_job_id") == job and holder.get("slurm_restart_count") != os.environ.get(
            "SLURM_RESTART_COUNT", "0"
        ):
            return f"it is an earlier run of this SLURM job {job}, which was requeued"
        if host == socket.gethostname():
            if not _pid_alive(pid):
                return f"process {pid} no longer exists"
            start = _process_start_ticks(pid)
            if holder.get("pid_start") and start and start != holder["pid_start"]:
                return f"pid {pid} now belongs to another process"
            return None
        if age > self.stale_after_s:
            return f"it was last refreshed {age:.0f} s ago (more than {self.stale_after_s:.0f} s)"
        return None

    def acquire(self) -> "OutputDirLock":
        """Take the lock, or raise OutputDirBusyError naming the live holder."""
        os.makedirs(self.output_dir, exist_ok=True)
        record = json.dumps(self._holder_record()).encode()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder, age = self._read()
                except FileNotFoundError:
                    continue  # released meanwhile
                reason = self._stale_reason(holder, age)
                if reason is None:
                    raise OutputDirBusyError(
                        f"output folder {self.output_dir} is in use by another run: pid {holder.get('pid')} "
                        f"on host {holder.get('host')}, started {holder.get('started')} (lock file {self.path}); "
                        "use another train.output_dir, or wait for that run to end"
                    ) from None
                # Move the stale lock aside under a unique name: of two runs taking over at once,
                # only one rename succeeds; the other finds the new lock on its next attempt.
                aside = f"{self.path}.stale.{self._token}"
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                os.remove(aside)
                self.taken_over = (
                    f"took over the lock of {self.output_dir} from a run that is gone (pid {holder.get('pid')} "
                    f"on host {holder.get('host')}, started {holder.get('started')}): {reason}"
                )
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(record)
            self._thread = threading.Thread(target=self._heartbeat, name="output-dir-lock", daemon=True)
            self._thread.start()
            return self
        raise OutputDirBusyError(f"could not take the lock {self.path} (other runs keep taking it)")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _ours(self) -> bool:
        try:
            holder, _ = self._read()
        except OSError:
            return False
        return holder.get("token") == self._token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._ours():
            try:
                os.remove(self.path)
            except OSError:
                pass

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
