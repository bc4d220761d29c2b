"""The C extensions, found rather than listed: every service/<layer>/_<name>.c is the module
service.<layer>._<name>. All are built with one set of flags, warnings as errors, so that a new
warning stops the build instead of scrolling past. (pyproject.toml holds everything else;
setuptools reads both.) `make test` builds the same sources once more with the sanitizers. A module
that links a system library names it in LIBRARIES (zlib: Debian's zlib1g-dev, which Python's own
headers, libpython3.11-dev, already pull in)."""

from pathlib import Path

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror"]
LIBRARIES = {"service/predlog/_frame.c": ["z"]}

setup(
    ext_modules=[
        Extension(
            ".".join(source.with_suffix("").parts),
            [source.as_posix()],
            extra_compile_args=FLAGS,
            libraries=LIBRARIES.get(source.as_posix(), []),
        )
        for source in sorted(Path("service").glob("*/_*.c"))
    ]
)
