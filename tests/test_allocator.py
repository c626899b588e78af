"""The memory allocator a command starts with (synthseg.allocator)."""
import os
import subprocess
import sys

import pytest

from synthseg import allocator as A

PROBE = ("from synthseg.allocator import reexec_with_fast_allocator as r; r(); import os, sys; "
         "print(os.environ.get('SYNTHSEG_ALLOCATOR_ACTIVE'), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def _probe(choice, *args, extra=None):
    env = {k: v for k, v in os.environ.items() if k not in (A.ACTIVE_ENV, "GLIBC_TUNABLES")}
    env.update({A.CHOICE_ENV: choice, **(extra or {})})
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)


def test_each_choice_gives_its_variables_and_keeps_what_was_set(monkeypatch):
    assert A.allocator_environment("system", {}) == ("system", {})
    name, env = A.allocator_environment("glibc", {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert name == "glibc" and env["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + A.GLIBC_TUNABLES
    monkeypatch.setattr(A, "jemalloc_library", lambda: "libjemalloc.so.2")
    name, env = A.allocator_environment("auto", {"LD_PRELOAD": "libfoo.so"})
    assert name == "jemalloc" and env["LD_PRELOAD"] == "libfoo.so:libjemalloc.so.2"
    assert env["MALLOC_CONF"] == A.JEMALLOC_CONF
    monkeypatch.setattr(A, "jemalloc_library", lambda: None)
    assert A.allocator_environment("auto", {})[0] == "glibc"  # nothing installed: glibc's tunables
    with pytest.raises(ValueError, match="apt install libjemalloc2"):
        A.allocator_environment("jemalloc", {})
    with pytest.raises(ValueError, match="must be one of"):
        A.allocator_environment("tcmalloc", {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator is chosen on Linux only")
def test_the_command_starts_again_with_the_allocator_and_its_arguments():
    out = _probe("glibc", "a b", "--x")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["glibc", A.GLIBC_TUNABLES] and "['a b', '--x']" in out.stdout
    system = _probe("system")
    assert system.returncode == 0 and system.stdout.split()[:2] == ["None", "None"]
    already = _probe("glibc", extra={A.ACTIVE_ENV: "system"})  # started once: not again
    assert already.stdout.split()[:2] == ["system", "None"]
    bad = _probe("tcmalloc")
    assert bad.returncode == 0 and "keeping the system allocator" in bad.stderr
    assert bad.stdout.split()[:2] == ["None", "None"]
