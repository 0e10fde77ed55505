"""Facts about the run saved with the results: package versions, the machine, the git commit,
CPU steal."""

import os
import platform
import subprocess

from .spec import ROOT, THREADS


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name, dists in (
        ("numpy", ["numpy"]),
        ("keras", ["keras"]),
        ("jax", ["jax"]),
        ("jaxlib", ["jaxlib"]),
        ("torch", ["torch"]),
        ("tensorflow", ["tensorflow", "tensorflow-cpu"]),
        ("transformers", ["transformers"]),
        ("kerasformers", ["kerasformers"]),
    ):
        for dist in dists:
            try:
                out[name] = version(dist)
                break
            except PackageNotFoundError:
                pass
    return out


def machine_info():
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def git_commit():
    try:
        return subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return None


def cpu_steal():
    """(steal, total) jiffies from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[7], sum(fields)
    except (OSError, IndexError, ValueError):
        return None
