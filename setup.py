"""Cython extensions and the version; the Rust extension is declared in pyproject.toml."""

import os
import tomllib
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
VERSION = tomllib.loads((HERE / 'rust' / 'Cargo.toml').read_text())['package']['version']
DEBUG = os.environ.get('FASTQ_DEBUG') == '1'

extensions = [
    Extension(
        'fastq._ipc',
        ['cython/_ipc.pyx'],
        include_dirs=['cython'],
        extra_compile_args=['-O2', '-Wall'],
        define_macros=[('FASTQ_DEBUG', '1' if DEBUG else '0')] + ([('CYTHON_TRACE', '1')] if DEBUG else []),
    ),
    Extension(
        'fastq._amqp',
        ['cython/_amqp.pyx'],
        include_dirs=['cython'],
        libraries=['rabbitmq'],
        extra_compile_args=['-O2', '-Wall'],
        define_macros=[('FASTQ_DEBUG', '1' if DEBUG else '0')] + ([('CYTHON_TRACE', '1')] if DEBUG else []),
    ),
]

setup(
    version=VERSION,
    ext_modules=cythonize(
        extensions,
        compiler_directives={'language_level': '3', 'embedsignature': True, 'linetrace': DEBUG},
        annotate=DEBUG,
    ),
)
