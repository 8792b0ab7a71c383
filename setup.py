"""The one C extension: relaxed body canonicalization (see the header comment of milter/authmilter/_relaxed.c for
the measurement behind it). Everything else is declared in pyproject.toml; setuptools' pyproject form of
ext-modules is still experimental and warns on every install."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("authmilter._relaxed", ["milter/authmilter/_relaxed.c"])])
