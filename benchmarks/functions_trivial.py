"""The trivial Pulsar Function of benchmarks/functions.py: the input with "!" appended.

Written against the Pulsar Functions API only, so the same file runs on Pulsar's functions worker
(`--classname functions_trivial.Exclaim`) and on mlplatform's Ray runtime: what it costs is the
runtime's own per-message cost.
"""

from pulsar import Function


class Exclaim(Function):
    def process(self, input, context):
        return f"{input}!"
