"""The five scenarios; each module has ``KEY``, ``TITLE`` and ``run(context) -> result``."""
