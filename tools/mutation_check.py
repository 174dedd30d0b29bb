#!/usr/bin/env python
"""Mutation check: does the test suite notice deliberate bugs?

Each entry of tools/mutations.toml is a small change to the source (file, exact old text, new
text) and the tests that should catch it. This script applies the changes one at a time to a
scratch copy of the repository (never to the working tree), runs each one's tests there, and
counts a mutation as killed when at least one of them fails. It prints the score
(killed / total) and the survivors; the exit status is 0 only when every mutation is killed.

Run it from anywhere (it is not part of .ci/run: a C++ mutation costs a rebuild):

    python tools/mutation_check.py                  # every mutation (C++ ones rebuild, slow)
    python tools/mutation_check.py --python-only    # Python mutations only: about a minute
    python tools/mutation_check.py --only als-tolerance,cpp-spmm-sign
    python tools/mutation_check.py --check          # only check that every `old` text is present
    python tools/mutation_check.py --list

Needs the compiled modules of the working tree (./dev-build.sh), which the Python mutations use
as they are (copied into the scratch tree). C++ mutations build the scratch tree's own modules
with ``BUILD_DIR=build-mut JOBS=<--jobs> LOWRANK_HPC_CUDA=OFF ./dev-build.sh`` (CPU only: this
machine's tests of the CUDA kernels would skip anyway); the first such build compiles
everything, later ones only the objects a mutation touches. The scratch tree (default
/tmp/lowrank_hpc-mutation-<user>) is kept between runs so that its build is reused.

A mutation whose `old` text is missing from its file (the source moved on) is reported as
"stale" and one whose tests cannot run as "error"; both make the exit status non-zero. A
mutation with an `equivalent` reason is listed and not run.
"""
from __future__ import annotations

import argparse
import filecmp
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
import time

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover - older interpreters
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        raise SystemExit("tools/mutation_check.py reads TOML: use Python >= 3.11 or pip install tomli") from None
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPP_SUFFIXES = (".hpp", ".h", ".cpp", ".cc", ".cu", ".cuh", ".txt")  # .txt: CMakeLists.txt
MODULE_PATTERNS = ("_cpu*.so", "_cuda*.so", "_build_info.py")
# pytest exit codes that mean "tests failed" (1) as opposed to a broken run (2..5).
KILLED_CODES = (1,)


@dataclass
class Mutation:
    id: str
    file: str
    edits: list[tuple[str, str]]
    description: str
    tests: list[str]
    equivalent: str = ""
    status: str = "pending"
    detail: str = ""
    seconds: float = 0.0

    @property
    def is_cpp(self) -> bool:
        return self.file.endswith(CPP_SUFFIXES)


@dataclass
class Report:
    mutations: list[Mutation] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(m.status == status for m in self.mutations)


def load(path: Path) -> list[Mutation]:
    with open(path, "rb") as stream:
        entries = tomllib.load(stream)["mutation"]
    mutations, seen = [], set()
    for entry in entries:
        if entry["id"] in seen:
            raise SystemExit(f"{path}: duplicate mutation id {entry['id']!r}")
        seen.add(entry["id"])
        if "edits" in entry:
            edits = [(edit["old"], edit["new"]) for edit in entry["edits"]]
        else:
            edits = [(entry["old"], entry["new"])]
        mutations.append(Mutation(id=entry["id"], file=entry["file"], edits=edits, description=entry["description"],
                                  tests=list(entry.get("tests", [])), equivalent=entry.get("equivalent", "")))
    return mutations


