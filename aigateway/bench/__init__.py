"""The benchmark: the gateway against a bare pass-through, both in front of one fake Ollama."""
