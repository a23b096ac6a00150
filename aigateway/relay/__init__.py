"""The relay: a request admitted, its body read, sent on to an upstream, its answer
pumped back byte for byte, and what it used settled (handler.py walks the steps)."""