def mutate(text: str, mutation: Mutation) -> str:
    """The mutated text; ValueError when an `old` text is missing or not unique."""
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"{old!r} occurs {count} times in {mutation.file} (expected once)")
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------- the scratch tree
def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def sync(scratch: Path) -> None:
    """Make the scratch tree's sources equal to the working tree's, copying only files that
    differ (so the scratch build stays incremental), then give it the working tree's modules."""
    scratch.mkdir(parents=True, exist_ok=True)
    names = tracked_files()
    # Sources deleted or moved since the last run must go too: the build globs its folders.
    wanted = set(names)
    for folder in ("cpp", "cuda", "python", "tests", "tools"):
        for path in (scratch / folder).rglob("*"):
            if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts \
                    and path.suffix not in (".so",) and str(path.relative_to(scratch)) not in wanted:
                path.unlink()
    for name in names:
        source, target = ROOT / name, scratch / name
        if target.is_file() and not target.is_symlink() and filecmp.cmp(source, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        shutil.copy2(source, target)
        os.utime(target)  # newer than any object built from the previous version
    for cache in scratch.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    use_working_tree_modules(scratch)


def use_working_tree_modules(scratch: Path) -> None:
    """Copy the working tree's compiled modules (resolving dev-build.sh's links) into the scratch package."""
    package, target = ROOT / "python" / "lowrank_hpc", scratch / "python" / "lowrank_hpc"
    for pattern in MODULE_PATTERNS:
        for old in target.glob(pattern):
            old.unlink()
    found = [path for pattern in MODULE_PATTERNS for path in package.glob(pattern) if path.exists()]
    if not any(path.name.startswith("_cpu") for path in found):
        raise SystemExit(f"no compiled _cpu module in {package}: build it first (./dev-build.sh)")
    for path in found:
        shutil.copy2(path.resolve(), target / path.name)


def build(scratch: Path, jobs: int, timeout: float) -> tuple[bool, str]:
    """Build the scratch tree's modules into build-mut (CPU only) and link them into its package."""
    env = dict(os.environ, BUILD_DIR="build-mut", JOBS=str(jobs), LOWRANK_HPC_CUDA="OFF")
    build_dir = scratch / "build-mut"
    try:
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and "LOWRANK_HPC_CUDA:STRING=OFF" not in cache.read_text():
            # The environment variable only reaches a fresh configure: pin the cache entry, so
            # that dev-build.sh's reconfigure of a later rebuild does not turn CUDA back on.
            subprocess.run(["cmake", "-S", ".", "-B", "build-mut", "-DLOWRANK_HPC_CUDA=OFF"], cwd=scratch, env=env,
                           check=True, capture_output=True, timeout=timeout)
        for pattern in MODULE_PATTERNS:  # dev-build.sh links only what build-mut holds
            for old in (scratch / "python" / "lowrank_hpc").glob(pattern):
                old.unlink()
        for stale in build_dir.glob("_cuda*.so"):
            stale.unlink()
        done = subprocess.run(["./dev-build.sh"], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode == 0 and "LOWRANK_HPC_CUDA:STRING=OFF" not in (build_dir / "CMakeCache.txt").read_text():
            subprocess.run(["cmake", "-S", ".", "-B", "build-mut", "-DLOWRANK_HPC_CUDA=OFF"], cwd=scratch, env=env,
                           check=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"build timed out after {timeout:.0f} s"
    except subprocess.CalledProcessError as error:
        return False, f"cmake failed: {(error.stdout or b'').decode()[-1500:]}{(error.stderr or b'').decode()[-1500:]}"
    return done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def run_tests(scratch: Path, tests: list[str], timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(scratch / "python"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("LOWRANK_HPC_REQUIRE_GPU", None)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout + done.stderr


def summary_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return (failed[0] if failed else lines[-1] if lines else "")[:160]


# ---------------------------------------------------------------------- one mutation
def try_mutation(scratch: Path, mutation: Mutation, args: argparse.Namespace) -> None:
    path = scratch / mutation.file
    original = path.read_text()
    try:
        mutated = mutate(original, mutation)
    except ValueError as error:
        mutation.status, mutation.detail = "stale", str(error)
        return
    started = time.perf_counter()
    try:
        path.write_text(mutated)
        if mutation.is_cpp:
            built, log = build(scratch, args.jobs, args.build_timeout)
            if not built:
                mutation.status, mutation.detail = "error", "the mutant does not build: " + log[-400:]
                return
        code, output = run_tests(scratch, mutation.tests, args.test_timeout)
        if code in KILLED_CODES:
            mutation.status, mutation.detail = "killed", summary_line(output)
        elif code == -1:
            mutation.status, mutation.detail = "killed", output  # a hang counts as noticed
        elif code == 0:
            mutation.status, mutation.detail = "survived", summary_line(output)
        else:
            mutation.status, mutation.detail = "error", f"pytest exit code {code}: {summary_line(output)}"
    finally:
        path.write_text(original)
        os.utime(path)  # a later build must recompile what the mutant compiled
        mutation.seconds = time.perf_counter() - started


def baseline(scratch: Path, mutations: list[Mutation], args: argparse.Namespace, what: str) -> None:
    """The selected tests must pass on the unmutated tree, or a kill would prove nothing."""
    tests = sorted({test for mutation in mutations for test in mutation.tests})
    if not tests:
        return
    print(f"baseline ({what}): {len(tests)} test selections on the unmutated tree ...", flush=True)
    code, output = run_tests(scratch, tests, args.test_timeout * 2)
    if code != 0:
        print(output[-4000:])
        raise SystemExit(f"the unmutated tree fails its own mutation tests ({what}); fix that first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=Path, default=ROOT / "tools" / "mutations.toml")
    parser.add_argument("--only", default="", help="comma-separated mutation ids")
    parser.add_argument("--python-only", action="store_true", help="skip the C++ mutations (no rebuild)")
    parser.add_argument("--cpp-only", action="store_true", help="only the C++ mutations")
    parser.add_argument("--scratch", type=Path,
                        default=Path(tempfile.gettempdir()) / f"lowrank_hpc-mutation-{getpass.getuser()}")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile jobs of a rebuild (default 1)")
    parser.add_argument("--test-timeout", type=float, default=600.0, help="seconds per mutant's test run")
    parser.add_argument("--build-timeout", type=float, default=3600.0, help="seconds per (re)build")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="check every old text against the working tree")
    args = parser.parse_args()

    mutations = load(args.mutations)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - {m.id for m in mutations}
        if unknown:
            raise SystemExit(f"unknown mutation ids: {', '.join(sorted(unknown))}")
        mutations = [m for m in mutations if m.id in wanted]
    if args.python_only:
        mutations = [m for m in mutations if not m.is_cpp]
    if args.cpp_only:
        mutations = [m for m in mutations if m.is_cpp]
    if args.list:
        for m in mutations:
            kind = "C++" if m.is_cpp else "py "
            print(f"{kind} {m.id:40s} {m.file}: {m.description}" + (f" [equivalent: {m.equivalent}]"
                                                                     if m.equivalent else ""))
        return 0

    for m in mutations:  # stale texts are found before any work
        try:
            mutate((ROOT / m.file).read_text(), m)
        except (OSError, ValueError) as error:
            m.status, m.detail = "stale", str(error)
        if m.equivalent:
            m.status, m.detail = "equivalent", m.equivalent
    if args.check:
        for m in mutations:
            print(f"{m.status if m.status != 'pending' else 'ok':10s} {m.id}: {m.detail}")
        return 0 if all(m.status in ("pending", "equivalent") for m in mutations) else 1

    runnable = [m for m in mutations if m.status == "pending"]
    print(f"scratch tree: {args.scratch}", flush=True)
    sync(args.scratch)
    python_mutations = [m for m in runnable if not m.is_cpp]
    cpp_mutations = [m for m in runnable if m.is_cpp]
    if python_mutations:
        baseline(args.scratch, python_mutations, args, "Python")
        for m in python_mutations:
            try_mutation(args.scratch, m, args)
            print(f"  {m.status:9s} {m.id} ({m.seconds:.1f} s)", flush=True)
    if cpp_mutations:
        print(f"building the scratch tree (build-mut, CPU only, {args.jobs} job(s)) ...", flush=True)
        built, log = build(args.scratch, args.jobs, args.build_timeout)
        if not built:
            print(log)
            raise SystemExit("the unmutated scratch tree does not build")
        baseline(args.scratch, cpp_mutations, args, "C++")
        for m in cpp_mutations:
            try_mutation(args.scratch, m, args)
            print(f"  {m.status:9s} {m.id} ({m.seconds:.1f} s)", flush=True)

    report = Report(mutations)
    print()
    for m in mutations:
        print(f"{m.status:10s} {m.id:40s} {m.description}")
        if m.status != "equivalent" and m.detail:
            print(f"{'':10s} -> {m.detail}")
    counted = [m for m in mutations if m.status in ("killed", "survived")]
    print(f"\nscore: {report.count('killed')}/{len(counted)} killed"
          + (f", {report.count('equivalent')} equivalent (not run)" if report.count("equivalent") else "")
          + (f", {report.count('stale')} stale" if report.count("stale") else "")
          + (f", {report.count('error')} errors" if report.count("error") else ""))
    survivors = [m.id for m in mutations if m.status == "survived"]
    if survivors:
        print("survivors: " + ", ".join(survivors))
    return 0 if report.count("survived") == report.count("stale") == report.count("error") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
