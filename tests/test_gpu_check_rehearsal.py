"""tools/gpu_check.sh rehearsed on the CPU, in an environment that imitates the lent GPU machine.

The lent machine (docs/ops.md, "The GPU check") has torch, numpy, pytest and most of this
project's dependencies, but not detectron2, fvcore, iopath, omegaconf, hydra-core, antlr4,
pycocotools, yacs, termcolor, and no network. The imitation: a fresh virtual environment without
packages of its own, whose one ``.pth`` file adds a folder of symlinks to exactly the image's
packages (and what they require, from their metadata) as installed in this project's
environment, so nothing is downloaded but the nine missing wheels (tools/fetch_gpu_wheels.sh,
~7 MB). ``gpu_check.sh --rehearse`` must then get through the probe and the install (whose import
check instantiates the R50 model from its config: the proof that the wheel list is complete),
report every GPU step as skipped with its reason, and leave a valid summary.json among at most
five files.
"""
import importlib.metadata as md
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import venv

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")
OUT_FILES = {"summary.json", "gpu_check.log", "logs.tgz", "ops_cuda.json", "model_cuda.json"}
STEPS = ["probe", "install", "build", "smoke", "cuda_tests", "sanitizer", "benchmark_ops", "benchmark_model"]

# What the lent image has (issue 23), by distribution name; their requirements come along.
# torchvision is not in the list (not known to be on the image): the rehearsal installs it.
IMAGE = [
    "torch", "numpy", "pytest", "pip", "setuptools", "ninja", "pybind11", "hypothesis", "transformers", "scipy",
    "opencv-python-headless", "matplotlib", "tensorboard", "tabulate", "tqdm", "cloudpickle", "portalocker",
    "pillow", "pyyaml", "onnx", "onnxruntime",
]
MISSING = {"sal-detectron2", "fvcore", "iopath", "omegaconf", "hydra-core", "antlr4-python3-runtime", "pycocotools",
           "yacs", "termcolor"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_distributions():
    """The installed distributions of IMAGE and, recursively, what they require (markers
    evaluated for this Python, extras left out)."""
    found, todo = {}, list(IMAGE)
    while todo:
        name = _norm(todo.pop())
        if name in found or name in MISSING:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def make_image_env(root: str) -> str:
    """A virtual environment imitating the GPU image at ``root``; returns its python."""
    private = os.path.join(root, "image_site")
    os.makedirs(private)
    for dist in _image_distributions().values():
        site = str(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            link, target = os.path.join(private, top), os.path.join(site, top)
            if os.path.exists(target) and not os.path.lexists(link):
                os.symlink(target, link)
    env = os.path.join(root, "env")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = os.path.join(env, "bin", "python")
    purelib = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    with open(os.path.join(purelib, "image.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({private!r})\n")
    return python


def _run_check(out, wheels, python, *extra, deadline=None):
    work = os.path.join(os.path.dirname(str(out)), "work_" + os.path.basename(str(out)))
    env = dict(os.environ, PYTHON=python, GPU_CHECK_WORK=work)
    env.pop("PYTHONPATH", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if deadline:
        env["GPU_CHECK_DEADLINE"] = str(deadline)
    return subprocess.run(["bash", SCRIPT, str(out), str(wheels), *extra], env=env, capture_output=True, text=True,
                          timeout=300)


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert set(os.listdir(out)) <= OUT_FILES, os.listdir(out)
    return summary, {s["name"]: s for s in summary["steps"]}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The wheels of the packages the image lacks, for this Python (tools/fetch_gpu_wheels.sh)."""
    folder = tmp_path_factory.mktemp("whl")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    torch_version = md.version("torch").split("+")[0]  # torchvision for this torch, not the image's
    env = dict(os.environ, PYTHON=sys.executable, PYTHON_VERSION=version, TORCH_VERSION=torch_version)
    result = subprocess.run(["bash", os.path.join(REPO, "tools", "fetch_gpu_wheels.sh"), str(folder)], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        try:
            socket.create_connection(("pypi.org", 443), timeout=5).close()
        except OSError as e:
            pytest.skip(f"PyPI is unreachable ({e}): tools/fetch_gpu_wheels.sh cannot download the wheels")
        pytest.fail(f"tools/fetch_gpu_wheels.sh failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    names = {_norm(re.split(r"-\d", w.name, maxsplit=1)[0]) for w in folder.glob("*.whl")}
    assert names == MISSING | {"torchvision"}  # the missing packages, and nothing the image has
    assert sum(w.stat().st_size for w in folder.glob("*.whl")) <= 15 * 2**20
    return folder


@pytest.mark.slow
def test_rehearsal_installs_only_what_is_missing_and_skips_gpu_steps(tmp_path, wheels):
    python = make_image_env(str(tmp_path / "image"))
    out = tmp_path / "out"
    result = _run_check(out, wheels, python, "--rehearse")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    summary, steps = _summary(out)
    assert summary["mode"] == "rehearse" and summary["verdict"] == "ok"
    assert steps["probe"]["status"] == "ok" and steps["install"]["status"] == "ok", steps
    # The imitation lacks the nine packages; the import check then builds the model from its config.
    assert set(summary["probe"]["deps_missing"].split()) >= {"detectron2", "fvcore", "omegaconf", "pycocotools"}
    assert steps["install"]["detail"].startswith("import check: ok (DeformableDETR"), steps["install"]
    for name in STEPS[2:]:
        assert steps[name]["status"] == "skip" and steps[name]["detail"].startswith("rehearsal (--rehearse): no GPU")
    with tarfile.open(out / "logs.tgz") as tar:
        install_log = tar.extractfile("logs/install.log").read().decode()
    # Installed after the image's site-packages: numpy is still the image's own.
    numpy_line = next(line for line in install_log.splitlines() if line.startswith("numpy "))
    assert "/private/" not in numpy_line and "image_site" in numpy_line, numpy_line
    assert "sal_detectron2" in install_log


def test_no_torch_is_told_apart_and_leaves_a_summary(tmp_path):
    """A Python without torch: the probe says so, the GPU steps are skipped with that reason,
    the exit status is 2 (no usable GPU), summary.json is valid."""
    env = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    out = tmp_path / "out"
    result = _run_check(out, tmp_path / "no_wheels", str(env / "bin" / "python"))
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    summary, steps = _summary(out)
    assert summary["verdict"] == "no-gpu" and summary["probe"]["gpu_state"] == "no-torch"
    assert steps["probe"]["status"] == "ok"
    assert steps["build"]["status"] == "skip" and steps["build"]["detail"].startswith("no torch in ")


def test_no_python_and_a_short_deadline_still_leave_a_verdict(tmp_path):
    missing_python = str(tmp_path / "missing_python")
    result = _run_check(tmp_path / "out", tmp_path / "no_wheels", missing_python)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    summary, steps = _summary(tmp_path / "out")
    assert summary["probe"]["gpu_state"] == "no-python" and summary["verdict"] == "no-gpu"
    assert all(steps[name]["status"] == "skip" for name in STEPS[1:])
    assert steps["build"]["detail"].startswith("no Python: not runnable: " + missing_python)
    # Too little time for even the probe: every step skipped with the reason, still a summary.
    result = _run_check(tmp_path / "late", tmp_path / "no_wheels", missing_python, deadline=3)
    summary, steps = _summary(tmp_path / "late")
    assert result.returncode == 2 and summary["verdict"] == "no-gpu"
    assert steps["probe"]["status"] == "skip" and steps["probe"]["detail"].startswith("needs at least 5 s, ")
