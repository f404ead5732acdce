"""bin/java-for-spark (run by `bin/setup --spark`): Java 17+ detected, installed with apt-get as root or
with password-less sudo, else one line saying what to install; never a failed set-up. Fake java, id,
sudo and apt-get on PATH stand in for the machine's."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "java-for-spark"
FAKES = {
    # prints the version in ./version, as `java -version` does; an empty file is no java at all
    "java": '[ -s "$FAKE/version" ] || exit 127\necho "openjdk version \\"$(cat "$FAKE/version")\\" 2024-01-16" >&2',
    # logs its arguments; an install leaves Java 17 behind
    "apt-get": 'echo "apt-get $*" >> "$FAKE/log"\ncase "$*" in *install*) echo 17.0.10 > "$FAKE/version" ;; esac',
    "id": 'echo "$FAKE_UID"',
    "sudo": '[ -n "$FAKE_SUDO" ] || exit 1\n[ "$2" = true ] && exit 0\nshift\nexec "$@"',
}


@pytest.mark.parametrize("version, uid, sudo, installs, message", [
    ("17.0.15", "1000", "", False, None),
    ("21-ea", "1000", "", False, None),
    ("11.0.22", "0", "", True, None),
    ("1.8.0_402", "1000", "yes", True, None),
    ("1.8.0_402", "1000", "", False, "found: 1.8.0_402"),
    ("", "1000", "", False, "found: none"),
])
def test_java_for_spark(tmp_path, version, uid, sudo, installs, message):
    for name, body in FAKES.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "version").write_text(version)
    (tmp_path / "log").write_text("")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE": str(tmp_path), "FAKE_UID": uid, "FAKE_SUDO": sudo}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, check=True)
    log = (tmp_path / "log").read_text()
    assert ("install -y -qq --no-install-recommends openjdk-17-jre-headless" in log) == installs, log
    if message:
        assert done.stderr.count("\n") == 1 and message in done.stderr
        assert "apt-get install openjdk-17-jre-headless" in done.stderr
    else:
        assert "needs Java 17+ (found" not in done.stderr


def test_setup_takes_spark_and_ray_and_refuses_other_options():
    """An unknown option stops bin/setup before it installs anything, naming both optional installs."""
    for bad in (["--spark", "--gpu"], ["--cuda"], ["--cuda", "12.8"]):
        done = subprocess.run([str(SCRIPT.parent / "setup"), *bad], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr == "usage: bin/setup [--spark] [--ray] [--cuda cuXYZ]\n"
