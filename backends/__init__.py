"""Backends: one module per framework, each a small final class implementing
`lfq.interface.LFQBackend`. They are registered by import string in
`lfq.registry` and imported only when asked for by `lfq.get`.
"""
