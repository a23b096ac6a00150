"""Test helpers shipped with the package: a fake Ollama for tests and the benchmark."""
