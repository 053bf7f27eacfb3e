"""One run per output folder: a lock file that names its holder and survives a killed holder.

Two runs writing to one `train.output_dir` delete each other's temporary checkpoints and mix
their `metrics.json` and `log.txt`. The main process of a run holds `<output_dir>/train_net.lock`:

* **Atomicity from the kernel.** The file is opened (created if missing, never through a symbolic
  link) and locked with ``fcntl.flock(LOCK_EX | LOCK_NB)``. Of any number of processes that try
  at once, exactly one gets it; the kernel releases it when its holder dies, however it dies. A
  holder that finds the path pointing at another file after locking (the previous holder removed
  it meanwhile) starts again, so a lock taken on a removed file never counts.
* **A record that names the holder.** The holder then writes its pid, host, start time and SLURM
  job into the file, keeps its modification time fresh from a background thread, and removes the
  file at the end. A run that cannot take the kernel lock refuses to start and names the holder.
* **Judging a record left behind.** When the kernel lock is free but the file names a holder (a
  file system whose locks do not reach other hosts, or a run of an older version), the record is
  judged as before: the lock is taken over with a warning when

  * the holder ran on this host and its pid is no longer alive (or now belongs to a newer process);
  * the holder is an earlier run of this same SLURM job (a requeued job keeps its job id);
  * the holder ran on another host and has not refreshed the lock for `stale_after_s` seconds;
  * the record is empty or damaged (not JSON, no valid pid, a symbolic link, a fifo): a holder
    that held the kernel lock would have written it, so nothing is running there.

Nothing is left behind on failure: when the record cannot be written (a full disk), the file is
removed again and the error names it; the next run finds no lock. A lock path that is a
directory is an error naming it.
"""
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import threading
import time
import uuid
from typing import Optional, Tuple

from .errors import OutputDirBusyError, OutputDirError

LOCK_NAME = "train_net.lock"
_MAX_PID = 1 << 22  # Linux's largest pid_max
_RECORD_WAIT_S = 2.0  # how long a refused run waits for the new holder's record


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
        self._fd: Optional[int] = None

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
        """The holder record (``{}`` when empty or damaged) and the file's age in seconds."""
        with open(self.path, "rb") as f:
            data = f.read(65536)
        age = time.time() - os.path.getmtime(self.path)
        return _parse_record(data), age

    def _stale_reason(self, holder: dict, age: float) -> Optional[str]:
        """Why the lock's holder is gone, or None when it may still be running."""
        if not holder:
            return "the lock file was empty or damaged (no run writes it that way)"
        pid, host = holder["pid"], holder.get("host", "")
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

    def _busy(self, holder: dict) -> OutputDirBusyError:
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            if holder
            else "its holder has not written its record yet"
        )
        return OutputDirBusyError(
            f"output folder {self.output_dir} is in use by another run: {who} (lock file {self.path}); "
            "use another train.output_dir, or wait for that run to end"
        )

    def _open_locked(self) -> Optional[int]:
        """A descriptor of the lock file holding the kernel lock, or None when a live process
        holds it. Removes a symbolic link or other non-regular file at the path first."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise OutputDirError(f"the lock path {self.path} is a directory: remove it to use output folder {self.output_dir}")
        if info is not None and not stat.S_ISREG(info.st_mode):
            os.unlink(self.path)
            self.taken_over = f"removed {self.path}, which was not a lock file (a symbolic link or special file)"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _refusal(self) -> OutputDirBusyError:
        """The error for a kernel lock held by a live process, naming it once its record is there."""
        deadline = time.monotonic() + _RECORD_WAIT_S
        holder: dict = {}
        while True:
            try:
                holder, age = self._read()
            except OSError:
                holder, age = {}, 0.0
            if holder and self._stale_reason(holder, age) is None:
                return self._busy(holder)  # a live holder's record (possibly just written)
            if time.monotonic() > deadline:
                return self._busy(holder)
            time.sleep(0.05)

    def acquire(self) -> "OutputDirLock":
        """Take the lock, or raise OutputDirBusyError naming the live holder (OutputDirError when
        the folder or the lock file cannot be used)."""
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as e:
            raise OutputDirError(f"cannot create output folder {self.output_dir}: {e.strerror or e}") from None
        for _ in range(20):
            try:
                fd = self._open_locked()
            except OutputDirError:
                raise
            except OSError as e:
                raise OutputDirError(f"cannot open the lock file {self.path}: {e.strerror or e}") from None
            if fd is None:
                raise self._refusal()
            if not self._same_file(fd):  # the holder we waited for removed it: start again
                os.close(fd)
                continue
            try:
                holder, age = self._read()
            except OSError:
                holder, age = {}, 0.0
            empty = os.fstat(fd).st_size == 0
            if not empty:
                reason = self._stale_reason(holder, age)
                if reason is None:
                    os.close(fd)
                    raise self._busy(holder)
                gone = (
                    f"a run that is gone (pid {holder.get('pid')} on host {holder.get('host')}, "
                    f"started {holder.get('started')})"
                    if holder
                    else "a run that is gone"
                )
                self.taken_over = f"took over the lock of {self.output_dir} from {gone}: {reason}"
            try:
                _write_record(fd, json.dumps(self._holder_record()).encode())
            except OSError as e:
                os.unlink(self.path)
                os.close(fd)
                raise OutputDirError(
                    f"cannot write the lock file {self.path}: {e.strerror or e} (nothing was left behind)"
                ) from None
            self._fd = fd
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
        """Stop the heartbeat, remove the lock file if it is still ours, drop the kernel lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is None:
            return
        try:
            if self._same_file(self._fd) and self._ours():
                os.remove(self.path)  # while holding the kernel lock: waiters re-check the path
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse_record(data: bytes) -> dict:
    """The holder record of a lock file's bytes, or ``{}`` when they are not one (empty, not
    UTF-8 JSON, not an object, or a pid that is not a positive int below pid_max)."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < _MAX_PID:
        return {}
    return record


def _write_record(fd: int, data: bytes) -> None:
    """Replace the lock file's content by ``data`` and flush it to disk; on failure leave it empty."""
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        raise
